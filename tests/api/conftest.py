"""The API over the migrated `engine` (SQLite and PostgreSQL), with a controllable clock,
API keys of two teams, and the bundled sample market ingested on demand."""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine

from broker.api.app import create_app
from broker.auth import Role, create_api_key
from broker.config import ReplaySettings, Settings
from broker.db import session_scope
from broker.polling import ReplaySummary, replay_results
from providers import replay

with warnings.catch_warnings():
    # starlette asks for httpx2 instead of httpx; the test client works the same with both.
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

__all__ = ["T0", "Clock", "Keys", "TestClient", "bearer"]

#: The tests' "now": after the bundled sample's last snapshot.
T0 = datetime(2026, 5, 21, 12, 0, tzinfo=UTC)


class Clock:
    """A clock the test moves by hand."""

    def __init__(self, now: datetime) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now

    def advance(self, **delta: float) -> None:
        self.now += timedelta(**delta)


@dataclass(frozen=True)
class Keys:
    """Plaintext keys: team alpha has an admin and a member; team beta a viewer."""

    admin: str
    member: str
    viewer: str


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def clock() -> Clock:
    return Clock(T0)


@pytest.fixture
def settings(tmp_path: Path) -> Settings:
    # Replay on explicitly (not "when no cloud is configured"), one snapshot for good: the
    # tests must not depend on which cloud credentials the machine happens to have.
    return Settings(data_dir=tmp_path, replay=ReplaySettings(enabled=True, step_s=10**9))


@pytest.fixture
def app(engine: Engine, settings: Settings, clock: Clock) -> FastAPI:
    return create_app(settings, engine, clock)


@pytest.fixture
def client(app: FastAPI) -> Iterator[TestClient]:
    with TestClient(app) as c:
        yield c


@pytest.fixture
def keys(engine: Engine, clock: Clock) -> Keys:
    with session_scope(engine) as session:
        admin = create_api_key(session, "alpha", Role.ADMIN, name="ops", clock=clock)
        member = create_api_key(session, "alpha", Role.MEMBER, clock=clock)
        viewer = create_api_key(session, "beta", Role.VIEWER, clock=clock)
    return Keys(admin=admin.key, member=member.key, viewer=viewer.key)


@pytest.fixture
def market(engine: Engine, clock: Clock) -> ReplaySummary:
    """The bundled sample's snapshots ingested as polls two hours, one hour and zero hours
    before the clock (so the history has three distinct times)."""
    folders = replay.list_snapshots(replay.bundled_sample())
    n = len(folders)
    results = (
        (f.name, replay.read_snapshot(f, fetched_at=clock() - timedelta(hours=n - 1 - i)))
        for i, f in enumerate(folders)
    )
    return replay_results(engine, results, clock=clock)
