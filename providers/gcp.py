"""GCP: Compute Engine GPU machine types, accelerator types and GPU quotas, priced from the
Cloud Billing Catalog.

This module owns the calls (paging, retries, error mapping, scopes). What a price is, and
which SKU prices what, is `providers._gcp_skus`; which offers and quotas a region's lists
make is `providers._gcp_offers`.

## What it calls
Project-wide, once per poll, concurrently (each paged with `nextPageToken`, one call per page;
REST reference: cloud.google.com/compute/docs/reference/rest/v1/acceleratorTypes/aggregatedList,
/machineTypes/aggregatedList, /regions/get; cloud.google.com/billing/docs/reference/rest/v1/
services.skus/list):

- `AcceleratorTypesClient.aggregated_list` (`GET .../aggregated/acceleratorTypes`,
  `includeAllScopes=true`): the accelerator types of every zone. Empty zones come back with a
  `NO_RESULTS_ON_PAGE` warning, which is how regions without GPUs are still covered.
- `MachineTypesClient.aggregated_list` (`GET .../aggregated/machineTypes`) with
  `filter=settings.machine_type_filter` (default: the accelerator-optimised families a2, a3,
  a4, g2, g4, ... as `name eq "<RE2>"`, the regex form of the SDK's `filter` docstring, which
  must match the whole name): machine types whose `accelerators[]` carry built-in GPUs.
- Cloud Billing Catalog `GET /v1/services/6F81-5844-456A/skus?currencyCode=USD&pageSize=5000`
  (Compute Engine's service id, as SkyPilot's `fetch_gcp.py` `GCE_SERVICE_ID` and gpuhunt's
  `compute_service` read it): the GPU, "Instance Core", "Instance Ram" and Local SSD SKUs.

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
which is how Compute Engine throttles: "If your project exceeds a rate quota, you receive a 403
error with the reason rateLimitExceeded", cloud.google.com/compute/api-quota) after
`Retry-After` when that is at most `max_retry_after_s`, 5xx / timeouts / dropped connections
with exponential backoff. SDK and transport errors are mapped onto the `ProviderError` tree in
`_map_error`.

## Offers
- **Machine types with built-in GPUs** (a2-*, a3-*, a4-*, g2-*, g4-*): one offer per zone,
  machine type and market. `gpu_model` from `broker.gpus.normalise(guestAcceleratorType)`
  (G4's nvidia-rtx-pro-6000 is the RTX PRO 6000 Server Edition, `RTXPRO6000S`; an
  accelerator type the catalogue does not know keeps its offers with `gpu_model` None and
  `gpu_name_raw` = the type name, see `providers._gcp_offers`),
  `gpu_count` = `guestAcceleratorCount`, `vcpus` = `guestCpus`, `memory_gb` = `memoryMb / 1024`
  (GCP's "MB" here are MiB: a3-highgpu-8g has 1916928 = 1872 GiB).
- **N1-attachable GPUs** (T4, V100, P100, P4, K80; GCP docs "GPUs on N1"): GCP sells these as
  accelerators attached to any N1 machine type the user picks, so there is no machine price to
  report. One offer per accelerator type, zone and market, `instance_type` = the accelerator
  type name (`nvidia-tesla-t4`), `gpu_count` = 1 (the smallest attachable count; the maximum is
  in `raw["max_per_instance"]`), priced **per GPU only**: `raw["pricing"] == "gpu_only"` says
  the N1 host (billed separately) is not included. No host price is ever invented. Turn them
  off with `BROKER_GCP__ATTACHABLE_GPUS=false`.
- Markets: `on_demand` and `spot`, read from each SKU's usage type and description
  (`providers._gcp_skus`). Commitments (`Commit1Yr`/`Commit3Yr`) are not offered: they are
  resource-based discounts on a region's vCPU/RAM/GPU usage, not a purchasable instance.
  A market `broker.sizes.markets_sold` says a machine type is not sold in (A3 High 1g/2g/4g,
  A3 Ultra, A4, A4X on demand) gives no offer: `skipped["not_sold:<market>"]`.
- Prices: GPUs + vCPUs + memory + bundled Local SSD at the region's SKU rates, or a GPU slice
  SKU for the whole machine; see `providers._gcp_skus`. `raw["skus"]` keeps the SKU ids and
  unit prices used, `raw["local_ssd_gib"]` the bundled Local SSD priced. Known gap: A3 High
  1g/2g/4g and A3 Ultra also come with Local SSD whose sizes are not in the table (no source
  at hand states them), so their prices leave it out.
- `availability` is `unknown` (a price list says nothing about capacity), `unavailable` when
  `regions.get` reports the region `DOWN`. Location from `broker.regions`; an unknown region keeps
  its offers with `country=None` and a note.

## Quotas
`regions.get` → `quotas[]`: every `*_GPUS` metric becomes a `Quota(unit="gpus")`, market `spot`
for `PREEMPTIBLE_*`, `reserved` for `COMMITTED_*`, else `on_demand`; `instance_types` = the polled
instance types of the region whose accelerator type the metric names (NVIDIA_H100_GPUS →
nvidia-h100-80gb → a3-highgpu-*; exact model words first, then ignoring memory words if that
leaves exactly one type that `broker.gpus` maps to the same model). `GPUS_ALL_REGIONS` is
project-wide, not a region's, and is left out.

## Not polled
Calendar-mode advice (`compute_v1.AdviceClient.calendar_mode`: future reservations, no price
in the answer, one request per shape and window) and TPUs (a separate API and catalogue).
Zones' own `status` (one more project-wide list) is not read: a region's is.

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
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import replace
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

from broker import regions
from broker.config import GcpSettings, Settings
from broker.domain import Availability, Clock, PollResult, Scope, utcnow
from providers._gcp_offers import (
    NAME,
    AccelType,
    Catalogue,
    MachineType,
    OfferBuilder,
    quota_accelerator,
    region_of_zone,
    region_quotas,
)
from providers._gcp_skus import MAX_NOTES, PriceBook, model_words
from providers._http import BACKOFF_BASE_S, JsonApi, parse_retry_after
from providers._record_requests import placeholder_google_credentials, tap_google_clients
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
    poll_scopes,
    redact,
    register,
)

__all__ = ["Gcp", "PriceBook", "model_words", "quota_accelerator"]

log = logging.getLogger(__name__)

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
_REST_PREFIX = re.compile(r"^[A-Z]+ \S+: ")

T = TypeVar("T")
#: What compute_v1's REST transport raises for a body that is not the expected JSON
#: (google.protobuf ships no type stubs, hence the lookup).
ParseError: type[Exception] = importlib.import_module("google.protobuf.json_format").ParseError

# --------------------------------------------------------------------------- helpers


def _zone_of_scope(scope: str) -> str | None:
    """`zones/us-central1-a` → `us-central1-a`; other scope kinds → None."""
    kind, _, name = scope.partition("/")
    return name if kind == "zones" and name else None


# --------------------------------------------------------------------------- errors


def _rate_limited_403(exc: gexc.GoogleAPICallError) -> bool:
    """Compute Engine throttles with HTTP 403 `rateLimitExceeded` (cloud.google.com/compute/
    api-quota: "If your project exceeds a rate quota, you receive a 403 error")."""
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
        tap_google_clients(
            Tap.for_settings(NAME, settings),
            self.accelerator_types_client,
            self.machine_types_client,
            self.regions_client,
        )
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
        if cfg.replay_dir is not None:  # a replay sends nothing: no credentials needed
            anonymous = placeholder_google_credentials()
            return cls(cfg, project=cfg.project, credentials=anonymous, clock=clock)
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
        builder = OfferBuilder(region, where, availability, book, out, self.settings)
        for zone in zones:
            builder.zone(
                zone, catalogue.accelerators.get(zone, []), catalogue.machine_types.get(zone, [])
            )
        out.quotas = region_quotas(
            region, info, builder.types_by_accelerator, catalogue.accelerator_names()
        )
        if info.quota_status_warning.code:
            out.notes.append(
                f"gcp {region}: quotas not reported ({info.quota_status_warning.code})"
            )
        return out
