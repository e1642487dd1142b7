"""The recording tap on `requests` sessions: google-cloud-compute's REST clients and
azure-core's `RequestsTransport` both send through a `requests.Session`.

`TapAdapter` wraps the transport adapter a session already has mounted (keeping its pool,
retry and TLS settings): it answers from the recording when replaying, otherwise sends
through the wrapped adapter and records what came back. Recording reads the body at once
(what requests does itself without `stream=True`); the caller still gets the same response
object, its content already loaded.

Three entry points, one per way an SDK hands over its session:
- `tap_session(session, tap)`: any session.
- `tap_google_clients(tap, *clients)`: a google-cloud-compute client built with
  `transport="rest"` sends through `client.transport._session` (an `AuthorizedSession`,
  google.auth's requests.Session); the SDK offers no public way to pass a session, so this
  reaches for that attribute and says so loudly when a new SDK version renames it.
- `azure_transport(tap)`: an azure-core `RequestsTransport` (pass it to an SDK client as
  `transport=`) whose session is tapped; `PlaceholderCredential` is the token credential a
  replay uses instead of `DefaultAzureCredential` (nothing is sent, nothing is checked);
  `placeholder_google_credentials()` is GCP's instead of Application Default Credentials.
"""

from __future__ import annotations

import io
import time
from collections.abc import Callable, Mapping
from http import HTTPStatus
from typing import Any, Literal

import requests
import requests.adapters
import urllib3
from google.auth.credentials import AnonymousCredentials, Credentials

from providers._recording import Tap, WireFailure, WireRequest, WireResponse

_BUILDER = requests.adapters.HTTPAdapter()


def _failure(exc: requests.RequestException) -> WireFailure:
    kind: Literal["timeout", "connection"] = (
        "timeout" if isinstance(exc, requests.exceptions.Timeout) else "connection"
    )
    return WireFailure(kind, type(exc).__name__, str(exc))


def _replayed_failure(
    failure: WireFailure, request: requests.PreparedRequest
) -> requests.RequestException:
    cls = getattr(requests.exceptions, failure.type, None)
    if not (isinstance(cls, type) and issubclass(cls, requests.RequestException)):
        cls = (
            requests.exceptions.ReadTimeout
            if failure.kind == "timeout"
            else requests.exceptions.ConnectionError
        )
    return cls(f"replayed: {failure.message}", request=request)


def _response(
    adapter: requests.adapters.BaseAdapter,
    request: requests.PreparedRequest,
    status: int,
    headers: Mapping[str, str],
    body: bytes,
) -> requests.Response:
    """A `requests.Response` over recorded bytes, built as requests builds a real one (a
    urllib3 response, so both `content` and `raw.stream()` read it)."""
    raw = urllib3.HTTPResponse(
        body=io.BytesIO(body),
        headers=dict(headers),
        status=status,
        reason=HTTPStatus(status).phrase if status in HTTPStatus._value2member_map_ else None,
        preload_content=False,
        decode_content=False,
        request_method=request.method,
        request_url=request.url,
    )
    builder = adapter if isinstance(adapter, requests.adapters.HTTPAdapter) else _BUILDER
    return builder.build_response(request, raw)


class TapAdapter(requests.adapters.BaseAdapter):
    """A transport adapter that records or replays through `tap`, around `inner`."""

    def __init__(self, inner: requests.adapters.BaseAdapter, tap: Tap) -> None:
        super().__init__()
        self.inner = inner
        self.tap = tap

    def send(
        self,
        request: requests.PreparedRequest,
        stream: bool = False,
        timeout: Any = None,
        verify: bool | str = True,
        cert: Any = None,
        proxies: dict[str, str] | None = None,
    ) -> requests.Response:
        def send() -> requests.Response:
            return self.inner.send(
                request, stream=stream, timeout=timeout, verify=verify, cert=cert, proxies=proxies
            )

        if not self.tap.active:
            return send()
        body = request.body.encode("utf-8") if isinstance(request.body, str) else request.body
        headers = {
            k: v.decode("latin-1") if isinstance(v, bytes) else v
            for k, v in request.headers.items()
        }
        wire = WireRequest(
            str(request.method),
            str(request.url),
            headers,
            body if isinstance(body, bytes) and body else None,  # never a stream here
        )
        played = self.tap.replayed(wire)
        if played is not None:
            if isinstance(played.outcome, WireFailure):
                raise _replayed_failure(played.outcome, request)
            out = played.outcome
            return _response(self.inner, request, out.status, out.headers, out.body)
        start = time.monotonic()
        try:
            response = send()
            content = response.content
        except requests.RequestException as exc:
            self.tap.record(wire, _failure(exc), None)
            raise
        outcome = WireResponse(response.status_code, dict(response.headers), content)
        self.tap.record(wire, outcome, time.monotonic() - start)
        return response

    def close(self) -> None:
        self.inner.close()


def tap_session(session: requests.Session, tap: Tap) -> None:
    """Wrap every adapter mounted on `session` (once: a tapped adapter is left alone)."""
    for prefix, adapter in list(session.adapters.items()):
        if not isinstance(adapter, TapAdapter):
            session.mount(prefix, TapAdapter(adapter, tap))


def tap_google_clients(tap: Tap, *clients: Any) -> None:
    """Tap google-cloud-compute clients built with `transport="rest"`.

    Raises:
        TypeError: a client whose transport has no requests session (gRPC, or an SDK
            version that moved it).
    """
    for client in clients:
        session = getattr(client.transport, "_session", None)
        if not isinstance(session, requests.Session):
            raise TypeError(
                f"{type(client).__name__}: no requests session on its transport "
                f"({type(client.transport).__name__}); recording needs transport='rest'"
            )
        tap_session(session, tap)


def azure_transport(tap: Tap) -> Any:
    """An azure-core `RequestsTransport` whose session is tapped.

    azure-core is imported here, not at module level: the GCP adapter uses this module too.
    """
    from azure.core.pipeline.transport import RequestsTransport

    transport = RequestsTransport()
    transport.open()  # creates the session with azure-core's own adapters, then we wrap them
    assert transport.session is not None
    tap_session(transport.session, tap)
    return transport


def placeholder_google_credentials() -> Credentials:
    """google-auth credentials for replays: anonymous (no token, no refresh, nothing sent)."""
    factory: Callable[[], Credentials] = AnonymousCredentials  # its constructor is untyped
    return factory()


class PlaceholderCredential:
    """An azure-core `TokenCredential` for replays: hands out a placeholder token."""

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken("replay-placeholder-token", int(time.time()) + 24 * 3600)
