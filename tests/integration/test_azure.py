"""The Azure adapter against a fake ARM + Retail Prices API over real sockets.

The real `azure-mgmt-compute` client (its pipeline: bearer-token policy, transport) and the
adapter's httpx retail client talk to `tests/fakes/azure_fake.py`; the credential is a tiny
`TokenCredential` (a class with `get_token`), not a mock of our code. Prices asserted here are
recomputed in the test from the fixture's numbers, never copied from the adapter.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from decimal import Decimal as D
from typing import Any

import pytest
from azure.core.credentials import AccessToken
from azure.core.exceptions import ClientAuthenticationError
from sqlalchemy import Engine
from sqlmodel import Session, select

from broker import gpus, sizes
from broker.config import AzureSettings, Settings
from broker.db import session_scope
from broker.domain import Availability, Market, Offer, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll, unrecognised_of
from providers._azure_sizes import GpuSku, accelerator_of
from providers.azure import Azure, PriceRow, classify, retired_series, series_gpu
from providers.base import ProviderDisabled, get_provider_class
from tests.fakes.azure_fake import (
    BR,
    NC_A100,
    NC_H100,
    NC_K80,
    NC_T4,
    ND_GB200,
    ND_H100,
    NL,
    NV_A10,
    NV_A10_WHOLE,
    PRICES,
    SUBSCRIPTION,
    US,
    AzureFake,
    arm_error,
    price,
    sample_catalogue,
    usage,
    vm_sku,
)
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port

TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.fake-arm-access-token.0123456789abcdef"
Q = Decimal("0.000001")


class StaticCredential:
    """A TokenCredential that hands out one token and records the scopes asked for."""

    def __init__(self, token: str = TOKEN) -> None:
        self.token = token
        self.scopes: list[tuple[str, ...]] = []

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        self.scopes.append(scopes)
        return AccessToken(self.token, int(time.time()) + 3600)


class NoCredential:
    """What DefaultAzureCredential does when no credential in its chain works."""

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        raise ClientAuthenticationError(
            message="DefaultAzureCredential failed to retrieve a token from the included "
            "credentials.\nAttempted credentials:\n\tEnvironmentCredential: client_secret="
            "s3cr3t-value rejected (AADSTS7000215)"
        )


def usd(key: str) -> Decimal:
    """A fixture price as the wire writes it (JSON number → its literal)."""
    return Decimal(repr(PRICES[key]))


@pytest.fixture
def azure(fake_http: FakeHttpServer) -> AzureFake:
    return AzureFake(fake_http, sample_catalogue())


def make(
    fake: AzureFake,
    waits: list[float] | None = None,
    credential: Any = None,
    **overrides: Any,
) -> Azure:
    fields: dict[str, Any] = {
        "subscription_id": SUBSCRIPTION,
        "base_url": fake.url,
        "retail_prices_url": fake.prices_url,
        "timeout_s": 1.0,  # room for a loaded CI machine; the faults below wait 3 s
        "max_attempts": 1,
        "max_retry_after_s": 5.0,
        "prices_ttl_s": 0,
    }
    fields.update(overrides)
    return Azure(
        AzureSettings(**fields),
        subscription_id=SUBSCRIPTION,
        credential=credential or StaticCredential(),
        sleep=(waits if waits is not None else []).append,
        backoff_base_s=0.01,
    )


def by_key(result: PollResult) -> dict[str, Offer]:
    keys = [o.key for o in result.offers]
    assert len(keys) == len(set(keys)), "duplicate offer keys"
    return {o.key: o for o in result.offers}


def locations_ok(result: PollResult) -> set[str | None]:
    return {s.region for s in result.scopes_ok}


def only_error(result: PollResult) -> tuple[Scope, str, str]:
    (err,) = result.scope_errors
    return err.scope, err.code, err.message


def key(location: str, sku: str, market: str, term: str | None = None) -> str:
    return f"azure/{location}/{sku}/{market}" + (f"/{term}" if term else "")


# ------------------------------------------------------------------ what it returns


def test_nd96isr_h100_v5_is_eight_h100_sxm_in_us_and_nl(azure: AzureFake) -> None:
    result = make(azure).fetch()
    assert result.scope_errors == []
    assert locations_ok(result) == {US, NL, BR}
    offers = by_key(result)

    us = offers[key(US, ND_H100, "on_demand")]
    assert (us.gpu_model, us.gpu_family, us.form_factor, us.gpu_vendor) == (
        "H100-SXM",
        "H100",
        "SXM",
        "NVIDIA",
    )
    assert us.gpu_count == Decimal(8)
    assert us.gpu_memory_gb == Decimal(80)
    assert (us.vcpus, us.memory_gb, us.interconnect) == (D(96), D(1900), "InfiniBand")
    assert (us.country, us.jurisdiction, us.continent) == ("US", "US", "North America")
    assert us.zone is None
    assert us.availability == Availability.UNKNOWN and us.available_count is None
    assert us.price_per_hour == usd("nd_h100_us") == Decimal("98.32")
    assert us.price_per_gpu_hour == (usd("nd_h100_us") / 8).quantize(Q) == Decimal("12.29")
    # Zone 3 is restricted for this subscription: dropped from the zones, said in raw.
    assert us.raw["zones"] == ["1", "2"] and us.raw["restricted_zones"] == ["3"]
    assert us.raw["family"] == "standardNDSH100v5Family"
    assert us.raw["price"]["meterId"] == "nd-h100-us"

    nl = offers[key(NL, ND_H100, "on_demand")]
    assert (nl.country, nl.jurisdiction, nl.continent) == ("NL", "EU", "Europe")
    assert (nl.gpu_model, nl.gpu_count) == ("H100-SXM", D(8))
    assert nl.price_per_hour == usd("nd_h100_nl")
    assert nl.price_per_gpu_hour == (usd("nd_h100_nl") / 8).quantize(Q)
    assert nl.raw["zones"] == ["1", "2", "3"] and "restricted_zones" not in nl.raw


def test_spot_and_each_reservation_term_are_separate_offers(azure: AzureFake) -> None:
    offers = by_key(make(azure).fetch())
    assert {k for k in offers if k.startswith(f"azure/{US}/{ND_H100}/")} == {
        key(US, ND_H100, "on_demand"),
        key(US, ND_H100, "spot"),
        key(US, ND_H100, "reserved", "P1Y"),
        key(US, ND_H100, "reserved", "P3Y"),
    }
    spot = offers[key(US, ND_H100, "spot")]
    assert spot.market == Market.SPOT
    assert spot.price_per_hour == usd("nd_h100_us_spot")
    assert spot.price_per_gpu_hour == (usd("nd_h100_us_spot") / 8).quantize(Q)
    assert spot.min_duration_hours is None and spot.offering_id is None

    # A reservation row's retailPrice is the whole term's price: spread over its hours.
    one = offers[key(US, ND_H100, "reserved", "P1Y")]
    assert (one.market, one.offering_id, one.min_duration_hours) == (Market.RESERVED, "P1Y", 8760)
    assert one.price_per_hour == (usd("nd_h100_us_1y") / 8760).quantize(Q) == Decimal("61.301370")
    assert one.price_per_gpu_hour == (one.price_per_hour / 8).quantize(Q)
    assert one.upfront_fee is None
    assert one.raw["price"]["term_total_usd"] == "537000.0"
    three = offers[key(US, ND_H100, "reserved", "P3Y")]
    assert (three.offering_id, three.min_duration_hours) == ("P3Y", 26280)
    assert three.price_per_hour == (usd("nd_h100_us_3y") / 26280).quantize(Q)
    # Cheaper per hour the longer the term, and both below on demand: sane arithmetic.
    assert (
        three.price_per_hour
        < one.price_per_hour
        < offers[key(US, ND_H100, "on_demand")].price_per_hour
    )

    nl_one = offers[key(NL, ND_H100, "reserved", "P1Y")]
    assert nl_one.price_per_hour == (usd("nd_h100_nl_1y") / 8760).quantize(Q)
    assert key(NL, ND_H100, "reserved", "P3Y") not in offers  # no such row in NL


def test_windows_low_priority_and_devtest_meters_never_price_an_offer(azure: AzureFake) -> None:
    offers = by_key(make(azure).fetch())
    # Windows (106.18), Low Priority (19.66) and Dev/Test (90.0) rows exist for this size.
    assert offers[key(US, ND_H100, "on_demand")].price_per_hour == usd("nd_h100_us")
    assert offers[key(US, ND_H100, "spot")].price_per_hour == usd("nd_h100_us_spot")
    # The NC H100 Windows product is named "... Srs Win": ignored as well.
    assert offers[key(US, NC_H100, "on_demand")].price_per_hour == usd("nc_h100_us")


def test_partial_gpus_restricted_sizes_and_other_series(azure: AzureFake) -> None:
    offers = by_key(make(azure).fetch())
    a10 = offers[key(US, NV_A10, "on_demand")]
    # The API says GPUs=1; the size table (Microsoft's size page) says 1/6 of an A10, 4 GB.
    entry = sizes.fraction("azure", NV_A10)
    assert entry is not None and entry.memory_gb is not None
    assert (a10.gpu_model, a10.gpu_count, a10.gpu_memory_gb) == (
        entry.gpu_model,
        entry.fraction,
        entry.memory_gb,
    )
    assert a10.gpu_count < 1 and entry.memory_gb < D(gpus.CATALOGUE["A10"].memory_gb or 0)
    assert a10.raw["GPUs"] == "1"
    assert a10.raw["size_table"] == {"gpus": str(entry.fraction), "memory_gb": str(entry.memory_gb)}
    assert a10.price_per_hour == usd("nv_a10_us")
    assert a10.price_per_gpu_hour == (usd("nv_a10_us") / entry.fraction).quantize(Q)

    # NotAvailableForSubscription for the whole location: offered, but unavailable.
    nc = offers[key(US, NC_H100, "on_demand")]
    assert (nc.gpu_model, nc.form_factor, nc.gpu_memory_gb) == ("H100-NVL", "NVL", D(94))
    assert nc.availability == Availability.UNAVAILABLE
    assert nc.raw["restriction"] == "NotAvailableForSubscription"
    assert offers[key(US, NC_H100, "spot")].availability == Availability.UNAVAILABLE
    assert nc.interconnect is None

    a100 = offers[key(US, NC_A100, "on_demand")]
    assert (a100.gpu_model, a100.gpu_count, a100.gpu_memory_gb) == ("A100-80GB", D(1), D(80))
    assert a100.price_per_hour == usd("nc_a100_us")
    assert offers[key(NL, NC_A100, "on_demand")].price_per_hour == usd("nc_a100_nl")


def test_a_partial_size_costs_per_gpu_about_what_a_whole_gpu_of_its_family_costs(
    azure: AzureFake,
) -> None:
    offers = by_key(make(azure).fetch())
    part = offers[key(US, NV_A10, "on_demand")]
    whole = offers[key(US, NV_A10_WHOLE, "on_demand")]
    assert (whole.gpu_count, whole.gpu_memory_gb) == (D(1), D(24))
    assert whole.price_per_gpu_hour == usd("nv_a10_whole_us")
    # eastus, market data set: 0.454 / 0.167 = 2.72 per A10 against 3.2 for the whole A10;
    # Azure prices the 1/6 and 1/3 slices ~15% below the whole GPU (tests/unit/test_sizes.py).
    # Without the size table the slice would cost 0.454 per "GPU", a seventh of that.
    ratio = part.price_per_gpu_hour / whole.price_per_gpu_hour
    assert D("0.8") <= ratio <= D("1.2"), ratio


def test_a_size_without_a_gpus_capability_gets_its_gpus_from_the_size_table(
    azure: AzureFake,
) -> None:
    result = make(azure).fetch()
    gb200 = by_key(result)[key(US, ND_GB200, "on_demand")]
    entry = sizes.fraction("azure", ND_GB200)
    assert entry is not None and entry.memory_gb is None
    assert gb200.raw["GPUs"] is None  # ARM lists the size without a GPUs capability
    assert (gb200.gpu_model, gb200.gpu_count) == ("GB200", entry.fraction) == ("GB200", D(4))
    # The table gives no unambiguous memory per GPU: the catalogue's figure.
    assert gb200.gpu_memory_gb == D(gpus.CATALOGUE["GB200"].memory_gb or 0)
    assert gb200.interconnect == "InfiniBand"
    assert gb200.price_per_gpu_hour == (usd("gb200_us") / 4).quantize(Q)
    assert "no_gpu_count" not in result.skipped


def test_a_retired_size_is_counted_as_retired_not_offered(azure: AzureFake) -> None:
    result = make(azure).fetch()
    # Listed with a GPUs capability and a Linux price, yet Azure retired the NC series.
    assert not any(NC_K80 in k for k in by_key(result))
    assert result.skipped["retired"] == 1
    assert any(NC_K80 in n and "NC series is retired" in n for n in result.notes)
    assert NC_K80 not in {q for quota in result.quotas for q in quota.instance_types}


def test_a_gpu_series_size_without_any_gpu_count_is_counted(azure: AzureFake) -> None:
    # An ND H100 v5 size (a GPU series) listed without a GPUs capability and not in the size
    # table: no count is guessed. The name is made up so that no table lists it.
    azure.catalogue.skus.append(
        vm_sku(
            "Standard_ND8isr_H100_v5",
            US,
            family="standardNDSH100v5Family",
            vcpus=8,
            memory_gb="200",
        )
    )
    result = make(azure).fetch()
    assert result.skipped["no_gpu_count"] == 1
    assert not any("Standard_ND8isr_H100_v5" in k for k in by_key(result))


#: FICTIONAL ON PURPOSE: a GPU size of a series neither the series table nor the size table
#: knows (Azure's next series, say). Made up so that no table will ever list it; never replace
#: it with a real size, or the tests below stop testing the unrecognised path.
UNKNOWN_SIZE = "Standard_NX8ads_Z9_v1"
UNKNOWN_FAMILY = "standardNXZ9v1Family"


def test_unpriced_sizes_are_counted_and_plain_sizes_ignored(azure: AzureFake) -> None:
    result = make(azure).fetch()
    offers = by_key(result)
    assert not any(NC_T4 in k for k in offers)  # listed, but no Linux price row in eastus
    assert result.skipped == {"no_price": 1, "retired": 1}
    assert any(NC_T4 in n and "no Linux price" in n for n in result.notes)
    # Plain sizes (D4s_v5) and disks never become offers.
    assert all(o.instance_type.startswith("Standard_N") for o in result.offers)
    assert {o.instance_type for o in result.offers} == {
        ND_H100,
        NC_H100,
        NC_A100,
        NV_A10,
        NV_A10_WHOLE,
        ND_GB200,
    }


def test_unknown_gpu_and_unknown_location_are_kept_without_model_or_location(
    azure: AzureFake,
) -> None:
    new = "eastus9"  # a location the region table does not know
    for location, usd_per_hour in ((US, 1.25), (new, 1.5)):
        azure.catalogue.skus.append(
            vm_sku(UNKNOWN_SIZE, location, family=UNKNOWN_FAMILY, gpus="1", vcpus=8, memory_gb="64")
        )
        azure.catalogue.prices.setdefault(location, []).append(
            price(UNKNOWN_SIZE, location, usd_per_hour)
        )
    # The same unknown size listed but never priced: no offer (counted as no_price).
    azure.catalogue.skus.append(
        vm_sku(UNKNOWN_SIZE, NL, family=UNKNOWN_FAMILY, gpus="1", vcpus=8, memory_gb="64")
    )
    azure.catalogue.skus.append(
        vm_sku(
            NC_A100, new, family="StandardNCADSA100v4Family", gpus="1", vcpus=24, memory_gb="220"
        )
    )
    azure.catalogue.prices[new].append(price(NC_A100, new, 3.5))
    azure.catalogue.usages[new] = [usage("cores", 0, 10, "Total Regional vCPUs")]
    azure.add_location(new)
    result = make(azure).fetch()
    assert result.scope_errors == []
    offers = by_key(result)

    for location, usd in ((US, "1.25"), (new, "1.5")):
        offer = offers[key(location, UNKNOWN_SIZE, "on_demand")]
        assert (offer.gpu_model, offer.gpu_name_raw) == (None, UNKNOWN_FAMILY)
        assert (offer.gpu_family, offer.gpu_vendor, offer.accelerator_kind) == (None, None, None)
        assert (offer.gpu_count, offer.gpu_memory_gb) == (D(1), None)
        assert (offer.vcpus, offer.memory_gb) == (D(8), D(64))
        assert offer.price_per_hour == Decimal(usd)
    assert offers[key(US, UNKNOWN_SIZE, "on_demand")].country == "US"
    a100 = offers[key(new, NC_A100, "on_demand")]
    assert (a100.gpu_model, a100.price_per_hour) == ("A100-80GB", Decimal("3.5"))
    assert (a100.country, a100.jurisdiction, a100.continent) == (None, None, None)
    assert offers[key(new, UNKNOWN_SIZE, "on_demand")].country is None
    assert not any(UNKNOWN_SIZE in k for k in offers if f"/{NL}/" in k)

    assert "unknown_gpu" not in result.skipped
    assert result.skipped["no_price"] == 2  # NC T4 in eastus, the unknown size in westeurope
    assert any(UNKNOWN_SIZE in n and "not in the GPU catalogue" in n for n in result.notes)
    assert any(new in n and "regions.csv" in n for n in result.notes)
    assert unrecognised_of(result.offers) == {
        "azure": {"regions": {new: 2}, "gpu_names": {UNKNOWN_FAMILY: 2}}
    }


@pytest.mark.parametrize(
    ("table_model", "size", "raw_name"),
    [
        # The size table names a model the catalogue lacks (made up): that name is kept.
        ("MI999X", "Standard_ND96isr_MI300X_v5", "MI999X"),
        # The series names a GPU the catalogue cannot map: the series' GPU name is kept.
        (None, "Standard_NV8as_v4", "MI25"),
        # No series, no table: Azure's family of the size.
        (None, UNKNOWN_SIZE, UNKNOWN_FAMILY),
    ],
)
def test_the_name_kept_for_an_unrecognised_gpu(
    monkeypatch: pytest.MonkeyPatch, table_model: str | None, size: str, raw_name: str
) -> None:
    # As if the catalogue could map none of these names (a table model it lacks falls back to
    # the series' GPU, which must not be mapped either to reach the table's name).
    monkeypatch.setattr(gpus, "normalise", lambda *args, **kwargs: None)
    table = (
        sizes.Fraction("azure", size, table_model, Decimal(8), None, "a test row")
        if table_model
        else None
    )
    sku = GpuSku(
        name=size,
        family=UNKNOWN_FAMILY if size == UNKNOWN_SIZE else "someFamily",
        gpus=Decimal(8),
        vcpus=None,
        memory_gb=None,
        rdma=False,
        zones=(),
        restricted_zones=(),
        location_restriction=None,
        table=table,
    )
    accel = accelerator_of(sku)
    assert (accel.model, accel.name, accel.memory_gb) == (None, raw_name, None)


def test_vcpu_quotas_per_family_and_region(azure: AzureFake) -> None:
    result = make(azure).fetch()
    quotas = {(q.region, q.name, q.market): q for q in result.quotas}
    nd = quotas[(US, "standardNDSH100v5Family", Market.ON_DEMAND)]
    assert (nd.unit, nd.limit, nd.usage, nd.headroom) == ("vcpus", D(96), D(0), D(96))
    assert nd.instance_types == {ND_H100}
    assert nd.description == "Standard NDSH100v5 Family vCPUs"
    assert quotas[(US, "standardNDSH100v5Family", Market.RESERVED)].limit == D(96)
    # The family name is joined case-insensitively (usages and SKUs spell it alike here).
    a100 = quotas[(US, "StandardNCADSA100v4Family", Market.ON_DEMAND)]
    assert (a100.headroom, a100.instance_types) == (D(24), frozenset({NC_A100}))
    assert quotas[(US, "standardNCadsH100v5Family", Market.ON_DEMAND)].headroom == D(0)
    cores = quotas[(US, "cores", Market.ON_DEMAND)]
    assert (cores.limit, cores.usage) == (D(350), D(12))
    assert {ND_H100, NC_H100, NC_A100, NV_A10} <= cores.instance_types
    spot = quotas[(US, "lowPriorityCores", Market.SPOT)]
    assert (spot.limit, spot.usage) == (D(100), D(0))
    assert (US, "lowPriorityCores", Market.ON_DEMAND) not in quotas
    assert quotas[(NL, "standardNDSH100v5Family", Market.ON_DEMAND)].headroom == D(96)
    # Not a GPU family's quota, or not a quota of vCPUs: left out; no GPU, no quotas.
    assert not any(q.name in ("standardDSv5Family", "availabilitySets") for q in result.quotas)
    assert not any(q.region == BR for q in result.quotas)


def test_every_page_is_read_through_the_sdk_pipeline(
    azure: AzureFake, fake_http: FakeHttpServer
) -> None:
    credential = StaticCredential()
    result = make(azure, credential=credential).fetch()
    assert result.scope_errors == []
    skus = fake_http.requests_to(azure.skus_path)
    # 15 SKU entries in pages of 4; nextLink carries the api-version and a $skiptoken.
    assert [r.param("$skiptoken") for r in skus] == [None, "4", "8", "12"]
    assert {r.param("api-version") for r in skus} == {"2021-07-01"}
    usages = fake_http.requests_to(azure.usages_path(US))
    assert len(usages) == 1 and usages[0].param("api-version")  # the SDK's own version
    arm = [r for r in fake_http.requests if r.path.startswith("/subscriptions/")]
    assert all(r.headers.get("authorization") == f"Bearer {TOKEN}" for r in arm)
    assert ("https://management.azure.com/.default",) in credential.scopes
    # Retail prices: one filtered query per GPU location, every page ($skip), no token.
    us_prices = azure.price_requests(US)
    assert [r.param("$skip") for r in us_prices] == [None, "5", "10", "15"]
    assert us_prices[0].param("$filter") == (
        "serviceName eq 'Virtual Machines' and armRegionName eq 'eastus'"
    )
    assert len(azure.price_requests(NL)) == 1
    assert azure.price_requests(BR) == []
    assert all("authorization" not in r.headers for r in us_prices)
    # The last page's rows are there (the whole A10 and GB200 rows are on page 4 of eastus).
    assert key(US, NV_A10_WHOLE, "on_demand") in by_key(result)
    assert key(US, ND_GB200, "on_demand") in by_key(result)


def test_regions_setting_and_locations_without_gpus(
    azure: AzureFake, fake_http: FakeHttpServer
) -> None:
    result = make(azure, regions=["westeurope", "brazilsouth", "marscentral"]).fetch()
    assert result.scope_errors == []
    assert locations_ok(result) == {NL, BR, "marscentral"}
    assert {o.region for o in result.offers} == {NL}
    # brazilsouth lists no GPU size: covered without any call; eastus is not polled.
    assert fake_http.requests_to(azure.usages_path(BR)) == []
    assert azure.price_requests(BR) == [] and azure.price_requests(US) == []
    assert fake_http.requests_to(azure.usages_path(US)) == []
    assert any("marscentral" in n and "no virtual machine size" in n for n in result.notes)


def test_duplicate_price_rows_primary_then_latest_else_ambiguous(azure: AzureFake) -> None:
    prices = azure.catalogue.prices[US]
    # A non-primary meter for the same size: the primary row wins.
    prices.append(price(ND_H100, US, 95.0, meter_id="nd-h100-us-secondary", primary=False))
    # An older price row for the spot meter: the latest effectiveStartDate wins.
    prices.append(
        price(ND_H100, US, 30.0, spot=True, meter_id="old", effective="2024-01-01T00:00:00Z")
    )
    # Two current primary rows that disagree: no offer rather than a guess.
    prices.append(price(NC_A100, US, 9.99, meter_id="nc-a100-us-other"))
    result = make(azure).fetch()
    offers = by_key(result)
    assert offers[key(US, ND_H100, "on_demand")].price_per_hour == usd("nd_h100_us")
    assert offers[key(US, ND_H100, "spot")].price_per_hour == usd("nd_h100_us_spot")
    assert key(US, NC_A100, "on_demand") not in offers
    assert offers[key(US, NC_A100, "spot")].price_per_hour == usd("nc_a100_us_spot")
    assert result.skipped["ambiguous_price"] == 1
    assert any("nc-a100-us-other=9.99" in n for n in result.notes)


def test_a_location_missing_from_the_region_table_keeps_its_offers(azure: AzureFake) -> None:
    new = "eastus9"
    azure.catalogue.skus.append(
        vm_sku(
            NC_A100, new, family="StandardNCADSA100v4Family", gpus="1", vcpus=24, memory_gb="220"
        )
    )
    azure.catalogue.prices[new] = [price(NC_A100, new, 3.5)]
    azure.catalogue.usages[new] = [usage("cores", 0, 10, "Total Regional vCPUs")]
    azure.add_location(new)
    result = make(azure).fetch()
    offer = by_key(result)[key(new, NC_A100, "on_demand")]
    assert (offer.country, offer.jurisdiction, offer.continent) == (None, None, None)
    assert offer.price_per_hour == Decimal("3.5")
    assert any(new in n and "regions.csv" in n for n in result.notes)


def test_price_lists_are_reused_within_their_ttl(
    azure: AzureFake, fake_http: FakeHttpServer
) -> None:
    now = [datetime(2026, 6, 1, 12, 0, tzinfo=UTC)]
    adapter = make(azure, prices_ttl_s=600)
    adapter.clock = lambda: now[0]
    first = adapter.fetch()
    price_calls = len(fake_http.requests_to("/api/retail/prices"))
    assert price_calls == 5  # eastus 4 pages, westeurope 1

    now[0] += timedelta(minutes=5)
    second = adapter.fetch()
    assert second.scope_errors == []
    assert len(fake_http.requests_to("/api/retail/prices")) == price_calls  # cached
    assert by_key(second).keys() == by_key(first).keys()
    assert len(fake_http.requests_to(azure.usages_path(US))) == 2  # quotas: every poll

    # A GPU size appears in westeurope: its price list is read again at once.
    azure.catalogue.skus.append(
        vm_sku(NV_A10, NL, family="StandardNVADSA10v5Family", gpus="1", vcpus=6, memory_gb="55")
    )
    azure.catalogue.prices[NL].append(price(NV_A10, NL, 0.5))
    third = adapter.fetch()
    # westeurope: 1 page before, 2 pages now (6 rows); eastus still cached.
    assert len(azure.price_requests(NL)) == 3 and len(azure.price_requests(US)) == 4
    assert by_key(third)[key(NL, NV_A10, "on_demand")].price_per_hour == Decimal("0.5")

    now[0] += timedelta(minutes=6)  # eastus's list is 11 minutes old now
    adapter.fetch()
    assert len(azure.price_requests(US)) == 8


# ------------------------------------------------------------------ faults


def test_timeout_on_one_locations_prices_fails_only_that_location(azure: AzureFake) -> None:
    azure.fail_page("prices", 1, FakeResponse(json={}, delay_s=3.0), location=NL)
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure", NL), "timeout")
    assert "retail prices westeurope" in message
    assert locations_ok(result) == {US, BR}
    assert {o.region for o in result.offers} == {US}
    assert {q.region for q in result.quotas} == {US}


def test_timeout_on_the_sku_list_fails_the_poll(azure: AzureFake) -> None:
    azure.fail_page("skus", 1, FakeResponse(json={"value": []}, delay_s=3.0))
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure"), "timeout")
    assert "resource_skus.list" in message
    assert result.offers == () and result.scopes_ok == ()


def test_connection_refused(azure: AzureFake) -> None:
    dead = f"http://127.0.0.1:{closed_port()}"
    result = make(azure, base_url=dead).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure"), "unavailable")
    assert "connection failed" in message

    result = make(azure, retail_prices_url=f"{dead}/api/retail/prices").fetch()
    errors = {e.scope.region: e.code for e in result.scope_errors}
    assert errors == {US: "unavailable", NL: "unavailable"}
    assert locations_ok(result) == {BR}  # no GPU there: nothing to price
    assert result.offers == []


def test_5xx_is_retried_with_backoff_then_succeeds(
    azure: AzureFake, fake_http: FakeHttpServer
) -> None:
    azure.fail_page("skus", 2, arm_error(503, "ServiceUnavailable", "busy"))
    azure.fail_page("usages", 1, arm_error(500, "InternalServerError", "oops"), location=NL)
    azure.fail_page("prices", 2, FakeResponse(502, body=b"Bad Gateway"), location=US)
    waits: list[float] = []
    result = make(azure, waits, max_attempts=3).fetch()
    assert result.scope_errors == []
    assert waits == [0.01, 0.01, 0.01]
    # The failed SKU page was asked again from its own token; page 1 was read once.
    tokens = [r.param("$skiptoken") for r in fake_http.requests_to(azure.skus_path)]
    assert tokens == [None, "4", "4", "8", "12"]
    assert [r.param("$skip") for r in azure.price_requests(US)] == [None, "5", "5", "10", "15"]
    assert {o.key for o in result.offers} == {o.key for o in make(azure).fetch().offers}


def test_5xx_that_persists_fails_the_poll(azure: AzureFake) -> None:
    busy = arm_error(503, "ServiceUnavailable", "The service is temporarily unavailable.")
    azure.fail_page("skus", 1, busy, busy)
    waits: list[float] = []
    result = make(azure, waits, max_attempts=2).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure"), "unavailable")
    assert "resource_skus.list: HTTP 503 ServiceUnavailable" in message
    assert "temporarily unavailable" in message
    assert waits == [0.01]


def test_429_retry_after_is_honoured(azure: AzureFake, fake_http: FakeHttpServer) -> None:
    throttled = arm_error(429, "TooManyRequests", "Rate limit", headers={"Retry-After": "2"})
    azure.fail_page("usages", 1, throttled, location=US)
    azure.fail_page(
        "prices",
        1,
        FakeResponse(429, json={"Error": "throttled"}, headers={"Retry-After": "1"}),
        location=NL,
    )
    azure.fail_page(
        "skus", 2, arm_error(429, "TooManyRequests", "x", headers={"x-ms-retry-after-ms": "1500"})
    )
    waits: list[float] = []
    result = make(azure, waits, max_attempts=2).fetch()
    assert result.scope_errors == []
    assert sorted(waits) == [1.0, 1.5, 2.0]
    assert len(fake_http.requests_to(azure.usages_path(US))) == 2


def test_429_retry_after_beyond_the_bound_fails_the_location(azure: AzureFake) -> None:
    throttled = arm_error(429, "TooManyRequests", "Rate limit", headers={"Retry-After": "120"})
    azure.fail_page("usages", 1, throttled, location=US)
    waits: list[float] = []
    result = make(azure, waits, max_attempts=3).fetch()
    (err,) = result.scope_errors
    assert (err.scope, err.code, err.retry_after_s) == (Scope("azure", US), "rate_limited", 120.0)
    assert "usage.list eastus: HTTP 429 TooManyRequests" in err.message
    assert waits == []
    assert locations_ok(result) == {NL, BR}


def test_malformed_json(azure: AzureFake) -> None:
    azure.fail_page("skus", 1, FakeResponse(body=b'{"value": [{"name"'))
    scope, code, message = only_error(make(azure).fetch())
    assert (scope, code) == (Scope("azure"), "malformed")
    assert "resource_skus.list" in message

    azure.fail_page("skus", 1, FakeResponse(json={"value": {"not": "a list"}}))
    assert only_error(make(azure).fetch())[:2] == (Scope("azure"), "malformed")

    azure.fail_page("prices", 1, FakeResponse(body=b"<html>oops</html>"), location=NL)
    result = make(azure).fetch()
    assert only_error(result)[:2] == (Scope("azure", NL), "malformed")
    assert locations_ok(result) == {US, BR}

    azure.fail_page("prices", 1, FakeResponse(json={"Items": "none"}), location=NL)
    assert only_error(make(azure).fetch())[:2] == (Scope("azure", NL), "malformed")

    azure.fail_page("usages", 1, FakeResponse(body=b"not json"), location=US)
    assert only_error(make(azure).fetch())[:2] == (Scope("azure", US), "malformed")


def test_truncated_body(azure: AzureFake) -> None:
    azure.fail_page("skus", 1, FakeResponse(json={"value": azure.catalogue.skus}, truncate=True))
    assert only_error(make(azure).fetch())[:2] == (Scope("azure"), "unavailable")

    azure.fail_page(
        "usages",
        1,
        FakeResponse(json={"value": azure.catalogue.usages[US]}, truncate=True),
        location=US,
    )
    result = make(azure).fetch()
    assert only_error(result)[:2] == (Scope("azure", US), "unavailable")
    assert locations_ok(result) == {NL, BR}


def test_a_sku_page_failing_mid_pagination_fails_the_whole_poll(
    azure: AzureFake, fake_http: FakeHttpServer
) -> None:
    azure.fail_page("skus", 3, arm_error(500, "InternalServerError", "backend error"))
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure"), "unavailable")
    assert "resource_skus.list page 3: HTTP 500" in message
    assert result.offers == () and result.scopes_ok == () and result.quotas == ()
    tokens = [r.param("$skiptoken") for r in fake_http.requests_to(azure.skus_path)]
    assert tokens == [None, "4", "8"]  # pages 1 and 2 were read, then page 3 failed


def test_a_price_page_failing_mid_pagination_fails_that_location(azure: AzureFake) -> None:
    azure.fail_page("prices", 3, FakeResponse(503, body=b"Service Unavailable"), location=US)
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure", US), "unavailable")
    assert "retail prices eastus page 3: HTTP 503" in message
    # Pages 1 and 2 of eastus were read, but nothing of eastus is reported.
    assert [r.param("$skip") for r in azure.price_requests(US)] == [None, "5", "10"]
    assert not any(o.region == US for o in result.offers)
    assert locations_ok(result) == {NL, BR}
    assert key(NL, ND_H100, "on_demand") in by_key(result)


def test_one_location_failing_while_others_work(azure: AzureFake) -> None:
    azure.fail_page("usages", 1, arm_error(503, "ServiceUnavailable", "try later"), location=NL)
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure", NL), "unavailable")
    assert "usage.list westeurope: HTTP 503" in message
    assert locations_ok(result) == {US, BR}
    assert key(US, ND_H100, "on_demand") in by_key(result)
    assert not any(o.region == NL for o in result.offers)
    assert {q.region for q in result.quotas} == {US}


def test_next_links_to_another_host_are_not_followed(
    azure: AzureFake, fake_http: FakeHttpServer
) -> None:
    page = {
        "value": azure.catalogue.skus[:4],
        "nextLink": "https://management.example.net/subscriptions/x/skus?$skiptoken=4",
    }
    azure.fail_page("skus", 1, FakeResponse(json=page))
    scope, code, message = only_error(make(azure).fetch())
    assert (scope, code) == (Scope("azure"), "malformed")
    assert "another host" in message

    doc = {"Items": [], "NextPageLink": "https://prices.example.net/api/retail/prices?$skip=5"}
    azure.fail_page("prices", 1, FakeResponse(json=doc), location=NL)
    result = make(azure).fetch()
    assert only_error(result)[:2] == (Scope("azure", NL), "malformed")


def _assert_no_secrets(result: PollResult, caplog: pytest.LogCaptureFixture) -> None:
    texts = [caplog.text] + [e.message for e in result.scope_errors]
    for secret in (TOKEN, "s3cr3t-value"):
        assert all(secret not in text for text in texts), secret


def test_no_credential_yields_a_token(
    azure: AzureFake, fake_http: FakeHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    result = make(azure, credential=NoCredential()).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure"), "auth_failed")
    assert "DefaultAzureCredential failed to retrieve a token" in message
    assert fake_http.requests == []  # nothing is sent without a token
    _assert_no_secrets(result, caplog)


def test_rejected_token_and_missing_permission(
    azure: AzureFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    azure.fail_page(
        "skus",
        1,
        arm_error(401, "InvalidAuthenticationToken", "The access token is invalid."),
    )
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure"), "auth_failed")
    assert "HTTP 401 InvalidAuthenticationToken" in message
    _assert_no_secrets(result, caplog)

    # A role without usages read permission in one location; the server echoes the token.
    denied = arm_error(
        403,
        "AuthorizationFailed",
        "The client with token " + TOKEN + " does not have authorization to perform action "
        "'Microsoft.Compute/locations/usages/read'",
    )
    azure.fail_page("usages", 1, denied, location=US)
    result = make(azure).fetch()
    scope, code, message = only_error(result)
    assert (scope, code) == (Scope("azure", US), "auth_failed")
    assert "Microsoft.Compute/locations/usages/read" in message
    assert locations_ok(result) == {NL, BR}
    _assert_no_secrets(result, caplog)


# ------------------------------------------------------------------ from_settings


def test_from_settings_without_subscription_is_disabled() -> None:
    with pytest.raises(ProviderDisabled, match="BROKER_AZURE__SUBSCRIPTION_ID") as info:
        Azure.from_settings(Settings(), lambda: datetime.now(UTC))
    text = str(info.value)
    assert "AZURE_CLIENT_ID" in text and "az login" in text and "\n" not in text


def test_from_settings_builds_the_default_credential_chain(
    azure: AzureFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_AZURE__SUBSCRIPTION_ID", SUBSCRIPTION)
    monkeypatch.setenv("BROKER_AZURE__BASE_URL", azure.url)
    monkeypatch.setenv("BROKER_AZURE__REGIONS", "westeurope,eastus")
    adapter = get_provider_class("azure").from_settings(Settings(), lambda: datetime.now(UTC))
    assert isinstance(adapter, Azure)
    assert type(adapter.credential.inner).__name__ == "DefaultAzureCredential"
    assert adapter.settings.regions == ["westeurope", "eastus"]
    assert adapter.arm_host == "127.0.0.1"


def test_registered_under_its_module_name() -> None:
    assert get_provider_class("azure") is Azure


# ------------------------------------------------------------------ the tables


@pytest.mark.parametrize(
    ("sku", "model"),
    [
        ("Standard_ND96isr_H100_v5", "H100-SXM"),
        ("Standard_ND96is_H100_v5", "H100-SXM"),
        ("Standard_NC40ads_H100_v5", "H100-NVL"),
        ("Standard_NC80adis_H100_v5", "H100-NVL"),
        ("Standard_NCC40ads_H100_v5", "H100-NVL"),
        ("Standard_ND96isr_H200_v5", "H200"),
        ("Standard_ND96isr_MI300X_v5", "MI300X"),
        ("Standard_NC24ads_A100_v4", "A100-80GB"),
        ("Standard_ND96amsr_A100_v4", "A100-80GB"),
        ("Standard_ND96asr_v4", "A100"),
        ("Standard_NV36ads_A10_v5", "A10"),
        ("Standard_NC8ads_A10_v4", "A10"),
        ("Standard_NC64as_T4_v3", "T4"),
        ("Standard_NC24rs_v3", "V100"),
        ("Standard_ND40rs_v2", "V100-32GB"),
        ("Standard_NC6s_v2_Promo", "P100"),
        ("Standard_ND24rs", "P40"),
        ("Standard_NC6", "K80"),
        ("Standard_NV12s_v3", "M60"),
        ("Standard_NV8as_v4", "MI25"),
        ("Standard_NC128ds_xl_RTXPRO6000BSE_v6", "RTXPRO6000S"),
        ("Standard_ND128isr_NDR_GB200_v6", None),
        ("Standard_NV12ads_V710_v5", None),
        ("Standard_D4s_v5", None),
    ],
)
def test_size_series_map_onto_catalogue_models(sku: str, model: str | None) -> None:
    gpu = series_gpu(sku)
    entry = gpus.normalise(gpu, provider="azure", instance_type=sku) if gpu else None
    assert (entry.name if entry else None) == model


@pytest.mark.parametrize(
    ("sku", "series"),
    [
        # The retired sizes (Microsoft's retirement notices, see providers/azure.py _RETIRED).
        *[(f"Standard_NC{n}", "NC") for n in ("6", "12", "24", "24r", "6_Promo", "24r_Promo")],
        *[(f"Standard_NC{n}_v2", "NCv2") for n in ("6s", "12s", "24s", "24rs")],
        *[(f"Standard_ND{n}", "ND") for n in ("6s", "12s", "24s", "24rs")],
        *[(f"Standard_NV{n}", "NV") for n in ("6", "12", "24", "6_Promo")],
        # Their successors are not retired.
        ("Standard_NC6s_v3", None),
        ("Standard_NC24rs_v3", None),
        ("Standard_NC8as_T4_v3", None),
        ("Standard_NC24ads_A100_v4", None),
        ("Standard_ND40rs_v2", None),
        ("Standard_ND96asr_v4", None),
        ("Standard_ND96isr_H100_v5", None),
        ("Standard_NV12s_v3", None),
        ("Standard_NV4as_v4", None),
        ("Standard_NV6ads_A10_v5", None),
    ],
)
def test_retired_series_are_recognised_by_name(sku: str, series: str | None) -> None:
    assert retired_series(sku) == series


def test_price_rows_are_classified() -> None:
    on_demand = classify(price(ND_H100, US, 98.32))
    assert isinstance(on_demand, PriceRow)
    assert (on_demand.market, on_demand.price_per_hour) == (Market.ON_DEMAND, Decimal("98.32"))
    spot = classify(price(ND_H100, US, 39.33, spot=True))
    assert isinstance(spot, PriceRow) and spot.market == Market.SPOT
    three = classify(price(ND_H100, US, 1086000.0, kind="Reservation", term="3 Years"))
    assert isinstance(three, PriceRow)
    assert (three.offering_id, three.term_hours) == ("P3Y", 26280)
    assert three.price_per_hour == Decimal("1086000.0") / 26280
    assert classify(price(ND_H100, US, 1.0, windows=True)) is None
    assert classify(price(ND_H100, US, 1.0, low_priority=True)) is None
    assert classify(price(ND_H100, US, 1.0, kind="DevTestConsumption")) is None
    assert classify(price(ND_H100, US, 1.0, currency="EUR")) == "bad_currency"
    assert classify(price(ND_H100, US, 1.0, unit="1/Month")) == "bad_unit"
    assert classify(price(ND_H100, US, 1.0, kind="Reservation", term="forever")) == "unknown_term"
    assert classify({**price(ND_H100, US, 1.0), "retailPrice": "n/a"}) == "bad_price_row"
    assert classify({**price(ND_H100, US, 1.0), "type": "SavingsPlan"}) == "unknown_price_type"


# ------------------------------------------------------------------ ingest


def _ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="azure").events)


def _active(engine: Engine) -> set[str]:
    with Session(engine) as session:
        return {o.key for o in session.exec(select(StoredOffer)).all() if o.active}


@pytest.fixture
def clock_steps() -> Iterator[list[datetime]]:
    yield [datetime(2026, 6, 1, tzinfo=UTC) + timedelta(minutes=5 * i) for i in range(10)]


def test_ingest_degrades_and_recovers_without_withdrawing_unread_offers(
    engine: Engine, azure: AzureFake, clock_steps: list[datetime]
) -> None:
    times = iter(clock_steps)

    def poll() -> PollResult:
        adapter = make(azure)
        adapter.clock = lambda: next(times)
        return adapter.fetch()

    first = poll()
    assert _ingest(engine, first) == {"offer_appeared": len(first.offers)}
    nl_a100 = key(NL, NC_A100, "on_demand")
    us_a10 = key(US, NV_A10, "on_demand")
    assert {nl_a100, us_a10} <= _active(engine)

    # Poll 2: westeurope's prices fail mid-list, and both locations lost a size.
    cat = azure.catalogue
    saved = list(cat.skus)
    cat.skus[:] = [
        s
        for s in saved
        if not (s["name"] == NC_A100 and s["locations"] == [NL])
        and not (s["name"] == NV_A10 and s["locations"] == [US])
    ]
    azure.fail_page("prices", 1, FakeResponse(503, body=b"busy"), location=NL)
    second = poll()
    assert only_error(second)[:2] == (Scope("azure", NL), "unavailable")
    assert _ingest(engine, second) == {"offer_withdrawn": 1, "provider_degraded": 1}
    active = _active(engine)
    assert nl_a100 in active  # not read this time: left alone
    assert us_a10 not in active  # read and gone: withdrawn

    # Poll 3: everything readable, the NL A100 is listed again.
    cat.skus[:] = [s for s in saved if not (s["name"] == NV_A10 and s["locations"] == [US])]
    third = poll()
    assert third.scope_errors == []
    assert _ingest(engine, third) == {"provider_recovered": 1}
    assert nl_a100 in _active(engine)
    with Session(engine) as session:
        types = [e.type for e in session.exec(select(MarketEvent)).all() if e.offer_key is None]
    assert types == ["provider_degraded", "provider_recovered"]
