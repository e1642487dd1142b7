"""Poll interval per provider: its own setting, else the global one; the embedded poller
schedules each provider at its own interval."""

from __future__ import annotations

from datetime import timedelta
from pathlib import Path
from typing import Any, ClassVar

import pytest

from broker import db
from broker.config import Settings
from broker.sources import Sources
from workers.embedded import EmbeddedPoller


class Dummy:
    name: ClassVar[str] = "dummy"  # one name for both: only the schedule is looked at

    def fetch(self) -> Any:
        raise AssertionError("not polled in this test")


def test_own_interval_or_the_global_one(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("BROKER_POLL_INTERVAL_S", "600")
    monkeypatch.setenv("BROKER_LAMBDA_CLOUD__POLL_INTERVAL_S", "60")
    monkeypatch.setenv("BROKER_REPLAY__POLL_INTERVAL_S", "30")
    s = Settings(data_dir=tmp_path)
    assert s.poll_interval_for("lambda_cloud") == 60
    assert s.poll_interval_for("replay") == 30
    assert s.poll_interval_for("aws") == 600
    assert s.poll_interval_for("not-a-provider") == 600


def test_the_embedded_poller_uses_each_interval(tmp_path: Path) -> None:
    s = Settings(data_dir=tmp_path, poll_interval_s=900)
    s.lambda_cloud.poll_interval_s = 45
    sources = Sources(enabled={"lambda_cloud": Dummy(), "aws": Dummy()})
    engine = db.make_engine(url=f"sqlite:///{tmp_path}/polls.db")
    db.upgrade(engine)
    poller = EmbeddedPoller(engine, s, sources=sources)
    poller.start()  # the first polls fail at once (Dummy): recorded as failed polls
    try:
        intervals = {
            job.id: job.trigger.interval
            for job in poller.scheduler.get_jobs()
            if job.id.startswith("poll:")
        }
    finally:
        poller.shutdown()
    assert intervals == {
        "poll:lambda_cloud": timedelta(seconds=45),
        "poll:aws": timedelta(seconds=900),
    }
