"""Tenant isolation, as a matrix over every route that takes a team object's id (found in
the OpenAPI schema, so a new route cannot slip past): another team's key → 404 (the object's
existence is not disclosed), a viewer writing → 403, no key → 401, a revoked key → 401; and
nothing changed by any of them. The same for ids carried outside the path (a body field, a
CSV column, a query parameter, a list cursor): another team's id is refused exactly like a
made-up one."""

from __future__ import annotations

from typing import Any

import pytest
from sqlalchemy import Engine, text

from broker import ledger
from broker.auth import Role, create_api_key, revoke_api_key
from broker.db import session_scope
from tests.api.conftest import Keys, TestClient, bearer
from tests.api.test_reservations import COMMITMENT, post_csv

ID_PARAMS = {"request_id", "reservation_id", "subscription_id"}
WEBHOOK = "https://hooks.slack.com/services/T0/B0/isolation"

#: A valid body per write route, so a refusal is about who asks, never about the body.
BODIES: dict[tuple[str, str], Any] = {
    ("patch", "/v1/requests/{request_id}"): {"name": "renamed"},
    ("delete", "/v1/requests/{request_id}"): None,
    ("post", "/v1/requests/{request_id}/reserve"): {"offers": [{"key": "x", "instances": 1}]},
    ("patch", "/v1/reservations/{reservation_id}"): {"reason": "test", "notes": "changed"},
    ("post", "/v1/reservations/{reservation_id}/usage"): {
        "period_start": "2026-05-01T00:00:00Z",
        "period_end": "2026-05-02T00:00:00Z",
        "gpu_hours": "10",
    },
    ("patch", "/v1/subscriptions/{subscription_id}"): {"name": "renamed"},
    ("delete", "/v1/subscriptions/{subscription_id}"): None,
    ("post", "/v1/subscriptions/{subscription_id}/test"): None,
}


def id_routes(client: TestClient) -> list[tuple[str, str]]:
    paths = client.get("/openapi.json").json()["paths"]
    out = []
    for path, ops in paths.items():
        params = {p.strip("{}") for p in path.split("/") if p.startswith("{")}
        if params & ID_PARAMS:
            out += [
                (method, path) for method in ops if method in ("get", "post", "patch", "delete")
            ]
    return sorted(out)


def snapshot(engine: Engine) -> dict[str, Any]:
    with engine.connect() as conn:
        return {
            t: conn.execute(text(f"SELECT * FROM {t} ORDER BY id")).all()
            for t in (
                "capacity_requests",
                "request_events",
                "reservations",
                "ledger_entries",
                "usage_samples",
                "alert_subscriptions",
                "alert_deliveries",
            )
        }


@pytest.fixture
def more_keys(engine: Engine) -> dict[str, str]:
    with session_scope(engine) as session:
        beta_member = create_api_key(session, "beta", Role.MEMBER).key
        alpha_viewer = create_api_key(session, "alpha", Role.VIEWER).key
        revoked = create_api_key(session, "alpha", Role.ADMIN)
    with session_scope(engine) as session:
        assert revoke_api_key(session, revoked.prefix)[1]
    return {"beta_member": beta_member, "alpha_viewer": alpha_viewer, "revoked": revoked.key}


def test_every_id_route_refuses_other_teams_viewers_and_missing_or_revoked_keys(
    client: TestClient, keys: Keys, more_keys: dict[str, str], engine: Engine
) -> None:
    owner = bearer(keys.member)
    ids = {
        "request_id": client.post(
            "/v1/requests",
            json={"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24},
            headers=owner,
        ).json()["id"],
        "reservation_id": client.post("/v1/reservations", json=COMMITMENT, headers=owner).json()[
            "id"
        ],
        "subscription_id": client.post(
            "/v1/subscriptions",
            json={
                "name": "s",
                "filter": {"gpu_models": ["H100"]},
                "channel": {"type": "slack_webhook", "url": WEBHOOK},
            },
            headers=owner,
        ).json()["id"],
    }
    routes = id_routes(client)
    writes = [(m, p) for m, p in routes if m != "get"]
    assert set(writes) == set(BODIES), "a write route without a body in BODIES"
    assert len(routes) >= 15
    before = snapshot(engine)
    for method, template in routes:
        url = template.format(**ids)
        body = BODIES.get((method, template))

        def call(
            headers: dict[str, str], url: str = url, method: str = method, body: Any = body
        ) -> Any:
            return client.request(method.upper(), url, json=body, headers=headers)

        where = f"{method.upper()} {template}"
        r = call(bearer(more_keys["beta_member"]))
        assert r.status_code == 404, (where, r.status_code, r.text)
        assert r.json()["error"]["code"] == "not_found"
        assert str(ids.get(template.split("{")[1].split("}")[0])) in r.json()["error"]["message"]
        if method != "get":
            r = call(bearer(more_keys["alpha_viewer"]))
            assert r.status_code == 403, (where, r.status_code, r.text)
            assert r.json()["error"]["code"] == "forbidden"
        else:
            assert call(bearer(more_keys["alpha_viewer"])).status_code == 200, where
        r = call({})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated", where
        r = call(bearer(more_keys["revoked"]))
        assert r.status_code == 401, where
        # A made-up id is indistinguishable from another team's.
        other = template.format(**{k: 10**9 for k in ids})
        r = client.request(method.upper(), other, json=body, headers=owner)
        assert r.status_code == 404, where
    assert snapshot(engine) == before  # none of the refused calls changed anything


def test_every_write_refuses_a_viewer_and_a_missing_key(
    client: TestClient, keys: Keys, engine: Engine
) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    writes = [
        (method, path)
        for path, ops in paths.items()
        for method in ops
        if method in ("post", "patch", "delete", "put") and path.startswith("/v1/")
    ]
    assert len(writes) >= 12
    before = snapshot(engine)
    for method, template in writes:
        url = template.format(
            request_id=1, reservation_id=1, subscription_id=1, name="replay", key="x"
        )
        r = client.request(method.upper(), url, json={}, headers=bearer(keys.viewer))
        assert r.status_code == 403, (method, template, r.status_code, r.text)
        assert r.json()["error"]["details"]["required_role"] in ("member", "admin")
        assert client.request(method.upper(), url, json={}).status_code == 401
    assert snapshot(engine) == before


#: Every place outside the path where a request names a team object by id: (method, path,
#: where, field). Found in the OpenAPI schema (JSON body fields and query parameters) and in
#: the CSV imports' columns, so a new one fails `test_ids_outside_the_path_are_all_covered`
#: until the test below covers it.
OUTSIDE_PATH: set[tuple[str, str, str, str]] = {
    ("post", "/v1/subscriptions", "body", "request_id"),
    ("post", "/v1/reservations/usage/import", "csv", "reservation_id"),
}


def ids_outside_the_path(client: TestClient) -> set[tuple[str, str, str, str]]:
    schema = client.get("/openapi.json").json()
    components = schema["components"]["schemas"]
    found: set[tuple[str, str, str, str]] = set()
    for path, ops in schema["paths"].items():
        for method, op in ops.items():
            for param in op.get("parameters", []):
                if param["in"] == "query" and param["name"] in ID_PARAMS:
                    found.add((method, path, "query", param["name"]))
            for content in op.get("requestBody", {}).get("content", {}).values():
                ref = content.get("schema", {}).get("$ref", "")
                props = components.get(ref.rsplit("/", 1)[-1], {}).get("properties", {})
                found |= {(method, path, "body", f) for f in props if f in ID_PARAMS}
    for path, columns in (
        ("/v1/reservations/import", ledger.COMMITMENT_COLUMNS),
        ("/v1/reservations/usage/import", ledger.USAGE_COLUMNS),
    ):
        found |= {("post", path, "csv", c) for c in columns if c in ID_PARAMS}
    return found


def test_ids_outside_the_path_are_all_covered(client: TestClient) -> None:
    assert ids_outside_the_path(client) == OUTSIDE_PATH


def test_another_teams_id_in_a_body_a_csv_or_a_cursor_is_refused(
    client: TestClient, keys: Keys, more_keys: dict[str, str], engine: Engine
) -> None:
    owner, intruder = bearer(keys.member), bearer(more_keys["beta_member"])
    request_ids = [
        client.post(
            "/v1/requests",
            json={"name": f"alpha {i}", "gpu_models": ["H100"], "gpus": 8, "duration_hours": 24},
            headers=owner,
        ).json()["id"]
        for i in range(2)
    ]
    reservation_id = client.post("/v1/reservations", json=COMMITMENT, headers=owner).json()["id"]
    before = snapshot(engine)

    # A request subscription may follow only a request of the caller's team.
    for request_id in (request_ids[0], 10**9):
        r = client.post(
            "/v1/subscriptions",
            json={
                "name": "follow",
                "request_id": request_id,
                "channel": {"type": "slack_webhook", "url": WEBHOOK},
            },
            headers=intruder,
        )
        assert r.status_code == 404, r.text
        err = r.json()["error"]
        assert err["code"] == "not_found" and str(request_id) in err["message"]
        assert err["message"] == f"no capacity request {request_id} in this team"

    # Usage may be imported only against the caller's reservations.
    for rid in (reservation_id, 10**9):
        csv_text = (
            "reservation_id,period_start,period_end,gpu_hours\n"
            f"{rid},2026-05-01T00:00:00Z,2026-05-02T00:00:00Z,10\n"
        )
        r = post_csv(client, more_keys["beta_member"], "/v1/reservations/usage/import", csv_text)
        assert r.status_code == 422, r.text
        [detail] = r.json()["error"]["details"]
        assert (detail["line"], detail["field"]) == (2, "reservation_id")
        assert detail["message"] == f"no reservation {rid} in this team"
    assert snapshot(engine) == before  # none of the refused calls changed anything

    # A cursor holds a position, not a team: another team's cursor lists the caller's rows.
    beta_request = client.post(
        "/v1/requests",
        json={"name": "beta", "gpu_models": ["H100"], "gpus": 8, "duration_hours": 24},
        headers=intruder,
    ).json()["id"]
    cursor = client.get("/v1/requests", params={"limit": 1}, headers=owner).json()["next_cursor"]
    assert cursor
    theirs = client.get("/v1/requests", params={"cursor": cursor}, headers=intruder)
    assert theirs.status_code == 200, theirs.text
    assert {r["id"] for r in theirs.json()["data"]} <= {beta_request}
    for listing in ("/v1/reservations", "/v1/subscriptions"):
        assert client.get(listing, headers=intruder).json()["data"] == [], listing
