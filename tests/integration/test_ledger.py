"""No double booking under concurrency, for real: a uvicorn server on 127.0.0.1 and 20 httpx
clients in threads reserving an offer with room for 3 (on SQLite and PostgreSQL), and on
PostgreSQL the row lock itself (a second booking waits for the first to commit) and a
concurrent expiry that writes one ledger entry, not two."""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import timedelta
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
