"""The recording tap on boto3 clients, through botocore's documented event hooks.

- `before-send` (`request`: the signed `AWSPreparedRequest`): replaying, the handler returns
  an `AWSResponse` built from the recording, which botocore uses instead of sending
  (boto3 docs, "Extensibility guide: Events", before-send); a recorded failure is raised
  there as a botocore exception, which botocore handles as if the send had failed (its
  retry rules included). Recording, it notes the request for the two handlers below.
- `before-parse` (`response_dict`: status, headers, body): the answer, recorded before
  parsing, so a body botocore then fails to parse is in the recording too.
- `response-received` (`exception`): a send that got no answer (timeout, refused).

botocore sends synchronously in the calling thread, so a thread-local pairs a request with
its answer. Registering on a session's event system (`boto3.Session.events`) taps every
client the session creates afterwards; registering on `client.meta.events` taps one client.
`placeholder_credentials` lets a replay sign requests without credentials (signatures are
never checked: nothing is sent).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Mapping
from typing import Any, Literal

import botocore.exceptions as bexc
import botocore.session
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders

from providers._recording import Tap, WireFailure, WireRequest, WireResponse

_ID = "broker-recording"
#: What a replaying session signs with; not a credential anywhere.
PLACEHOLDER_KEY = "REPLAY-PLACEHOLDER"


def placeholder_credentials(core: botocore.session.Session) -> None:
    """Give a botocore session static placeholder credentials (for replays only)."""
    core.set_credentials(PLACEHOLDER_KEY, PLACEHOLDER_KEY)


class _Body:
    """The `raw` of an `AWSResponse`: what botocore streams the body from."""

    def __init__(self, body: bytes) -> None:
        self.body = body

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self.body


def _text(value: str | bytes) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else value


def _body(body: Any) -> bytes | None:
    if isinstance(body, str):
        return body.encode("utf-8")
    if isinstance(body, bytes | bytearray):
        return bytes(body)
    return None  # a stream (uploads): never sent by the polled calls


def _failure(exc: BaseException) -> WireFailure | None:
    if isinstance(exc, bexc.ReadTimeoutError | bexc.ConnectTimeoutError):
        kind: Literal["timeout", "connection"] = "timeout"
    elif isinstance(exc, bexc.HTTPClientError | bexc.ConnectionError):
        kind = "connection"
    else:
        return None
    return WireFailure(kind, type(exc).__name__, str(exc))


def _raise(failure: WireFailure, url: str) -> None:
    default = bexc.ReadTimeoutError if failure.kind == "timeout" else bexc.EndpointConnectionError
    cls = getattr(bexc, failure.type, None)
    if not (isinstance(cls, type) and issubclass(cls, bexc.BotoCoreError)):
        cls = default
    try:
        exc = cls(endpoint_url=url, error=f"replayed: {failure.message}")
    except (KeyError, TypeError):  # a class whose message needs other fields
        exc = default(endpoint_url=url, error=f"replayed: {failure.message}")
    raise exc


class _Hooks:
    def __init__(self, tap: Tap) -> None:
        self.tap = tap
        self.local = threading.local()

    def before_send(self, request: Any, **_: Any) -> AWSResponse | None:
        self.local.pending = None
        if not self.tap.active:
            return None
        headers = {str(k): _text(v) for k, v in request.headers.items()}
        wire = WireRequest(request.method, request.url, headers, _body(request.body))
        played = self.tap.replayed(wire)
        if played is None:
            self.local.pending = (wire, time.monotonic())
            return None
        if isinstance(played.outcome, WireFailure):
            _raise(played.outcome, request.url)
        out = played.outcome
        assert isinstance(out, WireResponse)
        return AWSResponse(
            request.url, out.status, HTTPHeaders.from_dict(dict(out.headers)), _Body(out.body)
        )

    def before_parse(self, response_dict: Mapping[str, Any], **_: Any) -> None:
        pending = getattr(self.local, "pending", None)
        self.local.pending = None
        if pending is None:
            return
        wire, start = pending
        headers = {str(k): _text(v) for k, v in (response_dict.get("headers") or {}).items()}
        body = response_dict.get("body")
        outcome = WireResponse(
            int(response_dict.get("status_code") or 0),
            headers,
            body if isinstance(body, bytes) else b"",
        )
        self.tap.record(wire, outcome, time.monotonic() - start)

    def response_received(self, exception: BaseException | None = None, **_: Any) -> None:
        pending = getattr(self.local, "pending", None)
        if pending is None or exception is None:
            return
        self.local.pending = None
        failure = _failure(exception)
        if failure is not None:
            self.tap.record(pending[0], failure, None)


def tap_botocore(events: Any, tap: Tap) -> None:
    """Hook `tap` into a botocore event system: `client.meta.events` (one client) or
    `boto3.Session.events` (every client the session creates from now on).

    Once per event system: the handlers carry botocore `unique_id`s, so tapping a client
    whose session is tapped already (its emitter is a copy of the session's) does nothing,
    and no exchange is recorded or replayed twice."""
    hooks = _Hooks(tap)
    events.register("before-send", hooks.before_send, unique_id=f"{_ID}-before-send")
    events.register("before-parse", hooks.before_parse, unique_id=f"{_ID}-before-parse")
    events.register(
        "response-received", hooks.response_received, unique_id=f"{_ID}-response-received"
    )
