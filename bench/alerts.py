"""Alert benchmarks (issue 7): matching throughput and poll-to-Slack latency, 1,000
subscriptions of varied shape (GPU models, jurisdictions, caps, markets, providers).

`run(pg_url)` returns the figures; `python -m bench.alerts [PG_URL]` prints one JSON line.
- throughput: the real 2026-05-01 market ingested (every offer appears), then the real
  2026-05-08T1849 snapshot (its real changes); timed: `process_events` over each batch
  (rescoring nothing, matching 1,000 subscriptions, writing the outbox), events/s.
- latency, embedded: rounds over that market in which one Lambda offer is withdrawn and the
  next round brought back (re-entering every match set it was in); `after_ingest` runs as
  `broker serve` runs it; latency = fake Slack (httpx → 127.0.0.1) accepting each
  message − the ingest that wrote the event committing. p50/p99 over all messages.
- latency, Celery: the same rounds with a real `broker worker` (prefork, 2 processes) on
  Redis and PostgreSQL; the bench process ingests and enqueues `broker.process_events`
  like `broker poll` does in production mode.
Loopback only; bounded.
"""

from __future__ import annotations

import dataclasses
import json
import os
import random
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("BROKER_BENCH_DATA_DIR", REPO.parent / "shared" / "data"))
T0 = datetime(2026, 5, 9, tzinfo=UTC)
N_SUBS = 1000
ROUNDS = 40  # 20 withdrawals + 20 returns
REDIS_URL = os.environ.get("BROKER_BENCH_REDIS_URL", "redis://127.0.0.1:6379/14")
SECRET = "bench-secret"

MODELS = ["H100", "H200", "A100", "V100", "L4", "A10", "T4", "B200", "MI300X", "A6000"]
PLACES = [[], [], ["EU"], ["US"], ["JP"], ["IN"]]
PROVIDERS = [[], [], ["azure"], ["gcp"], ["lambda_cloud"], ["vast"]]
MARKETS = [[], ["on_demand"], ["spot"], ["on_demand", "spot"]]


def filters(n: int, seed: int = 11) -> list[dict[str, Any]]:
    rnd = random.Random(seed)
    out = []
    for _ in range(n):
        f: dict[str, Any] = {"gpu_models": rnd.sample(MODELS, rnd.choice([1, 1, 2]))}
        if places := rnd.choice(PLACES):
            f["jurisdictions"] = places
        if providers := rnd.choice(PROVIDERS):
            f["providers"] = providers
        if markets := rnd.choice(MARKETS):
            f["markets"] = markets
        if rnd.random() < 0.5:
            f["max_price_per_gpu_hour"] = str(rnd.choice([1, 2, 3, 4, 6, 10]))
        out.append(f)
    return out


def setup(db_url: str, tmp: Path, webhook: str, host: str) -> tuple[Any, Any]:
    from broker import alerts, db
    from broker.auth import get_or_create_team
    from broker.config import Settings

    settings = Settings(
        database_url=db_url, data_dir=tmp, secret_key=SECRET, slack_webhook_hosts=[host]
    )
    engine = db.make_engine(url=db_url)
    db.upgrade(engine)
    with db.session_scope(engine) as session:
        team = get_or_create_team(session, "bench")
        assert team.id is not None
        for i, f in enumerate(filters(N_SUBS)):
            body = alerts.SubscriptionIn.model_validate(
                {
                    "name": f"sub {i}",
                    "filter": f,
                    "channel": {"type": "slack_webhook", "url": webhook},
                }
            )
            alerts.create_subscription(session, team.id, body, actor="bench", settings=settings)
    return settings, engine


def throughput(db_url: str, tmp: Path) -> dict[str, Any]:
    from broker.db import session_scope
    from broker.offers import ingest_poll
    from broker.pipeline import process_events
    from providers import replay

    settings, engine = setup(db_url, tmp, "http://127.0.0.1:9/services/T/B/x", "127.0.0.1:9")
    out: dict[str, Any] = {"subscriptions": N_SUBS}
    for label, snap in (("first", "2026-05-01"), ("changes", "2026-05-08T1849")):
        result = replay.read_snapshot(DATA / "offers" / snap, fetched_at=T0)
        with session_scope(engine) as session:
            ingest = ingest_poll(session, result, source="replay", clock=lambda: T0)
        assert ingest.first_event_id is not None and ingest.last_event_id is not None
        events = ingest.last_event_id - ingest.first_event_id + 1
        t = time.perf_counter()
        processed = process_events(
            engine, ingest.first_event_id, ingest.last_event_id, settings, lambda: T0
        )
        seconds = time.perf_counter() - t
        out[label] = {
            "snapshot": snap,
            "events": events,
            "seconds": round(seconds, 3),
            "events_per_s": round(events / seconds),
            "deliveries": len(processed.deliveries),
        }
    engine.dispose()
    return out


def _rounds(seed: int = 5) -> list[tuple[str, Any]]:
    """(label, PollResult of Lambda only): the market, then alternately one offer missing
    and everything back."""
    from providers import replay

    full = replay.read_snapshot(DATA / "offers" / "2026-05-08T1849", fetched_at=T0)
    lam = [o for o in full.offers if o.provider == "lambda_cloud"]
    scopes = [s for s in full.scopes_ok if s.provider == "lambda_cloud"]
    base = dataclasses.replace(full, offers=lam, scopes_ok=scopes, capacity_by_presence=frozenset())
    rnd = random.Random(seed)
    out = []
    for i in range(ROUNDS // 2):
        victim = rnd.choice(lam)
        at = T0 + timedelta(minutes=2 * i + 1)
        cut = [o for o in lam if o is not victim]
        out.append(("withdraw", dataclasses.replace(base, offers=cut, fetched_at=at)))
        back = at + timedelta(minutes=1)
        out.append(("return", dataclasses.replace(base, fetched_at=back)))
    return out


def _percentiles(values: list[float]) -> dict[str, Any]:
    if not values:
        return {"messages": 0}
    qs = statistics.quantiles(values, n=100, method="inclusive") if len(values) > 1 else values * 99
    return {
        "messages": len(values),
        "p50_ms": round(statistics.median(values) * 1000, 1),
        "p99_ms": round(qs[98] * 1000, 1),
        "max_ms": round(max(values) * 1000, 1),
    }


def latency_embedded(db_url: str, tmp: Path) -> dict[str, Any]:
    from broker.db import session_scope
    from broker.offers import ingest_poll
    from broker.pipeline import after_ingest
    from tests.fakes.http import FakeHttpServer
    from tests.fakes.slack import FakeSlack

    with FakeHttpServer() as server:
        fake = FakeSlack(server)
        settings, engine = setup(db_url, tmp, fake.webhook(), fake.host)
        rounds = _rounds()
        # The market as it stands (not measured).
        with session_scope(engine) as session:
            ingest_poll(session, rounds[1][1], source="lambda_cloud", clock=lambda: T0)
        latencies: list[float] = []
        for _, result in rounds:
            before = len(fake.messages)
            with session_scope(engine) as session:
                ingest = ingest_poll(session, result, source="lambda_cloud")
            written = time.time()
            after_ingest(engine, ingest, settings)
            latencies += [m.received_at - written for m in fake.messages[before:]]
        engine.dispose()
    return _percentiles(latencies)


def latency_celery(db_url: str, tmp: Path) -> dict[str, Any]:
    import redis

    from broker.db import session_scope
    from broker.offers import ingest_poll
    from tests.fakes.http import FakeHttpServer
    from tests.fakes.slack import FakeSlack
    from workers.celery_app import make_app

    redis.Redis.from_url(REDIS_URL).flushdb()
    celery = make_app(REDIS_URL)
    with FakeHttpServer() as server:
        fake = FakeSlack(server)
        _, engine = setup(db_url, tmp, fake.webhook(), fake.host)
        rounds = _rounds()
        with session_scope(engine) as session:
            ingest_poll(session, rounds[1][1], source="lambda_cloud", clock=lambda: T0)
        env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
        env.update(
            BROKER_DATABASE_URL=db_url,
            BROKER_REDIS_URL=REDIS_URL,
            BROKER_DATA_DIR=str(tmp),
            BROKER_SECRET_KEY=SECRET,
            BROKER_SLACK_WEBHOOK_HOSTS=fake.host,
        )
        worker = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker.cli",
                "worker",
                "--concurrency",
                "2",
                "--loglevel",
                "WARNING",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            cwd=REPO,
        )
        try:
            time.sleep(4)  # the worker connects and warms up
            latencies: list[float] = []
            for _, result in rounds:
                before = len(fake.messages)
                with session_scope(engine) as session:
                    ingest = ingest_poll(session, result, source="lambda_cloud")
                written = time.time()
                if ingest.first_event_id is None or ingest.last_event_id is None:
                    continue
                celery.send_task(
                    "broker.process_events", args=[ingest.first_event_id, ingest.last_event_id]
                )
                deadline = time.time() + 60
                while time.time() < deadline and not _settled(engine, ingest.poll_run_id):
                    time.sleep(0.02)
                latencies += [m.received_at - written for m in fake.messages[before:]]
        finally:
            worker.send_signal(signal.SIGTERM)
            try:
                worker.wait(timeout=30)
            except subprocess.TimeoutExpired:
                worker.kill()
        engine.dispose()
    return _percentiles(latencies)


def _settled(engine: Any, run_id: int) -> bool:
    """The run's events are processed and no delivery is left to send."""
    from sqlalchemy import func, select

    from broker.models import AlertDelivery, PollRun

    with engine.connect() as conn:
        processed = conn.execute(
            select(PollRun.processed_at).where(PollRun.id == run_id)  # type: ignore[call-overload]
        ).scalar_one()
        unsent = conn.execute(
            select(func.count())
            .select_from(AlertDelivery)
            .where(AlertDelivery.state.in_(["pending", "sending"]))  # type: ignore[attr-defined]
        ).scalar_one()
    return processed is not None and not unsent


def run(pg_url: str | None = None) -> dict[str, Any]:
    from sqlalchemy import create_engine, text

    out: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp:
        t = Path(tmp)
        out["throughput_sqlite"] = throughput(f"sqlite:///{t}/tp.db", t)
        out["embedded_sqlite"] = latency_embedded(f"sqlite:///{t}/lat.db", t)
        if pg_url:

            def fresh() -> None:
                eng = create_engine(pg_url)
                with eng.begin() as conn:
                    conn.execute(text("DROP SCHEMA public CASCADE; CREATE SCHEMA public"))
                eng.dispose()

            fresh()
            out["throughput_postgresql"] = throughput(pg_url, t)
            fresh()
            out["celery_postgresql"] = latency_celery(pg_url, t)
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else None)))
