"""`Idempotency-Key` on creating POSTs: a retried POST returns the first answer and creates
nothing; the same key with another body is refused; keys are per team; concurrent retries
over real HTTP create one object."""

from __future__ import annotations

from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import Engine, func, select

from broker.auth import Role, create_api_key
from broker.config import Settings
from broker.db import session_scope
from broker.models import AlertSubscription, CapacityRequest, Reservation
from tests.api.conftest import Clock, Keys, TestClient, bearer
from tests.api.test_reservations import COMMITMENT
from tests.integration.test_ledger import server as server
from workers.embedded import housekeeping

REQUEST = {"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24}


def count(engine: Engine, model: Any) -> int:
    with session_scope(engine) as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def post(client: TestClient, path: str, body: Any, key: str | None, api_key: str) -> Any:
    headers = bearer(api_key) | ({"Idempotency-Key": key} if key else {})
    return client.post(path, json=body, headers=headers)


@pytest.mark.parametrize(
    ("path", "body", "model"),
    [
        ("/v1/requests", REQUEST, CapacityRequest),
        ("/v1/reservations", COMMITMENT, Reservation),
        (
            "/v1/subscriptions",
            {
                "name": "x",
                "filter": {"gpu_models": ["H100"]},
                "channel": {
                    "type": "slack_webhook",
                    "url": "https://hooks.slack.com/services/a/b/c",
                },
            },
            AlertSubscription,
        ),
    ],
)
def test_a_retried_post_returns_the_first_answer(
    client: TestClient, keys: Keys, engine: Engine, path: str, body: Any, model: Any
) -> None:
    first = post(client, path, body, "retry-1", keys.member)
    assert first.status_code == 201, first.text
    again = post(client, path, body, "retry-1", keys.member)
    assert again.status_code == 201
    assert again.json() == first.json()
    assert again.headers["idempotent-replayed"] == "true"
    assert "idempotent-replayed" not in first.headers
    assert count(engine, model) == 1
    # Another key, or none, creates another.
    assert post(client, path, body, "retry-2", keys.member).json()["id"] != first.json()["id"]
    assert post(client, path, body, None, keys.member).status_code == 201
    assert count(engine, model) == 3
    # The same key with another body is refused, creating nothing.
    changed = dict(body, gpus=16) if "gpus" in body else dict(body, name="other")
    r = post(client, path, changed, "retry-1", keys.member)
    assert r.status_code == 422 and r.json()["error"]["code"] == "idempotency_key_reused"
    assert count(engine, model) == 3


def test_keys_are_per_team_and_failures_are_not_remembered(
    client: TestClient, keys: Keys, engine: Engine
) -> None:
    with session_scope(engine) as session:
        other = create_api_key(session, "gamma", Role.MEMBER).key
    a = post(client, "/v1/requests", REQUEST, "k", keys.member)
    b = post(client, "/v1/requests", REQUEST, "k", other)
    assert a.status_code == b.status_code == 201 and a.json()["id"] != b.json()["id"]
    bad = post(client, "/v1/requests", dict(REQUEST, gpus=0), "k2", keys.member)
    assert bad.status_code == 422
    good = post(client, "/v1/requests", dict(REQUEST, gpus=0), "k2", keys.member)
    assert good.status_code == 422  # ran again, not replayed
    assert "idempotent-replayed" not in good.headers
    r = client.post(
        "/v1/requests", json=REQUEST, headers=bearer(keys.member) | {"Idempotency-Key": "x" * 256}
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_idempotency_key"


@pytest.fixture
def member_key(engine: Engine) -> str:
    with session_scope(engine) as session:
        return create_api_key(session, "alpha", Role.MEMBER).key


def test_concurrent_retries_over_http_create_one_request(
    server: str,
    member_key: str,
    engine: Engine,
) -> None:
    headers = bearer(member_key) | {"Idempotency-Key": "storm"}

    def once(_: int) -> httpx.Response:
        with httpx.Client(base_url=server, timeout=60) as c:
            return c.post("/v1/requests", json=REQUEST, headers=headers)

    with ThreadPoolExecutor(max_workers=10) as pool:
        answers = list(pool.map(once, range(10)))
    statuses = Counter(r.status_code for r in answers)
    assert set(statuses) <= {201, 409}, statuses
    ids = {r.json()["id"] for r in answers if r.status_code == 201}
    assert len(ids) == 1 and statuses[201] >= 1
    for r in answers:
        if r.status_code == 409:
            assert r.json()["error"]["code"] == "idempotency_key_in_progress"
            assert r.headers["retry-after"] == "1"
    assert count(engine, CapacityRequest) == 1


def test_keys_are_forgotten_after_the_ttl(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock, tmp_path: Path
) -> None:
    first = post(client, "/v1/requests", REQUEST, "old", keys.member)
    assert first.status_code == 201
    # The housekeeping of `broker serve` (the same call as the scheduler's sweep task).
    settings = Settings(data_dir=tmp_path, idempotency_ttl_hours=24)
    clock.advance(hours=23)
    housekeeping(engine, settings, clock)
    assert post(client, "/v1/requests", REQUEST, "old", keys.member).json() == first.json()
    clock.advance(hours=2)
    housekeeping(engine, settings, clock)
    again = post(client, "/v1/requests", REQUEST, "old", keys.member)
    assert again.status_code == 201 and again.json()["id"] != first.json()["id"]
