"""A process whose clock runs 40 days ahead of the database's (issue 16: such a worker's
sweep expired two active reservations 16 and 28 days early, for good). On SQLite and
PostgreSQL, whose clocks are the host's real one: the housekeeping of the scheduled sweep
and of `broker serve`, and the API's own expiry (ledger reads, reports, recording a
commitment), expire nothing before its end by the database's clock; the skew shows in
`/readyz` and in `broker_clock_skew_seconds`."""

from __future__ import annotations

import re
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from prometheus_client import REGISTRY
from sqlalchemy import Engine, select

from broker import ledger
from broker.api.app import create_app
from broker.auth import Role, create_api_key
from broker.config import Settings
from broker.db import session_scope
from broker.domain import utcnow
from broker.models import LedgerEntry, Reservation
from tests.api.conftest import TestClient, bearer
from tests.api.test_reservations import COMMITMENT
from workers.embedded import housekeeping

AHEAD = timedelta(days=40)
D = timedelta(days=1)


def ahead() -> datetime:
    """The clock of the worker of issue 16: 40 days ahead of the real time."""
    return utcnow() + AHEAD


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


def commitment(starts_at: datetime, ends_at: datetime) -> ledger.CommitmentIn:
    body = {**COMMITMENT, "starts_at": iso(starts_at), "ends_at": iso(ends_at)}
    return ledger.CommitmentIn.model_validate(body)


@pytest.fixture
def book(engine: Engine) -> dict[str, Any]:
    """Team alpha's key and three active reservations, by real time: one ending in 16 days,
    one in 28, and one that ended an hour ago (recorded before it ended)."""
    now = utcnow()
    with session_scope(engine) as session:
        key = create_api_key(session, "alpha", Role.MEMBER)
        ids = {
            name: ledger.record_commitment(
                session, key.team_id, commitment(now - 10 * D, end), actor="t", now=at
            ).id
            for name, end, at in (
                ("in_16_days", now + 16 * D, now),
                ("in_28_days", now + 28 * D, now),
                ("ended", now - timedelta(hours=1), now - 2 * D),
            )
        }
    return {"key": key.key, **ids}


def states(engine: Engine) -> dict[int, str]:
    with engine.connect() as conn:
        rows = conn.execute(select(Reservation.id, Reservation.state))  # type: ignore[call-overload]
        return {rid: state for rid, state in rows}


def skew_metric() -> float | None:
    value: float | None = REGISTRY.get_sample_value("broker_clock_skew_seconds")
    return value


def test_a_sweep_40_days_ahead_expires_only_what_ended_by_the_database(
    engine: Engine, book: dict[str, Any], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(data_dir=tmp_path)
    housekeeping(engine, settings, ahead)  # the sweep's housekeeping, as `broker serve` runs it
    got = states(engine)
    assert got[book["in_16_days"]] == "active" and got[book["in_28_days"]] == "active"
    assert got[book["ended"]] == "expired"  # what has ended by the database's clock still goes
    with engine.connect() as conn:
        (at,) = conn.execute(
            select(LedgerEntry.at).where(  # type: ignore[call-overload]
                LedgerEntry.reservation_id == book["ended"], LedgerEntry.action == "expired"
            )
        ).one()
    assert abs(at - utcnow()) < timedelta(minutes=5), "stamped by the database's clock"
    # Again, and with the clock further ahead still: nothing more.
    housekeeping(engine, settings, lambda: utcnow() + 400 * D)
    assert states(engine) == got
    # The skew is measured and said.
    skew = skew_metric()
    assert skew is not None and abs(skew - (400 * D).total_seconds()) < 60
    assert "clock.skewed" in caplog.text


def test_the_api_40_days_ahead_expires_nothing_early_and_says_so(
    engine: Engine, book: dict[str, Any], tmp_path: Path
) -> None:
    settings = Settings(data_dir=tmp_path, max_clock_skew_s=30)
    with TestClient(create_app(settings, engine, ahead)) as client:
        auth = bearer(book["key"])
        listed = client.get("/v1/reservations", headers=auth).json()["data"]
        by_id = {r["id"]: r["state"] for r in listed}
        assert by_id[book["in_16_days"]] == by_id[book["in_28_days"]] == "active"
        # A report expires what has ended first (it reads as of the API's clock, but
        # writes nothing by it).
        assert client.get("/v1/reports/commitments", headers=auth).status_code == 200
        got = states(engine)
        assert got[book["in_16_days"]] == got[book["in_28_days"]] == "active"
        # A commitment ending in 20 days is recorded active, not "already over".
        body = {**COMMITMENT, "starts_at": iso(utcnow()), "ends_at": iso(utcnow() + 20 * D)}
        created = client.post("/v1/reservations", json=body, headers=auth)
        assert created.status_code == 201 and created.json()["state"] == "active"

        ready = client.get("/readyz")
        assert ready.status_code == 200 and ready.json()["clock"] == "skewed"
        assert abs(ready.json()["clock_skew_s"] - AHEAD.total_seconds()) < 60
        text = client.get("/metrics").text
        [value] = re.findall(r"^broker_clock_skew_seconds ([-+.e\d]+)$", text, re.M)
        assert abs(float(value) - AHEAD.total_seconds()) < 60
    assert states(engine)[book["in_16_days"]] == "active"

    with TestClient(create_app(settings, engine, utcnow)) as client:
        ready = client.get("/readyz").json()
        assert ready["clock"] == "ok" and abs(ready["clock_skew_s"]) < 30
        assert abs(skew_metric() or 1e9) < 30
