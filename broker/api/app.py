"""The FastAPI application: `create_app(settings, engine, clock)`.

Routers are listed once below. Probes (`/healthz`, `/readyz`) need no key; every router of
`V1_ROUTERS` is served under `/v1` behind `Authorization: Bearer <key>` (a route needing more
than read access adds `require_role(...)`). Docs at `/docs`, the schema at `/openapi.json`.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from sqlalchemy import Engine
from starlette.types import ASGIApp, Receive, Scope, Send

from broker import package_version
from broker.api import errors
from broker.api.deps import get_principal
from broker.api.errors import ErrorBody
from broker.api.limits import BodyLimit
from broker.api.query import reject_unknown_query
from broker.api.ratelimit import RateLimiter
from broker.api.routes import (
    events,
    health,
    metrics,
    offers,
    polls,
    providers,
    reports,
    requests,
    reservations,
    subscriptions,
)
from broker.config import Settings, get_settings
from broker.db import make_engine
from broker.domain import Clock, utcnow
from broker.sources import SourceCatalog

#: Served without authentication.
PUBLIC_ROUTERS: list[APIRouter] = [health.router, metrics.router]
#: Served under /v1, every route behind an API key.
V1_ROUTERS: list[APIRouter] = [
    offers.router,
    events.router,
    polls.router,
    providers.router,
    requests.router,
    reservations.router,
    reports.router,
    subscriptions.router,
]

_V1_ERRORS: dict[int | str, dict[str, Any]] = {
    400: {"model": ErrorBody, "description": "Malformed request (bad JSON, bad cursor)."},
    401: {"model": ErrorBody, "description": "Missing, unknown or revoked API key."},
    403: {"model": ErrorBody, "description": "The key's role may not do this."},
    404: {"model": ErrorBody, "description": "No such resource."},
    422: {"model": ErrorBody, "description": "A parameter or body field is invalid."},
    429: {"model": ErrorBody, "description": "This API key is over its rate (Retry-After)."},
    503: {
        "model": ErrorBody,
        "description": "The database is unavailable; retry after Retry-After.",
    },
}


def _operation_id(route: APIRoute) -> str:
    """`offers-list_offers_route`: tag + function name, stable for generated clients."""
    return f"{route.tags[0]}-{route.name}" if route.tags else route.name


class RejectNul:
    """400 for a URL holding a NUL character: PostgreSQL cannot store or compare one, and no
    valid id, key or filter contains it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            query: bytes = scope.get("query_string", b"")
            if "\x00" in scope.get("path", "") or b"%00" in query or b"\x00" in query:
                response = errors.error_response(
                    400, "bad_request", "the URL must not contain NUL characters"
                )
                await response(scope, receive, send)
                return
        await self.app(scope, receive, send)


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    clock: Clock = utcnow,
) -> FastAPI:
    """The API over `engine` (default: the settings' database), reading time from `clock`."""
    settings = settings or get_settings()
    app = FastAPI(
        title="GPU capacity broker",
        version=package_version(),
        summary="Comparable GPU offers across clouds, market events and capacity requests.",
        docs_url="/docs",
        openapi_url="/openapi.json",
        redoc_url=None,
        generate_unique_id_function=_operation_id,
    )
    app.state.settings = settings
    app.state.engine = engine if engine is not None else make_engine(settings)
    app.state.clock = clock
    app.state.sources = SourceCatalog(settings, clock)
    app.state.rate_limiter = RateLimiter(settings)
    errors.install(app)
    app.add_middleware(RejectNul)
    app.add_middleware(
        BodyLimit,
        json_bytes=settings.max_json_body_bytes,
        csv_bytes=settings.max_csv_body_bytes,
    )
    app.add_middleware(metrics.HttpMetrics)
    for router in PUBLIC_ROUTERS:
        app.include_router(router)
    for router in V1_ROUTERS:
        app.include_router(
            router,
            prefix="/v1",
            dependencies=[Depends(reject_unknown_query), Depends(get_principal)],
            responses=_V1_ERRORS,
        )
    return app
