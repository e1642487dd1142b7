"""One error shape for every 4xx (and the rare 5xx): `{"error": {code, message, details}}`.

Routes raise `ApiError` (or a helper below); FastAPI's own validation errors, malformed JSON
bodies and Starlette's 404/405 are mapped onto the same shape here, so a client handles one
format. Messages never echo a credential: the validation handler drops the offending input.

The database out of reach (connection refused or dropped, the server shutting down, a pool
exhausted, SQLite locked) is 503 `database_unavailable` with `Retry-After`, never a 500: the
request was fine and may simply be sent again. The driver's message (which may name the
host and user) stays in the server log.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)

#: The error codes of plain HTTP statuses (Starlette's 404 for an unknown path, 405...).
STATUS_CODES: Mapping[int, str] = {
    400: "bad_request",
    401: "unauthenticated",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    406: "not_acceptable",
    409: "conflict",
    413: "payload_too_large",
    415: "unsupported_media_type",
    422: "invalid_request",
    429: "rate_limited",
    503: "not_ready",
}
#: Seconds a client is told to wait when the database is out of reach: a restart or a
#: failover of PostgreSQL usually takes a few.
DB_RETRY_AFTER_S = 5
#: Errors meaning "the database cannot be reached or cannot serve now", not "the request is
#: wrong": `OperationalError` (connect refused, connection lost, admin shutdown, serialisation
#: or lock timeouts, SQLite busy), `InterfaceError` (a closed connection), `TimeoutError`
#: (no connection free in the pool in time).
DB_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.TimeoutError,
)


class ErrorDetail(BaseModel):
    code: str
    message: str
    details: Any = None


class ErrorBody(BaseModel):
    """What every error response carries."""

    error: ErrorDetail


class ApiError(Exception):
    """An error answer: HTTP status, machine-readable code, human message, details."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        details: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message
        self.details, self.headers = details, dict(headers or {})


def error_response(
    status: int,
    code: str,
    message: str,
    details: Any = None,
    headers: Mapping[str, str] | None = None,
) -> JSONResponse:
    body = {"error": {"code": code, "message": message, "details": details}}
    return JSONResponse(body, status_code=status, headers=dict(headers or {}))


def not_found(message: str, details: Any = None) -> ApiError:
    return ApiError(404, "not_found", message, details)


def unauthenticated(message: str) -> ApiError:
    return ApiError(401, "unauthenticated", message, headers={"WWW-Authenticate": "Bearer"})


def forbidden(message: str, details: Any = None) -> ApiError:
    return ApiError(403, "forbidden", message, details)


def conflict(message: str, details: Any = None) -> ApiError:
    return ApiError(409, "conflict", message, details)


def invalid(field: str, message: str, where: str = "query", **details: Any) -> ApiError:
    """A 422 for one bad field that the schema admitted but the domain refuses."""
    item = {"loc": f"{where}.{field}", "field": field, "message": message, **details}
    return ApiError(422, "invalid_request", f"invalid {field}: {message}", [item])


# ------------------------------------------------------------------------ handlers


def _loc(loc: Sequence[Any]) -> tuple[str, str]:
    """(`query.limit`, `limit`): the dotted location and the field's own name."""
    parts = [str(p) for p in loc]
    field = ".".join(parts[1:]) if len(parts) > 1 else parts[0] if parts else "request"
    return ".".join(parts) or "request", field


def _is_body_not_json(errors: Sequence[Mapping[str, Any]]) -> bool:
    """A body sent as something other than JSON reaches validation as raw bytes."""
    return any(
        tuple(e.get("loc", ())) == ("body",) and isinstance(e.get("input"), bytes) for e in errors
    )


async def _validation_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    errors: Sequence[Mapping[str, Any]] = exc.errors()
    bad_json = [e for e in errors if e.get("type") == "json_invalid"]
    if bad_json:
        ctx = bad_json[0].get("ctx") or {}
        pos = bad_json[0].get("loc", ("body", None))[-1]
        reason = ctx.get("error", "JSON decode error")
        return error_response(
            400,
            "invalid_json",
            f"the request body is not valid JSON: {reason} at position {pos}",
            {"position": pos, "reason": reason},
        )
    if _is_body_not_json(errors):
        return error_response(
            400,
            "invalid_json",
            "the request body must be JSON (Content-Type: application/json)",
        )
    details = []
    for e in errors:
        loc, field = _loc(e.get("loc", ()))
        item: dict[str, Any] = {"loc": loc, "field": field, "message": e.get("msg", "invalid")}
        if e.get("type"):
            item["type"] = e["type"]
        details.append(item)
    fields = list(dict.fromkeys(d["field"] for d in details))
    message = "invalid " + ", ".join(fields) + ": " + "; ".join(d["message"] for d in details)
    return error_response(422, "invalid_request", message, details)


async def _api_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message, exc.details, exc.headers)


async def _http_error(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    code = STATUS_CODES.get(exc.status_code, "error" if exc.status_code >= 500 else "bad_request")
    detail = exc.detail if isinstance(exc.detail, str) else None
    if exc.status_code == 400 and detail == "There was an error parsing the body":
        code, detail = "invalid_json", "the request body could not be parsed as JSON"
    if exc.status_code == 404 and detail in (None, "Not Found"):
        detail = f"no route {request.method} {request.url.path}"
    if exc.status_code == 405:
        detail = f"method {request.method} is not allowed on {request.url.path}"
    headers = dict(exc.headers or {})
    if exc.status_code == 401:
        headers.setdefault("WWW-Authenticate", "Bearer")
    return error_response(exc.status_code, code, detail or code.replace("_", " "), None, headers)


async def _db_unavailable(request: Request, exc: Exception) -> JSONResponse:
    orig = getattr(exc, "orig", None)
    log.warning(
        "api.database_unavailable %s %s: %s",
        request.method,
        request.url.path,
        type(orig or exc).__name__,
    )
    return error_response(
        503,
        "database_unavailable",
        f"the database is unavailable; retry in {DB_RETRY_AFTER_S} s",
        None,
        {"Retry-After": str(DB_RETRY_AFTER_S)},
    )


async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
    log.error(
        "api.unhandled_error %s %s: %s",
        request.method,
        request.url.path,
        type(exc).__name__,
        exc_info=exc,
    )
    return error_response(500, "internal", "internal error; the server log has the details")


def install(app: FastAPI) -> None:
    """Map every error of `app` onto the one shape."""
    app.add_exception_handler(RequestValidationError, _validation_error)
    app.add_exception_handler(ApiError, _api_error)
    app.add_exception_handler(StarletteHTTPException, _http_error)
    for db_error in DB_UNAVAILABLE:
        app.add_exception_handler(db_error, _db_unavailable)
    app.add_exception_handler(Exception, _unexpected)
