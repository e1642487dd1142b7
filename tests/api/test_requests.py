"""`/v1/requests` over HTTP (the ASGI app on SQLite and PostgreSQL): create, read, patch,
cancel, recommendations on the bundled real market, bad input, team isolation."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from broker.auth import Role, create_api_key
from broker.db import session_scope
from broker.models import CapacityRequest
from broker.polling import ReplaySummary
from tests.api.conftest import Clock, Keys, TestClient, bearer

EU_H100: dict[str, Any] = {
    "name": "eu training",
    "gpu_models": ["H100"],
    "gpus": 16,
    "gpus_per_node": 8,
    "duration_hours": 336,
    "residency": {"allow": ["EU"]},
}


def count_requests(engine: Engine) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(CapacityRequest)).scalar_one())


@pytest.fixture
def beta_member(engine: Engine, clock: Clock) -> str:
    with session_scope(engine) as session:
        return create_api_key(session, "beta", Role.MEMBER, clock=clock).key


def test_create_read_list_and_recommend(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    r = client.post("/v1/requests", json=EU_H100, headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    created = r.json()
    rid = created["id"]
    assert created["state"] == "matched" and created["best_option"]["offers"]
    assert set(created["resolved_gpu_models"]) >= {"H100-SXM", "H100-PCIe"}
    assert client.get(f"/v1/requests/{rid}", headers=bearer(keys.admin)).json() == created

    rec = client.get(f"/v1/requests/{rid}/recommendations", headers=bearer(keys.member))
    assert rec.status_code == 200, rec.text
    body = rec.json()
    assert body["options"] and body["options"][0]["rank"] == 1
    best = body["options"][0]
    assert [o["key"] for o in best["offers"]] == [
        o["key"] for o in created["best_option"]["offers"]
    ]
    for option in body["options"]:
        assert option["jurisdiction"] == "EU" and option["gpus"] >= 16
        assert option["explanation"].startswith(f"Rank {option['rank']} of ")
        for part in option["offers"]:
            offer = client.get(f"/v1/offers/{part['key']}", headers=bearer(keys.member)).json()
            assert offer["jurisdiction"] == "EU"
            assert offer["gpu_model"] in created["resolved_gpu_models"]
    reasons = {g["reason"] for g in body["excluded"]}
    assert "residency" in reasons and reasons <= {
        "residency",
        "gpu_model",
        "price",
        "count",
        "market",
        "starts_too_late",
        "stale",
        "unavailable",
        "duration",
    }
    us = [g for g in body["excluded"] if g["reason"] == "residency" and "US" in g["message"]]
    assert us and all("not in allowed [EU]" in g["message"] for g in us)

    listed = client.get("/v1/requests", headers=bearer(keys.member)).json()
    assert [x["id"] for x in listed["data"]] == [rid] and listed["next_cursor"] is None


def test_team_isolation(
    client: TestClient, keys: Keys, beta_member: str, market: ReplaySummary
) -> None:
    rid = client.post("/v1/requests", json=EU_H100, headers=bearer(keys.member)).json()["id"]
    other = bearer(beta_member)
    for method, path in [
        ("GET", f"/v1/requests/{rid}"),
        ("PATCH", f"/v1/requests/{rid}"),
        ("DELETE", f"/v1/requests/{rid}"),
        ("GET", f"/v1/requests/{rid}/recommendations"),
        ("GET", f"/v1/requests/{rid}/events"),
    ]:
        r = client.request(
            method, path, headers=other, json={"gpus": 8} if method == "PATCH" else None
        )
        assert r.status_code == 404, (method, path, r.text)
        assert r.json()["error"]["code"] == "not_found"
    assert client.get("/v1/requests", headers=other).json()["data"] == []
    # Untouched by the attempts.
    mine = client.get(f"/v1/requests/{rid}", headers=bearer(keys.member)).json()
    assert mine["state"] == "matched" and mine["gpus"] == 16


def test_roles_and_auth(client: TestClient, keys: Keys, engine: Engine) -> None:
    assert client.post("/v1/requests", json=EU_H100).status_code == 401
    r = client.post("/v1/requests", json=EU_H100, headers=bearer(keys.viewer))
    assert r.status_code == 403 and r.json()["error"]["code"] == "forbidden"
    assert count_requests(engine) == 0


@pytest.mark.parametrize(
    ("change", "field", "words"),
    [
        ({"gpu_models": ["H1000"]}, "gpu_models", "Did you mean"),
        ({"gpus": 0}, "gpus", "greater than 0"),
        ({"gpus": -8}, "gpus", "greater than 0"),
        ({"max_price_per_gpu_hour": "-1"}, "max_price_per_gpu_hour", "greater than or equal"),
        ({"residency": {"allow": ["XX"]}}, "residency.allow", "unknown jurisdiction"),
        ({"residency": {"deny": ["mars-north-1"]}}, "residency.deny", "unknown region"),
        (
            {"not_before": "2026-07-01T00:00:00Z", "needed_by": "2026-06-01T00:00:00Z"},
            "body",
            "needed_by must be after not_before",
        ),
        ({"needed_by": "2026-07-01T00:00:00"}, "needed_by", "timezone"),
        ({"gpus": 12}, "body", "multiple of gpus_per_node"),
        ({"markets": ["black_market"]}, "markets.0", "on_demand"),
        ({"weights": {"time_to_power": 0, "cost": 0}}, "weights", "cannot both be 0"),
        ({"surprise": 1}, "surprise", "Extra inputs"),
        ({"gpu_models": ["H100:0"]}, "gpu_models", "Bad GPU count"),
        ({"residency": {"allow": ["EU"] * 101}}, "residency.allow", "at most 100"),
        ({"residency": {"deny": ["x" * 129]}}, "residency.deny.0", "at most 128"),
        ({"gpu_models": ["H100"] * 21}, "gpu_models", "at most 20"),
        ({"markets": ["spot"] * 9}, "markets", "at most 8"),
        ({"needed_by": "2020-01-01T00:00:00Z"}, "needed_by", "already past"),
    ],
)
def test_bad_input_is_422_naming_the_field_and_writes_nothing(
    client: TestClient,
    keys: Keys,
    engine: Engine,
    change: dict[str, Any],
    field: str,
    words: str,
) -> None:
    r = client.post("/v1/requests", json=EU_H100 | change, headers=bearer(keys.member))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert any(d["field"] == field or d["field"].startswith(field) for d in err["details"]), err
    assert words in err["message"]
    assert count_requests(engine) == 0


def test_body_that_is_not_json_is_400(client: TestClient, keys: Keys, engine: Engine) -> None:
    r = client.post(
        "/v1/requests",
        content=b"{gpus: 8",
        headers=bearer(keys.member) | {"Content-Type": "application/json"},
    )
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_json"
    assert count_requests(engine) == 0


def test_patch_rescores_and_states_move_one_way(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    h = bearer(keys.member)
    rid = client.post("/v1/requests", json=EU_H100, headers=h).json()["id"]
    # A cap below every EU H100 price: no option any more, state back to open.
    r = client.patch(f"/v1/requests/{rid}", json={"max_price_per_gpu_hour": "0.5"}, headers=h)
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "open" and r.json()["best_option"] is None
    bad = client.patch(f"/v1/requests/{rid}", json={"gpus": 0}, headers=h)
    assert bad.status_code == 422 and bad.json()["error"]["details"][0]["field"] == "gpus"
    assert client.get(f"/v1/requests/{rid}", headers=h).json()["max_price_per_gpu_hour"] == "0.5"
    wrong = client.patch(f"/v1/requests/{rid}", json={"state": "matched"}, headers=h)
    assert wrong.status_code == 422 and wrong.json()["error"]["code"] == "invalid_state"
    done = client.patch(f"/v1/requests/{rid}", json={"state": "fulfilled"}, headers=h)
    assert done.status_code == 200 and done.json()["state"] == "fulfilled"
    closed = client.patch(f"/v1/requests/{rid}", json={"gpus": 8}, headers=h)
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "request_closed"
    events = client.get(f"/v1/requests/{rid}/events", headers=h).json()["data"]
    assert [(e["type"], e["after"]) for e in events if e["type"] == "state_changed"] == [
        ("state_changed", {"state": "open"}),
        ("state_changed", {"state": "fulfilled"}),
    ]
    assert [e["type"] for e in events].count("best_option_changed") == 1


def test_delete_cancels_and_is_idempotent(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    h = bearer(keys.member)
    rid = client.post("/v1/requests", json=EU_H100, headers=h).json()["id"]
    for _ in range(2):
        r = client.delete(f"/v1/requests/{rid}", headers=h)
        assert r.status_code == 200 and r.json()["state"] == "cancelled"
    cancelled = client.get("/v1/requests?state=cancelled", headers=h).json()["data"]
    assert [x["id"] for x in cancelled] == [rid]
    assert client.get("/v1/requests?state=open", headers=h).json()["data"] == []


def test_list_pages_walk_every_request_once(client: TestClient, keys: Keys) -> None:
    h = bearer(keys.member)
    ids = {
        client.post("/v1/requests", json=EU_H100 | {"name": f"r{i}"}, headers=h).json()["id"]
        for i in range(5)
    }
    seen: list[int] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 2} | ({"cursor": cursor} if cursor else {})
        page = client.get("/v1/requests", params=params, headers=h).json()
        seen += [x["id"] for x in page["data"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(seen) == sorted(ids) and len(seen) == 5
    bad = client.get("/v1/requests", params={"cursor": "nonsense"}, headers=h)
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"


def test_model_count_and_exclude_anomalies_shape_the_options(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    body = EU_H100 | {"gpu_models": ["H100:8"], "exclude_anomalies": True}
    r = client.post("/v1/requests", json=body, headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    assert r.json()["gpu_models"] == ["H100:8"] and r.json()["exclude_anomalies"] is True
    rid = r.json()["id"]
    rec = client.get(f"/v1/requests/{rid}/recommendations", headers=bearer(keys.member)).json()
    offers = {
        o["key"]: o
        for o in client.get(
            "/v1/offers", params={"gpu": "H100", "limit": 500}, headers=bearer(keys.member)
        ).json()["data"]
    }
    for option in rec["options"]:
        for part in option["offers"]:
            assert offers[part["key"]]["gpu_count"] >= 8
            assert offers[part["key"]]["anomalies"] == []
