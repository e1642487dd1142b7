"""RunPod: GPU pods, secure cloud per data centre and community cloud per country.

## What it calls
RunPod's GraphQL API, `POST {base_url}/graphql` (default `https://api.runpod.io`), with
`Authorization: Bearer <API key>` (https://graphql-spec.runpod.io; runpod-python
`runpod/api/graphql.py`). Per poll, 1 + one request per data centre and per country:

1. the catalogue (GpuType fields from https://graphql-spec.runpod.io; `countryCodes` and
   `DataCenter.listed` as dstackai/gpuhunt `src/gpuhunt/providers/runpod.py` reads them):

       countryCodes
       gpuTypes { id displayName manufacturer memoryInGb maxGpuCount maxGpuCountSecureCloud
                  maxGpuCountCommunityCloud secureCloud communityCloud securePrice
                  communityPrice secureSpotPrice communitySpotPrice }
       dataCenters { id name location listed }

2. per place, fanned out on a bounded pool (`max_concurrency`), the stock of every GPU type
   at every pod size, as aliases of `lowestPrice` (one per GPU count `n`). RunPod addresses
   the two clouds differently, as gpuhunt's catalogue and dstack's pod creation
   (dstackai/dstack `src/dstack/_internal/core/backends/runpod/compute.py`, `cloud_type`
   SECURE with `data_center_id`, COMMUNITY with `country_code`) do:

       secure cloud, per data centre:  c{n}: lowestPrice(input: {gpuCount: n,
           dataCenterId: "EU-RO-1", secureCloud: true [, minCudaVersion: "12.8"]}) {...}
       community cloud, per country:   c{n}: lowestPrice(input: {gpuCount: n,
           countryCode: "SE", secureCloud: false [, minCudaVersion: "12.8"]}) {...}

   with the output fields `stockStatus maxUnreservedGpuCount uninterruptablePrice
   minimumBidPrice` (as gpuhunt, SkyPilot's `sky/catalog/data_fetchers/fetch_runpod.py` and
   runpod-python `runpod/api/queries/gpus.py` read `lowestPrice`). `n` runs from 1 to the
   largest `maxGpuCountSecureCloud` / `maxGpuCountCommunityCloud` (else `maxGpuCount`) of
   the types sold in that cloud: stock is read for each pod size, never inferred for 4 or 8
   GPUs from a 1-GPU answer. Without `dataCenterId` / `countryCode` `lowestPrice` is the
   global lowest across places, which says nothing about where.

Places: every data centre `dataCenters` marks `listed` (the others are skipped and counted,
`skipped["unlisted_data_center"]`, as gpuhunt skips them) and every non-null code of
`countryCodes`. `BROKER_RUNPOD__DATA_CENTERS` limits them: its data centre ids
(`EU-RO-1`) are polled in secure cloud and its two-letter country codes (`SE`) in community
cloud (dstack tells the two apart the same way: a data centre id has a dash).

CUDA floor: the setting `min_cuda_version` (`BROKER_RUNPOD__MIN_CUDA_VERSION`, e.g. `12.8`;
read with `getattr`, so an older `RunpodSettings` without it means no floor) is sent as
`minCudaVersion` in every `lowestPrice` input, so stock counts only hosts whose driver runs
that CUDA (gpuhunt sends `minCudaVersion: "12.8"`; dstack passes the same floor when it
creates the pod). A value not shaped like `12.8` disables the adapter with a message.

## What it returns
Region = the data centre id (`EU-RO-1`, secure cloud) or the ISO country code (`SE`,
community cloud, where RunPod places a pod by country only). Country / jurisdiction /
continent from `broker.regions` (`runpod` rows, both kinds); a place the table lacks keeps
its offers with them None (counted as unrecognised by the ingest) and a note.

Secure and community cloud are different offerings (different hosts, reliability and price),
so they are different instance types: `instance_type = f"{gpu id} x{n} {secure|community}"`,
e.g. `NVIDIA H100 80GB HBM3 x8 secure`. RunPod's GPU id is its stable identifier (the display
name is cosmetic), so the key survives renames.

For each GPU type, cloud (`secureCloud` / `communityCloud` true) and place, one offer per
pod size `n` whose `c{n}` answer reports stock (`n` at most the type's maximum for that
cloud), in two markets:

- `on_demand`: price per GPU-hour `securePrice` / `communityPrice`;
- `spot` (interruptible): `secureSpotPrice` / `communitySpotPrice`.

Pricing arithmetic: RunPod prices are USD per GPU-hour (SkyPilot's and gpuhunt's catalogue
fetchers multiply `securePrice` by the GPU count for a pod's price), so `price_per_hour`
(per pod-hour) = per-GPU price × n, in Decimal from the JSON number's shortest decimal text
(`str(2.69)` = "2.69"; no float arithmetic). A market whose price is missing or 0 has no
offer (`skipped["no_price"]`, once per type, cloud and market).

- `gpu_model`: `broker.gpus.normalise` of the GPU id, then the display name, with
  `memoryInGb` × 1024 MiB (picks A100 40/80 GB). A GPU the catalogue does not know is kept
  with `gpu_model` None and `gpu_name_raw` = RunPod's GPU id (`providers.base.model_fields`):
  listed and counted as unrecognised by the ingest, never guessed, never dropped.
- `gpu_memory_gb` = `memoryInGb`; `vcpus` / `memory_gb` None (RunPod sizes pods per
  machine; `minVcpu`/`minMemory` are minimums, not a pod's size).
- `availability` from the `stockStatus` of `c{n}`: `High` → available, `Medium` / `Low` →
  limited; `None` / null / no `lowestPrice` → no stock at that size, so no offer (see
  below); any other value → `unknown`, with a note. Spot shares the stock of its cloud
  (RunPod reports one stock figure; spot pods run on the same hosts).
- `available_count` = `maxUnreservedGpuCount` // n (pods of n GPUs that many unreserved
  GPUs make); None when not reported or when it would be 0. Whether the figure counts the
  whole place or its largest machine is unverified.
- `raw`: the RunPod fields used (ids, cloud, place, GPU count, stock fields, the per-GPU
  price and its field, the CUDA floor asked).

## Scopes and capacity by presence
One scope per place, `Scope("runpod", region)`: a place whose request fails lands in
`scope_errors` and its offers are left alone. RunPod lists stock by presence (a type with no
stock at a size has `stockStatus` None or no `lowestPrice` at all, indistinguishable from
"never sold there"), so offers are emitted only where stock is reported and
`capacity_by_presence` lists every instance type the catalogue still sells (each sold
type × cloud × 1..max GPUs): ingest turns a known offer missing from a covered place
`unavailable` instead of withdrawing it. A type gone from the catalogue is withdrawn. The
catalogue request failing fails the whole poll (`failed_poll`): nothing withdrawn.

## GraphQL errors
GraphQL answers errors as `{"errors": [{"message", "extensions": {"code"}}]}`, often with
HTTP 200, so every answer is checked for `errors` (any error fails the request: partial
`data` is never taken as complete). Mapping, on the first error's `extensions.code` and
message: authentication / permission words or codes (`UNAUTHENTICATED`, `FORBIDDEN`,
"unauthorized", "api key", ...) → `AuthFailed`; rate limits (`TOO_MANY_REQUESTS`, "rate
limit") → `RateLimited`; schema or validation errors (`GRAPHQL_VALIDATION_FAILED`,
`GRAPHQL_PARSE_FAILED`, `BAD_USER_INPUT`, "Cannot query field", "Unknown argument", "Syntax
Error") → `RequestRejected` (our query no longer fits the schema: a code change, not a
retry); anything else (resolver faults, `INTERNAL_SERVER_ERROR`) → `ProviderUnavailable`.
HTTP-level faults (401/403, 429 with Retry-After, 5xx, timeouts, bad JSON) are mapped by
`providers._http.JsonApi`. The API key is never logged or put into errors or `raw`.
"""

from __future__ import annotations

import re
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import httpx

from broker import gpus, regions
from broker.config import RunpodSettings, Settings
from broker.domain import (
    Availability,
    Clock,
    Market,
    Offer,
    PollResult,
    Scope,
    to_count,
    to_price,
)
from providers._http import BACKOFF_BASE_S, JsonApi
from providers.base import (
    AuthFailed,
    MalformedResponse,
    ProviderDisabled,
    ProviderError,
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

NAME = "runpod"
PATH = "/graphql"
MAX_NOTES = 50
CLOUDS = ("secure", "community")
#: Pod sizes enumerated for `capacity_by_presence` when RunPod states no maximum.
PRESENCE_MAX_WHEN_UNSTATED = 16

CATALOGUE_QUERY = (
    "query BrokerCatalogue { countryCodes gpuTypes { id displayName manufacturer memoryInGb "
    "maxGpuCount maxGpuCountSecureCloud maxGpuCountCommunityCloud secureCloud communityCloud "
    "securePrice communityPrice secureSpotPrice communitySpotPrice } "
    "dataCenters { id name location listed } }"
)
_STOCK_FIELDS = "stockStatus maxUnreservedGpuCount uninterruptablePrice minimumBidPrice"
#: Places are inlined into the query (no variable type to get wrong), so only plain ids
#: are accepted: data centre ids, and ISO country codes (community cloud).
_DC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")
_COUNTRY = re.compile(r"^[A-Z]{2}$")
_CUDA_VERSION = re.compile(r"^\d{1,2}\.\d{1,2}$")

_STOCK_AVAILABILITY = {
    "high": Availability.AVAILABLE,
    "medium": Availability.LIMITED,
    "low": Availability.LIMITED,
}
_NO_STOCK = frozenset({"", "none"})

_AUTH_CODES = frozenset({"UNAUTHENTICATED", "UNAUTHORIZED", "FORBIDDEN"})
_AUTH_WORDS = (
    "unauthorized",
    "unauthenticated",
    "not authorized",
    "not authenticated",
    "authentication",
    "api key",
    "apikey",
    "forbidden",
    "permission",
)
_RATE_CODES = frozenset({"TOO_MANY_REQUESTS", "RATE_LIMITED"})
_RATE_WORDS = ("rate limit", "too many requests")
_SCHEMA_CODES = frozenset({"GRAPHQL_VALIDATION_FAILED", "GRAPHQL_PARSE_FAILED", "BAD_USER_INPUT"})
_SCHEMA_WORDS = (
    "cannot query field",
    "unknown argument",
    "unknown type",
    "syntax error",
    "must have a selection",
    "is not defined by type",
    "expected type",
)


def cloud_of(region: str) -> str:
    """`community` for a place that is an ISO country code (`SE`), else `secure` (a data
    centre id such as `EU-RO-1`): how RunPod addresses the two clouds."""
    return "community" if _COUNTRY.match(region) else "secure"


def check_cuda_version(value: str | None) -> str | None:
    """The CUDA floor as sent in `minCudaVersion` (`12.8`), None for no floor.

    Raises:
        ValueError: not `major.minor`.
    """
    if value is None or not str(value).strip():
        return None
    text = str(value).strip()
    if not _CUDA_VERSION.match(text):
        raise ValueError(f"not a CUDA version (major.minor, e.g. 12.8): {value!r}")
    return text


def stock_query(
    region: str, counts: Sequence[int] = (1,), min_cuda_version: str | None = None
) -> str:
    """The stock query of one place: `lowestPrice` of every GPU type, one alias `c{n}` per
    pod size `n` in `counts`, in the place's cloud (see `cloud_of`).

    Raises:
        ValueError: `region` is neither a data centre id nor a country code, or the CUDA
            floor is malformed (both are inlined into the query).
    """
    if cloud_of(region) == "community":
        where = f'countryCode: "{region}", secureCloud: false'
    elif _DC_ID.match(region):
        where = f'dataCenterId: "{region}", secureCloud: true'
    else:
        raise ValueError(f"not a RunPod data centre id or country code: {region!r}")
    cuda = check_cuda_version(min_cuda_version)
    if cuda is not None:
        where += f', minCudaVersion: "{cuda}"'
    parts = [
        f"c{n}: lowestPrice(input: {{gpuCount: {n}, {where}}}) {{ {_STOCK_FIELDS} }}"
        for n in sorted(set(counts))
        if n >= 1
    ]
    if not parts:
        raise ValueError("a stock query needs at least one GPU count")
    return f"query BrokerStock {{ gpuTypes {{ id {' '.join(parts)} }} }}"


def graphql_error(errors: Any, what: str) -> ProviderError:
    """The ProviderError for a GraphQL `errors` list (see the module docstring)."""
    first = errors[0] if isinstance(errors, list) and errors else {}
    message = first.get("message") if isinstance(first, Mapping) else None
    ext = first.get("extensions") if isinstance(first, Mapping) else None
    code = ext.get("code") if isinstance(ext, Mapping) else None
    code_s = str(code).upper() if isinstance(code, str) else ""
    text = str(message)[:200] if isinstance(message, str) else "(no message)"
    label = f"{what}: GraphQL error{' ' + code_s if code_s else ''}: {text}"
    low = text.lower()
    if code_s in _AUTH_CODES or any(w in low for w in _AUTH_WORDS):
        return AuthFailed(label)
    if code_s in _RATE_CODES or any(w in low for w in _RATE_WORDS):
        return RateLimited(label)
    if code_s in _SCHEMA_CODES or any(w in low for w in _SCHEMA_WORDS):
        return RequestRejected(label)
    return ProviderUnavailable(label)


def _decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a JSON number or numeric string (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


class _Tally:
    def __init__(self) -> None:
        self.skipped: Counter[str] = Counter()
        self.notes: list[str] = []

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        self.note(f"{NAME} {detail}: {reason}")


@dataclass(frozen=True)
class CloudOffering:
    """One GPU type in one cloud: its pod size limit and per-GPU-hour prices by market."""

    cloud: str
    max_count: int | None
    prices: Mapping[Market, tuple[Decimal, str]]  # market -> (per-GPU price, source field)


@dataclass(frozen=True)
class GpuType:
    id: str
    display_name: str | None
    memory_gb: Decimal | None
    #: None: the catalogue does not know the GPU (kept, with `id` as `gpu_name_raw`).
    model: gpus.GpuModel | None
    clouds: Mapping[str, CloudOffering]

    def instance_type(self, n: int, cloud: str) -> str:
        return f"{self.id} x{n} {cloud}"


@dataclass
class Catalogue:
    types: dict[str, GpuType] = field(default_factory=dict)
    #: Places to poll, region -> cloud (`secure` data centres, `community` countries).
    places: dict[str, str] = field(default_factory=dict)
    tally: _Tally = field(default_factory=_Tally)

    @property
    def data_centers(self) -> list[str]:
        return [r for r, c in self.places.items() if c == "secure"]

    @property
    def countries(self) -> list[str]:
        return [r for r, c in self.places.items() if c == "community"]

    def counts(self, cloud: str) -> list[int]:
        """Pod sizes to ask for in `cloud`: 1 up to the largest stated maximum of the types
        priced there (1 when none states one: sizes are asked for, never guessed)."""
        tops = [
            c.max_count
            for t in self.types.values()
            for c in t.clouds.values()
            if c.cloud == cloud and c.prices and c.max_count
        ]
        return list(range(1, max(tops, default=1) + 1))

    @property
    def presence(self) -> frozenset[tuple[str, str]]:
        """Every (runpod, instance type) still sold: sold types × clouds × 1..max GPUs."""
        out: set[tuple[str, str]] = set()
        for t in self.types.values():
            for c in t.clouds.values():
                if not c.prices:
                    continue
                top = c.max_count or PRESENCE_MAX_WHEN_UNSTATED
                out.update((NAME, t.instance_type(n, c.cloud)) for n in range(1, top + 1))
        return frozenset(out)


_PRICE_FIELDS = {
    "secure": ((Market.ON_DEMAND, "securePrice"), (Market.SPOT, "secureSpotPrice")),
    "community": ((Market.ON_DEMAND, "communityPrice"), (Market.SPOT, "communitySpotPrice")),
}
_MAX_FIELDS = {"secure": "maxGpuCountSecureCloud", "community": "maxGpuCountCommunityCloud"}
_SOLD_FIELDS = {"secure": "secureCloud", "community": "communityCloud"}


def _data(doc: Any, what: str) -> Mapping[str, Any]:
    """The `data` object of a GraphQL answer, or the error it carries."""
    if not isinstance(doc, Mapping):
        raise MalformedResponse(f"{what}: answer is not a JSON object")
    errors = doc.get("errors")
    if errors:
        raise graphql_error(errors, what)
    data = doc.get("data")
    if not isinstance(data, Mapping):
        raise MalformedResponse(f"{what}: answer has no 'data' object")
    return data


def _gpu_type(row: Any, tally: _Tally, what: str) -> GpuType | None:
    """One `gpuTypes` row, or None when neither cloud sells it."""
    gid = row.get("id") if isinstance(row, Mapping) else None
    if not isinstance(gid, str) or not gid:
        raise MalformedResponse(f"{what}: a GPU type has no id")
    display = row.get("displayName")
    display = display if isinstance(display, str) and display else None
    memory = _decimal(row.get("memoryInGb"))
    memory_mib = int(memory * 1024) if memory is not None and memory > 0 else None
    model = gpus.normalise(gid, provider=NAME, memory_mib=memory_mib)
    if model is None and display:
        model = gpus.normalise(display, provider=NAME, memory_mib=memory_mib)
    clouds: dict[str, CloudOffering] = {}
    for cloud in CLOUDS:
        if row.get(_SOLD_FIELDS[cloud]) is not True:
            continue
        top = _count(row.get(_MAX_FIELDS[cloud])) or _count(row.get("maxGpuCount"))
        prices: dict[Market, tuple[Decimal, str]] = {}
        for market, fname in _PRICE_FIELDS[cloud]:
            raw_price = row.get(fname)
            price = _decimal(raw_price)
            if raw_price is not None and price is None:
                raise MalformedResponse(f"{what}: {gid}: {fname} is {raw_price!r}")
            if price is None or price <= 0:
                tally.skip("no_price", f"{gid} {cloud} {market}")
                continue
            prices[market] = (price, fname)
        clouds[cloud] = CloudOffering(cloud, top if top and top > 0 else None, prices)
    if not clouds:
        tally.skip("not_sold", f"{gid}: neither secureCloud nor communityCloud")
        return None
    return GpuType(gid, display, memory, model, clouds)


def _places(
    data: Mapping[str, Any], only: Sequence[str] | None, tally: _Tally, what: str
) -> dict[str, str]:
    """region -> cloud: listed data centres (secure) and country codes (community), or
    the configured ones (`only`), minus data centres RunPod marks as not listed."""
    dcs = data.get("dataCenters")
    if not isinstance(dcs, list):
        raise MalformedResponse(f"{what}: 'dataCenters' is not a list")
    listed: dict[str, bool] = {}
    for dc in dcs:
        dc_id = dc.get("id") if isinstance(dc, Mapping) else None
        if not isinstance(dc_id, str) or not dc_id:
            raise MalformedResponse(f"{what}: a data centre has no id")
        listed[dc_id] = dc.get("listed") is True
    if only:
        wanted = list(dict.fromkeys(only))
    else:
        codes = data.get("countryCodes")
        if codes is not None and not isinstance(codes, list):
            raise MalformedResponse(f"{what}: 'countryCodes' is not a list")
        wanted = [*listed, *(c for c in codes or [] if c is not None)]
    out: dict[str, str] = {}
    for region in wanted:
        if not isinstance(region, str) or not (_COUNTRY.match(region) or _DC_ID.match(region)):
            tally.skip("bad_place", repr(region))
            continue
        cloud = cloud_of(region)
        if cloud == "secure" and listed.get(region, bool(only)) is not True:
            tally.skip("unlisted_data_center", region)
            continue
        out[region] = cloud
    return out


def parse_catalogue(doc: Any, only: Sequence[str] | None = None) -> Catalogue:
    """The GPU types RunPod sells and the places to poll, from the catalogue answer.

    `only`: the configured places (data centre ids and country codes); None = every listed
    data centre and every country RunPod names.

    Raises:
        MalformedResponse: not the documented shape (a type without an id, lists that are
            not lists); the whole poll fails rather than withdraw what it could not read.
        ProviderError: the answer carries GraphQL errors.
    """
    what = "POST /graphql (catalogue)"
    data = _data(doc, what)
    rows = data.get("gpuTypes")
    if not isinstance(rows, list):
        raise MalformedResponse(f"{what}: 'gpuTypes' is not a list")
    cat = Catalogue()
    for row in rows:
        gtype = _gpu_type(row, cat.tally, what)
        if gtype is not None:
            cat.types[gtype.id] = gtype
    cat.places = _places(data, only, cat.tally, what)
    return cat


def parse_stock(
    doc: Any, cat: Catalogue, region: str, min_cuda_version: str | None = None
) -> ScopeOffers:
    """Offers of one place from its stock answer (aliases `c{n}`, see `stock_query`).

    Raises:
        MalformedResponse: not the documented shape.
        ProviderError: the answer carries GraphQL errors.
    """
    what = f"POST /graphql (stock {region})"
    data = _data(doc, what)
    rows = data.get("gpuTypes")
    if not isinstance(rows, list):
        raise MalformedResponse(f"{what}: 'gpuTypes' is not a list")
    cloud = cat.places.get(region) or cloud_of(region)
    out = ScopeOffers()
    info = regions.resolve(NAME, region)
    if info is None:
        out.notes.append(f"{NAME}: place {region!r} not in broker/data/regions.csv")
    place = _Place(region, cloud, info, min_cuda_version)
    for row in rows:
        gid = row.get("id") if isinstance(row, Mapping) else None
        if not isinstance(gid, str):
            raise MalformedResponse(f"{what}: a GPU type has no id")
        gtype = cat.types.get(gid)
        offering = gtype.clouds.get(cloud) if gtype is not None else None
        if gtype is None or offering is None or not offering.prices:
            continue  # not sold here, or no price: counted once in the catalogue
        for n in cat.counts(cloud):
            if offering.max_count is not None and n > offering.max_count:
                break
            lowest = row.get(f"c{n}")
            if lowest is None:
                continue
            if not isinstance(lowest, Mapping):
                raise MalformedResponse(f"{what}: {gid} x{n}: lowestPrice is not an object")
            out.offers += _offers(gtype, offering, lowest, n, place, out.notes, what)
    return out


@dataclass(frozen=True)
class _Place:
    region: str
    cloud: str
    info: regions.RegionInfo | None
    min_cuda_version: str | None


def _offers(
    gtype: GpuType,
    offering: CloudOffering,
    lowest: Mapping[str, Any],
    n: int,
    place: _Place,
    notes: list[str],
    what: str,
) -> list[Offer]:
    """The offers (one per market) of `n`-GPU pods of one type at one place."""
    status = lowest.get("stockStatus")
    if status is None:
        return []
    if not isinstance(status, str):
        raise MalformedResponse(f"{what}: {gtype.id} x{n}: stockStatus is {status!r}")
    if status.strip().lower() in _NO_STOCK:
        return []
    availability = _STOCK_AVAILABILITY.get(status.strip().lower(), Availability.UNKNOWN)
    if availability is Availability.UNKNOWN and len(notes) < MAX_NOTES:
        notes.append(f"{NAME} {gtype.id} x{n} {place.region}: unknown stockStatus {status!r}")
    unreserved = _count(lowest.get("maxUnreservedGpuCount"))
    pods = unreserved // n if unreserved is not None and unreserved >= 0 else None
    place_key = "dataCenterId" if place.cloud == "secure" else "countryCode"
    raw_common = {
        "gpuTypeId": gtype.id,
        "displayName": gtype.display_name,
        "cloud": offering.cloud,
        place_key: place.region,
        "gpuCount": n,
        "stockStatus": status,
        "maxUnreservedGpuCount": unreserved,
        "uninterruptablePrice": lowest.get("uninterruptablePrice"),
        "minimumBidPrice": lowest.get("minimumBidPrice"),
        "minCudaVersion": place.min_cuda_version,
    }
    model = gtype.model
    memory = gtype.memory_gb
    if memory is None and model is not None:
        memory = _opt(model.memory_gb)
    return [
        Offer(
            provider=NAME,
            region=place.region,
            instance_type=gtype.instance_type(n, offering.cloud),
            market=market,
            **model_fields(model, gtype.id),
            gpu_count=to_count(n),
            gpu_memory_gb=memory,
            **place_fields(place.info),
            price_per_hour=to_price(per_gpu * n),
            availability=availability,
            available_count=pods if pods else None,
            raw={**raw_common, "pricePerGpu": str(per_gpu), "priceField": source},
        )
        for market, (per_gpu, source) in offering.prices.items()
    ]


def _opt(value: int | None) -> Decimal | None:
    return Decimal(value) if value is not None else None


@register
class Runpod:
    """The RunPod adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        api_key: str,
        settings: RunpodSettings | None = None,
        *,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.settings = settings or RunpodSettings()
        self.clock = clock
        #: `RunpodSettings.min_cuda_version` once the setting exists (None = no floor).
        self.min_cuda_version = check_cuda_version(getattr(self.settings, "min_cuda_version", None))
        self._secrets: tuple[str, ...] = (api_key,)
        self.api = JsonApi(
            NAME,
            self.settings.base_url,
            self.settings,
            headers={"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"},
            secrets=self._secrets,
            transport=transport,
            sleep=sleep,
            backoff_base_s=backoff_base_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Runpod:
        key = settings.runpod.api_key
        if key is None or not key.get_secret_value().strip():
            raise ProviderDisabled(
                "set BROKER_RUNPOD__API_KEY to a RunPod API key (console → Settings → API Keys, "
                "read access) to enable runpod"
            )
        try:
            return cls(key.get_secret_value().strip(), settings.runpod, clock=clock)
        except ValueError as exc:
            raise ProviderDisabled(f"BROKER_RUNPOD__MIN_CUDA_VERSION: {exc}") from None

    @property
    def calls(self) -> int:
        """HTTP requests made so far (retries included)."""
        return self.api.calls

    def close(self) -> None:
        self.api.close()

    def _query(self, query: str, what: str) -> Any:
        return self.api.request("POST", PATH, json_body={"query": query}, what=what)

    def fetch(self) -> PollResult:
        try:
            doc = self._query(CATALOGUE_QUERY, "POST /graphql (catalogue)")
            cat = parse_catalogue(doc, self.settings.data_centers)
        except ProviderError as exc:
            return failed_poll(NAME, exc, self.clock, self._secrets)

        cuda = self.min_cuda_version

        def one(scope: Scope) -> ScopeOffers:
            region = scope.region or ""
            query = stock_query(region, cat.counts(cat.places[region]), cuda)
            answer = self._query(query, f"POST /graphql (stock {region})")
            return parse_stock(answer, cat, region, cuda)

        result = poll_scopes(
            NAME,
            [Scope(NAME, region) for region in cat.places],
            one,
            clock=self.clock,
            max_workers=self.settings.max_concurrency,
            secrets=self._secrets,
            capacity_by_presence=cat.presence,
        )
        return _with_catalogue(result, cat.tally, self._secrets)


def _with_catalogue(result: PollResult, tally: _Tally, secrets: Iterable[str | None]) -> PollResult:
    """`result` with the catalogue's skipped rows and notes added."""
    skipped = Counter(result.skipped)
    skipped.update(tally.skipped)
    notes = [redact(n, secrets) for n in [*tally.notes, *result.notes]][:MAX_NOTES]
    return replace(result, skipped=dict(skipped), notes=notes)
