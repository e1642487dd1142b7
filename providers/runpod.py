"""RunPod: GPU pods per data centre, secure and community cloud, on-demand and spot.

## What it calls
RunPod's GraphQL API, `POST {base_url}/graphql` (default `https://api.runpod.io`), with
`Authorization: Bearer <API key>` (PROVIDERS.md §5.1; runpod-python `runpod/api/graphql.py`).
Per poll, 1 + one request per data centre:

1. the catalogue (`graphql-spec.runpod.io`, GpuType fields):

       gpuTypes { id displayName manufacturer memoryInGb maxGpuCount maxGpuCountSecureCloud
                  maxGpuCountCommunityCloud secureCloud communityCloud securePrice
                  communityPrice secureSpotPrice communitySpotPrice }
       dataCenters { id name location }

2. per data centre, fanned out on a bounded pool (`max_concurrency`), the stock of every GPU
   type in both clouds, as two aliases of `lowestPrice` (input fields `gpuCount`,
   `dataCenterId`, `secureCloud`, output fields `stockStatus`, `maxUnreservedGpuCount`,
   `availableGpuCounts` as SkyPilot's `fetch_runpod.py` and runpodctl use them; [3P], not in
   RunPod's published spec):

       gpuTypes { id
         secure: lowestPrice(input: {gpuCount: 1, dataCenterId: "EU-RO-1", secureCloud: true})
           { stockStatus maxUnreservedGpuCount availableGpuCounts uninterruptablePrice
             minimumBidPrice }
         community: lowestPrice(input: {... secureCloud: false}) { ... } }

   Without `dataCenterId` `lowestPrice` is the global lowest across data centres, which says
   nothing about where; so the adapter asks per data centre (`BROKER_RUNPOD__DATA_CENTERS`
   limits which; default: every id `dataCenters` lists). No pagination anywhere.

## What it returns
Region = RunPod's data centre id (`EU-RO-1`); country / jurisdiction / continent from
`broker.regions` (`runpod` rows; an id the table lacks keeps them None, with a note).

Secure and community cloud are different offerings (different hosts, reliability and price),
so they are different instance types, not regions (a region must stay a real place for
residency): `instance_type = f"{gpu id} x{n} {secure|community}"`, e.g.
`NVIDIA H100 80GB HBM3 x8 secure`. RunPod's GPU id is its stable identifier (the display
name is cosmetic), so the key survives renames.

For each GPU type, cloud (`secureCloud` / `communityCloud` true) and data centre whose
`lowestPrice` reports stock, one offer per pod size `n` in `availableGpuCounts` (the pod
sizes in stock there; 1 when the field is absent), capped at `maxGpuCountSecureCloud` /
`maxGpuCountCommunityCloud` (else `maxGpuCount`), in two markets:

- `on_demand`: price per GPU-hour `securePrice` / `communityPrice`;
- `spot` (interruptible): `secureSpotPrice` / `communitySpotPrice`.

Pricing arithmetic: RunPod prices are USD per GPU-hour (PROVIDERS.md §5.1; SkyPilot's
catalogue fetcher multiplies `securePrice` by the GPU count for a pod's price), so
`price_per_hour` (per pod-hour) = per-GPU price × n, in Decimal from the JSON number's
shortest decimal text (`str(2.69)` = "2.69"; no float arithmetic). A market whose price is
missing or 0 has no offer (`skipped["no_price"]`, once per type, cloud and market).

- `gpu_model`: `broker.gpus.normalise` of the GPU id, then the display name, with
  `memoryInGb` × 1024 MiB (picks A100 40/80 GB); unknown → `skipped["unknown_gpu"]`.
- `gpu_memory_gb` = `memoryInGb`; `vcpus` / `memory_gb` None (RunPod sizes pods per
  machine; `minVcpu`/`minMemory` are minimums, not a pod's size).
- `availability` from `stockStatus` (queried at `gpuCount: 1`): `High` → available,
  `Medium` / `Low` → limited; `None` / null / no `lowestPrice` → no stock, so no offer (see
  below); any other value → `unknown`, with a note. Spot shares the stock of its cloud
  (RunPod reports one stock figure; spot pods run on the same hosts).
- `available_count` = `maxUnreservedGpuCount` // n (pods of n GPUs that many unreserved
  GPUs make); None when not reported or when it would be 0 although RunPod lists size n.
  Whether the figure counts the whole data centre or its largest machine is unverified.
- `raw`: the RunPod fields used (ids, cloud, stock fields, the per-GPU price and its field).

## Scopes and capacity by presence
One scope per data centre, `Scope("runpod", dc)`: a data centre whose request fails lands in
`scope_errors` and its offers are left alone. RunPod lists stock by presence (a type with no
stock in a data centre has `stockStatus` None or no `lowestPrice` at all, indistinguishable
from "never sold there"), so offers are emitted only where stock is reported and
`capacity_by_presence` lists every instance type the catalogue still sells (each sold
type × cloud × 1..max GPUs): ingest turns a known offer missing from a covered data centre
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
    "query BrokerCatalogue { gpuTypes { id displayName manufacturer memoryInGb maxGpuCount "
    "maxGpuCountSecureCloud maxGpuCountCommunityCloud secureCloud communityCloud securePrice "
    "communityPrice secureSpotPrice communitySpotPrice } dataCenters { id name location } }"
)
_STOCK_FIELDS = (
    "stockStatus maxUnreservedGpuCount availableGpuCounts uninterruptablePrice minimumBidPrice"
)
#: Data centre ids are inlined into the query (no variable type to get wrong), so only
#: plain ids are accepted.
_DC_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_-]{0,63}$")

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


def stock_query(data_center: str) -> str:
    """The per-data-centre stock query (both clouds, as aliases of `lowestPrice`)."""
    if not _DC_ID.match(data_center):
        raise ValueError(f"not a RunPod data centre id: {data_center!r}")
    lowest = (
        '{alias}: lowestPrice(input: {{gpuCount: 1, dataCenterId: "{dc}", secureCloud: {secure}}})'
        " {{ {fields} }}"
    )
    parts = [
        lowest.format(
            alias=c, dc=data_center, secure=str(c == "secure").lower(), fields=_STOCK_FIELDS
        )
        for c in CLOUDS
    ]
    return f"query BrokerDataCenterStock {{ gpuTypes {{ id {' '.join(parts)} }} }}"


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
    model: gpus.GpuModel
    clouds: Mapping[str, CloudOffering]

    def instance_type(self, n: int, cloud: str) -> str:
        return f"{self.id} x{n} {cloud}"


@dataclass
class Catalogue:
    types: dict[str, GpuType] = field(default_factory=dict)
    data_centers: list[str] = field(default_factory=list)
    tally: _Tally = field(default_factory=_Tally)

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


def parse_catalogue(doc: Any, only: Sequence[str] | None = None) -> Catalogue:
    """The GPU types RunPod sells and the data centres to poll, from the catalogue answer.

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
    tally = cat.tally
    for row in rows:
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
        if model is None:
            tally.skip("unknown_gpu", f"{gid} ({display})")
            continue
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
            continue
        cat.types[gid] = GpuType(gid, display, memory, model, clouds)
    if only:
        cat.data_centers = list(dict.fromkeys(only))
    else:
        dcs = data.get("dataCenters")
        if not isinstance(dcs, list):
            raise MalformedResponse(f"{what}: 'dataCenters' is not a list")
        for dc in dcs:
            dc_id = dc.get("id") if isinstance(dc, Mapping) else None
            if not isinstance(dc_id, str) or not dc_id:
                raise MalformedResponse(f"{what}: a data centre has no id")
            cat.data_centers.append(dc_id)
    bad = [dc for dc in cat.data_centers if not _DC_ID.match(dc)]
    for dc in bad:
        tally.skip("bad_data_center_id", repr(dc))
    cat.data_centers = list(dict.fromkeys(dc for dc in cat.data_centers if dc not in bad))
    return cat


def parse_stock(doc: Any, cat: Catalogue, data_center: str) -> ScopeOffers:
    """Offers of one data centre from its stock answer.

    Raises:
        MalformedResponse: not the documented shape.
        ProviderError: the answer carries GraphQL errors.
    """
    what = f"POST /graphql (stock {data_center})"
    data = _data(doc, what)
    rows = data.get("gpuTypes")
    if not isinstance(rows, list):
        raise MalformedResponse(f"{what}: 'gpuTypes' is not a list")
    out = ScopeOffers()
    info = regions.resolve(NAME, data_center)
    if info is None:
        out.notes.append(f"{NAME}: data centre {data_center!r} not in broker/data/regions.csv")
    for row in rows:
        gid = row.get("id") if isinstance(row, Mapping) else None
        if not isinstance(gid, str):
            raise MalformedResponse(f"{what}: a GPU type has no id")
        gtype = cat.types.get(gid)
        if gtype is None:
            continue  # unknown GPU or not sold: counted once in the catalogue
        for cloud, offering in gtype.clouds.items():
            lowest = row.get(cloud)
            if lowest is None:
                continue
            if not isinstance(lowest, Mapping):
                raise MalformedResponse(f"{what}: {gid} {cloud}: lowestPrice is not an object")
            out.offers += _offers(gtype, offering, lowest, data_center, info, out.notes, what)
    return out


def _offers(
    gtype: GpuType,
    offering: CloudOffering,
    lowest: Mapping[str, Any],
    data_center: str,
    info: regions.RegionInfo | None,
    notes: list[str],
    what: str,
) -> list[Offer]:
    status = lowest.get("stockStatus")
    if status is None:
        return []
    if not isinstance(status, str):
        raise MalformedResponse(f"{what}: {gtype.id}: stockStatus is {status!r}")
    if status.strip().lower() in _NO_STOCK:
        return []
    availability = _STOCK_AVAILABILITY.get(status.strip().lower(), Availability.UNKNOWN)
    if availability is Availability.UNKNOWN and len(notes) < MAX_NOTES:
        notes.append(f"{NAME} {gtype.id} {data_center}: unknown stockStatus {status!r}")
    listed = lowest.get("availableGpuCounts")
    if listed is None:
        sizes = [1]
    elif isinstance(listed, list) and all(_count(n) is not None for n in listed):
        sizes = sorted({n for n in listed if n >= 1})
    else:
        raise MalformedResponse(f"{what}: {gtype.id}: availableGpuCounts is {listed!r}")
    if offering.max_count is not None:
        sizes = [n for n in sizes if n <= offering.max_count]
    unreserved = _count(lowest.get("maxUnreservedGpuCount"))
    raw_common = {
        "gpuTypeId": gtype.id,
        "displayName": gtype.display_name,
        "cloud": offering.cloud,
        "dataCenterId": data_center,
        "stockStatus": status,
        "maxUnreservedGpuCount": unreserved,
        "availableGpuCounts": listed,
        "uninterruptablePrice": lowest.get("uninterruptablePrice"),
        "minimumBidPrice": lowest.get("minimumBidPrice"),
    }
    model = gtype.model
    memory = gtype.memory_gb if gtype.memory_gb is not None else _opt(model.memory_gb)
    out: list[Offer] = []
    for n in sizes:
        pods = unreserved // n if unreserved is not None and unreserved >= 0 else None
        for market, (per_gpu, source) in offering.prices.items():
            out.append(
                Offer(
                    provider=NAME,
                    region=data_center,
                    instance_type=gtype.instance_type(n, offering.cloud),
                    market=market,
                    **model_fields(model),
                    gpu_count=to_count(n),
                    gpu_memory_gb=memory,
                    **place_fields(info),
                    price_per_hour=to_price(per_gpu * n),
                    availability=availability,
                    available_count=pods if pods else None,
                    raw={**raw_common, "pricePerGpu": str(per_gpu), "priceField": source},
                )
            )
    return out


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
        return cls(key.get_secret_value().strip(), settings.runpod, clock=clock)

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

        def one(scope: Scope) -> ScopeOffers:
            dc = scope.region or ""
            answer = self._query(stock_query(dc), f"POST /graphql (stock {dc})")
            return parse_stock(answer, cat, dc)

        result = poll_scopes(
            NAME,
            [Scope(NAME, dc) for dc in cat.data_centers],
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
