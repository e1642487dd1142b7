"""The recording tap on httpx: `JsonApi` (providers/_http.py) sends every request through
`send_httpx`, which answers from the recording when replaying, otherwise sends and records.

Hooked above the transport (on `Client.send`), not as a transport wrapper, so the client's
own transport, proxies from the environment and redirects stay exactly as configured. A
recorded failure is raised as the recorded httpx exception class (`ReadTimeout`,
`RemoteProtocolError`...), else `ReadTimeout` / `ConnectError` by kind.
"""

from __future__ import annotations

import time
from typing import Literal

import httpx

from providers._recording import Tap, WireFailure, WireRequest, WireResponse


def send_httpx(tap: Tap, client: httpx.Client, request: httpx.Request) -> httpx.Response:
    """`client.send(request)` through `tap`: the body is read (as `send` does by default)."""
    if not tap.active:
        return client.send(request)
    wire = WireRequest(request.method, str(request.url), dict(request.headers), request.read())
    played = tap.replayed(wire)
    if played is not None:
        if isinstance(played.outcome, WireFailure):
            raise _httpx_failure(played.outcome, request)
        out = played.outcome
        return httpx.Response(out.status, headers=out.headers, content=out.body, request=request)
    start = time.monotonic()
    try:
        response = client.send(request)
    except httpx.TransportError as exc:
        kind: Literal["timeout", "connection"] = (
            "timeout" if isinstance(exc, httpx.TimeoutException) else "connection"
        )
        tap.record(wire, WireFailure(kind, type(exc).__name__, str(exc)), None)
        raise
    outcome = WireResponse(response.status_code, dict(response.headers), response.content)
    tap.record(wire, outcome, time.monotonic() - start)
    return response


def _httpx_failure(failure: WireFailure, request: httpx.Request) -> httpx.TransportError:
    cls = getattr(httpx, failure.type, None)
    if not (isinstance(cls, type) and issubclass(cls, httpx.TransportError)):
        cls = httpx.ReadTimeout if failure.kind == "timeout" else httpx.ConnectError
    return cls(f"replayed: {failure.message}", request=request)
