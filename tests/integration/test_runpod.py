"""The RunPod adapter against a fake RunPod GraphQL API over a real socket (httpx → 127.0.0.1).

The fake parses the adapter's GraphQL for real and answers only the fields asked for
(tests/fakes/runpod_api.py). RunPod has no pagination, so "a page failing mid-pagination"
does not exist here; its equivalent, one data centre's request failing while the others
answer, is tested per fault.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from broker.config import RunpodSettings, Settings
from broker.db import session_scope
from broker.domain import Availability, Market, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll
from providers.base import ProviderDisabled
from providers.runpod import Runpod, graphql_error, stock_query
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port
from tests.fakes.runpod_api import DataCenter, RunpodFake, RunpodGpu, Stock
from tests.fakes.runpod_api import graphql_error as gql_error

SECRET = "rp_live_0123456789abcdefSECRET"
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
H100 = "NVIDIA H100 80GB HBM3"
A100 = "NVIDIA A100 80GB PCIe"
RTX4090 = "NVIDIA GeForce RTX 4090"
MYSTERY = "NVIDIA QuantumFlux 9000"  # no such GPU: not in the catalogue
#: Per-GPU-hour prices of the fixture, as the fake serves them (JSON numbers).
H100_SECURE, H100_COMMUNITY, H100_SECURE_SPOT = 2.69, 2.39, 1.75
A100_SECURE, A100_SECURE_SPOT = 1.64, 0.82
RTX_SECURE, RTX_COMMUNITY, RTX_SECURE_SPOT, RTX_COMMUNITY_SPOT = 0.69, 0.34, 0.35, 0.2


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 5) -> None:
        self.now += timedelta(minutes=minutes)


def adapter(
    url: str,
    *,
    clock: Clock | None = None,
    waits: list[float] | None = None,
    key: str = SECRET,
    **settings: Any,
) -> Runpod:
    opts: dict[str, Any] = {"timeout_s": 0.3, "max_attempts": 1, "base_url": url}
    opts.update(settings)
    return Runpod(
        key,
        RunpodSettings(**opts),
        clock=clock or Clock(),
        sleep=(waits if waits is not None else []).append,
        backoff_base_s=0.01,
    )


def gpus() -> list[RunpodGpu]:
    return [
        RunpodGpu(H100, "H100 SXM", 80, 8, H100_SECURE, H100_COMMUNITY, H100_SECURE_SPOT, None),
        RunpodGpu(A100, "A100 PCIe", 80, 8, A100_SECURE, None, A100_SECURE_SPOT, None),
        RunpodGpu(
            RTX4090,
            "RTX 4090",
            24,
            8,
            RTX_SECURE,
            RTX_COMMUNITY,
            RTX_SECURE_SPOT,
            RTX_COMMUNITY_SPOT,
            max_secure=4,
        ),
        RunpodGpu(MYSTERY, "QuantumFlux 9000", 24, 8, None, 0.22, None, 0.11),
    ]


DCS = [
    DataCenter("EU-RO-1", "EU-RO-1", "Europe"),
    DataCenter("US-TX-3", "US-TX-3", "United States"),
    DataCenter("EUR-IS-1", "EUR-IS-1", "Europe"),
    DataCenter("EU-XX-9", "EU-XX-9", "Europe"),  # not in broker/data/regions.csv
]


def stock() -> dict[tuple[str, str, str], Stock]:
    return {
        ("EU-RO-1", H100, "secure"): Stock("High", 8, [1, 2, 4, 8], 2.69, 1.75),
        ("EU-RO-1", H100, "community"): Stock("Low", 3, [1, 2], 2.39, 1.5),
        ("EU-RO-1", MYSTERY, "community"): Stock("High", 4, [1]),
        ("US-TX-3", H100, "secure"): Stock(None, 0, []),  # no stock: no offer
        ("US-TX-3", A100, "secure"): Stock("Medium", None, None),  # no pod sizes stated
        ("EUR-IS-1", RTX4090, "secure"): Stock("High", 16, [1, 2, 4, 8]),  # max 4 secure
        ("EUR-IS-1", RTX4090, "community"): Stock("Scarce", 1, [1]),  # unknown status
        ("EU-XX-9", H100, "secure"): Stock("High", 1, [1]),
    }


@pytest.fixture
def fake(fake_http: FakeHttpServer) -> RunpodFake:
    return RunpodFake(fake_http, gpus(), DCS, stock(), api_key=SECRET)


def key(dc: str, gpu: str, n: int, cloud: str, market: str) -> str:
    return f"runpod/{dc}/{gpu} x{n} {cloud}/{market}"


# ------------------------------------------------------------------------------ parsing


def test_offers_per_data_centre_cloud_pod_size_and_market(fake: RunpodFake) -> None:
    result = adapter(fake.url).fetch()
    assert result.scope_errors == []
    assert sorted(s.region or "" for s in result.scopes_ok) == sorted(d.id for d in DCS)
    by_key = {o.key: o for o in result.offers}
    expected = (
        [key("EU-RO-1", H100, n, "secure", m) for n in (1, 2, 4, 8) for m in ("on_demand", "spot")]
        + [key("EU-RO-1", H100, n, "community", "on_demand") for n in (1, 2)]
        + [key("US-TX-3", A100, 1, "secure", m) for m in ("on_demand", "spot")]
        + [
            key("EUR-IS-1", RTX4090, n, "secure", m)
            for n in (1, 2, 4)
            for m in ("on_demand", "spot")
        ]
        + [key("EUR-IS-1", RTX4090, 1, "community", m) for m in ("on_demand", "spot")]
        + [key("EU-XX-9", H100, 1, "secure", m) for m in ("on_demand", "spot")]
    )
    assert sorted(by_key) == sorted(expected)
    assert len(result.offers) == len(by_key)

    h100x8 = by_key[key("EU-RO-1", H100, 8, "secure", "on_demand")]
    assert (h100x8.gpu_model, h100x8.form_factor, h100x8.gpu_family) == ("H100-SXM", "SXM", "H100")
    assert h100x8.gpu_count == Decimal(8)
    assert h100x8.gpu_memory_gb == Decimal(80)
    # Price per pod-hour = per-GPU price × GPUs, computed here from the fixture's numbers.
    assert h100x8.price_per_hour == Decimal(str(H100_SECURE)) * 8
    assert h100x8.price_per_gpu_hour == Decimal("2.690000")
    assert (h100x8.country, h100x8.jurisdiction, h100x8.continent) == ("RO", "EU", "Europe")
    assert h100x8.availability is Availability.AVAILABLE
    assert h100x8.available_count == 1  # 8 unreserved GPUs // 8 per pod
    assert (h100x8.vcpus, h100x8.memory_gb) == (None, None)
    assert h100x8.raw["priceField"] == "securePrice"
    assert h100x8.raw["stockStatus"] == "High"

    spot = by_key[key("EU-RO-1", H100, 2, "secure", "spot")]
    assert spot.market is Market.SPOT
    assert spot.price_per_hour == Decimal(str(H100_SECURE_SPOT)) * 2
    assert spot.available_count == 4

    community = by_key[key("EU-RO-1", H100, 2, "community", "on_demand")]
    assert community.price_per_hour == Decimal(str(H100_COMMUNITY)) * 2
    assert (community.availability, community.available_count) == (Availability.LIMITED, 1)

    a100 = by_key[key("US-TX-3", A100, 1, "secure", "on_demand")]
    assert (a100.gpu_model, a100.price_per_hour) == ("A100-80GB", Decimal(str(A100_SECURE)))
    assert (a100.country, a100.jurisdiction) == ("US", "US")
    assert (a100.availability, a100.available_count) == (Availability.LIMITED, None)

    rtx = by_key[key("EUR-IS-1", RTX4090, 4, "secure", "on_demand")]
    assert (rtx.gpu_model, rtx.price_per_hour) == ("RTX4090", Decimal(str(RTX_SECURE)) * 4)
    assert (rtx.country, rtx.jurisdiction) == ("IS", "EU")
    odd = by_key[key("EUR-IS-1", RTX4090, 1, "community", "spot")]
    assert odd.price_per_hour == Decimal(str(RTX_COMMUNITY_SPOT))
    assert odd.availability is Availability.UNKNOWN
    assert any("unknown stockStatus 'Scarce'" in n for n in result.notes)

    unknown_place = by_key[key("EU-XX-9", H100, 1, "secure", "on_demand")]
    assert (unknown_place.country, unknown_place.jurisdiction) == (None, None)
    assert any("'EU-XX-9' not in broker/data/regions.csv" in n for n in result.notes)

    assert result.skipped == {"unknown_gpu": 1, "no_price": 1}  # QuantumFlux; H100 community spot


def test_capacity_by_presence_names_every_sold_type_up_to_its_max(fake: RunpodFake) -> None:
    presence = adapter(fake.url).fetch().capacity_by_presence
    types = {t for p, t in presence if p == "runpod"}
    assert f"{H100} x8 secure" in types and f"{H100} x8 community" in types
    assert f"{RTX4090} x4 secure" in types and f"{RTX4090} x5 secure" not in types
    assert f"{RTX4090} x8 community" in types
    assert f"{A100} x1 community" not in types  # not sold in community cloud
    assert not any(t.startswith(MYSTERY) for t in types)
    assert len(types) == 8 * 2 + 8 + 4 + 8


def test_requests_carry_the_key_and_one_stock_query_per_data_centre(fake: RunpodFake) -> None:
    runpod = adapter(fake.url, max_concurrency=1)  # JsonApi.calls is not atomic across threads
    runpod.fetch()
    reqs = fake.requests()
    assert len(reqs) == 1 + len(DCS) == runpod.calls
    assert {r.headers["authorization"] for r in reqs} == {f"Bearer {SECRET}"}
    stock_queries = [q for q in fake.queries if "dataCenterId" in q]
    assert sorted(stock_queries) == sorted(stock_query(d.id) for d in DCS)
    assert 'dataCenterId: "EU-RO-1", secureCloud: true' in stock_query("EU-RO-1")
    assert 'dataCenterId: "EU-RO-1", secureCloud: false' in stock_query("EU-RO-1")
    with pytest.raises(ValueError):
        stock_query('EU" } evil')


def test_data_centres_setting_limits_the_fan_out(
    fake: RunpodFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_RUNPOD__API_KEY", SECRET)
    monkeypatch.setenv("BROKER_RUNPOD__BASE_URL", fake.url)
    monkeypatch.setenv("BROKER_RUNPOD__DATA_CENTERS", "EU-RO-1, US-TX-3")
    settings = Settings()
    assert settings.runpod.data_centers == ["EU-RO-1", "US-TX-3"]
    result = Runpod.from_settings(settings, Clock()).fetch()
    assert [s.region for s in result.scopes_ok] == ["EU-RO-1", "US-TX-3"]
    assert {o.region for o in result.offers} == {"EU-RO-1", "US-TX-3"}


def test_from_settings_without_a_key_is_disabled_with_the_env_var_to_set() -> None:
    with pytest.raises(ProviderDisabled, match="BROKER_RUNPOD__API_KEY"):
        Runpod.from_settings(Settings(), Clock())
    with pytest.raises(ProviderDisabled):
        Runpod.from_settings(Settings(runpod={"api_key": "  "}), Clock())
    built = Runpod.from_settings(Settings(runpod={"api_key": SECRET}), Clock())
    assert isinstance(built, Runpod)
    assert Runpod.name == "runpod"


# ------------------------------------------------------------- GraphQL error mapping


@pytest.mark.parametrize(
    ("message", "code", "expected"),
    [
        ("Unauthorized request, please check your API key", None, "auth_failed"),
        ("Something", "UNAUTHENTICATED", "auth_failed"),
        ("You do not have permission", "FORBIDDEN", "auth_failed"),
        ("Rate limit exceeded", None, "rate_limited"),
        ('Cannot query field "stockStatus" on type "LowestPrice".', None, "rejected"),
        ("bad", "GRAPHQL_VALIDATION_FAILED", "rejected"),
        ("Something went wrong", "INTERNAL_SERVER_ERROR", "unavailable"),
        ("Something went wrong", None, "unavailable"),
    ],
)
def test_graphql_error_mapping(message: str, code: str | None, expected: str) -> None:
    errors: list[dict[str, Any]] = [{"message": message}]
    if code:
        errors[0]["extensions"] = {"code": code}
    assert graphql_error(errors, "POST /graphql").code == expected


# ------------------------------------------------------------------- catalogue faults


def _failed_whole(result: PollResult, code: str) -> None:
    assert list(result.offers) == []
    assert list(result.scopes_ok) == []
    (err,) = result.scope_errors
    assert err.scope == Scope("runpod")
    assert err.code == code, err.message
    assert SECRET not in err.message


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (FakeResponse(delay_s=1.0, json={}), "timeout"),
        (FakeResponse(502, body=b"<html>Bad Gateway</html>"), "unavailable"),
        (FakeResponse(body=b'{"data": {"gpuTypes": [{"id": '), "malformed"),
        (FakeResponse(json={"data": {"gpuTypes": [{"id": "x"}] * 50}}, truncate=True), "any"),
        (gql_error("Unauthorized request, please check your API key"), "auth_failed"),
        (gql_error("Something went wrong", "INTERNAL_SERVER_ERROR"), "unavailable"),
        (FakeResponse(json={"data": {"gpuTypes": "nope"}}), "malformed"),
        (FakeResponse(401, json={"errors": [{"message": f"bad key {SECRET}"}]}), "auth_failed"),
    ],
    ids=[
        "timeout",
        "5xx",
        "malformed-json",
        "truncated",
        "graphql-auth-200",
        "graphql-internal-200",
        "wrong-shape",
        "http-401-echoing-key",
    ],
)
def test_catalogue_fault_fails_the_poll_and_returns(
    fake: RunpodFake, response: FakeResponse, code: str
) -> None:
    fake.catalogue_faults.append(response)
    result = adapter(fake.url).fetch()
    if code == "any":  # a cut body is a dropped connection or bad JSON, by timing
        assert result.scope_errors[0].code in ("unavailable", "malformed")
        code = result.scope_errors[0].code
    _failed_whole(result, code)


def test_connection_refused_fails_the_poll() -> None:
    _failed_whole(adapter(f"http://127.0.0.1:{closed_port()}").fetch(), "unavailable")


def test_wrong_key_is_auth_failed_and_never_echoed(fake: RunpodFake) -> None:
    result = adapter(fake.url, key="rp_wrong_key_0123456789").fetch()
    _failed_whole(result, "auth_failed")
    assert "rp_wrong_key_0123456789" not in result.scope_errors[0].message


def test_429_retry_after_is_honoured_then_succeeds(fake: RunpodFake) -> None:
    fake.catalogue_faults.append(FakeResponse(429, json={}, headers={"Retry-After": "3"}))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=2).fetch()
    assert waits == [3.0]
    assert result.scope_errors == []
    assert len(result.offers) == 22


def test_429_retry_after_beyond_the_bound_fails_at_once(fake: RunpodFake) -> None:
    fake.catalogue_faults.append(FakeResponse(429, json={}, headers={"Retry-After": "120"}))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3, max_retry_after_s=30).fetch()
    assert waits == []
    _failed_whole(result, "rate_limited")
    assert result.scope_errors[0].retry_after_s == 120.0


def test_5xx_is_retried_with_backoff(fake: RunpodFake) -> None:
    fake.catalogue_faults += [FakeResponse(503, json={}), FakeResponse(500, json={})]
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3).fetch()
    assert waits == [0.01, 0.02]
    assert result.scope_errors == []


# ---------------------------------------------------------- one data centre failing


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (FakeResponse(delay_s=1.0, json={}), "timeout"),
        (FakeResponse(500, json={"errors": [{"message": "internal"}]}), "unavailable"),
        (FakeResponse(429, json={}, headers={"Retry-After": "90"}), "rate_limited"),
        (FakeResponse(body=b"not json at all"), "malformed"),
        (FakeResponse(json={"data": {"gpuTypes": [{"id": H100}] * 80}}, truncate=True), "any"),
        (FakeResponse(drop=True), "unavailable"),
        (gql_error("Something went wrong", "INTERNAL_SERVER_ERROR"), "unavailable"),
        (gql_error("API key is invalid", "UNAUTHENTICATED"), "auth_failed"),
    ],
    ids=[
        "timeout",
        "5xx",
        "429-too-long",
        "malformed",
        "truncated",
        "dropped",
        "graphql-200",
        "graphql-auth",
    ],
)
def test_one_data_centre_failing_leaves_the_others(
    fake: RunpodFake, response: FakeResponse, code: str
) -> None:
    fake.dc_faults["EU-RO-1"] = [response]
    result = adapter(fake.url).fetch()
    (err,) = result.scope_errors
    assert err.scope == Scope("runpod", "EU-RO-1")
    if code == "any":
        assert err.code in ("unavailable", "malformed")
    else:
        assert err.code == code, err.message
    assert SECRET not in err.message
    assert Scope("runpod", "EU-RO-1") not in result.scopes_ok
    assert {s.region for s in result.scopes_ok} == {"US-TX-3", "EUR-IS-1", "EU-XX-9"}
    assert {o.region for o in result.offers} == {"US-TX-3", "EUR-IS-1", "EU-XX-9"}
    assert len(result.offers) == 12


def test_data_centre_429_with_short_retry_after_is_retried(fake: RunpodFake) -> None:
    fake.dc_faults["US-TX-3"] = [FakeResponse(429, json={}, headers={"Retry-After": "2"})]
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=2).fetch()
    assert waits == [2.0]
    assert result.scope_errors == []
    assert any(o.region == "US-TX-3" for o in result.offers)


def test_secrets_never_in_logs_or_errors(
    fake: RunpodFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.dc_faults["EU-RO-1"] = [
        FakeResponse(503, json={"errors": [{"message": f"upstream saw Bearer {SECRET}"}]})
    ] * 3
    fake.dc_faults["US-TX-3"] = [FakeResponse(400, json={"errors": [{"message": SECRET}]})]
    result = adapter(fake.url, max_attempts=3).fetch()
    assert {e.scope.region for e in result.scope_errors} == {"EU-RO-1", "US-TX-3"}
    assert "rp_live" not in caplog.text and SECRET not in caplog.text
    assert "provider.retry" in caplog.text  # the retries were logged, redacted
    for e in result.scope_errors:
        assert SECRET not in e.message
    for o in result.offers:
        assert SECRET not in repr(o.raw)


# ------------------------------------------------------------------------ ingest level


def _ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="runpod").events)


def _offer(engine: Engine, offer_key: str) -> tuple[bool, str]:
    with Session(engine) as session:
        row = session.exec(select(StoredOffer).where(StoredOffer.key == offer_key)).one()
        return row.active, row.availability


def test_ingest_degrades_recovers_and_tracks_stock(engine: Engine, fake: RunpodFake) -> None:
    clock = Clock()
    runpod = adapter(fake.url, clock=clock)
    first = runpod.fetch()
    assert _ingest(engine, first) == {"offer_appeared": 22}

    # EU-RO-1 fails: its 10 offers stay active and untouched; the provider is degraded.
    clock.tick()
    fake.dc_faults["EU-RO-1"] = [FakeResponse(500, json={})]
    assert _ingest(engine, runpod.fetch()) == {"provider_degraded": 1}
    ro = key("EU-RO-1", H100, 8, "secure", "on_demand")
    assert _offer(engine, ro) == (True, "available")

    # Next good poll: recovered; stock moved in two places.
    clock.tick()
    fake.stock[("EUR-IS-1", RTX4090, "secure")] = Stock("Low", 16, [1, 2, 4, 8])
    fake.stock[("US-TX-3", A100, "secure")] = Stock(None, 0, [])  # sold out there now
    events = _ingest(engine, runpod.fetch())
    assert events == {"provider_recovered": 1, "availability_changed": 6 + 2}
    assert _offer(engine, ro) == (True, "available")
    assert _offer(engine, key("EUR-IS-1", RTX4090, 2, "secure", "spot")) == (True, "limited")
    assert _offer(engine, key("US-TX-3", A100, 1, "secure", "on_demand")) == (True, "unavailable")
    with Session(engine) as session:
        kinds = [e.type for e in session.exec(select(MarketEvent)).all()]
    assert "offer_withdrawn" not in kinds

    # The A100 leaves the catalogue altogether: that is a withdrawal.
    clock.tick()
    fake.gpus = [g for g in fake.gpus if g.id != A100]
    assert _ingest(engine, runpod.fetch()) == {"offer_withdrawn": 2}
