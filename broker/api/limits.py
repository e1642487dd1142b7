"""Request body limits, enforced while the body streams in, before anything reads it.

Every request body is read here first, up to its limit: a `Content-Length` over the limit
is refused at once, a body sent without one (chunked) as soon as the bytes received pass
the limit. Both happen before the API key is checked and before any JSON or CSV parsing,
so an anonymous client cannot make the server buffer more than the limit. The limit is
`max_csv_body_bytes` for the CSV imports (paths ending in `/import`) and
`max_json_body_bytes` for every other body. Answer: 413 `payload_too_large` in the API's
error shape.

A JSON body holding a NUL character (a raw 0 byte, or `\\u0000`) is refused here too:
PostgreSQL cannot store one in a text column, and no name, note or URL needs one. Answer:
422 `invalid_request` naming the first field that holds one, for every text field of every
body at once. (The CSV imports refuse NUL bytes themselves, by line.)
"""

from __future__ import annotations

import json
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.api import errors

#: A NUL as JSON writes it (the hex digits of an escape are case-insensitive, 0 has none).
_JSON_NUL = b"\\u0000"


def _nul_field(body: bytes) -> str:
    """The dotted path of the first string of a JSON body holding a NUL (`body` if the body
    is not JSON or no string value holds one, e.g. a key)."""
    try:
        doc = json.loads(body)
    except ValueError:
        return "body"
    queue: list[tuple[str, Any]] = [("", doc)]
    while queue:
        path, value = queue.pop(0)
        if isinstance(value, str) and "\x00" in value:
            return path or "body"
        if isinstance(value, dict):
            queue += [(f"{path}.{k}" if path else str(k), v) for k, v in value.items()]
        elif isinstance(value, list):
            queue += [(f"{path}.{i}" if path else str(i), v) for i, v in enumerate(value)]
    return "body"


class BodyLimit:
    """ASGI middleware: 413 for a body over its limit, 422 for a JSON body holding a NUL
    (see the module docstring); the app gets the body it would have read."""

    def __init__(self, app: ASGIApp, *, json_bytes: int, csv_bytes: int) -> None:
        self.app, self.json_bytes, self.csv_bytes = app, json_bytes, csv_bytes

    def _limit(self, scope: Scope) -> int:
        path: str = scope.get("path", "")
        return self.csv_bytes if path.rstrip("/").endswith("/import") else self.json_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        limit = self._limit(scope)
        length = dict(scope.get("headers") or ()).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > limit):
            await _too_large(scope, receive, send, limit)
            return
        chunks: list[bytes] = []
        seen = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk: bytes = message.get("body", b"")
            seen += len(chunk)
            if seen > limit:
                await _too_large(scope, receive, send, limit)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        if limit == self.json_bytes and (b"\x00" in body or _JSON_NUL in body):
            await _has_nul(scope, receive, send, _nul_field(body))
            return
        await self.app(scope, _replay(body, receive), send)


def _replay(body: bytes, receive: Receive) -> Receive:
    """A `receive` that hands the app the body read, then waits as the server would."""
    given = False

    async def again() -> Message:
        nonlocal given
        if not given:
            given = True
            return {"type": "http.request", "body": body, "more_body": False}
        return await receive()

    return again


async def _too_large(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
    response = errors.error_response(
        413,
        "payload_too_large",
        f"the request body is larger than {limit:,} bytes "
        "(BROKER_MAX_JSON_BODY_BYTES / BROKER_MAX_CSV_BODY_BYTES)",
        headers={"Connection": "close"},
    )
    await response(scope, receive, send)


async def _has_nul(scope: Scope, receive: Receive, send: Send, field: str) -> None:
    response = errors.error_response(
        422,
        "invalid_request",
        f"invalid {field}: text must not contain NUL characters (\\u0000); no field can store one",
        [{"loc": f"body.{field}", "field": field, "message": "contains a NUL character"}],
    )
    await response(scope, receive, send)
