"""Query strings are checked like bodies: a parameter no route declares is a 422.

FastAPI ignores query parameters a route does not declare, so a typo (`?gpus=H100` for
`?gpu=H100`) silently returned every offer. `reject_unknown_query` (a dependency of every
`/v1` route) compares the request's parameter names with the route's declared ones and
answers 422 naming the unknown one and the nearest declared name.
"""

from __future__ import annotations

import difflib
from typing import Any

from fastapi import Request
from fastapi.routing import APIRoute

from broker.api.errors import ApiError


def _query_names(dependant: Any) -> set[str]:
    """The query parameter names of a dependant and of every dependency under it."""
    names = {p.alias for p in dependant.query_params}
    for sub in dependant.dependencies:
        names |= _query_names(sub)
    return names


def _declared(route: APIRoute) -> frozenset[str]:
    cached: frozenset[str] | None = getattr(route, "_broker_query_names", None)
    if cached is None:
        cached = frozenset(_query_names(route.dependant))
        route._broker_query_names = cached  # type: ignore[attr-defined]
    return cached


def reject_unknown_query(request: Request) -> None:
    """422 for a query parameter the route does not declare."""
    route = request.scope.get("route")
    if not isinstance(route, APIRoute):
        return
    declared = _declared(route)
    unknown = sorted({k for k in request.query_params if k not in declared})
    if not unknown:
        return
    name = unknown[0][:64]
    near = difflib.get_close_matches(name, sorted(declared), n=1, cutoff=0.6)
    hint = f" (did you mean {near[0]}?)" if near else ""
    known = ", ".join(sorted(declared)) or "none"
    raise ApiError(
        422,
        "invalid_request",
        f"unknown query parameter {name!r}{hint}; this route takes: {known}",
        [{"loc": f"query.{name}", "field": name, "message": "unknown query parameter"}],
    )
