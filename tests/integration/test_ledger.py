"""No double booking under concurrency, for real: a uvicorn server on 127.0.0.1 and 20 httpx
clients in threads reserving an offer with room for 3 (on SQLite and PostgreSQL), an
extension (`PATCH ends_at`) re-checked against the offer's room, a marketplace listing
that states no count booked once (one machine), and on PostgreSQL the row
lock itself (a second booking waits for the first to commit) and a concurrent expiry that
writes one ledger entry, not two."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from sqlalchemy import Engine, func, select
from sqlmodel import Session

from broker import ledger
from broker import requests as capacity
from broker.api.app import create_app
from broker.auth import Role, create_api_key
from broker.config import ReplaySettings, Settings
from broker.db import session_scope
from broker.models import CapacityRequest, LedgerEntry, Reservation
from tests.api.conftest import T0, Clock
from tests.api.test_reservations import COMMITMENT, ROOM3, ingest

CLIENTS = 20
ROOM = 3  # ROOM3.available_count


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    return Settings(data_dir=tmp_path, replay=ReplaySettings(enabled=False))


@pytest.fixture
def server(engine: Engine, settings: Settings) -> Iterator[str]:
    """The API served by uvicorn in a thread on a free port of 127.0.0.1."""
    app = create_app(settings, engine, Clock(T0))
    config = uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    srv = uvicorn.Server(config)
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not srv.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    port = srv.servers[0].sockets[0].getsockname()[1]
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=20)


def _spec(gpus: int = 8) -> capacity.RequestIn:
    return capacity.RequestIn(
        gpu_models=["H100"],
        gpus=gpus,
        gpus_per_node=8,
        duration_hours=72,
        residency=capacity.ResidencyIn(allow=["EU"]),
    )


def test_twenty_concurrent_reserves_over_http_exactly_three_succeed(
    engine: Engine, settings: Settings, server: str
) -> None:
    ingest(engine, [ROOM3], T0)
    with session_scope(engine) as session:
        key = create_api_key(session, "alpha", Role.MEMBER, clock=lambda: T0).key
        request_ids = [
            capacity.create_request(
                session, key_team(session, key), _spec(), settings=settings, clock=lambda: T0
            ).id
            for _ in range(CLIENTS)
        ]
    barrier = threading.Barrier(CLIENTS)

    def book(request_id: int | None) -> httpx.Response:
        with httpx.Client(base_url=server, timeout=60) as client:
            barrier.wait()
            return client.post(
                f"/v1/requests/{request_id}/reserve",
                json={"offers": [{"key": ROOM3.key, "instances": 1}]},
                headers={"Authorization": f"Bearer {key}"},
            )

    with ThreadPoolExecutor(CLIENTS) as pool:
        responses = list(pool.map(book, request_ids))

    codes = Counter(r.status_code for r in responses)
    assert codes == {201: ROOM, 409: CLIENTS - ROOM}, [r.text for r in responses]
    for r in responses:
        if r.status_code == 409:
            err = r.json()["error"]
            assert err["code"] == "capacity_exhausted"
            assert "room for 24 GPUs (3 instances × 8)" in err["message"]
            assert err["details"]["free_gpus"] == "0" and err["details"]["reserved_gpus"] == "24"
    with engine.connect() as conn:
        res = Reservation.__table__  # type: ignore[attr-defined]
        held = conn.execute(
            select(func.count(), func.sum(res.c.gpus)).where(
                res.c.offer_key == ROOM3.key, res.c.state.in_(["held", "active"])
            )
        ).one()
        assert held[0] == ROOM and Decimal(held[1]) == ROOM * ROOM3.gpu_count
        entries = conn.execute(select(func.count()).select_from(LedgerEntry.__table__)).scalar_one()  # type: ignore[attr-defined]
        assert entries == ROOM
        req = CapacityRequest.__table__  # type: ignore[attr-defined]
        states = Counter(conn.execute(select(req.c.state)).scalars())
        assert states == {"fulfilled": ROOM, "matched": CLIENTS - ROOM}


def test_an_extension_into_another_booking_is_refused_for_want_of_room(
    engine: Engine, settings: Settings, server: str
) -> None:
    """Two back-to-back bookings of all 24 GPUs fit; extending the first into the second's
    term would hold 48 GPUs on an offer with room for 24: 409, nothing changed. Once the
    second is cancelled the same extension goes through."""
    ingest(engine, [ROOM3], T0)
    with session_scope(engine) as session:
        key = create_api_key(session, "alpha", Role.MEMBER, clock=lambda: T0).key
        team = key_team(session, key)
        first_id, second_id = (
            capacity.create_request(
                session, team, _spec(ROOM * 8), settings=settings, clock=lambda: T0
            ).id
            for _ in range(2)
        )
    all_of_it = [{"key": ROOM3.key, "instances": ROOM}]
    auth = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=server, timeout=60, headers=auth) as client:
        first = client.post(f"/v1/requests/{first_id}/reserve", json={"offers": all_of_it})
        assert first.status_code == 201, first.text
        [held] = first.json()["reservations"]
        ends = datetime.fromisoformat(held["ends_at"])
        second = client.post(
            f"/v1/requests/{second_id}/reserve",
            json={"offers": all_of_it, "starts_at": ends.isoformat()},
        )
        assert second.status_code == 201, second.text
        [next_one] = second.json()["reservations"]
        before = snapshot_of(engine)

        later = (ends + timedelta(hours=28)).isoformat()
        path = f"/v1/reservations/{held['id']}"
        r = client.patch(path, json={"ends_at": later, "reason": "the run needs a day more"})
        assert r.status_code == 409, r.text
        err = r.json()["error"]
        assert err["code"] == "capacity_exhausted"
        assert err["details"]["reserved_gpus"] == "24" and err["details"]["free_gpus"] == "0"
        assert snapshot_of(engine) == before  # no end moved, no ledger entry written
        assert client.get(path).json()["ends_at"] == held["ends_at"]

        cancel = client.patch(
            f"/v1/reservations/{next_one['id']}",
            json={"state": "cancelled", "reason": "not needed"},
        )
        assert cancel.status_code == 200, cancel.text
        r = client.patch(path, json={"ends_at": later, "reason": "the run needs a day more"})
        assert r.status_code == 200, r.text
        assert datetime.fromisoformat(r.json()["ends_at"]) == ends + timedelta(hours=28)


#: A Vast listing as the market data set gives it: one machine, no stated count.
LISTING = replace(
    ROOM3,
    provider="vast",
    region="SE",
    instance_type="8x-H100_SXM-m41234",
    price_per_hour=Decimal("15.46"),
    country="SE",
    continent=None,
    available_count=None,
)


def test_a_marketplace_listing_without_a_count_is_one_machine(
    engine: Engine, settings: Settings
) -> None:
    """A marketplace listing is one machine, rented once (`scoring.max_instances`): the
    first booking takes it, the next finds no room, and two instances at once never fit."""
    ingest(engine, [LISTING], T0, provider="vast")
    with session_scope(engine) as session:
        team = create_api_key(session, "alpha", Role.MEMBER, clock=lambda: T0).team_id
        ids = [
            capacity.create_request(
                session, team, _spec(gpus), settings=settings, clock=lambda: T0
            ).id
            for gpus in (16, 8, 8)
        ]

    def book(request_id: int | None, instances: int) -> str:
        body = ledger.ReserveIn.model_validate(
            {"offers": [{"key": LISTING.key, "instances": instances}]}
        )
        with session_scope(engine) as session:
            req = session.get(CapacityRequest, request_id)
            assert req is not None
            try:
                ledger.reserve(session, req, body, actor="t", settings=settings, now=T0)
            except ledger.LedgerConflict as exc:
                assert "room for 8 GPUs (1 instance × 8)" in str(exc), str(exc)
                return exc.code
        return "booked"

    assert book(ids[0], 2) == "capacity_exhausted"
    assert book(ids[1], 1) == "booked"
    assert book(ids[2], 1) == "capacity_exhausted"


def snapshot_of(engine: Engine) -> tuple[list[Any], int]:
    """The reservations' terms and the number of ledger entries."""
    with engine.connect() as conn:
        res = Reservation.__table__  # type: ignore[attr-defined]
        terms = list(
            conn.execute(select(res.c.id, res.c.state, res.c.ends_at).order_by(res.c.id)).all()
        )
        entries = conn.execute(select(func.count()).select_from(LedgerEntry.__table__)).scalar_one()  # type: ignore[attr-defined]
    return terms, int(entries)


def key_team(session: Session, key: str) -> int:
    from broker.auth import verify_key

    principal = verify_key(session, key, clock=lambda: T0)
    assert principal is not None
    return principal.team_id


def _pg_only(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("row locks are PostgreSQL's; SQLite serialises every writer")


def test_a_second_booking_waits_for_the_first_to_commit(engine: Engine, settings: Settings) -> None:
    _pg_only(engine)
    ingest(engine, [ROOM3], T0)
    with session_scope(engine) as session:
        team = create_api_key(session, "alpha", Role.MEMBER, clock=lambda: T0).team_id
        first_id = capacity.create_request(
            session, team, _spec(24), settings=settings, clock=lambda: T0
        ).id
        second_id = capacity.create_request(
            session, team, _spec(8), settings=settings, clock=lambda: T0
        ).id
    all_of_it = ledger.ReserveIn.model_validate({"offers": [{"key": ROOM3.key, "instances": 3}]})
    one = ledger.ReserveIn.model_validate({"offers": [{"key": ROOM3.key, "instances": 1}]})
    outcome: dict[str, Any] = {}

    def second() -> None:
        with Session(engine, expire_on_commit=False) as s:
            req = s.get(CapacityRequest, second_id)
            assert req is not None
            try:
                ledger.reserve(s, req, one, actor="t/2", settings=settings, now=T0)
                s.commit()
                outcome["second"] = "booked"
            except ledger.LedgerConflict as exc:
                s.rollback()
                outcome["second"] = exc.code
            outcome["done_at"] = time.monotonic()

    with Session(engine, expire_on_commit=False) as s1:
        req1 = s1.get(CapacityRequest, first_id)
        assert req1 is not None
        ledger.reserve(s1, req1, all_of_it, actor="t/1", settings=settings, now=T0)
        thread = threading.Thread(target=second)
        thread.start()
        time.sleep(0.3)
        # The second booking is blocked on the offer's row lock, not refused in Python.
        assert thread.is_alive() and "second" not in outcome
        committed_at = time.monotonic()
        s1.commit()
    thread.join(timeout=20)
    assert outcome["second"] == "capacity_exhausted"
    assert outcome["done_at"] >= committed_at


def test_concurrent_expiry_writes_one_entry(engine: Engine) -> None:
    _pg_only(engine)
    body = ledger.CommitmentIn.model_validate({**COMMITMENT, "ends_at": "2026-05-21T13:00:00Z"})
    with session_scope(engine) as session:
        team = create_api_key(session, "alpha", Role.MEMBER, clock=lambda: T0).team_id
        rid = ledger.record_commitment(session, team, body, actor="t", now=T0).id
    later = T0 + timedelta(hours=2)
    result: dict[str, list[int]] = {}

    def other() -> None:
        with session_scope(engine) as s:
            result["other"] = ledger.expire_reservations(s, later)

    with Session(engine, expire_on_commit=False) as s1:
        assert ledger.expire_reservations(s1, later) == [rid]
        thread = threading.Thread(target=other)
        thread.start()
        time.sleep(0.2)
        assert thread.is_alive()  # waiting on the row s1 updated
        s1.commit()
    thread.join(timeout=20)
    assert result["other"] == []
    with engine.connect() as conn:
        le = LedgerEntry.__table__  # type: ignore[attr-defined]
        actions = list(
            conn.execute(select(le.c.action).where(le.c.reservation_id == rid)).scalars()
        )
    assert actions == ["created", "expired"]
