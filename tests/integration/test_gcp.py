"""The GCP adapter against a fake Compute Engine + Cloud Billing Catalog over real sockets.

The real `google.cloud.compute_v1` clients (REST transport) and the adapter's httpx billing
client talk to `tests/fakes/gcp_fake.py`; prices asserted here are recomputed in the test from
the fixture's SKU numbers, never copied from the adapter.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from decimal import Decimal as D
from pathlib import Path
from typing import Any

import google.oauth2.credentials
import pytest
from google.auth.credentials import AnonymousCredentials, Credentials
from sqlalchemy import Engine
from sqlmodel import Session, select

from broker.config import GcpSettings, Settings
from broker.db import session_scope
from broker.domain import Availability, Market, Offer, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll, unrecognised_of
from providers.base import ProviderDisabled, get_provider_class
from providers.gcp import Gcp
from tests.fakes.gcp_fake import (
    ACCELERATOR_DESCRIPTIONS,
    EMPTY,
    NL,
    PRICES,
    T4_VWS,
    T4_VWS_SKUS,
    US,
    GcpFake,
    accelerator_type,
    google_error,
    region,
    sample_catalogue,
    sample_skus,
    sku,
)
from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse, closed_port

PROJECT = "broker-test"
API_KEY = "AIzaSyTest-billing-key-0123456789abcdef"
REFRESH_TOKEN = "1//0g-refresh-token-secret-0123456789"
CLIENT_SECRET = "GOCSPX-client-secret-0123456789"
ACCESS_TOKEN = "ya29.fake-access-token-0123456789"
Q = Decimal("0.000001")


def usd(key: str) -> Decimal:
    """A fixture SKU price as GCP defines Money: units + nanos / 10^9."""
    units, nanos = PRICES[key]
    return Decimal(units) + Decimal(nanos) / Decimal(1_000_000_000)


def per_hour(key: str) -> Decimal:
    """A fixture per-GiB-month price (Local SSD) per GiB-hour: GCP's 730-hour month."""
    return usd(key) / 730


@pytest.fixture
def gcp(fake_http: FakeHttpServer) -> GcpFake:
    return GcpFake(fake_http, sample_catalogue(PROJECT))


def make(
    fake: GcpFake,
    waits: list[float] | None = None,
    credentials: Credentials | None = None,
    **overrides: Any,
) -> Gcp:
    fields: dict[str, Any] = {
        "project": PROJECT,
        "api_endpoint": fake.url,
        "billing_endpoint": fake.url,
        "timeout_s": 1.0,  # room for a loaded CI machine; the faults below wait 3 s
        "max_attempts": 1,
        "max_retry_after_s": 5.0,
        "attachable_gpus": True,  # the fixture's N1 GPUs; the default is off (see below)
    }
    fields.update(overrides)
    settings = GcpSettings(**fields)
    return Gcp(
        settings,
        project=PROJECT,
        credentials=credentials or anonymous(),
        sleep=(waits if waits is not None else []).append,
        backoff_base_s=0.01,
        page_size=4,  # small pages: every test walks several pages of every list
        sku_page_size=10,
    )


def anonymous() -> Credentials:
    """google-auth's AnonymousCredentials (its constructor is untyped)."""
    factory: Callable[[], Credentials] = AnonymousCredentials
    return factory()


def by_key(result: PollResult) -> dict[str, Offer]:
    keys = [o.key for o in result.offers]
    assert len(keys) == len(set(keys)), "duplicate offer keys"
    return {o.key: o for o in result.offers}


def regions_ok(result: PollResult) -> set[str | None]:
    return {s.region for s in result.scopes_ok}


def only_error(result: PollResult) -> tuple[Scope, str, str]:
    (err,) = result.scope_errors
    return err.scope, err.code, err.message


def fail_page(server: FakeHttpServer, path: str, token: str, response: FakeResponse) -> None:
    """Answer the request for page `token` of `path` with `response`, the others as before."""
    normal = server.routes[("GET", path)]
    assert callable(normal)

    def answer(req: FakeRequest) -> FakeResponse:
        if req.param("pageToken") == token:
            return response
        return normal(req)

    server.route("GET", path, answer)


# ------------------------------------------------------------------ what it returns


def test_a3_highgpu_8g_is_priced_as_gpus_plus_cores_plus_ram_plus_local_ssd(gcp: GcpFake) -> None:
    result = make(gcp).fetch()
    assert result.scope_errors == []
    assert regions_ok(result) == {US, NL, EMPTY}
    offers = by_key(result)

    us = offers["gcp/us-central1/us-central1-a/a3-highgpu-8g/on_demand"]
    assert (us.gpu_model, us.gpu_family, us.form_factor) == ("H100-SXM", "H100", "SXM")
    assert us.gpu_count == Decimal(8)
    assert us.gpu_memory_gb == Decimal(80)
    assert (us.vcpus, us.memory_gb) == (Decimal(208), Decimal(1872))
    assert (us.country, us.jurisdiction, us.continent) == ("US", "US", "North America")
    assert us.availability == Availability.UNKNOWN and us.available_count is None
    gib = Decimal(1916928) / 1024
    # a3-highgpu-8g comes with 6,000 GiB of Local SSD, billed per GiB-month (730 hours).
    expected = (
        usd("h100_us") * 8
        + usd("a3_core_us") * 208
        + usd("a3_ram_us") * gib
        + per_hour("lssd_us") * 6000
    )
    assert us.price_per_hour == expected.quantize(Q) == Decimal("43.724088")
    assert us.price_per_gpu_hour == (expected / 8).quantize(Q)
    assert us.raw["skus"]["gpu"].startswith("0A1B-H100-0001=")
    assert us.raw["skus"]["local_ssd"].startswith("0A1B-LSSD-0001=")
    assert us.raw["local_ssd_gib"] == 6000

    spot = offers["gcp/us-central1/us-central1-a/a3-highgpu-8g/spot"]
    expected_spot = (
        usd("h100_us_spot") * 8
        + usd("a3_core_us_spot") * 208
        + usd("a3_ram_us_spot") * gib
        + per_hour("lssd_us_spot") * 6000
    )
    assert spot.market == Market.SPOT
    assert spot.price_per_hour == expected_spot.quantize(Q)

    nl = offers["gcp/europe-west4/europe-west4-a/a3-highgpu-8g/on_demand"]
    assert (nl.country, nl.jurisdiction, nl.continent) == ("NL", "EU", "Europe")
    expected_nl = (
        usd("h100_nl") * 8
        + usd("a3_core_nl") * 208
        + usd("a3_ram_nl") * gib
        + per_hour("lssd_nl") * 6000
    )
    assert nl.price_per_hour == expected_nl.quantize(Q)


def test_bundled_local_ssd_is_in_the_price_of_a2_ultra_and_a3_mega(gcp: GcpFake) -> None:
    offers = by_key(make(gcp).fetch())
    a2u = offers["gcp/us-central1/us-central1-a/a2-ultragpu-1g/on_demand"]
    assert (a2u.gpu_model, a2u.gpu_count, a2u.vcpus, a2u.memory_gb) == (
        "A100-80GB",
        D(1),
        D(12),
        D(170),
    )
    assert a2u.price_per_hour == (
        usd("a100_80gb_us")
        + usd("a2_core_us") * 12
        + usd("a2_ram_us") * 170
        + per_hour("lssd_us") * 375
    ).quantize(Q)
    assert a2u.raw["local_ssd_gib"] == 375
    mega = offers["gcp/us-central1/us-central1-a/a3-megagpu-8g/on_demand"]
    assert mega.raw["local_ssd_gib"] == 6000
    # Types without bundled Local SSD carry none.
    a2 = offers["gcp/us-central1/us-central1-a/a2-highgpu-1g/on_demand"]
    assert "local_ssd" not in a2.raw["skus"] and "local_ssd_gib" not in a2.raw

    # No Local SSD SKU in a region: the machine is not priced there, never priced without it.
    gcp.catalogue.skus = [s for s in gcp.catalogue.skus if s["skuId"] != "0A1B-LSSD-0003"]
    result = make(gcp).fetch()
    assert "gcp/europe-west4/europe-west4-a/a3-highgpu-8g/on_demand" not in by_key(result)
    assert "gcp/europe-west4/europe-west4-a/a3-highgpu-8g/spot" in by_key(result)
    assert any("a3-highgpu-8g" in n and "local_ssd" in n for n in result.notes)


def test_other_gpu_families_and_the_b200_slice(gcp: GcpFake) -> None:
    result = make(gcp).fetch()
    offers = by_key(result)
    a2 = offers["gcp/us-central1/us-central1-a/a2-highgpu-1g/on_demand"]
    assert (a2.gpu_model, a2.gpu_count, a2.vcpus, a2.memory_gb) == ("A100", D(1), D(12), D(85))
    assert a2.price_per_hour == (
        usd("a100_us") + usd("a2_core_us") * 12 + usd("a2_ram_us") * 85
    ).quantize(Q)
    g2 = offers["gcp/us-central1/us-central1-b/g2-standard-4/on_demand"]
    assert (g2.gpu_model, g2.gpu_count) == ("L4", D(1))
    assert g2.price_per_hour == (
        usd("l4_us") + usd("g2_core_us") * 4 + usd("g2_ram_us") * 16
    ).quantize(Q)
    # A4: the "(1 gpu slice)" SKU carries the machine; no core/RAM SKUs are added.
    a4 = offers["gcp/us-central1/us-central1-a/a4-highgpu-8g/spot"]
    assert (a4.gpu_model, a4.gpu_count) == ("B200", D(8))
    assert a4.price_per_hour == (usd("b200_slice_us_spot") * 8).quantize(Q) == Decimal("25.776")
    assert set(a4.raw["skus"]) == {"gpu_slice"}
    # No spot SKU for L4 in the fixture: no spot offer, counted.
    assert "gcp/us-central1/us-central1-b/g2-standard-4/spot" not in offers
    assert result.skipped["no_price:spot"] >= 1


def test_a3_mega_is_billed_on_a3plus_host_skus_not_a3_high_ones(gcp: GcpFake) -> None:
    offers = by_key(make(gcp).fetch())
    mega = offers["gcp/us-central1/us-central1-a/a3-megagpu-8g/on_demand"]
    assert mega.gpu_model == "H100-SXM"
    assert mega.price_per_hour == (
        usd("h100_mega_us") * 8
        + usd("a3plus_core_us") * 208
        + usd("a3plus_ram_us") * 1872
        + per_hour("lssd_us") * 6000
    ).quantize(Q)
    assert mega.raw["skus"]["core"].startswith("0A1B-A3PC-0001=")
    assert mega.raw["skus"]["ram"].startswith("0A1B-A3PR-0001=")
    # A3 High stays on the A3 SKUs.
    high = offers["gcp/us-central1/us-central1-a/a3-highgpu-8g/on_demand"]
    assert high.raw["skus"]["core"].startswith("0A1B-A3CR-0001=")


def test_a3_ultra_h200_is_priced_from_h200_and_a3ultra_skus(gcp: GcpFake) -> None:
    offers = by_key(make(gcp).fetch())
    ultra = offers["gcp/us-central1/us-central1-a/a3-ultragpu-8g/spot"]
    assert (ultra.gpu_model, ultra.gpu_count, ultra.gpu_memory_gb) == ("H200", D(8), D(141))
    gib = Decimal(3022848) / 1024
    assert ultra.price_per_hour == (
        usd("h200_us_spot") * 8
        + usd("a3ultra_core_us_spot") * 224
        + usd("a3ultra_ram_us_spot") * gib
    ).quantize(Q)
    assert ultra.raw["skus"]["gpu"].startswith("0A1B-H200-0002=")
    assert ultra.raw["skus"]["core"].startswith("0A1B-A3UC-0002=")


def test_g4_rtx_pro_6000_is_priced_from_the_rtx_6000_96gb_sku(gcp: GcpFake) -> None:
    offers = by_key(make(gcp).fetch())
    g4 = offers["gcp/us-central1/us-central1-a/g4-standard-48/on_demand"]
    assert (g4.gpu_model, g4.gpu_family, g4.gpu_count, g4.gpu_memory_gb) == (
        "RTXPRO6000S",
        "RTXPRO6000",
        D(1),
        D(96),
    )
    assert (g4.vcpus, g4.memory_gb) == (D(48), D(180))
    assert g4.price_per_hour == (
        usd("rtx6000_us") + usd("g4_core_us") * 48 + usd("g4_ram_us") * 180
    ).quantize(Q)
    spot = offers["gcp/us-central1/us-central1-a/g4-standard-48/spot"]
    assert spot.price_per_hour == (
        usd("rtx6000_us_spot") + usd("g4_core_us_spot") * 48 + usd("g4_ram_us_spot") * 180
    ).quantize(Q)
    assert spot.raw["skus"]["gpu"].startswith("0A1B-RTX6-0002=")


def test_a_spot_sku_tagged_on_demand_prices_the_spot_offer(gcp: GcpFake) -> None:
    # "Spot Preemptible A4 Nvidia B200 (1 gpu slice)" comes with usageType OnDemand: read as
    # on demand it would make the on-demand B200 price ambiguous and leave spot unpriced.
    tagged = next(s for s in gcp.catalogue.skus if s["skuId"] == "0A1B-B200-0002")
    assert tagged["category"]["usageType"] == "OnDemand"
    result = make(gcp).fetch()
    offers = by_key(result)
    spot = offers["gcp/us-central1/us-central1-a/a4-highgpu-8g/spot"]
    assert spot.raw["skus"]["gpu_slice"].startswith("0A1B-B200-0002=")
    assert spot.price_per_hour == (usd("b200_slice_us_spot") * 8).quantize(Q)
    assert result.skipped.get("ambiguous_price", 0) == 0


def test_markets_gcp_does_not_sell_give_no_offer(gcp: GcpFake) -> None:
    # cloud.google.com/compute/docs/accelerator-optimized-machines#consumption_option_
    # availability_by_machine_type: no on-demand A3 High 1g/2g/4g, A3 Ultra, A4 (the table
    # broker/data/markets.csv); their on-demand SKUs exist, and would price an offer.
    result = make(gcp).fetch()
    offers = by_key(result)
    zone = "gcp/us-central1/us-central1-a"
    for instance_type in ("a3-highgpu-1g", "a3-ultragpu-8g", "a4-highgpu-8g"):
        assert f"{zone}/{instance_type}/on_demand" not in offers, instance_type
        assert f"{zone}/{instance_type}/spot" in offers, instance_type
    assert result.skipped["not_sold:on_demand"] == 3
    # Sold on demand where the table says nothing against it.
    assert f"{zone}/a3-highgpu-8g/on_demand" in offers
    assert f"{zone}/a3-megagpu-8g/on_demand" in offers


def test_n1_attachable_gpus_are_offered_per_gpu_without_a_host(gcp: GcpFake) -> None:
    result = make(gcp).fetch()
    offers = by_key(result)
    t4 = offers["gcp/us-central1/us-central1-a/nvidia-tesla-t4/on_demand"]
    assert (t4.gpu_model, t4.gpu_count, t4.vcpus, t4.memory_gb) == ("T4", D(1), None, None)
    assert t4.price_per_hour == usd("t4_us").quantize(Q)
    assert t4.raw["pricing"] == "gpu_only"
    assert t4.raw["max_per_instance"] == 4
    t4_spot = offers["gcp/us-central1/us-central1-a/nvidia-tesla-t4/spot"]
    assert t4_spot.price_per_hour == usd("t4_us_spot").quantize(Q)
    assert offers["gcp/europe-west4/europe-west4-a/nvidia-tesla-t4/on_demand"].price_per_hour == (
        usd("t4_nl").quantize(Q)
    )
    # V100 is listed but has no SKU in the fixture: skipped, never priced from elsewhere.
    assert not any("nvidia-tesla-v100" in k for k in offers)
    assert result.skipped["no_price:on_demand"] >= 1
    # Built-in GPUs (H100, L4 ...) are never offered on their own.
    assert not any(
        k.endswith(("/nvidia-h100-80gb/on_demand", "/nvidia-l4/on_demand")) for k in offers
    )

    assert GcpSettings().attachable_gpus is False  # default: whole machines only
    off = by_key(make(gcp, attachable_gpus=False).fetch())
    assert not any("nvidia-tesla-t4" in k for k in off)
    assert "gcp/us-central1/us-central1-a/a3-highgpu-8g/on_demand" in off


def test_gpu_quotas_per_region_and_market(gcp: GcpFake) -> None:
    result = make(gcp).fetch()
    quotas = {(q.region, q.name): q for q in result.quotas}
    h100 = quotas[(US, "NVIDIA_H100_GPUS")]
    assert (h100.unit, h100.limit, h100.usage, h100.headroom) == ("gpus", D(16), D(8), D(8))
    assert h100.market == Market.ON_DEMAND
    assert h100.instance_types == {"a3-highgpu-8g", "a3-highgpu-1g"}
    spot = quotas[(US, "PREEMPTIBLE_NVIDIA_H100_GPUS")]
    assert (spot.market, spot.limit, spot.instance_types) == (
        Market.SPOT,
        D(64),
        frozenset({"a3-highgpu-8g", "a3-highgpu-1g"}),
    )
    assert quotas[(US, "NVIDIA_H100_MEGA_GPUS")].instance_types == {"a3-megagpu-8g"}
    assert quotas[(US, "NVIDIA_A100_GPUS")].instance_types == {"a2-highgpu-1g"}
    # The 80 GB quota lands on the 80 GB type only.
    assert quotas[(US, "NVIDIA_A100_80GB_GPUS")].instance_types == {"a2-ultragpu-1g"}
    assert quotas[(US, "NVIDIA_T4_GPUS")].instance_types == {"nvidia-tesla-t4"}
    assert quotas[(US, "COMMITTED_NVIDIA_T4_GPUS")].market == Market.RESERVED
    assert quotas[(NL, "PREEMPTIBLE_NVIDIA_T4_GPUS")].usage == 2
    # Not GPU quotas, or not a region's: left out.
    assert (US, "CPUS") not in quotas and (US, "GPUS_ALL_REGIONS") not in quotas
    assert not any(q.region == EMPTY for q in result.quotas)


def test_every_page_is_read_and_the_filter_is_sent(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    result = make(gcp).fetch()
    assert result.scope_errors == []
    machine_requests = fake_http.requests_to(gcp.machines_path)
    sku_requests = fake_http.requests_to(gcp.skus_path)
    # 12 GPU machine types in pages of 4, 50 SKUs in pages of 10.
    assert len(gcp.catalogue.skus) == 50
    assert [r.param("pageToken") for r in machine_requests] == [None, "tok4", "tok8"]
    assert [r.param("pageToken") for r in sku_requests] == [
        None,
        *(f"s{n}" for n in (10, 20, 30, 40)),
    ]
    assert {r.param("filter") for r in machine_requests} == {'name eq "(a[0-9]+[a-z]*|g[0-9]+)-.*"'}
    assert {r.param("currencyCode") for r in sku_requests} == {"USD"}
    # The last page's types are there (us-central1-b's G2 is on page 3 of 3).
    assert "gcp/us-central1/us-central1-b/g2-standard-4/on_demand" in by_key(result)
    # Without a filter the fake returns n1/n2 types too: they carry no GPU and add nothing.
    unfiltered = make(gcp, machine_type_filter="").fetch()
    assert set(by_key(unfiltered)) == set(by_key(result))


def test_ambiguous_price_unknown_region_and_down_region(gcp: GcpFake) -> None:
    cat = gcp.catalogue
    # A second, different on-demand H100 price for the Americas: ambiguous, no guess.
    cat.skus.append(
        sku(
            "0A1B-H100-0099",
            "Nvidia H100 80GB GPU running in Americas",
            "GPU",
            "OnDemand",
            [US],
            "9",
            0,
        )
    )
    # A region the broker's region table does not know.
    cat.zones.append("us-future9-a")
    cat.accelerator_types["us-future9-a"] = [
        a for a in cat.accelerator_types[f"{US}-b"] if a["name"] == "nvidia-tesla-t4"
    ]
    cat.regions["us-future9"] = region(PROJECT, "us-future9", ["us-future9-a"])
    cat.regions[NL]["status"] = "DOWN"
    gcp.add_region_route("us-future9")
    cat.skus.append(
        sku(
            "0A1B-T4GP-0099",
            "Nvidia Tesla T4 GPU running in Future",
            "GPU",
            "OnDemand",
            ["us-future9"],
            "0",
            360000000,
        )
    )

    result = make(gcp).fetch()
    offers = by_key(result)
    assert result.scope_errors == []
    # a3-highgpu-8g on demand (-1g is not sold on demand: counted as not_sold, not priced).
    assert result.skipped["ambiguous_price"] == 1
    assert any("a3-highgpu-8g" in n and "0A1B-H100-0099" in n for n in result.notes)
    assert "gcp/us-central1/us-central1-a/a3-highgpu-8g/on_demand" not in offers
    assert "gcp/us-central1/us-central1-a/a3-highgpu-8g/spot" in offers  # spot unaffected
    assert result.skipped["no_machine_type"] == 1  # nvidia-l4-vws: no G2 vWS type polled
    future = offers["gcp/us-future9/us-future9-a/nvidia-tesla-t4/on_demand"]
    assert (future.country, future.jurisdiction, future.continent) == (None, None, None)
    assert future.price_per_hour == Decimal("0.36")
    assert any("us-future9" in n and "regions.csv" in n for n in result.notes)
    down = offers["gcp/europe-west4/europe-west4-a/a3-highgpu-8g/on_demand"]
    assert down.availability == Availability.UNAVAILABLE


def test_unknown_gpu_and_unknown_region_are_kept_without_model_or_location(gcp: GcpFake) -> None:
    cat = gcp.catalogue
    vws = accelerator_type(PROJECT, f"{US}-b", T4_VWS, *ACCELERATOR_DESCRIPTIONS[T4_VWS])
    # nvidia-tesla-t4-vws, which the GPU catalogue does not know, beside the T4 in us-central1-b.
    cat.accelerator_types[f"{US}-b"].append(vws)
    cat.skus += sample_skus(T4_VWS_SKUS)
    cat.regions[US]["quotas"].append({"metric": "NVIDIA_T4_VWS_GPUS", "limit": 2.0, "usage": 0.0})
    # A region the region table does not know, selling both T4s (on demand only).
    cat.zones.append("us-future9-a")
    cat.accelerator_types["us-future9-a"] = [
        accelerator_type(PROJECT, "us-future9-a", n, *ACCELERATOR_DESCRIPTIONS[n])
        for n in ("nvidia-tesla-t4", T4_VWS)
    ]
    cat.regions["us-future9"] = region(PROJECT, "us-future9", ["us-future9-a"])
    gcp.add_region_route("us-future9")
    for sku_id, words, nanos in (
        ("0A1B-T4GP-0099", "", 360000000),
        ("0A1B-T4VW-0099", " Virtual Workstation", 560000000),
    ):
        cat.skus.append(
            sku(sku_id, f"Nvidia Tesla T4{words} GPU running in Future", "GPU", "OnDemand",
                ["us-future9"], "0", nanos)
        )  # fmt: skip

    result = make(gcp).fetch()
    assert result.scope_errors == []
    offers = by_key(result)
    # Priced from its own SKUs, per GPU, as any attachable GPU is.
    for key, price in (
        (f"gcp/{US}/{US}-b/{T4_VWS}/on_demand", usd("t4_vws_us")),
        (f"gcp/{US}/{US}-b/{T4_VWS}/spot", usd("t4_vws_us_spot")),
        (f"gcp/us-future9/us-future9-a/{T4_VWS}/on_demand", Decimal("0.56")),
    ):
        offer = offers[key]
        assert (offer.gpu_model, offer.gpu_name_raw) == (None, T4_VWS)
        assert (offer.gpu_family, offer.gpu_vendor, offer.accelerator_kind) == (None, None, None)
        assert (offer.gpu_count, offer.gpu_memory_gb) == (Decimal(1), None)
        assert offer.price_per_hour == price
        assert offer.raw["pricing"] == "gpu_only"
    assert offers[f"gcp/{US}/{US}-b/{T4_VWS}/on_demand"].country == "US"
    t4 = offers["gcp/us-future9/us-future9-a/nvidia-tesla-t4/on_demand"]
    assert (t4.gpu_model, t4.price_per_hour) == ("T4", Decimal("0.36"))
    assert (t4.country, t4.jurisdiction, t4.continent) == (None, None, None)
    assert offers[f"gcp/us-future9/us-future9-a/{T4_VWS}/on_demand"].country is None

    assert "unknown_gpu" not in result.skipped
    assert any(T4_VWS in n and "not in the GPU catalogue" in n for n in result.notes)
    assert unrecognised_of(result.offers) == {
        "gcp": {"regions": {"us-future9": 2}, "gpu_names": {T4_VWS: 3}}
    }
    # The vWS quota names the kept type.
    quotas = {(q.region, q.name): q for q in result.quotas}
    vws_quota = quotas[(US, "NVIDIA_T4_VWS_GPUS")]
    assert vws_quota.instance_types == frozenset({T4_VWS})


def test_regions_setting_limits_scopes_and_skips_regions_without_gpus(
    gcp: GcpFake, fake_http: FakeHttpServer
) -> None:
    result = make(gcp, regions=[NL, EMPTY]).fetch()
    assert regions_ok(result) == {NL, EMPTY}
    assert {o.region for o in result.offers} == {NL}
    assert fake_http.requests_to(gcp.region_path(US)) == []
    # me-west1 has zones but no GPU: covered without a regions.get.
    assert fake_http.requests_to(gcp.region_path(EMPTY)) == []


# ------------------------------------------------------------------ faults


def test_timeout_in_one_region_fails_only_that_region(
    gcp: GcpFake, fake_http: FakeHttpServer
) -> None:
    fake_http.fail("GET", gcp.region_path(NL), FakeResponse(json={}, delay_s=3.0))
    result = make(gcp).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("gcp", NL), "timeout")
    assert "regions.get europe-west4" in message
    assert regions_ok(result) == {US, EMPTY}
    assert {o.region for o in result.offers} == {US}
    assert {q.region for q in result.quotas} == {US}


def test_timeout_on_the_price_list_fails_the_poll(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", gcp.skus_path, FakeResponse(json={"skus": []}, delay_s=3.0))
    result = make(gcp).fetch()
    assert only_error(result)[:2] == (Scope("gcp"), "timeout")
    assert result.offers == () and result.scopes_ok == ()


def test_connection_refused(gcp: GcpFake) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    endpoints: list[dict[str, Any]] = [{"api_endpoint": dead}, {"billing_endpoint": dead}]
    for overrides in endpoints:
        result = make(gcp, **overrides).fetch()
        scope, code, message = only_error(result)
        assert (scope, code) == (Scope("gcp"), "unavailable")
        assert "connection failed" in message
        assert result.offers == ()


def test_5xx_is_retried_with_backoff_then_succeeds(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    busy = google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
    fake_http.fail("GET", gcp.machines_path, busy, busy)
    fake_http.fail("GET", gcp.region_path(US), google_error(500, "INTERNAL", "Internal error"))
    waits: list[float] = []
    result = make(gcp, waits, max_attempts=3).fetch()
    assert result.scope_errors == []
    assert "gcp/us-central1/us-central1-a/a3-highgpu-8g/on_demand" in by_key(result)
    assert sorted(waits) == [0.01, 0.01, 0.02]


def test_5xx_that_persists_fails_the_poll(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    busy = google_error(503, "UNAVAILABLE", "The service is currently unavailable.")
    fake_http.fail("GET", gcp.machines_path, busy, busy)
    waits: list[float] = []
    result = make(gcp, waits, max_attempts=2).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("gcp"), "unavailable")
    assert "machineTypes.aggregatedList: HTTP 503" in message
    assert "currently unavailable" in message
    assert waits == [0.01]


def test_429_retry_after_is_honoured(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    slow_down = google_error(
        429, "RESOURCE_EXHAUSTED", "Quota exceeded", headers={"Retry-After": "2"}
    )
    fake_http.fail("GET", gcp.region_path(US), slow_down)
    waits: list[float] = []
    result = make(gcp, waits, max_attempts=2).fetch()
    assert result.scope_errors == []
    assert waits == [2.0]
    assert len(fake_http.requests_to(gcp.region_path(US))) == 2


def test_429_retry_after_beyond_the_bound_fails_the_region(
    gcp: GcpFake, fake_http: FakeHttpServer
) -> None:
    slow_down = google_error(
        429, "RESOURCE_EXHAUSTED", "Quota exceeded", headers={"Retry-After": "120"}
    )
    fake_http.fail("GET", gcp.region_path(US), slow_down)
    waits: list[float] = []
    result = make(gcp, waits, max_attempts=3).fetch()
    (err,) = result.scope_errors
    assert (err.scope, err.code, err.retry_after_s) == (Scope("gcp", US), "rate_limited", 120.0)
    assert waits == []
    assert regions_ok(result) == {NL, EMPTY}


def test_403_rate_limit_exceeded_is_throttling_not_auth(
    gcp: GcpFake, fake_http: FakeHttpServer
) -> None:
    throttled = google_error(
        403, "PERMISSION_DENIED", "Rate Limit Exceeded", reason="rateLimitExceeded"
    )
    fake_http.fail("GET", gcp.accelerators_path, throttled)
    result = make(gcp).fetch()
    assert only_error(result)[:2] == (Scope("gcp"), "rate_limited")


def test_malformed_json(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", gcp.accelerators_path, FakeResponse(body=b'{"items": {"zones/'))
    result = make(gcp).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("gcp"), "malformed")
    assert "acceleratorTypes.aggregatedList" in message

    fake_http.fail("GET", gcp.skus_path, FakeResponse(body=b"<html>oops</html>"))
    assert only_error(make(gcp).fetch())[:2] == (Scope("gcp"), "malformed")

    fake_http.fail("GET", gcp.skus_path, FakeResponse(json={"skus": {"not": "a list"}}))
    assert only_error(make(gcp).fetch())[:2] == (Scope("gcp"), "malformed")


def test_truncated_body(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    fake_http.fail(
        "GET", gcp.region_path(US), FakeResponse(json=gcp.catalogue.regions[US], truncate=True)
    )
    result = make(gcp).fetch()
    assert only_error(result)[:2] == (Scope("gcp", US), "unavailable")
    assert regions_ok(result) == {NL, EMPTY}

    fake_http.fail(
        "GET", gcp.skus_path, FakeResponse(json={"skus": gcp.catalogue.skus}, truncate=True)
    )
    assert only_error(make(gcp).fetch())[:2] == (Scope("gcp"), "unavailable")


@pytest.mark.parametrize("which", ["machines", "skus"])
def test_a_page_failing_mid_pagination_fails_the_whole_poll(
    gcp: GcpFake, fake_http: FakeHttpServer, which: str
) -> None:
    path, token = (gcp.machines_path, "tok4") if which == "machines" else (gcp.skus_path, "s20")
    fail_page(fake_http, path, token, google_error(503, "UNAVAILABLE", "backend error"))
    result = make(gcp).fetch()
    scope, code, _ = only_error(result)
    assert (scope, code) == (Scope("gcp"), "unavailable")
    assert result.offers == () and result.scopes_ok == () and result.quotas == ()
    tokens = [r.param("pageToken") for r in fake_http.requests_to(path)]
    assert tokens[0] is None and token in tokens  # page 1 was read, then page n failed


def test_one_region_failing_while_others_work(gcp: GcpFake, fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", gcp.region_path(NL), google_error(503, "UNAVAILABLE", "try again"))
    result = make(gcp).fetch()
    assert only_error(result)[:2] == (Scope("gcp", NL), "unavailable")
    assert regions_ok(result) == {US, EMPTY}
    assert "gcp/us-central1/us-central1-a/a3-highgpu-8g/on_demand" in by_key(result)
    assert not any(o.region == NL for o in result.offers)


def test_an_unreachable_zone_fails_its_region(gcp: GcpFake) -> None:
    gcp.catalogue.unreachable_zones.add(f"{NL}-b")
    result = make(gcp).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("gcp", NL), "unavailable")
    assert "europe-west4-b" in message and "UNREACHABLE" in message
    assert regions_ok(result) == {US, EMPTY}


def _oauth_credentials(fake: GcpFake, *, expired: bool) -> google.oauth2.credentials.Credentials:
    factory: Callable[..., google.oauth2.credentials.Credentials] = (
        google.oauth2.credentials.Credentials
    )
    return factory(
        token=ACCESS_TOKEN,
        refresh_token=REFRESH_TOKEN,
        client_id="123-test.apps.googleusercontent.com",
        client_secret=CLIENT_SECRET,
        token_uri=f"{fake.url}/token",
        expiry=(datetime.now(UTC) + timedelta(hours=-1 if expired else 1)).replace(tzinfo=None),
    )


def _assert_no_secrets(result: PollResult, caplog: pytest.LogCaptureFixture) -> None:
    texts = [caplog.text] + [e.message for e in result.scope_errors]
    for secret in (API_KEY, REFRESH_TOKEN, CLIENT_SECRET, ACCESS_TOKEN):
        assert all(secret not in text for text in texts), secret


def test_expired_credentials_that_cannot_refresh(
    gcp: GcpFake, fake_http: FakeHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_http.route(
        "POST",
        gcp.token_path,
        FakeResponse(
            400,
            json={
                "error": "invalid_grant",
                "error_description": "Token has been expired or revoked.",
            },
        ),
    )
    result = make(gcp, credentials=_oauth_credentials(gcp, expired=True)).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("gcp"), "auth_failed")
    assert "invalid_grant" in message
    assert len(fake_http.requests_to(gcp.token_path)) == 1  # one refresh, not one per thread
    _assert_no_secrets(result, caplog)


def test_rejected_credentials(
    gcp: GcpFake, fake_http: FakeHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_http.route(
        "POST",
        gcp.token_path,
        {"access_token": ACCESS_TOKEN, "expires_in": 3599, "token_type": "Bearer"},
    )
    # A valid-looking token the API rejects (401): google-auth refreshes and retries, then gives up.
    unauthenticated = google_error(
        401, "UNAUTHENTICATED", "Request had invalid authentication credentials."
    )
    fake_http.fail("GET", gcp.accelerators_path, *[unauthenticated] * 3)
    result = make(gcp, credentials=_oauth_credentials(gcp, expired=False)).fetch()
    assert only_error(result)[:2] == (Scope("gcp"), "auth_failed")
    _assert_no_secrets(result, caplog)

    # A permission missing in one region only.
    denied = google_error(403, "PERMISSION_DENIED", "Required 'compute.regions.get' permission")
    fake_http.fail("GET", gcp.region_path(US), denied)
    result = make(gcp, credentials=_oauth_credentials(gcp, expired=False)).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("gcp", US), "auth_failed")
    assert "compute.regions.get" in message
    assert regions_ok(result) == {NL, EMPTY}
    _assert_no_secrets(result, caplog)


def test_billing_api_key_is_sent_but_never_shown(
    gcp: GcpFake, fake_http: FakeHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = make(gcp, billing_api_key=API_KEY).fetch()
    assert result.scope_errors == []
    assert {r.param("key") for r in fake_http.requests_to(gcp.skus_path)} == {API_KEY}
    assert all(r.param("key") is None for r in fake_http.requests if r.path.startswith("/compute"))

    echo = google_error(403, "PERMISSION_DENIED", f"API key not valid: key={API_KEY}")
    echo.json["error"]["message"] = f"API key {API_KEY} not valid. Please pass a valid API key."
    fake_http.fail("GET", gcp.skus_path, echo)
    result = make(gcp, billing_api_key=API_KEY).fetch()
    assert only_error(result)[:2] == (Scope("gcp"), "auth_failed")
    _assert_no_secrets(result, caplog)


# ------------------------------------------------------------------ from_settings


def test_from_settings_without_project_is_disabled() -> None:
    with pytest.raises(ProviderDisabled, match="BROKER_GCP__PROJECT") as info:
        Gcp.from_settings(Settings(), lambda: datetime.now(UTC))
    assert "GOOGLE_APPLICATION_CREDENTIALS" in str(info.value)
    assert "\n" not in str(info.value)


def test_from_settings_without_adc_is_disabled(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "missing.json"))
    monkeypatch.setenv("BROKER_GCP__PROJECT", PROJECT)
    with pytest.raises(ProviderDisabled, match="GOOGLE_APPLICATION_CREDENTIALS") as info:
        Gcp.from_settings(Settings(), lambda: datetime.now(UTC))
    assert "\n" not in str(info.value)


def test_from_settings_with_adc_polls_with_a_bearer_token(
    gcp: GcpFake,
    fake_http: FakeHttpServer,
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    # gcloud's ADC file. google-auth always refreshes such credentials at Google's token
    # endpoint (it ignores a token_uri in the file), so the file carries a current access
    # token: nothing leaves 127.0.0.1.
    adc = tmp_path / "adc.json"
    adc.write_text(
        json.dumps(
            {
                "type": "authorized_user",
                "client_id": "123-test.apps.googleusercontent.com",
                "client_secret": CLIENT_SECRET,
                "refresh_token": REFRESH_TOKEN,
                "token": ACCESS_TOKEN,
                "expiry": (datetime.now(UTC) + timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
        )
    )
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    for name, value in {
        "PROJECT": PROJECT,
        "API_ENDPOINT": gcp.url,
        "BILLING_ENDPOINT": gcp.url,
        "TIMEOUT_S": "2",
        "MAX_ATTEMPTS": "1",
        "REGIONS": f"{US},{NL}",
    }.items():
        monkeypatch.setenv(f"BROKER_GCP__{name}", value)
    adapter = get_provider_class("gcp").from_settings(Settings(), lambda: datetime.now(UTC))
    assert isinstance(adapter, Gcp)
    result = adapter.fetch()
    assert result.scope_errors == []
    assert regions_ok(result) == {US, NL}
    assert "gcp/europe-west4/europe-west4-a/a3-highgpu-8g/spot" in by_key(result)
    api = [r for r in fake_http.requests if r.method == "GET"]
    assert api and all(r.headers.get("authorization") == f"Bearer {ACCESS_TOKEN}" for r in api)
    assert fake_http.requests_to(gcp.token_path) == []
    _assert_no_secrets(result, caplog)


# ------------------------------------------------------------------ ingest


def _ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="gcp").events)


def _active(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return {o.key for o in session.exec(select(StoredOffer)).all() if o.active}


@pytest.fixture
def clock_steps() -> Iterator[list[datetime]]:
    yield [datetime(2026, 6, 1, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(10)]


def test_ingest_degrades_and_recovers_without_withdrawing_unread_offers(
    engine: Engine, gcp: GcpFake, fake_http: FakeHttpServer, clock_steps: list[datetime]
) -> None:
    times = iter(clock_steps)

    def poll() -> PollResult:
        adapter = make(gcp)
        adapter.clock = lambda: next(times)
        return adapter.fetch()

    first = poll()
    assert _ingest(engine, first) == {"offer_appeared": len(first.offers)}
    nl_t4 = "gcp/europe-west4/europe-west4-a/nvidia-tesla-t4/on_demand"
    us_g2_b = "gcp/us-central1/us-central1-b/g2-standard-4/on_demand"
    assert {nl_t4, us_g2_b} <= _active(engine)

    # Poll 2: europe-west4 cannot be read, and the catalogue changed in both regions.
    cat = gcp.catalogue
    saved_nl = cat.accelerator_types[f"{NL}-a"]
    saved_us_b = cat.machine_types[f"{US}-b"]
    cat.accelerator_types[f"{NL}-a"] = [a for a in saved_nl if a["name"] != "nvidia-tesla-t4"]
    cat.machine_types[f"{US}-b"] = [m for m in saved_us_b if not m["name"].startswith("g2-")]
    fake_http.fail("GET", gcp.region_path(NL), google_error(503, "UNAVAILABLE", "try again"))
    second = poll()
    assert only_error(second)[:2] == (Scope("gcp", NL), "unavailable")
    events = _ingest(engine, second)
    assert events == {"offer_withdrawn": 1, "provider_degraded": 1}
    active = _active(engine)
    assert nl_t4 in active  # not read this time: left alone
    assert us_g2_b not in active  # read and gone: withdrawn

    # Poll 3: everything readable again, the NL T4 is back in the catalogue.
    cat.accelerator_types[f"{NL}-a"] = saved_nl
    third = poll()
    assert third.scope_errors == []
    assert _ingest(engine, third) == {"provider_recovered": 1}
    assert nl_t4 in _active(engine)
    with Session(engine) as session:
        types = [e.type for e in session.exec(select(MarketEvent)).all() if e.offer_key is None]
    assert types == ["provider_degraded", "provider_recovered"]


def test_registered_under_its_module_name() -> None:
    assert get_provider_class("gcp") is Gcp
