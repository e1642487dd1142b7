"""Authentication, roles, the one error shape, probes and the OpenAPI document."""

from __future__ import annotations

import logging
from typing import Any

import pytest
from fastapi import FastAPI
from pydantic import BaseModel, Field
from sqlalchemy import Engine, create_engine, select
from sqlmodel import Session

from broker import db
from broker.api.app import create_app
from broker.api.deps import CurrentPrincipal
from broker.auth import (
    KEY_PREFIX,
    AuthError,
    Role,
    create_api_key,
    get_or_create_team,
    hash_key,
    list_api_keys,
    revoke_api_key,
    verify_key,
)
from broker.config import Settings
from broker.db import session_scope
from broker.models import ApiKey, Team
from tests.api.conftest import Clock, Keys, TestClient, bearer
from tests.fakes.http import closed_port


def assert_error(resp: Any, status: int, code: str) -> dict[str, Any]:
    """The response is `status` with the one error shape and `code`; returns the error."""
    assert resp.status_code == status, resp.text
    body = resp.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message", "details"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    return dict(body["error"])


# ------------------------------------------------------------------------ broker.auth


def test_keys_are_stored_hashed_and_verified_by_hash(engine: Engine, clock: Clock) -> None:
    with session_scope(engine) as session:
        created = create_api_key(session, "  alpha ", "viewer", name="ci", clock=clock)
        again = create_api_key(session, "alpha", Role.ADMIN, clock=clock)
    assert created.key.startswith(KEY_PREFIX) and len(created.key) >= 40
    assert created.team == "alpha" and again.team_id == created.team_id  # get-or-create
    with Session(engine) as session:
        rows = session.execute(select(ApiKey)).scalars().all()
        teams = session.execute(select(Team)).scalars().all()
    assert [t.name for t in teams] == ["alpha"]
    assert {r.key_hash for r in rows} == {hash_key(created.key), hash_key(again.key)}
    assert all(created.key not in (r.key_hash, r.prefix) for r in rows)
    assert rows[0].prefix == created.key[: len(rows[0].prefix)] == created.prefix

    with session_scope(engine) as session:
        p = verify_key(session, created.key, clock=clock)
        assert p is not None and (p.team, p.role) == ("alpha", Role.VIEWER)
        # Same prefix, different secret: no match (hash compared, not prefix).
        assert verify_key(session, created.key[:-1] + "x", clock=clock) is None
        assert verify_key(session, "not-a-key", clock=clock) is None
        assert verify_key(session, KEY_PREFIX, clock=clock) is None
        listed = list_api_keys(session, "alpha")
    assert [r["prefix"] for r in listed] == [created.prefix, again.prefix]
    assert all(created.key not in str(r) for r in listed)


def test_last_used_is_stamped_at_most_once_a_minute(engine: Engine, clock: Clock) -> None:
    with session_scope(engine) as session:
        created = create_api_key(session, "alpha", "member", clock=clock)

    def last_used() -> Any:
        with Session(engine) as session:
            return session.execute(select(ApiKey.last_used_at)).scalar_one()  # type: ignore[call-overload]

    with session_scope(engine) as session:
        verify_key(session, created.key, clock=clock)
    assert last_used() == clock()
    first = clock()
    clock.advance(seconds=30)
    with session_scope(engine) as session:
        verify_key(session, created.key, clock=clock)
    assert last_used() == first
    clock.advance(seconds=31)
    with session_scope(engine) as session:
        verify_key(session, created.key, clock=clock)
    assert last_used() == clock()


def test_roles_are_ordered_and_bad_input_is_refused(engine: Engine, clock: Clock) -> None:
    assert Role.ADMIN.allows(Role.MEMBER) and Role.MEMBER.allows(Role.VIEWER)
    assert not Role.VIEWER.allows(Role.MEMBER) and not Role.MEMBER.allows(Role.ADMIN)
    with session_scope(engine) as session:
        with pytest.raises(AuthError, match="role"):
            create_api_key(session, "alpha", "owner", clock=clock)
        with pytest.raises(AuthError, match="empty"):
            get_or_create_team(session, "   ", clock=clock)
        with pytest.raises(AuthError, match="no API key"):
            revoke_api_key(session, "gpb_nothere", clock=clock)


# ------------------------------------------------------------------ authentication


def test_v1_needs_a_valid_unrevoked_key(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock
) -> None:
    for headers in ({}, {"Authorization": "Basic dXNlcjpwdw=="}, bearer("gpb_wrong"), bearer("")):
        resp = client.get("/v1/offers", headers=headers)
        assert_error(resp, 401, "unauthenticated")
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    assert client.get("/v1/offers", headers=bearer(keys.viewer)).status_code == 200

    with session_scope(engine) as session:
        prefix = next(r["prefix"] for r in list_api_keys(session, "beta"))
        _, revoked_now = revoke_api_key(session, prefix, clock=clock)
        assert revoked_now
        assert revoke_api_key(session, prefix, clock=clock)[1] is False
    err = assert_error(
        client.get("/v1/offers", headers=bearer(keys.viewer)), 401, "unauthenticated"
    )
    assert "revoked" in err["message"]
    # Probes need no key.
    assert client.get("/healthz").json() == {"status": "ok"}


def test_poll_needs_admin(client: TestClient, keys: Keys) -> None:
    for key, role in ((keys.viewer, "viewer"), (keys.member, "member")):
        err = assert_error(
            client.post("/v1/providers/replay/poll", headers=bearer(key)), 403, "forbidden"
        )
        assert "admin" in err["message"] and err["details"] == {
            "required_role": "admin",
            "role": role,
        }
    resp = client.post("/v1/providers/replay/poll", headers=bearer(keys.admin))
    assert resp.status_code == 200, resp.text
    assert resp.json()["status"] == "ok" and resp.json()["offers"] > 1000
    # Market endpoints are readable by every role.
    for path in ("/v1/offers", "/v1/events", "/v1/providers"):
        assert client.get(path, headers=bearer(keys.viewer)).status_code == 200


def test_keys_never_reach_logs_or_responses(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = keys.admin[:-4] + "AAAA"
    bodies = []
    for key in (keys.admin, keys.viewer, wrong):
        for method, path in (
            ("GET", "/v1/offers?limit=1"),
            ("GET", "/v1/providers"),
            ("GET", "/v1/events?types=nope"),
            ("POST", "/v1/providers/replay/poll"),
            ("GET", "/v1/offers/nope"),
        ):
            bodies.append(client.request(method, path, headers=bearer(key)).text)
    with session_scope(engine) as session:
        prefix = list_api_keys(session, "beta")[0]["prefix"]
        revoke_api_key(session, prefix, clock=clock)
    bodies.append(client.get("/v1/offers", headers=bearer(keys.viewer)).text)
    for key in (keys.admin, keys.viewer, keys.member, wrong):
        assert key not in caplog.text
        assert key[len(prefix) :] not in caplog.text
        assert not any(key in b for b in bodies)


# ------------------------------------------------------------------ the error shape


class EchoBody(BaseModel):
    name: str
    count: int = Field(ge=1)


def _with_echo(app: FastAPI) -> FastAPI:
    """A route with a JSON body, to check the body errors' mapping."""

    @app.post("/v1/echo")
    def echo(body: EchoBody, principal: CurrentPrincipal) -> dict[str, Any]:
        return {"name": body.name, "team": principal.team}

    return app


def test_body_errors_share_the_shape(app: FastAPI, keys: Keys) -> None:
    client = TestClient(_with_echo(app))
    h = {**bearer(keys.member), "Content-Type": "application/json"}
    assert client.post("/v1/echo", headers=h, content='{"name": "x", "count": 2}').json() == {
        "name": "x",
        "team": "alpha",
    }
    err = assert_error(client.post("/v1/echo", headers=h, content='{"name": '), 400, "invalid_json")
    assert "JSON" in err["message"]
    text_plain = {**bearer(keys.member), "Content-Type": "text/plain"}
    assert_error(client.post("/v1/echo", headers=text_plain, content="hello"), 400, "invalid_json")
    bad_utf8 = client.post("/v1/echo", headers=h, content=b'{"name": "\xff\xfe"}')
    assert bad_utf8.status_code in (400, 422) and "error" in bad_utf8.json()

    err = assert_error(
        client.post("/v1/echo", headers=h, content='{"count": 0}'), 422, "invalid_request"
    )
    by_loc = {d["loc"]: d for d in err["details"]}
    assert set(by_loc) == {"body.name", "body.count"}
    assert by_loc["body.count"]["field"] == "count" and by_loc["body.count"]["message"]
    assert "name" in err["message"] and "count" in err["message"]
    # Auth is checked on body routes too.
    assert_error(client.post("/v1/echo", content="{}"), 401, "unauthenticated")


def test_query_errors_share_the_shape(client: TestClient, keys: Keys) -> None:
    h = bearer(keys.viewer)
    for bad in ("0", "501", "ten", "-1"):
        err = assert_error(client.get(f"/v1/offers?limit={bad}", headers=h), 422, "invalid_request")
        assert err["details"][0]["loc"] == "query.limit" and "limit" in err["message"]
    err = assert_error(client.get("/v1/offers?gpu=H10", headers=h), 422, "invalid_request")
    assert err["details"][0]["field"] == "gpu"
    assert "Did you mean" in err["message"] and "H100" in err["message"]
    assert "H100-SXM" in err["details"][0]["known_models"]
    err = assert_error(client.get("/v1/offers?market=cheap", headers=h), 422, "invalid_request")
    assert "spot" in err["message"]
    err = assert_error(
        client.get("/v1/offers?max_price_per_gpu_hour=NaN&min_gpus=x", headers=h),
        422,
        "invalid_request",
    )
    assert {d["field"] for d in err["details"]} == {"max_price_per_gpu_hour", "min_gpus"}
    assert_error(client.get("/v1/offers?cursor=bm9wZQ", headers=h), 400, "invalid_cursor")
    assert_error(client.get("/nowhere"), 404, "not_found")
    assert_error(client.get("/v1/offers/aws/nowhere/x/spot", headers=h), 404, "not_found")
    assert_error(client.delete("/v1/offers", headers=h), 405, "method_not_allowed")


NASTY = [
    "x" * 5000,
    "%00",
    "a%00b",
    "%ff%fe",
    "🚀",
    "' OR 1=1 --",
    "../../etc/passwd",
    "-1",
    "1e999",
    "9" * 40,
    "NaN",
    "",
    ",,,",
]


def test_no_500_on_hostile_input(client: TestClient, keys: Keys) -> None:
    h = bearer(keys.admin)
    forged = "WyJvZmZlcnMiLCIxZTk5OTk5OTk5IiwieCJd"  # ["offers","1e99999999","x"]
    paths = []
    for v in NASTY:
        paths += [
            f"/v1/offers?gpu={v}",
            f"/v1/offers?provider={v}&region={v}&country={v}&jurisdiction={v}",
            f"/v1/offers?min_gpus={v}&max_price_per_gpu_hour={v}",
            f"/v1/offers?cursor={v}",
            f"/v1/offers/{v}",
            f"/v1/offers/{v}/history?cursor={v}",
            f"/v1/events?after={v}",
            f"/v1/events?types={v}&cursor={v}",
            f"/v1/providers?cursor={v}",
        ]
    paths += [f"/v1/offers?cursor={forged}", "/v1/events?after=9223372036854775808"]
    for path in paths:
        resp = client.get(path, headers=h)
        assert resp.status_code < 500, (path, resp.text)
        if resp.status_code >= 400:
            assert_error(resp, resp.status_code, resp.json()["error"]["code"])
    for v in ("nope", "x" * 300, "a%00b"):
        resp = client.post(f"/v1/providers/{v}/poll", headers=h)
        assert 400 <= resp.status_code < 500, resp.text


# ------------------------------------------------------------------ probes, OpenAPI


def test_readyz_checks_the_database_and_its_revision(
    client: TestClient, tmp_path: Any, settings: Settings
) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200 and ready.json()["status"] == "ready"
    assert ready.json()["revision"] == ready.json()["head"]

    unmigrated = db.make_engine(url=f"sqlite:///{tmp_path / 'empty.db'}")
    c = TestClient(create_app(settings, unmigrated))
    assert c.get("/healthz").status_code == 200
    err = assert_error(c.get("/readyz"), 503, "not_ready")
    assert "broker db upgrade" in err["message"]

    unreachable = create_engine(f"sqlite:///{tmp_path / 'no' / 'such' / 'dir.db'}")
    err = assert_error(
        TestClient(create_app(settings, unreachable)).get("/readyz"), 503, "not_ready"
    )
    assert "unreachable" in err["message"]


def test_a_database_out_of_reach_is_503_with_retry_after(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    """PostgreSQL down (nothing listens on its port): an API read answers 503 with
    Retry-After in the one error shape, not 500, and the driver's text stays in no
    response."""
    url = f"postgresql+psycopg://broker:hunter2-pw@127.0.0.1:{closed_port()}/broker"
    app = create_app(settings, db.make_engine(url=url))
    with TestClient(app, raise_server_exceptions=False) as c:
        for path in ("/v1/offers", "/v1/providers", "/v1/reservations"):
            resp = c.get(path, headers=bearer("gpb_" + "x" * 40))
            err = assert_error(resp, 503, "database_unavailable")
            assert int(resp.headers["Retry-After"]) > 0
            assert "hunter2" not in resp.text and "127.0.0.1" not in resp.text
        assert_error(c.get("/readyz"), 503, "not_ready")
    assert "retry" in err["message"]
    assert "api.database_unavailable" in caplog.text and "hunter2" not in caplog.text


def test_openapi_lists_the_routes(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["info"]["title"] == "GPU capacity broker"
    paths = spec["paths"]
    for path in (
        "/healthz",
        "/readyz",
        "/v1/offers",
        "/v1/offers/{key}",
        "/v1/offers/{key}/history",
        "/v1/events",
        "/v1/providers",
        "/v1/providers/{name}/poll",
    ):
        assert path in paths, sorted(paths)
    op_ids = [op["operationId"] for item in paths.values() for op in item.values()]
    assert len(op_ids) == len(set(op_ids))
    assert paths["/v1/events"]["get"]["operationId"] == "events-list_events"
    assert paths["/v1/offers"]["get"]["security"] == [{"ApiKey": []}]
    assert spec["components"]["securitySchemes"]["ApiKey"]["scheme"] == "bearer"
    assert "/docs" not in paths and client.get("/docs").status_code == 200
