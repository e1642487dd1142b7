"""The Lambda Cloud adapter against a fake Lambda API over a real socket (httpx → 127.0.0.1).

Lambda has one call (`GET /instance-types`, no pagination) covering every region, so the
"one region failing" and "page failing mid-pagination" faults do not exist here: any fault
fails the one scope, `Scope("lambda_cloud")`, and nothing is withdrawn or sold out.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.config import LambdaCloudSettings, Settings
from broker.db import session_scope
from broker.domain import Availability, Market, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll, unrecognised_of
from providers.base import ProviderDisabled, get_provider_class
from providers.lambda_cloud import LambdaCloud, gpu_of
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port, serve
from tests.fakes.lambda_cloud_api import PATH, LambdaFake, LambdaType, catalogue, error_body

SECRET = "secret_lambda-0123456789abcdef"
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)


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
) -> LambdaCloud:
    opts: dict[str, Any] = {"timeout_s": 0.5, "max_attempts": 1, "base_url": url}
    opts.update(settings)
    return LambdaCloud(
        key,
        LambdaCloudSettings(**opts),
        clock=clock or Clock(),
        sleep=(waits if waits is not None else []).append,
        backoff_base_s=0.01,
    )


def small_market() -> list[LambdaType]:
    return [
        LambdaType(
            "gpu_8x_h100_sxm5",
            "H100 (80 GB SXM5)",
            3192,
            8,
            208,
            1800,
            22528,
            ["us-east-1", "europe-central-1"],
        ),
        LambdaType("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 329, 1, 26, 200, 1024, ["us-west-3"]),
        LambdaType("gpu_1x_a10", "A10 (24 GB PCIe)", 129, 1, 30, 200, 1400, []),  # sold out
        LambdaType(
            "gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", 2232, 8, 240, 1800, 19456, ["us-east-1"]
        ),
        LambdaType("gpu_1x_a100", "A100 (40 GB PCIe)", 199, 1, 30, 200, 512, ["asia-south-1"]),
        LambdaType("gpu_1x_gh200", "GH200 (96 GB)", 229, 1, 64, 432, 4096, ["us-east-3"]),
        LambdaType(
            "gpu_8x_b200_sxm6", "B200 (180 GB SXM6)", 5352, 8, 208, 1800, 22528, ["me-west-1"]
        ),
        LambdaType("gpu_1x_a6000", "A6000 (48 GB)", 109, 1, 14, 100, 512, ["australia-east-1"]),
        LambdaType("gpu_1x_rtx6000", "RTX 6000 (24 GB)", 69, 1, 14, 46, 512, ["us-south-1"]),
        LambdaType("gpu_8x_v100", "Tesla V100 (16 GB)", 632, 8, 92, 448, 5952, ["us-west-2"]),
        LambdaType("cpu_4x_general", None, 20, 0, 4, 16, 100, ["us-east-1"]),
        LambdaType("gpu_1x_mystery", "Mystery (12 GB)", 99, 1, 8, 32, 100, ["us-east-1"]),
    ]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeHttpServer]:
    """One server for the module (its shutdown costs half a second), reset per test."""
    yield from serve()


@pytest.fixture
def fake_http(shared_server: FakeHttpServer) -> FakeHttpServer:
    shared_server.routes.clear()
    shared_server.faults.clear()
    shared_server.requests.clear()
    return shared_server


@pytest.fixture
def fake(fake_http: FakeHttpServer) -> LambdaFake:
    return LambdaFake(fake_http, small_market(), api_key=SECRET)


# ------------------------------------------------------------------------------ parsing


def test_offers_from_the_documented_answer(fake: LambdaFake) -> None:
    result = adapter(fake.url).fetch()
    assert result.scope_errors == []
    assert list(result.scopes_ok) == [Scope("lambda_cloud")]
    by_key = {o.key: o for o in result.offers}
    assert sorted(by_key) == sorted(
        [
            "lambda_cloud/us-east-1/gpu_8x_h100_sxm5/on_demand",
            "lambda_cloud/europe-central-1/gpu_8x_h100_sxm5/on_demand",
            "lambda_cloud/us-west-3/gpu_1x_h100_pcie/on_demand",
            "lambda_cloud/us-east-1/gpu_8x_a100_80gb_sxm4/on_demand",
            "lambda_cloud/asia-south-1/gpu_1x_a100/on_demand",
            "lambda_cloud/us-east-3/gpu_1x_gh200/on_demand",
            "lambda_cloud/me-west-1/gpu_8x_b200_sxm6/on_demand",
            "lambda_cloud/australia-east-1/gpu_1x_a6000/on_demand",
            "lambda_cloud/us-south-1/gpu_1x_rtx6000/on_demand",
            "lambda_cloud/us-west-2/gpu_8x_v100/on_demand",
            "lambda_cloud/us-east-1/gpu_1x_mystery/on_demand",
        ]
    )
    h100 = by_key["lambda_cloud/europe-central-1/gpu_8x_h100_sxm5/on_demand"]
    assert (h100.gpu_model, h100.form_factor, h100.gpu_family) == ("H100-SXM", "SXM", "H100")
    assert h100.gpu_count == Decimal(8)
    assert h100.price_per_hour == Decimal("31.92")  # 3192 cents per instance-hour
    assert h100.price_per_gpu_hour == Decimal(3192) / 100 / 8  # 3.99
    assert h100.market == Market.ON_DEMAND
    assert (h100.availability, h100.available_count) == (Availability.AVAILABLE, None)
    assert (h100.country, h100.jurisdiction, h100.continent) == ("DE", "EU", "Europe")
    assert (h100.vcpus, h100.memory_gb, h100.gpu_memory_gb) == (
        Decimal(208),
        Decimal(1800),
        Decimal(80),
    )
    assert h100.raw["price_cents_per_hour"] == 3192
    assert SECRET not in repr(h100.raw)
    us = by_key["lambda_cloud/us-east-1/gpu_8x_h100_sxm5/on_demand"]
    assert (us.country, us.jurisdiction) == ("US", "US")
    israel = by_key["lambda_cloud/me-west-1/gpu_8x_b200_sxm6/on_demand"]
    assert (israel.gpu_model, israel.country, israel.jurisdiction) == ("B200", "IL", "IL")
    assert israel.price_per_gpu_hour == Decimal(5352) / 100 / 8
    models = {o.instance_type: o.gpu_model for o in result.offers}
    assert models == {
        "gpu_8x_h100_sxm5": "H100-SXM",
        "gpu_1x_h100_pcie": "H100-PCIe",
        "gpu_8x_a100_80gb_sxm4": "A100-80GB",
        "gpu_1x_a100": "A100",
        "gpu_1x_gh200": "GH200",
        "gpu_8x_b200_sxm6": "B200",
        "gpu_1x_a6000": "RTXA6000",
        "gpu_1x_rtx6000": "RTX6000",
        "gpu_8x_v100": "V100",
        "gpu_1x_mystery": None,  # kept, see test_unknown_gpu_and_unknown_region_are_kept
    }
    assert dict(result.skipped) == {"no_gpu": 1}
    # Every listed type is sold (sold-out ones included): missing regions mean "no capacity".
    assert result.capacity_by_presence == frozenset(
        ("lambda_cloud", t.name) for t in small_market()
    )
    (req,) = fake.server.requests
    assert (req.method, req.path) == ("GET", PATH)
    assert req.headers["authorization"] == f"Bearer {SECRET}"


def test_every_real_lambda_type_maps_to_its_gpu(fake_http: FakeHttpServer) -> None:
    types = catalogue()
    for t in types:
        t.regions = ["us-east-1"]
    fake = LambdaFake(fake_http, types, api_key=SECRET)
    result = adapter(fake.url).fetch()
    assert dict(result.skipped) == {}
    models = {o.instance_type: (o.gpu_model, o.gpu_count) for o in result.offers}
    expected_model = {
        "a10": "A10",
        "rtx6000": "RTX6000",
        "a6000": "RTXA6000",
        "a100": "A100",
        "a100_sxm4": "A100",
        "a100_80gb_sxm4": "A100-80GB",
        "h100_pcie": "H100-PCIe",
        "h100_sxm5": "H100-SXM",
        "gh200": "GH200",
        "b200_sxm6": "B200",
        "v100": "V100",
        "v100_n": "V100",
    }
    for t in types:
        suffix = t.name.split("_", 2)[2]
        assert models[t.name] == (expected_model[suffix], Decimal(t.gpus)), t.name


@pytest.mark.parametrize(
    ("instance_type", "description", "model", "memory_gb"),
    [
        ("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", "H100-SXM", 80),
        ("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", "H100-PCIe", 80),
        ("gpu_1x_a100", "A100 (40 GB PCIe)", "A100", 40),
        ("gpu_1x_a100", "NVIDIA A100 (80 GB)", "A100-80GB", 80),
        ("gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", "A100-80GB", 80),
        ("gpu_1x_a10", "A10 (24 GB PCIe)", "A10", 24),
        ("gpu_1x_a6000", "A6000 (48 GB)", "RTXA6000", 48),
        ("gpu_1x_gh200", "GH200 (96 GB)", "GH200", 96),
        ("gpu_8x_b200_sxm6", "B200 (180 GB SXM6)", "B200", 180),
        ("gpu_1x_h100_nvl", "H100 (94 GB NVL)", "H100-NVL", 94),
        # NVL is a different product: never dropped to the plain model.
        ("gpu_8x_h200_nvl", "H200 (141 GB NVL)", "H200-NVL", 141),
        # No description: the type name's model words.
        ("gpu_8x_a100_80gb_sxm4", None, "A100-80GB", None),
        ("gpu_2x_h100_sxm5", None, "H100-SXM", None),
        ("gpu_1x_gh200", None, "GH200", None),
    ],
)
def test_gpu_description_mapping(
    instance_type: str, description: str | None, model: str, memory_gb: int | None
) -> None:
    entry, stated = gpu_of(instance_type, description)
    assert entry is not None and entry.name == model
    assert stated == (Decimal(memory_gb) if memory_gb is not None else None)


@pytest.mark.parametrize(
    ("instance_type", "description"),
    [
        ("gpu_1x_mystery", "Mystery (12 GB)"),
        ("gpu_8x_v100_n", None),
    ],
)
def test_unknown_gpus_are_not_guessed(instance_type: str, description: str | None) -> None:
    entry, _ = gpu_of(instance_type, description)
    assert entry is None


def test_unknown_gpu_and_unknown_region_are_kept_without_model_or_location(
    fake_http: FakeHttpServer,
) -> None:
    fake = LambdaFake(
        fake_http,
        [
            LambdaType("gpu_1x_a10", "A10 (24 GB PCIe)", 129, 1, regions=["mars-north-1"]),
            LambdaType("gpu_1x_mystery", "Mystery (12 GB)", 99, 1, 8, 32, 100, ["us-east-1"]),
            LambdaType("gpu_8x_v100_n", None, 632, 8, 92, 448, 5952, ["us-west-2"]),
        ],
        api_key=SECRET,
    )
    result = adapter(fake.url).fetch()
    assert result.scope_errors == []
    assert dict(result.skipped) == {}
    by_type = {o.instance_type: o for o in result.offers}
    place = by_type["gpu_1x_a10"]
    assert (place.region, place.gpu_model) == ("mars-north-1", "A10")
    assert (place.country, place.jurisdiction, place.continent) == (None, None, None)
    assert any("mars-north-1" in n for n in result.notes)
    mystery = by_type["gpu_1x_mystery"]
    assert (mystery.gpu_model, mystery.gpu_name_raw) == (None, "Mystery (12 GB)")
    assert (mystery.gpu_family, mystery.gpu_vendor, mystery.accelerator_kind) == (None, None, None)
    assert mystery.gpu_memory_gb == Decimal(12)  # stated in gpu_description
    assert mystery.price_per_hour == Decimal("0.99")
    assert (mystery.country, mystery.jurisdiction) == ("US", "US")
    nameless = by_type["gpu_8x_v100_n"]  # no gpu_description: the type name stands in
    assert (nameless.gpu_model, nameless.gpu_name_raw) == (None, "gpu_8x_v100_n")
    assert unrecognised_of(result.offers) == {
        "lambda_cloud": {
            "regions": {"mars-north-1": 1},
            "gpu_names": {"Mystery (12 GB)": 1, "gpu_8x_v100_n": 1},
        }
    }


# ------------------------------------------------------------------------------ faults


def assert_failed(result: PollResult, code: str, *fragments: str) -> None:
    assert list(result.offers) == []
    assert list(result.scopes_ok) == []
    (err,) = result.scope_errors
    assert err.scope == Scope("lambda_cloud")
    assert err.code == code, err
    assert SECRET not in err.message
    for fragment in fragments:
        assert fragment in err.message, err.message


def test_timeout(fake: LambdaFake) -> None:
    fake.server.fail("GET", PATH, FakeResponse(delay_s=1.0, json={}))
    assert_failed(adapter(fake.url, timeout_s=0.2).fetch(), "timeout", "0.2s")


def test_connection_refused() -> None:
    result = adapter(f"http://127.0.0.1:{closed_port()}").fetch()
    assert_failed(result, "unavailable", "connection failed")


def test_5xx_with_the_lambda_error_envelope(fake: LambdaFake) -> None:
    fake.server.fail(
        "GET",
        PATH,
        FakeResponse(
            503,
            json=error_body(
                "provider/internal-unavailable", "Upstream provider unavailable", "Retry later"
            ),
        ),
    )
    assert_failed(
        adapter(fake.url).fetch(), "unavailable", "HTTP 503", "provider/internal-unavailable"
    )


def test_5xx_is_retried_then_the_poll_succeeds(fake: LambdaFake) -> None:
    fake.server.fail("GET", PATH, FakeResponse(502, body=b"Bad Gateway"))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3).fetch()
    assert list(result.scope_errors) == []
    assert len(result.offers) == 11
    assert waits == [0.01]
    assert len(fake.server.requests) == 2


def test_429_retry_after_is_honoured(fake: LambdaFake) -> None:
    fake.server.fail(
        "GET",
        PATH,
        FakeResponse(
            429, json=error_body("global/too-many-requests"), headers={"Retry-After": "2"}
        ),
    )
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=2).fetch()
    assert waits == [2.0]
    assert result.scope_errors == []
    assert len(result.offers) == 11


def test_429_retry_after_beyond_the_bound_fails_the_poll(fake: LambdaFake) -> None:
    fake.server.fail("GET", PATH, FakeResponse(429, json={}, headers={"Retry-After": "120"}))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3, max_retry_after_s=30).fetch()
    assert_failed(result, "rate_limited", "429")
    assert result.scope_errors[0].retry_after_s == 120.0
    assert waits == []


def test_malformed_json(fake: LambdaFake) -> None:
    fake.server.fail("GET", PATH, FakeResponse(body=b'{"data": {"gpu_1x_a10": {"instance_'))
    assert_failed(adapter(fake.url).fetch(), "malformed", "not JSON")


def test_truncated_body(fake: LambdaFake) -> None:
    fake.server.fail("GET", PATH, FakeResponse(json={"data": {}}, truncate=True))
    assert_failed(adapter(fake.url).fetch(), "unavailable")


@pytest.mark.parametrize(
    ("body", "fragment"),
    [
        ({"result": []}, "no 'data' object"),
        ({"data": []}, "no 'data' object"),
        ({"data": {"gpu_1x_a10": {"regions_with_capacity_available": []}}}, "instance_type"),
        (
            {
                "data": {
                    "gpu_1x_a10": {
                        "instance_type": {
                            "name": "gpu_1x_a10",
                            "price_cents_per_hour": "cheap",
                            "specs": {"gpus": 1},
                        },
                        "regions_with_capacity_available": [],
                    }
                }
            },
            "price_cents_per_hour",
        ),
        (
            {
                "data": {
                    "gpu_1x_a10": {
                        "instance_type": {
                            "name": "gpu_1x_a10",
                            "price_cents_per_hour": 129,
                            "specs": {"gpus": 1},
                        },
                        "regions_with_capacity_available": ["us-east-1"],
                    }
                }
            },
            "region entry",
        ),
    ],
    ids=["no-data", "data-not-a-map", "no-instance-type", "price-not-a-number", "region-shape"],
)
def test_answer_not_of_the_documented_shape_fails_the_poll(
    fake: LambdaFake, body: dict[str, Any], fragment: str
) -> None:
    fake.server.fail("GET", PATH, FakeResponse(json=body))
    assert_failed(adapter(fake.url).fetch(), "malformed", fragment)


def test_error_envelope_with_status_200_is_mapped_by_its_code(fake: LambdaFake) -> None:
    fake.server.fail(
        "GET", PATH, FakeResponse(json=error_body("provider/internal-unavailable", "later"))
    )
    assert_failed(adapter(fake.url).fetch(), "unavailable", "provider/internal-unavailable")


@pytest.mark.parametrize(
    ("status", "code"), [(401, "global/invalid-api-key"), (403, "global/account-inactive")]
)
def test_expired_or_rejected_key(
    fake: LambdaFake, caplog: pytest.LogCaptureFixture, status: int, code: str
) -> None:
    caplog.set_level(logging.DEBUG)
    # An error text that echoes the key must not carry it any further.
    fake.server.fail(
        "GET",
        PATH,
        FakeResponse(status, json=error_body(code, f"API key {SECRET} was invalid", "new key")),
    )
    result = adapter(fake.url, max_attempts=3).fetch()
    assert_failed(result, "auth_failed", f"HTTP {status}", code)
    assert len(fake.server.requests) == 1  # never retried
    assert SECRET not in caplog.text
    assert SECRET not in " ".join(result.notes)


def test_wrong_key_against_the_fake(fake: LambdaFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    other = "secret_lambda-expired-999999"
    result = adapter(fake.url, key=other).fetch()
    assert_failed(result, "auth_failed", "global/invalid-api-key")
    assert other not in result.scope_errors[0].message
    assert other not in caplog.text
    assert SECRET not in caplog.text


# ------------------------------------------------------------------------------ settings


def test_disabled_without_a_key() -> None:
    with pytest.raises(ProviderDisabled, match="BROKER_LAMBDA_CLOUD__API_KEY"):
        LambdaCloud.from_settings(Settings(), Clock())
    with pytest.raises(ProviderDisabled, match="BROKER_LAMBDA_CLOUD__API_KEY"):
        LambdaCloud.from_settings(Settings(lambda_cloud={"api_key": "  "}), Clock())


def test_from_settings_reads_key_and_base_url_from_the_environment(
    fake: LambdaFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_LAMBDA_CLOUD__API_KEY", SECRET)
    monkeypatch.setenv("BROKER_LAMBDA_CLOUD__BASE_URL", fake.url)
    monkeypatch.setenv("BROKER_LAMBDA_CLOUD__MAX_ATTEMPTS", "1")
    cls = get_provider_class("lambda_cloud")
    assert cls is LambdaCloud
    provider = cls.from_settings(Settings(), Clock())
    result = provider.fetch()
    assert result.scope_errors == []
    assert len(result.offers) == 11


# ------------------------------------------------------------------------------ ingest


def ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="lambda_cloud").events)


def stored(engine: Engine, key: str) -> tuple[bool, str]:
    with Session(engine) as session:
        row = session.exec(select(StoredOffer).where(StoredOffer.key == key)).one()
        return row.active, row.availability


def test_capacity_by_presence_through_the_real_adapter(
    engine: Engine, fake_http: FakeHttpServer
) -> None:
    h100 = LambdaType(
        "gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 3192, 8, regions=["us-east-1", "europe-central-1"]
    )
    a10 = LambdaType("gpu_1x_a10", "A10 (24 GB PCIe)", 129, 1, regions=["us-east-1"])
    fake = LambdaFake(fake_http, [h100, a10], api_key=SECRET)
    clock = Clock()
    lam = adapter(fake.url, clock=clock)
    eu = "lambda_cloud/europe-central-1/gpu_8x_h100_sxm5/on_demand"

    assert ingest(engine, lam.fetch()) == {"offer_appeared": 3}
    # Poll 2: europe-central-1 has no H100 capacity now; the type is still listed.
    clock.tick()
    h100.regions = ["us-east-1"]
    assert ingest(engine, lam.fetch()) == {"availability_changed": 1}
    assert stored(engine, eu) == (True, "unavailable")
    # Poll 3: capacity is back.
    clock.tick()
    h100.regions = ["us-east-1", "europe-central-1"]
    assert ingest(engine, lam.fetch()) == {"availability_changed": 1}
    assert stored(engine, eu) == (True, "available")
    # Poll 4: the A10 type leaves the listing altogether: that is a withdrawal.
    clock.tick()
    fake.types = [h100]
    assert ingest(engine, lam.fetch()) == {"offer_withdrawn": 1}
    assert stored(engine, "lambda_cloud/us-east-1/gpu_1x_a10/on_demand")[0] is False

    with Session(engine) as session:
        events = session.exec(
            select(MarketEvent).where(MarketEvent.offer_key == eu).order_by(col(MarketEvent.id))
        ).all()
    assert [(e.type, (e.after or {}).get("availability")) for e in events] == [
        ("offer_appeared", "available"),
        ("availability_changed", "unavailable"),
        ("availability_changed", "available"),
    ]


def test_failed_poll_keeps_offers_then_recovers(engine: Engine, fake: LambdaFake) -> None:
    clock = Clock()
    lam = adapter(fake.url, clock=clock)
    assert ingest(engine, lam.fetch()) == {"offer_appeared": 11}
    clock.tick()
    fake.server.fail("GET", PATH, FakeResponse(500, json=error_body("global/unknown")))
    assert ingest(engine, lam.fetch()) == {"provider_degraded": 1}
    with Session(engine) as session:
        active = session.exec(
            select(StoredOffer).where(
                StoredOffer.provider == "lambda_cloud",
                col(StoredOffer.active).is_(True),
                StoredOffer.availability == "available",
            )
        ).all()
    assert len(active) == 11  # nothing withdrawn or sold out by a failed poll
    clock.tick()
    assert ingest(engine, lam.fetch()) == {"provider_recovered": 1}
