"""Faults of our own parts: the PostgreSQL connection killed in the middle of an ingest
(the transaction rolls back, no half snapshot, the next poll completes), and a provider
answering garbage for 100 polls in a row (degraded, last good offers kept and going stale,
recovered on the first good poll)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, event, text

from broker import db
from broker.domain import ProviderStatus
from broker.offers import OfferQuery, list_offers
from broker.polling import poll_source
from providers import replay
from tests.fakes.http import FakeHttpServer, FakeResponse, serve
from tests.fakes.lambda_cloud_api import PATH, LambdaFake
from tests.integration.test_lambda_cloud import SECRET, Clock, adapter, small_market

T0 = datetime(2026, 5, 21, 12, tzinfo=UTC)


def store_counts(engine: Engine) -> dict[str, int]:
    with engine.connect() as conn:
        return {
            t: int(conn.execute(text(f"SELECT count(*) FROM {t}")).scalar_one())
            for t in ("offers", "observations", "market_events", "poll_runs", "provider_states")
        }


class Snapshot:
    name: ClassVar[str] = "replay"

    def __init__(self, folder: Any, at: datetime) -> None:
        self.folder, self.at = folder, at

    def fetch(self) -> Any:
        return replay.read_snapshot(self.folder, fetched_at=self.at)


@pytest.mark.postgres
def test_connection_killed_mid_ingest_rolls_back_and_the_next_poll_completes(
    pg_database: str, data_dir: Any
) -> None:
    from tests.conftest import _reset_pg

    engine = db.make_engine(url=pg_database)
    _reset_pg(engine)
    folders = sorted((data_dir / "offers").iterdir())
    first, second = folders[-2], folders[-1]
    poll_source(engine, Snapshot(first, T0), clock=lambda: T0)
    before = store_counts(engine)
    killer = db.make_engine(url=pg_database)
    statements = {"n": 0}

    @event.listens_for(engine, "before_cursor_execute")
    def kill_on_the_fifth(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        statements["n"] += 1
        if statements["n"] == 5:  # inside the ingest's transaction, after its first writes
            pid = conn.exec_driver_sql("SELECT pg_backend_pid()").scalar_one()
            with killer.connect() as k:
                k.execute(text("SELECT pg_terminate_backend(:p)"), {"p": pid})

    later = T0 + timedelta(minutes=5)
    with pytest.raises(Exception) as err:
        poll_source(engine, Snapshot(second, later), clock=lambda: later)
    assert "terminat" in str(err.value).lower() or "closed" in str(err.value).lower()
    event.remove(engine, "before_cursor_execute", kill_on_the_fifth)
    assert statements["n"] >= 5
    assert store_counts(engine) == before  # nothing of the half-done ingest remains
    # The pool hands out a fresh connection (pre-ping); the next poll completes.
    outcome = poll_source(engine, Snapshot(second, later), clock=lambda: later)
    assert outcome.status == ProviderStatus.OK
    after = store_counts(engine)
    assert after["poll_runs"] == before["poll_runs"] + 1
    with engine.connect() as conn:
        runs = conn.execute(text("SELECT status FROM poll_runs ORDER BY id")).scalars().all()
    assert runs == ["ok", "ok"]
    killer.dispose()
    engine.dispose()


@pytest.fixture
def fake_http() -> Any:
    yield from serve()


def test_a_hundred_garbage_polls_then_recovery(engine: Engine, fake_http: FakeHttpServer) -> None:
    fake = LambdaFake(fake_http, small_market(), api_key=SECRET)
    clock = Clock()
    source = adapter(fake.url, clock=clock)
    good = poll_source(engine, source, clock=clock)
    assert good.status == ProviderStatus.OK and good.offers_seen > 0

    def current(include_stale: bool) -> list[dict[str, Any]]:
        with db.session_scope(engine) as session:
            return list_offers(
                session,
                OfferQuery(providers=("lambda_cloud",), include_stale=include_stale),
                now=clock(),
                stale_after=timedelta(minutes=120),
                limit=1000,
            )

    kept = {o["key"] for o in current(include_stale=True)}
    garbage = [
        FakeResponse(body=b"<html>502 Bad Gateway</html>", headers={"Content-Type": "text/html"}),
        FakeResponse(body=b'{"data": {"gpu_1x_a10": {"instance_'),
        FakeResponse(json={"data": []}),
        FakeResponse(json=[1, 2, 3]),
        FakeResponse(status=200, body=b""),
    ]
    for i in range(100):
        clock.tick()
        fake_http.fail("GET", PATH, garbage[i % len(garbage)])
        out = poll_source(engine, source, clock=clock)
        assert out.status == ProviderStatus.DEGRADED, i
        assert not out.events.get("offer_withdrawn"), i
    # 500 minutes later: every offer kept, none withdrawn, all stale (hidden by default).
    assert {o["key"] for o in current(include_stale=True)} == kept
    assert all(o["stale"] for o in current(include_stale=True))
    assert current(include_stale=False) == []
    with engine.connect() as conn:
        state = conn.execute(
            text(
                "SELECT status, consecutive_failures FROM provider_states "
                "WHERE provider = 'lambda_cloud'"
            )
        ).one()
        degraded_events = conn.execute(
            text("SELECT count(*) FROM market_events WHERE type = 'provider_degraded'")
        ).scalar_one()
    assert tuple(state) == ("degraded", 100)
    assert degraded_events == 1  # an edge, not one per poll
    clock.tick()
    back = poll_source(engine, source, clock=clock)
    assert back.status == ProviderStatus.OK
    assert back.events.get("provider_recovered") == 1
    fresh = current(include_stale=False)
    assert {o["key"] for o in fresh} == kept and not any(o["stale"] for o in fresh)
