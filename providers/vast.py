"""Vast.ai: the GPU marketplace's rentable machine offers, on demand and interruptible.

## What it calls
Two searches per poll, `POST {base_url}/bundles/` (default `https://console.vast.ai/api/v0`,
`BROKER_VAST__BASE_URL` to change it) with `Authorization: Bearer <API key>` and the body the
vast CLI's `search offers` sends by default (vast-ai/vast-cli `vast.py`, `search__offers`;
https://docs.vast.ai/api-reference/search/search-offers):

    {"verified": {"eq": true}, "external": {"eq": false}, "rentable": {"eq": true},
     "rented": {"eq": false}, "order": [["dph_total", "asc"]], "type": <type>,
     "allocated_storage": 5.0, "limit": 10000}

- `type: "on-demand"` → market `on_demand`, scope `Scope("vast", market=on_demand)`;
- `type: "bid"` (the CLI's spelling for interruptible) → market `spot`,
  scope `Scope("vast", market=spot)`.
One query per scope, so one failing keeps the other. Search is limited to 10 requests per
minute per identity, enforced as a minimum interval per endpoint (docs.vast.ai,
api-reference/rate-limits-and-errors): the two searches run one after the other, at least
`min_interval_s` (6 s) apart. A 429 comes as plain text without `Retry-After`, so the client
backs off on its own: `JsonApi` retries after `backoff_base_s` (6 s) × 2^n, bounded by
`max_retry_after_s`. The CLI filters `rented` on the client too (the server may not), and so
does this adapter.

## What it returns
Vast sells many small per-machine offers. One `Offer` per (machine, GPU count, market):
- `instance_type` = `"{num_gpus}x-{gpu_name with _ for blanks}-m{machine_id}"`, e.g.
  `8x-H100_SXM-m41234`. The machine id, not the ask id (`id`): a host re-listing a machine
  gets a new ask id, and the offer key must stay the same across polls so that a new price is
  `price_changed`, not withdraw + appear. Several listings of one key in one answer (chunks of
  the same size on one machine) become one offer with `available_count` = their number and
  the lowest price; `raw["offer_ids"]` lists their ask ids.
- `region` = the ISO country code at the end of `geolocation` ("Sweden, SE" → `SE`, "US" →
  `US`). Vast's search filters location by exactly that code (`geolocation in [SE, DE]`) and
  its CLI shows the field as "country"; the text before it (state or country name, sometimes
  empty: ", CA") is free text, kept in `raw["geolocation"]`. `country` = that code,
  `jurisdiction` = `broker.regions.jurisdiction_for_country`, `continent` = the continent the
  region table's `vast` rows give that country (None if none does). The market data set's Vast
  regions (`"Sweden, SE, EU"`) are the same geolocation with a continent tag the vast CLI
  appends on the client (`postprocess_search_results` with `georegion=true`, as SkyPilot's
  catalog fetcher asks); their middle part is this region. No country code in `geolocation`
  (absent, empty, not two letters) → region `unknown`, country/jurisdiction/continent None
  (residency rules then exclude it), and a note.
- `price_per_hour`, both markets including the same `allocated_storage` (5 GB) of disk:
  - on demand: `dph_total` (USD per hour for the whole offer: the GPUs' share of the machine
    plus `allocated_storage` GB of disk, as the search prices it);
  - spot: `min_bid` (the current minimum bid in USD per hour, the interruptible floor, which
    excludes storage: Vast bills disk on top) + `storage_cost` (USD per GB-month) × 5 GB /
    720 hours (a 30-day month, as dstackai/gpuhunt `src/gpuhunt/providers/vastai.py` adds
    disk to `min_bid`). A spot listing without `storage_cost` is skipped
    (`no_storage_cost:spot`): its price would be understated.
  Prices are JSON numbers, turned into Decimal through their shortest decimal text
  (`Decimal(str(x))`), no float arithmetic. A listing without a positive price for the market
  is skipped (`no_price:<market>`).
- `gpu_model` via `broker.gpus.normalise(gpu_name, provider="vast", memory_mib=gpu_ram)`
  (`gpu_ram` is per GPU in MiB as nvidia-smi reports it: 81559 for an H100 80 GB; it picks
  A100 40/80 GB). A GPU the catalogue does not know is kept with `gpu_model` None and
  `gpu_name_raw` = `gpu_name` (`providers.base.model_fields`): counted as unrecognised by
  the ingest, never guessed, never dropped. `gpu_memory_gb` = `gpu_ram` / 1024.
- `gpu_count` = `num_gpus`; `vcpus` = `cpu_cores_effective` (the vCPUs the offer gets);
  `memory_gb` = the offer's share of the machine's RAM: `cpu_ram` is the whole machine's
  (in MB, docs.vast.ai search-offers "CPU RAM in MB", vast-cli `vastai/data/offer.py`), and a
  listing gets the same share of it as of the CPUs, so `cpu_ram` × `cpu_cores_effective` /
  `cpu_cores` / 1000 (MB → GB, as the vast CLI shows it and gpuhunt computes it); None when
  `cpu_ram`, `cpu_cores` or `cpu_cores_effective` is missing or `cpu_cores` is 0.
- `availability` = `available` with `available_count` = the listings (normally 1): every
  listing answered is rentable now (the query asks `rentable` and not `rented`).
- `raw`: ask id(s), machine_id, host_id, reliability, verification, geolocation, dph_base,
  dph_total, min_bid, storage_cost, cpu_ram, cpu_cores, cpu_cores_effective, inet_up/down,
  gpu_frac, hosting_type; spot offers add `storage_per_hour`, the disk added to `min_bid`.

## Completeness
A search answers at most `limit` offers. An answer of `limit` offers or more may have been cut:
its offers are kept (they are real) but its scope goes into `scope_errors` (code `incomplete`),
so the ingest withdraws nothing that was merely not listed.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from typing import Any, ClassVar

import httpx

from broker import gpus, regions
from broker.config import Settings, VastSettings
from broker.domain import Availability, Clock, Market, Offer, PollResult, Scope, to_count, to_price
from providers._http import JsonApi
from providers.base import (
    MalformedResponse,
    ProviderDisabled,
    ProviderError,
    RequestRejected,
    ScopeOffers,
    model_fields,
    place_fields,
    poll_scopes,
    register,
)

NAME = "vast"
PATH = "/bundles/"
#: The query `type` per market: the vast CLI's spellings (`bid` is its interruptible).
QUERY_TYPES: Mapping[Market, str] = {Market.ON_DEMAND: "on-demand", Market.SPOT: "bid"}
#: Offers per search; SkyPilot's Vast catalog fetcher asks for 10,000 in one search.
DEFAULT_LIMIT = 10_000
#: Disk (GB) priced into `dph_total`: the CLI's default `--storage`.
ALLOCATED_STORAGE_GB = 5.0
#: Hours in the month of `storage_cost` (USD per GB-month): 30 days, as gpuhunt counts it.
HOURS_PER_MONTH = Decimal(30 * 24)
#: MB per GB for `cpu_ram` (the vast CLI divides by 1000 to show GB).
MB_PER_GB = Decimal(1000)
#: Search offers allows 10 requests per minute, enforced as a minimum interval.
MIN_INTERVAL_S = 6.0
#: Without Retry-After, back off a whole interval first (JsonApi doubles it per retry).
BACKOFF_BASE_S = MIN_INTERVAL_S
UNKNOWN_REGION = "unknown"
MAX_NOTES = 50


class ListingIncomplete(ProviderError):
    """A search answered as many offers as the limit allows: more may exist."""

    code = "incomplete"


def search_query(market: Market, limit: int) -> dict[str, Any]:
    """The JSON body of one search (the CLI's default filters)."""
    return {
        "verified": {"eq": True},
        "external": {"eq": False},
        "rentable": {"eq": True},
        "rented": {"eq": False},
        "order": [["dph_total", "asc"]],
        "type": QUERY_TYPES[market],
        "allocated_storage": ALLOCATED_STORAGE_GB,
        "limit": limit,
    }


def _decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a JSON number via its shortest text (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        return None
    try:
        d = Decimal(str(value))
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


@lru_cache(maxsize=1)
def _continents() -> Mapping[str, str]:
    """Country code → continent, from the region table's `vast` rows (where they agree)."""
    seen: dict[str, set[str]] = {}
    for info in regions.regions_of(NAME):
        seen.setdefault(info.country, set()).add(info.continent)
    return {c: next(iter(s)) for c, s in seen.items() if len(s) == 1}


@dataclass(frozen=True, slots=True)
class Location:
    region: str
    country: str | None
    jurisdiction: str | None
    continent: str | None


@lru_cache(maxsize=4096)
def _normalise(gpu_name: str, memory_mib: int | None) -> gpus.GpuModel | None:
    return gpus.normalise(gpu_name, provider=NAME, memory_mib=memory_mib)


@lru_cache(maxsize=4096)
def locate(geolocation: str | None) -> Location:
    """Where a `geolocation` ("Sweden, SE", "US", ", CA") is; `unknown` without an ISO code."""
    if isinstance(geolocation, str):
        code = geolocation.rsplit(",", 1)[-1].strip().upper()
        if len(code) == 2 and code.isascii() and code.isalpha():
            return Location(
                code, code, regions.jurisdiction_for_country(code), _continents().get(code)
            )
    return Location(UNKNOWN_REGION, None, None, None)


def instance_type_of(gpu_name: str, num_gpus: int, machine_id: int) -> str:
    """The stable per-machine identity: `8x-H100_SXM-m41234`."""
    return f"{num_gpus}x-{'_'.join(gpu_name.split())}-m{machine_id}"


@dataclass
class _Group:
    """Listings of one offer key in one answer."""

    offer: Offer
    ids: list[Any] = field(default_factory=list)
    count: int = 0


_RAW_FIELDS = (
    "machine_id",
    "host_id",
    "reliability",
    "reliability2",
    "verification",
    "geolocation",
    "dph_base",
    "dph_total",
    "min_bid",
    "storage_cost",
    "cpu_ram",
    "cpu_cores",
    "cpu_cores_effective",
    "inet_up",
    "inet_down",
    "gpu_frac",
    "hosting_type",
)


def _int(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return None


def memory_gb_of(item: Mapping[str, Any]) -> Decimal | None:
    """GB of RAM a listing gets: its CPU share of the machine's `cpu_ram` (MB), see the
    module docstring; None when a figure is missing."""
    cpu_ram = _decimal(item.get("cpu_ram"))
    cores = _decimal(item.get("cpu_cores"))
    effective = _decimal(item.get("cpu_cores_effective"))
    if cpu_ram is None or cores is None or effective is None or cpu_ram <= 0 or cores <= 0:
        return None
    return (cpu_ram * effective / cores / MB_PER_GB).quantize(Decimal("0.01"))


def _price(item: Mapping[str, Any], market: Market) -> tuple[Decimal, dict[str, Any]] | str:
    """The market's price per offer-hour (storage included) and its raw extras, or the
    reason the listing has none."""
    if market == Market.ON_DEMAND:
        price = _decimal(item.get("dph_total"))
        return (price, {}) if price is not None and price > 0 else f"no_price:{market}"
    bid = _decimal(item.get("min_bid"))
    if bid is None or bid <= 0:
        return f"no_price:{market}"
    storage_cost = _decimal(item.get("storage_cost"))
    if storage_cost is None or storage_cost < 0:
        return f"no_storage_cost:{market}"
    storage = storage_cost * Decimal(str(ALLOCATED_STORAGE_GB)) / HOURS_PER_MONTH
    return bid + storage, {"storage_per_hour": str(to_price(storage))}


def _listing(item: Any, market: Market, note: Callable[[str], None]) -> Offer | str:
    """One listing as an offer, or the reason (a `skipped` key) it is not one."""
    if not isinstance(item, Mapping):
        note(f"listing is not an object: {str(item)[:60]!r}")
        return "malformed_offer"
    ask = item.get("id")
    machine_id = _int(item.get("machine_id"))
    num_gpus = _int(item.get("num_gpus"))
    gpu_name = item.get("gpu_name")
    if (
        machine_id is None
        or num_gpus is None
        or num_gpus <= 0
        or not isinstance(gpu_name, str)
        or not gpu_name.strip()
    ):
        note(f"offer {ask!r}: no machine_id, num_gpus or gpu_name")
        return "malformed_offer"
    if item.get("rented") is True or item.get("rentable") is False:
        return "not_rentable"
    priced = _price(item, market)
    if isinstance(priced, str):
        return priced
    price, extra = priced
    gpu_ram = _int(item.get("gpu_ram")) or None
    geolocation = item.get("geolocation")
    where = locate(geolocation if isinstance(geolocation, str) else None)
    if where.country is None:
        note(f"offer {ask!r}: no country code in geolocation {geolocation!r}")
    return Offer(
        provider=NAME,
        region=where.region,
        instance_type=instance_type_of(gpu_name, num_gpus, machine_id),
        market=market,
        **model_fields(_normalise(gpu_name, gpu_ram), gpu_name),
        gpu_count=to_count(num_gpus),
        gpu_memory_gb=(Decimal(gpu_ram) / 1024).quantize(Decimal("0.01")) if gpu_ram else None,
        vcpus=_decimal(item.get("cpu_cores_effective")),
        memory_gb=memory_gb_of(item),
        **place_fields(where),
        price_per_hour=to_price(price),
        availability=Availability.AVAILABLE,
        available_count=1,
        raw={"offer_id": ask, **{k: item[k] for k in _RAW_FIELDS if k in item}, **extra},
    )


def parse_offers(doc: Any, market: Market) -> ScopeOffers:
    """Offers of one search answer (`{"offers": [...]}`) in `market`.

    Raises:
        MalformedResponse: the answer has no `offers` list.
        RequestRejected: the answer says `"success": false`.
    """
    if isinstance(doc, Mapping) and doc.get("success") is False:
        reason = doc.get("error") or doc.get("msg") or doc.get("message") or "no reason"
        raise RequestRejected(f"POST {PATH}: search refused: {str(reason)[:120]}")
    listings = doc.get("offers") if isinstance(doc, Mapping) else None
    if not isinstance(listings, list):
        raise MalformedResponse(f"POST {PATH}: answer has no 'offers' list")
    skipped: Counter[str] = Counter()
    notes: list[str] = []

    def note(text: str) -> None:
        if len(notes) < MAX_NOTES:
            notes.append(f"{NAME} {market}: {text}")

    groups: dict[str, _Group] = {}
    for item in listings:
        offer = _listing(item, market, note)
        if isinstance(offer, str):
            skipped[offer] += 1
            continue
        ask = offer.raw["offer_id"]
        group = groups.get(offer.key)
        if group is None:
            groups[offer.key] = _Group(offer, [ask], 1)
            continue
        group.ids.append(ask)
        group.count += 1
        if offer.price_per_hour < group.offer.price_per_hour:
            group.offer = offer
    offers = [
        replace(g.offer, available_count=g.count, raw={**g.offer.raw, "offer_ids": g.ids})
        if g.count > 1
        else g.offer
        for g in groups.values()
    ]
    return ScopeOffers(offers=offers, skipped=skipped, notes=notes)


@register
class Vast:
    """The Vast.ai adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        api_key: str,
        settings: VastSettings | None = None,
        *,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        monotonic: Callable[[], float] = time.monotonic,
        backoff_base_s: float = BACKOFF_BASE_S,
        min_interval_s: float = MIN_INTERVAL_S,
        limit: int = DEFAULT_LIMIT,
        markets: Sequence[Market] = (Market.ON_DEMAND, Market.SPOT),
    ) -> None:
        self.settings = settings or VastSettings()
        self.clock = clock
        self.sleep = sleep
        self.monotonic = monotonic
        self.min_interval_s = min_interval_s
        self.limit = limit
        self.markets = tuple(markets)
        self._secrets = (api_key,)
        self._last_call: float | None = None
        self._pace = threading.Lock()
        #: Offers of searches that hit the limit in the current poll (kept, scope failed).
        self._partial: dict[Scope, ScopeOffers] = {}
        self.api = JsonApi(
            NAME,
            self.settings.base_url,
            self.settings,
            headers={"Authorization": f"Bearer {api_key}"},
            secrets=self._secrets,
            transport=transport,
            sleep=sleep,
            backoff_base_s=backoff_base_s,
        )

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Vast:
        key = settings.vast.api_key
        if key is None or not key.get_secret_value().strip():
            raise ProviderDisabled(
                "set BROKER_VAST__API_KEY to a Vast.ai API key "
                "(console.vast.ai → Keys) to enable vast"
            )
        return cls(key.get_secret_value().strip(), settings.vast, clock=clock)

    @property
    def calls(self) -> int:
        """HTTP requests made so far (retries included)."""
        return self.api.calls

    def close(self) -> None:
        self.api.close()

    def _paced(self) -> None:
        """Wait until `min_interval_s` has passed since the previous search."""
        if self._last_call is not None:
            wait = self._last_call + self.min_interval_s - self.monotonic()
            if wait > 0:
                self.sleep(wait)
        self._last_call = self.monotonic()

    def _search(self, scope: Scope) -> ScopeOffers:
        assert scope.market is not None
        with self._pace:
            self._paced()
            doc = self.api.request(
                "POST",
                PATH,
                json_body=search_query(scope.market, self.limit),
                what=f"POST {PATH} ({QUERY_TYPES[scope.market]})",
            )
            self._last_call = self.monotonic()
        got = parse_offers(doc, scope.market)
        n = len(doc["offers"])
        if n >= self.limit:
            self._partial[scope] = got
            raise ListingIncomplete(
                f"POST {PATH} ({QUERY_TYPES[scope.market]}): {n} offers, the search limit; "
                "more may exist, nothing withdrawn"
            )
        return got

    def fetch(self) -> PollResult:
        self._partial = {}
        scopes = [Scope(NAME, market=m) for m in self.markets]
        result = poll_scopes(
            NAME,
            scopes,
            self._search,
            clock=self.clock,
            max_workers=1,  # one search at a time: the endpoint enforces an interval
            secrets=self._secrets,
        )
        if not self._partial:
            return result
        offers = list(result.offers)
        skipped = Counter(result.skipped)
        notes = list(result.notes)
        for got in self._partial.values():
            offers += got.offers
            skipped.update(got.skipped)
            notes += got.notes
        return replace(result, offers=offers, skipped=dict(skipped), notes=notes[:MAX_NOTES])
