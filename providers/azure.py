"""Azure: GPU VM sizes from the Compute resource SKUs, vCPU quotas per VM family, priced from
the public Azure Retail Prices API.

## What it calls (PROVIDERS.md §3)
Subscription-wide, once per poll, through `azure-mgmt-compute`'s `ComputeManagementClient`
(its pipeline: bearer-token policy, HTTPS check, transport), paged with `nextLink`, one HTTP
request per page:

- the resource SKUs, `GET /subscriptions/{sub}/providers/Microsoft.Compute/skus?api-version=
  2021-07-01`: the request `resource_skus.list()` makes, sent with the client's documented
  `send_request` and read as JSON, because the SDK's model deserialisation costs ~1 ms of CPU per
  entry (measured, 39.0.0) and the list has one entry per size and location (tens of thousands
  in a real subscription). Kept: `resourceType == "virtualMachines"` GPU sizes (see "GPU sizes"
  below). Read: `name`, `family`, capabilities `GPUs` / `vCPUs` / `MemoryGB` / `RdmaEnabled`,
  `locationInfo[].zones` and `restrictions[]` (wire names, so no SDK-major differences such as
  `values` vs `values_property`).

Then per location, on a bounded pool (`max_concurrency`), only for locations that have a GPU
size (the others are covered with no offers and no calls):

- `usage.list(location)` (`GET .../locations/{location}/usages`, the SDK operation and its own
  api-version): vCPU quotas.
- Retail Prices `GET {retail_prices_url}?$filter=serviceName eq 'Virtual Machines' and
  armRegionName eq '{location}'` over plain HTTP (`providers._http.JsonApi`), following
  `NextPageLink` until it is null. Only `eq`/`and` are used (the documented filter grammar).
  A location's complete price list is reused for `prices_ttl_s` (default 1 h: one location's VM
  meters are thousands of rows, several MB, and retail prices change rarely); SKUs and quotas are
  read every poll.

## Scopes and faults
One `Scope("azure", location)` per location: `settings.regions`, else every location where the
SKU list has a virtual machine size. The SKU list is all-or-nothing: any page failing fails the
poll (`failed_poll`), since a partial catalogue would make ingest withdraw offers that were
merely not read. A location fails alone (its offers left untouched by ingest) when its usages
or any page of its price list cannot be read. `nextLink` / `NextPageLink` are absolute URLs
followed as given, but only on the host they came from (anything else is `malformed`).

Retries are this module's own, bounded, with an injectable `sleep` (the SDK's retry policy is
off: `retry_total=0`): up to `max_attempts`; 429 after `Retry-After` (or `retry-after-ms`,
`x-ms-retry-after-ms`) when that is at most `max_retry_after_s`, else the scope fails at once as
`rate_limited` with `retry_after_s`; 5xx, timeouts and dropped connections with exponential
backoff. A failed page is re-requested from its own continuation token, never from the start.
azure-core errors map in `map_error`: 429 → RateLimited, 401/403 and credential failures
(`ClientAuthenticationError` without a response) → AuthFailed, 5xx / `ServiceRequestError` /
`ServiceResponseError` / a body cut short → ProviderUnavailable, the two `*TimeoutError`s →
ProviderTimeout, `DecodeError` / `DeserializationError` → MalformedResponse, other 4xx →
RequestRejected. Messages name the call, the HTTP status and ARM's `error.code`/`message`, with
the bearer tokens this adapter was issued redacted.

## Offers
One offer per location, GPU size and market (zone = None: retail prices are per location; the
zones are in `raw`):

- `gpu_model` etc.: `providers._azure_sizes.accelerator_of`: the size table's model
  (`broker/data/fractions.csv`) when it lists the size, else `broker.gpus.normalise` of the
  GPU the size's series carries (ND H100 v5 → H100 → `H100-SXM`, ...). A GPU size whose model
  neither gives (or the catalogue lacks) is kept with `gpu_model` None and `gpu_name_raw` =
  the name looked up (the table's model, the series' GPU, else the size's `family`): counted
  as unrecognised by the ingest, never guessed, priced like any other size, with a note.
- `gpu_count` = the size table's `fraction` when it lists the size, else the `GPUs`
  capability. The table wins where the two disagree: for the partial sizes the API says
  `GPUs` 1 (NVadsA10 v5 1/6, 1/3, 1/2, as SkyPilot's fetch_azure.py notes; NVv4 1/8, 1/4, 1/2,
  as the market data set shows), so the documented fraction is used (`to_count` → 0.167,
  0.333, 0.5); `raw["GPUs"]` keeps what the API said (None when it said nothing) and
  `raw["size_table"]` what the table gave. `gpu_memory_gb` = the table's `memory_gb` (the
  slice's memory: 4 GB for 1/6 of an A10) when it gives one, else the catalogue's per-GPU
  figure (None for an unrecognised GPU).
- `vcpus` = `vCPUs`, `memory_gb` = `MemoryGB` (Azure's GB are GiB), `interconnect` =
  "InfiniBand" where `RdmaEnabled` is True (Azure's RDMA sizes use InfiniBand), else None.
- `availability`: `unavailable` where a `restrictions[]` entry of type `Location` covers the
  location (`NotAvailableForSubscription`, or `QuotaId`: the subscription's offer type may not use
  the size), else `unknown` (a price list says nothing about capacity). A `Zone` restriction
  drops its `restrictionInfo.zones` from `raw["zones"]` (listed in `raw["restricted_zones"]`) and
  leaves the location's availability as is: the size can still be deployed without a zone.
- Location from `broker.regions`; an unknown location keeps its offers with `country=None` and a
  note.

## GPU sizes
Which `virtualMachines` entries are GPU sizes, which are dropped (`retired` series, GPU series
without a count: `no_gpu_count`) and the accelerator each carries: `providers._azure_sizes`.

## Prices (Retail Prices API, USD, per instance)
Each price row (`Items[]`) is matched to a GPU size by `armSkuName` (case-insensitive) and
classified:

- skipped: `currencyCode` other than USD, `type == "DevTestConsumption"`, `productName` naming
  Windows (" Windows" or " Win": some H100 products use the short form [SkyPilot]) or Cloud
  Services, `skuName`/`meterName` with "Low Priority" (legacy low-priority/Batch meters),
  `tierMinimumUnits > 0`, a Consumption `unitOfMeasure` other than "1 Hour";
- `type == "Consumption"`: `spot` when `skuName` or `meterName` says "Spot", else `on_demand`;
  `price_per_hour = retailPrice`;
- `type == "Reservation"`: `reserved`, one offer per term with `offering_id` = Azure's own
  reservation term code (`P1Y` for "1 Year", `P3Y` for "3 Years"), so the offer keys differ
  (`azure/eastus/Standard_ND96isr_H100_v5/reserved/P1Y`). A reservation row's `retailPrice` is the
  price of the WHOLE TERM even though its `unitOfMeasure` reads "1 Hour" (PROVIDERS.md §3.7, from
  captured responses; finops tools amortise it as total / months), so
  `price_per_hour = retailPrice / (8760 × years)` and `min_duration_hours = 8760 × years`
  (8760 / 26280). `upfront_fee` stays None: Azure bills the same total upfront or monthly, and the
  total is already spread into `price_per_hour` (`raw["term_total_usd"]` keeps it).

Prices are JSON numbers on the wire; `json.loads` reads them as floats, whose shortest `repr` is
the wire literal for every price of up to 15 significant digits, so `Decimal(repr(x))` recovers
the wire string and all arithmetic is Decimal. Several rows for one offer: primary-meter rows
(`isPrimaryMeterRegion`) win, then the latest `effectiveStartDate`; if rows that remain still
disagree the offer is skipped (`skipped["ambiguous_price"]`), never a guess. A GPU size without
any usable price row in a location gives no offer (`skipped["no_price"]`).

## Quotas
`usage.list(location)`: per GPU family of the location (`name.value` equal, case-insensitively,
to a GPU size's `family`, e.g. `standardNCadsH100v5Family`) a `Quota(unit="vcpus", limit,
usage=currentValue, instance_types=the family's GPU sizes here)`; `cores` (Total Regional vCPUs)
governs every GPU size of the location. Both are reported for `on_demand` and again for
`reserved` (a reservation is a billing discount: its VMs still need the vCPU quota).
`lowPriorityCores` (Total Regional Low-priority vCPUs) is the `spot` quota of every GPU size here.

## Auth
`DefaultAzureCredential()` (env `AZURE_CLIENT_ID`/`AZURE_TENANT_ID`/`AZURE_CLIENT_SECRET`,
workload or managed identity, `az login`) plus `BROKER_AZURE__SUBSCRIPTION_ID`; the Retail Prices
API needs no credentials. The bearer token is sent over HTTPS only, except to a plain-http ARM
endpoint on the loopback interface (a local fake), where the SDK's HTTPS check is waived per
call (`enforce_https=False`).
"""

from __future__ import annotations

import itertools
import json
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any, ClassVar, TypeVar
from urllib.parse import quote, urlsplit

import httpx
from azure.core.credentials import AccessToken, TokenCredential
from azure.core.exceptions import (
    AzureError,
    ClientAuthenticationError,
    DecodeError,
    DeserializationError,
    HttpResponseError,
    IncompleteReadError,
    SerializationError,
    ServiceRequestError,
    ServiceRequestTimeoutError,
    ServiceResponseError,
    ServiceResponseTimeoutError,
)
from azure.core.rest import HttpRequest
from azure.mgmt.compute import ComputeManagementClient
from azure.mgmt.core.exceptions import ARMErrorFormat

from broker import regions
from broker.config import AzureSettings, Settings
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
    utcnow,
)

# `retired_series` and `series_gpu` are re-exported (the `as` form, for mypy): callers and
# tests import them from the adapter.
from providers._azure_sizes import (
    MAX_NOTES,
    NAME,
    GpuSku,
    SkuCatalogue,
    accelerator_of,
    raw_of,
    wire_decimal,
)
from providers._azure_sizes import retired_series as retired_series
from providers._azure_sizes import series_gpu as series_gpu
from providers._http import BACKOFF_BASE_S, JsonApi, parse_retry_after
from providers._record_requests import PlaceholderCredential, azure_transport
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

#: A paged read that has not ended after this many pages is broken, not followed forever.
MAX_PAGES = 1000
HOURS_PER_YEAR = 8760
#: `api-version` of `GET .../Microsoft.Compute/skus` (the SDK's own for resource_skus.list).
SKUS_API_VERSION = "2021-07-01"

T = TypeVar("T")

_LOCATION = re.compile(r"^[a-z0-9]+$")
_WINDOWS = re.compile(r"\bWin(?:dows)?\b")
_SPOT = re.compile(r"\bSpot\b", re.IGNORECASE)
_LOW_PRIORITY = re.compile(r"\bLow Priority\b", re.IGNORECASE)
_TERM = re.compile(r"^(\d+) Years?$")
_LOOPBACK = frozenset({"127.0.0.1", "localhost", "::1"})


# --------------------------------------------------------------------------- prices


@dataclass(frozen=True, slots=True)
class PriceRow:
    """One usable retail price row, per instance-hour."""

    market: Market
    offering_id: str | None
    term_hours: int | None
    price_per_hour: Decimal
    primary: bool
    effective: str
    raw: Mapping[str, Any]


def classify(item: Mapping[str, Any]) -> PriceRow | str | None:
    """A retail price row as a `PriceRow`, None when it is not for us (Windows, low priority,
    Dev/Test, tiers), or a skip reason when it should be but cannot be read.

    Raises nothing: bad values give the reason `bad_price_row`.
    """
    kind = str(item.get("type") or item.get("priceType") or "")
    if kind == "DevTestConsumption":
        return None
    product = str(item.get("productName") or "")
    sku_name = str(item.get("skuName") or "")
    meter = str(item.get("meterName") or "")
    if _WINDOWS.search(product) or "Cloud Services" in product or "CloudServices" in product:
        return None
    if _LOW_PRIORITY.search(sku_name) or _LOW_PRIORITY.search(meter):
        return None
    if str(item.get("currencyCode") or "USD") != "USD":
        return "bad_currency"
    try:
        if wire_decimal(item.get("tierMinimumUnits") or 0) > 0:
            return None
        retail = wire_decimal(item.get("retailPrice"))
    except ValueError:
        return "bad_price_row"
    raw: dict[str, Any] = {
        "meterId": item.get("meterId"),
        "meterName": meter,
        "productName": product,
        "skuName": sku_name,
        "type": kind,
        "retailPrice": str(retail),
        "unitOfMeasure": item.get("unitOfMeasure"),
        "effectiveStartDate": item.get("effectiveStartDate"),
    }
    primary = item.get("isPrimaryMeterRegion") is not False
    effective = str(item.get("effectiveStartDate") or "")
    if kind == "Consumption":
        if str(item.get("unitOfMeasure") or "") != "1 Hour":
            return "bad_unit"
        market = Market.SPOT if _SPOT.search(sku_name) or _SPOT.search(meter) else Market.ON_DEMAND
        return PriceRow(market, None, None, retail, primary, effective, raw)
    if kind == "Reservation":
        term = str(item.get("reservationTerm") or "")
        match = _TERM.match(term)
        if not match or int(match.group(1)) <= 0:
            return "unknown_term"
        years = int(match.group(1))
        hours = HOURS_PER_YEAR * years
        raw.update(reservationTerm=term, term_hours=hours, term_total_usd=str(retail))
        return PriceRow(
            Market.RESERVED, f"P{years}Y", hours, retail / hours, primary, effective, raw
        )
    return "unknown_price_type"


class Ambiguous(Exception):
    """Rows for one offer disagree on the price: no offer rather than a guess."""


OfferKey = tuple[str, Market, str | None]  # (lower-cased size, market, offering_id)


@dataclass
class PriceBook:
    """One location's usable price rows for its GPU sizes."""

    rows: dict[OfferKey, list[PriceRow]] = field(default_factory=dict)
    items: int = 0
    pages: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add_page(self, items: Iterable[Any], wanted: Mapping[str, Any]) -> None:
        self.pages += 1
        for item in items:
            self.items += 1
            if not isinstance(item, dict):
                self.skipped["bad_price_row"] += 1
                continue
            sku = str(item.get("armSkuName") or "").lower()
            if sku not in wanted:
                continue
            row = classify(item)
            if row is None:
                continue
            if isinstance(row, str):
                self.skipped[row] += 1
                if len(self.notes) < MAX_NOTES:
                    self.notes.append(f"price row {item.get('meterId')} ({sku}): {row}")
                continue
            self.rows.setdefault((sku, row.market, row.offering_id), []).append(row)

    def offers_of(self, sku: str) -> list[OfferKey]:
        return sorted((k for k in self.rows if k[0] == sku), key=lambda k: (str(k[1]), k[2] or ""))

    def get(self, key: OfferKey) -> PriceRow:
        """The one price for `key`.

        Raises:
            Ambiguous: rows remain that disagree.
        """
        rows = self.rows[key]
        primary = [r for r in rows if r.primary] or rows
        latest = max(r.effective for r in primary)
        chosen = [r for r in primary if r.effective == latest]
        prices = {r.price_per_hour for r in chosen}
        if len(prices) > 1:
            shown = ", ".join(f"{r.raw.get('meterId')}={r.raw.get('retailPrice')}" for r in chosen)
            raise Ambiguous(shown)
        return chosen[0]


@dataclass(frozen=True, slots=True)
class _CachedPrices:
    fetched_at: datetime
    skus: frozenset[str]
    book: PriceBook


# --------------------------------------------------------------------------- errors


def _arm_error(exc: HttpResponseError) -> tuple[str, str]:
    """ARM's `error.code` and `error.message` (envelope `{"error": {...}}`), shortened."""
    error = getattr(exc, "error", None)
    code = str(getattr(error, "code", "") or "")
    message = str(getattr(error, "message", "") or "")
    if not code and not message:
        first = str(exc.message or "").splitlines()[0] if exc.message else ""
        message = first
    return code, " ".join(message.split())[:200]


def _retry_after(exc: HttpResponseError) -> float | None:
    """Seconds from `Retry-After`, or azure-core's `retry-after-ms` / `x-ms-retry-after-ms`."""
    response = exc.response
    if response is None:
        return None
    raw_headers: Mapping[str, str] = getattr(response, "headers", None) or {}
    headers = {str(k).lower(): str(v) for k, v in raw_headers.items()}
    seconds = parse_retry_after(headers.get("retry-after"))
    if seconds is not None:
        return seconds
    for name in ("retry-after-ms", "x-ms-retry-after-ms"):
        ms = parse_retry_after(headers.get(name))
        if ms is not None:
            return ms / 1000.0
    return None


def map_error(
    exc: BaseException, what: str, timeout_s: float, secrets: Iterable[str] = ()
) -> ProviderError | None:
    """An azure-core / azure-identity exception as a `ProviderError`, or None if it is none
    of those (a bug). Messages name the call; known tokens are redacted."""
    secrets = tuple(secrets)

    def clean(text: str) -> str:
        return redact(text, secrets)

    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, ClientAuthenticationError) and exc.response is None:
        # azure-identity: no credential in the chain produced a token.
        first = str(exc.message or exc).splitlines()[0][:200]
        return AuthFailed(clean(f"{what}: no token ({type(exc).__name__}: {first})"))
    if isinstance(exc, IncompleteReadError):
        return ProviderUnavailable(f"{what}: response cut short ({type(exc).__name__})")
    if isinstance(exc, DecodeError):
        status = exc.status_code
        return MalformedResponse(f"{what}: HTTP {status} body is not JSON")
    if isinstance(exc, HttpResponseError) and exc.status_code is not None:
        status = int(exc.status_code)
        code, message = _arm_error(exc)
        detail = f"{what}: HTTP {status}"
        if code:
            detail += f" {code}"
        if message and message != code:
            detail += f": {message}"
        detail = clean(detail)
        if status == 429:
            return RateLimited(detail, _retry_after(exc))
        if status in (401, 403):
            return AuthFailed(detail)
        if status == 408:
            return ProviderTimeout(detail)
        if status >= 500:
            return ProviderUnavailable(detail)
        return RequestRejected(detail)
    if isinstance(exc, ServiceRequestTimeoutError | ServiceResponseTimeoutError):
        return ProviderTimeout(f"{what}: no answer within {timeout_s:g}s")
    if isinstance(exc, ServiceRequestError | ServiceResponseError):
        return ProviderUnavailable(f"{what}: connection failed ({type(exc).__name__})")
    if isinstance(exc, DeserializationError | SerializationError):
        return MalformedResponse(f"{what}: response does not parse ({type(exc).__name__})")
    if isinstance(exc, AzureError):
        return ProviderUnavailable(clean(f"{what}: {type(exc).__name__}"))
    return None


# --------------------------------------------------------------------------- credentials


class _RecordingCredential:
    """Passes token requests to the real credential and remembers the tokens it hands out,
    so that a token an error message echoes can be redacted."""

    def __init__(self, inner: TokenCredential) -> None:
        self.inner = inner
        self.tokens: set[str] = set()
        self._lock = threading.Lock()

    def get_token(
        self,
        *scopes: str,
        claims: str | None = None,
        tenant_id: str | None = None,
        enable_cae: bool = False,
        **kwargs: Any,
    ) -> AccessToken:
        token = self.inner.get_token(
            *scopes, claims=claims, tenant_id=tenant_id, enable_cae=enable_cae, **kwargs
        )
        with self._lock:
            self.tokens.add(token.token)
        return token

    def issued(self) -> tuple[str, ...]:
        """Every token handed out so far."""
        with self._lock:
            return tuple(sorted(self.tokens))


class _ArmPager:
    """Pages of an SDK `ItemPaged`, one request per `next_page()`, resumable: after a failed
    request the next call starts a fresh page iterator from the last good continuation token
    (azure-core's own iterator would end early after a page it could not parse)."""

    def __init__(self, start: Callable[[str | None], Iterator[Iterator[Any]]]) -> None:
        self.start = start
        self.token: str | None = None
        self.pager: Iterator[Iterator[Any]] | None = None

    def next_page(self) -> list[Any] | None:
        """The next page's items, or None at the end."""
        if self.pager is None:
            self.pager = self.start(self.token)
        try:
            return list(next(self.pager))
        except StopIteration:
            return None
        except BaseException:
            self.pager = None
            raise

    def advance(self) -> str | None:
        """The continuation token (absolute `nextLink`) after the page just read."""
        token = getattr(self.pager, "continuation_token", None)
        self.token = str(token) if token else None
        return self.token


# --------------------------------------------------------------------------- adapter


@register
class Azure:
    """The Azure adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        settings: AzureSettings,
        *,
        subscription_id: str,
        credential: TokenCredential,
        clock: Clock = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = BACKOFF_BASE_S,
        prices_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.subscription_id = subscription_id
        self.credential = _RecordingCredential(credential)
        self.clock = clock
        self.sleep = sleep
        self.backoff_base_s = backoff_base_s
        client_kwargs: dict[str, Any] = {"retry_total": 0}
        if settings.base_url:
            client_kwargs["base_url"] = settings.base_url.rstrip("/")
        client_kwargs["transport"] = azure_transport(Tap.for_settings(NAME, settings))
        self.compute = ComputeManagementClient(self.credential, subscription_id, **client_kwargs)
        self.arm_host = urlsplit(settings.base_url or "https://management.azure.com").hostname
        self._call_kwargs: dict[str, Any] = {
            "connection_timeout": settings.timeout_s,
            "read_timeout": settings.timeout_s,
        }
        base = urlsplit(settings.base_url or "")
        if base.scheme == "http" and base.hostname in _LOOPBACK:
            self._call_kwargs["enforce_https"] = False
        self.prices = JsonApi(
            NAME,
            settings.retail_prices_url,
            settings,
            transport=prices_transport,
            sleep=sleep,
            backoff_base_s=backoff_base_s,
        )
        self.prices_host = urlsplit(settings.retail_prices_url).hostname
        self._lock = threading.Lock()
        self.arm_calls = 0
        self._price_cache: dict[str, _CachedPrices] = {}

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Azure:
        cfg = settings.azure
        if not cfg.subscription_id:
            raise ProviderDisabled(
                "Azure disabled: set BROKER_AZURE__SUBSCRIPTION_ID and credentials for "
                "DefaultAzureCredential (AZURE_CLIENT_ID/AZURE_TENANT_ID/AZURE_CLIENT_SECRET, "
                "managed identity or az login)"
            )
        from azure.identity import DefaultAzureCredential

        return cls(
            cfg,
            subscription_id=cfg.subscription_id,
            credential=(
                PlaceholderCredential() if cfg.replay_dir is not None else DefaultAzureCredential()
            ),
            clock=clock,
        )

    # ------------------------------------------------------------------ calls

    @property
    def api_calls(self) -> int:
        """HTTP requests made so far (ARM attempts + retail price attempts)."""
        return self.arm_calls + self.prices.calls

    @property
    def secrets(self) -> tuple[str, ...]:
        return self.credential.issued()

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with this adapter's bounded retries; failures as `ProviderError`."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            with self._lock:
                self.arm_calls += 1
            try:
                return fn()
            except Exception as raw:
                exc = map_error(raw, what, self.settings.timeout_s, self.secrets)
                if exc is None:
                    raise
                wait = self._retry_wait(exc, attempt)
                if attempt >= attempts or wait is None:
                    raise exc from None
                log.info(
                    "provider.retry azure %s attempt %d/%d in %.2fs: %s",
                    what,
                    attempt,
                    attempts,
                    wait,
                    redact(str(exc), self.secrets),
                )
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_wait(self, exc: ProviderError, attempt: int) -> float | None:
        backoff = self.backoff_base_s * float(2 ** (attempt - 1))
        if isinstance(exc, RateLimited):
            wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
            return wait if wait <= self.settings.max_retry_after_s else None
        if isinstance(exc, ProviderTimeout | ProviderUnavailable):
            return backoff
        return None

    def _check_link(self, what: str, link: str, host: str | None) -> None:
        if urlsplit(link).hostname != host:
            raise MalformedResponse(f"{what}: next page link points to another host")

    def _arm_pages(
        self, what: str, start: Callable[[str | None], Iterator[Iterator[Any]]]
    ) -> Iterator[list[Any]]:
        """Every page of an ARM list. A failing page is retried from its own continuation
        token; one that fails for good fails the whole read."""
        pager = _ArmPager(start)
        seen: set[str] = set()
        for n in itertools.count(1):
            label = what if n == 1 else f"{what} page {n}"
            page = self._call(label, pager.next_page)
            if page is None:
                return
            yield page
            token = pager.advance()
            if not token:
                return
            self._check_link(label, token, self.arm_host)
            if token in seen or n >= MAX_PAGES:
                raise MalformedResponse(f"{what}: pagination does not end (page {n})")
            seen.add(token)

    # ------------------------------------------------------------------ reads

    def _arm_json(self, what: str, url: str, params: Mapping[str, str] | None = None) -> Any:
        """GET an ARM URL (a path under the endpoint, or an absolute `nextLink`) through the
        SDK client's pipeline (credential, HTTPS check, transport) and return its JSON."""

        def once() -> Any:
            request = HttpRequest("GET", url, params=dict(params) if params else None)
            # stream=True: the pipeline's ContentDecodePolicy would parse the body once more.
            response = self.compute.send_request(request, stream=True, **self._call_kwargs)
            try:
                body = response.read()
            finally:
                response.close()
            if response.status_code != 200:
                raise HttpResponseError(response=response, error_format=ARMErrorFormat)
            try:
                return json.loads(body)
            except ValueError:
                raise MalformedResponse(
                    f"{what}: HTTP {response.status_code} body is not JSON ({len(body)} bytes)"
                ) from None

        return self._call(what, once)

    def read_skus(self) -> SkuCatalogue:
        """Every page of the subscription's resource SKUs.

        Read through `ComputeManagementClient.send_request` (the client's own pipeline) as
        JSON rather than through `resource_skus.list()`: the SDK's model deserialisation costs
        about 1 ms of CPU per SKU entry (measured, azure-mgmt-compute 39.0.0), and the list
        has an entry per size and location, tens of thousands in a real subscription. Same
        request as the SDK's (`api-version` 2021-07-01, `nextLink` followed verbatim)."""
        catalogue = SkuCatalogue()
        what = "resource_skus.list"
        sub = quote(self.subscription_id, safe="")
        url = f"/subscriptions/{sub}/providers/Microsoft.Compute/skus"
        params: Mapping[str, str] | None = {"api-version": SKUS_API_VERSION}
        seen: set[str] = set()
        for n in itertools.count(1):
            label = what if n == 1 else f"{what} page {n}"
            body = self._arm_json(label, url, params)
            if not isinstance(body, dict):
                raise MalformedResponse(f"{label}: expected an object, got {type(body).__name__}")
            value, link = body.get("value"), body.get("nextLink")
            if not isinstance(value, list) or not (link is None or isinstance(link, str)):
                raise MalformedResponse(f"{label}: value / nextLink of the wrong type")
            catalogue.add_page(value)
            if not link:
                return catalogue
            self._check_link(label, link, self.arm_host)
            if link in seen or n >= MAX_PAGES:
                raise MalformedResponse(f"{what}: pagination does not end (page {n})")
            seen.add(link)
            url, params = link, None
        raise AssertionError("unreachable")  # pragma: no cover

    def read_usages(self, location: str) -> list[Any]:
        usages: list[Any] = []
        for page in self._arm_pages(
            f"usage.list {location}",
            lambda token: self.compute.usage.list(location, **self._call_kwargs).by_page(
                continuation_token=token
            ),
        ):
            usages += page
        return usages

    def read_prices(self, location: str, wanted: Mapping[str, Any]) -> PriceBook:
        """Every page of `location`'s Virtual Machines retail prices."""
        book = PriceBook()
        odata = f"serviceName eq 'Virtual Machines' and armRegionName eq '{location}'"
        url = self.settings.retail_prices_url
        link: str | None = f"{url}{'&' if '?' in url else '?'}$filter={quote(odata, safe='')}"
        seen: set[str] = set()
        for n in itertools.count(1):
            what = f"retail prices {location}" + (f" page {n}" if n > 1 else "")
            assert link is not None
            body = self.prices.request("GET", link, what=what)
            if not isinstance(body, dict):
                raise MalformedResponse(f"{what}: expected an object, got {type(body).__name__}")
            items = body.get("Items")
            link = body.get("NextPageLink")
            if not isinstance(items, list) or not (link is None or isinstance(link, str)):
                raise MalformedResponse(f"{what}: Items / NextPageLink of the wrong type")
            book.add_page(items, wanted)
            if not link:
                return book
            self._check_link(what, link, self.prices_host)
            if link in seen or n >= MAX_PAGES:
                raise MalformedResponse(f"{what}: pagination does not end (page {n})")
            seen.add(link)
        raise AssertionError("unreachable")  # pragma: no cover

    def _prices_for(self, location: str, skus: Mapping[str, GpuSku]) -> PriceBook:
        """The location's price book: the cached one while it is fresh and covers every GPU
        size listed now, else a new complete read (cached only when complete)."""
        ttl = self.settings.prices_ttl_s
        now = self.clock()
        with self._lock:
            cached = self._price_cache.get(location)
        if (
            cached is not None
            and ttl > 0
            and now - cached.fetched_at < timedelta(seconds=ttl)
            and set(skus) <= cached.skus
        ):
            return cached.book
        book = self.read_prices(location, skus)
        if ttl > 0:
            with self._lock:
                self._price_cache[location] = _CachedPrices(now, frozenset(skus), book)
        return book

    # ------------------------------------------------------------------ poll

    def fetch(self) -> PollResult:
        try:
            catalogue = self.read_skus()
        except ProviderError as exc:
            return failed_poll(NAME, exc, self.clock, self.secrets)
        wanted = self.settings.regions
        names = (
            list(dict.fromkeys(r.strip().lower() for r in wanted))
            if wanted
            else sorted(catalogue.locations)
        )
        result = poll_scopes(
            NAME,
            [Scope(NAME, name) for name in names],
            lambda scope: self._fetch_location(scope, catalogue),
            clock=self.clock,
            max_workers=self.settings.max_concurrency,
            secrets=self.secrets,
        )
        skipped = Counter(result.skipped)
        skipped.update(catalogue.skipped)
        notes = [*catalogue.notes, *result.notes][:MAX_NOTES]
        return replace(result, skipped=dict(skipped), notes=notes)

    def _fetch_location(self, scope: Scope, catalogue: SkuCatalogue) -> ScopeOffers:
        location = scope.region or ""
        out = ScopeOffers()
        if not _LOCATION.match(location):
            raise RequestRejected(f"location {location!r}: not an Azure location name")
        skus = catalogue.gpu_skus.get(location, {})
        if not skus:
            if location not in catalogue.locations:
                near = regions.suggest(NAME, location)
                out.notes.append(
                    f"azure {location}: no virtual machine size listed for this location"
                    + (f" (near: {', '.join(near)})" if near else "")
                )
            return out  # covered: no GPU size here
        usages = self.read_usages(location)
        book = self._prices_for(location, skus)
        out.skipped.update(book.skipped)
        out.notes += book.notes[: MAX_NOTES - len(out.notes)]
        where = regions.resolve(NAME, location)
        if where is None:
            near = regions.suggest(NAME, location)
            out.notes.append(
                f"azure {location}: location not in broker/data/regions.csv, country unknown"
                + (f" (near: {', '.join(near)})" if near else "")
            )
        for key in sorted(skus):
            _offers_of(location, skus[key], book, where, out)
        out.quotas = quotas(location, usages, skus.values())
        return out


# --------------------------------------------------------------------------- offers


def _skip(out: ScopeOffers, reason: str, note: str) -> None:
    out.skipped[reason] += 1
    if len(out.notes) < MAX_NOTES:
        out.notes.append(note)


def _offers_of(
    location: str,
    sku: GpuSku,
    book: PriceBook,
    where: regions.RegionInfo | None,
    out: ScopeOffers,
) -> None:
    keys = book.offers_of(sku.name.lower())
    if not keys:
        _skip(out, "no_price", f"azure {location} {sku.name}: no Linux price row")
        return
    accel = accelerator_of(sku)
    if accel.model is None and len(out.notes) < MAX_NOTES:
        out.notes.append(
            f"azure {location} {sku.name} ({sku.family}): GPU {accel.name!r} not in the GPU "
            "catalogue, offers kept without gpu_model"
        )
    availability = Availability.UNAVAILABLE if sku.location_restriction else Availability.UNKNOWN
    base = raw_of(sku)
    for key in keys:
        _, market, offering_id = key
        try:
            row = book.get(key)
        except Ambiguous as exc:
            _skip(
                out,
                "ambiguous_price",
                f"azure {location} {sku.name} {market}{'/' + offering_id if offering_id else ''}"
                f": rows disagree ({exc})",
            )
            continue
        price = to_price(row.price_per_hour)
        if price <= 0:
            _skip(out, "zero_price", f"azure {location} {sku.name} {market}: price 0")
            continue
        out.offers.append(
            Offer(
                provider=NAME,
                region=location,
                instance_type=sku.name,
                market=market,
                **model_fields(accel.model, accel.name),
                gpu_count=to_count(sku.gpus),
                gpu_memory_gb=accel.memory_gb,
                vcpus=sku.vcpus,
                memory_gb=sku.memory_gb,
                interconnect="InfiniBand" if sku.rdma else None,
                **place_fields(where),
                price_per_hour=price,
                availability=availability,
                min_duration_hours=row.term_hours,
                offering_id=offering_id,
                raw={**base, "price": dict(row.raw)},
            )
        )


# --------------------------------------------------------------------------- quotas


def quotas(location: str, usages: Iterable[Any], skus: Iterable[GpuSku]) -> list[Quota]:
    """The location's vCPU quotas that govern its GPU sizes (see the module docstring)."""
    by_family: dict[str, set[str]] = {}
    every: set[str] = set()
    for sku in skus:
        every.add(sku.name)
        if sku.family:
            by_family.setdefault(sku.family.lower(), set()).add(sku.name)
    out: list[Quota] = []
    markets: tuple[Market, ...]
    for usage in usages:
        name_obj = getattr(usage, "name", None)
        name = str(getattr(name_obj, "value", "") or "")
        description = getattr(name_obj, "localized_value", None)
        lowered = name.lower()
        if lowered in by_family:
            types, markets = by_family[lowered], (Market.ON_DEMAND, Market.RESERVED)
        elif lowered == "cores":
            types, markets = every, (Market.ON_DEMAND, Market.RESERVED)
        elif lowered == "lowprioritycores":
            types, markets = every, (Market.SPOT,)
        else:
            continue
        try:
            limit = wire_decimal(usage.limit)
            used = wire_decimal(usage.current_value) if usage.current_value is not None else None
        except ValueError:
            continue
        for market in markets:
            out.append(
                Quota(
                    provider=NAME,
                    region=location,
                    name=name,
                    unit="vcpus",
                    limit=limit,
                    usage=used,
                    market=market,
                    instance_types=frozenset(types),
                    description=str(description) if description else None,
                )
            )
    return out
