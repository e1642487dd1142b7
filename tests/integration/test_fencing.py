"""Fencing of the scheduler's polls, with real parts: two real `LeaderScheduler`s on a
Redis of the tests' own, a real Celery worker (`broker worker`) on PostgreSQL. A leader
"paused" past its lease (it renews nothing for longer than the TTL: what a long GC or
SIGSTOP does) is replaced; when its poll job then fires, before it notices, the poll it
enqueues carries the old lease's fence and the worker refuses it. The new leader's polls
run (issue 16: 2 trials in 8 had both leaders' polls run)."""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
import redis
from sqlalchemy import Engine, func, select

from broker.config import ReplaySettings, Settings
from broker.models import PollRun
from tests.integration.test_production_mode import SECRET_KEY, _env, _wait, pg_engine, redis_url
from workers.fencing import LOCK_NAME, Lease, fence_is_current
from workers.scheduler import LeaderScheduler

__all__ = ["pg_engine", "redis_url"]

#: Longer than building the sources (~2 s: adapters probe for credentials) before a step.
TTL_S = 4.0


def poll_runs(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(PollRun)).scalar_one())


@pytest.fixture
def worker_log(
    pg_engine: Engine, pg_database: str, redis_url: str, tmp_path: Path
) -> Iterator[Path]:
    """A real `broker worker` (one process) running until the test ends; its log file."""
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "broker.cli", "worker", "--pool", "solo"],
            env=_env(tmp_path, pg_database, redis_url),
            stdout=out,
            stderr=subprocess.STDOUT,
            text=True,
        )
    try:
        yield log
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def fire_now(scheduler: LeaderScheduler, job_id: str) -> None:
    """Run a scheduled job now, on the scheduler's own thread (as its timer would)."""
    scheduler.scheduler.get_job(job_id).modify(next_run_time=datetime.now(UTC))


def test_a_leader_paused_past_its_lease_has_its_poll_refused_by_the_worker(
    pg_engine: Engine, pg_database: str, redis_url: str, tmp_path: Path, worker_log: Path
) -> None:
    settings = Settings(
        database_url=pg_database,
        data_dir=tmp_path,
        redis_url=redis_url,
        secret_key=SECRET_KEY,
        replay=ReplaySettings(enabled=True),
        poll_interval_s=3600,
        poll_jitter_s=0,
    )
    client = redis.Redis.from_url(redis_url)
    first = LeaderScheduler(settings, lock_ttl_s=TTL_S)
    second = LeaderScheduler(settings, lock_ttl_s=TTL_S)
    try:
        assert first.step() and first.fence is not None  # leads; polls replay at once
        assert not second.step()  # a standby while the lease holds
        _wait(lambda: poll_runs(pg_engine) == 1, 90, "the first leader's poll to run")

        # The first leader is paused: it renews nothing for longer than its lease.
        _wait(lambda: client.get(LOCK_NAME) is None, 3 * TTL_S, "the first lease to expire")
        assert second.step() and second.fence == first.fence + 1  # takes over, polls
        _wait(lambda: poll_runs(pg_engine) == 2, 90, "the new leader's poll to run")

        # The first leader wakes: its poll job fires before it renews (and learns).
        assert first.leader and first.scheduler is not None
        fire_now(first, "poll:replay")
        refused = f"fence {first.fence}, latest {second.fence}; refused"
        _wait(lambda: refused in worker_log.read_text(), 60, "the worker to refuse it")
        # The new leader's next poll runs; the stale one never did.
        fire_now(second, "poll:replay")
        _wait(lambda: poll_runs(pg_engine) == 3, 90, "the new leader's next poll to run")
        assert poll_runs(pg_engine) == 3
        assert not first.step()  # on its next renewal it learns, and stands down
        assert first.scheduler is None and second.step()
    finally:
        first.step_down()
        second.step_down()


def test_each_lease_draws_a_greater_fence_and_only_the_latest_is_current(
    redis_url: str,
) -> None:
    client = redis.Redis.from_url(redis_url)
    one, two = Lease(client, LOCK_NAME, 30), Lease(client, LOCK_NAME, 30)
    fence = one.acquire()
    assert fence is not None and two.acquire() is None  # held: no second lease, no fence
    assert one.renew() and not two.renew()
    assert fence_is_current(client, fence)
    one.release()
    assert client.get(LOCK_NAME) is None
    newer = two.acquire()
    assert newer == fence + 1 and fence_is_current(client, newer)
    assert not fence_is_current(client, fence)
    assert not one.renew()  # released leases stay released
    two.release()
