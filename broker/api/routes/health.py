"""`/healthz` (the process answers) and `/readyz` (the database answers and its schema is at
the migrations' head); no authentication, for load balancers and orchestrators.

`/readyz` also says how far this process's clock is from the database's (`clock_skew_s`,
`clock`: `ok`, or `skewed` beyond `BROKER_MAX_CLOCK_SKEW_S`). A skewed clock leaves the API
ready (every replica of a host shares its clock: failing them all would take the API down,
and the ledger's expiry follows the database's clock anyway) but says so, as the
`broker_clock_skew_seconds` metric does."""

from __future__ import annotations

import functools
import logging
from typing import Literal

from fastapi import APIRouter
from fastapi.responses import JSONResponse
from pydantic import Field

from broker import db, metrics
from broker.api.deps import ClockDep, EngineDep, SettingsDep
from broker.api.errors import ErrorBody, error_response
from broker.api.schemas import Health, Readiness

log = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


class ReadinessDetail(Readiness):
    """Readiness, and this process's clock against the database's."""

    clock_skew_s: float | None = Field(
        description="This process's clock minus the database's, in seconds (positive: "
        "ahead); null when it could not be measured."
    )
    clock: Literal["ok", "skewed", "unknown"] = Field(
        description="`skewed`: off by more than BROKER_MAX_CLOCK_SKEW_S."
    )


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
    response_model=ReadinessDetail,
    responses={503: {"model": ErrorBody, "description": "Database unreachable or not migrated."}},
)
def readyz(
    engine: EngineDep, settings: SettingsDep, clock: ClockDep
) -> ReadinessDetail | JSONResponse:
    """Readiness: the database answers and its schema is at the head revision; and how far
    this process's clock is from the database's."""
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
    skew = metrics.observe_clock_skew(engine, settings, clock)
    state: Literal["ok", "skewed", "unknown"] = (
        "unknown" if skew is None else "skewed" if abs(skew) > settings.max_clock_skew_s else "ok"
    )
    return ReadinessDetail(
        status="ready",
        database="ok",
        revision=current,
        head=head,
        clock_skew_s=None if skew is None else round(skew, 3),
        clock=state,
    )
