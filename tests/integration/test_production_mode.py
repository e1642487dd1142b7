"""Production mode with real parts: a real Celery worker (`broker worker`) on the real Redis
and PostgreSQL runs poll → ingest → process_events; two real `broker scheduler` processes
elect one leader, and the standby takes over when the leader is killed; a worker, a
scheduler or the API refuses to start without a `BROKER_SECRET_KEY` of its own."""

from __future__ import annotations

import inspect
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from broker import cli, db
from broker.config import Settings
from broker.db import session_scope
from broker.models import CapacityRequest, PollRun, RequestEvent, Team
from broker.requests import RequestIn, create_request
from tests.fakes.http import closed_port

REDIS_URL = os.environ.get("BROKER_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
#: The key every production process of these tests shares (production mode needs one).
SECRET_KEY = "test-secret-key-of-the-production-mode-tests"


@pytest.fixture
def redis_url(worker_id: str) -> Iterator[str]:
    """A Redis database of this xdist worker's own (15, 14, ...): Celery workers started by
    tests in parallel must not take each other's tasks."""
    n = int(worker_id[2:]) if worker_id.startswith("gw") else 0
    url = REDIS_URL if n == 0 else REDIS_URL.rsplit("/", 1)[0] + f"/{15 - n}"
    try:
        client = redis.Redis.from_url(url)
        client.ping()
    except redis.exceptions.RedisError as exc:
        if os.environ.get("CI"):
            pytest.fail(f"Redis not reachable at {url}: {exc}")
        pytest.skip(f"Redis not reachable at {url}: {exc}")
    client.flushdb()
    yield url
    client.flushdb()


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[Engine]:
    from tests.conftest import _reset_pg

    eng = db.make_engine(url=pg_database)
    _reset_pg(eng)
    yield eng
    eng.dispose()


def _env(tmp_path: Path, pg_url: str, redis_url: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_DATABASE_URL=pg_url,
        BROKER_REDIS_URL=redis_url,
        BROKER_DATA_DIR=str(tmp_path),
        BROKER_REPLAY__ENABLED="true",
        BROKER_POLL_JITTER_S="0",
        BROKER_SECRET_KEY=SECRET_KEY,
        PYTHONUNBUFFERED="1",
    )
    return env


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.2)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


def test_celery_worker_polls_ingests_and_rescores(
    pg_engine: Engine, pg_database: str, redis_url: str, tmp_path: Path
) -> None:
    settings = Settings(database_url=pg_database, data_dir=tmp_path)
    with session_scope(pg_engine) as session:
        team = Team(name="prod", created_at=datetime.now(UTC))
        session.add(team)
        session.flush()
        assert team.id is not None
        body = RequestIn.model_validate({"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24})
        row = create_request(session, team.id, body, settings=settings)
        assert row.state == "open"  # empty market
        request_id = row.id

    worker = subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "worker", "--pool", "solo", "--loglevel", "WARNING"],
        env=_env(tmp_path, pg_database, redis_url),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        from workers.celery_app import make_app

        make_app(redis_url).send_task("broker.poll", args=["replay"], kwargs={"force": True})

        def rescored() -> bool:
            with pg_engine.connect() as conn:
                return bool(
                    conn.execute(
                        select(func.count())
                        .select_from(RequestEvent)
                        .where(RequestEvent.request_id == request_id)  # type: ignore[arg-type]
                    ).scalar_one()
                )

        _wait(rescored, 90, "the worker to poll, ingest and rescore")
        with pg_engine.connect() as conn:
            runs = conn.execute(select(PollRun.source, PollRun.status)).all()  # type: ignore[call-overload]
            (state,) = conn.execute(
                select(CapacityRequest.state).where(CapacityRequest.id == request_id)  # type: ignore[call-overload]
            ).one()
            types = [
                t
                for (t,) in conn.execute(
                    select(RequestEvent.type).where(RequestEvent.request_id == request_id)  # type: ignore[call-overload]
                )
            ]
        assert [tuple(r) for r in runs] == [("replay", "ok")]
        assert state == "matched"
        assert sorted(types) == ["best_option_changed", "state_changed"]
    finally:
        worker.send_signal(signal.SIGTERM)
        try:
            worker.wait(timeout=20)
        except subprocess.TimeoutExpired:
            worker.kill()


def _start_scheduler(env: dict[str, str]) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "broker.cli", "scheduler", "--lock-ttl-s", "2"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_one_scheduler_leads_and_a_standby_takes_over(
    pg_engine: Engine, pg_database: str, redis_url: str, tmp_path: Path
) -> None:
    env = _env(tmp_path, pg_database, redis_url)
    env["BROKER_POLL_INTERVAL_S"] = "3600"
    client = redis.Redis.from_url(redis_url, decode_responses=True)
    first = _start_scheduler(env)
    procs = [first]
    try:
        _wait(lambda: client.get("broker:scheduler:leader") is not None, 30, "a leader")
        leader_id = client.get("broker:scheduler:leader")
        assert leader_id is not None and str(leader_id).endswith(f":{first.pid}")
        second = _start_scheduler(env)
        procs.append(second)
        time.sleep(3)  # longer than the TTL: the leader renews, the standby stays standby
        assert client.get("broker:scheduler:leader") == leader_id
        # The leader enqueued one poll of replay (the only enabled provider).
        assert client.llen("celery") == 1
        first.kill()  # no clean release: the lock must expire
        first.wait(timeout=10)
        _wait(
            lambda: str(client.get("broker:scheduler:leader") or "").endswith(f":{second.pid}"),
            15,
            "the standby to take over",
        )
        _wait(lambda: client.llen("celery") == 2, 10, "the new leader to enqueue its poll")
        second.send_signal(signal.SIGTERM)
        second.wait(timeout=15)
        # A clean stop releases the lock at once.
        assert client.get("broker:scheduler:leader") is None
        out = second.stderr.read() if second.stderr else ""
        assert f":{second.pid}: standby" in out and f":{second.pid}: leader" in out
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()


# ----------------------------------------------------------------- the secret key


def _without_key(env: dict[str, str], key: str | None) -> dict[str, str]:
    env = {k: v for k, v in env.items() if k != "BROKER_SECRET_KEY"}
    return env if key is None else {**env, "BROKER_SECRET_KEY": key}


def _refused(proc: subprocess.CompletedProcess[str]) -> None:
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out
    assert "BROKER_SECRET_KEY" in out and "Fernet.generate_key().decode()" in out, out
    assert "change-me-in-dot-env" not in out, "a key, even a published one, is never echoed"


@pytest.mark.parametrize("key", [None, "change-me-in-dot-env"], ids=["unset", "published"])
@pytest.mark.parametrize("command", [("worker", "--pool", "solo"), ("scheduler",)])
def test_production_processes_refuse_a_missing_or_published_secret_key(
    command: tuple[str, ...],
    key: str | None,
    pg_engine: Engine,
    pg_database: str,
    redis_url: str,
    tmp_path: Path,
) -> None:
    """Slack secrets stored under no key (each process would make its own) or under the
    key docker-compose.yml used to default to: a worker or scheduler will not start, and
    says how to make a key. Nothing was consumed, scheduled or led."""
    env = _without_key(_env(tmp_path, pg_database, redis_url), key)
    client = redis.Redis.from_url(redis_url)
    client.rpush("celery", "a task left for a worker with a key")
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", *command],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    _refused(proc)
    assert client.llen("celery") == 1 and client.get("broker:scheduler:leader") is None


needs_serve_check = pytest.mark.skipif(
    "check_production_key" not in inspect.getsource(cli),
    reason="needs broker/cli.py to call broker.secrets.check_production_key",
)


@needs_serve_check
@pytest.mark.parametrize("key", [None, "change-me-in-dot-env"], ids=["unset", "published"])
def test_serve_in_production_refuses_a_missing_or_published_secret_key(
    key: str | None, pg_engine: Engine, pg_database: str, redis_url: str, tmp_path: Path
) -> None:
    env = _without_key(_env(tmp_path, pg_database, redis_url), key)
    for args in (("--no-embedded-workers",), ()):  # BROKER_REDIS_URL alone is production
        proc = subprocess.run(
            [sys.executable, "-m", "broker.cli", "serve", "--port", str(closed_port()), *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        _refused(proc)
