"""`/healthz` (the process answers) and `/readyz` (the database answers and its schema is at
the migrations' head); no authentication, for load balancers and orchestrators."""

from __future__ import annotations

import functools
import logging

from fastapi import APIRouter
from fastapi.responses import JSONResponse

from broker import db
from broker.api.deps import EngineDep
from broker.api.errors import ErrorBody, error_response
from broker.api.schemas import Health, Readiness

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@functools.cache
def head_revision() -> str | None:
    """The newest revision of `migrations/` (what this code expects)."""
    from alembic.config import Config
    from alembic.script import ScriptDirectory

    cfg = Config()
    cfg.set_main_option("script_location", str(db.MIGRATIONS_DIR))
    head: str | None = ScriptDirectory.from_config(cfg).get_current_head()
    return head


@router.get("/healthz", response_model=Health)
def healthz() -> Health:
    """Liveness: the process serves requests."""
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Readiness,
    responses={503: {"model": ErrorBody, "description": "Database unreachable or not migrated."}},
)
def readyz(engine: EngineDep) -> Readiness | JSONResponse:
    """Readiness: the database answers and its schema is at the head revision."""
    head = head_revision()
    try:
        current = db.current_revision(engine)
    except Exception as exc:  # any driver error means "not ready"; the URL stays out of it
        log.warning("api.readyz_db_error: %s", type(exc).__name__)
        return error_response(
            503,
            "not_ready",
            f"database unreachable ({type(exc).__name__})",
            {"database": "unreachable", "revision": None, "head": head},
        )
    if current != head:
        hint = "run `broker db upgrade`" if current is None else f"expected {head}"
        return error_response(
            503,
            "not_ready",
            f"database schema is at {current or 'none'}: {hint}",
            {"database": "ok", "revision": current, "head": head},
        )
    return Readiness(status="ready", database="ok", revision=current, head=head)
