"""`broker scheduler`: the one active scheduler of production mode, with standbys.

Any number may run; exactly one is leader. Leadership is a lease in Redis
(`broker:scheduler:leader`, naming this process) with a TTL (`lock_ttl_s`), renewed every
third of it, and a fencing token drawn with it (`workers.fencing`). A leader that dies stops
renewing, its lease expires, and a standby (retrying every `retry_s`) takes over within about
one TTL. A leader that fails to renew (Redis gone, lease lost) stops scheduling at once and
goes back to standby. A leader paused past its lease (GC, SIGSTOP) may still enqueue a poll
when it wakes, before it notices: every poll carries the fence of the lease it was enqueued
under, and the worker refuses one whose fence is no longer the latest, so a stale leader's
polls never run beside the new leader's.

The leader runs an APScheduler with one interval job per enabled provider
(`BROKER_<PROVIDER>__POLL_INTERVAL_S` or `BROKER_POLL_INTERVAL_S`, `BROKER_POLL_JITTER_S`);
each job only enqueues the Celery task `broker.poll` (the task skips a degraded provider
while it backs off); and one housekeeping job every `BROKER_ALERTS__SWEEP_INTERVAL_S`
enqueues `broker.sweep` (lost batches and deliveries re-queued, ended reservations expired).
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import threading
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import redis
from apscheduler.schedulers.background import BackgroundScheduler

from broker.config import Settings
from broker.domain import utcnow
from broker.secrets import check_production_key
from broker.sources import Sources, build_sources
from workers.fencing import LOCK_NAME, Lease, identity

log = logging.getLogger(__name__)

__all__ = ["LOCK_NAME", "Enqueue", "LeaderScheduler", "identity"]

#: Enqueues one poll: `enqueue(provider, fence)`; the fence goes to the task with it.
Enqueue = Callable[[str, int], Any]


def celery_enqueue(redis_url: str) -> Enqueue:
    """Enqueue `broker.poll(provider, fence=...)` on the Celery broker at `redis_url`."""
    from workers.celery_app import make_app

    app = make_app(redis_url)

    def enqueue(provider: str, fence: int) -> Any:
        return app.send_task("broker.poll", args=[provider], kwargs={"fence": fence})

    return enqueue


def _with_fence(enqueue: Callable[..., Any]) -> Enqueue:
    """`enqueue` as (provider, fence). One taking the provider only (the wiring from before
    fencing) still works, but its polls carry no fence and are never refused: say so."""
    try:
        inspect.signature(enqueue).bind("provider", 1)
    except TypeError:
        log.warning(
            "scheduler.enqueue_unfenced: enqueue(provider) takes no fence, so a stale "
            "leader's polls cannot be refused; pass enqueue(provider, fence)"
        )
        return lambda provider, fence: enqueue(provider)
    except ValueError:  # no signature to read (a builtin): taken at its word
        pass
    return enqueue


class LeaderScheduler:
    """Wait to become leader, schedule while leader, step down when the lock is lost."""

    def __init__(
        self,
        settings: Settings,
        enqueue: Callable[..., Any] | None = None,
        *,
        lock_name: str = LOCK_NAME,
        lock_ttl_s: float = 15.0,
        retry_s: float = 2.0,
        on_change: Callable[[str], None] | None = None,
        housekeeping: Callable[[], Any] | None = None,
    ) -> None:
        """`enqueue(provider, fence)` puts one poll on the queue (default: the Celery task
        `broker.poll` on `settings.redis_url`).

        Raises:
            ValueError: no `BROKER_REDIS_URL`; `secrets.SecretKeyRequired` (a ValueError):
                no `BROKER_SECRET_KEY`, or a published one.
        """
        if not settings.redis_url:
            raise ValueError("the scheduler needs BROKER_REDIS_URL (production mode)")
        check_production_key(settings)
        self.settings = settings
        self.enqueue = _with_fence(enqueue or celery_enqueue(settings.redis_url))
        self.redis = redis.Redis.from_url(settings.redis_url)
        self.lease = Lease(self.redis, lock_name, lock_ttl_s)
        self.lock_ttl_s, self.retry_s = lock_ttl_s, retry_s
        self.on_change = on_change or (lambda state: None)
        self.housekeeping = housekeeping
        self.stop_event = threading.Event()
        self.scheduler: Any = None
        self.leader = False
        self.sources: Sources | None = None

    @property
    def fence(self) -> int | None:
        """The fence of the lease this scheduler took last (None: never led)."""
        return self.lease.fence

    def enqueue_poll(self, provider: str, fence: int) -> None:
        """The poll job: enqueue one poll of `provider` stamped with `fence`, the fence of
        the lease the job was scheduled under (not re-read: a job outliving its lease must
        carry the old fence, which the worker then refuses)."""
        self.enqueue(provider, fence)
        log.debug("scheduler.enqueued %s fence=%d", provider, fence)

    def _start_jobs(self, fence: int) -> None:
        # Built by `step` before the lease was taken; rebuilt each time this process steps
        # down (credentials may have changed meanwhile).
        sources = self.sources or build_sources(self.settings, utcnow)
        self.scheduler = BackgroundScheduler(timezone=UTC)
        now = datetime.now(UTC)
        for name in sorted(sources.enabled):
            self.scheduler.add_job(
                self.enqueue_poll,
                "interval",
                args=(name, fence),
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
        log.warning(
            "scheduler.leader %s fence=%d polling %s", identity(), fence, sorted(sources.enabled)
        )

    def _stop_jobs(self) -> None:
        if self.scheduler is not None and self.scheduler.running:
            self.scheduler.shutdown(wait=False)
        self.scheduler = None

    def step(self) -> bool:
        """One round: become leader, or renew; returns whether this process leads now."""
        try:
            if not self.leader:
                # Built before the lease is taken: building an adapter may probe for
                # credentials for seconds, longer than a short TTL.
                if self.sources is None:
                    self.sources = build_sources(self.settings, utcnow)
                fence = self.lease.acquire()
                if fence is not None:
                    self.leader = True
                    self.on_change("leader")
                    self._start_jobs(fence)
            elif not self.lease.renew():
                raise redis.exceptions.LockError("lease not held any more")
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
            leading = self.step()
            self.stop_event.wait(self.lock_ttl_s / 3 if leading else self.retry_s)
        self.step_down()

    def step_down(self) -> None:
        """Stop scheduling and give the lease up at once if it is still ours."""
        self._stop_jobs()
        if self.leader:
            with contextlib.suppress(redis.exceptions.RedisError):
                self.lease.release()
            self.leader = False

    def stop(self) -> None:
        self.stop_event.set()
