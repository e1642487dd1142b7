"""`GET /metrics`: Prometheus exposition (no API key: scrapers carry none; it holds counts,
never a secret or a team's data), and `HttpMetrics`, the middleware counting API requests.
See `broker.metrics`."""

from __future__ import annotations

import re
import time

from fastapi import APIRouter, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from broker import metrics
from broker.api.deps import ClockDep, EngineDep, SettingsDep

router = APIRouter(tags=["health"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={200: {"content": {"text/plain": {}}, "description": "Prometheus text format."}},
)
def prometheus(engine: EngineDep, settings: SettingsDep, clock: ClockDep) -> Response:
    """Polls, offers, market events, deliveries, queue depth, poll duration, event → Slack
    latency, API requests."""
    body, content_type = metrics.render(engine, settings, clock)
    return Response(body, media_type=content_type)


class HttpMetrics:
    """Counts each HTTP request by method, route template and status, and times it. The
    label is the matched route's template (`/v1/requests/{request_id}`, set by the router
    in `scope["route"]`) or `unmatched`, never the raw path: cardinality stays bounded."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status = 500  # what the server answers when the app raises before responding

        async def send_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_status)
        finally:
            metrics.observe_http(
                scope["method"], route_template(scope), status, time.perf_counter() - started
            )


def route_template(scope: Scope) -> str:
    """The full template of the route that served `scope` (`/v1/requests/{request_id}`), or
    `unmatched`.

    FastAPI puts the route as declared in `scope["route"]`, without the prefix its router
    was included under (`/v1`); that prefix is the part of the path before the first `/`
    from which the route's own pattern matches the rest. It is a prefix of the static
    include prefix (the router matched it), so the label set stays bounded.
    """
    route = scope.get("route")
    template = getattr(route, "path", None)
    if not isinstance(template, str):
        return "unmatched"
    pattern = getattr(route, "path_regex", None)
    path: str = scope.get("path", "")
    root_path: str = scope.get("root_path", "")
    if root_path and path.startswith(root_path):
        path = path[len(root_path) :]
    if isinstance(pattern, re.Pattern):
        for k, char in enumerate(path):
            if char == "/" and pattern.match(path[k:]):
                return path[:k] + template
    return template
