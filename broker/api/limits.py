"""Request body limits, enforced while the body streams in.

Every request body is counted before anything reads it: a `Content-Length` over the limit
is refused at once, a body sent without one (chunked) is refused as soon as the bytes
received pass the limit. Both happen before the API key is checked and before any JSON or
CSV parsing, so an anonymous client cannot make the server buffer a large body. The limit
is `max_csv_body_bytes` for the CSV imports (paths ending in `/import`) and
`max_json_body_bytes` for every other body. Answer: 413 `payload_too_large` in the API's
error shape.

The same pass refuses a body holding a NUL character (a raw 0 byte, or `\u0000` in JSON):
PostgreSQL cannot store one in a text column, and no name, note or URL needs one. Answer:
422 `invalid_request`, for every text field of every body at once.
"""

from __future__ import annotations

from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker.api import errors


def _message(limit: int) -> str:
    return (
        f"the request body is larger than {limit:,} bytes "
        "(BROKER_MAX_JSON_BODY_BYTES / BROKER_MAX_CSV_BODY_BYTES)"
    )


#: A NUL as JSON writes it (the hex digits of an escape are case-insensitive, 0 has none).
_JSON_NUL = b"\\u0000"


class _HasNul(HTTPException):
    def __init__(self) -> None:
        super().__init__(
            422, "text must not contain NUL characters (\\u0000): no field can store one"
        )


class _TooLarge(HTTPException):
    """Raised from `receive` when the body passes the limit: an HTTPException, so that
    FastAPI's body reading lets it through to the 413 handler instead of calling the body
    malformed."""

    def __init__(self, limit: int) -> None:
        super().__init__(413, _message(limit), headers={"Connection": "close"})


class BodyLimit:
    """ASGI middleware: 413 for a request body over its limit (see the module docstring)."""

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
            await self._refuse(scope, receive, send, limit)
            return
        seen = 0
        tail = b""
        started = False

        async def counted() -> Message:
            nonlocal seen, tail
            message = await receive()
            if message["type"] == "http.request":
                chunk: bytes = message.get("body", b"")
                seen += len(chunk)
                if seen > limit:
                    raise _TooLarge(limit)
                window = tail + chunk  # an escape may straddle two chunks
                if b"\x00" in chunk or _JSON_NUL in window:
                    raise _HasNul
                tail = window[-(len(_JSON_NUL) - 1) :]
            return message

        async def tracked(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start":
                started = True
            await send(message)

        try:
            await self.app(scope, counted, tracked)
        except _TooLarge:
            if started:
                raise
            await self._refuse(scope, receive, send, limit)

    @staticmethod
    async def _refuse(scope: Scope, receive: Receive, send: Send, limit: int) -> None:
        response = errors.error_response(413, "payload_too_large", _message(limit))
        response.headers["Connection"] = "close"
        await response(scope, receive, send)
