"""`broker scheduler`: the one active scheduler of production mode, with standbys.

Any number may run; exactly one is leader. Leadership is a Redis lock
(`broker:scheduler:leader`, value = this process's id) taken with SET NX and a TTL
(`lock_ttl_s`) and renewed every third of it. A leader that dies stops renewing, its lock
expires, and a standby (retrying every `retry_s`) takes over within about one TTL. A leader
that fails to renew (Redis gone, lock lost) stops scheduling at once and goes back to standby,
so two leaders never enqueue at the same time for longer than one renewal period.

The leader runs an APScheduler with one interval job per enabled provider
(`BROKER_<PROVIDER>__POLL_INTERVAL_S` or `BROKER_POLL_INTERVAL_S`, `BROKER_POLL_JITTER_S`);
each job only enqueues the Celery task `broker.poll` (the task skips a degraded provider
while it backs off); and one housekeeping job every `BROKER_ALERTS__SWEEP_INTERVAL_S`
enqueues `broker.sweep` (lost batches and deliveries re-queued, ended reservations expired).
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from apscheduler.schedulers.background import BackgroundScheduler
from redis.lock import Lock

from broker.config import Settings
from broker.domain import utcnow
from broker.sources import Sources, build_sources

log = logging.getLogger(__name__)

LOCK_NAME = "broker:scheduler:leader"


def identity() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


class LeaderScheduler:
    """Wait to become leader, schedule while leader, step down when the lock is lost."""

    def __init__(
        self,
        settings: Settings,
        enqueue: Callable[[str], Any],
        *,
        lock_name: str = LOCK_NAME,
        lock_ttl_s: float = 15.0,
        retry_s: float = 2.0,
        on_change: Callable[[str], None] | None = None,
        housekeeping: Callable[[], Any] | None = None,
    ) -> None:
        if not settings.redis_url:
            raise ValueError("the scheduler needs BROKER_REDIS_URL (production mode)")
        self.settings, self.enqueue = settings, enqueue
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.lock = Lock(
            self.redis, lock_name, timeout=lock_ttl_s, blocking=False, thread_local=False
        )
        self.lock_ttl_s, self.retry_s = lock_ttl_s, retry_s
        self.on_change = on_change or (lambda state: None)
        self.housekeeping = housekeeping
        self.stop_event = threading.Event()
        self.scheduler: Any = None
        self.leader = False
        self.sources: Sources | None = None

    def _start_jobs(self) -> None:
        # Built before the lock is taken (building an adapter may probe for credentials for
        # seconds, longer than a short TTL); rebuilt each time this process steps down.
        sources = self.sources or build_sources(self.settings, utcnow)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for name in sorted(sources.enabled):
            self.scheduler.add_job(
                self.enqueue,
                "interval",
                args=(name,),
                seconds=self.settings.poll_interval_for(name),
                jitter=self.settings.poll_jitter_s or None,
                next_run_time=now,
                id=f"poll:{name}",
                max_instances=1,
                coalesce=True,
            )
        if self.housekeeping is not None:
            self.scheduler.add_job(
                self.housekeeping,
                "interval",
                seconds=self.settings.alerts.sweep_interval_s,
                id="sweep",
                max_instances=1,
                coalesce=True,
            )
        for name, reason in sorted(sources.disabled.items()):
            log.info("scheduler.provider_disabled %s: %s", name, reason)
        self.scheduler.start()
        log.warning("scheduler.leader %s polling %s", identity(), sorted(sources.enabled))

    def _stop_jobs(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None

    def step(self) -> bool:
        """One round: become leader, or renew; returns whether this process leads now."""
        try:
            if not self.leader:
                if self.lock.acquire(blocking=False, token=identity()):
                    self.leader = True
                    self.on_change("leader")
                    self._start_jobs()
            elif not self.lock.reacquire():
                raise redis.exceptions.LockError("lock not owned any more")
        except (redis.exceptions.RedisError, redis.exceptions.LockError) as exc:
            if self.leader:
                log.error("scheduler.lost_leadership %s: %s", identity(), exc)
                self.leader = False
                self._stop_jobs()
                self.sources = None
                self.on_change("standby")
        return self.leader

    def run(self) -> None:
        """Until `stop()`: lead or wait; renews at a third of the TTL."""
        self.on_change("standby")
        while not self.stop_event.is_set():
            if not self.leader and self.sources is None:
                self.sources = build_sources(self.settings, utcnow)
            leading = self.step()
            self.stop_event.wait(self.lock_ttl_s / 3 if leading else self.retry_s)
        self._stop_jobs()
        if self.leader:
            with contextlib.suppress(redis.exceptions.LockError, redis.exceptions.RedisError):
                self.lock.release()
            self.leader = False

    def stop(self) -> None:
        self.stop_event.set()
