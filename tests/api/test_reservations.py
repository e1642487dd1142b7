"""`/v1/reservations` and `POST /v1/requests/{id}/reserve` over HTTP (the ASGI app on SQLite
and PostgreSQL): booking from offers without double booking, external commitments, CSV
imports (all or nothing), the ledger history of every change, usage, expiry, bad input and
team isolation."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, select
from sqlalchemy.exc import IntegrityError

from broker.auth import Role, create_api_key
from broker.db import session_scope
from broker.domain import Availability, Market, Offer, PollResult, Scope
from broker.ledger import expire_reservations
from broker.models import LedgerEntry, Reservation, UsageSample
from broker.offers import ingest_poll
from broker.polling import ReplaySummary
from tests.api.conftest import T0, Clock, Keys, TestClient, bearer

H = timedelta(hours=1)

#: 3 instances of 8 H100 in Frankfurt: room for 24 GPUs.
ROOM3 = Offer(
    provider="aws",
    region="eu-central-1",
    instance_type="p5.48xlarge",
    market=Market.ON_DEMAND,
    gpu_model="H100-SXM",
    gpu_family="H100",
    gpu_count=Decimal(8),
    price_per_hour=Decimal("98.32"),
    country="DE",
    jurisdiction="EU",
    continent="Europe",
    availability=Availability.AVAILABLE,
    available_count=3,
)
#: A capacity block of 2 instances starting in two days, for 24 hours.
BLOCK = replace(
    ROOM3,
    market=Market.CAPACITY_BLOCK,
    price_per_hour=Decimal("31.464"),
    upfront_fee=Decimal("1510.272"),
    available_count=2,
    earliest_start=T0 + timedelta(days=2),
    min_duration_hours=24,
    max_duration_hours=24,
    offering_id="cb-0123456789abcdef0",
)
#: An A100 offer in Frankfurt and an H100 offer in Virginia (for mismatches).
A100_DE = replace(
    ROOM3,
    instance_type="p4de.24xlarge",
    gpu_model="A100-80GB",
    gpu_family="A100",
    price_per_hour=Decimal("40.96"),
    continent=None,
    available_count=5,
)
H100_US = replace(
    ROOM3, region="us-east-1", country="US", jurisdiction="US", continent=None, available_count=5
)

EU_H100_REQUEST: dict[str, Any] = {
    "name": "eu training",
    "gpu_models": ["H100"],
    "gpus": 16,
    "gpus_per_node": 8,
    "duration_hours": 336,
    "residency": {"allow": ["EU"]},
}

COMMITMENT: dict[str, Any] = {
    "provider": "gcp",
    "gpu_model": "H100",
    "gpus": 64,
    "region": "europe-west4",
    "starts_at": "2026-05-01T00:00:00Z",
    "ends_at": "2026-11-01T00:00:00Z",
    "rate_per_gpu_hour": "3.95",
    "upfront_fee_usd": "1000",
    "kind": "contract",
    "counterparty": "Google Cloud EMEA",
    "notes": "signed 2026-04-20",
}


def ingest(engine: Engine, offers: Sequence[Offer], at: datetime, provider: str = "aws") -> None:
    """One successful poll of `provider` that saw exactly `offers`."""
    result = PollResult(
        offers=list(offers), scopes_ok=[Scope(provider)], scope_errors=[], fetched_at=at
    )
    with session_scope(engine) as session:
        ingest_poll(session, result, source=f"test-{provider}", clock=lambda: at)


def count(engine: Engine, model: type[Any]) -> int:
    with engine.connect() as conn:
        return int(conn.execute(select(func.count()).select_from(model.__table__)).scalar_one())


def new_request(client: TestClient, key: str, **change: Any) -> int:
    r = client.post("/v1/requests", json={**EU_H100_REQUEST, **change}, headers=bearer(key))
    assert r.status_code == 201, r.text
    return int(r.json()["id"])


def reserve(client: TestClient, key: str, request_id: int, **body: Any) -> Any:
    return client.post(f"/v1/requests/{request_id}/reserve", json=body, headers=bearer(key))


def hours(a: str | datetime, b: str | datetime) -> Decimal:
    ta = a if isinstance(a, datetime) else datetime.fromisoformat(a.replace("Z", "+00:00"))
    tb = b if isinstance(b, datetime) else datetime.fromisoformat(b.replace("Z", "+00:00"))
    return Decimal(int((tb - ta).total_seconds())) / 3600


def prefix(key: str) -> str:
    return key[:12]


@pytest.fixture
def beta_member(engine: Engine, clock: Clock) -> str:
    with session_scope(engine) as session:
        return create_api_key(session, "beta", Role.MEMBER, clock=clock).key


@pytest.fixture
def aws(engine: Engine, clock: Clock) -> None:
    ingest(engine, [ROOM3, BLOCK, A100_DE, H100_US], clock())


# ------------------------------------------------------------------------ booking


def test_reserve_books_held_reservations_at_the_offer_rate(
    client: TestClient, keys: Keys, engine: Engine, aws: None, clock: Clock
) -> None:
    rid = new_request(client, keys.member)
    offer = client.get(f"/v1/offers/{ROOM3.key}", headers=bearer(keys.member)).json()
    r = reserve(client, keys.member, rid, offers=[{"key": ROOM3.key, "instances": 2}])
    assert r.status_code == 201, r.text
    body = r.json()
    assert body["request_id"] == rid and body["request_state"] == "fulfilled"
    (res,) = body["reservations"]
    assert res["offer_key"] == ROOM3.key and res["instances"] == 2 and res["gpus"] == 16
    assert res["state"] == "held" and res["kind"] == "on_demand_hold"
    assert res["source"] == "request" and res["request_id"] == rid
    assert Decimal(res["rate_per_gpu_hour"]) == Decimal(str(offer["price_per_gpu_hour"]))
    assert Decimal(res["rate_per_gpu_hour"]) == ROOM3.price_per_gpu_hour
    assert res["currency"] == "USD" and Decimal(res["upfront_fee_usd"]) == 0
    assert (res["provider"], res["region"], res["jurisdiction"]) == ("aws", "eu-central-1", "EU")
    assert res["starts_at"] == T0.isoformat().replace("+00:00", "Z")
    assert hours(res["starts_at"], res["ends_at"]) == EU_H100_REQUEST["duration_hours"]
    assert Decimal(res["total_commitment"]) == (
        ROOM3.price_per_gpu_hour * 16 * EU_H100_REQUEST["duration_hours"]
    ).quantize(Decimal("0.01"))
    assert res["created_by"] == f"alpha/{prefix(keys.member)}"

    history = client.get(f"/v1/reservations/{res['id']}/history", headers=bearer(keys.admin))
    (created,) = history.json()["data"]
    assert created["action"] == "created" and created["actor"] == f"alpha/{prefix(keys.member)}"
    assert created["before"] is None and created["after"]["gpus"] == "16"
    assert created["reason"] == f"booked for capacity request {rid}"
    # The request says so.
    events = client.get(f"/v1/requests/{rid}/events", headers=bearer(keys.member)).json()
    assert any(e["after"] == {"state": "fulfilled"} for e in events["data"])

    # A fulfilled request cannot be booked again.
    again = reserve(client, keys.member, rid, offers=[{"key": ROOM3.key, "instances": 1}])
    assert again.status_code == 409 and again.json()["error"]["code"] == "request_closed"

    # Room for 24 GPUs, 16 held: another 16 are refused with the reason; nothing written.
    other = new_request(client, keys.member)
    before = count(engine, Reservation), count(engine, LedgerEntry)
    full = reserve(client, keys.member, other, offers=[{"key": ROOM3.key, "gpus": 16}])
    assert full.status_code == 409, full.text
    err = full.json()["error"]
    assert err["code"] == "capacity_exhausted"
    assert "room for 24 GPUs" in err["message"] and "already hold 16" in err["message"]
    assert err["details"] == {
        "offer_key": ROOM3.key,
        "capacity_gpus": "24",
        "reserved_gpus": "16",
        "requested_gpus": "16",
        "free_gpus": "8",
    }
    assert (count(engine, Reservation), count(engine, LedgerEntry)) == before
    # 8 still fit (a partial booking leaves the request matched).
    ok = reserve(client, keys.member, other, offers=[{"key": ROOM3.key, "gpus": 8}])
    assert ok.status_code == 201, ok.text
    assert ok.json()["request_state"] == "matched"
    # A cancelled reservation frees its GPUs.
    first = res["id"]
    cancel = client.patch(
        f"/v1/reservations/{first}",
        json={"state": "cancelled", "reason": "plans changed"},
        headers=bearer(keys.member),
    )
    assert cancel.status_code == 200 and cancel.json()["state"] == "cancelled"
    ok2 = reserve(client, keys.member, other, offers=[{"key": ROOM3.key, "gpus": 8}])
    assert ok2.status_code == 201 and ok2.json()["request_state"] == "fulfilled"


def test_reserve_a_recommended_option_as_listed(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    rid = new_request(client, keys.member)
    rec = client.get(f"/v1/requests/{rid}/recommendations", headers=bearer(keys.member)).json()
    option = rec["options"][0]
    r = reserve(client, keys.member, rid, offers=option["offers"], notes="best option")
    assert r.status_code == 201, r.text
    got = r.json()["reservations"]
    assert [x["offer_key"] for x in got] == [o["key"] for o in option["offers"]]
    assert sum(x["gpus"] for x in got) == option["gpus"] >= EU_H100_REQUEST["gpus"]
    for x, part in zip(got, option["offers"], strict=True):
        offer = client.get(f"/v1/offers/{part['key']}", headers=bearer(keys.member)).json()
        assert Decimal(x["rate_per_gpu_hour"]) == Decimal(str(offer["price_per_gpu_hour"]))
        assert x["instances"] == part["instances"] and x["notes"] == "best option"
        assert x["jurisdiction"] == "EU"
    assert r.json()["request_state"] == "fulfilled"


def test_reserve_bad_input_names_the_field_and_writes_nothing(
    client: TestClient, keys: Keys, engine: Engine, aws: None, clock: Clock, beta_member: str
) -> None:
    rid = new_request(client, keys.member)
    cases: list[tuple[dict[str, Any], int, str, str]] = [
        (
            {"offers": [{"key": "aws/nowhere/x/on_demand", "instances": 1}]},
            422,
            "offers.0.key",
            "no offer with key",
        ),
        (
            {"offers": [{"key": ROOM3.key, "gpus": 12}]},
            422,
            "offers.0.gpus",
            "not a whole number of instances",
        ),
        (
            {"offers": [{"key": ROOM3.key, "gpus": 8, "instances": 2}]},
            422,
            "offers.0.gpus",
            "are 16 GPUs, not 8",
        ),
        (
            {"offers": [{"key": A100_DE.key, "instances": 1}]},
            422,
            "offers.0.key",
            "does not accept",
        ),
        ({"offers": [{"key": H100_US.key, "instances": 1}]}, 422, "offers.0.key", "residency"),
        ({"offers": [{"key": ROOM3.key, "instances": 1}] * 2}, 422, "offers", "appears twice"),
        ({"offers": [{"key": ROOM3.key}]}, 422, "offers.0", "give instances or gpus"),
        (
            {"offers": [{"key": ROOM3.key, "instances": -1}]},
            422,
            "offers.0.instances",
            "greater than 0",
        ),
        ({"offers": []}, 422, "offers", "at least 1"),
        (
            {
                "offers": [{"key": ROOM3.key, "instances": 1}],
                "starts_at": (T0 - timedelta(days=2)).isoformat(),
            },
            422,
            "starts_at",
            "in the past",
        ),
        (
            {"offers": [{"key": ROOM3.key, "instances": 1}], "starts_at": "2026-06-01T00:00:00"},
            422,
            "starts_at",
            "timezone",
        ),
        (
            {"offers": [{"key": ROOM3.key, "instances": 1}], "starts_at": "8999-01-01T00:00:00Z"},
            422,
            "starts_at",
            "days ahead",
        ),
        (
            {"offers": [{"key": ROOM3.key, "instances": 1}], "duration_hours": 0},
            422,
            "duration_hours",
            "greater than 0",
        ),
        (
            {"offers": [{"key": BLOCK.key, "instances": 1}]},
            422,
            "offers.0.instances",
            "bought whole",
        ),
        ({"offers": [{"key": BLOCK.key, "instances": 2}]}, 422, "duration_hours", "at most 24 h"),
    ]
    for body, status, field, words in cases:
        r = reserve(client, keys.member, rid, **body)
        assert r.status_code == status, (body, r.text)
        err = r.json()["error"]
        assert field in [d["field"] for d in err["details"]], (body, err)
        assert words in err["message"], (body, err["message"])
    assert count(engine, Reservation) == 0 and count(engine, LedgerEntry) == 0

    # Roles and teams.
    body = {"offers": [{"key": ROOM3.key, "instances": 1}]}
    assert client.post(f"/v1/requests/{rid}/reserve", json=body).status_code == 401
    assert reserve(client, keys.viewer, rid, **body).status_code == 403
    r = reserve(client, beta_member, rid, **body)
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    assert count(engine, Reservation) == 0

    # A withdrawn offer, then stale data.
    ingest(engine, [BLOCK, A100_DE, H100_US], clock())  # ROOM3 gone from a full poll
    gone = reserve(client, keys.member, rid, **body)
    assert gone.status_code == 409 and gone.json()["error"]["code"] == "offer_withdrawn"
    anywhere = new_request(client, keys.member, residency={})
    clock.advance(hours=3)  # past BROKER_STALE_AFTER_MINUTES (120) since the last poll
    stale = reserve(client, keys.member, anywhere, offers=[{"key": H100_US.key, "instances": 1}])
    assert stale.status_code == 409 and stale.json()["error"]["code"] == "offer_stale"
    assert "stale" in stale.json()["error"]["message"]
    assert count(engine, Reservation) == 0


def test_capacity_block_is_bought_whole_once_and_the_database_refuses_a_second(
    client: TestClient, keys: Keys, engine: Engine, aws: None
) -> None:
    rid = new_request(client, keys.member, duration_hours=24)
    r = reserve(client, keys.member, rid, offers=[{"key": BLOCK.key, "instances": 2}])
    assert r.status_code == 201, r.text
    (res,) = r.json()["reservations"]
    assert res["kind"] == "capacity_block" and res["gpus"] == 16
    assert res["starts_at"] == BLOCK.earliest_start.isoformat().replace("+00:00", "Z")  # type: ignore[union-attr]
    assert hours(res["starts_at"], res["ends_at"]) == 24
    # The block's fee is its price spread per hour: not added a second time.
    assert Decimal(res["upfront_fee_usd"]) == 0
    assert Decimal(res["rate_per_gpu_hour"]) == BLOCK.price_per_gpu_hour
    other = new_request(client, keys.member, duration_hours=24)
    again = reserve(client, keys.member, other, offers=[{"key": BLOCK.key, "instances": 2}])
    assert again.status_code == 409 and again.json()["error"]["code"] == "capacity_exhausted"
    # Extending a block is refused: it has a fixed end.
    ext = client.patch(
        f"/v1/reservations/{res['id']}",
        json={"ends_at": "2026-06-30T00:00:00Z", "reason": "longer"},
        headers=bearer(keys.member),
    )
    assert ext.status_code == 422 and ext.json()["error"]["details"][0]["field"] == "ends_at"

    # Below the API, the database itself refuses a second live reservation of the block.
    with pytest.raises(IntegrityError), session_scope(engine) as session:
        row = session.get(Reservation, res["id"])
        assert row is not None
        session.add(
            Reservation(
                **{
                    k: getattr(row, k)
                    for k in Reservation.model_fields
                    if k not in ("id", "request_id")
                }
            )
        )
    assert count(engine, Reservation) == 1


# ---------------------------------------------------------- external commitments


def test_record_change_and_history_of_an_external_commitment(
    client: TestClient, keys: Keys, clock: Clock
) -> None:
    r = client.post("/v1/reservations", json=COMMITMENT, headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    res = r.json()
    rid = res["id"]
    assert res["state"] == "active" and res["source"] == "api" and res["offer_key"] is None
    assert (res["country"], res["jurisdiction"]) == ("NL", "EU")
    assert res["gpu_model"] == "H100" and res["gpu_family"] == "H100" and res["gpus"] == 64
    total = Decimal("3.95") * 64 * hours(COMMITMENT["starts_at"], COMMITMENT["ends_at"]) + 1000
    assert Decimal(res["total_commitment"]) == total.quantize(Decimal("0.01"))
    assert res["rate_per_gpu_hour"] == "3.95" and res["upfront_fee_usd"] == "1000.00"
    path = f"/v1/reservations/{rid}"
    assert client.get(path, headers=bearer(keys.admin)).json() == res

    def patch(body: dict[str, Any], key: str = keys.admin) -> Any:
        return client.patch(path, json=body, headers=bearer(key))

    clock.advance(hours=1)
    ext = patch({"ends_at": "2027-02-01T00:00:00Z", "reason": "renewed for a quarter"})
    assert ext.status_code == 200, ext.text
    assert ext.json()["ends_at"] == "2027-02-01T00:00:00Z"
    clock.advance(hours=1)
    amend = patch({"rate_per_gpu_hour": "3.60", "notes": "renegotiated", "reason": "discount"})
    assert amend.status_code == 200 and amend.json()["rate_per_gpu_hour"] == "3.60"
    # Bad changes: named field, nothing changed.
    for body, field in [
        ({"ends_at": "2026-10-01T00:00:00Z", "reason": "shorter"}, "ends_at"),
        ({"rate_per_gpu_hour": "abc", "reason": "x"}, "rate_per_gpu_hour"),
        ({"rate_per_gpu_hour": "-1", "reason": "x"}, "rate_per_gpu_hour"),
        ({"rate_per_gpu_hour": "3.10"}, "reason"),
        ({"reason": "nothing"}, "body"),
        ({"state": "expired", "reason": "x"}, "state"),
    ]:
        bad = patch(body)
        assert bad.status_code == 422, (body, bad.text)
        assert field in [d["field"] for d in bad.json()["error"]["details"]], bad.json()
    assert client.get(path, headers=bearer(keys.admin)).json()["rate_per_gpu_hour"] == "3.60"
    assert patch({"state": "cancelled", "reason": "x"}, keys.viewer).status_code in (403, 404)
    clock.advance(hours=1)
    cancelled = patch({"state": "cancelled", "reason": "moved to another provider"})
    assert cancelled.status_code == 200 and cancelled.json()["state"] == "cancelled"
    assert cancelled.json()["cancelled_at"] == clock().isoformat().replace("+00:00", "Z")
    closed = patch({"notes": "too late", "reason": "x"})
    assert closed.status_code == 409 and closed.json()["error"]["code"] == "reservation_closed"

    hist = client.get(f"{path}/history", headers=bearer(keys.member)).json()["data"]
    assert [h["action"] for h in hist] == [
        "created",
        "extended",
        "rate_amended",
        "amended",
        "cancelled",
    ]
    created, extended, rate, text, cancel = hist
    assert created["actor"] == f"alpha/{prefix(keys.member)}"
    assert created["reason"] == "recorded an external commitment"
    assert created["after"]["rate_per_gpu_hour"] == "3.95"
    assert extended["actor"] == f"alpha/{prefix(keys.admin)}"
    assert extended["reason"] == "renewed for a quarter"
    assert extended["before"] == {"ends_at": "2026-11-01T00:00:00Z"}
    assert extended["after"] == {"ends_at": "2027-02-01T00:00:00Z"}
    assert extended["at"] == (T0 + H).isoformat().replace("+00:00", "Z")
    assert rate["before"] == {"rate_per_gpu_hour": "3.95"}
    assert rate["after"] == {"rate_per_gpu_hour": "3.60"} and rate["reason"] == "discount"
    assert text["before"] == {"notes": "signed 2026-04-20"}
    assert text["after"] == {"notes": "renegotiated"}
    assert cancel["before"]["state"] == "active" and cancel["after"]["state"] == "cancelled"
    assert cancel["reason"] == "moved to another provider"


def test_held_reservation_activates_then_expires_by_the_task(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock
) -> None:
    body = {
        **COMMITMENT,
        "starts_at": (T0 + timedelta(days=1)).isoformat(),
        "ends_at": (T0 + timedelta(days=3)).isoformat(),
        "state": "held",
    }
    res = client.post("/v1/reservations", json=body, headers=bearer(keys.member)).json()
    assert res["state"] == "held" and res["activated_at"] is None
    path = f"/v1/reservations/{res['id']}"
    act = client.patch(
        path, json={"state": "active", "reason": "nodes up"}, headers=bearer(keys.member)
    )
    assert act.status_code == 200 and act.json()["state"] == "active"
    again = client.patch(
        path, json={"state": "active", "reason": "again"}, headers=bearer(keys.member)
    )
    assert again.status_code == 200
    clock.advance(days=3)
    # Expiry by the scheduled task's function, idempotent.
    with session_scope(engine) as session:
        assert expire_reservations(session, clock()) == [res["id"]]
    with session_scope(engine) as session:
        assert expire_reservations(session, clock()) == []
    got = client.get(path, headers=bearer(keys.member)).json()
    assert got["state"] == "expired"
    hist = client.get(f"{path}/history", headers=bearer(keys.member)).json()["data"]
    assert [h["action"] for h in hist] == ["created", "activated", "expired"]
    assert hist[2]["actor"] == "system" and hist[2]["after"] == {"state": "expired"}
    # An expired reservation is closed.
    r = client.patch(path, json={"notes": "x", "reason": "y"}, headers=bearer(keys.member))
    assert r.status_code == 409


def test_reads_expire_without_a_scheduler(client: TestClient, keys: Keys, clock: Clock) -> None:
    body = {**COMMITMENT, "ends_at": (T0 + H).isoformat()}
    rid = client.post("/v1/reservations", json=body, headers=bearer(keys.member)).json()["id"]
    clock.advance(hours=2)
    listed = client.get("/v1/reservations?state=expired", headers=bearer(keys.member)).json()
    assert [x["id"] for x in listed["data"]] == [rid]
    past = {**COMMITMENT, "ends_at": (T0 - H).isoformat()}
    r = client.post("/v1/reservations", json=past, headers=bearer(keys.member))
    assert r.status_code == 201 and r.json()["state"] == "expired"


BAD_COMMITMENTS: list[tuple[dict[str, Any], str, str]] = [
    ({"ends_at": "2026-04-01T00:00:00Z"}, "body", "ends_at must be after starts_at"),
    ({"gpus": -8}, "gpus", "greater than 0"),
    ({"gpus": 0}, "gpus", "greater than 0"),
    ({"gpus": 2.5}, "gpus", "integer"),
    ({"provider": "acme-cloud"}, "provider", "unknown provider"),
    ({"rate_per_gpu_hour": "abc"}, "rate_per_gpu_hour", "decimal"),
    ({"rate_per_gpu_hour": "NaN"}, "rate_per_gpu_hour", ""),
    ({"rate_per_gpu_hour": -1}, "rate_per_gpu_hour", "greater than or equal"),
    ({"rate_per_gpu_hour": "1e20"}, "rate_per_gpu_hour", "less than or equal"),
    ({"upfront_fee_usd": "-5"}, "upfront_fee_usd", "greater than or equal"),
    ({"region": "europe-west99"}, "body", "unknown region 'europe-west99' of gcp"),
    ({"gpu_model": "H1000"}, "gpu_model", "Did you mean"),
    ({"currency": "EUR"}, "currency", "only USD"),
    ({"kind": "forever"}, "kind", "on_demand_hold"),
    ({"provider": "other", "region": "Frankfurt colo"}, "body", "country is required"),
    ({"provider": "other", "region": "colo", "country": "XX"}, "country", "unknown country"),
    ({"country": "US"}, "body", "does not match region"),
    ({"starts_at": "2026-05-01T00:00:00"}, "starts_at", "timezone"),
    ({"notes": "bad\u0000note"}, "notes", "NUL"),
    ({"starts_at": "0001-01-01T00:00:00+05:00"}, "starts_at", "out of range"),
    ({"ends_at": "9999-12-31T23:59:59Z"}, "ends_at", "between the years"),
    ({"ends_at": "2040-01-01T00:00:00Z"}, "body", "longer than"),
    ({"state": "cancelled"}, "state", "held"),
    ({"colour": "red"}, "colour", "Extra inputs"),
]


@pytest.mark.parametrize(("change", "field", "words"), BAD_COMMITMENTS)
def test_bad_commitment_is_refused_naming_the_field(
    client: TestClient, keys: Keys, engine: Engine, change: dict[str, Any], field: str, words: str
) -> None:
    r = client.post("/v1/reservations", json={**COMMITMENT, **change}, headers=bearer(keys.member))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_request"
    assert field in [d["field"] for d in err["details"]], err
    assert words in err["message"], err["message"]
    assert count(engine, Reservation) == 0


def test_other_provider_needs_a_country_and_gets_its_jurisdiction(
    client: TestClient, keys: Keys
) -> None:
    body = {**COMMITMENT, "provider": "other", "region": "Frankfurt colo", "country": "de"}
    r = client.post("/v1/reservations", json=body, headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    assert (r.json()["country"], r.json()["jurisdiction"]) == ("DE", "EU")
    r = client.post("/v1/reservations", json={**body, "country": "CH"}, headers=bearer(keys.member))
    assert r.json()["jurisdiction"] == "CH"


# -------------------------------------------------------------------------- CSV


CSV_HEADER = (
    "provider,gpu_model,gpus,region,starts_at,ends_at,rate_per_gpu_hour,upfront_fee_usd,kind,"
    "counterparty,notes\n"
)
GOOD_ROWS = [
    "aws,H100-SXM,32,us-east-1,2026-05-01T00:00:00Z,2027-05-01T00:00:00Z,2.10,50000,"
    "reserved_1y,AWS,1y RI\n",
    "lambda_cloud,H100,16,us-east-1,2026-05-15T00:00:00Z,2026-08-15T00:00:00Z,2.49,,"
    'contract,Lambda,"multi, line"\n',
    "other,A100,8,Helsinki colo,2026-06-01T00:00:00Z,2026-12-01T00:00:00Z,1.20,0,"
    "contract,Colo Oy,\n",
]
USAGE_HEADER = "reservation_id,period_start,period_end,gpu_hours\n"


def post_csv(client: TestClient, key: str, path: str, text: str) -> Any:
    return client.post(
        path, content=text.encode(), headers={**bearer(key), "Content-Type": "text/csv"}
    )


def test_import_csv_is_all_or_nothing_with_per_row_errors(
    client: TestClient, keys: Keys, engine: Engine
) -> None:
    bad = (
        CSV_HEADER
        + GOOD_ROWS[0]
        + "aws,H100-SXM,-4,us-east-1,2026-05-01T00:00:00Z,2027-05-01T00:00:00Z,2.10,0,contract,,\n"
        + "acme,H100,4,us-east-1,2026-05-01T00:00:00Z,2026-04-01T00:00:00Z,abc,0,contract,,\n"
        + GOOD_ROWS[1]
    )
    r = post_csv(client, keys.member, "/v1/reservations/import", bad)
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert err["code"] == "invalid_csv"
    assert "2 of 4 rows are invalid, nothing was imported" in err["message"]
    got = {(d["line"], d["field"]) for d in err["details"]}
    assert got == {(3, "gpus"), (4, "provider"), (4, "rate_per_gpu_hour")}
    assert count(engine, Reservation) == 0 and count(engine, LedgerEntry) == 0
    # The "other" row has no country: row 4 of this file.
    no_country = CSV_HEADER + GOOD_ROWS[0] + GOOD_ROWS[1] + GOOD_ROWS[2]
    r = post_csv(client, keys.member, "/v1/reservations/import", no_country)
    assert r.status_code == 422 and r.json()["error"]["details"][0]["line"] == 4
    assert "country is required" in r.json()["error"]["details"][0]["message"]
    # Fixed: a country column.
    text = CSV_HEADER.replace("notes\n", "notes,country\n")
    text += "".join(row.rstrip("\n") + ",\n" for row in GOOD_ROWS[:2])
    text += GOOD_ROWS[2].rstrip("\n") + ",FI\n"
    r = post_csv(client, keys.member, "/v1/reservations/import", text)
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == 3
    rows = r.json()["reservations"]
    assert [x["source"] for x in rows] == ["import"] * 3
    assert [x["jurisdiction"] for x in rows] == ["US", "US", "EU"]
    assert rows[1]["notes"] == "multi, line" and rows[1]["upfront_fee_usd"] == "0.00"
    hist = client.get(
        f"/v1/reservations/{rows[2]['id']}/history", headers=bearer(keys.member)
    ).json()["data"]
    assert hist[0]["reason"] == "imported from CSV line 4"


@pytest.mark.parametrize(
    ("text", "words"),
    [
        ("", "empty"),
        (CSV_HEADER, "no rows"),
        ("provider,gpus\naws,8\n", "missing column(s) gpu_model"),
        (CSV_HEADER.replace("notes", "colour") + GOOD_ROWS[0], "unknown column(s) colour"),
        (CSV_HEADER + GOOD_ROWS[0].rstrip("\n") + ",extra\n", "more cells"),
    ],
)
def test_import_csv_bad_files(
    client: TestClient, keys: Keys, engine: Engine, text: str, words: str
) -> None:
    r = post_csv(client, keys.member, "/v1/reservations/import", text)
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == "invalid_csv" and words in r.json()["error"]["message"]
    assert count(engine, Reservation) == 0


def test_import_csv_needs_csv_and_a_member(client: TestClient, keys: Keys) -> None:
    r = client.post("/v1/reservations/import", json={"a": 1}, headers=bearer(keys.member))
    assert r.status_code == 415
    r = post_csv(client, keys.viewer, "/v1/reservations/import", CSV_HEADER + GOOD_ROWS[0])
    assert r.status_code == 403
    r = client.post(
        "/v1/reservations/import",
        content=b"\xff\xfe\x00bad",
        headers={**bearer(keys.member), "Content-Type": "text/csv"},
    )
    assert r.status_code == 422 and "UTF-8" in r.json()["error"]["message"]


# ------------------------------------------------------------------------- usage


def test_usage_by_api_and_csv(client: TestClient, keys: Keys, engine: Engine, clock: Clock) -> None:
    res = client.post("/v1/reservations", json=COMMITMENT, headers=bearer(keys.member)).json()
    rid = res["id"]
    path = f"/v1/reservations/{rid}/usage"

    def post(body: dict[str, Any]) -> Any:
        return client.post(path, json=body, headers=bearer(keys.member))

    week = {"period_start": "2026-05-01T00:00:00Z", "period_end": "2026-05-08T00:00:00Z"}
    ok = post({**week, "gpu_hours": "8000.5"})
    assert ok.status_code == 201, ok.text
    assert ok.json()["gpu_hours"] == 8000.5 and ok.json()["source"] == "api"
    overlap = post(
        {
            "period_start": "2026-05-07T00:00:00Z",
            "period_end": "2026-05-09T00:00:00Z",
            "gpu_hours": 1,
        }
    )
    assert overlap.status_code == 409 and overlap.json()["error"]["code"] == "usage_overlap"
    most = 64 * 7 * 24
    for body, field in [
        (
            {
                "period_start": "2026-05-08T00:00:00Z",
                "period_end": "2026-05-15T00:00:00Z",
                "gpu_hours": most + 1,
            },
            "gpu_hours",
        ),
        (
            {
                "period_start": "2026-04-20T00:00:00Z",
                "period_end": "2026-04-27T00:00:00Z",
                "gpu_hours": 1,
            },
            "period_start",
        ),
        (
            {
                "period_start": "2026-05-20T00:00:00Z",
                "period_end": "2026-05-28T00:00:00Z",
                "gpu_hours": 1,
            },
            "period_end",
        ),
        (
            {
                "period_start": "2026-05-10T00:00:00Z",
                "period_end": "2026-05-09T00:00:00Z",
                "gpu_hours": 1,
            },
            "body",
        ),
        (
            {
                "period_start": "2026-05-08T00:00:00Z",
                "period_end": "2026-05-09T00:00:00Z",
                "gpu_hours": -1,
            },
            "gpu_hours",
        ),
    ]:
        r = post(body)
        assert r.status_code == 422, (body, r.text)
        assert field in [d["field"] for d in r.json()["error"]["details"]], r.json()
    assert count(engine, UsageSample) == 1

    csv_text = (
        "reservation_id,period_start,period_end,gpu_hours\n"
        f"{rid},2026-05-08T00:00:00Z,2026-05-15T00:00:00Z,9000\n"
        f"{rid},2026-05-14T00:00:00Z,2026-05-16T00:00:00Z,10\n"
        f"999999,2026-05-08T00:00:00Z,2026-05-15T00:00:00Z,1\n"
        f"{rid},2026-05-15T00:00:00Z,2026-05-16T00:00:00Z,lots\n"
    )
    r = post_csv(client, keys.member, "/v1/reservations/usage/import", csv_text)
    assert r.status_code == 422, r.text
    lines = {(d["line"], d["field"]) for d in r.json()["error"]["details"]}
    assert lines == {(3, "period_start"), (4, "reservation_id"), (5, "gpu_hours")}
    assert count(engine, UsageSample) == 1
    good = (
        "reservation_id,period_start,period_end,gpu_hours\n"
        f"{rid},2026-05-08T00:00:00Z,2026-05-15T00:00:00Z,9000\n"
        f"{rid},2026-05-15T00:00:00Z,2026-05-21T00:00:00Z,7000.25\n"
    )
    r = post_csv(client, keys.member, "/v1/reservations/usage/import", good)
    assert r.status_code == 201, r.text
    assert r.json()["imported"] == 2
    listed = client.get(path, headers=bearer(keys.admin)).json()
    assert [u["gpu_hours"] for u in listed] == [8000.5, 9000, 7000.25]
    assert [u["source"] for u in listed] == ["api", "import", "import"]


# ------------------------------------------------------------------------- teams


def test_team_isolation_and_listing(client: TestClient, keys: Keys, beta_member: str) -> None:
    ids = [
        client.post(
            "/v1/reservations", json={**COMMITMENT, "gpus": n}, headers=bearer(keys.member)
        ).json()["id"]
        for n in (8, 16, 24)
    ]
    other = bearer(beta_member)
    rid = ids[0]
    for method, path, body in [
        ("GET", f"/v1/reservations/{rid}", None),
        ("PATCH", f"/v1/reservations/{rid}", {"notes": "x", "reason": "y"}),
        ("GET", f"/v1/reservations/{rid}/history", None),
        ("GET", f"/v1/reservations/{rid}/usage", None),
        (
            "POST",
            f"/v1/reservations/{rid}/usage",
            {
                "period_start": "2026-05-01T00:00:00Z",
                "period_end": "2026-05-02T00:00:00Z",
                "gpu_hours": 1,
            },
        ),
    ]:
        r = client.request(method, path, headers=other, json=body)
        assert r.status_code == 404, (method, path, r.text)
    assert client.get("/v1/reservations", headers=other).json()["data"] == []
    csv_text = USAGE_HEADER + f"{rid},2026-05-01T00:00:00Z,2026-05-02T00:00:00Z,1\n"
    r = post_csv(client, beta_member, "/v1/reservations/usage/import", csv_text)
    assert r.status_code == 422 and "no reservation" in r.json()["error"]["details"][0]["message"]
    # Pages.
    page1 = client.get("/v1/reservations?limit=2", headers=bearer(keys.member)).json()
    assert [x["id"] for x in page1["data"]] == ids[:2] and page1["next_cursor"]
    page2 = client.get(
        f"/v1/reservations?limit=2&cursor={page1['next_cursor']}", headers=bearer(keys.member)
    ).json()
    assert [x["id"] for x in page2["data"]] == ids[2:] and page2["next_cursor"] is None
    bad = client.get("/v1/reservations?cursor=xyz", headers=bearer(keys.member))
    assert bad.status_code == 400
    assert (
        client.get("/v1/reservations?state=held", headers=bearer(keys.member)).json()["data"] == []
    )


def test_reservation_ids_out_of_range_are_422_unknown_404(client: TestClient, keys: Keys) -> None:
    for bad in ("0", str(2**63), str(2**70), "abc"):
        r = client.get(f"/v1/reservations/{bad}", headers=bearer(keys.member))
        assert r.status_code == 422, (bad, r.text)
        assert r.json()["error"]["details"][0]["field"] == "reservation_id"
    r = client.get(f"/v1/reservations/{2**63 - 1}", headers=bearer(keys.member))
    assert r.status_code == 404 and r.json()["error"]["code"] == "not_found"
    r = reserve(client, keys.member, 2**64, offers=[{"key": "x", "instances": 1}])
    assert r.status_code == 422


__all__ = ["BLOCK", "COMMITMENT", "ROOM3", "UTC", "count", "ingest", "new_request", "reserve"]
