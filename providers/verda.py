"""Verda (formerly DataCrunch, Finland): GPU instances per location, on-demand and spot.

## What it calls
Verda's public REST API at `{base_url}` (default `https://api.verda.com/v1`, formerly
`https://api.datacrunch.io/v1`), as verda-cloud/sdk-python calls it (`verda/_verda.py`,
`verda/instance_types/_instance_types.py`, `verda/instances/_instances.py`
`get_availabilities`; https://docs.verda.com):

1. `POST /oauth2/token` with JSON `{"grant_type": "client_credentials", "client_id",
   "client_secret"}` → `{access_token, refresh_token, expires_in, ...}`
   (`verda/authentication/_authentication.py`). The token is cached until `expires_in`
   (minus a margin) has passed on the adapter's clock, then renewed with
   `{"grant_type": "refresh_token", "refresh_token"}`, falling back to the client
   credentials when the refresh is refused (as the SDK does). Data calls send
   `Authorization: Bearer <access_token>`; a 401/403 on a data call renews the token once
   and repeats the call once (a second refusal is `AuthFailed`). A refused client
   credential (401, 403 or 400 from the token endpoint) is `AuthFailed`.
2. `GET /instance-types?currency=usd` → the catalogue, a list of `{instance_type, model,
   name, price_per_hour, spot_price, currency, cpu {number_of_cores}, gpu {description,
   number_of_gpus}, memory {size_in_gigabytes}, gpu_memory {size_in_gigabytes}, ...}`
   with prices as decimal strings (SDK unit-test fixture
   `tests/unit_tests/instance_types/test_instance_types.py`). Failing → the whole poll fails.
3. `GET /instance-availability?is_spot=false` and `...?is_spot=true` (run concurrently) →
   `[{"location_code": "FIN-01", "availabilities": ["1H100.80S.30V", ...]}, ...]`: per
   location, the instance types that can be deployed now (Go SDK `LocationAvailability`,
   SDK integration test `test_locations.py`). The flag is sent as `is_spot` (Go SDK,
   SkyPilot) and as `isSpot` (Python SDK) with the same value, since Verda's own SDKs
   disagree on the spelling. No pagination; no `location_code` filter (one answer covers
   every location, so fanning out per location would only multiply calls).

## What it returns
One offer per (instance type, location) that Verda lists as available, per market:
- `on_demand` at `price_per_hour`, `spot` at `spot_price`: USD per instance-hour (we ask
  `currency=usd`; a row in another currency is skipped, `skipped["currency"]`), decimal
  strings parsed straight into Decimal. Per GPU-hour = that / `gpu.number_of_gpus`
  (done by `Offer.price_per_gpu_hour`). A market with a missing or zero price has no offer
  (`skipped["no_price"]`). Verda's `dynamic_price` is kept in `raw`, not used.
- `gpu_count` = `gpu.number_of_gpus`; types with no GPU (CPU nodes) → `skipped["no_gpu"]`.
- `gpu_model`: `broker.gpus.normalise` of, in order, `gpu.description` without its `Nx `
  count ("H100 SXM5 80GB"), the same without its memory token ("H100 SXM5"), `name`, and
  `model` ("H100"), with the per-GPU memory (`gpu_memory.size_in_gigabytes` is the
  instance total, divided by the GPU count) to tell A100 40 and 80 GB apart. A GPU the
  catalogue does not know is kept with `gpu_model` None and `gpu_name_raw` = the first of
  those names (`providers.base.model_fields`): counted as unrecognised by the ingest, never
  guessed, never dropped.
- `gpu_memory_gb` = total GPU memory / GPU count; `vcpus` = `cpu.number_of_cores`;
  `memory_gb` = `memory.size_in_gigabytes`.
- `availability` = `available` (listed now), `available_count` None (Verda says *that*,
  never how many).
- region = `location_code`; country / jurisdiction / continent from `broker.regions`
  (`verda` rows: FIN-* Finland, ICE-01 Iceland, both EU/EEA); a location the table lacks
  keeps its offers with them None (counted as unrecognised by the ingest) and a note.

## Scopes and capacity by presence
Each market's availability call is its own scope, `Scope("verda", market=...)`, covering
every location: if the spot call fails, on-demand offers are still updated and spot offers
are left alone. Verda reports availability only by listing, and an instance type is not
necessarily sold at every location (nothing in the API says where a type is sold), so
offers are emitted only where listed and `capacity_by_presence` names every GPU type of the
catalogue that has a price: ingest turns a known offer that drops out of the list
`unavailable` (not withdrawn); a type gone from the catalogue is withdrawn.

Secrets: the client secret and the access / refresh tokens never reach logs, errors or
`raw` (they are passed to `JsonApi` and `poll_scopes` as secrets to redact).
"""

from __future__ import annotations

import re
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, ClassVar

import httpx

from broker import gpus, regions
from broker.config import Settings, VerdaSettings
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
    RequestRejected,
    ScopeOffers,
    failed_poll,
    model_fields,
    place_fields,
    poll_scopes,
    redact,
    register,
)

NAME = "verda"
TOKEN_PATH = "/oauth2/token"
TYPES_PATH = "/instance-types"
AVAILABILITY_PATH = "/instance-availability"
MAX_NOTES = 50
#: Renew the access token this long before Verda says it expires (at most half its life).
TOKEN_MARGIN = timedelta(seconds=60)

_PRICE_FIELDS = ((Market.ON_DEMAND, "price_per_hour"), (Market.SPOT, "spot_price"))
_COUNT_PREFIX = re.compile(r"^\s*\d+\s*x\s+", re.IGNORECASE)
_MEMORY_TOKEN = re.compile(r"\s*\b\d+(?:\.\d+)?\s*GB\b", re.IGNORECASE)


def _decimal(value: Any) -> Decimal | None:
    """A finite Decimal from a JSON number or numeric string (bools are not numbers)."""
    if isinstance(value, bool) or not isinstance(value, int | float | str | Decimal):
        return None
    try:
        d = Decimal(str(value).strip())
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


def _section(row: Mapping[str, Any], key: str) -> Mapping[str, Any]:
    value = row.get(key)
    return value if isinstance(value, Mapping) else {}


def gpu_candidates(row: Mapping[str, Any]) -> list[str]:
    """Names to try for a type's GPU, most specific first (see the module docstring)."""
    out: list[str] = []
    description = _section(row, "gpu").get("description")
    for text in (description, row.get("name"), row.get("model")):
        if not isinstance(text, str) or not text.strip():
            continue
        text = _COUNT_PREFIX.sub("", text).strip()
        out.append(text)
        bare = _MEMORY_TOKEN.sub("", text).strip()
        if bare and bare != text:
            out.append(bare)
    return list(dict.fromkeys(out))


@dataclass(frozen=True)
class VerdaType:
    name: str
    #: None: the catalogue does not know the GPU (kept, `gpu_name` as `gpu_name_raw`).
    model: gpus.GpuModel | None
    gpu_name: str
    gpu_count: Decimal
    gpu_memory_gb: Decimal | None
    vcpus: Decimal | None
    memory_gb: Decimal | None
    prices: Mapping[Market, Decimal]
    raw: Mapping[str, Any]


@dataclass
class Catalogue:
    types: dict[str, VerdaType] = field(default_factory=dict)
    #: instance types without a GPU, or skipped for a reason already counted
    known: set[str] = field(default_factory=set)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, detail: str) -> None:
        self.skipped[reason] += 1
        if len(self.notes) < MAX_NOTES:
            self.notes.append(f"{NAME} {detail}: {reason}")

    @property
    def presence(self) -> frozenset[tuple[str, str]]:
        return frozenset((NAME, t) for t in self.types)


def _memory(per_gpu: Decimal | None, model: gpus.GpuModel | None) -> Decimal | None:
    """GB per GPU as Verda states it (total / count), else the catalogue's figure."""
    if per_gpu is None:
        if model is None or model.memory_gb is None:
            return None
        return Decimal(model.memory_gb)
    whole = per_gpu.to_integral_value()
    return whole if per_gpu == whole else per_gpu.quantize(Decimal("0.01"))


def _prices(row: Mapping[str, Any], name: str, cat: Catalogue, what: str) -> dict[Market, Decimal]:
    """The type's positive prices by market (a missing or zero one is counted)."""
    prices: dict[Market, Decimal] = {}
    for market, fname in _PRICE_FIELDS:
        raw_price = row.get(fname)
        price = _decimal(raw_price)
        if raw_price is not None and price is None:
            raise MalformedResponse(f"{what}: {name}: {fname} is {raw_price!r}")
        if price is None or price <= 0:
            cat.skip("no_price", f"{name} {market}")
            continue
        prices[market] = price
    return prices


def _model(
    row: Mapping[str, Any], name: str, memory_mib: int | None
) -> tuple[gpus.GpuModel | None, str]:
    """The catalogue entry of the type's GPU (None if unknown) and the name it goes by."""
    candidates = gpu_candidates(row)
    for candidate in candidates:
        model = gpus.normalise(candidate, provider=NAME, instance_type=name, memory_mib=memory_mib)
        if model is not None:
            return model, candidate
    return None, candidates[0] if candidates else name


def parse_instance_types(doc: Any) -> Catalogue:
    """The GPU instance types Verda sells, from `GET /instance-types`.

    Raises:
        MalformedResponse: not a list of objects with an `instance_type`, or a field of the
            wrong type (the whole poll fails rather than withdraw what it could not read).
    """
    what = f"GET {TYPES_PATH}"
    if not isinstance(doc, list):
        raise MalformedResponse(f"{what}: answer is not a list")
    cat = Catalogue()
    for row in doc:
        name = row.get("instance_type") if isinstance(row, Mapping) else None
        if not isinstance(name, str) or not name:
            raise MalformedResponse(f"{what}: an entry has no instance_type")
        cat.known.add(name)
        count = _decimal(_section(row, "gpu").get("number_of_gpus"))
        if count is None or count <= 0:
            cat.skipped["no_gpu"] += 1
            continue
        currency = row.get("currency")
        if isinstance(currency, str) and currency.lower() != "usd":
            cat.skip("currency", f"{name}: priced in {currency!r}")
            continue
        prices = _prices(row, name, cat, what)
        total_memory = _decimal(_section(row, "gpu_memory").get("size_in_gigabytes"))
        per_gpu = total_memory / count if total_memory and total_memory > 0 else None
        model, gpu_name = _model(row, name, int(per_gpu * 1024) if per_gpu is not None else None)
        if not prices:
            continue
        cat.types[name] = VerdaType(
            name=name,
            model=model,
            gpu_name=gpu_name,
            gpu_count=to_count(count),
            gpu_memory_gb=_memory(per_gpu, model),
            vcpus=_decimal(_section(row, "cpu").get("number_of_cores")),
            memory_gb=_decimal(_section(row, "memory").get("size_in_gigabytes")),
            prices=prices,
            raw={
                "instance_type": name,
                "model": row.get("model"),
                "name": row.get("name"),
                "gpu_description": _section(row, "gpu").get("description"),
                "price_per_hour": row.get("price_per_hour"),
                "spot_price": row.get("spot_price"),
                "dynamic_price": row.get("dynamic_price"),
                "currency": currency,
            },
        )
    return cat


def parse_availability(doc: Any, cat: Catalogue, market: Market) -> ScopeOffers:
    """Offers of one market from `GET /instance-availability`.

    Raises:
        MalformedResponse: not `[{"location_code": str, "availabilities": [str]}]`.
    """
    what = f"GET {AVAILABILITY_PATH} ({market})"
    if not isinstance(doc, list):
        raise MalformedResponse(f"{what}: answer is not a list")
    out = ScopeOffers()
    seen: set[str] = set()
    for entry in doc:
        location = entry.get("location_code") if isinstance(entry, Mapping) else None
        listed = entry.get("availabilities") if isinstance(entry, Mapping) else None
        if not isinstance(location, str) or not location or not isinstance(listed, list):
            raise MalformedResponse(f"{what}: an entry is not {{location_code, availabilities}}")
        info = regions.resolve(NAME, location)
        if info is None:
            out.notes.append(f"{NAME}: location {location!r} not in broker/data/regions.csv")
        for name in listed:
            if not isinstance(name, str):
                raise MalformedResponse(f"{what}: {location}: {name!r} is not an instance type")
            t = cat.types.get(name)
            if t is None:
                if name not in cat.known:
                    out.skipped["unlisted_type"] += 1
                    if len(out.notes) < MAX_NOTES:
                        out.notes.append(f"{NAME} {location} {name}: not in /instance-types")
                continue  # no GPU or no price: counted once in the catalogue
            price = t.prices.get(market)
            key = f"{location}/{name}"
            if price is None or key in seen:
                continue
            seen.add(key)
            out.offers.append(
                Offer(
                    provider=NAME,
                    region=location,
                    instance_type=name,
                    market=market,
                    **model_fields(t.model, t.gpu_name),
                    gpu_count=t.gpu_count,
                    gpu_memory_gb=t.gpu_memory_gb,
                    vcpus=t.vcpus,
                    memory_gb=t.memory_gb,
                    **place_fields(info),
                    price_per_hour=to_price(price),
                    availability=Availability.AVAILABLE,
                    available_count=None,
                    raw={**t.raw, "location_code": location},
                )
            )
    return out


class _Tokens:
    """The OAuth2 client-credentials session: one access token at a time, thread-safe."""

    def __init__(self, api: JsonApi, client_id: str, client_secret: str, clock: Clock) -> None:
        self.api = api
        self.client_id = client_id
        self.client_secret = client_secret
        self.clock = clock
        self.access: str | None = None
        self.refresh_token: str | None = None
        self.expires_at: datetime | None = None
        self.grants = 0
        self._lock = threading.Lock()

    @property
    def secrets(self) -> tuple[str, ...]:
        return tuple(s for s in (self.client_secret, self.access, self.refresh_token) if s)

    def current(self) -> str:
        """A valid access token: the cached one, else a renewed one."""
        with self._lock:
            if self.access is not None and not self._expired():
                return self.access
            return self._renew_locked()

    def renew(self, stale: str) -> str:
        """A new access token after `stale` was refused (unless another thread renewed)."""
        with self._lock:
            if self.access is not None and self.access != stale:
                return self.access
            self.expires_at = None
            return self._renew_locked()

    def _expired(self) -> bool:
        return self.expires_at is not None and self.clock() >= self.expires_at

    def _renew_locked(self) -> str:
        if self.refresh_token is not None:
            try:
                return self._grant(
                    {"grant_type": "refresh_token", "refresh_token": self.refresh_token}
                )
            except (AuthFailed, RequestRejected, MalformedResponse):
                self.refresh_token = None  # refused: start over with the client credentials
        try:
            return self._grant(
                {
                    "grant_type": "client_credentials",
                    "client_id": self.client_id,
                    "client_secret": self.client_secret,
                }
            )
        except RequestRejected as exc:  # 400 invalid_client / invalid_grant
            raise AuthFailed(f"{exc} (client credentials refused)") from None

    def _grant(self, body: Mapping[str, str]) -> str:
        what = f"POST {TOKEN_PATH} ({body['grant_type']})"
        self.grants += 1
        doc = self.api.request("POST", TOKEN_PATH, json_body=dict(body), what=what)
        access = doc.get("access_token") if isinstance(doc, Mapping) else None
        if not isinstance(access, str) or not access:
            raise MalformedResponse(f"{what}: answer has no access_token")
        refresh = doc.get("refresh_token")
        lifetime = _decimal(doc.get("expires_in"))
        self.access = access
        self.refresh_token = refresh if isinstance(refresh, str) and refresh else None
        if lifetime is not None and lifetime > 0:
            life = timedelta(seconds=float(lifetime))
            self.expires_at = self.clock() + life - min(TOKEN_MARGIN, life / 2)
        else:
            self.expires_at = None  # no stated lifetime: use it until it is refused
        self.api.secrets = self.secrets
        return access


@register
class Verda:
    """The Verda adapter; see the module docstring."""

    name: ClassVar[str] = NAME

    def __init__(
        self,
        client_id: str,
        client_secret: str,
        settings: VerdaSettings | None = None,
        *,
        clock: Clock,
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.settings = settings or VerdaSettings()
        self.clock = clock
        self.api = JsonApi(
            NAME,
            self.settings.base_url,
            self.settings,
            headers={"Content-Type": "application/json"},
            secrets=(client_secret,),
            transport=transport,
            sleep=sleep,
            backoff_base_s=backoff_base_s,
        )
        self.tokens = _Tokens(self.api, client_id, client_secret, clock)

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Verda:
        s = settings.verda
        client_id = (s.client_id or "").strip()
        secret = s.client_secret.get_secret_value().strip() if s.client_secret else ""
        if not client_id or not secret:
            raise ProviderDisabled(
                "set BROKER_VERDA__CLIENT_ID and BROKER_VERDA__CLIENT_SECRET to Verda API "
                "credentials (console → Keys → Cloud API credentials) to enable verda"
            )
        return cls(client_id, secret, s, clock=clock)

    @property
    def calls(self) -> int:
        """HTTP requests made so far (token requests and retries included)."""
        return self.api.calls

    @property
    def _secrets(self) -> tuple[str, ...]:
        return self.tokens.secrets

    def close(self) -> None:
        self.api.close()

    def _get(self, path: str, params: Mapping[str, str], what: str) -> Any:
        """GET with the bearer token; a 401/403 renews the token once and repeats once."""
        token = self.tokens.current()
        try:
            return self.api.request("GET", path, params=params, headers=_bearer(token), what=what)
        except AuthFailed:
            token = self.tokens.renew(token)
        return self.api.request("GET", path, params=params, headers=_bearer(token), what=what)

    def fetch(self) -> PollResult:
        try:
            doc = self._get(TYPES_PATH, {"currency": "usd"}, f"GET {TYPES_PATH}")
            cat = parse_instance_types(doc)
        except ProviderError as exc:
            return failed_poll(NAME, exc, self.clock, self._secrets)

        def one(scope: Scope) -> ScopeOffers:
            market = scope.market or Market.ON_DEMAND
            flag = "true" if market is Market.SPOT else "false"
            answer = self._get(
                AVAILABILITY_PATH,
                {"is_spot": flag, "isSpot": flag},
                f"GET {AVAILABILITY_PATH} ({market})",
            )
            return parse_availability(answer, cat, market)

        result = poll_scopes(
            NAME,
            [Scope(NAME, market=Market.ON_DEMAND), Scope(NAME, market=Market.SPOT)],
            one,
            clock=self.clock,
            max_workers=self.settings.max_concurrency,
            secrets=self._secrets,
            capacity_by_presence=cat.presence,
        )
        return _with_catalogue(result, cat, self._secrets)


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _with_catalogue(
    result: PollResult, cat: Catalogue, secrets: Iterable[str | None]
) -> PollResult:
    """`result` with the catalogue's skipped rows and notes added."""
    skipped = Counter(result.skipped)
    skipped.update(cat.skipped)
    notes = [redact(n, secrets) for n in [*cat.notes, *result.notes]][:MAX_NOTES]
    return replace(result, skipped=dict(skipped), notes=notes)
