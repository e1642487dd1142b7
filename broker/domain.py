"""Pure records of the market: offers, poll results, scopes, events.

This module owns the shapes every other part speaks: providers build `Offer`s and a
`PollResult`; the store (`broker.offers`) diffs them into events. No database, HTTP or SDK
imports here, and no clock: time is passed in.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from enum import StrEnum
from typing import Any

Clock = Callable[[], datetime]

#: Prices are USD per hour with six decimals: finer than any provider quotes (AWS spot has
#: six), coarse enough that float noise in a source (4.760000000100001) cannot look like a move.
PRICE_QUANTUM = Decimal("0.000001")
#: GPU counts keep three decimals: Azure sells fractions of a GPU (NV6ads_A10_v5 = 0.167).
COUNT_QUANTUM = Decimal("0.001")


def utcnow() -> datetime:
    """The default clock: aware UTC now."""
    return datetime.now(UTC)


class Market(StrEnum):
    ON_DEMAND = "on_demand"
    SPOT = "spot"
    CAPACITY_BLOCK = "capacity_block"
    RESERVED = "reserved"


class Availability(StrEnum):
    AVAILABLE = "available"
    LIMITED = "limited"
    UNAVAILABLE = "unavailable"
    UNKNOWN = "unknown"


class EventType(StrEnum):
    OFFER_APPEARED = "offer_appeared"
    OFFER_WITHDRAWN = "offer_withdrawn"
    PRICE_CHANGED = "price_changed"
    AVAILABILITY_CHANGED = "availability_changed"
    SPEC_CHANGED = "spec_changed"
    PROVIDER_DEGRADED = "provider_degraded"
    PROVIDER_RECOVERED = "provider_recovered"


#: The offer-level event types, in the order summaries print them.
OFFER_EVENT_TYPES: tuple[EventType, ...] = (
    EventType.OFFER_APPEARED,
    EventType.OFFER_WITHDRAWN,
    EventType.PRICE_CHANGED,
    EventType.AVAILABILITY_CHANGED,
    EventType.SPEC_CHANGED,
)

#: The offer fields whose change is a `spec_changed` event (what one instance gives you).
SPEC_FIELDS: tuple[str, ...] = ("gpu_count", "gpu_memory_gb", "vcpus", "memory_gb")


class ProviderStatus(StrEnum):
    """`degraded`: the last poll failed for some or all of the provider's scopes (the
    scope errors say which); `disabled`: the adapter is not configured."""

    OK = "ok"
    DEGRADED = "degraded"
    DISABLED = "disabled"


def _quantized(value: Decimal | str | int | float, quantum: Decimal) -> Decimal:
    try:
        d = Decimal(str(value)) if not isinstance(value, Decimal) else value
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d.quantize(quantum, rounding=ROUND_HALF_EVEN)


def to_price(value: Decimal | str | int | float) -> Decimal:
    """A price as a six-decimal `Decimal`.

    Raises:
        ValueError: the value is not a finite number.
    """
    return _quantized(value, PRICE_QUANTUM)


def to_count(value: Decimal | str | int | float) -> Decimal:
    """A GPU count as a three-decimal `Decimal` (fractions exist: Azure partial GPUs).

    Raises:
        ValueError: the value is not a finite number.
    """
    return _quantized(value, COUNT_QUANTUM)


@dataclass(frozen=True, slots=True)
class Offer:
    """One buyable thing at one place in one market, as a provider reported it.

    Only fields the provider really reports are filled; `None` means "not said", never a
    default dressed as data. Money is USD `Decimal` per instance-hour.

    Fields:
        provider: provider id (`aws`, `gcp`, `lambda_cloud`, ...).
        region: the provider's own region identifier.
        zone: availability zone (or AWS zone id, OCI availability domain) when per-zone.
        instance_type: the provider's size / shape name.
        market: on-demand, spot, capacity block or reserved.
        gpu_model: canonical model from `broker.gpus` (`H100-SXM`, `A100-80GB`, `TPU-v4`);
            None when the catalogue does not know the provider's name (then `gpu_name_raw`
            holds it: the offer is kept, listed and counted, never dropped or guessed).
        gpu_count: accelerators per instance (TPU: chips per slice; a partial size carries
            its fraction, e.g. 0.125 for 1/8 of an MI25, see `broker.sizes`).
        price_per_hour: USD per instance-hour in this market.
        gpu_family, accelerator_kind, gpu_vendor, form_factor: from the catalogue entry.
        gpu_memory_gb: memory per accelerator in GB (GiB as providers report it).
        vcpus, memory_gb: host size (memory in GiB).
        interconnect: e.g. "NVLink", "InfiniBand", when the provider says.
        country, jurisdiction, continent: from `broker.regions`; `None` if the region is unknown.
        upfront_fee: one-off USD (capacity blocks, reserved terms).
        availability, available_count: as the provider states it; `unknown` for price lists.
        earliest_start: when the capacity can start (capacity blocks); `None` = now/unknown.
        min_duration_hours, max_duration_hours: term limits where the market has them.
        offering_id: the provider's id for one specific offering (a capacity block).
        gpu_name_raw: the provider's own accelerator name when `gpu_model` is None.
        raw: the provider's own fields, kept for audit (not compared).
    """

    provider: str
    region: str
    instance_type: str
    market: Market
    gpu_model: str | None
    gpu_count: Decimal
    price_per_hour: Decimal
    zone: str | None = None
    gpu_family: str | None = None
    accelerator_kind: str | None = "gpu"
    gpu_vendor: str | None = None
    form_factor: str | None = None
    gpu_memory_gb: Decimal | None = None
    vcpus: Decimal | None = None
    memory_gb: Decimal | None = None
    interconnect: str | None = None
    country: str | None = None
    jurisdiction: str | None = None
    continent: str | None = None
    currency: str = "USD"
    upfront_fee: Decimal | None = None
    availability: Availability = Availability.UNKNOWN
    available_count: int | None = None
    earliest_start: datetime | None = None
    min_duration_hours: int | None = None
    max_duration_hours: int | None = None
    offering_id: str | None = None
    gpu_name_raw: str | None = None
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        if not self.provider or not self.region or not self.instance_type:
            raise ValueError("an offer needs provider, region and instance_type")
        if self.gpu_model is None and not self.gpu_name_raw:
            raise ValueError(f"{self.key}: an unrecognised accelerator needs gpu_name_raw")
        if self.gpu_count <= 0:
            raise ValueError(f"{self.key}: gpu_count must be > 0, got {self.gpu_count}")
        if self.price_per_hour <= 0:
            raise ValueError(f"{self.key}: price_per_hour must be > 0, got {self.price_per_hour}")
        if self.available_count is not None and self.available_count < 0:
            raise ValueError(f"{self.key}: available_count must be >= 0")
        if self.earliest_start is not None and self.earliest_start.tzinfo is None:
            raise ValueError(f"{self.key}: earliest_start must be timezone-aware")

    @property
    def key(self) -> str:
        """`provider/region[/zone]/instance_type/market[/offering_id]`: the offer's identity."""
        parts = [self.provider, self.region]
        if self.zone:
            parts.append(self.zone)
        parts += [self.instance_type, str(self.market)]
        if self.offering_id:
            parts.append(self.offering_id)
        return "/".join(parts)

    @property
    def price_per_gpu_hour(self) -> Decimal:
        """USD per accelerator-hour (TPU: per chip-hour)."""
        return to_price(self.price_per_hour / self.gpu_count)


@dataclass(frozen=True, slots=True)
class Scope:
    """A part of a provider's market that one poll covered (or failed to cover).

    `region=None` covers every region of the provider; `market=None` every market. An offer
    is inside the scope when provider matches and each set field matches.
    """

    provider: str
    region: str | None = None
    market: Market | None = None

    def covers(self, provider: str, region: str, market: Market | str) -> bool:
        return (
            self.provider == provider
            and (self.region is None or self.region == region)
            and (self.market is None or self.market == market)
        )

    def __str__(self) -> str:
        parts = [self.provider, self.region or "*"]
        if self.market is not None:
            parts.append(str(self.market))
        return "/".join(parts)


@dataclass(frozen=True, slots=True)
class ScopeError:
    """Why one scope of a poll failed. `message` must already be free of secrets."""

    scope: Scope
    code: str  # timeout | rate_limited | unavailable | malformed | auth_failed | error
    message: str
    retry_after_s: float | None = None

    def as_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"scope": str(self.scope), "code": self.code, "message": self.message}
        if self.retry_after_s is not None:
            out["retry_after_s"] = self.retry_after_s
        return out


@dataclass(frozen=True, slots=True)
class Quota:
    """One account quota a provider reports, as the provider counts it.

    AWS and Azure count vCPUs per instance family, GCP counts GPUs per model; `unit` says
    which. `instance_types` are the provider's instance types the quota governs (the adapter
    knows the family → type mapping), `market` the market it applies to (None = all). The
    scorer turns headroom into time-to-power: a request larger than the headroom needs a
    quota increase first.
    """

    provider: str
    region: str
    name: str  # the provider's quota id / metric / family, e.g. L-417A185B, NVIDIA_H100_GPUS
    unit: str  # vcpus | gpus | instances
    limit: Decimal
    usage: Decimal | None = None
    market: Market | None = None
    instance_types: frozenset[str] = frozenset()
    description: str | None = None

    @property
    def headroom(self) -> Decimal:
        """Units still free (limit − usage; limit when usage is not reported)."""
        return self.limit - (self.usage or Decimal(0))


@dataclass(frozen=True, slots=True)
class PollResult:
    """What one poll saw.

    `offers` are the offers seen; `scopes_ok` the parts of the market the poll covered
    completely (only there can an offer be withdrawn); `scope_errors` the parts it failed
    to cover (their offers are left untouched); `skipped` counts input rows that produced no
    offer, by reason (`zero_price`, `unknown_region`...); `notes` are human-readable
    details of skipped rows (file and line), a bounded sample.
    """

    offers: Sequence[Offer]
    scopes_ok: Sequence[Scope]
    scope_errors: Sequence[ScopeError]
    fetched_at: datetime
    skipped: Mapping[str, int] = field(default_factory=dict)
    notes: Sequence[str] = ()
    #: (provider, instance_type) pairs still sold whose capacity the provider reports only by
    #: listing the regions that have some now (Lambda): an offer of such a pair missing from
    #: a covered scope turns `unavailable` instead of being withdrawn.
    capacity_by_presence: frozenset[tuple[str, str]] = frozenset()
    #: Account quotas seen by this poll (regions in `scopes_ok` only).
    quotas: Sequence[Quota] = ()
    #: Where each provider's data came from: provider -> the adapter and endpoint(s), or the
    #: snapshot folder and file (with its commit when known). Shown as every offer's `source`.
    origins: Mapping[str, str] = field(default_factory=dict)

    @property
    def providers(self) -> list[str]:
        """Every provider this poll touched (covered, failed, or with offers), sorted."""
        names = {s.provider for s in self.scopes_ok}
        names |= {e.scope.provider for e in self.scope_errors}
        names |= {o.provider for o in self.offers}
        return sorted(names)


#: Shapes of secrets that may turn up in an SDK's error text or a log line: bearer tokens,
#: key=... query parameters, AWS access key ids, SAS/signature parameters, Slack webhook
#: paths (incoming `/services/...`, workflow `/triggers/...` and `/workflows/...`) and
#: tokens, the broker's own API keys.
_SECRET_PATTERNS = (
    re.compile(r"(?i)(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    re.compile(
        r"(?i)((?:api[_-]?key|key|token|access_token|client_secret|secret|password|sig|"
        r"signature|x-amz-security-token|x-amz-signature)[\"']?\s*[=:]\s*[\"']?)[^\s&\"',}]+"
    ),
    re.compile(r"\b(?:AKIA|ASIA)[A-Z0-9]{16}\b"),
    re.compile(r"(/(?:services|triggers|workflows)/)[A-Za-z0-9_/-]+"),
    re.compile(r"\bxox[abprse]-[A-Za-z0-9-]+"),
    re.compile(r"\bgpb_[A-Za-z0-9_-]+"),
)


#: The shortest start of a known secret that is masked when a message was cut off in the
#: middle of it (an adapter truncated a provider's error text before it reached `redact`).
MIN_SECRET_PREFIX = 6


def _mask_cut_secret(text: str, secret: str) -> str:
    """`text` with the longest start of `secret` (at least `MIN_SECRET_PREFIX` characters)
    masked wherever it ends the text or a word: what is left of a secret when a message was
    truncated before redaction."""
    for n in range(len(secret) - 1, MIN_SECRET_PREFIX - 1, -1):
        head = secret[:n]
        if head in text:
            return re.sub(re.escape(head) + r"(?![A-Za-z0-9])", "***", text)
    return text


def redact(text: str, secrets: Iterable[str | None] = ()) -> str:
    """`text` with every known secret and every secret-shaped token replaced by `***`.

    Callers pass the credentials they hold as `secrets`; the patterns catch what an SDK may
    echo (a bearer header, a `key=` query parameter, an access key id, a Slack webhook path
    or token, a broker API key).
    """
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "***")
            text = _mask_cut_secret(text, secret)
    for pattern in _SECRET_PATTERNS:
        text = pattern.sub(lambda m: (m.group(1) if m.groups() else "") + "***", text)
    return text
