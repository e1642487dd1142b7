"""The Celery app of production mode: Redis as broker, tasks acknowledged late.

`BROKER_REDIS_URL` decides: set, `broker worker` runs this app's workers and
`broker scheduler` enqueues polls; unset, nothing here is used (embedded mode). Tasks are
acknowledged after they ran (`acks_late`) and re-queued when a worker dies mid-task
(`task_reject_on_worker_lost`), so every task is written to be idempotent; one task at a
time per worker process (`prefetch_multiplier=1`) so a killed worker holds nothing back.

A worker refuses to start without a `BROKER_SECRET_KEY` of its own (`celeryd_init`, however
it is started: `broker worker` or `celery -A workers.celery_app worker`): it would store or
read Slack secrets under a key anyone can know (`broker.secrets.check_production_key`).
"""

from __future__ import annotations

from typing import Any

from celery import Celery
from celery.signals import celeryd_init

from broker.config import get_settings
from broker.secrets import SecretKeyRequired, check_production_key


def _refuse_without_secret_key(**_: Any) -> None:
    """Stop the worker before it consumes anything. SystemExit, because Celery logs and
    swallows any Exception a signal handler raises."""
    try:
        check_production_key(get_settings())
    except SecretKeyRequired as exc:
        raise SystemExit(f"error: {exc}") from None


celeryd_init.connect(_refuse_without_secret_key)


def make_app(redis_url: str | None = None) -> Celery:
    url = redis_url or get_settings().redis_url or "redis://127.0.0.1:6379/0"
    app = Celery("broker", broker=url, include=["workers.tasks"])
    app.conf.update(
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_serializer="json",
        accept_content=["json"],
        broker_connection_retry_on_startup=True,
        # A task not acknowledged within this long is delivered again (Redis visibility):
        # longer than any poll, so a slow poll is never run twice.
        broker_transport_options={"visibility_timeout": 3600},
        worker_hijack_root_logger=False,
        timezone="UTC",
    )
    return app


app = make_app()
