"""Alerts in production mode with real parts: `broker replay` (a producer) enqueues on the
real Redis, a real Celery worker (`broker worker`) processes on the real PostgreSQL and posts
over httpx to a local fake Slack. Exactly the expected messages, none on an identical
replay; a worker killed mid-send does not send twice; tasks lost with Redis's data are
re-queued by the sweep and delivered once; two worker processes delivering the same row at
the same moment send it once; an event batch processed twice alerts once."""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select, text

from broker import alerts
from broker import requests as capacity
from broker.auth import get_or_create_team
from broker.config import Settings
from broker.db import session_scope
from broker.models import (
    AlertDelivery,
    AlertSubscription,
    CapacityRequest,
    MarketEvent,
    PollRun,
)
from tests.fakes.slack import FakeSlack, slack
from tests.integration.test_alerts_pipeline import SUBS, A, B, EdgeModel, matching, subscribe
from tests.integration.test_production_mode import _env, _wait, pg_engine, redis_url

__all__ = ["pg_engine", "redis_url"]

SECRET = "test-secret-key-shared-by-api-and-workers"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    yield from slack()


def env_for(
    tmp_path: Path, pg: str, redis_url: str, fake: FakeSlack, **extra: str
) -> dict[str, str]:
    env = _env(tmp_path, pg, redis_url)
    env.update(
        BROKER_SECRET_KEY=SECRET,
        BROKER_SLACK_WEBHOOK_HOSTS=fake.host,
        BROKER_SLACK_API_URL=fake.api_url,
        **extra,
    )
    return env


def settings_for(pg: str, tmp_path: Path, fake: FakeSlack) -> Settings:
    """What the test process (subscribing) shares with the workers (sending)."""
    return Settings(
        database_url=pg, data_dir=tmp_path, secret_key=SECRET, slack_webhook_hosts=[fake.host]
    )


def start_worker(env: dict[str, str], *pool: str) -> subprocess.Popen[str]:
    """`broker worker`: one process (`--pool solo`) unless `pool` says otherwise."""
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "broker.cli",
            "worker",
            *(pool or ("--pool", "solo")),
            "--loglevel",
            "WARNING",
        ],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )


def stop(proc: subprocess.Popen[str], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def replay(env: dict[str, str], folder: Path) -> None:
    subprocess.run(
        [sys.executable, "-m", "broker.cli", "replay", str(folder)],
        env=env,
        check=True,
        capture_output=True,
        text=True,
        timeout=120,
    )


def poll_runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(PollRun)).scalar_one())


def delivery_states(engine: Engine) -> list[str]:
    with engine.connect() as conn:
        return [
            s
            for (s,) in conn.execute(
                select(AlertDelivery.state).order_by(AlertDelivery.id)  # type: ignore[call-overload]
            )
        ]


def test_celery_worker_alerts_exactly_the_changes(
    pg_engine: Engine,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
) -> None:
    settings = settings_for(pg_database, tmp_path, fake_slack)
    names = ["azure-v100", "lambda-a100-eu"]
    urls = subscribe(pg_engine, settings, fake_slack, names)
    env = env_for(tmp_path, pg_database, redis_url, fake_slack)
    worker = start_worker(env)
    try:
        models = {n: EdgeModel() for n in names}
        total = 0
        for i, snapshot in enumerate([A, B, B]):
            replay(env, data_dir / "offers" / snapshot)
            expected = {}
            for n in names:
                entered, drops = models[n].step(matching(data_dir, snapshot, SUBS[n]["model"]))
                expected[n] = (len(entered), len(drops))
            total += sum(1 for e, d in expected.values() if e or d)
            _wait(lambda n=total: len(fake_slack.messages) >= n, 90, f"the alerts of replay {i}")
            # Everything this replay caused has been processed (nothing left to arrive).
            _wait(
                lambda: (
                    all(s in ("sent", "failed") for s in delivery_states(pg_engine))
                    and _processed(pg_engine)
                ),
                60,
                "processing to finish",
            )
            for n in names:
                got = fake_slack.to(urls[n])
                n_new, n_drops = expected[n]
                if i == 0:
                    assert len(got) == 1 and got[0].text.startswith(f"{n_new} new "), n
                if i == 1:
                    assert len(got) == 2, n
                    if n_new:
                        assert got[1].text.startswith(f"{n_new} new "), (n, got[1].text)
                    if n_drops:
                        assert f"{n_drops} price drop" in got[1].text, (n, got[1].text)
        assert total == 4  # two subscriptions × two replays with changes; none for the third
        assert len(fake_slack.messages) == total
        assert poll_runs(pg_engine) == 3
        assert delivery_states(pg_engine) == ["sent"] * total
    finally:
        stop(worker)


def _processed(engine: Engine) -> bool:
    with engine.connect() as conn:
        return not conn.execute(
            select(func.count()).select_from(PollRun).where(PollRun.processed_at.is_(None))  # type: ignore[union-attr]
        ).scalar_one()


def test_worker_killed_mid_send_sends_once_and_lost_tasks_are_swept(
    pg_engine: Engine,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
) -> None:
    from workers.celery_app import make_app

    settings = settings_for(pg_database, tmp_path, fake_slack)
    [url] = subscribe(pg_engine, settings, fake_slack, ["lambda-h100-eu"]).values()
    env = env_for(
        tmp_path,
        pg_database,
        redis_url,
        fake_slack,
        BROKER_ALERTS__CLAIM_S="3",
        BROKER_ALERTS__SWEEP_GRACE_S="1",
    )
    celery = make_app(redis_url)

    # 1. Slack accepts the message but holds its answer; the worker is killed meanwhile.
    fake_slack.answer_delay_s = 30
    worker = start_worker(env)
    try:
        replay(env, data_dir / "offers" / A)
        _wait(lambda: len(fake_slack.messages) == 1, 90, "Slack to receive the alert")
        assert delivery_states(pg_engine) == ["sending"]
        worker.send_signal(signal.SIGKILL)
        worker.wait(timeout=20)
    finally:
        stop(worker, signal.SIGKILL)
    fake_slack.answer_delay_s = 0
    worker = start_worker(env)
    try:
        time.sleep(3.5)  # the claim runs out
        celery.send_task("broker.sweep")
        _wait(lambda: delivery_states(pg_engine) == ["unconfirmed"], 60, "the sweep")
        assert len(fake_slack.to(url)) == 1
        assert len(fake_slack.server.requests_to(url.split(str(fake_slack.server.port))[1])) == 1

        # 2. Redis loses the queued work: nothing is lost, nothing sent twice.
        stop(worker)
        [url2] = subscribe(pg_engine, settings, fake_slack, ["lambda-a100-eu"]).values()
        replay(env, data_dir / "offers" / B)  # enqueues process_events, no worker runs
        redis.Redis.from_url(redis_url).flushdb()  # ... and Redis forgets it
        worker = start_worker(env)
        time.sleep(1.5)  # past the sweep's grace
        for _ in range(3):
            celery.send_task("broker.sweep")
        _wait(lambda: len(fake_slack.messages) == 2, 90, "the swept batch to be alerted")
        time.sleep(2)
        assert len(fake_slack.messages) == 2
        assert delivery_states(pg_engine) == ["unconfirmed", "sent"]
        model = EdgeModel()
        model.step(matching(data_dir, A, SUBS["lambda-a100-eu"]["model"]))  # seeded
        entered, _ = model.step(matching(data_dir, B, SUBS["lambda-a100-eu"]["model"]))
        [msg] = fake_slack.to(url2)
        assert entered and msg.text.startswith(f"{len(entered)} new ")
    finally:
        stop(worker)


def waiting(engine: Engine, statement: str) -> int:
    """Sessions of this database blocked on a lock in a statement starting `statement`."""
    with engine.connect() as conn:
        return int(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND query ILIKE :q"
                ),
                {"q": statement + "%"},
            ).scalar_one()
        )


def drained(redis_url: str) -> bool:
    """Nothing queued and nothing taken but unacknowledged (tasks are acked late): every
    task sent so far, and every task they sent, has run to its end."""
    client = redis.Redis.from_url(redis_url)
    try:
        return client.llen("celery") == 0 and client.hlen("unacked") == 0
    finally:
        client.close()


def test_two_workers_delivering_one_row_at_once_send_it_once(
    pg_engine: Engine,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
    fake_slack: FakeSlack,
) -> None:
    """Two prefork children both read the row as `pending` before either claims it (the test
    holds the row lock until both wait on it, so this interleaving happens every run, not
    once in a while): the claim (`pending → sending`, re-checked under the row lock) lets one
    through; the other sees `sending` and stops. One message, one attempt."""
    from workers.celery_app import make_app

    settings = settings_for(pg_database, tmp_path, fake_slack)
    [url] = subscribe(pg_engine, settings, fake_slack, ["lambda-h100-eu"]).values()
    with session_scope(pg_engine) as session:
        [sub] = session.exec(select(AlertSubscription)).scalars().all()  # type: ignore[call-overload]
        delivery_id = alerts.enqueue_test(session, sub, settings)
    # Slack holds its answer a moment: a second claim, if let through, has time to send.
    fake_slack.answer_delay_s = 1.0
    celery = make_app(redis_url)
    worker = start_worker(
        env_for(tmp_path, pg_database, redis_url, fake_slack),
        "--pool",
        "prefork",
        "--concurrency",
        "2",
    )
    try:
        deliveries = AlertDelivery.__table__  # type: ignore[attr-defined]
        with pg_engine.connect() as gate, gate.begin():
            gate.execute(
                select(deliveries.c.id).where(deliveries.c.id == delivery_id).with_for_update()
            )
            for _ in range(2):
                celery.send_task("broker.deliver", (delivery_id,))
            _wait(
                lambda: waiting(pg_engine, "UPDATE alert_deliveries") == 2,
                90,
                "both workers to reach the claim",
            )
        _wait(lambda: drained(redis_url), 60, "both deliver tasks to end")
        assert delivery_states(pg_engine) == ["sent"]
        with pg_engine.connect() as conn:
            attempts = conn.execute(
                select(deliveries.c.attempts).where(deliveries.c.id == delivery_id)
            ).scalar_one()
        assert attempts == 1
        assert len(fake_slack.to(url)) == 1
        assert len(fake_slack.server.requests_to(url.split(str(fake_slack.server.port))[1])) == 1
    finally:
        stop(worker)


def follow_a_request(engine: Engine, settings: Settings, fake: FakeSlack) -> tuple[int, str]:
    """A capacity request for 8 H100 and a subscription following it (team alpha); the
    request's id and the subscription's webhook URL."""
    url = fake.webhook("request")
    with session_scope(engine) as session:
        team = get_or_create_team(session, "alpha")
        assert team.id is not None
        request = capacity.create_request(
            session,
            team.id,
            capacity.RequestIn(gpu_models=["H100"], gpus=8, duration_hours=24),
            settings=settings,
        )
        assert request.id is not None
        body = alerts.SubscriptionIn.model_validate(
            {
                "name": "follow",
                "request_id": request.id,
                "channel": {"type": "slack_webhook", "url": url},
            }
        )
        alerts.create_subscription(session, team.id, body, actor="test", settings=settings)
        return request.id, url


def replay_unprocessed_twice(
    env: dict[str, str], engine: Engine, redis_url: str, folder: Path
) -> None:
    """Replay `folder` with no worker running: its batch's processing is queued; then queue
    the same batch a second time."""
    from workers.celery_app import make_app

    replay(env, folder)
    with engine.connect() as conn:
        first, last = conn.execute(select(func.min(MarketEvent.id), func.max(MarketEvent.id))).one()
    make_app(redis_url).send_task("broker.process_events", (first, last))


def test_an_event_batch_processed_twice_alerts_once(
    pg_engine: Engine,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
) -> None:
    """A batch's task may run twice (acks_late after a worker died, the sweep re-queuing a
    slow one). A request subscription's alert comes from the `best_option_changed` event,
    which is still in the batch on the second run: only the outbox row's dedupe key stops a
    second message."""
    settings = settings_for(pg_database, tmp_path, fake_slack)
    request_id, url = follow_a_request(pg_engine, settings, fake_slack)
    env = env_for(tmp_path, pg_database, redis_url, fake_slack)
    replay_unprocessed_twice(env, pg_engine, redis_url, data_dir / "offers" / A)
    worker = start_worker(env)  # one process: the two runs one after the other
    try:
        _wait(lambda: fake_slack.to(url) and drained(redis_url), 90, "both runs to end")
        assert _processed(pg_engine)
        assert delivery_states(pg_engine) == ["sent"]
        [msg] = fake_slack.to(url)
        assert msg.text.startswith(f"Best option for request {request_id} changed: ")
    finally:
        stop(worker)


def test_an_event_batch_processed_twice_at_once_alerts_once(
    pg_engine: Engine,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
) -> None:
    """The same batch run twice at once in two prefork children, the request's row held by
    the test until both runs are blocked (without the batch claim both would have read the
    same stored best). One change of the best option, one message."""
    settings = settings_for(pg_database, tmp_path, fake_slack)
    request_id, url = follow_a_request(pg_engine, settings, fake_slack)
    env = env_for(tmp_path, pg_database, redis_url, fake_slack)
    replay_unprocessed_twice(env, pg_engine, redis_url, data_dir / "offers" / A)
    worker = start_worker(env, "--pool", "prefork", "--concurrency", "2")
    try:
        requests_table = CapacityRequest.__table__  # type: ignore[attr-defined]
        with pg_engine.connect() as gate, gate.begin():
            gate.execute(
                select(requests_table.c.id)
                .where(requests_table.c.id == request_id)
                .with_for_update()
            )
            # Both runs blocked: on the request row (gated here), or the second behind the
            # first on the batch's poll runs (process_events claims a batch first).
            _wait(
                lambda: (
                    waiting(pg_engine, "UPDATE capacity_requests")
                    + waiting(pg_engine, "UPDATE poll_runs")
                    == 2
                ),
                90,
                "both runs",
            )
        _wait(lambda: fake_slack.to(url) and drained(redis_url), 90, "both runs to end")
        assert len(fake_slack.to(url)) == 1
    finally:
        stop(worker)
