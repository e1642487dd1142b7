"""Shared fixtures: the market data set (read in place), a clean environment."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from tests.fakes.http import FakeHttpServer, serve

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
        if name.startswith("BROKER_") and name not in {
            "BROKER_TEST_DATA_DIR",
            "BROKER_TEST_POSTGRES_URL",
        }:
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
