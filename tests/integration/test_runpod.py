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
from broker.offers import ingest_poll, unrecognised_of
from providers.base import ProviderDisabled
from providers.runpod import Runpod, check_cuda_version, cloud_of, graphql_error, stock_query
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
    DataCenter("US-OR-1", "US-OR-1", "United States", listed=False),  # not listed: skipped
]
#: Community cloud is addressed by country; PL is not in broker/data/regions.csv.
COUNTRIES: list[str | None] = ["SE", "IS", "PL", None]
PLACES = ["EU-RO-1", "US-TX-3", "EUR-IS-1", "EU-XX-9", "SE", "IS", "PL"]


def stock() -> dict[tuple[str, str, str], Stock]:
    return {
        ("EU-RO-1", H100, "secure"): Stock("High", 8, [1, 2, 4, 8], 2.69, 1.75),
        ("SE", H100, "community"): Stock("Low", 3, [1, 2], 2.39, 1.5),
        ("SE", MYSTERY, "community"): Stock("High", 4, [1]),  # a GPU the catalogue lacks
        ("US-TX-3", H100, "secure"): Stock(None, 0, []),  # no stock: no offer
        ("US-TX-3", A100, "secure"): Stock("Medium", None, None),  # 1-GPU pods only
        ("EUR-IS-1", RTX4090, "secure"): Stock("High", 16, [1, 2, 4, 8]),  # max 4 secure
        ("IS", RTX4090, "community"): Stock("Scarce", 1, [1]),  # unknown status
        ("EU-XX-9", H100, "secure"): Stock("High", 1, [1]),
        ("PL", RTX4090, "community"): Stock("High", 2, [1, 2]),
        ("US-OR-1", H100, "secure"): Stock("High", 8, [1]),  # never asked: not listed
    }


#: Offers the fixture makes (see `test_offers_per_place_cloud_pod_size_and_market`).
N_OFFERS = 28


@pytest.fixture
def fake(fake_http: FakeHttpServer) -> RunpodFake:
    return RunpodFake(
        fake_http, gpus(), DCS, stock(), api_key=SECRET, country_codes=list(COUNTRIES)
    )


def key(place: str, gpu: str, n: int, cloud: str, market: str) -> str:
    return f"runpod/{place}/{gpu} x{n} {cloud}/{market}"


class CudaSettings(RunpodSettings):
    """`RunpodSettings` with the CUDA floor field the adapter reads (see providers/runpod.py)."""

    min_cuda_version: str | None = None


# ------------------------------------------------------------------------------ parsing


def test_offers_per_place_cloud_pod_size_and_market(fake: RunpodFake) -> None:
    result = adapter(fake.url).fetch()
    assert result.scope_errors == []
    assert sorted(s.region or "" for s in result.scopes_ok) == sorted(PLACES)
    by_key = {o.key: o for o in result.offers}
    expected = (
        [key("EU-RO-1", H100, n, "secure", m) for n in (1, 2, 4, 8) for m in ("on_demand", "spot")]
        + [key("SE", H100, n, "community", "on_demand") for n in (1, 2)]
        + [key("SE", MYSTERY, 1, "community", m) for m in ("on_demand", "spot")]
        + [key("US-TX-3", A100, 1, "secure", m) for m in ("on_demand", "spot")]
        + [
            key("EUR-IS-1", RTX4090, n, "secure", m)
            for n in (1, 2, 4)
            for m in ("on_demand", "spot")
        ]
        + [key("IS", RTX4090, 1, "community", m) for m in ("on_demand", "spot")]
        + [key("EU-XX-9", H100, 1, "secure", m) for m in ("on_demand", "spot")]
        + [key("PL", RTX4090, n, "community", m) for n in (1, 2) for m in ("on_demand", "spot")]
    )
    assert sorted(by_key) == sorted(expected)
    assert len(result.offers) == len(by_key) == N_OFFERS

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
    assert (h100x8.raw["dataCenterId"], h100x8.raw["gpuCount"]) == ("EU-RO-1", 8)

    spot = by_key[key("EU-RO-1", H100, 2, "secure", "spot")]
    assert spot.market is Market.SPOT
    assert spot.price_per_hour == Decimal(str(H100_SECURE_SPOT)) * 2
    assert spot.available_count == 4

    community = by_key[key("SE", H100, 2, "community", "on_demand")]
    assert community.price_per_hour == Decimal(str(H100_COMMUNITY)) * 2
    assert (community.availability, community.available_count) == (Availability.LIMITED, 1)
    assert (community.country, community.jurisdiction, community.continent) == (
        "SE",
        "EU",
        "Europe",
    )
    assert community.raw["countryCode"] == "SE"

    a100 = by_key[key("US-TX-3", A100, 1, "secure", "on_demand")]
    assert (a100.gpu_model, a100.price_per_hour) == ("A100-80GB", Decimal(str(A100_SECURE)))
    assert (a100.country, a100.jurisdiction) == ("US", "US")
    assert (a100.availability, a100.available_count) == (Availability.LIMITED, None)

    rtx = by_key[key("EUR-IS-1", RTX4090, 4, "secure", "on_demand")]
    assert (rtx.gpu_model, rtx.price_per_hour) == ("RTX4090", Decimal(str(RTX_SECURE)) * 4)
    assert (rtx.country, rtx.jurisdiction) == ("IS", "EU")
    odd = by_key[key("IS", RTX4090, 1, "community", "spot")]
    assert odd.price_per_hour == Decimal(str(RTX_COMMUNITY_SPOT))
    assert odd.availability is Availability.UNKNOWN
    assert any("unknown stockStatus 'Scarce'" in n for n in result.notes)

    # H100 community spot has no price (counted once); US-OR-1 is not listed.
    assert result.skipped == {"no_price": 1, "unlisted_data_center": 1}


def test_unknown_gpu_and_unknown_place_are_kept_without_model_or_location(
    fake: RunpodFake,
) -> None:
    result = adapter(fake.url).fetch()
    by_key = {o.key: o for o in result.offers}
    mystery = by_key[key("SE", MYSTERY, 1, "community", "on_demand")]
    assert (mystery.gpu_model, mystery.gpu_name_raw) == (None, MYSTERY)
    assert (mystery.gpu_family, mystery.gpu_vendor, mystery.accelerator_kind) == (None, None, None)
    assert mystery.gpu_memory_gb == Decimal(24)  # memoryInGb, as RunPod states it
    assert mystery.price_per_hour == Decimal("0.22")
    assert (mystery.country, mystery.jurisdiction) == ("SE", "EU")
    for place, cloud, n in (("EU-XX-9", "secure", 1), ("PL", "community", 2)):
        offer = by_key[key(place, H100 if cloud == "secure" else RTX4090, n, cloud, "on_demand")]
        assert (offer.country, offer.jurisdiction, offer.continent) == (None, None, None)
        assert offer.gpu_model is not None
        assert any(f"{place!r} not in broker/data/regions.csv" in t for t in result.notes)
    assert "unknown_gpu" not in result.skipped
    assert unrecognised_of(result.offers) == {
        "runpod": {"regions": {"EU-XX-9": 2, "PL": 4}, "gpu_names": {MYSTERY: 2}}
    }


def test_stock_is_read_for_each_pod_size(fake: RunpodFake) -> None:
    # The 1-GPU answer says nothing about larger pods (no availableGpuCounts); the 8-GPU
    # pods are in stock, the 2- and 4-GPU ones are not.
    fake.stock = {("EU-RO-1", H100, "secure"): Stock("High", 16, [1, 8])}
    result = adapter(fake.url, data_centers=["EU-RO-1"]).fetch()
    sizes = sorted({o.gpu_count for o in result.offers})
    assert sizes == [Decimal(1), Decimal(8)]
    (query,) = fake.stock_queries()
    for n in range(1, 9):
        assert f"c{n}: lowestPrice(input: {{gpuCount: {n}, " in query
    assert "gpuCount: 9" not in query  # no type sells more than 8 in secure cloud


def test_community_cloud_is_asked_by_country_and_secure_cloud_by_data_centre(
    fake: RunpodFake,
) -> None:
    adapter(fake.url).fetch()
    queries = fake.stock_queries()
    assert len(queries) == len(PLACES)
    for dc in ("EU-RO-1", "US-TX-3", "EUR-IS-1", "EU-XX-9"):
        (q,) = [q for q in queries if f'"{dc}"' in q]
        assert f'dataCenterId: "{dc}", secureCloud: true' in q
        assert "countryCode" not in q
    for country in ("SE", "IS", "PL"):
        (q,) = [q for q in queries if f'"{country}"' in q]
        assert f'countryCode: "{country}", secureCloud: false' in q
        assert "dataCenterId" not in q
    assert not any('"US-OR-1"' in q for q in queries)  # not listed
    assert cloud_of("SE") == "community" and cloud_of("EU-RO-1") == "secure"


def test_capacity_by_presence_names_every_sold_type_up_to_its_max(fake: RunpodFake) -> None:
    presence = adapter(fake.url).fetch().capacity_by_presence
    types = {t for p, t in presence if p == "runpod"}
    assert f"{H100} x8 secure" in types and f"{H100} x8 community" in types
    assert f"{RTX4090} x4 secure" in types and f"{RTX4090} x5 secure" not in types
    assert f"{RTX4090} x8 community" in types
    assert f"{A100} x1 community" not in types  # not sold in community cloud
    assert f"{MYSTERY} x1 community" in types  # unknown to the catalogue, still sold
    assert len(types) == 8 * 2 + 8 + 4 + 8 + 8


def test_requests_carry_the_key_and_one_stock_query_per_place(fake: RunpodFake) -> None:
    runpod = adapter(fake.url, max_concurrency=1)  # JsonApi.calls is not atomic across threads
    runpod.fetch()
    reqs = fake.requests()
    assert len(reqs) == 1 + len(PLACES) == runpod.calls
    assert {r.headers["authorization"] for r in reqs} == {f"Bearer {SECRET}"}
    counts = list(range(1, 9))
    assert sorted(fake.stock_queries()) == sorted(stock_query(p, counts) for p in PLACES)
    assert 'dataCenterId: "EU-RO-1", secureCloud: true' in stock_query("EU-RO-1")
    assert 'countryCode: "SE", secureCloud: false' in stock_query("SE")
    for bad in ('EU" } evil', "", "-EU"):
        with pytest.raises(ValueError):
            stock_query(bad)
    with pytest.raises(ValueError):
        stock_query("EU-RO-1", [])


def test_cuda_floor_is_sent_with_every_stock_query(fake: RunpodFake) -> None:
    fake.stock[("EUR-IS-1", RTX4090, "secure")] = Stock("High", 16, [1, 2, 4], cuda="12.4")
    fake.stock[("EU-RO-1", H100, "secure")] = Stock("High", 8, [1], cuda="12.8")
    settings = CudaSettings(
        base_url=fake.url, timeout_s=0.3, max_attempts=1, min_cuda_version="12.8"
    )
    result = Runpod(SECRET, settings, clock=Clock()).fetch()
    queries = fake.stock_queries()
    assert queries and all('minCudaVersion: "12.8"' in q for q in queries)
    regions_with_offers = {o.region for o in result.offers}
    assert "EU-RO-1" in regions_with_offers  # hosts run CUDA 12.8
    assert "EUR-IS-1" not in regions_with_offers  # hosts stop at CUDA 12.4
    assert {o.raw["minCudaVersion"] for o in result.offers} == {"12.8"}
    # Without the setting (an older RunpodSettings), no floor is sent.
    fake.queries.clear()
    plain = adapter(fake.url).fetch()
    assert not any("minCudaVersion" in q for q in fake.stock_queries())
    assert any(o.region == "EUR-IS-1" for o in plain.offers)


def test_a_malformed_cuda_floor_disables_the_adapter_with_the_setting_to_fix() -> None:
    class WithFloor(Settings):
        runpod: CudaSettings = CudaSettings(api_key=SECRET, min_cuda_version="twelve")

    with pytest.raises(ProviderDisabled, match="BROKER_RUNPOD__MIN_CUDA_VERSION"):
        Runpod.from_settings(WithFloor(), Clock())
    assert check_cuda_version(" 12.8 ") == "12.8"
    assert check_cuda_version(None) is None


def test_data_centres_setting_limits_the_fan_out(
    fake: RunpodFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_RUNPOD__API_KEY", SECRET)
    monkeypatch.setenv("BROKER_RUNPOD__BASE_URL", fake.url)
    monkeypatch.setenv("BROKER_RUNPOD__DATA_CENTERS", "EU-RO-1, US-TX-3, SE, US-OR-1")
    settings = Settings()
    assert settings.runpod.data_centers == ["EU-RO-1", "US-TX-3", "SE", "US-OR-1"]
    result = Runpod.from_settings(settings, Clock()).fetch()
    assert [s.region for s in result.scopes_ok] == ["EU-RO-1", "US-TX-3", "SE"]
    assert {o.region for o in result.offers} == {"EU-RO-1", "US-TX-3", "SE"}
    assert result.skipped["unlisted_data_center"] == 1  # US-OR-1, named but not listed


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
    assert len(result.offers) == N_OFFERS


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
    others = set(PLACES) - {"EU-RO-1"}
    assert {s.region for s in result.scopes_ok} == others
    assert {o.region for o in result.offers} == others
    assert len(result.offers) == N_OFFERS - 8


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
    assert _ingest(engine, first) == {"offer_appeared": N_OFFERS}

    # EU-RO-1 fails: its 8 offers stay active and untouched; the provider is degraded.
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
