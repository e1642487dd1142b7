"""Shared fixtures: the market data set (read in place), a clean environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.fakes.http import FakeHttpServer, closed_port, serve

REPO_ROOT = Path(__file__).resolve().parents[1]
# The public market data set lives beside the repository (../shared/data), never copied in.
DATA_DIR = Path(os.environ.get("BROKER_TEST_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
OFFERS_DIR = DATA_DIR / "offers"


@pytest.fixture(scope="session")
def data_dir() -> Path:
    """The market data set; fails loudly (not skips) when it is missing."""
    if not OFFERS_DIR.is_dir():
        pytest.fail(
            f"market data set not found at {DATA_DIR}; clone the repo beside shared/ "
            "or set BROKER_TEST_DATA_DIR"
        )
    return DATA_DIR


@pytest.fixture(scope="session")
def snapshot_dirs(data_dir: Path) -> list[Path]:
    """Every dated snapshot folder, oldest first (folder names sort chronologically)."""
    return sorted(p for p in (data_dir / "offers").iterdir() if p.is_dir())


@pytest.fixture(autouse=True)
def clean_environ(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """No BROKER_* setting of the developer's shell leaks into a test."""
    for name in list(os.environ):
        # BROKER_TEST_* say where the test servers are (the data set, PostgreSQL, Redis).
        if name.startswith("BROKER_") and not name.startswith("BROKER_TEST_"):
            monkeypatch.delenv(name, raising=False)
    yield


# ------------------------------------------------------------------ databases

PG_ADMIN_URL = os.environ.get(
    "BROKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)


def _pg_available() -> str | None:
    """None when the test PostgreSQL answers, else why not."""
    from sqlalchemy import create_engine, text

    try:
        eng = create_engine(PG_ADMIN_URL)
        with eng.connect() as conn:
            conn.execute(text("SELECT 1"))
        eng.dispose()
        return None
    except Exception as exc:  # any connect failure means "not available"
        return f"{type(exc).__name__}: {exc}".splitlines()[0]


@pytest.fixture(scope="session")
def pg_database(worker_id: str) -> Iterator[str]:
    """A fresh PostgreSQL database for this test session (one per xdist worker).

    Skips when PostgreSQL is not reachable, except under CI (CI=true), where it fails:
    the store must be proven on PostgreSQL there.
    """
    from sqlalchemy import create_engine, text

    why = _pg_available()
    if why is not None:
        msg = f"PostgreSQL not reachable at {PG_ADMIN_URL}: {why}"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    name = f"broker_test_{worker_id}_{os.getpid()}"
    admin = create_engine(PG_ADMIN_URL, isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    url = admin.url.set(database=name).render_as_string(hide_password=False)
    yield url
    with admin.connect() as conn:
        conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


@pytest.fixture(scope="session")
def worker_id(request: pytest.FixtureRequest) -> str:
    """xdist's worker id, or "main" without xdist."""
    return str(getattr(request.config, "workerinput", {}).get("workerid", "main"))


def _reset_pg(engine: Engine) -> None:
    from sqlalchemy import text
    from sqlmodel import SQLModel

    from broker import (
        db,
        models,  # noqa: F401  (registers every table)
    )

    db.upgrade(engine)
    with engine.begin() as conn:
        tables = ", ".join(f'"{t}"' for t in SQLModel.metadata.tables)
        conn.execute(text(f"TRUNCATE {tables} RESTART IDENTITY CASCADE"))


@pytest.fixture(params=["sqlite", "postgresql"])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    """A migrated, empty store on SQLite (a temp file) and on PostgreSQL (a real server)."""
    from broker import db

    if request.param == "sqlite":
        eng = db.make_engine(url=f"sqlite:///{tmp_path / 'broker.db'}")
        db.upgrade(eng)
    else:
        eng = db.make_engine(url=request.getfixturevalue("pg_database"))
        _reset_pg(eng)
    yield eng
    eng.dispose()


@pytest.fixture
def sqlite_engine(tmp_path: Path) -> Iterator[Engine]:
    from broker import db

    eng = db.make_engine(url=f"sqlite:///{tmp_path / 'broker.db'}")
    db.upgrade(eng)
    yield eng
    eng.dispose()


# ------------------------------------------------------------------ fake HTTP


@pytest.fixture
def fake_http() -> Iterator[FakeHttpServer]:
    """A started local fake HTTP server (127.0.0.1, free port); see tests/fakes/http.py."""
    yield from serve()


# ------------------------------------------------------------------ Redis

#: Where the tests that need Redis find it, and the database each uses there (a Celery
#: test under xdist worker gwN takes 15 - N). Left unset, they point at a redis-server this
#: pytest process starts on a free port of 127.0.0.1: tests flush their databases, which
#: must never be those of a Redis someone else runs on 6379. Set one to use another server.
REDIS_URL_VARS = {
    "BROKER_TEST_REDIS_URL": 15,
    "BROKER_TEST_RATELIMIT_REDIS_URL": 10,
    "BROKER_TEST_METRICS_REDIS_URL": 12,
}

_redis: dict[str, object] = {}


def _start_redis() -> tuple[subprocess.Popen[bytes], int, str] | str:
    """A private redis-server (no persistence, its files in a temp dir): the process, its
    port and its directory; or why not."""
    exe = shutil.which("redis-server")
    if exe is None:
        return "redis-server is not installed"
    import redis

    workdir = tempfile.mkdtemp(prefix="broker-test-redis-")
    why = "redis-server did not start"
    for _ in range(5):  # a free port can be taken between the probe and the bind
        port = closed_port()  # free now; taken by redis-server below
        proc = subprocess.Popen(
            [
                *(exe, "--bind", "127.0.0.1", "--port", str(port)),
                *("--save", "", "--appendonly", "no", "--dir", workdir),
                *("--databases", "16", "--loglevel", "warning"),
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while proc.poll() is None and time.monotonic() < deadline:
            try:
                if redis.Redis(host="127.0.0.1", port=port, socket_timeout=1).ping():
                    return proc, port, workdir
            except redis.exceptions.RedisError as exc:
                why = f"redis-server did not answer: {exc}"
            time.sleep(0.02)
        proc.kill()
        proc.wait()
    shutil.rmtree(workdir, ignore_errors=True)
    return why


def pytest_sessionstart(session: pytest.Session) -> None:
    """Point every unset BROKER_TEST_*REDIS_URL at this process's own redis-server, before
    the test modules are imported (some read their URL then). Under xdist the controller
    (its distributed session is registered by now) runs no test: each worker starts its
    own, so no two workers share a database."""
    config = session.config
    if config.pluginmanager.getplugin("dsession") is not None:
        return
    unset = [name for name in REDIS_URL_VARS if name not in os.environ]
    if not unset:
        return
    started = _start_redis()
    if isinstance(started, str):
        # Nothing listens there: the Redis tests skip (fail under CI) saying so.
        base = f"redis://127.0.0.1:{closed_port()}"
        config.issue_config_time_warning(
            pytest.PytestConfigWarning(f"{started}: the tests needing Redis cannot run"), 2
        )
    else:
        proc, port, workdir = started
        _redis.update(proc=proc, workdir=workdir)
        base = f"redis://127.0.0.1:{port}"
    for name in unset:
        os.environ[name] = f"{base}/{REDIS_URL_VARS[name]}"


def pytest_unconfigure(config: pytest.Config) -> None:
    proc = _redis.pop("proc", None)
    if isinstance(proc, subprocess.Popen):
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    workdir = _redis.pop("workdir", None)
    if isinstance(workdir, str):
        shutil.rmtree(workdir, ignore_errors=True)
