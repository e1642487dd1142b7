"""Body limits: refused with 413 while streaming, before the key is checked or anything is
parsed; nothing written."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi import FastAPI
from sqlalchemy import Engine, func, select

from broker.api.app import create_app
from broker.config import ReplaySettings, Settings
from broker.models import CapacityRequest, Reservation
from tests.api.conftest import Clock, Keys, TestClient, bearer

LIMIT = 64 * 1024


@pytest.fixture
def small(engine: Engine, tmp_path: Path, clock: Clock) -> Iterator[TestClient]:
    settings = Settings(
        data_dir=tmp_path,
        replay=ReplaySettings(enabled=True, step_s=10**9),
        max_json_body_bytes=LIMIT,
        max_csv_body_bytes=2 * LIMIT,
    )
    app: FastAPI = create_app(settings, engine, clock)
    with TestClient(app) as c:
        yield c


def count(engine: Engine, table: type) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(table)).scalar_one())


def big_json(n: int) -> bytes:
    return b'{"name": "' + b"x" * n + b'"}'


def test_an_oversized_body_is_413_before_the_key_is_checked(
    small: TestClient, engine: Engine
) -> None:
    r = small.post(
        "/v1/requests", content=big_json(LIMIT), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 413, r.text
    assert r.json()["error"]["code"] == "payload_too_large"
    assert f"{LIMIT:,} bytes" in r.json()["error"]["message"]
    # Under the limit the same anonymous call gets as far as authentication.
    r = small.post(
        "/v1/requests", content=big_json(100), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 401
    assert count(engine, CapacityRequest) == 0


def test_a_chunked_body_is_cut_off_at_the_limit(
    small: TestClient, keys: Keys, engine: Engine
) -> None:
    sent = 0

    def chunks() -> Iterator[bytes]:
        nonlocal sent
        yield b'{"name": "'
        for _ in range(64):
            sent += 16 * 1024
            yield b"x" * (16 * 1024)
        yield b'"}'

    r = small.post(
        "/v1/requests",
        content=chunks(),
        headers={"Content-Type": "application/json", **bearer(keys.member)},
    )
    assert r.status_code == 413, r.text
    assert count(engine, CapacityRequest) == 0


def test_csv_imports_have_their_own_limit(small: TestClient, keys: Keys, engine: Engine) -> None:
    header = b"provider,gpu_model,gpus,region,starts_at,ends_at,rate_per_gpu_hour\n"
    body = header + b"x" * (2 * LIMIT)
    r = small.post(
        "/v1/reservations/import",
        content=body,
        headers={"Content-Type": "text/csv", **bearer(keys.admin)},
    )
    assert r.status_code == 413
    # A CSV between the JSON and the CSV limit is read (and here refused for its content).
    r = small.post(
        "/v1/reservations/import",
        content=header + b"x" * (LIMIT + 10),
        headers={"Content-Type": "text/csv", **bearer(keys.admin)},
    )
    assert r.status_code == 422, r.text
    assert count(engine, Reservation) == 0


@pytest.mark.parametrize(
    ("path", "body", "ctype"),
    [
        ("/v1/requests", b'{"name": "a\\u0000b", "gpu_models": ["H100"]}', "application/json"),
        ("/v1/subscriptions", b'{"name": "x\\u0000", "filter": {}}', "application/json"),
    ],
)
def test_a_nul_anywhere_in_a_body_is_422_and_nothing_is_written(
    small: TestClient, keys: Keys, engine: Engine, path: str, body: bytes, ctype: str
) -> None:
    r = small.post(path, content=body, headers={"Content-Type": ctype, **bearer(keys.admin)})
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_request"
    assert "NUL" in r.json()["error"]["message"]
    assert r.json()["error"]["details"][0]["field"] == "name"
    assert count(engine, CapacityRequest) == 0 and count(engine, Reservation) == 0


def test_a_nul_escape_split_across_chunks_is_found(small: TestClient, keys: Keys) -> None:
    def chunks() -> Iterator[bytes]:
        yield b'{"name": "a\\u00'
        yield b'00b", "gpu_models": ["H100"], "gpus": 8, "duration_hours": 1}'

    r = small.post(
        "/v1/requests",
        content=chunks(),
        headers={"Content-Type": "application/json", **bearer(keys.member)},
    )
    assert r.status_code == 422, r.text
