"""The market store: ingest a `PollResult` into offers, observations and market events.

Owns the diff. One poll is ingested in one transaction (the caller's session): offers are
compared with the current ones **only inside the scopes the poll covered**, upserted,
withdrawn where covered and missing; every change appends an observation (price and
availability history as change points) and a market event (append-only, numbered in commit
order). A re-poll with no change writes no event and no observation, only `last_seen`.
Staleness is derived, never stored: an offer is stale when its `last_seen` is older than the
TTL, which is exactly "its scope has not been seen by a successful poll for that long".
Knows nothing of HTTP, Celery or any provider SDK.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from operator import attrgetter
from typing import Any

from sqlalchemy import (
    Connection,
    String,
    and_,
    bindparam,
    cast,
    false,
    func,
    insert,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.sql.elements import ColumnElement
from sqlmodel import Session

from broker import anomalies, gpus
from broker.domain import (
    OFFER_EVENT_TYPES,
    PRICE_QUANTUM,
    SPEC_FIELDS,
    Availability,
    Clock,
    EventType,
    Market,
    Offer,
    PollResult,
    ProviderStatus,
    Quota,
    Scope,
    utcnow,
)
from broker.models import (
    MarketEvent,
    Observation,
    PollRun,
    ProviderState,
    StoredOffer,
    StoredQuota,
)

OFFERS = StoredOffer.__table__  # type: ignore[attr-defined]
OBSERVATIONS = Observation.__table__  # type: ignore[attr-defined]
EVENTS = MarketEvent.__table__  # type: ignore[attr-defined]
POLL_RUNS = PollRun.__table__  # type: ignore[attr-defined]
PROVIDER_STATES = ProviderState.__table__  # type: ignore[attr-defined]
QUOTAS = StoredQuota.__table__  # type: ignore[attr-defined]

#: PostgreSQL advisory lock held by every ingest: events get their ids and commit in the same
#: order, so a reader following `id > after` never skips an event committed late.
INGEST_LOCK_KEY = 0x6270_6B72  # "bpkr"

#: The fields that describe an offer (not its price, availability, or raw audit fields).
DESCRIPTIVE_FIELDS = (
    "provider",
    "region",
    "zone",
    "instance_type",
    "market",
    "offering_id",
    "gpu_model",
    "gpu_name_raw",
    "gpu_family",
    "accelerator_kind",
    "gpu_vendor",
    "form_factor",
    "gpu_count",
    "gpu_memory_gb",
    "vcpus",
    "memory_gb",
    "interconnect",
    "country",
    "jurisdiction",
    "continent",
    "currency",
    "upfront_fee",
    "earliest_start",
    "min_duration_hours",
    "max_duration_hours",
)


_DESCRIBE = attrgetter(*DESCRIPTIVE_FIELDS)


def fingerprint(offer: Offer) -> str:
    """Hash of the descriptive fields: a change of one of them updates the row silently."""
    return hashlib.blake2b(repr(_DESCRIBE(offer)).encode(), digest_size=16).hexdigest()


def _offer_values(offer: Offer, fp: str) -> dict[str, Any]:
    values = {f: getattr(offer, f) for f in DESCRIPTIVE_FIELDS}
    values["market"] = str(offer.market)
    values.update(
        key=offer.key,
        price_per_hour=offer.price_per_hour,
        price_per_gpu_hour=offer.price_per_gpu_hour,
        availability=str(offer.availability),
        available_count=offer.available_count,
        fingerprint=fp,
        raw=dict(offer.raw),
    )
    return values


def _state(price: Decimal, availability: str, count: int | None) -> dict[str, Any]:
    return {"price_per_hour": str(price), "availability": availability, "available_count": count}


#: The scale each spec field is stored with (models.COUNT, models.SIZE): an offer's value is
#: compared at that scale, or 22888 MiB / 1024 = 22.3515625 GB would differ from its stored
#: 22.35 on every poll.
_SPEC_SCALE = {"gpu_count": Decimal("0.001")}
_SIZE_SCALE = Decimal("0.01")


def _spec(values: Any) -> dict[str, str | None]:
    """The `SPEC_FIELDS` of an offer or row at their stored scale, as strings."""
    out: dict[str, str | None] = {}
    for f in SPEC_FIELDS:
        v = getattr(values, f)
        if v is None:
            out[f] = None
            continue
        d = Decimal(v).quantize(_SPEC_SCALE.get(f, _SIZE_SCALE), rounding=ROUND_HALF_EVEN)
        out[f] = str(d.normalize())
    return out


def _point(
    offer_id: int,
    kind: str,
    at: datetime,
    run_id: int,
    price: Decimal,
    gpu_count: Decimal,
    availability: str,
    count: int | None,
) -> dict[str, Any]:
    """One history point (an `observations` row) with the per-GPU price of its own time."""
    return {
        "offer_id": offer_id,
        "at": at,
        "kind": kind,
        "price_per_hour": price,
        "gpu_count": gpu_count,
        "price_per_gpu_hour": (price / gpu_count).quantize(PRICE_QUANTUM),
        "availability": availability,
        "available_count": count,
        "poll_run_id": run_id,
    }


def _appeared_payload(offer: Offer) -> dict[str, Any]:
    return {
        "gpu_model": offer.gpu_model,
        "gpu_name_raw": offer.gpu_name_raw,
        "gpu_count": str(offer.gpu_count),
        "region": offer.region,
        "zone": offer.zone,
        "jurisdiction": offer.jurisdiction,
        "market": str(offer.market),
        "price_per_gpu_hour": str(offer.price_per_gpu_hour),
        **_state(offer.price_per_hour, str(offer.availability), offer.available_count),
    }


@dataclass
class IngestResult:
    """What one ingest did. `events` counts by type; ids bound the events it appended."""

    poll_run_id: int
    status: ProviderStatus
    offers_seen: int
    events: Counter[str] = field(default_factory=Counter)
    first_event_id: int | None = None
    last_event_id: int | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    scope_errors: list[dict[str, Any]] = field(default_factory=list)
    provider_status: dict[str, ProviderStatus] = field(default_factory=dict)
    #: provider -> {"regions": {...}, "gpu_names": {...}} the tables did not know.
    unrecognised: dict[str, Any] = field(default_factory=dict)


def _scope_clause(scopes: Sequence[Scope]) -> ColumnElement[bool]:
    """SQL for "the offer lies inside one of these scopes"."""
    terms = []
    for s in scopes:
        conds = [OFFERS.c.provider == s.provider]
        if s.region is not None:
            conds.append(OFFERS.c.region == s.region)
        if s.market is not None:
            conds.append(OFFERS.c.market == str(s.market))
        terms.append(and_(*conds))
    return or_(*terms) if terms else false()


def _covered(scopes: Mapping[str, list[Scope]], provider: str, region: str, market: str) -> bool:
    return any(s.covers(provider, region, market) for s in scopes.get(provider, ()))


@dataclass
class _Diff:
    """What one ingest will write, gathered before any write."""

    at: datetime
    run_id: int
    inserts: list[dict[str, Any]] = field(default_factory=list)
    inserted_offers: list[Offer] = field(default_factory=list)
    updates: list[dict[str, Any]] = field(default_factory=list)  # changed or returned
    touch_ids: list[int] = field(default_factory=list)  # unchanged, outside covered scopes
    withdrawals: list[dict[str, Any]] = field(default_factory=list)
    sold_out: list[dict[str, Any]] = field(default_factory=list)
    events: list[dict[str, Any]] = field(default_factory=list)
    observations: list[dict[str, Any]] = field(default_factory=list)
    #: GPU models (None: unrecognised) of every offer written: whose flags may change.
    models: set[str | None] = field(default_factory=set)

    def event(
        self, type_: EventType, offer_key: str | None, provider: str, before: Any, after: Any
    ) -> None:
        self.events.append(
            {
                "type": str(type_),
                "provider": provider,
                "offer_key": offer_key,
                "at": self.at,
                "poll_run_id": self.run_id,
                "before": before,
                "after": after,
            }
        )

    def point(self, offer_id: int, kind: str, o: Any, availability: str, count: int | None) -> None:
        self.observations.append(
            _point(
                offer_id,
                kind,
                self.at,
                self.run_id,
                o.price_per_hour,
                o.gpu_count,
                availability,
                count,
            )
        )


_CURRENT_COLUMNS = (
    "id",
    "key",
    "provider",
    "region",
    "market",
    "instance_type",
    "active",
    "price_per_hour",
    "price_per_gpu_hour",
    "availability",
    "available_count",
    "fingerprint",
    "gpu_model",
    *SPEC_FIELDS,
)


def ingest_poll(
    session: Session,
    result: PollResult,
    *,
    source: str,
    label: str | None = None,
    clock: Clock = utcnow,
) -> IngestResult:
    """Apply one poll to the store inside the caller's transaction (commit is theirs).

    Offers carry their own provider; `source` names who polled (an adapter, `replay`).
    The poll's `fetched_at` stamps `first_seen`, `last_seen`, observations and events.
    Offers of a scope in `scope_errors` (or of no scope in the poll) are left untouched.
    """
    conn = session.connection()
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": INGEST_LOCK_KEY})
    at = result.fetched_at
    providers = result.providers
    scopes_ok: dict[str, list[Scope]] = {}
    for s in result.scopes_ok:
        scopes_ok.setdefault(s.provider, []).append(s)
    unrecognised = unrecognised_of(result.offers)
    run_id = conn.execute(
        insert(POLL_RUNS).returning(POLL_RUNS.c.id),
        {
            "source": source,
            "label": label,
            "fetched_at": at,
            "ingested_at": clock(),
            "status": "running",
            "offers_seen": 0,
            "scopes_ok": [str(s) for s in result.scopes_ok],
            "scope_errors": [e.as_dict() for e in result.scope_errors],
            "events": {},
            "skipped": dict(result.skipped),
            "origins": dict(result.origins),
            "unrecognised": unrecognised,
        },
    ).scalar_one()

    current: dict[str, Any] = {}
    if providers:
        rows = conn.execute(
            select(*(OFFERS.c[c] for c in _CURRENT_COLUMNS)).where(OFFERS.c.provider.in_(providers))
        )
        current = {r.key: r for r in rows.all()}
    new: dict[str, Offer] = {}
    for offer in result.offers:
        new.setdefault(offer.key, offer)  # adapters dedupe; a late repeat never overrides

    diff = _Diff(at, run_id)
    _diff_seen(diff, new, current, scopes_ok)
    _diff_missing(diff, new, current, scopes_ok, result.capacity_by_presence)
    _write(conn, diff, result.scopes_ok)
    if result.quotas:
        _upsert_quotas(conn, result.quotas, at)
    provider_status = _update_provider_states(
        session, result, providers, at, diff.event, unrecognised
    )
    if diff.models:
        # Only a price, spec or membership change can change a flag, and only of its model.
        refresh_anomalies(conn, diff.models)
    counts: Counter[str] = Counter(e["type"] for e in diff.events)
    first_id = last_id = None
    if diff.events:
        ids = _allocate_ids(conn, "market_events", len(diff.events))
        for eid, values in zip(ids, diff.events, strict=True):
            values["id"] = eid
        conn.execute(insert(EVENTS), diff.events)
        first_id, last_id = ids[0], ids[-1]
    status = _worst(provider_status.values())
    conn.execute(
        update(POLL_RUNS)
        .where(POLL_RUNS.c.id == run_id)
        .values(
            status=str(status),
            offers_seen=len(new),
            events=dict(counts),
            # Nothing to process without events; otherwise `process_events` stamps it.
            processed_at=None if diff.events else clock(),
        )
    )
    return IngestResult(
        poll_run_id=run_id,
        status=status,
        offers_seen=len(new),
        events=counts,
        first_event_id=first_id,
        last_event_id=last_id,
        skipped=dict(result.skipped),
        scope_errors=[e.as_dict() for e in result.scope_errors],
        provider_status=provider_status,
        unrecognised=unrecognised,
    )


def unrecognised_of(offers: Iterable[Offer]) -> dict[str, Any]:
    """provider -> {"regions": {region: offers}, "gpu_names": {raw name: offers}}: what the
    region table and the GPU catalogue did not know (the offers are kept, with a null
    location or model), so an operator sees what to add."""
    out: dict[str, dict[str, Counter[str]]] = {}
    for o in offers:
        if o.country is None:
            out.setdefault(o.provider, {"regions": Counter(), "gpu_names": Counter()})["regions"][
                o.region
            ] += 1
        if o.gpu_model is None and o.gpu_name_raw:
            out.setdefault(o.provider, {"regions": Counter(), "gpu_names": Counter()})["gpu_names"][
                o.gpu_name_raw
            ] += 1
    return {
        p: {k: dict(sorted(c.items())) for k, c in parts.items() if c} for p, parts in out.items()
    }


def _diff_seen(
    diff: _Diff,
    new: Mapping[str, Offer],
    current: Mapping[str, Any],
    scopes_ok: Mapping[str, list[Scope]],
) -> None:
    """Offers this poll saw: new ones appear, withdrawn ones return, changed ones change."""
    # Providers covered whole by this poll: every offer of theirs is inside a covered scope.
    whole = {
        p for p, ss in scopes_ok.items() if any(s.region is None and s.market is None for s in ss)
    }
    for key, offer in new.items():
        fp = fingerprint(offer)
        old = current.get(key)
        if old is None:
            values = _offer_values(offer, fp)
            values.update(
                first_seen=diff.at,
                last_seen=diff.at,
                active=True,
                withdrawn_at=None,
                poll_run_id=diff.run_id,
            )
            diff.inserts.append(values)
            diff.inserted_offers.append(offer)
            diff.models.add(offer.gpu_model)
            diff.event(
                EventType.OFFER_APPEARED, key, offer.provider, None, _appeared_payload(offer)
            )
            continue
        availability = str(offer.availability)
        price_moved = old.price_per_hour != offer.price_per_hour
        avail_moved = (old.availability, old.available_count) != (
            availability,
            offer.available_count,
        )
        # The fingerprint covers the spec: only a changed one can hold a spec change.
        spec_before, spec_after = (_spec(old), _spec(offer)) if old.fingerprint != fp else ({}, {})
        spec_moved = spec_before != spec_after
        if not old.active:
            diff.event(
                EventType.OFFER_APPEARED, key, offer.provider, None, _appeared_payload(offer)
            )
        else:
            _change_events(diff, key, old, offer, price_moved, avail_moved)
            if spec_moved:
                before = {f: v for f, v in spec_before.items() if spec_after[f] != v}
                after = {f: spec_after[f] for f in before}
                before["price_per_gpu_hour"] = str(old.price_per_gpu_hour)
                after["price_per_gpu_hour"] = str(offer.price_per_gpu_hour)
                diff.event(EventType.SPEC_CHANGED, key, offer.provider, before, after)
        moved = not old.active or price_moved or avail_moved or spec_moved
        if moved or old.fingerprint != fp:
            values = _offer_values(offer, fp)
            values.update(
                _id=old.id,
                last_seen=diff.at,
                active=True,
                withdrawn_at=None,
                poll_run_id=diff.run_id,
            )
            diff.updates.append(values)
            diff.models |= {offer.gpu_model, old.gpu_model}
            if moved:
                kind = "changed" if old.active else "returned"
                diff.point(old.id, kind, offer, availability, offer.available_count)
        elif offer.provider not in whole and not _covered(
            scopes_ok, offer.provider, offer.region, old.market
        ):
            diff.touch_ids.append(old.id)


def _change_events(
    diff: _Diff, key: str, old: Any, offer: Offer, price_moved: bool, avail_moved: bool
) -> None:
    """`price_changed` / `availability_changed` of an active offer; each per-GPU price is
    of its own time (the old one as stored, with the old GPU count)."""
    if not (price_moved or avail_moved):
        return
    availability = str(offer.availability)
    before = _state(old.price_per_hour, old.availability, old.available_count)
    after = _state(offer.price_per_hour, availability, offer.available_count)
    if price_moved:
        before["price_per_gpu_hour"] = str(old.price_per_gpu_hour)
        after["price_per_gpu_hour"] = str(offer.price_per_gpu_hour)
        diff.event(EventType.PRICE_CHANGED, key, offer.provider, before, after)
    if avail_moved:
        diff.event(EventType.AVAILABILITY_CHANGED, key, offer.provider, before, after)


def _diff_missing(
    diff: _Diff,
    new: Mapping[str, Offer],
    current: Mapping[str, Any],
    scopes_ok: Mapping[str, list[Scope]],
    capacity_by_presence: frozenset[tuple[str, str]],
) -> None:
    """Active offers of a covered scope that this poll did not see: withdrawn, or sold out
    where the provider lists only what is in stock."""
    unavailable = str(Availability.UNAVAILABLE)
    for key, old in current.items():
        if (
            not old.active
            or key in new
            or not _covered(scopes_ok, old.provider, old.region, old.market)
        ):
            continue
        before = _state(old.price_per_hour, old.availability, old.available_count)
        if (old.provider, old.instance_type) in capacity_by_presence:
            # Still sold, just not listed with capacity here now: a sell-out, not a
            # withdrawal, so "tell me when it comes back" has an offer to watch.
            if (old.availability, old.available_count) != (unavailable, None):
                diff.sold_out.append({"_id": old.id})
                diff.point(old.id, "changed", old, unavailable, None)
                after = _state(old.price_per_hour, unavailable, None)
                diff.event(EventType.AVAILABILITY_CHANGED, key, old.provider, before, after)
            continue
        diff.withdrawals.append({"_id": old.id})
        diff.models.add(old.gpu_model)
        diff.point(old.id, "withdrawn", old, old.availability, old.available_count)
        diff.event(EventType.OFFER_WITHDRAWN, key, old.provider, before, None)


def _write(conn: Connection, diff: _Diff, scopes_ok: Sequence[Scope]) -> None:
    """The gathered inserts and updates, in bulk statements."""
    at, run_id = diff.at, diff.run_id
    if diff.inserts:
        ids = _allocate_ids(conn, "offers", len(diff.inserts))
        for oid, values in zip(ids, diff.inserts, strict=True):
            values["id"] = oid
        conn.execute(insert(OFFERS), diff.inserts)
        for oid, o in zip(ids, diff.inserted_offers, strict=True):
            diff.point(oid, "appeared", o, str(o.availability), o.available_count)
    if diff.updates:
        cols: dict[str, Any] = {c: bindparam(c) for c in diff.updates[0] if c != "_id"}
        conn.execute(
            update(OFFERS).where(OFFERS.c.id == bindparam("_id")).values(cols), diff.updates
        )
    if diff.sold_out:
        conn.execute(
            update(OFFERS)
            .where(OFFERS.c.id == bindparam("_id"))
            .values(
                availability=str(Availability.UNAVAILABLE),
                available_count=None,
                poll_run_id=run_id,
            ),
            diff.sold_out,
        )
    if diff.withdrawals:
        conn.execute(
            update(OFFERS)
            .where(OFFERS.c.id == bindparam("_id"))
            .values(active=False, withdrawn_at=at, poll_run_id=run_id),
            diff.withdrawals,
        )
    # Every active offer left inside a covered scope was seen by this poll.
    if scopes_ok:
        conn.execute(
            update(OFFERS)
            .where(OFFERS.c.active, _scope_clause(scopes_ok), OFFERS.c.last_seen < at)
            .values(last_seen=at, poll_run_id=run_id)
        )
    if diff.touch_ids:
        conn.execute(
            update(OFFERS)
            .where(OFFERS.c.id == bindparam("_id"))
            .values(last_seen=at, poll_run_id=run_id),
            [{"_id": i} for i in diff.touch_ids],
        )
    if diff.observations:
        conn.execute(insert(OBSERVATIONS), diff.observations)


def refresh_anomalies(conn: Connection, models: Iterable[str | None] | None = None) -> int:
    """Re-run the price-sanity rules (`broker.anomalies`) and store each offer's flags;
    returns how many offers' flags changed. The rules compare an offer with the rest of the
    market (a poll of one provider can change another's flags), but only with offers of its
    own GPU model: the same instance type (rules 1, 3: a type carries one model), slice family
    (2) or model (4). So `models` (None in it: unrecognised accelerators) re-judges exactly
    the offers of those models, a closed set; no `models` re-judges the whole market."""
    c = OFFERS.c
    where: list[ColumnElement[bool]] = [c.active]
    if models is not None:
        wanted = set(models)
        known = sorted(m for m in wanted if m is not None)
        parts = [c.gpu_model.in_(known)] if known else []
        if None in wanted:
            parts.append(c.gpu_model.is_(None))
        if not parts:
            return 0
        where.append(or_(*parts))
    rows = conn.execute(
        select(
            c.id,
            c.key,
            c.provider,
            c.region,
            c.zone,
            c.instance_type,
            c.market,
            c.gpu_model,
            c.gpu_family,
            c.accelerator_kind,
            c.gpu_count,
            c.price_per_hour,
            c.price_per_gpu_hour,
            # As stored (text): comparing serialised flags spares decoding every row's JSON.
            cast(c.anomalies, String).label("stored"),
        ).where(*where)
    ).all()
    found = anomalies.detect(rows)
    changes = []
    for r in rows:
        flags = [a.as_dict() for a in found.get(r.key, ())]
        if (json.dumps(flags) if flags else "[]") != r.stored:
            changes.append({"_id": r.id, "flags": flags})
    if changes:
        conn.execute(
            update(OFFERS)
            .where(OFFERS.c.id == bindparam("_id"))
            .values(anomalies=bindparam("flags")),
            changes,
        )
    return len(changes)


def _upsert_quotas(conn: Connection, quotas: Sequence[Quota], at: datetime) -> None:
    """The latest figure of each (provider, region, name, market) quota wins."""
    rows = {
        (q.provider, q.region, q.name, str(q.market) if q.market else "*"): {
            "unit": q.unit,
            "limit": q.limit,
            "usage": q.usage,
            "instance_types": sorted(q.instance_types),
            "description": q.description,
            "seen_at": at,
        }
        for q in quotas
    }
    providers = sorted({k[0] for k in rows})
    existing = {
        (r.provider, r.region, r.name, r.market): r.id
        for r in conn.execute(
            select(
                QUOTAS.c.id, QUOTAS.c.provider, QUOTAS.c.region, QUOTAS.c.name, QUOTAS.c.market
            ).where(QUOTAS.c.provider.in_(providers))
        )
    }
    updates = [{"_id": existing[k], **v} for k, v in rows.items() if k in existing]
    inserts = [
        {"provider": k[0], "region": k[1], "name": k[2], "market": k[3], **v}
        for k, v in rows.items()
        if k not in existing
    ]
    if updates:
        cols: dict[str, Any] = {c: bindparam(c) for c in updates[0] if c != "_id"}
        conn.execute(update(QUOTAS).where(QUOTAS.c.id == bindparam("_id")).values(cols), updates)
    if inserts:
        conn.execute(insert(QUOTAS), inserts)


def _allocate_ids(conn: Connection, table: str, n: int) -> list[int]:
    """`n` fresh ascending primary keys for `table`, so bulk inserts need no RETURNING.

    A plain executemany is pipelined by psycopg with the statement converted once, where a
    multi-row INSERT ... RETURNING is rebuilt and re-parsed per page (5x slower, measured).
    PostgreSQL draws them from the table's sequence (safe beside concurrent writers); on
    SQLite the ingest already holds the database's write lock (its poll-run row was
    inserted first), so max(id) + 1... cannot be taken by anyone else.
    """
    if conn.dialect.name == "postgresql":
        rows = conn.execute(
            text("SELECT nextval(pg_get_serial_sequence(:t, 'id')) FROM generate_series(1, :n)"),
            {"t": table, "n": n},
        )
        return sorted(int(r[0]) for r in rows)
    top = conn.execute(text(f"SELECT coalesce(max(id), 0) FROM {table}")).scalar_one()
    return list(range(int(top) + 1, int(top) + 1 + n))


def _worst(statuses: Iterable[ProviderStatus]) -> ProviderStatus:
    return ProviderStatus.DEGRADED if ProviderStatus.DEGRADED in statuses else ProviderStatus.OK


def _update_provider_states(
    session: Session,
    result: PollResult,
    providers: list[str],
    at: datetime,
    event: Callable[[EventType, str | None, str, Any, Any], None],
    unrecognised: Mapping[str, Any],
) -> dict[str, ProviderStatus]:
    """Record each provider's health (and what its last successful poll could not map);
    emit provider_degraded / provider_recovered on edges."""
    conn = session.connection()
    previous = {
        r.provider: r
        for r in conn.execute(
            select(PROVIDER_STATES).where(PROVIDER_STATES.c.provider.in_(providers))
        )
    }
    out: dict[str, ProviderStatus] = {}
    for p in providers:
        errors = [e.as_dict() for e in result.scope_errors if e.scope.provider == p]
        ok = any(s.provider == p for s in result.scopes_ok)
        status = ProviderStatus.DEGRADED if errors else ProviderStatus.OK
        out[p] = status
        prev = previous.get(p)
        prev_status = ProviderStatus(prev.status) if prev else None
        if status != ProviderStatus.OK and prev_status in (None, ProviderStatus.OK):
            event(
                EventType.PROVIDER_DEGRADED,
                None,
                p,
                None,
                {"status": str(status), "errors": errors},
            )
        elif status == ProviderStatus.OK and prev_status == ProviderStatus.DEGRADED:
            event(
                EventType.PROVIDER_RECOVERED,
                None,
                p,
                {"status": str(prev_status)},
                {"status": str(status)},
            )
        values = {
            "status": str(status),
            "last_poll_at": at,
            "last_success_at": at if ok else (prev.last_success_at if prev else None),
            "consecutive_failures": 0
            if status == ProviderStatus.OK
            else (prev.consecutive_failures if prev else 0) + 1,
            "last_errors": errors,
        }
        if ok:
            values["unrecognised"] = unrecognised.get(p, {})
        if prev is None:
            conn.execute(insert(PROVIDER_STATES).values(provider=p, **values))
        else:
            conn.execute(
                update(PROVIDER_STATES).where(PROVIDER_STATES.c.provider == p).values(**values)
            )
    return out


# ---------------------------------------------------------------------------- queries


@dataclass(frozen=True)
class OfferQuery:
    """Filters of `broker offers` / `GET /v1/offers`. `gpu_models` is already resolved
    (`gpu_filters`); None means no filter. `gpu_minimums`: canonical model -> the least
    GPUs per instance (`H100:8`)."""

    gpu_models: frozenset[str] | None = None
    gpu_minimums: Mapping[str, int] = field(default_factory=dict)
    min_gpus: Decimal | None = None
    providers: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    countries: tuple[str, ...] = ()
    jurisdictions: tuple[str, ...] = ()
    markets: tuple[Market, ...] = ()
    max_price_per_gpu_hour: Decimal | None = None
    include_stale: bool = False
    exclude_anomalies: bool = False


def gpu_filters(values: Iterable[str]) -> tuple[frozenset[str] | None, dict[str, int]]:
    """User GPU filters (`H100`, `H100 80GB`, `H100:8` = at least 8 per instance) as the
    models they cover (None: no filter) and the per-model minimum per instance (a model
    named twice keeps the smaller minimum; named once without a count, no minimum).

    Raises:
        broker.gpus.GpuFilterError: a name the catalogue does not know, or a bad count.
    """
    models: set[str] = set()
    minimum: dict[str, int | None] = {}
    for value in values:
        covered, count = gpus.parse_gpu_filter(value)
        models |= covered
        for m in covered:
            if m not in minimum:
                minimum[m] = count
            else:
                before = minimum[m]
                minimum[m] = None if before is None or count is None else min(before, count)
    if not models:
        return None, {}
    return frozenset(models), {m: n for m, n in minimum.items() if n is not None}


OUTPUT_FIELDS = (
    "key",
    "provider",
    "instance_type",
    "gpu_model",
    "gpu_name_raw",
    "gpu_family",
    "form_factor",
    "accelerator_kind",
    "gpu_count",
    "gpu_memory_gb",
    "vcpus",
    "memory_gb",
    "region",
    "zone",
    "country",
    "jurisdiction",
    "continent",
    "market",
    "currency",
    "price_per_hour",
    "price_per_gpu_hour",
    "upfront_fee",
    "availability",
    "available_count",
    "earliest_start",
    "first_seen",
    "last_seen",
    "anomalies",
    "stale",
    "source",
)
#: Output fields that are not columns of `offers` (computed when read).
_DERIVED = frozenset({"stale", "source"})


def sources(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> dict[int, dict[str, Any]]:
    """poll_run_id -> the poll's `source` parts: `{poll_id, fetched_at, origins}` for the
    polls the rows point at (one query)."""
    ids = sorted({r["poll_run_id"] for r in rows if r.get("poll_run_id") is not None})
    if not ids:
        return {}
    runs = conn.execute(
        select(POLL_RUNS.c.id, POLL_RUNS.c.fetched_at, POLL_RUNS.c.origins).where(
            POLL_RUNS.c.id.in_(ids)
        )
    )
    return {r.id: {"fetched_at": r.fetched_at, "origins": r.origins or {}} for r in runs}


def source_of(
    provider: str, poll_run_id: int | None, polls: Mapping[int, Mapping[str, Any]]
) -> dict[str, Any] | None:
    """An offer's (or history point's) provenance: the poll, where the provider's data came
    from in it (adapter and endpoints, or snapshot file and commit), and when it was fetched.
    None for rows written before provenance was recorded."""
    poll = polls.get(poll_run_id) if poll_run_id is not None else None
    if poll is None:
        return None
    return {
        "poll_id": poll_run_id,
        "origin": poll["origins"].get(provider),
        "fetched_at": poll["fetched_at"],
    }


def list_offers(
    session: Session,
    query: OfferQuery,
    *,
    now: datetime,
    stale_after: timedelta,
    limit: int | None = None,
    after: tuple[Decimal, str] | None = None,
) -> list[dict[str, Any]]:
    """Current (not withdrawn) offers matching `query`, cheapest per GPU-hour first.

    Each is a dict of `OUTPUT_FIELDS` with Python values (Decimal, datetime); `stale` is
    `last_seen < now - stale_after`. `after` = (price_per_gpu_hour, key) of the last offer
    of a previous page: only offers after it in this order (keyset pagination).
    """
    c = OFFERS.c
    cutoff = now - stale_after
    conds: list[ColumnElement[bool]] = [c.active]
    if query.gpu_models is not None:
        conds.append(c.gpu_model.in_(sorted(query.gpu_models)))
    if query.gpu_minimums:
        conds.append(
            or_(
                c.gpu_model.not_in(sorted(query.gpu_minimums)),
                *(
                    and_(c.gpu_model == m, c.gpu_count >= n)
                    for m, n in sorted(query.gpu_minimums.items())
                ),
            )
        )
    if query.min_gpus is not None:
        conds.append(c.gpu_count >= query.min_gpus)
    for column, values in (
        (c.provider, query.providers),
        (c.region, query.regions),
        (c.country, tuple(v.upper() for v in query.countries)),
        (c.jurisdiction, tuple(v.upper() for v in query.jurisdictions)),
        (c.market, tuple(str(m) for m in query.markets)),
    ):
        if values:
            conds.append(column.in_(values))
    if query.max_price_per_gpu_hour is not None:
        conds.append(c.price_per_gpu_hour <= query.max_price_per_gpu_hour)
    if query.exclude_anomalies:
        conds.append(cast(c.anomalies, String) == "[]")
    if not query.include_stale:
        conds.append(c.last_seen >= cutoff)
    if after is not None:
        price, key = after
        conds.append(
            or_(
                c.price_per_gpu_hour > price,
                and_(c.price_per_gpu_hour == price, c.key > key),
            )
        )
    cols = [getattr(c, f) for f in OUTPUT_FIELDS if f not in _DERIVED] + [c.poll_run_id]
    stmt = select(*cols).where(*conds).order_by(c.price_per_gpu_hour, c.key)
    if limit is not None:
        stmt = stmt.limit(limit)
    conn = session.connection()
    rows = [dict(row) for row in conn.execute(stmt).mappings()]
    polls = sources(conn, rows)
    for d in rows:
        d["stale"] = d["last_seen"] < cutoff
        d["source"] = source_of(d["provider"], d.pop("poll_run_id"), polls)
    return rows


def count_offers(
    session: Session,
    *,
    now: datetime | None = None,
    stale_after: timedelta | None = None,
    stale: bool | None = None,
) -> int:
    """Current offers; with `stale` True/False only the stale / fresh ones."""
    stmt = select(func.count()).select_from(OFFERS).where(OFFERS.c.active)
    if stale is not None:
        if now is None or stale_after is None:
            raise ValueError("counting by staleness needs now and stale_after")
        cutoff = now - stale_after
        stmt = stmt.where(OFFERS.c.last_seen < cutoff if stale else OFFERS.c.last_seen >= cutoff)
    return int(session.connection().execute(stmt).scalar_one())


def empty_event_counts() -> dict[str, int]:
    """The four offer event types at zero, in summary order."""
    return {str(t): 0 for t in OFFER_EVENT_TYPES}


#: Columns of `group_offers` rows (`broker offers --group`).
GROUP_FIELDS = (
    "provider",
    "gpu_model",
    "gpu_count",
    "country",
    "jurisdiction",
    "market",
    "offers",
    "available",
    "min_price_per_gpu_hour",
    "median_price_per_gpu_hour",
    "regions",
)


def group_offers(rows: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Offers (as `list_offers` returns them) grouped by provider, GPU model, GPUs per
    instance, country and market: a marketplace's thousands of per-machine listings (Vast)
    become one row per kind with how many there are, how many are available (the sum of
    the stated counts; listings without a count count once when available) and the
    cheapest and median price per GPU-hour. Cheapest group first."""
    groups: dict[tuple[Any, ...], list[Mapping[str, Any]]] = {}
    for r in rows:
        key = (r["provider"], r["gpu_model"], r["gpu_count"], r["country"], r["market"])
        groups.setdefault(key, []).append(r)
    out = []
    for (provider, model, count, country, market), members in groups.items():
        prices = sorted(m["price_per_gpu_hour"] for m in members)
        mid = len(prices) // 2
        median = prices[mid] if len(prices) % 2 else (prices[mid - 1] + prices[mid]) / 2
        available = sum(
            m["available_count"]
            if m["available_count"] is not None
            else int(m["availability"] in ("available", "limited"))
            for m in members
        )
        out.append(
            {
                "provider": provider,
                "gpu_model": model,
                "gpu_count": count,
                "country": country,
                "jurisdiction": members[0]["jurisdiction"],
                "market": market,
                "offers": len(members),
                "available": available,
                "min_price_per_gpu_hour": prices[0],
                "median_price_per_gpu_hour": median.quantize(PRICE_QUANTUM),
                "regions": sorted({m["region"] for m in members}),
            }
        )
    out.sort(key=lambda g: (g["min_price_per_gpu_hour"], g["provider"], g["gpu_model"] or ""))
    return out
