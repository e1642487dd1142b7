"""`/v1/providers`: every registered adapter, its health, and polling one on demand.

A provider entry is an adapter of the registry. Its status is `disabled` (not configured;
`reason` says what to set), `pending` (enabled, never polled), or what its last poll left:
`ok` or `degraded` (then `scope_errors` says which scopes failed and why, already redacted
by the adapter). `feeds` are the market providers its last poll covered: an adapter feeds
itself, `replay` the clouds of its snapshot; offer and stale counts are theirs.

A source's health comes from its own polls (`poll_runs` of that `source`), never from the
`provider_states` of the clouds it feeds: replay and a live adapter may feed the same cloud,
and each must show how its own polls went, not the other's.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from sqlalchemy import String, case, cast, func, select
from sqlmodel import Session, col

from broker.api.deps import ClockDep, EngineDep, SessionDep, SettingsDep, require_role
from broker.api.errors import conflict, not_found
from broker.api.pagination import (
    DEFAULT_LIMIT,
    CursorQuery,
    LimitQuery,
    Page,
    decode_cursor,
    encode_cursor,
)
from broker.api.schemas import PollSummary, ProviderPublic
from broker.auth import Role
from broker.domain import ProviderStatus
from broker.models import PollRun, StoredOffer
from broker.pipeline import after_ingest
from broker.polling import poll_source
from broker.sources import REPLAY, SourceCatalog
from providers import base as provider_base

log = logging.getLogger(__name__)

router = APIRouter(prefix="/providers", tags=["providers"])

PENDING = "pending"


def get_catalog(request: Request) -> SourceCatalog:
    catalog: SourceCatalog = request.app.state.sources
    return catalog


CatalogDep = Annotated[SourceCatalog, Depends(get_catalog)]


def _scope_provider(scope: str) -> str:
    return scope.split("/", 1)[0]


@dataclass(frozen=True)
class SourceHealth:
    """What a source's own polls say: its latest run, its latest run in which some scope
    answered (None: never), and how many runs in a row since the last fully ok one."""

    last: PollRun
    last_success: PollRun | None
    consecutive_failures: int


def _latest_by_source(session: Session, names: list[str], *where: Any) -> dict[str, PollRun]:
    """The latest poll run of each source among `names` matching `where`."""
    latest = (
        select(col(PollRun.source), func.max(col(PollRun.id)).label("id"))
        .where(col(PollRun.source).in_(names), *where)
        .group_by(col(PollRun.source))
        .subquery()
    )
    rows = session.execute(select(PollRun).join(latest, col(PollRun.id) == latest.c.id))
    return {r.source: r for r in rows.scalars()}


def _source_health(session: Session, names: Iterable[str]) -> dict[str, SourceHealth]:
    """The health of each polled source among `names`, from its own poll runs only."""
    names = list(names)
    last = _latest_by_source(session, names)
    # A run "succeeded" for `last_success_at` when some scope answered (as provider
    # states count it); `scopes_ok` is a JSON list, stored as the text `[]` when empty.
    succeeded = _latest_by_source(session, names, cast(col(PollRun.scopes_ok), String) != "[]")
    last_ok = (
        select(col(PollRun.source), func.max(col(PollRun.id)).label("id"))
        .where(col(PollRun.source).in_(names), col(PollRun.status) == ProviderStatus.OK.value)
        .group_by(col(PollRun.source))
        .subquery()
    )
    since_ok = session.execute(
        select(col(PollRun.source), func.count())
        .outerjoin(last_ok, last_ok.c.source == col(PollRun.source))
        .where(col(PollRun.source).in_(names), col(PollRun.id) > func.coalesce(last_ok.c.id, 0))
        .group_by(col(PollRun.source))
    )
    failures = {source: int(n) for source, n in since_ok.all()}
    return {
        name: SourceHealth(run, succeeded.get(name), failures.get(name, 0))
        for name, run in last.items()
    }


def _offer_counts(session: Session, cutoff: datetime) -> dict[str, tuple[int, int]]:
    """(current, stale) offers by provider."""
    o = StoredOffer
    stale = func.sum(case((col(o.last_seen) < cutoff, 1), else_=0))
    rows = session.execute(
        select(col(o.provider), func.count(), stale).where(col(o.active)).group_by(col(o.provider))
    )
    return {p: (int(n), int(s or 0)) for p, n, s in rows.all()}


def _entry(
    name: str,
    reason: str | None,
    health: SourceHealth | None,
    counts: dict[str, tuple[int, int]],
) -> dict[str, Any]:
    run = health.last if health is not None else None
    if run is not None:
        scopes = [*run.scopes_ok, *(e.get("scope", "") for e in run.scope_errors)]
        feeds = sorted({_scope_provider(s) for s in scopes if s})
    else:
        feeds = [] if name == REPLAY else [name]
    errors = list(run.scope_errors) if run is not None else []
    if reason is not None:
        status = ProviderStatus.DISABLED.value
    elif run is None:
        status = PENDING  # never polled, even when another source (replay) fed its market
    else:
        status = (ProviderStatus.DEGRADED if errors else ProviderStatus.OK).value
    success = health.last_success if health is not None else None
    return {
        "name": name,
        "status": status,
        "reason": reason,
        "feeds": feeds,
        "last_poll_at": run.fetched_at if run is not None else None,
        "last_success_at": success.fetched_at if success is not None else None,
        "consecutive_failures": health.consecutive_failures if health is not None else 0,
        "scope_errors": errors,
        "offers": sum(counts.get(p, (0, 0))[0] for p in feeds),
        "stale_offers": sum(counts.get(p, (0, 0))[1] for p in feeds),
        "unrecognised": {p: u for p, u in (success.unrecognised if success else {}).items() if u},
    }


@router.get("", response_model=Page[ProviderPublic])
def list_providers(
    session: SessionDep,
    settings: SettingsDep,
    clock: ClockDep,
    catalog: CatalogDep,
    limit: LimitQuery = DEFAULT_LIMIT,
    cursor: CursorQuery = None,
) -> dict[str, Any]:
    """Every registered provider adapter, by name, with its status and its market's size."""
    sources = catalog.current()
    names = sources.names
    if cursor is not None:
        (after,) = decode_cursor(cursor, "providers", (str,))
        names = [n for n in names if n > after]
    page, more = names[:limit], len(names) > limit
    health = _source_health(session, page)
    cutoff = clock() - timedelta(minutes=settings.stale_after_minutes)
    counts = _offer_counts(session, cutoff)
    data = [_entry(n, sources.disabled.get(n), health.get(n), counts) for n in page]
    return {"data": data, "next_cursor": encode_cursor("providers", page[-1]) if more else None}


@router.post(
    "/{name}/poll",
    response_model=PollSummary,
    dependencies=[Depends(require_role(Role.ADMIN))],
)
def poll_provider(
    name: str,
    engine: EngineDep,
    settings: SettingsDep,
    clock: ClockDep,
    catalog: CatalogDep,
) -> dict[str, Any]:
    """Poll one provider now and ingest the result (admin only); returns what changed."""
    try:
        provider_base.get_provider_class(name)
    except provider_base.UnknownProvider as exc:
        raise not_found(str(exc), {"providers": provider_base.provider_names()}) from None
    sources = catalog.current()
    if name in sources.disabled:
        reason = sources.disabled[name]
        raise conflict(f"provider {name} is disabled: {reason}", {"reason": reason})
    outcome = poll_source(engine, sources.enabled[name], clock=clock)
    pipeline_ok = True
    try:
        after_ingest(engine, outcome, settings, clock)
    except Exception:
        # The poll is committed; a failing rescore must not turn it into an error answer.
        log.exception("api.after_ingest_failed", extra={"provider": name})
        pipeline_ok = False
    return {
        "provider": name,
        "status": str(outcome.status),
        "poll_run_id": outcome.poll_run_id,
        "offers": outcome.offers_seen,
        "events": dict(sorted(outcome.events.items())),
        "first_event_id": outcome.first_event_id,
        "last_event_id": outcome.last_event_id,
        "skipped": dict(sorted(outcome.skipped.items())),
        "scope_errors": outcome.scope_errors,
        "pipeline_ok": pipeline_ok,
    }
