"""AWS: EC2 accelerated instance types, where they are offered, on-demand list prices, spot
prices, EC2 Capacity Blocks for ML, and the account's accelerated-family vCPU quotas.

## What it calls (PROVIDERS.md §1; boto3, one client per service and region)
Once per poll, in the session's region (default `us-east-1`):

- `ec2.describe_regions` when `BROKER_AWS__REGIONS` is not set; the regions whose
  `OptInStatus` is `opt-in-not-required` or `opted-in` are polled.
- `ec2.describe_instance_types` (paged, 100 per page) with `IncludeUnsupportedInRegion=true`
  and the `instance-type` filter `settings.instance_type_patterns` (wildcards; default the
  accelerated families `dl* f* g* inf* p* trn*`). An instance type is defined globally (its
  devices, vCPUs and usage classes do not vary by region), so one read serves every region;
  parsing these large records once instead of thirty times halved a poll's CPU. A type
  is kept when it carries devices in `GpuInfo.Gpus`, else `NeuronInfo.NeuronDevices`
  (Inferentia, Trainium), else `InferenceAcceleratorInfo` (Qualcomm AI100 in dl2q), else
  `FpgaInfo.Fpgas`.

Then per region, on a bounded pool (`max_concurrency`):

- `ec2.describe_instance_type_offerings` (`LocationType=availability-zone`, filter
  `instance-type` = the kept type names, exact names as moto also understands, 100 per call):
  the availability zones each type is offered in. An offering says the type exists there,
  nothing about free capacity (§1.3).
- `pricing.get_products` (the Price List API, `settings.pricing_region`, us-east-1), paged,
  `ServiceCode=AmazonEC2` with TERM_MATCH `regionCode=<region>`, `operatingSystem=Linux`,
  `tenancy=Shared`, `preInstalledSw=NA`, `capacitystatus=Used` and `instanceType` ANY_OF the
  region's offered on-demand types (comma-joined, 40 per call; the comma form is the one AWS's
  own awslabs/mcp pricing server sends [3P], the model only says "any of the provided values").
- `ec2.describe_spot_price_history` (paged) with `InstanceTypes` = the offered spot types,
  `ProductDescriptions=["Linux/UNIX"]`, `StartTime=now`: AWS then returns the last change
  before now, i.e. the price in effect (§1.4).
- `ec2.describe_capacity_block_offerings` (paged) per type whose `SupportedUsageClasses` has
  `capacity-block` and that is offered in the region, per `settings.capacity_block_hours`, with
  `InstanceCount=settings.capacity_block_instance_count` (off with
  `BROKER_AWS__CAPACITY_BLOCKS=false`).
- `service-quotas.list_service_quotas(ServiceCode="ec2")` (paged) for the vCPU quotas in
  `QUOTA_CODES`; a code the list lacks ("if the applied quota value is not available for a
  quota, the quota is not retrieved", model doc) is read with
  `get_aws_default_service_quota`.

## Scopes and faults
Each region gives three scopes, one per market: `Scope("aws", region, on_demand | spot |
capacity_block)`. The region's offerings (read once, shared) failing fails all three;
otherwise each market stands alone: the Price List API failing (it is one global endpoint)
fails only the `on_demand` scopes, while spot prices and capacity blocks of the same regions
are still covered. A page failing mid-pagination fails the scope that read it. Quotas are
auxiliary: a failure to read them (typically a missing `servicequotas:*` permission) adds a
note and no quotas, never a scope error, because quotas do not withdraw offers. The two global
reads (`describe_regions`, `describe_instance_types`) failing fail the poll (`failed_poll`):
without them no scope can be read completely.

botocore does the retrying: `Config(retries={"mode": "standard", "total_max_attempts":
max_attempts})`, i.e. `max_attempts` requests in all (botocore's `max_attempts` key would count
retries only, one more request than the setting says), exponential backoff with jitter for
throttling, 5xx and connection errors; connect and read timeouts are `timeout_s`. What is left
after that is mapped in `map_error`: `Throttling`, `ThrottlingException`,
`RequestLimitExceeded`, ... or HTTP 429 → `RateLimited` (AWS sends no Retry-After);
`AuthFailure`, `UnauthorizedOperation`, `ExpiredToken`, `InvalidClientTokenId`, ... or HTTP
401/403 → `AuthFailed`; HTTP 5xx, `ServiceUnavailable`, `InternalError` and connection failures
→ `ProviderUnavailable`; read/connect timeouts → `ProviderTimeout`; an unparseable body
(`ResponseParserError`) or a price list item that is not the documented JSON →
`MalformedResponse`; any other 4xx → `RequestRejected`.

## Offers (one per availability zone; `zone` = the AZ name)
- **Per zone, not per region**: spot prices and capacity blocks are per AZ, a type is offered
  in some AZs of a region only, and a launch (or a placement group for a gang) targets one AZ;
  the on-demand price is regional and is repeated on each AZ's offer (so the keys of all three
  markets look alike: `aws/<region>/<az>/<type>/<market>[/<offering id>]`).
- `gpu_model` etc. from `broker.gpus.normalise(device Name, provider="aws", instance_type,
  memory_mib=device MemoryInfo.SizeInMiB)` (`H100` on `p5.*` is `H100-SXM`); a device the
  catalogue does not know keeps the type, its offers with `gpu_model` None and
  `gpu_name_raw` = the device `Name` (`providers.base.model_fields`): counted as
  unrecognised by the ingest, never guessed, priced like any other type. A type mixing two
  device models is skipped (`mixed_accelerators`).
- `gpu_count` = the device entry's `Count`; for GPU partitions (`GpuPartitionSize` < 1, e.g.
  g6f.large: Count 0, LogicalGpuCount 1, partition 0.125) = `LogicalGpuCount` ×
  `GpuPartitionSize` (0.125 of an L4). `gpu_memory_gb` = device `MemoryInfo.SizeInMiB` / 1024
  (GiB, as AWS reports it; for a partition, the partition's share). `vcpus` =
  `VCpuInfo.DefaultVCpus`, `memory_gb` = `MemoryInfo.SizeInMiB` / 1024, `interconnect` =
  "EFA" when `NetworkInfo.EfaSupported`.
- **on_demand**: `price_per_hour` = `terms.OnDemand.*.priceDimensions.*.pricePerUnit.USD` of the
  one product matching the filters (unit `Hrs`), a decimal string parsed as `Decimal`; a type
  with no product is skipped (`no_price:on_demand`), one with two different prices is skipped
  (`ambiguous_price`), a zero price is skipped (`zero_price`). `availability` = `unknown`: a
  price list says nothing about capacity.
- **spot**: `price_per_hour` = `SpotPrice` of the newest record per (AZ, type) among
  `Linux/UNIX` and `Linux/UNIX (Amazon VPC)` records (the same Linux product; moto answers
  with the latter), only for AZs where the type is offered. `availability` = `unknown`
  (placement scores are not read).
- **capacity_block**: one offer per `CapacityBlockOfferingId` (`offering_id`), `zone` =
  `AvailabilityZone`, `earliest_start` = `StartDate` (UTC), `upfront_fee` = `UpfrontFee`
  (USD, the whole block), `availability` = `available` with `available_count` =
  `InstanceCount`, `min_duration_hours` = `max_duration_hours` = the block's length when whole
  hours. The model documents the length as `CapacityBlockDurationHours` *plus*
  `CapacityBlockDurationMinutes`, so

      price_per_hour (USD per instance-hour) = UpfrontFee / (InstanceCount × (hours + minutes/60))

  which for the usual whole-day blocks (minutes 0) is UpfrontFee / (InstanceCount ×
  CapacityBlockDurationHours); per GPU-hour divide by the GPUs per instance (`Offer` does).
  Offerings in another currency are skipped (`non_usd`).
- Location from `broker.regions` (`aws` rows); a region the table lacks keeps its offers with
  `country=None` and adds a note.

## Quotas
`Quota(provider="aws", region, name=QuotaCode, unit="vcpus", limit=Value, market=on_demand |
spot, instance_types=the region's polled types of the quota's families, description=QuotaName)`
for the codes in `QUOTA_CODES` whose families the region sells; on-demand quotas ride on the
region's `on_demand` scope, spot quotas on its `spot` scope. `usage` is not reported (Service
Quotas gives usage only through CloudWatch).

## Auth
boto3's standard credential chain through a session of profile `settings.profile` (None = the
default chain): `AWS_ACCESS_KEY_ID`/`AWS_SECRET_ACCESS_KEY`(/`AWS_SESSION_TOKEN`),
`AWS_PROFILE` or `BROKER_AWS__PROFILE`, SSO, container or instance role; no credentials →
`ProviderDisabled`. `AWS_ENDPOINT_URL` (and `AWS_ENDPOINT_URL_<SERVICE>`) is honoured by
botocore itself, which is how the adapter is pointed at a moto server. The credentials are
passed to redaction as secrets, and botocore's logger is held at INFO (its DEBUG records carry
signed headers). `from_settings` also swaps botocore's dateutil timestamp parser for
`parse_timestamp` (`tune_session`).

## Concurrency
Scopes go to the pool market by market, capacity blocks first (their scopes are the longest
chains, one call per type), so the first workers start on different regions. A poll of all
30 regions makes about 200 calls; against a fake answering after 50 ms it takes about twice
the slowest single region (bench/adapter_aws.py), bounded by the ~1 s of CPU boto3 spends
building, signing and parsing them.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from functools import partial
from typing import Any, ClassVar, Generic, TypeVar

import boto3
import botocore.exceptions as bexc
import botocore.session
import botocore.utils
from botocore.config import Config
from botocore.parsers import ResponseParserError

from broker import gpus, regions
from broker.config import AwsSettings, Settings
from broker.domain import (
    Availability,
    Clock,
    Market,
    Offer,
    PollResult,
    Quota,
    Scope,
    to_count,
    to_price,
)
from providers._record_botocore import placeholder_credentials, tap_botocore
from providers._recording import Tap
from providers.base import (
    AuthFailed,
    MalformedResponse,
    ProviderDisabled,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    ScopeOffers,
    failed_poll,
    model_fields,
    place_fields,
    poll_scopes,
    redact,
    register,
)

log = logging.getLogger(__name__)

# botocore's DEBUG records dump signed request headers (the access key id, the session token)
# and raw response bodies (which may echo them). Unless someone configured the botocore
# logger on purpose, keep it at INFO so a root logger at DEBUG cannot leak credentials.
_BOTOCORE_LOG = logging.getLogger("botocore")
if _BOTOCORE_LOG.level == logging.NOTSET:
    _BOTOCORE_LOG.setLevel(logging.INFO)

NAME = "aws"
MAX_NOTES = 50
NO_CREDENTIALS = (
    "no AWS credentials found: set AWS_PROFILE or AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY "
    "(or BROKER_AWS__PROFILE)"
)
OPTED_IN = frozenset({"opt-in-not-required", "opted-in"})
#: Spot product descriptions of Linux (EC2-Classic's plain name and the VPC one, §1.4).
LINUX_SPOT = ("Linux/UNIX", "Linux/UNIX (Amazon VPC)")
#: Types per `instanceType` ANY_OF value (pricing) and per filter / InstanceTypes list (EC2).
PRICING_CHUNK = 40
EC2_CHUNK = 100
#: The Price List products that are "Linux, shared tenancy, no pre-installed software, a
#: running instance" (PROVIDERS.md §1.8); checked again on each item.
PRICE_ATTRIBUTES: Mapping[str, str] = {
    "operatingSystem": "Linux",
    "tenancy": "Shared",
    "preInstalledSw": "NA",
    "capacitystatus": "Used",
}
#: Service Quotas codes of the accelerated families' vCPU limits → (market, families). A
#: family is the letters an instance type starts with (`p5.48xlarge` → p, `gr6.4xlarge` → gr).
#: Codes and names as ListServiceQuotas returns them (captures in public repos [3P]:
#: "Running On-Demand P instances" L-417A185B, "All P Spot Instance Requests" L-7212CCBC, ...).
#: Gr6 counting against the G quota is [3P] only.
QUOTA_CODES: Mapping[str, tuple[Market, frozenset[str]]] = {
    "L-417A185B": (Market.ON_DEMAND, frozenset({"p"})),
    "L-DB2E81BA": (Market.ON_DEMAND, frozenset({"g", "gr", "vt"})),
    "L-1945791B": (Market.ON_DEMAND, frozenset({"inf"})),
    "L-2C3B7624": (Market.ON_DEMAND, frozenset({"trn"})),
    "L-6E869C2A": (Market.ON_DEMAND, frozenset({"dl"})),
    "L-74FC7D96": (Market.ON_DEMAND, frozenset({"f"})),
    "L-7212CCBC": (Market.SPOT, frozenset({"p"})),
    "L-3819A6DF": (Market.SPOT, frozenset({"g", "gr", "vt"})),
    "L-B5D1601B": (Market.SPOT, frozenset({"inf"})),
    "L-6B0D517C": (Market.SPOT, frozenset({"trn"})),
    "L-85EED4F7": (Market.SPOT, frozenset({"dl"})),
    "L-88CF9481": (Market.SPOT, frozenset({"f"})),
}
#: Where an instance type lists its accelerators, in order of preference (inf1 lists its
#: Inferentia chips under both NeuronInfo and InferenceAcceleratorInfo).
DEVICE_SOURCES = (
    ("GpuInfo", "Gpus"),
    ("NeuronInfo", "NeuronDevices"),
    ("InferenceAcceleratorInfo", "Accelerators"),
    ("FpgaInfo", "Fpgas"),
)

THROTTLING_CODES = frozenset(
    [
        "Throttling",
        "ThrottlingException",
        "ThrottledException",
        "RequestLimitExceeded",
        "EC2ThrottledException",
        "TooManyRequestsException",
        "RequestThrottled",
        "RequestThrottledException",
        "SlowDown",
        "PriorRequestNotComplete",
        "BandwidthLimitExceeded",
    ]
)
AUTH_CODES = frozenset(
    [
        "AuthFailure",
        "UnauthorizedOperation",
        "ExpiredToken",
        "ExpiredTokenException",
        "RequestExpired",
        "InvalidClientTokenId",
        "UnrecognizedClientException",
        "SignatureDoesNotMatch",
        "IncompleteSignature",
        "MissingAuthenticationToken",
        "AccessDenied",
        "AccessDeniedException",
        "OptInRequired",
        "InvalidAccessKeyId",
    ]
)
UNAVAILABLE_CODES = frozenset(
    [
        "ServiceUnavailable",
        "ServiceUnavailableException",
        "Unavailable",
        "InternalError",
        "InternalFailure",
        "InternalErrorException",
        "InternalServiceException",
        "ServiceException",
    ]
)

T = TypeVar("T")


# ------------------------------------------------------------------------------ errors


def map_error(exc: BaseException, what: str, timeout_s: float) -> ProviderError | None:
    """The ProviderError for a botocore/SDK failure of the call `what`, or None if `exc` is
    not an SDK failure (a bug, left to propagate)."""
    if isinstance(exc, bexc.ClientError):
        err = exc.response.get("Error") or {}
        code = str(err.get("Code") or "")
        message = str(err.get("Message") or "")
        meta = exc.response.get("ResponseMetadata")
        status = meta.get("HTTPStatusCode") if meta else None
        text = f"{what}: {code or 'error'} (HTTP {status}): {' '.join(message.split())[:300]}"
        if code in THROTTLING_CODES or status == 429:
            return RateLimited(text)  # AWS sends no Retry-After; botocore already backed off
        if code in AUTH_CODES or status in (401, 403):
            return AuthFailed(text)
        if code in UNAVAILABLE_CODES or (isinstance(status, int) and status >= 500):
            return ProviderUnavailable(text)
        return RequestRejected(text)
    if isinstance(exc, bexc.ReadTimeoutError | bexc.ConnectTimeoutError):
        return ProviderTimeout(f"{what}: no answer within {timeout_s:g}s")
    if isinstance(exc, bexc.ConnectionError | bexc.HTTPClientError):
        return ProviderUnavailable(f"{what}: connection failed: {type(exc).__name__}")
    if isinstance(exc, ResponseParserError):
        first = str(exc).splitlines()[0] if str(exc) else ""
        return MalformedResponse(f"{what}: unreadable answer: {first[:200]}")
    if isinstance(
        exc,
        bexc.NoCredentialsError
        | bexc.PartialCredentialsError
        | bexc.CredentialRetrievalError
        | bexc.TokenRetrievalError
        | bexc.SSOError,
    ):
        return AuthFailed(f"{what}: credentials unusable: {type(exc).__name__}")
    if isinstance(exc, bexc.ParamValidationError):
        return RequestRejected(f"{what}: {str(exc)[:300]}")
    if isinstance(exc, bexc.BotoCoreError):
        return ProviderError(f"{what}: {type(exc).__name__}: {str(exc)[:300]}")
    return None


def _client_error_code(exc: BaseException) -> str | None:
    cause = exc.__cause__
    if isinstance(cause, bexc.ClientError):
        return str((cause.response.get("Error") or {}).get("Code") or "") or None
    return None


# ------------------------------------------------------------------------------ parsing


def parse_timestamp(value: Any) -> datetime:
    """botocore's timestamp parser for the ISO 8601 strings AWS sends, without dateutil.

    The same instant as botocore's (and always aware: a string without an offset is UTC, as
    AWS's are), about ten times faster: a poll parses thousands (a spot record per AZ and
    type, a capacity block's dates), and dateutil was a third of a region's CPU. Anything
    else goes to botocore's parser.
    """
    if isinstance(value, str):
        try:
            parsed = datetime.fromisoformat(value)
        except ValueError:
            pass
        else:
            return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=UTC)
    result: datetime = botocore.utils.parse_timestamp(value)
    return result


def tune_session(core: botocore.session.Session) -> None:
    """Make clients created from `core` parse timestamps with `parse_timestamp`
    (botocore's documented `ResponseParserFactory.set_parser_defaults` hook)."""
    core.get_component("response_parser_factory").set_parser_defaults(
        timestamp_parser=parse_timestamp
    )


class _Skip(Exception):
    """A catalogue row the broker cannot sell: `reason` for `skipped`, `note` for humans."""

    def __init__(self, reason: str, note: str) -> None:
        super().__init__(note)
        self.reason = reason
        self.note = note


@dataclass(frozen=True, slots=True)
class InstanceSpec:
    """One accelerated instance type of a region's catalogue, mapped onto the broker's terms."""

    instance_type: str
    model: gpus.GpuModel | None
    device_name: str
    count: Decimal
    device_memory_gb: Decimal | None
    vcpus: Decimal | None
    memory_gb: Decimal | None
    interconnect: str | None
    usage_classes: frozenset[str]
    raw: Mapping[str, Any]

    @property
    def family(self) -> str:
        return family_of(self.instance_type)


def family_of(instance_type: str) -> str:
    """The letters an instance type starts with: `p5.48xlarge` → p, `trn1n.32xlarge` → trn."""
    m = re.match(r"[a-z]+", instance_type)
    return m.group(0) if m else ""


def _mib_to_gib(mib: Any) -> Decimal | None:
    if isinstance(mib, bool) or not isinstance(mib, int) or mib <= 0:
        return None
    return Decimal(mib) / 1024


def _device_count(dev: Mapping[str, Any]) -> Decimal:
    count = Decimal(int(dev.get("Count") or 0))
    partition = dev.get("GpuPartitionSize")
    if isinstance(partition, int | float) and 0 < partition < 1:
        logical = dev.get("LogicalGpuCount") or dev.get("Count") or 0
        return Decimal(int(logical)) * Decimal(str(partition))
    return count


def parse_instance_type(info: Mapping[str, Any]) -> InstanceSpec:
    """The `InstanceSpec` of one `InstanceTypeInfo` (boto3 dict).

    Raises:
        _Skip: no accelerator (`no_gpu`) or two device models (`mixed_accelerators`). A
            device the catalogue does not know is kept: `model` None, `device_name` its Name.
        MalformedResponse: no `InstanceType`.
    """
    itype = info.get("InstanceType")
    if not isinstance(itype, str) or not itype:
        raise MalformedResponse("ec2 DescribeInstanceTypes: an entry has no InstanceType")
    source, devices = "", []
    for section, list_key in DEVICE_SOURCES:
        found = (info.get(section) or {}).get(list_key) or []
        if found:
            source, devices = section, list(found)
            break
    if not devices:
        raise _Skip("no_gpu", f"{itype}: no GPU, Neuron, inference or FPGA device")
    names = {str(d.get("Name") or "") for d in devices}
    if len(names) != 1:
        raise _Skip("mixed_accelerators", f"{itype}: devices {sorted(names)}")
    (name,) = names
    count = sum((_device_count(d) for d in devices), Decimal(0))
    mib = (devices[0].get("MemoryInfo") or {}).get("SizeInMiB")
    if count <= 0:
        raise _Skip("no_gpu", f"{itype}: {source} {name!r} with count 0")
    model = gpus.normalise(
        name, provider=NAME, instance_type=itype, memory_mib=mib if isinstance(mib, int) else None
    )
    device_gb = _mib_to_gib(mib)
    if device_gb is None and model is not None and model.memory_gb is not None:
        device_gb = Decimal(model.memory_gb)
    vcpus = (info.get("VCpuInfo") or {}).get("DefaultVCpus")
    network = info.get("NetworkInfo") or {}
    raw: dict[str, Any] = {
        "device_source": source,
        "device_name": name,
        "device_manufacturer": devices[0].get("Manufacturer"),
        "device_count": [d.get("Count") for d in devices],
        "device_memory_mib": mib,
    }
    partition = devices[0].get("GpuPartitionSize")
    if isinstance(partition, int | float) and 0 < partition < 1:
        raw["gpu_partition_size"] = partition
        raw["logical_gpu_count"] = devices[0].get("LogicalGpuCount")
    return InstanceSpec(
        instance_type=itype,
        model=model,
        device_name=name,
        count=to_count(count),
        device_memory_gb=device_gb,
        vcpus=Decimal(vcpus) if isinstance(vcpus, int) and not isinstance(vcpus, bool) else None,
        memory_gb=_mib_to_gib((info.get("MemoryInfo") or {}).get("SizeInMiB")),
        interconnect="EFA" if network.get("EfaSupported") is True else None,
        usage_classes=frozenset(str(c) for c in info.get("SupportedUsageClasses") or ()),
        raw=raw,
    )


def _decimal(value: Any, what: str) -> Decimal:
    """A finite Decimal from a wire string; MalformedResponse otherwise."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise MalformedResponse(f"{what}: {value!r} is not a number")
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        raise MalformedResponse(f"{what}: {value!r} is not a number") from None
    if not d.is_finite():
        raise MalformedResponse(f"{what}: {value!r} is not a finite number")
    return d


@dataclass(frozen=True, slots=True)
class ListPrice:
    """One on-demand list price (USD per instance-hour) and where it came from."""

    usd: Decimal
    text: str
    sku: str
    rate_code: str


@dataclass
class PriceBook:
    """On-demand prices of one region by instance type; `ambiguous` types had two prices."""

    prices: dict[str, ListPrice] = field(default_factory=dict)
    ambiguous: set[str] = field(default_factory=set)


def parse_price_list(items: Iterable[Any], region: str) -> PriceBook:
    """The on-demand prices in `PriceList` items (JSON strings) of `pricing.get_products`.

    Items of another region or another product than Linux / Shared / NA / Used, and terms
    other than `OnDemand` with unit `Hrs`, are ignored. Two different prices for one type make
    it ambiguous (never a pick).

    Raises:
        MalformedResponse: an item is not JSON or not of the documented shape, or a price is
            not a number.
    """
    what = f"pricing GetProducts {region}"
    found: dict[str, dict[Decimal, ListPrice]] = {}
    for item in items:
        try:
            doc = json.loads(item) if isinstance(item, str | bytes) else item
        except ValueError:
            raise MalformedResponse(f"{what}: a PriceList item is not JSON") from None
        if not isinstance(doc, Mapping):
            raise MalformedResponse(f"{what}: a PriceList item is not an object")
        product = doc.get("product")
        attrs = product.get("attributes") if isinstance(product, Mapping) else None
        if not isinstance(attrs, Mapping):
            raise MalformedResponse(f"{what}: an item has no product.attributes")
        itype = attrs.get("instanceType")
        if not isinstance(itype, str) or not itype:
            continue
        if attrs.get("regionCode", region) != region:
            continue
        if any(attrs.get(k) != v for k, v in PRICE_ATTRIBUTES.items()):
            continue
        if attrs.get("marketoption", "OnDemand") != "OnDemand":
            continue
        terms = doc.get("terms")
        on_demand = terms.get("OnDemand") if isinstance(terms, Mapping) else None
        if on_demand is None:
            continue
        if not isinstance(on_demand, Mapping):
            raise MalformedResponse(f"{what}: {itype}: terms.OnDemand is not an object")
        sku = str(product.get("sku") or "") if isinstance(product, Mapping) else ""
        for term in on_demand.values():
            dims = term.get("priceDimensions") if isinstance(term, Mapping) else None
            if not isinstance(dims, Mapping):
                raise MalformedResponse(f"{what}: {itype}: a term has no priceDimensions")
            for rate_code, dim in dims.items():
                if not isinstance(dim, Mapping):
                    raise MalformedResponse(f"{what}: {itype}: a price dimension is not an object")
                if dim.get("unit") != "Hrs":
                    continue
                per_unit = dim.get("pricePerUnit")
                text = per_unit.get("USD") if isinstance(per_unit, Mapping) else None
                usd = _decimal(text, f"{what}: {itype} pricePerUnit.USD")
                found.setdefault(itype, {})[usd] = ListPrice(
                    usd, str(text), sku, str(dim.get("rateCode") or rate_code)
                )
    book = PriceBook()
    for itype, by_price in found.items():
        if len(by_price) == 1:
            book.prices[itype] = next(iter(by_price.values()))
        else:
            book.ambiguous.add(itype)
    return book


def _utc(value: Any, what: str) -> datetime:
    if not isinstance(value, datetime) or value.tzinfo is None:
        raise MalformedResponse(f"{what}: {value!r} is not a timestamp")
    return value.astimezone(UTC)


@dataclass(frozen=True, slots=True)
class SpotQuote:
    zone: str
    instance_type: str
    price: Decimal
    text: str
    at: datetime
    product: str
    zone_id: str | None


def newest_spot_prices(
    rows: Iterable[Mapping[str, Any]], region: str
) -> dict[tuple[str, str], SpotQuote]:
    """The newest Linux spot price per (AZ, instance type) in `SpotPriceHistory` records.

    Raises:
        MalformedResponse: a record without AZ or type, or with a price or timestamp that is
            not one.
    """
    what = f"ec2 DescribeSpotPriceHistory {region}"
    best: dict[tuple[str, str], SpotQuote] = {}
    for row in rows:
        product = row.get("ProductDescription")
        if product not in LINUX_SPOT:
            continue
        zone, itype = row.get("AvailabilityZone"), row.get("InstanceType")
        if not isinstance(zone, str) or not zone or not isinstance(itype, str) or not itype:
            raise MalformedResponse(f"{what}: a record has no AvailabilityZone or InstanceType")
        text = row.get("SpotPrice")
        quote = SpotQuote(
            zone=zone,
            instance_type=itype,
            price=_decimal(text, f"{what}: {itype} {zone} SpotPrice"),
            text=str(text),
            at=_utc(row.get("Timestamp"), f"{what}: {itype} {zone} Timestamp"),
            product=str(product),
            zone_id=row.get("AvailabilityZoneId"),
        )
        key = (zone, itype)
        old = best.get(key)
        if (
            old is None
            or quote.at > old.at
            or (quote.at == old.at and quote.product == LINUX_SPOT[0] != old.product)
        ):
            best[key] = quote
    return best


# ------------------------------------------------------------------------------ offers


@dataclass
class Catalogue:
    """The accelerated instance types AWS sells (in any region), by name, and what was skipped."""

    specs: dict[str, InstanceSpec] = field(default_factory=dict)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)


@dataclass
class RegionCatalogue:
    """What one region sells: the accelerated types offered there and the AZs of each."""

    region: str
    specs: dict[str, InstanceSpec] = field(default_factory=dict)
    zones: dict[str, list[str]] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    def offered(self, usage_class: str) -> list[InstanceSpec]:
        """Types of the usage class (`on-demand`, `spot`, `capacity-block`) offered in an AZ."""
        return [s for name, s in sorted(self.specs.items()) if usage_class in s.usage_classes]


def _note(out: ScopeOffers | Catalogue, reason: str, text: str) -> None:
    out.skipped[reason] += 1
    if len(out.notes) < MAX_NOTES:
        out.notes.append(f"{NAME} {text}: {reason}")


def make_offer(
    spec: InstanceSpec,
    region: str,
    zone: str,
    market: Market,
    price_per_hour: Decimal,
    raw: Mapping[str, Any],
    **extra: Any,
) -> Offer:
    """An `Offer` of `spec` in `zone`; location from `broker.regions` (None if unknown)."""
    info = regions.resolve(NAME, region)
    return Offer(
        provider=NAME,
        region=region,
        zone=zone,
        instance_type=spec.instance_type,
        market=market,
        **model_fields(spec.model, spec.device_name),
        gpu_count=spec.count,
        gpu_memory_gb=spec.device_memory_gb,
        vcpus=spec.vcpus,
        memory_gb=spec.memory_gb,
        interconnect=spec.interconnect,
        **place_fields(info),
        price_per_hour=to_price(price_per_hour),
        raw={"instance_type": spec.instance_type, **spec.raw, **raw},
        **extra,
    )


def capacity_block_offers(
    rows: Iterable[Mapping[str, Any]], cat: RegionCatalogue, out: ScopeOffers
) -> None:
    """Offers of `CapacityBlockOfferings` records (see the module docstring for the price).

    Raises:
        MalformedResponse: a record lacks its id, type, AZ or dates, or has a fee, count or
            duration that is not a positive number.
    """
    what = f"ec2 DescribeCapacityBlockOfferings {cat.region}"
    for row in rows:
        oid, itype, zone = (
            row.get("CapacityBlockOfferingId"),
            row.get("InstanceType"),
            row.get("AvailabilityZone"),
        )
        if not all(isinstance(v, str) and v for v in (oid, itype, zone)):
            raise MalformedResponse(f"{what}: a record lacks its id, InstanceType or AZ")
        assert isinstance(oid, str) and isinstance(itype, str) and isinstance(zone, str)
        spec = cat.specs.get(itype)
        if spec is None:
            _note(out, "unknown_type", f"{cat.region} capacity block {oid} of {itype}")
            continue
        currency = row.get("CurrencyCode") or "USD"
        if currency != "USD":
            _note(out, "non_usd", f"{cat.region} capacity block {oid} in {currency}")
            continue
        fee = _decimal(row.get("UpfrontFee"), f"{what}: {oid} UpfrontFee")
        count = row.get("InstanceCount")
        hours = row.get("CapacityBlockDurationHours")
        minutes = row.get("CapacityBlockDurationMinutes") or 0
        if not isinstance(count, int) or count <= 0 or not isinstance(hours, int):
            raise MalformedResponse(f"{what}: {oid}: InstanceCount {count!r}, hours {hours!r}")
        duration = Decimal(hours) + Decimal(int(minutes)) / 60
        if duration <= 0:
            raise MalformedResponse(f"{what}: {oid}: duration {hours}h{minutes}m")
        if fee <= 0:
            _note(out, "zero_price", f"{cat.region} capacity block {oid}")
            continue
        start = _utc(row.get("StartDate"), f"{what}: {oid} StartDate")
        end = _utc(row.get("EndDate"), f"{what}: {oid} EndDate")
        whole_hours = hours if not minutes else None
        out.offers.append(
            make_offer(
                spec,
                cat.region,
                zone,
                Market.CAPACITY_BLOCK,
                fee / (count * duration),
                {
                    "capacity_block_offering_id": oid,
                    "upfront_fee": str(row.get("UpfrontFee")),
                    "currency": currency,
                    "instance_count": count,
                    "duration_hours": hours,
                    "duration_minutes": minutes,
                    "start": start.isoformat(),
                    "end": end.isoformat(),
                    "tenancy": row.get("Tenancy"),
                    "zone_type": row.get("ZoneType"),
                },
                offering_id=oid,
                upfront_fee=fee,
                availability=Availability.AVAILABLE,
                available_count=count,
                earliest_start=start,
                min_duration_hours=whole_hours,
                max_duration_hours=whole_hours,
            )
        )


def _chunks(items: Sequence[str], size: int) -> Iterator[list[str]]:
    for i in range(0, len(items), size):
        yield list(items[i : i + size])


class _Once(Generic[T]):
    """A value computed once, on first use, by whichever thread asks first; a failure is
    remembered and raised to every later caller too."""

    def __init__(self, compute: Callable[[], T]) -> None:
        self._compute = compute
        self._lock = threading.Lock()
        self._done = False
        self._value: T | None = None
        self._error: BaseException | None = None

    def get(self) -> T:
        with self._lock:
            if not self._done:
                try:
                    self._value = self._compute()
                except Exception as exc:
                    self._error = exc
                self._done = True
        if self._error is not None:
            raise self._error
        assert self._value is not None
        return self._value


# ------------------------------------------------------------------------------ adapter


@register
class Aws:
    """The AWS adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        settings: AwsSettings,
        session: boto3.session.Session,
        *,
        clock: Clock,
        endpoint_url: str | None = None,
    ) -> None:
        """`session` carries the credentials; `endpoint_url` (tests, benchmarks) sends every
        client to one endpoint; None keeps botocore's own resolution, `AWS_ENDPOINT_URL`
        included."""
        self.settings = settings
        self.session = session
        self.clock = clock
        self.endpoint_url = endpoint_url
        self._config = Config(
            retries={"mode": "standard", "total_max_attempts": settings.max_attempts},
            connect_timeout=settings.timeout_s,
            read_timeout=settings.timeout_s,
            max_pool_connections=max(10, settings.max_concurrency),
        )
        self._clients: dict[tuple[str, str], Any] = {}
        self._lock = threading.Lock()
        self._calls = 0
        self._tap = Tap.for_settings(NAME, settings)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Aws:
        try:
            core = botocore.session.Session(profile=settings.aws.profile)
            tune_session(core)
            if settings.aws.replay_dir is not None:  # a replay signs nothing for real
                placeholder_credentials(core)
            session = boto3.session.Session(botocore_session=core)
            credentials = session.get_credentials()
        except bexc.ProfileNotFound:
            raise ProviderDisabled(
                f"AWS profile {settings.aws.profile!r} not found in ~/.aws/config: fix "
                "BROKER_AWS__PROFILE (or AWS_PROFILE)"
            ) from None
        except bexc.BotoCoreError as exc:
            raise ProviderDisabled(
                f"AWS credentials could not be loaded ({type(exc).__name__}): {NO_CREDENTIALS}"
            ) from None
        if credentials is None:
            raise ProviderDisabled(NO_CREDENTIALS)
        return cls(settings.aws, session, clock=clock)

    # ---------------------------------------------------------------- plumbing

    @property
    def api_calls(self) -> int:
        """HTTP requests sent so far (botocore `before-send`; retries included)."""
        return self._calls

    def _count_call(self, **_: Any) -> None:
        with self._lock:
            self._calls += 1

    def _secrets(self) -> tuple[str, ...]:
        try:
            creds = self.session.get_credentials()
            frozen = creds.get_frozen_credentials() if creds is not None else None
        except bexc.BotoCoreError:
            return ()
        if frozen is None:
            return ()
        return tuple(s for s in (frozen.access_key, frozen.secret_key, frozen.token) if s)

    def _client(self, service: str, region: str) -> Any:
        # boto3 sessions are not thread-safe; clients are. Create under the lock, share after.
        with self._lock:
            client = self._clients.get((service, region))
            if client is None:
                client = self.session.client(
                    service,  # type: ignore[call-overload]
                    region_name=region,
                    endpoint_url=self.endpoint_url,
                    config=self._config,
                )
                client.meta.events.register("before-send", self._count_call)
                tap_botocore(client.meta.events, self._tap)
                self._clients[(service, region)] = client
        return client

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        try:
            return fn()
        except Exception as exc:
            mapped = map_error(exc, what, self.settings.timeout_s)
            if mapped is None:
                raise
            raise mapped from exc

    def _default_quota(self, region: str, code: str) -> Any:
        client = self._client("service-quotas", region)
        return client.get_aws_default_service_quota(ServiceCode="ec2", QuotaCode=code)

    def _collect(
        self, service: str, region: str, operation: str, key: str, what: str, **params: Any
    ) -> list[Any]:
        """Every item of every page of `operation`; any page failing fails the whole read.

        A JSON page without `key` is malformed: botocore's JSON parser turns a body that is
        not JSON into an empty answer instead of raising (EC2's XML parser does raise).
        """

        def read() -> list[Any]:
            client = self._client(service, region)
            json_protocol = client.meta.service_model.protocol == "json"
            out: list[Any] = []
            for page in client.get_paginator(operation).paginate(**params):
                if json_protocol and key not in page:
                    raise MalformedResponse(f"{what}: the answer has no {key}")
                out.extend(page.get(key) or ())
            return out

        return self._call(what, read)

    # ---------------------------------------------------------------- poll

    def regions(self) -> list[str]:
        """The regions to poll: the settings' list, else the account's enabled regions."""
        if self.settings.regions:
            return list(dict.fromkeys(self.settings.regions))
        home = self.session.region_name or "us-east-1"
        answer = self._call(
            f"ec2 DescribeRegions {home}",
            lambda: self._client("ec2", home).describe_regions(AllRegions=False),
        )
        names = sorted(
            r["RegionName"]
            for r in answer.get("Regions") or ()
            if r.get("RegionName") and r.get("OptInStatus", "opt-in-not-required") in OPTED_IN
        )
        if not names:
            raise MalformedResponse(f"ec2 DescribeRegions {home}: no enabled region")
        return names

    def markets(self) -> list[Market]:
        out = [Market.ON_DEMAND, Market.SPOT]
        if self.settings.capacity_blocks:
            out.append(Market.CAPACITY_BLOCK)
        return out

    def fetch(self) -> PollResult:
        secrets = self._secrets()
        try:
            names = self.regions()
            catalogue = self.read_catalogue()
        except ProviderError as exc:
            return failed_poll(NAME, exc, self.clock, secrets)
        now = self.clock()
        bases = {r: _Once(partial(self.read_region, r, catalogue)) for r in names}
        quotas = {r: _Once(partial(self._quotas_after, bases[r])) for r in names}
        # Market-major order, so the first workers read different regions' offerings, and
        # capacity blocks first: their scopes are the longest chains (a call per type).
        scopes = [Scope(NAME, r, m) for m in reversed(self.markets()) for r in names]

        def one(scope: Scope) -> ScopeOffers:
            assert scope.region is not None and scope.market is not None
            cat = bases[scope.region].get()
            if scope.market == Market.ON_DEMAND:
                out = self.on_demand(cat)
                out.notes += cat.notes
            elif scope.market == Market.SPOT:
                out = self.spot(cat, now)
            else:
                return self.capacity_blocks(cat)
            got, quota_notes = quotas[scope.region].get()
            out.quotas += [q for q in got if q.market == scope.market]
            if scope.market == Market.ON_DEMAND:
                out.notes += quota_notes
            return out

        result = poll_scopes(
            NAME,
            scopes,
            one,
            clock=self.clock,
            max_workers=self.settings.max_concurrency,
            secrets=secrets,
        )
        # The catalogue's own skips (no GPU, mixed devices) and notes count once per poll.
        skipped = Counter(catalogue.skipped)
        skipped.update(result.skipped)
        notes = [*catalogue.notes, *result.notes][:MAX_NOTES]
        return replace(result, skipped=dict(skipped), notes=[redact(n, secrets) for n in notes])

    # ---------------------------------------------------------------- reads

    def read_catalogue(self) -> Catalogue:
        """Every accelerated instance type, read once in the home region.

        An instance type is defined globally (its GPUs, vCPUs and usage classes are the same
        in every region), so one `describe_instance_types` with `IncludeUnsupportedInRegion`
        lists them all; which regions and AZs sell each is `read_region`'s business. Parsing
        the full records once instead of per region is most of a poll's CPU saved.
        """
        home = self.session.region_name or "us-east-1"
        patterns = self.settings.instance_type_patterns
        infos = self._collect(
            "ec2",
            home,
            "describe_instance_types",
            "InstanceTypes",
            f"ec2 DescribeInstanceTypes {home}",
            Filters=[{"Name": "instance-type", "Values": list(patterns)}] if patterns else [],
            IncludeUnsupportedInRegion=True,
            PaginationConfig={"PageSize": 100},
        )
        cat = Catalogue()
        for info in infos:
            try:
                spec = parse_instance_type(info)
            except _Skip as skip:
                _note(cat, skip.reason, skip.note)
                continue
            if spec.model is None and len(cat.notes) < MAX_NOTES:
                cat.notes.append(
                    f"{NAME} {spec.instance_type}: device {spec.device_name!r} not in the GPU "
                    "catalogue, offers kept without gpu_model"
                )
            cat.specs[spec.instance_type] = spec
        return cat

    def read_region(self, region: str, catalogue: Catalogue) -> RegionCatalogue:
        """The catalogue's types offered in `region` and the AZs offering each."""
        cat = RegionCatalogue(region)
        if regions.resolve(NAME, region) is None:
            cat.notes.append(
                f"{NAME} {region}: region not in broker/data/regions.csv, offers have no "
                "country or jurisdiction"
            )
        for chunk in _chunks(sorted(catalogue.specs), EC2_CHUNK):
            rows = self._collect(
                "ec2",
                region,
                "describe_instance_type_offerings",
                "InstanceTypeOfferings",
                f"ec2 DescribeInstanceTypeOfferings {region}",
                LocationType="availability-zone",
                Filters=[{"Name": "instance-type", "Values": chunk}],
                PaginationConfig={"PageSize": 1000},
            )
            for row in rows:
                itype, zone = row.get("InstanceType"), row.get("Location")
                if not isinstance(itype, str) or not isinstance(zone, str) or not zone:
                    raise MalformedResponse(
                        f"ec2 DescribeInstanceTypeOfferings {region}: an offering lacks "
                        "InstanceType or Location"
                    )
                spec = catalogue.specs.get(itype)
                if spec is not None:
                    cat.specs[itype] = spec
                    if zone not in cat.zones.setdefault(itype, []):
                        cat.zones[itype].append(zone)
        for zones in cat.zones.values():
            zones.sort()
        return cat

    def on_demand(self, cat: RegionCatalogue) -> ScopeOffers:
        out = ScopeOffers()
        specs = cat.offered("on-demand")
        if not specs:
            return out
        items: list[Any] = []
        for chunk in _chunks([s.instance_type for s in specs], PRICING_CHUNK):
            filters = [
                {"Type": "TERM_MATCH", "Field": "regionCode", "Value": cat.region},
                *(
                    {"Type": "TERM_MATCH", "Field": k, "Value": v}
                    for k, v in PRICE_ATTRIBUTES.items()
                ),
                {"Type": "ANY_OF", "Field": "instanceType", "Value": ",".join(chunk)},
            ]
            items += self._collect(
                "pricing",
                self.settings.pricing_region,
                "get_products",
                "PriceList",
                f"pricing GetProducts {cat.region}",
                ServiceCode="AmazonEC2",
                FormatVersion="aws_v1",
                Filters=filters,
                PaginationConfig={"PageSize": 100},
            )
        book = parse_price_list(items, cat.region)
        for spec in specs:
            itype = spec.instance_type
            if itype in book.ambiguous:
                _note(out, "ambiguous_price", f"{cat.region} {itype} on_demand")
                continue
            price = book.prices.get(itype)
            if price is None:
                _note(out, "no_price:on_demand", f"{cat.region} {itype}")
                continue
            if price.usd <= 0:
                _note(out, "zero_price", f"{cat.region} {itype} on_demand")
                continue
            raw = {"sku": price.sku, "rate_code": price.rate_code, "price_per_unit_usd": price.text}
            for zone in cat.zones[itype]:
                out.offers.append(
                    make_offer(spec, cat.region, zone, Market.ON_DEMAND, price.usd, raw)
                )
        return out

    def spot(self, cat: RegionCatalogue, now: datetime) -> ScopeOffers:
        out = ScopeOffers()
        specs = {s.instance_type: s for s in cat.offered("spot")}
        if not specs:
            return out
        rows: list[Any] = []
        for chunk in _chunks(sorted(specs), EC2_CHUNK):
            rows += self._collect(
                "ec2",
                cat.region,
                "describe_spot_price_history",
                "SpotPriceHistory",
                f"ec2 DescribeSpotPriceHistory {cat.region}",
                InstanceTypes=chunk,
                ProductDescriptions=[LINUX_SPOT[0]],
                StartTime=now,
                PaginationConfig={"PageSize": 1000},
            )
        for (zone, itype), quote in sorted(newest_spot_prices(rows, cat.region).items()):
            spec = specs.get(itype)
            if spec is None or zone not in cat.zones.get(itype, ()):
                _note(out, "not_offered", f"{cat.region} spot {itype} {zone}")
                continue
            if quote.price <= 0:
                _note(out, "zero_price", f"{cat.region} {itype} {zone} spot")
                continue
            raw = {
                "spot_price": quote.text,
                "timestamp": quote.at.isoformat(),
                "product_description": quote.product,
                "availability_zone_id": quote.zone_id,
            }
            out.offers.append(make_offer(spec, cat.region, zone, Market.SPOT, quote.price, raw))
        return out

    def capacity_blocks(self, cat: RegionCatalogue) -> ScopeOffers:
        out = ScopeOffers()
        for spec in cat.offered("capacity-block"):
            for hours in self.settings.capacity_block_hours:
                rows = self._collect(
                    "ec2",
                    cat.region,
                    "describe_capacity_block_offerings",
                    "CapacityBlockOfferings",
                    f"ec2 DescribeCapacityBlockOfferings {cat.region} {spec.instance_type}",
                    InstanceType=spec.instance_type,
                    InstanceCount=self.settings.capacity_block_instance_count,
                    CapacityDurationHours=hours,
                    PaginationConfig={"PageSize": 1000},
                )
                capacity_block_offers(rows, cat, out)
        return out

    def _quotas_after(self, catalogue: _Once[RegionCatalogue]) -> tuple[list[Quota], list[str]]:
        cat = catalogue.get()
        try:
            return self.read_quotas(cat)
        except Exception as exc:  # quotas are auxiliary: a bug here must not fail offers
            log.error("aws.quotas_crashed %s: %s", cat.region, type(exc).__name__)
            return [], [
                f"{NAME} {cat.region}: quotas not read (adapter error: {type(exc).__name__})"
            ]

    def read_quotas(self, cat: RegionCatalogue) -> tuple[list[Quota], list[str]]:
        """The region's accelerated-family vCPU quotas, and notes on what could not be read.

        Never raises for provider faults: quotas are auxiliary to the offers.
        """
        if not self.settings.quotas:
            return [], []
        families = {s.family for s in cat.specs.values()}
        wanted = {c: mf for c, mf in QUOTA_CODES.items() if mf[1] & families}
        if not wanted:
            return [], []
        region, notes = cat.region, []
        try:
            rows = self._collect(
                "service-quotas",
                region,
                "list_service_quotas",
                "Quotas",
                f"service-quotas ListServiceQuotas {region}",
                ServiceCode="ec2",
                PaginationConfig={"PageSize": 100},
            )
        except ProviderError as exc:
            return [], [f"{NAME} {region}: quotas not read ({exc.code}): {exc}"]
        found: dict[str, tuple[Mapping[str, Any], bool]] = {
            r["QuotaCode"]: (r, False) for r in rows if r.get("QuotaCode") in wanted
        }
        for code in sorted(set(wanted) - set(found)):
            try:
                answer = self._call(
                    f"service-quotas GetAWSDefaultServiceQuota {region} {code}",
                    partial(self._default_quota, region, code),
                )
            except ProviderError as exc:
                if _client_error_code(exc) != "NoSuchResourceException":
                    notes.append(f"{NAME} {region}: quota {code} not read ({exc.code}): {exc}")
                continue
            if isinstance(answer.get("Quota"), Mapping):
                found[code] = (answer["Quota"], True)
        quotas: list[Quota] = []
        for code, (row, default) in sorted(found.items()):
            market, fams = wanted[code]
            value = row.get("Value")
            if isinstance(value, bool) or not isinstance(value, int | float):
                notes.append(f"{NAME} {region}: quota {code} has no numeric Value")
                continue
            name = row.get("QuotaName")
            quotas.append(
                Quota(
                    provider=NAME,
                    region=region,
                    name=code,
                    unit="vcpus",
                    limit=Decimal(str(value)),
                    market=market,
                    instance_types=frozenset(t for t, s in cat.specs.items() if s.family in fams),
                    description=(f"{name} (AWS default value)" if default else name)
                    if isinstance(name, str)
                    else None,
                )
            )
        return quotas, notes
