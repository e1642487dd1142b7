"""Rescoring on market events, on SQLite and PostgreSQL, over a real snapshot: when the best
offer of a request disappears, exactly one `best_option_changed` is written; a poll that
changes nothing the request cares about writes none."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.config import Settings
from broker.db import session_scope
from broker.domain import PollResult
from broker.models import CapacityRequest, RequestEvent, Team
from broker.offers import ingest_poll
from broker.pipeline import after_ingest
from broker.requests import RequestIn, create_request, recommendations
from providers.replay import read_snapshot

T0 = datetime(2026, 5, 20, 12, tzinfo=UTC)


def ingest(engine: Engine, result: PollResult, settings: Settings, at: datetime) -> None:
    with session_scope(engine) as session:
        outcome = ingest_poll(session, result, source="replay", clock=lambda: at)
    after_ingest(engine, outcome, settings, clock=lambda: at)


def events(engine: Engine) -> list[RequestEvent]:
    with Session(engine) as session:
        return list(session.exec(select(RequestEvent).order_by(col(RequestEvent.id))).all())


def test_best_offer_withdrawn_writes_exactly_one_best_option_changed(
    engine: Engine, snapshot_dirs: list[Path], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    folder = next(p for p in snapshot_dirs if p.name == "2026-05-20")
    first = read_snapshot(folder, T0)
    ingest(engine, first, settings, T0)

    body = RequestIn.model_validate(
        {
            "gpu_models": ["H100"],
            "gpus": 16,
            "gpus_per_node": 8,
            "duration_hours": 336,
            "residency": {"allow": ["EU"]},
        }
    )
    with session_scope(engine) as session:
        team = Team(name="ml-infra", created_at=T0)
        session.add(team)
        session.flush()
        assert team.id is not None
        row = create_request(session, team.id, body, settings=settings, clock=lambda: T0)
        request_id = row.id
        best = row.best
    assert best is not None and row.state == "matched"
    best_keys = {o["key"] for o in best["offers"]}

    # Next poll: the same market minus the best option's offers.
    t1 = T0 + timedelta(minutes=5)
    second = replace(
        first, offers=[o for o in first.offers if o.key not in best_keys], fetched_at=t1
    )
    ingest(engine, second, settings, t1)
    evs = events(engine)
    assert [e.type for e in evs] == ["best_option_changed"]
    (ev,) = evs
    assert ev.request_id == request_id and ev.before == best
    assert ev.after is not None and not best_keys & {o["key"] for o in ev.after["offers"]}
    assert ev.market_event_id is not None

    # The new best is what a fresh recommendation ranks first.
    with Session(engine) as session:
        stored = session.get(CapacityRequest, request_id)
        assert stored is not None
        rec = recommendations(session, stored, settings=settings, clock=lambda: t1)
        assert rec.best is not None
        assert [p.offer.key for p in rec.best.parts] == [o["key"] for o in ev.after["offers"]]
        assert stored.best == ev.after

    # The same market again: no market event, no request event.
    ingest(engine, replace(second, fetched_at=t1 + timedelta(minutes=5)), settings, t1)
    assert len(events(engine)) == 1
    # The best offer comes back: the best option changes back, once.
    t3 = t1 + timedelta(minutes=10)
    ingest(engine, replace(first, fetched_at=t3), settings, t3)
    evs = events(engine)
    assert [e.type for e in evs] == ["best_option_changed"] * 2
    assert evs[1].after == best | {"time_to_power_hours": best["time_to_power_hours"]}


def test_events_for_other_models_do_not_rescore(
    engine: Engine, snapshot_dirs: list[Path], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path)
    folder = next(p for p in snapshot_dirs if p.name == "2026-05-20")
    first = read_snapshot(folder, T0)
    ingest(engine, first, settings, T0)
    with session_scope(engine) as session:
        team = Team(name="t", created_at=T0)
        session.add(team)
        session.flush()
        assert team.id is not None
        body = RequestIn.model_validate({"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24})
        create_request(session, team.id, body, settings=settings, clock=lambda: T0)
    t1 = T0 + timedelta(minutes=5)
    # Withdraw every A100 offer: H100 requests are not touched.
    second = replace(
        first,
        offers=[o for o in first.offers if not (o.gpu_model or "").startswith("A100")],
        fetched_at=t1,
    )
    ingest(engine, second, settings, t1)
    assert events(engine) == []
    with Session(engine) as session:
        (row,) = session.exec(select(CapacityRequest)).all()
        assert row.scored_at == T0
