"""GCP: Compute Engine GPU machine types, accelerator types and GPU quotas, priced from the
Cloud Billing Catalog.

## What it calls (PROVIDERS.md §2)
Project-wide, once per poll, concurrently (each paged with `nextPageToken`, one call per page):

- `AcceleratorTypesClient.aggregated_list` (`GET .../aggregated/acceleratorTypes`,
  `includeAllScopes=true`): the accelerator types of every zone. Empty zones come back with a
  `NO_RESULTS_ON_PAGE` warning, which is how regions without GPUs are still covered.
- `MachineTypesClient.aggregated_list` (`GET .../aggregated/machineTypes`) with
  `filter=settings.machine_type_filter` (default: the accelerator-optimised families a2, a3,
  a4, g2, ... as `name eq "<RE2>"`, the regex form of the SDK's `filter` docstring, which must
  match the whole name): machine types whose `accelerators[]` carry built-in GPUs.
- Cloud Billing Catalog `GET /v1/services/6F81-5844-456A/skus?currencyCode=USD&pageSize=5000`
  (Compute Engine's service id): the GPU, "Instance Core" and "Instance Ram" SKUs.

Then per region, on a bounded pool (`max_concurrency`): `RegionsClient.get` (`GET
.../regions/{region}`) for the region's `status` and GPU `quotas[]`. A region whose zones carry no
accelerator at all needs no call and is covered with no offers (that withdraws offers of a
region that lost its GPUs).

## Scopes and faults
One `Scope("gcp", region)` per region: `settings.gcp.regions`, else every region of a zone seen
in either aggregated list. The three project-wide reads are all-or-nothing: any of them failing
(on any page) fails the whole poll (`failed_poll`), because a partial catalogue or price list
would make ingest withdraw offers that were merely not read; the price list fails the poll too,
since no offer can be priced without it. A region fails alone when its `regions.get` fails or
when an aggregated list reports one of its zones `UNREACHABLE` (per-scope warning or
`unreachables[]`). Every call is retried by this module (not by the SDK, whose own retry is
off: `retry=None`, `timeout=timeout_s`): up to `max_attempts`; 429 (and 403 `rateLimitExceeded`,
which is how Compute Engine throttles reads) after `Retry-After` when that is at most
`max_retry_after_s`, 5xx / timeouts / dropped connections with exponential backoff. SDK and
transport errors are mapped onto the `ProviderError` tree in `_map_error`.

## Offers
- **Machine types with built-in GPUs** (a2-*, a3-*, a4-*, g2-*): one offer per zone, machine
  type and market. `gpu_model` from `broker.gpus.normalise(guestAcceleratorType)`,
  `gpu_count` = `guestAcceleratorCount`, `vcpus` = `guestCpus`, `memory_gb` = `memoryMb / 1024`
  (GCP's "MB" here are MiB: a3-highgpu-8g has 1916928 = 1872 GiB).
- **N1-attachable GPUs** (T4, V100, P100, P4, K80; GCP docs "GPUs on N1"): GCP sells these as
  accelerators attached to any N1 machine type the user picks, so there is no machine price to
  report. One offer per accelerator type, zone and market, `instance_type` = the accelerator
  type name (`nvidia-tesla-t4`), `gpu_count` = 1 (the smallest attachable count; the maximum is
  in `raw["max_per_instance"]`), priced **per GPU only**: `raw["pricing"] == "gpu_only"` says
  the N1 host (billed separately) is not included. No host price is ever invented. Turn them
  off with `BROKER_GCP__ATTACHABLE_GPUS=false`.
- Markets: `on_demand` (SKU usageType `OnDemand`) and `spot` (`Preemptible`). Commitments
  (`Commit1Yr`/`Commit3Yr`) are not offered: they are resource-based discounts on a region's
  vCPU/RAM/GPU usage, not a purchasable instance, and their core/RAM SKU wording is unverified.
- `availability` is `unknown` (a price list says nothing about capacity), `unavailable` when
  `regions.get` reports the region `DOWN`. Location from `broker.regions`; an unknown region keeps
  its offers with `country=None` and a note.

## Prices
GCP bills a GPU VM as its GPUs plus its vCPUs plus its memory, each at a per-region rate
(cloud.google.com/compute/vm-instance-pricing, /compute/gpus-pricing); the catalogue holds those
rates as SKUs. Summing them is what third-party catalogues do (SkyPilot's fetch_gcp.py;
PROVIDERS.md §2.6 [3P]) and it reproduces GCP's published rate where checked (shared/data
README: a2-highgpu-1g in us-central1 = host 0.73948 + A100 2.93391 = 3.67339).

Each SKU's price is the latest `pricingInfo[]` entry's lowest tier: `unitPrice.units +
unitPrice.nanos / 10^9` (as `Decimal`), per `usageUnit` (`h` for GPU and core, `GiBy.h` for
RAM). A SKU applies to the regions in its `serviceRegions`. Then, per region and market:

    price/hour = GPU SKU × gpus + core SKU × vCPUs + RAM SKU × GiB

with GPU SKU = the "Nvidia <model> GPU" SKU of the accelerator type (matched on the model words
of both names, vendor words dropped, so "nvidia-h100-mega-80gb" ↔ "Nvidia H100 80GB Mega GPU";
"Plus" is read as "Mega", a spelling some regions use [SkyPilot fetch_gcp.py]) and core/RAM =
the machine family's "<FAMILY> Instance Core/Ram running in ..." SKUs (family = the machine
type's prefix: a3-highgpu-8g → "A3"). A GPU SKU sold as a "(N gpu slice)" ("Nvidia B200 (1 gpu
slice)": there are no A4 core/RAM SKUs, the slice carries the machine [SkyPilot fetch_gcp.py]) is
the whole price: slice price / N × gpus.
Spot uses the `Preemptible` SKUs of all three. An offer needs every component in its region
and market; a missing one skips it (`skipped["no_price:<market>"]`), two SKUs with different
prices for one component skip it (`ambiguous_price`), never a guess. SKUs for commitments,
reservations, sole tenancy, custom/premium/extended shapes and DWS/calendar/flex modes are
ignored. `raw` keeps the SKU ids and unit prices used.

## Quotas
`regions.get` → `quotas[]`: every `*_GPUS` metric becomes a `Quota(unit="gpus")`, market `spot`
for `PREEMPTIBLE_*`, `reserved` for `COMMITTED_*`, else `on_demand`; `instance_types` = the polled
instance types of the region whose accelerator type the metric names (NVIDIA_H100_GPUS →
nvidia-h100-80gb → a3-highgpu-*; exact model words first, then ignoring memory words if that
leaves exactly one type that `broker.gpus` maps to the same model). `GPUS_ALL_REGIONS` is
project-wide, not a region's, and is left out.

## Not polled
Calendar-mode advice (`AdviceClient.calendar_mode`, PROVIDERS.md §2.5: future reservations,
no price in the answer, one request per shape and window) and TPUs (a separate API and
catalogue). Zones' own `status` (one more project-wide list) is not read: a region's is.

## Auth
Application Default Credentials (`google.auth.default()`) plus `BROKER_GCP__PROJECT`; the billing
catalogue uses `BROKER_GCP__BILLING_API_KEY` as `?key=` when set, else the same ADC bearer token
(the API accepts the `cloud-billing.readonly` / `cloud-platform` scopes). Billing is read over
plain HTTP (`providers._http.JsonApi`) rather than google-cloud-billing: the SDK's protobuf
parse of a 5,000-SKU page takes ~1.3 s of CPU against ~0.13 s for `json.loads` (measured), and
we read a few fields of a catalogue of some 25,000 SKUs (size unverified) every poll.
"""

from __future__ import annotations

import importlib
import itertools
import logging
import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar, TypeVar

import google.auth
import google.auth.exceptions
import google.auth.transport.requests
import httpx
import requests
from google.api_core import exceptions as gexc
from google.api_core.client_options import ClientOptions
from google.auth.credentials import Credentials
from google.cloud import compute_v1

from broker import gpus, regions
from broker.config import GcpSettings, Settings
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
from providers._http import BACKOFF_BASE_S, JsonApi, parse_retry_after
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

NAME = "gcp"
#: Compute Engine's service id in the Cloud Billing Catalog.
COMPUTE_SERVICE_ID = "6F81-5844-456A"
BILLING_URL = "https://cloudbilling.googleapis.com"
SCOPES = ("https://www.googleapis.com/auth/cloud-platform",)
#: Page sizes: Compute aggregated lists return at most 500 items, the catalogue 5,000 SKUs.
COMPUTE_PAGE_SIZE = 500
SKU_PAGE_SIZE = 5000
#: A paged read that has not ended after this many pages is treated as broken (a server
#: handing out tokens forever), not followed forever.
MAX_PAGES = 1000
MAX_NOTES = 50

#: Accelerator types GCP attaches to N1 VMs (cloud.google.com/compute/docs/gpus, "N1
#: general-purpose machine series"): sold per GPU, the host machine type is the user's choice.
N1_ATTACHABLE = frozenset(
    {
        "nvidia-tesla-t4",
        "nvidia-tesla-t4-vws",
        "nvidia-tesla-v100",
        "nvidia-tesla-p100",
        "nvidia-tesla-p100-vws",
        "nvidia-tesla-p4",
        "nvidia-tesla-p4-vws",
        "nvidia-tesla-k80",
    }
)

_USAGE_MARKET: Mapping[str, Market] = {"OnDemand": Market.ON_DEMAND, "Preemptible": Market.SPOT}
_QUOTA_PREFIX_MARKET: tuple[tuple[str, Market], ...] = (
    ("PREEMPTIBLE_", Market.SPOT),
    ("COMMITTED_", Market.RESERVED),
)
_VENDOR_WORDS = frozenset({"nvidia", "tesla", "amd"})
#: SKUs priced for something other than a plain on-demand/spot VM of a standard shape.
_EXCLUDED_SKU_WORDS = (
    "commitment",
    "reserved",
    "reservation",
    "sole tenancy",
    "custom",
    "premium",
    "extended",
    "dws",
    "defined duration",
    "calendar",
    "flex",
)
_SKU_PREFIX = r"^(?:spot preemptible |preemptible )?"
_GPU_SKU = re.compile(
    _SKU_PREFIX + r"(?P<name>(?:nvidia|amd) .+?) (?:gpu|\((?P<slice>\d+) gpu slices?\))(?:\s|$)",
    re.IGNORECASE,
)
_HOST_SKU = re.compile(
    _SKU_PREFIX + r"(?P<family>[a-z0-9]+(?: [a-z0-9]+)*?) instance (?P<kind>core|ram) running in ",
    re.IGNORECASE,
)
_MEMORY_WORD = re.compile(r"^\d+gb$")
_REST_PREFIX = re.compile(r"^[A-Z]+ \S+: ")
#: Token replacements between the spellings of accelerator types, SKUs and quota metrics.
_WORD_ALIASES = {"plus": "mega"}  # "H100 80GB Plus GPU" is A3 Mega's H100 in some regions

T = TypeVar("T")
#: What compute_v1's REST transport raises for a body that is not the expected JSON
#: (google.protobuf ships no type stubs, hence the lookup).
ParseError: type[Exception] = importlib.import_module("google.protobuf.json_format").ParseError


# --------------------------------------------------------------------------- helpers


def model_words(name: str) -> frozenset[str]:
    """The words that identify a GPU model in any of GCP's spellings, vendor words dropped:
    `nvidia-h100-mega-80gb`, "Nvidia H100 80GB Mega" and `NVIDIA_H100_MEGA` (a quota metric
    without `_GPUS`) → {h100, mega, 80gb}; "Virtual Workstation" → vws."""
    text = re.sub(r"virtual[\s_-]+workstation", "vws", name.lower())
    words = re.split(r"[^a-z0-9]+", text)
    return frozenset(_WORD_ALIASES.get(w, w) for w in words if w and w not in _VENDOR_WORDS)


def _without_memory(words: frozenset[str]) -> frozenset[str]:
    return frozenset(w for w in words if not _MEMORY_WORD.match(w))


def region_of_zone(zone: str) -> str:
    """`us-central1-a` → `us-central1` (GCP zone names are the region plus `-<letter>`)."""
    return zone.rsplit("-", 1)[0]


def _zone_of_scope(scope: str) -> str | None:
    """`zones/us-central1-a` → `us-central1-a`; other scope kinds → None."""
    kind, _, name = scope.partition("/")
    return name if kind == "zones" and name else None


def unit_price(money: Mapping[str, Any]) -> Decimal:
    """`Money {units (int64 as string), nanos}` → Decimal USD.

    Raises:
        ValueError: not numbers, or a currency other than USD.
    """
    currency = money.get("currencyCode", "USD")
    if currency != "USD":
        raise ValueError(f"currency {currency!r}")
    try:
        units = Decimal(int(str(money.get("units", "0") or "0")))
        nanos = Decimal(int(money.get("nanos", 0) or 0))
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"unitPrice {dict(money)!r}") from exc
    return units + nanos / Decimal(10**9)


# --------------------------------------------------------------------------- price book


@dataclass(frozen=True, slots=True)
class SkuPrice:
    """One SKU's current price for one component, USD per usage unit."""

    sku_id: str
    price: Decimal
    description: str
    #: For "(N gpu slice)" SKUs: GPUs per unit (the price covers the whole machine share).
    slice_gpus: int | None = None


Component = tuple[str, frozenset[str] | str]  # ("gpu", model words) | ("core"|"ram", family)


class Ambiguous(Exception):
    """Two SKUs price one component differently: no offer rather than a guess."""


@dataclass
class PriceBook:
    """The Compute Engine SKUs that price GPU VMs, by (component, region, market)."""

    entries: dict[tuple[Component, str, Market], dict[Decimal, SkuPrice]] = field(
        default_factory=dict
    )
    skus_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add_page(self, skus: Iterable[Any]) -> None:
        for sku in skus:
            self.skus_read += 1
            try:
                self._add(sku)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
                self.skipped["bad_sku"] += 1
                if len(self.notes) < MAX_NOTES:
                    sku_id = sku.get("skuId") if isinstance(sku, dict) else None
                    self.notes.append(f"billing sku {sku_id}: unreadable ({exc})")

    def _add(self, sku: Mapping[str, Any]) -> None:
        category = sku.get("category") or {}
        if category.get("resourceFamily") != "Compute":
            return
        market = _USAGE_MARKET.get(category.get("usageType", ""))
        if market is None:
            return
        description: str = sku.get("description", "")
        lowered = description.lower()
        if any(word in lowered for word in _EXCLUDED_SKU_WORDS):
            return
        component: Component
        slice_gpus: int | None = None
        expected_unit = "h"
        gpu = _GPU_SKU.match(description)
        host = None if gpu else _HOST_SKU.match(description)
        if gpu:
            component = ("gpu", model_words(gpu.group("name")))
            if gpu.group("slice"):
                slice_gpus = int(gpu.group("slice"))
                if slice_gpus <= 0:
                    raise ValueError(f"slice of {slice_gpus} GPUs")
        elif host:
            kind = host.group("kind").lower()
            component = (kind, host.group("family").lower())
            expected_unit = "GiBy.h" if kind == "ram" else "h"
        else:
            return
        pricing = sku["pricingInfo"][-1]["pricingExpression"]
        if pricing.get("usageUnit") != expected_unit:
            raise ValueError(f"usageUnit {pricing.get('usageUnit')!r}, expected {expected_unit}")
        tiers = sorted(pricing["tieredRates"], key=lambda t: float(t.get("startUsageAmount", 0)))
        price = unit_price(tiers[0]["unitPrice"])
        if price <= 0:
            self.skipped["zero_price_sku"] += 1
            return
        entry = SkuPrice(str(sku["skuId"]), price, description, slice_gpus)
        for region in sku.get("serviceRegions") or ():
            self.entries.setdefault((component, str(region), market), {})[price] = entry

    def get(self, component: Component, region: str, market: Market) -> SkuPrice | None:
        """The one price of `component` in `region` and `market`, None when unpriced.

        Raises:
            Ambiguous: SKUs with different prices match.
        """
        found = self.entries.get((component, region, market))
        if not found:
            return None
        if len(found) > 1:
            ids = ", ".join(f"{p.sku_id}={p.price}" for p in found.values())
            raise Ambiguous(f"{component[0]} {_label(component)} in {region} {market}: {ids}")
        return next(iter(found.values()))


def _label(component: Component) -> str:
    key = component[1]
    return key if isinstance(key, str) else " ".join(sorted(key))


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class AccelType:
    name: str
    description: str
    max_per_instance: int
    deprecated: str


@dataclass(frozen=True, slots=True)
class MachineType:
    name: str
    guest_cpus: int
    memory_mb: int
    accelerators: tuple[tuple[str, int], ...]
    deprecated: str


@dataclass
class Catalogue:
    """What the two aggregated lists said, by zone."""

    accelerators: dict[str, list[AccelType]] = field(default_factory=dict)
    machine_types: dict[str, list[MachineType]] = field(default_factory=dict)
    zones: set[str] = field(default_factory=set)
    #: zone (or region) → why the aggregated list could not read it.
    unreachable: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Catalogue) -> None:
        self.accelerators.update(other.accelerators)
        self.machine_types.update(other.machine_types)
        self.zones |= other.zones
        self.unreachable.update(other.unreachable)

    def accelerator_names(self) -> set[str]:
        names = {a.name for accels in self.accelerators.values() for a in accels}
        return names | {
            n for ms in self.machine_types.values() for m in ms for n, _ in m.accelerators
        }

    def regions(self) -> set[str]:
        return {region_of_zone(z) for z in self.zones} | {
            region_of_zone(z) if z.count("-") >= 2 else z for z in self.unreachable
        }

    def zones_of(self, region: str) -> list[str]:
        return sorted(z for z in self.zones if region_of_zone(z) == region)


_DEAD = frozenset({"OBSOLETE", "DELETED"})


# --------------------------------------------------------------------------- errors


def _rate_limited_403(exc: gexc.GoogleAPICallError) -> bool:
    """Compute Engine throttles reads with HTTP 403 `rateLimitExceeded` (PROVIDERS.md §2.8)."""
    reasons = {e.get("reason") for e in exc.errors if isinstance(e, dict)}
    reasons.add(exc.reason)
    return bool(reasons & {"rateLimitExceeded", "userRateLimitExceeded", "RATE_LIMIT_EXCEEDED"})


def _api_message(exc: gexc.GoogleAPICallError) -> str:
    """The server's message without the `METHOD URL: ` prefix the SDK adds, shortened."""
    return _REST_PREFIX.sub("", str(exc.message or ""), count=1).strip()[:200]


def _map_error(exc: BaseException, what: str) -> ProviderError | None:
    """An SDK / transport / auth exception as a `ProviderError`, or None if it is none of
    those (a bug). Messages name the call, never a URL's query or a credential."""
    if isinstance(exc, ProviderError):
        return exc
    if isinstance(exc, gexc.GoogleAPICallError):
        code = exc.code
        detail = f"{what}: HTTP {code} {type(exc).__name__}"
        message = _api_message(exc)
        if message:
            detail += f": {message}"
        response = exc.response
        if isinstance(exc, gexc.TooManyRequests) or (
            isinstance(exc, gexc.Forbidden) and _rate_limited_403(exc)
        ):
            header = None
            if isinstance(response, requests.Response):
                header = response.headers.get("Retry-After")
            return RateLimited(detail, parse_retry_after(header))
        if isinstance(exc, gexc.Unauthorized | gexc.Forbidden):
            return AuthFailed(detail)
        if isinstance(exc, gexc.GatewayTimeout):  # incl. DeadlineExceeded
            return ProviderTimeout(detail)
        if isinstance(exc, gexc.ServerError):
            return ProviderUnavailable(detail)
        return RequestRejected(detail)
    if isinstance(exc, google.auth.exceptions.GoogleAuthError):
        first = str(exc).splitlines()[0][:200] if str(exc) else ""
        if isinstance(exc, google.auth.exceptions.TransportError) or exc.retryable:
            return ProviderUnavailable(f"{what}: credential refresh failed: {first}")
        return AuthFailed(f"{what}: credentials rejected ({type(exc).__name__}: {first})")
    if isinstance(exc, requests.exceptions.Timeout):
        return ProviderTimeout(f"{what}: no answer in time ({type(exc).__name__})")
    if isinstance(exc, requests.exceptions.RequestException):
        # Refused, dropped, DNS, or a body cut short (ChunkedEncodingError).
        return ProviderUnavailable(f"{what}: connection failed ({type(exc).__name__})")
    if isinstance(exc, ParseError):
        return MalformedResponse(f"{what}: response does not parse ({str(exc)[:160]})")
    return None


# --------------------------------------------------------------------------- adapter


@register
class Gcp:
    """The GCP adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        settings: GcpSettings,
        *,
        project: str,
        credentials: Credentials,
        clock: Clock = utcnow,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = BACKOFF_BASE_S,
        page_size: int = COMPUTE_PAGE_SIZE,
        sku_page_size: int = SKU_PAGE_SIZE,
        billing_transport: httpx.BaseTransport | None = None,
    ) -> None:
        self.settings = settings
        self.project = project
        self.credentials = credentials
        self.clock = clock
        self.sleep = sleep
        self.backoff_base_s = backoff_base_s
        self.page_size = page_size
        self.sku_page_size = sku_page_size
        self.api_key = (
            settings.billing_api_key.get_secret_value() if settings.billing_api_key else None
        )
        options = ClientOptions(api_endpoint=settings.api_endpoint)
        common: dict[str, Any] = {
            "credentials": credentials,
            "transport": "rest",
            "client_options": options,
        }
        self.accelerator_types_client = compute_v1.AcceleratorTypesClient(**common)
        self.machine_types_client = compute_v1.MachineTypesClient(**common)
        self.regions_client = compute_v1.RegionsClient(**common)
        self.billing = JsonApi(
            NAME,
            settings.billing_endpoint or BILLING_URL,
            settings,
            secrets=[self.api_key],
            transport=billing_transport,
            sleep=sleep,
            backoff_base_s=backoff_base_s,
        )
        self._auth_request = google.auth.transport.requests.Request()
        self._lock = threading.Lock()
        self.compute_calls = 0

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Gcp:
        cfg = settings.gcp
        if not cfg.project:
            raise ProviderDisabled(
                "GCP disabled: set BROKER_GCP__PROJECT and Application Default Credentials "
                "(GOOGLE_APPLICATION_CREDENTIALS or gcloud auth application-default login)"
            )
        try:
            credentials, _ = google.auth.default(scopes=SCOPES)
        except google.auth.exceptions.DefaultCredentialsError as exc:
            reason = str(exc).splitlines()[0][:160] if str(exc) else type(exc).__name__
            raise ProviderDisabled(
                "GCP disabled: no Application Default Credentials (set "
                "GOOGLE_APPLICATION_CREDENTIALS or run gcloud auth application-default login): "
                + redact(reason)
            ) from None
        return cls(cfg, project=cfg.project, credentials=credentials, clock=clock)

    # ------------------------------------------------------------------ calls

    @property
    def api_calls(self) -> int:
        """HTTP requests made so far (compute attempts + billing attempts)."""
        return self.compute_calls + self.billing.calls

    @property
    def secrets(self) -> tuple[str, ...]:
        found = [self.api_key]
        for attr in ("token", "refresh_token", "client_secret"):
            value = getattr(self.credentials, attr, None)
            found.append(value if isinstance(value, str) else None)
        return tuple(s for s in found if s)

    def _call(self, what: str, fn: Callable[[], T]) -> T:
        """`fn()` with this adapter's bounded retries; failures as `ProviderError`."""
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            with self._lock:
                self.compute_calls += 1
            try:
                return fn()
            except Exception as raw:
                exc = _map_error(raw, what)
                if exc is None:
                    raise
                wait = self._retry_wait(exc, attempt)
                if attempt >= attempts or wait is None:
                    raise exc from None
                log.info(
                    "provider.retry gcp %s attempt %d/%d in %.2fs: %s",
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

    def _pages(self, what: str, fetch_page: Callable[[str], tuple[T, str]]) -> Iterator[T]:
        """Every page of a paged read; a page failing (after retries) fails the whole read."""
        token = ""
        seen: set[str] = set()
        for n in itertools.count(1):
            page, token = fetch_page(token)
            yield page
            if not token:
                return
            if token in seen or n >= MAX_PAGES:
                raise MalformedResponse(f"{what}: pagination does not end (page {n})")
            seen.add(token)

    # ------------------------------------------------------------------ project-wide reads

    def _aggregated(
        self, what: str, method: Callable[..., Any], request_type: type[Any], **fields: Any
    ) -> Iterator[Any]:
        def page(token: str) -> tuple[Any, str]:
            if token:  # proto3 `optional`: an explicit "" would be sent as pageToken=
                fields["page_token"] = token
            request = request_type(
                project=self.project,
                max_results=self.page_size,
                include_all_scopes=True,
                **fields,
            )

            def once() -> Any:
                pager = method(request=request, retry=None, timeout=self.settings.timeout_s)
                return next(iter(pager.pages))  # the first page only: we page ourselves

            response = self._call(what, once)
            return response, str(response.next_page_token)

        return self._pages(what, page)

    def _read_scopes(self, catalogue: Catalogue, response: Any, kind: str) -> Iterator[Any]:
        for entry in response.unreachables:
            catalogue.unreachable[str(entry).rsplit("/", 1)[-1]] = f"{kind}: unreachable"
        for scope, scoped in response.items.items():
            zone = _zone_of_scope(scope)
            if zone is None:
                continue
            catalogue.zones.add(zone)
            code = str(scoped.warning.code) if scoped.warning.code else ""
            if code and code != "NO_RESULTS_ON_PAGE":
                message = str(scoped.warning.message)[:160]
                catalogue.unreachable[zone] = f"{kind}: {code} {message}".strip()
            yield zone, scoped

    def read_accelerator_types(self, catalogue: Catalogue) -> None:
        what = "acceleratorTypes.aggregatedList"
        for response in self._aggregated(
            what,
            self.accelerator_types_client.aggregated_list,
            compute_v1.AggregatedListAcceleratorTypesRequest,
        ):
            for zone, scoped in self._read_scopes(catalogue, response, "acceleratorTypes"):
                for a in scoped.accelerator_types:
                    catalogue.accelerators.setdefault(zone, []).append(
                        AccelType(
                            name=a.name,
                            description=a.description,
                            max_per_instance=int(a.maximum_cards_per_instance),
                            deprecated=str(a.deprecated.state or ""),
                        )
                    )

    def read_machine_types(self, catalogue: Catalogue) -> None:
        what = "machineTypes.aggregatedList"
        extra = (
            {"filter": self.settings.machine_type_filter}
            if self.settings.machine_type_filter
            else {}
        )
        for response in self._aggregated(
            what,
            self.machine_types_client.aggregated_list,
            compute_v1.AggregatedListMachineTypesRequest,
            **extra,
        ):
            for zone, scoped in self._read_scopes(catalogue, response, "machineTypes"):
                for m in scoped.machine_types:
                    accels = tuple(
                        (a.guest_accelerator_type, int(a.guest_accelerator_count))
                        for a in m.accelerators
                        if a.guest_accelerator_count > 0
                    )
                    if not accels:
                        continue  # a filter that lets plain machine types through
                    catalogue.machine_types.setdefault(zone, []).append(
                        MachineType(
                            name=m.name,
                            guest_cpus=int(m.guest_cpus),
                            memory_mb=int(m.memory_mb),
                            accelerators=accels,
                            deprecated=str(m.deprecated.state or ""),
                        )
                    )

    def read_prices(self) -> PriceBook:
        book = PriceBook()
        path = f"/v1/services/{COMPUTE_SERVICE_ID}/skus"
        what = "cloudbilling services.skus.list"

        def page(token: str) -> tuple[list[Any], str]:
            params: dict[str, Any] = {"currencyCode": "USD", "pageSize": self.sku_page_size}
            if token:
                params["pageToken"] = token
            headers: dict[str, str] = {}
            if self.api_key:
                params["key"] = self.api_key
            else:
                try:
                    apply_auth: Callable[..., None] = self.credentials.before_request
                    apply_auth(
                        self._auth_request,
                        "GET",
                        str(self.billing.client.base_url.join(path)),
                        headers,
                    )
                except Exception as raw:
                    exc = _map_error(raw, what)
                    if exc is None:
                        raise
                    raise exc from None
            body = self.billing.request("GET", path, params=params, headers=headers, what=what)
            if not isinstance(body, dict):
                raise MalformedResponse(f"{what}: expected an object, got {type(body).__name__}")
            skus = body.get("skus", [])
            next_token = body.get("nextPageToken", "")
            if not isinstance(skus, list) or not isinstance(next_token, str):
                raise MalformedResponse(f"{what}: skus / nextPageToken of the wrong type")
            return skus, next_token

        for skus in self._pages(what, page):
            book.add_page(skus)
        return book

    def _refresh_credentials(self) -> None:
        """One token refresh up front, rather than one per concurrent first call."""
        if self.credentials.valid:
            return
        try:
            refresh: Callable[..., None] = self.credentials.refresh
            refresh(self._auth_request)
        except Exception as raw:
            exc = _map_error(raw, "credentials.refresh")
            if exc is None:
                raise
            raise exc from None

    # ------------------------------------------------------------------ poll

    def fetch(self) -> PollResult:
        accelerators, machines = Catalogue(), Catalogue()
        try:
            self._refresh_credentials()
            with ThreadPoolExecutor(max_workers=3, thread_name_prefix="gcp-global") as pool:
                jobs: list[Future[Any]] = [
                    pool.submit(self.read_accelerator_types, accelerators),
                    pool.submit(self.read_machine_types, machines),
                    pool.submit(self.read_prices),
                ]
                errors = [job.exception() for job in jobs]
            for error in errors:
                if error is not None:
                    if isinstance(error, ProviderError):
                        raise error
                    log.error("provider.poll_crashed gcp: %s", redact(repr(error), self.secrets))
                    raise ProviderError(f"adapter error: {type(error).__name__}")
            book: PriceBook = jobs[2].result()
        except ProviderError as exc:
            return failed_poll(NAME, exc, self.clock, self.secrets)
        catalogue = accelerators
        catalogue.merge(machines)

        wanted = self.settings.regions
        names = list(dict.fromkeys(wanted)) if wanted else sorted(catalogue.regions())
        result = poll_scopes(
            NAME,
            [Scope(NAME, r) for r in names],
            lambda scope: self._fetch_region(scope, catalogue, book),
            clock=self.clock,
            max_workers=self.settings.max_concurrency,
            secrets=self.secrets,
        )
        skipped = Counter(result.skipped)
        skipped.update(book.skipped)
        notes = [*book.notes, *result.notes][:MAX_NOTES]
        return replace(result, skipped=dict(skipped), notes=notes)

    def _fetch_region(self, scope: Scope, catalogue: Catalogue, book: PriceBook) -> ScopeOffers:
        region = scope.region or ""
        for place, why in sorted(catalogue.unreachable.items()):
            if place == region or region_of_zone(place) == region:
                raise ProviderUnavailable(f"zone {place} not read by the aggregated list: {why}")
        out = ScopeOffers()
        zones = catalogue.zones_of(region)
        if not any(catalogue.accelerators.get(z) or catalogue.machine_types.get(z) for z in zones):
            if not zones:
                out.notes.append(f"gcp {region}: no zone of this region in the aggregated lists")
            return out  # covered: nothing with a GPU here
        info = self._call(
            f"regions.get {region}",
            lambda: self.regions_client.get(
                project=self.project, region=region, retry=None, timeout=self.settings.timeout_s
            ),
        )
        availability = Availability.UNAVAILABLE if info.status == "DOWN" else Availability.UNKNOWN
        where = regions.resolve(NAME, region)
        if where is None:
            near = regions.suggest(NAME, region)
            out.notes.append(
                f"gcp {region}: region not in broker/data/regions.csv, country unknown"
                + (f" (near: {', '.join(near)})" if near else "")
            )
        builder = _OfferBuilder(region, where, availability, book, out, self.settings)
        for zone in zones:
            builder.zone(
                zone, catalogue.accelerators.get(zone, []), catalogue.machine_types.get(zone, [])
            )
        out.quotas = _quotas(
            region, info, builder.types_by_accelerator, catalogue.accelerator_names()
        )
        if info.quota_status_warning.code:
            out.notes.append(
                f"gcp {region}: quotas not reported ({info.quota_status_warning.code})"
            )
        return out


# --------------------------------------------------------------------------- offers


@dataclass
class _OfferBuilder:
    region: str
    where: regions.RegionInfo | None
    availability: Availability
    book: PriceBook
    out: ScopeOffers
    settings: GcpSettings
    #: accelerator type name → instance types of this region that carry it (for quotas).
    types_by_accelerator: dict[str, set[str]] = field(default_factory=dict)

    def skip(self, reason: str, note: str | None = None) -> None:
        self.out.skipped[reason] += 1
        if note and len(self.out.notes) < MAX_NOTES:
            self.out.notes.append(f"gcp {self.region}: {note}")

    def zone(self, zone: str, accels: list[AccelType], machines: list[MachineType]) -> None:
        carried = {name for m in machines for name, _ in m.accelerators}
        for m in machines:
            if m.deprecated in _DEAD:
                self.skip("deprecated")
                continue
            if len(m.accelerators) != 1:
                self.skip("mixed_accelerators", f"{zone} {m.name}: {m.accelerators}")
                continue
            accel, count = m.accelerators[0]
            self.types_by_accelerator.setdefault(accel, set()).add(m.name)
            self.machine(zone, m, accel, count)
        for a in accels:
            if a.name in carried:
                continue
            if a.deprecated in _DEAD:
                self.skip("deprecated")
                continue
            if a.name not in N1_ATTACHABLE:
                self.skip("no_machine_type", f"{zone} {a.name}: no polled machine type carries it")
                continue
            if not self.settings.attachable_gpus:
                continue
            self.types_by_accelerator.setdefault(a.name, set()).add(a.name)
            self.attachable(zone, a)

    def _model(self, accel: str, instance_type: str) -> gpus.GpuModel | None:
        model = gpus.normalise(accel, provider=NAME, instance_type=instance_type)
        if model is None:
            self.skip("unknown_gpu", f"{accel} ({instance_type}) not in the GPU catalogue")
        return model

    def _price(
        self, parts: list[tuple[str, Component, Decimal]], market: Market, label: str
    ) -> tuple[Decimal, dict[str, str]] | None:
        """Σ unit price × quantity over the parts, or None (skipped and counted)."""
        total = Decimal(0)
        used: dict[str, str] = {}
        for part, component, quantity in parts:
            try:
                sku = self.book.get(component, self.region, market)
            except Ambiguous as exc:
                self.skip("ambiguous_price", f"{label}: {exc}")
                return None
            if sku is None:
                self.skip(f"no_price:{market}", f"{label}: no {market} {part} SKU")
                return None
            if part == "gpu" and sku.slice_gpus:
                # A slice SKU prices the whole machine share: no core/RAM parts follow.
                total += sku.price / sku.slice_gpus * quantity
                used["gpu_slice"] = f"{sku.sku_id}={sku.price}/{sku.slice_gpus}"
                return total, used
            total += sku.price * quantity
            used[part] = f"{sku.sku_id}={sku.price}"
        return total, used

    def machine(self, zone: str, m: MachineType, accel: str, count: int) -> None:
        model = self._model(accel, m.name)
        if model is None:
            return
        family = m.name.split("-", 1)[0]
        memory_gib = Decimal(m.memory_mb) / 1024
        parts: list[tuple[str, Component, Decimal]] = [
            ("gpu", ("gpu", model_words(accel)), Decimal(count)),
            ("core", ("core", family), Decimal(m.guest_cpus)),
            ("ram", ("ram", family), memory_gib),
        ]
        for market in _USAGE_MARKET.values():
            priced = self._price(parts, market, f"{zone} {m.name}")
            if priced is None:
                continue
            total, used = priced
            raw = {
                "machine_type": m.name,
                "accelerator_type": accel,
                "guest_accelerator_count": count,
                "guest_cpus": m.guest_cpus,
                "memory_mb": m.memory_mb,
                "skus": used,
            }
            if m.deprecated:
                raw["deprecated"] = m.deprecated
            self.offer(
                zone,
                m.name,
                market,
                model,
                Decimal(count),
                total,
                raw,
                vcpus=Decimal(m.guest_cpus),
                memory_gb=memory_gib,
            )

    def attachable(self, zone: str, a: AccelType) -> None:
        model = self._model(a.name, a.name)
        if model is None:
            return
        parts: list[tuple[str, Component, Decimal]] = [
            ("gpu", ("gpu", model_words(a.name)), Decimal(1))
        ]
        for market in _USAGE_MARKET.values():
            priced = self._price(parts, market, f"{zone} {a.name}")
            if priced is None:
                continue
            total, used = priced
            raw: dict[str, Any] = {
                "accelerator_type": a.name,
                "description": a.description,
                "pricing": "gpu_only",
                "host": "any N1 machine type, billed separately (not included)",
                "max_per_instance": a.max_per_instance,
                "skus": used,
            }
            self.offer(
                zone, a.name, market, model, Decimal(1), total, raw, vcpus=None, memory_gb=None
            )

    def offer(
        self,
        zone: str,
        instance_type: str,
        market: Market,
        model: gpus.GpuModel,
        count: Decimal,
        total: Decimal,
        raw: dict[str, Any],
        *,
        vcpus: Decimal | None,
        memory_gb: Decimal | None,
    ) -> None:
        price = to_price(total)
        if price <= 0:
            self.skip(f"zero_price:{market}")
            return
        self.out.offers.append(
            Offer(
                provider=NAME,
                region=self.region,
                zone=zone,
                instance_type=instance_type,
                market=market,
                **model_fields(model),
                gpu_count=to_count(count),
                gpu_memory_gb=Decimal(model.memory_gb) if model.memory_gb is not None else None,
                vcpus=vcpus,
                memory_gb=memory_gb,
                **place_fields(self.where),
                price_per_hour=price,
                availability=self.availability,
                raw=raw,
            )
        )


# --------------------------------------------------------------------------- quotas


def quota_accelerator(gpu: str, accelerator_names: Iterable[str]) -> str | None:
    """The accelerator type a quota metric's GPU part names (`NVIDIA_H100` → nvidia-h100-80gb).

    Same model words first; else the same words once memory words are dropped from the type
    name, if exactly one type matches and `broker.gpus` maps both to the same model (so
    `NVIDIA_A100`, the 40 GB quota, never lands on nvidia-a100-80gb).
    """
    words = model_words(gpu)
    names = sorted(accelerator_names)
    for name in names:
        if model_words(name) == words:
            return name
    model = gpus.normalise(gpu, provider=NAME)
    loose = [
        name
        for name in names
        if _without_memory(model_words(name)) == words
        and model is not None
        and gpus.normalise(name, provider=NAME) == model
    ]
    return loose[0] if len(loose) == 1 else None


def _quotas(
    region: str,
    info: Any,
    types_by_accelerator: Mapping[str, set[str]],
    accelerator_names: Iterable[str],
) -> list[Quota]:
    """The region's `*_GPUS` quotas, each tied to the instance types using that GPU here."""
    names = list(accelerator_names)
    out: list[Quota] = []
    for q in info.quotas:
        metric = str(q.metric)
        if not metric.endswith("_GPUS") or metric == "GPUS_ALL_REGIONS":
            continue
        market = Market.ON_DEMAND
        gpu = metric[: -len("_GPUS")]
        for prefix, prefix_market in _QUOTA_PREFIX_MARKET:
            if gpu.startswith(prefix):
                gpu, market = gpu[len(prefix) :], prefix_market
                break
        accel = quota_accelerator(gpu, names)
        out.append(
            Quota(
                provider=NAME,
                region=region,
                name=metric,
                unit="gpus",
                limit=Decimal(str(q.limit)),
                usage=Decimal(str(q.usage)),
                market=market,
                instance_types=frozenset(types_by_accelerator.get(accel, ()) if accel else ()),
                description=f"accelerator type {accel}" if accel else None,
            )
        )
    return out
