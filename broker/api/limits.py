"""Request body limits, enforced while the body streams in.

Every request body is counted before anything reads it: a `Content-Length` over the limit
is refused at once, a body sent without one (chunked) is refused as soon as the bytes
received pass the limit. Both happen before the API key is checked and before any JSON or
CSV parsing, so an anonymous client cannot make the server buffer a large body. The limit
is `max_csv_body_bytes` for the CSV imports (paths ending in `/import`) and
`max_json_body_bytes` for every other body. Answer: 413 `payload_too_large` in the API's
error shape.
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
        started = False

        async def counted() -> Message:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > limit:
                    raise _TooLarge(limit)
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
