"""The AWS adapter with the real boto3 over real sockets: against the fake AWS endpoint
(`tests/fakes/aws_fake.py`: EC2 query-protocol XML, Price List and Service Quotas JSON 1.1,
written from botocore's service models) and against a moto server reached through boto3's own
`AWS_ENDPOINT_URL`.

Fault tests run botocore with one attempt (`max_attempts=1`) unless they test its retrying.
Every assertion on money is recomputed here from the fixture's wire strings.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import botocore.utils
import pytest
from botocore.exceptions import (
    ClientError,
    ConnectTimeoutError,
    EndpointConnectionError,
    NoCredentialsError,
    ReadTimeoutError,
)
from botocore.parsers import ResponseParserError
from moto.server import ThreadedMotoServer
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.config import AwsSettings, Settings
from broker.db import session_scope
from broker.domain import Availability, Market, PollResult, Scope, to_price
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll, unrecognised_of
from providers.aws import (
    Aws,
    map_error,
    parse_instance_type,
    parse_price_list,
    parse_timestamp,
    tune_session,
)
from providers.base import MalformedResponse, ProviderDisabled, get_provider_class
from tests.fakes.aws_fake import XML, AwsFake, ec2_error, ec2_xml, json_error, spot_row
from tests.fakes.aws_fixtures import (
    EU_PRICES,
    G6F,
    INF2,
    P5,
    P99Z,
    T0,
    TRN1,
    UNKNOWN_GPU_NAME,
    UNKNOWN_GPU_TYPE,
    US_PRICES,
    capacity_block,
    price_item,
    small_market,
)
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port, serve

ACCESS_KEY = "AKIAQ3EGRQ4EXAMPLE77"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY"
REGIONS = ["eu-west-1", "us-east-1"]
ALL_SCOPES = {Scope("aws", r, m) for r in REGIONS for m in Market if m != Market.RESERVED}


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 5) -> None:
        self.now += timedelta(minutes=minutes)


@pytest.fixture(scope="module")
def core() -> botocore.session.Session:
    """One botocore session for the module: loading EC2's service model once, not per test;
    tuned as `Aws.from_settings` tunes its own."""
    session = botocore.session.get_session()
    tune_session(session)
    return session


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeHttpServer]:
    yield from serve()


@pytest.fixture
def fake(shared_server: FakeHttpServer) -> AwsFake:
    shared_server.routes.clear()
    shared_server.faults.clear()
    shared_server.requests.clear()
    return small_market(AwsFake(shared_server))


def adapter(
    fake: AwsFake | str,
    core: botocore.session.Session,
    *,
    clock: Clock | None = None,
    **settings: Any,
) -> Aws:
    # A generous timeout: on a loaded 2-core CI machine a local answer can take over 0.5 s
    # (test_timeout sets its own).
    opts: dict[str, Any] = {"timeout_s": 3.0, "max_attempts": 1, "regions": REGIONS}
    opts.update(settings)
    session = boto3.session.Session(
        aws_access_key_id=ACCESS_KEY,
        aws_secret_access_key=SECRET_KEY,
        region_name="us-east-1",
        botocore_session=core,
    )
    url = fake if isinstance(fake, str) else fake.url
    return Aws(AwsSettings(**opts), session, clock=clock or Clock(), endpoint_url=url)


def by_key(result: PollResult) -> dict[str, Any]:
    return {o.key: o for o in result.offers}


# ------------------------------------------------------------------------------ the market


def test_offers_from_the_documented_answers(fake: AwsFake, core: botocore.session.Session) -> None:
    result = adapter(fake, core).fetch()
    assert list(result.scope_errors) == []
    assert set(result.scopes_ok) == ALL_SCOPES
    offers = by_key(result)

    p5 = offers["aws/us-east-1/us-east-1a/p5.48xlarge/on_demand"]
    assert (p5.gpu_model, p5.gpu_family, p5.form_factor, p5.gpu_vendor) == (
        "H100-SXM",
        "H100",
        "SXM",
        "NVIDIA",
    )
    assert (p5.gpu_count, p5.gpu_memory_gb) == (Decimal(8), Decimal(80))  # 81920 MiB
    assert (p5.vcpus, p5.memory_gb, p5.interconnect) == (Decimal(192), Decimal(2048), "EFA")
    assert (p5.country, p5.jurisdiction, p5.continent) == ("US", "US", "North America")
    assert p5.price_per_hour == Decimal(US_PRICES["p5.48xlarge"])
    assert p5.price_per_gpu_hour == to_price(Decimal("55.0400000000") / 8) == Decimal("6.88")
    assert (p5.availability, p5.available_count) == (Availability.UNKNOWN, None)
    assert p5.raw["price_per_unit_usd"] == "55.0400000000"
    # One offer per AZ the type is offered in; the regional price on each.
    p5_od = sorted(k for k in offers if "/p5.48xlarge/on_demand" in k and "us-east-1" in k)
    assert [k.split("/")[2] for k in p5_od] == ["us-east-1a", "us-east-1b", "us-east-1d"]

    eu = offers["aws/eu-west-1/eu-west-1c/p5.48xlarge/on_demand"]
    assert (eu.country, eu.jurisdiction, eu.continent) == ("IE", "EU", "Europe")
    assert eu.price_per_gpu_hour == to_price(Decimal(EU_PRICES["p5.48xlarge"]) / 8)

    # Accelerators beyond GpuInfo, and a GPU partition.
    g6f = offers["aws/us-east-1/us-east-1a/g6f.large/on_demand"]
    assert (g6f.gpu_model, g6f.gpu_count) == ("L4", Decimal("0.125"))
    assert g6f.price_per_gpu_hour == to_price(Decimal(US_PRICES["g6f.large"]) / Decimal("0.125"))
    inf2 = offers["aws/us-east-1/us-east-1c/inf2.xlarge/on_demand"]
    assert (inf2.gpu_model, inf2.accelerator_kind, inf2.gpu_vendor) == (
        "Inferentia2",
        "other",
        "AWS",
    )
    trn = offers["aws/us-east-1/us-east-1f/trn1.32xlarge/on_demand"]
    assert (trn.gpu_model, trn.gpu_count, trn.gpu_memory_gb) == ("Trainium", 16, 32)
    assert offers["aws/us-east-1/us-east-1b/dl2q.24xlarge/on_demand"].gpu_model == "AI100"

    # B300 is in the catalogue: p6-b300.48xlarge is 8 × B300 (SXM), 275040 MiB each.
    b300 = offers["aws/us-east-1/us-east-1a/p6-b300.48xlarge/on_demand"]
    assert (b300.gpu_model, b300.gpu_family, b300.form_factor, b300.gpu_vendor) == (
        "B300",
        "B300",
        "SXM",
        "NVIDIA",
    )
    assert b300.gpu_count == Decimal(8)
    assert b300.gpu_memory_gb is not None
    assert round(b300.gpu_memory_gb, 2) == Decimal("268.59")  # 275040 MiB in GiB
    assert (b300.vcpus, b300.memory_gb, b300.interconnect) == (Decimal(192), Decimal(4096), "EFA")
    assert b300.gpu_name_raw is None
    assert b300.price_per_hour == Decimal(US_PRICES["p6-b300.48xlarge"])
    assert b300.price_per_gpu_hour == to_price(Decimal(US_PRICES["p6-b300.48xlarge"]) / 8)

    # A device no catalogue knows (the fixture's fictional type, offered and priced in
    # us-east-1a): kept without a model, never guessed, never skipped (see
    # test_unknown_gpu_and_unknown_region_are_kept_without_model_or_location).
    assert offers[f"aws/us-east-1/us-east-1a/{UNKNOWN_GPU_TYPE}/on_demand"].gpu_model is None
    assert result.skipped.get("unknown_gpu", 0) == 0


def test_spot_prices_are_the_newest_linux_record_per_zone(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    offers = by_key(adapter(fake, core).fetch())
    spot = {k: o for k, o in offers.items() if k.endswith("/spot")}
    assert sorted(spot) == [
        "aws/eu-west-1/eu-west-1c/p5.48xlarge/spot",
        "aws/us-east-1/us-east-1a/g5.xlarge/spot",
        "aws/us-east-1/us-east-1a/p5.48xlarge/spot",
        f"aws/us-east-1/us-east-1a/{UNKNOWN_GPU_TYPE}/spot",
        "aws/us-east-1/us-east-1b/p5.48xlarge/spot",
    ]
    a = spot["aws/us-east-1/us-east-1a/p5.48xlarge/spot"]
    assert a.price_per_hour == Decimal("31.464000")  # not the older 33.12
    assert a.price_per_gpu_hour == to_price(Decimal("31.464000") / 8)
    assert a.raw["timestamp"] == (T0 - timedelta(minutes=20)).isoformat()
    assert a.availability == Availability.UNKNOWN
    # Windows (us-east-1b, 52.00) is another product; us-east-1c no longer offers p5.
    assert spot["aws/us-east-1/us-east-1b/p5.48xlarge/spot"].price_per_hour == Decimal("29.8701")
    (req,) = fake.calls_to("DescribeSpotPriceHistory", "us-east-1")
    assert req.params["ProductDescription.1"] == "Linux/UNIX"
    assert req.params["StartTime"].startswith("2026-05-01T12:00:00")


def test_capacity_blocks_are_priced_per_instance_hour(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    offers = by_key(adapter(fake, core).fetch())
    blocks = {k: o for k, o in offers.items() if "/capacity_block/" in k}
    assert sorted(blocks) == [
        "aws/us-east-1/us-east-1a/p5.48xlarge/capacity_block/cb-0123456789abcdef0",
        "aws/us-east-1/us-east-1d/p5.48xlarge/capacity_block/cb-0fedcba9876543210",
        "aws/us-east-1/us-east-1f/trn1.32xlarge/capacity_block/cb-0aaaaaaaaaaaaaaa1",
    ]
    one = blocks["aws/us-east-1/us-east-1a/p5.48xlarge/capacity_block/cb-0123456789abcdef0"]
    assert one.offering_id == "cb-0123456789abcdef0"
    assert one.upfront_fee == Decimal("755.52")
    # UpfrontFee / (InstanceCount × CapacityBlockDurationHours) per instance-hour.
    assert one.price_per_hour == to_price(Decimal("755.52") / (1 * 24)) == Decimal("31.48")
    assert one.price_per_gpu_hour == to_price(Decimal("755.52") / (1 * 24) / 8)
    assert (one.availability, one.available_count) == (Availability.AVAILABLE, 1)
    assert one.earliest_start == T0 + timedelta(days=3)
    assert (one.min_duration_hours, one.max_duration_hours) == (24, 24)
    two = blocks["aws/us-east-1/us-east-1d/p5.48xlarge/capacity_block/cb-0fedcba9876543210"]
    assert two.price_per_hour == to_price(Decimal("1416.96") / (2 * 24))
    assert two.available_count == 2
    calls = fake.calls_to("DescribeCapacityBlockOfferings", "us-east-1")
    assert sorted(c.params["InstanceType"] for c in calls) == [
        "p5.48xlarge",
        "p6-b300.48xlarge",
        "trn1.32xlarge",
    ]
    assert {(c.params["InstanceCount"], c.params["CapacityDurationHours"]) for c in calls} == {
        ("1", "24")
    }
    # eu-west-1 does not offer p6-b300 (nor trn1): only p5 is asked for there.
    assert fake.calls_to("DescribeCapacityBlockOfferings", "eu-west-1")[0].params[
        "InstanceType"
    ] == ("p5.48xlarge")


def test_capacity_block_with_minutes_counts_them(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.capacity_blocks["us-east-1"] = [
        capacity_block("cb-0b0b0b0b0b0b0b0b0", "p5.48xlarge", "us-east-1a", "200.00", minutes=30)
    ]
    fake.capacity_blocks["eu-west-1"] = [
        capacity_block("cb-0e0e0e0e0e0e0e0e0", "p5.48xlarge", "eu-west-1c", "99.00", currency="EUR")
    ]
    result = adapter(fake, core).fetch()
    (block,) = [o for o in result.offers if o.market == Market.CAPACITY_BLOCK]
    # 24 h + 30 min: the model documents minutes as "in addition to" the hours.
    assert block.price_per_hour == to_price(Decimal("200.00") / (1 * Decimal("24.5")))
    assert (block.min_duration_hours, block.max_duration_hours) == (None, None)
    assert result.skipped["non_usd"] == 1


def test_quotas_of_the_accelerated_families(fake: AwsFake, core: botocore.session.Session) -> None:
    result = adapter(fake, core).fetch()
    quotas = {(q.region, q.name): q for q in result.quotas}
    assert sorted(quotas) == [
        ("eu-west-1", "L-417A185B"),
        ("us-east-1", "L-2C3B7624"),
        ("us-east-1", "L-417A185B"),
        ("us-east-1", "L-7212CCBC"),
        ("us-east-1", "L-DB2E81BA"),
    ]
    p = quotas[("us-east-1", "L-417A185B")]
    assert (p.unit, p.limit, p.market, p.usage) == ("vcpus", Decimal(384), Market.ON_DEMAND, None)
    # The fictional p99z (unknown GPU, kept) is a P type like the others.
    assert p.instance_types == frozenset({"p5.48xlarge", "p6-b300.48xlarge", UNKNOWN_GPU_TYPE})
    assert p.description == "Running On-Demand P instances"
    g = quotas[("us-east-1", "L-DB2E81BA")]
    assert g.instance_types == frozenset({"g5.xlarge", "g6f.large"})
    spot = quotas[("us-east-1", "L-7212CCBC")]
    assert (spot.market, spot.limit) == (Market.SPOT, Decimal(192))
    # Missing from ListServiceQuotas: read as the AWS default value.
    trn = quotas[("us-east-1", "L-2C3B7624")]
    assert (trn.limit, trn.instance_types) == (Decimal(256), frozenset({"trn1.32xlarge"}))
    assert trn.description == "Running On-Demand Trn instances (AWS default value)"
    assert quotas[("eu-west-1", "L-417A185B")].limit == 0


def test_requests_are_the_documented_ones(fake: AwsFake, core: botocore.session.Session) -> None:
    adapter(fake, core).fetch()
    (types,) = fake.calls_to("DescribeInstanceTypes", "us-east-1")
    assert types.params["Filter.1.Name"] == "instance-type"
    assert [types.params[f"Filter.1.Value.{i}"] for i in range(1, 7)] == [
        "dl*",
        "f*",
        "g*",
        "inf*",
        "p*",
        "trn*",
    ]
    (where,) = fake.calls_to("DescribeInstanceTypeOfferings", "us-east-1")
    assert where.params["LocationType"] == "availability-zone"
    calls = fake.calls_to("GetProducts")
    assert {c.region for c in calls} == {"us-east-1"}  # the Price List's region, for all
    by_region = {
        next(f["Value"] for f in c.params["Filters"] if f["Field"] == "regionCode"): c
        for c in calls
    }
    assert sorted(by_region) == REGIONS and len(calls) == 2  # one call per polled region
    prices = by_region["us-east-1"]
    filters = {f["Field"]: (f["Type"], f["Value"]) for f in prices.params["Filters"]}
    assert filters["operatingSystem"] == ("TERM_MATCH", "Linux")
    assert filters["tenancy"] == ("TERM_MATCH", "Shared")
    assert filters["preInstalledSw"] == ("TERM_MATCH", "NA")
    assert filters["capacitystatus"] == ("TERM_MATCH", "Used")
    assert filters["instanceType"] == (
        "ANY_OF",
        "dl2q.24xlarge,g5.xlarge,g6f.large,inf2.xlarge,p5.48xlarge,p6-b300.48xlarge,"
        f"{UNKNOWN_GPU_TYPE},trn1.32xlarge",
    )
    assert prices.params["ServiceCode"] == "AmazonEC2"


def test_every_page_is_read(fake: AwsFake, core: botocore.session.Session) -> None:
    whole = adapter(fake, core).fetch()
    fake.page_size = 2
    fake.calls.clear()
    paged = adapter(fake, core).fetch()
    assert sorted(by_key(paged)) == sorted(by_key(whole))
    assert {(q.region, q.name) for q in paged.quotas} == {(q.region, q.name) for q in whole.quotas}
    assert max(c.page for c in fake.calls_to("DescribeInstanceTypes", "us-east-1")) == 4
    assert max(c.page for c in fake.calls_to("GetProducts", "us-east-1")) >= 2


def test_regions_default_to_the_enabled_ones(fake: AwsFake, core: botocore.session.Session) -> None:
    result = adapter(fake, core, regions=None).fetch()
    assert set(result.scopes_ok) == ALL_SCOPES  # ap-east-1 is not opted in
    (call,) = fake.calls_to("DescribeRegions")
    assert call.region == "us-east-1"


def test_region_missing_from_the_table_keeps_offers_without_location(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.instance_types["xx-test-1"] = [P5]
    fake.offerings["xx-test-1"] = [{"InstanceType": "p5.48xlarge", "Location": "xx-test-1a"}]
    fake.price_items.append(price_item("p5.48xlarge", "xx-test-1", "50.0000000000"))
    result = adapter(fake, core, regions=["xx-test-1"], capacity_blocks=False).fetch()
    (offer,) = result.offers
    assert (offer.region, offer.zone, offer.price_per_hour) == (
        "xx-test-1",
        "xx-test-1a",
        Decimal(50),
    )
    assert (offer.country, offer.jurisdiction, offer.continent) == (None, None, None)
    assert any("xx-test-1" in n and "regions.csv" in n for n in result.notes)


def test_unknown_gpu_and_unknown_region_are_kept_without_model_or_location(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    # The fictional p99z (a device no catalogue knows) beside p5, in us-east-1 and in a
    # region the table lacks.
    fake.instance_types["xx-test-1"] = [P5, P99Z]
    fake.offerings["xx-test-1"] = [
        {"InstanceType": "p5.48xlarge", "Location": "xx-test-1a"},
        {"InstanceType": UNKNOWN_GPU_TYPE, "Location": "xx-test-1a"},
    ]
    fake.price_items += [
        price_item("p5.48xlarge", "xx-test-1", "50.0000000000"),
        price_item(UNKNOWN_GPU_TYPE, "xx-test-1", "44.0000000000"),
    ]
    fake.spot["xx-test-1"] = []
    result = adapter(fake, core, regions=["us-east-1", "xx-test-1"], capacity_blocks=False).fetch()
    assert list(result.scope_errors) == []
    offers = by_key(result)

    # Priced like any type: the Price List's on-demand price and the spot history's price.
    for key, usd in (
        (f"aws/us-east-1/us-east-1a/{UNKNOWN_GPU_TYPE}/on_demand", US_PRICES[UNKNOWN_GPU_TYPE]),
        (f"aws/us-east-1/us-east-1a/{UNKNOWN_GPU_TYPE}/spot", "16.000000"),
        (f"aws/xx-test-1/xx-test-1a/{UNKNOWN_GPU_TYPE}/on_demand", "44.0000000000"),
    ):
        offer = offers[key]
        assert (offer.gpu_model, offer.gpu_name_raw) == (None, UNKNOWN_GPU_NAME)
        assert (offer.gpu_family, offer.gpu_vendor, offer.form_factor) == (None, None, None)
        assert offer.accelerator_kind is None
        assert (offer.gpu_count, offer.gpu_memory_gb) == (Decimal(4), Decimal(64))  # 65536 MiB
        assert (offer.vcpus, offer.interconnect) == (Decimal(96), "EFA")
        assert offer.price_per_hour == Decimal(usd)
        assert offer.price_per_gpu_hour == to_price(Decimal(usd) / 4)
    unknown = offers[f"aws/us-east-1/us-east-1a/{UNKNOWN_GPU_TYPE}/on_demand"]
    assert (unknown.country, unknown.jurisdiction) == ("US", "US")
    nowhere = offers["aws/xx-test-1/xx-test-1a/p5.48xlarge/on_demand"]
    assert nowhere.gpu_model == "H100-SXM"
    assert (nowhere.country, nowhere.jurisdiction, nowhere.continent) == (None, None, None)
    assert offers[f"aws/xx-test-1/xx-test-1a/{UNKNOWN_GPU_TYPE}/on_demand"].country is None

    assert result.skipped.get("unknown_gpu", 0) == 0
    assert any(UNKNOWN_GPU_TYPE in n and f"'{UNKNOWN_GPU_NAME}'" in n for n in result.notes)
    assert unrecognised_of(result.offers) == {
        "aws": {"regions": {"xx-test-1": 2}, "gpu_names": {UNKNOWN_GPU_NAME: 3}}
    }


def test_capacity_blocks_can_be_turned_off(fake: AwsFake, core: botocore.session.Session) -> None:
    result = adapter(fake, core, capacity_blocks=False).fetch()
    assert {s.market for s in result.scopes_ok} == {Market.ON_DEMAND, Market.SPOT}
    assert fake.calls_to("DescribeCapacityBlockOfferings") == []


@pytest.mark.parametrize(
    ("info", "model", "count"),
    [
        (P5, "H100-SXM", Decimal(8)),
        (G6F, "L4", Decimal("0.125")),
        (INF2, "Inferentia2", Decimal(1)),
        (TRN1, "Trainium", Decimal(16)),
    ],
    ids=["p5", "g6f-partition", "inf2-neuron", "trn1-neuron"],
)
def test_instance_type_mapping(info: dict[str, Any], model: str, count: Decimal) -> None:
    spec = parse_instance_type(info)
    assert spec.model is not None
    assert (spec.model.name, spec.count) == (model, count)


def test_price_list_never_picks_between_two_prices() -> None:
    items = [
        price_item("p5.48xlarge", "us-east-1", "55.0400000000", sku="A"),
        price_item("p5.48xlarge", "us-east-1", "57.0000000000", sku="B"),
        price_item("g5.xlarge", "us-east-1", "1.0060000000", sku="C"),
        price_item("g5.xlarge", "us-west-2", "9.9990000000", sku="D"),  # another region
    ]
    book = parse_price_list([json.dumps(i) for i in items], "us-east-1")
    assert book.ambiguous == {"p5.48xlarge"}
    assert book.prices["g5.xlarge"].usd == Decimal("1.006")
    with pytest.raises(MalformedResponse, match="not JSON"):
        parse_price_list(['{"product": '], "us-east-1")
    bad = price_item("g5.xlarge", "us-east-1", "cheap")
    with pytest.raises(MalformedResponse, match="not a number"):
        parse_price_list([json.dumps(bad)], "us-east-1")


def test_price_missing_or_ambiguous_skips_the_type(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.price_items = [
        i for i in fake.price_items if i["product"]["attributes"]["instanceType"] != "g5.xlarge"
    ]
    fake.price_items.append(price_item("inf2.xlarge", "us-east-1", "0.9000000000", sku="OTHER"))
    result = adapter(fake, core).fetch()
    markets = {(o.instance_type, o.market) for o in result.offers}
    assert ("g5.xlarge", Market.ON_DEMAND) not in markets
    assert ("g5.xlarge", Market.SPOT) in markets
    assert ("inf2.xlarge", Market.ON_DEMAND) not in markets
    assert result.skipped["no_price:on_demand"] == 2  # g5 in both regions
    assert result.skipped["ambiguous_price"] == 1
    assert list(result.scope_errors) == []


@pytest.mark.parametrize(
    "value",
    [
        "2026-05-01T12:00:00.000Z",
        "2026-05-01T14:00:00+02:00",
        "2006-01-02T15:04:05.999999999Z",  # moto's spot timestamps
        "Wed, 01 May 2026 12:00:00 GMT",
        1714564800,
    ],
)
def test_fast_timestamps_are_botocores_instants(value: Any) -> None:
    assert parse_timestamp(value) == botocore.utils.parse_timestamp(value)
    assert parse_timestamp(value).tzinfo is not None


def _client_error(code: str, status: int) -> ClientError:
    response: Any = {
        "Error": {"Code": code, "Message": "m"},
        "ResponseMetadata": {"HTTPStatusCode": status},
    }
    return ClientError(response, "DescribeSpotPriceHistory")


@pytest.mark.parametrize(
    ("exc", "code"),
    [
        (_client_error("Throttling", 400), "rate_limited"),
        (_client_error("ThrottlingException", 400), "rate_limited"),
        (_client_error("RequestLimitExceeded", 503), "rate_limited"),
        (_client_error("SomethingNew", 429), "rate_limited"),
        (_client_error("ExpiredToken", 400), "auth_failed"),
        (_client_error("InvalidClientTokenId", 403), "auth_failed"),
        (_client_error("AccessDeniedException", 400), "auth_failed"),
        (_client_error("InternalError", 500), "unavailable"),
        (_client_error("ServiceUnavailable", 503), "unavailable"),
        (_client_error("InvalidParameterValue", 400), "rejected"),
        (ReadTimeoutError(endpoint_url="http://x"), "timeout"),
        (ConnectTimeoutError(endpoint_url="http://x"), "timeout"),
        (EndpointConnectionError(endpoint_url="http://x"), "unavailable"),
        (ResponseParserError("Unable to parse response"), "malformed"),
        (NoCredentialsError(), "auth_failed"),
    ],
)
def test_sdk_errors_map_onto_the_provider_errors(exc: Exception, code: str) -> None:
    mapped = map_error(exc, "ec2 DescribeSpotPriceHistory us-east-1", 0.5)
    assert mapped is not None and mapped.code == code
    assert str(mapped).startswith("ec2 DescribeSpotPriceHistory us-east-1: ")
    assert map_error(ValueError("a bug"), "x", 0.5) is None


# ------------------------------------------------------------------------------ faults


def assert_only_failed(result: PollResult, failed: dict[Scope, str], *fragments: str) -> None:
    """`failed` scopes are in scope_errors with those codes; every other scope succeeded and
    still has its offers; no secret anywhere."""
    assert {e.scope: e.code for e in result.scope_errors} == failed, result.scope_errors
    assert set(result.scopes_ok) == ALL_SCOPES - set(failed)
    for err in result.scope_errors:
        assert SECRET_KEY not in err.message and ACCESS_KEY not in err.message
        for fragment in fragments:
            assert fragment in err.message, err.message
    for offer in result.offers:
        assert Scope("aws", offer.region, offer.market) not in failed
    assert any(o.region == "eu-west-1" for o in result.offers)


def test_timeout(fake: AwsFake, core: botocore.session.Session) -> None:
    fake.fail(
        FakeResponse(delay_s=3.0, body=ec2_xml("DescribeSpotPriceHistory", {}), headers=XML),
        action="DescribeSpotPriceHistory",
        region="us-east-1",
    )
    # The timeout leaves the other calls ample room on a loaded CI machine.
    result = adapter(fake, core, timeout_s=1.0).fetch()
    assert_only_failed(result, {Scope("aws", "us-east-1", Market.SPOT): "timeout"}, "within 1s")
    assert any(o.key.startswith("aws/us-east-1/us-east-1a/p5.48xlarge/on") for o in result.offers)


def test_connection_refused(core: botocore.session.Session) -> None:
    url = f"http://127.0.0.1:{closed_port()}"
    for regions in (REGIONS, None):
        # The catalogue (or the region discovery before it) is read first: the poll fails.
        result = adapter(url, core, regions=regions).fetch()
        (err,) = result.scope_errors
        assert (err.scope, err.code) == (Scope("aws"), "unavailable")
        assert "connection failed" in err.message
        assert list(result.offers) == [] and list(result.scopes_ok) == []


def test_5xx_fails_the_region_whose_offerings_failed(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.fail(
        ec2_error(500, "InternalError", "An internal error has occurred"),
        action="DescribeInstanceTypeOfferings",
        region="us-east-1",
    )
    result = adapter(fake, core).fetch()
    failed = {Scope("aws", "us-east-1", m): "unavailable" for m in Market if m != Market.RESERVED}
    assert_only_failed(result, failed, "InternalError", "HTTP 500")
    assert not any(q.region == "us-east-1" for q in result.quotas)


def test_throttling_is_rate_limited(fake: AwsFake, core: botocore.session.Session) -> None:
    fake.fail(
        ec2_error(503, "RequestLimitExceeded", "Request limit exceeded."),
        action="DescribeCapacityBlockOfferings",
        region="us-east-1",
    )
    result = adapter(fake, core).fetch()
    assert_only_failed(
        result, {Scope("aws", "us-east-1", Market.CAPACITY_BLOCK): "rate_limited"}, "HTTP 503"
    )
    (err,) = result.scope_errors
    assert err.retry_after_s is None  # AWS sends none; botocore's backoff is the wait


def test_throttling_is_retried_by_botocore(fake: AwsFake, core: botocore.session.Session) -> None:
    fake.fail(
        ec2_error(503, "RequestLimitExceeded", "Request limit exceeded."),
        action="DescribeSpotPriceHistory",
        region="eu-west-1",
    )
    result = adapter(fake, core, max_attempts=2).fetch()
    assert list(result.scope_errors) == []
    assert len(fake.calls_to("DescribeSpotPriceHistory", "eu-west-1")) == 2
    assert "aws/eu-west-1/eu-west-1c/p5.48xlarge/spot" in by_key(result)


def test_malformed_xml(fake: AwsFake, core: botocore.session.Session) -> None:
    fake.fail(
        FakeResponse(body=b"<DescribeSpotPriceHistoryResponse><spotPriceHis", headers=XML),
        action="DescribeSpotPriceHistory",
        region="us-east-1",
    )
    result = adapter(fake, core).fetch()
    assert_only_failed(result, {Scope("aws", "us-east-1", Market.SPOT): "malformed"}, "unreadable")


def test_truncated_xml(fake: AwsFake, core: botocore.session.Session) -> None:
    rows = [spot_row("us-east-1a", "p5.48xlarge", "31.464000", T0)] * 30
    fake.fail(
        FakeResponse(
            body=ec2_xml("DescribeSpotPriceHistory", {"SpotPriceHistory": rows}),
            headers=XML,
            truncate=True,
        ),
        action="DescribeSpotPriceHistory",
        region="us-east-1",
    )
    result = adapter(fake, core).fetch()
    # The connection closes mid-body: botocore reports it as a dropped connection, or (when
    # the close races its read) as a document that ends early. Either way the scope fails.
    # The dropped connection may also cut another us-east-1 call in flight on it; other
    # regions are untouched.
    failed = {e.scope: e.code for e in result.scope_errors}
    assert failed[Scope("aws", "us-east-1", Market.SPOT)] in TRUNCATED, failed
    assert all(s.region == "us-east-1" and c in TRUNCATED for s, c in failed.items()), failed
    assert_only_failed(result, failed)


#: How a body cut off mid-way surfaces, depending on when the client sees the close.
TRUNCATED = {"unavailable", "malformed"}


def test_malformed_and_truncated_price_list_json(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.fail(
        FakeResponse(body=b'{"FormatVersion": "aws_v1", "PriceList": ["{\\"pro', headers={}),
        action="GetProducts",
        region="us-east-1",
    )
    result = adapter(fake, core, regions=["us-east-1"]).fetch()
    assert {e.scope: e.code for e in result.scope_errors} == {
        Scope("aws", "us-east-1", Market.ON_DEMAND): "malformed"
    }
    # A body that is JSON, but whose PriceList item is not.
    fake.fail(
        FakeResponse(body=b'{"FormatVersion": "aws_v1", "PriceList": ["{\\"product\\": "]}'),
        action="GetProducts",
    )
    result = adapter(fake, core, regions=["us-east-1"]).fetch()
    (err,) = result.scope_errors
    assert (err.code, err.scope.market) == ("malformed", Market.ON_DEMAND)
    assert "not JSON" in err.message
    fake.fail(
        FakeResponse(body=b'{"FormatVersion": "aws_v1", "PriceList": []}', truncate=True),
        action="GetProducts",
    )
    result = adapter(fake, core, regions=["us-east-1"]).fetch()
    (err,) = result.scope_errors
    assert err.scope.market == Market.ON_DEMAND and err.code in TRUNCATED, err


def test_a_page_failing_mid_pagination_fails_the_scope(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.page_size = 2
    fake.fail(
        ec2_error(503, "Unavailable", "Please try again later"),
        action="DescribeSpotPriceHistory",
        region="us-east-1",
        page=2,
    )
    fake.fail(
        json_error(500, "InternalErrorException", "internal error"),
        action="GetProducts",
        page=3,
    )
    result = adapter(fake, core).fetch()
    assert_only_failed(
        result,
        {
            Scope("aws", "us-east-1", Market.SPOT): "unavailable",
            Scope("aws", "us-east-1", Market.ON_DEMAND): "unavailable",
        },
    )
    # Page 1 of the spot history was read, yet none of it is offered: never a partial scope.
    assert [c.page for c in fake.calls_to("DescribeSpotPriceHistory", "us-east-1")] == [1, 2]
    assert not any(o.region == "us-east-1" and o.market == Market.SPOT for o in result.offers)


def test_one_region_failing_while_others_work(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.fail(ec2_error(503, "Unavailable", "down"), region="eu-west-1", times=100)
    result = adapter(fake, core).fetch()
    failed = {s: "unavailable" for s in ALL_SCOPES if s.region == "eu-west-1"}
    assert {e.scope: e.code for e in result.scope_errors} == failed
    assert set(result.scopes_ok) == ALL_SCOPES - set(failed)
    assert {o.region for o in result.offers} == {"us-east-1"}
    # p5 in 3 AZs, g5 in 5, g6f and inf2 in 2, trn1, dl2q, p6-b300 and the fictional p99z
    # in 1.
    assert len([o for o in result.offers if o.market == Market.ON_DEMAND]) == 16


def test_price_list_down_fails_only_the_on_demand_scopes(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.fail(
        json_error(503, "ServiceUnavailableException", "Service is unavailable"),
        action="GetProducts",
        times=100,
    )
    result = adapter(fake, core).fetch()
    failed = {Scope("aws", r, Market.ON_DEMAND): "unavailable" for r in REGIONS}
    assert_only_failed(result, failed, "ServiceUnavailableException")
    assert {o.market for o in result.offers} == {Market.SPOT, Market.CAPACITY_BLOCK}
    assert {q.market for q in result.quotas} == {Market.SPOT}


@pytest.mark.parametrize(
    ("status", "code"),
    [(400, "ExpiredToken"), (401, "AuthFailure"), (403, "UnauthorizedOperation")],
)
def test_expired_or_rejected_credentials(
    fake: AwsFake,
    core: botocore.session.Session,
    caplog: pytest.LogCaptureFixture,
    status: int,
    code: str,
) -> None:
    caplog.set_level(logging.DEBUG)
    # An error text that echoes the credentials must not carry them any further.
    fake.fail(
        ec2_error(status, code, f"key {ACCESS_KEY} secret={SECRET_KEY} is not valid"),
        times=100,
    )
    result = adapter(fake, core).fetch()
    assert list(result.offers) == [] and list(result.scopes_ok) == []
    (err,) = result.scope_errors
    assert (err.scope, err.code) == (Scope("aws"), "auth_failed")
    messages = " ".join(e.message for e in result.scope_errors)
    assert code in messages
    assert ACCESS_KEY not in messages and SECRET_KEY not in messages
    assert ACCESS_KEY not in caplog.text and SECRET_KEY not in caplog.text
    assert SECRET_KEY not in " ".join(result.notes)


def test_credentials_rejected_in_one_region(
    fake: AwsFake, core: botocore.session.Session, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake.fail(
        ec2_error(401, "AuthFailure", f"AWS was not able to validate {ACCESS_KEY}"),
        region="eu-west-1",
        times=100,
    )
    result = adapter(fake, core).fetch()
    failed = {s: "auth_failed" for s in ALL_SCOPES if s.region == "eu-west-1"}
    assert {e.scope: e.code for e in result.scope_errors} == failed
    assert {o.region for o in result.offers} == {"us-east-1"}
    assert ACCESS_KEY not in caplog.text
    assert all(ACCESS_KEY not in e.message for e in result.scope_errors)


def test_catalogue_failing_fails_the_poll(fake: AwsFake, core: botocore.session.Session) -> None:
    fake.fail(ec2_error(500, "InternalError", "internal"), action="DescribeInstanceTypes")
    result = adapter(fake, core).fetch()
    (err,) = result.scope_errors
    assert (err.scope, err.code) == (Scope("aws"), "unavailable")
    assert "DescribeInstanceTypes" in err.message
    assert list(result.offers) == [] and list(result.scopes_ok) == []


def test_region_discovery_failing_fails_the_poll(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.fail(
        ec2_error(401, "AuthFailure", "AWS was not able to validate"), action="DescribeRegions"
    )
    result = adapter(fake, core, regions=None).fetch()
    (err,) = result.scope_errors
    assert (err.scope, err.code) == (Scope("aws"), "auth_failed")
    assert list(result.offers) == [] and list(result.scopes_ok) == []


def test_unreadable_quotas_are_a_note_not_a_failure(
    fake: AwsFake, core: botocore.session.Session
) -> None:
    fake.fail(
        json_error(400, "AccessDeniedException", "not authorized: servicequotas:List"),
        action="ListServiceQuotas",
        region="us-east-1",
    )
    result = adapter(fake, core).fetch()
    assert list(result.scope_errors) == []
    assert {q.region for q in result.quotas} == {"eu-west-1"}
    assert any("us-east-1: quotas not read (auth_failed)" in n for n in result.notes)


# ------------------------------------------------------------------------------ settings


@pytest.fixture
def no_aws_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> pytest.MonkeyPatch:
    """No credential of the developer's machine reaches the test (and no IMDS wait)."""
    for name in (
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_DEFAULT_PROFILE",
        "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
        "AWS_CONTAINER_CREDENTIALS_FULL_URI",
        "AWS_WEB_IDENTITY_TOKEN_FILE",
        "AWS_ROLE_ARN",
        "AWS_ENDPOINT_URL",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    return monkeypatch


def test_disabled_without_credentials(no_aws_env: pytest.MonkeyPatch) -> None:
    with pytest.raises(ProviderDisabled) as info:
        Aws.from_settings(Settings(), Clock())
    assert "AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY" in str(info.value)
    assert "BROKER_AWS__PROFILE" in str(info.value)
    with pytest.raises(ProviderDisabled, match="profile 'nope' not found"):
        Aws.from_settings(Settings(aws={"profile": "nope"}), Clock())


@pytest.fixture(scope="module")
def moto_url() -> Iterator[str]:
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


def test_aws_endpoint_url_points_boto3_at_a_moto_server(
    no_aws_env: pytest.MonkeyPatch, moto_url: str, fake: AwsFake
) -> None:
    no_aws_env.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    no_aws_env.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    no_aws_env.setenv("AWS_ENDPOINT_URL", moto_url)
    # moto has no Price List API (PROVIDERS.md §1.8): boto3's per-service variable sends
    # those calls to the fake; without it the on-demand scopes fail alone, as they would if
    # AWS's Price List were down (test_price_list_down_fails_only_the_on_demand_scopes).
    no_aws_env.setenv("AWS_ENDPOINT_URL_PRICING", fake.url)
    no_aws_env.setenv("BROKER_AWS__REGIONS", "us-east-1")
    no_aws_env.setenv("BROKER_AWS__CAPACITY_BLOCKS", "false")  # moto lacks them (§1.5)
    no_aws_env.setenv("BROKER_AWS__INSTANCE_TYPE_PATTERNS", "p5*")  # moto filters slowly
    no_aws_env.setenv("BROKER_AWS__MAX_ATTEMPTS", "1")
    cls = get_provider_class("aws")
    assert cls is Aws
    result = cls.from_settings(Settings(), Clock()).fetch()
    assert list(result.scope_errors) == []
    assert set(result.scopes_ok) == {
        Scope("aws", "us-east-1", Market.ON_DEMAND),
        Scope("aws", "us-east-1", Market.SPOT),
    }
    offers = by_key(result)
    # moto served the catalogue, the AZ offerings and its (synthetic) spot prices ...
    assert len([k for k in offers if "/p5.48xlarge/spot" in k]) == 6  # six us-east-1 AZs
    spot = offers["aws/us-east-1/us-east-1a/p5.48xlarge/spot"]
    assert (spot.gpu_model, spot.gpu_count, spot.country) == ("H100-SXM", 8, "US")
    assert spot.raw["product_description"] == "Linux/UNIX (Amazon VPC)"  # moto's answer
    # ... and the fake the on-demand price, for the zones moto offers p5.48xlarge in.
    od = offers["aws/us-east-1/us-east-1f/p5.48xlarge/on_demand"]
    assert od.price_per_gpu_hour == to_price(Decimal(US_PRICES["p5.48xlarge"]) / 8)
    # moto's Service Quotas knows only VPC quotas: a note, not a failure.
    assert result.quotas == [] or all(q.region == "us-east-1" for q in result.quotas)


# ------------------------------------------------------------------------------ ingest


def ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="aws").events)


def active_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(StoredOffer).where(
                StoredOffer.provider == "aws", col(StoredOffer.active).is_(True)
            )
        ).all()
    return {r.key for r in rows}


def test_failed_region_keeps_its_offers_then_recovers(
    engine: Engine, fake: AwsFake, core: botocore.session.Session
) -> None:
    clock = Clock()
    aws = adapter(fake, core, clock=clock)
    first = aws.fetch()
    assert ingest(engine, first) == {"offer_appeared": len(first.offers)}
    everything = active_keys(engine)
    assert len(everything) == len(first.offers) == 28

    # Poll 2: eu-west-1 is down and the Price List API too: nothing of theirs is withdrawn.
    clock.tick()
    fake.fail(ec2_error(503, "Unavailable", "down"), region="eu-west-1", times=100)
    fake.fail(
        json_error(503, "ServiceUnavailableException", "down"), action="GetProducts", times=100
    )
    assert ingest(engine, aws.fetch()) == {"provider_degraded": 1}
    assert active_keys(engine) == everything

    # Poll 3: all good again; a spot price moved meanwhile.
    clock.tick()
    fake.faults.clear()
    fake.spot["eu-west-1"] = [
        spot_row("eu-west-1c", "p5.48xlarge", "34.100000", T0 + timedelta(minutes=7))
    ]
    assert ingest(engine, aws.fetch()) == {"provider_recovered": 1, "price_changed": 1}
    assert active_keys(engine) == everything
    with Session(engine) as session:
        events = session.exec(
            select(MarketEvent)
            .where(MarketEvent.type == "offer_withdrawn")
            .order_by(col(MarketEvent.id))
        ).all()
    assert events == []

    # Poll 4: a block sold (gone from the offerings) is withdrawn, inside its covered scope.
    clock.tick()
    fake.capacity_blocks["us-east-1"] = fake.capacity_blocks["us-east-1"][1:]
    assert ingest(engine, aws.fetch()) == {"offer_withdrawn": 1}
    assert (
        "aws/us-east-1/us-east-1a/p5.48xlarge/capacity_block/cb-0123456789abcdef0"
        not in active_keys(engine)
    )
