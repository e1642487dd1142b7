"""The records of the commitment-risk model and the arithmetic they share.

Owns the inputs (`Commitment`, `UsageSample`, `OfferStatus`, `MarketPrice`, `Thresholds`),
the outputs (`Flag`, `Concentration`, `CliffWeek`, `Utilisation`, `MarkToMarket`,
`CommitmentRisk`, `Totals`, `RiskReport`) and the exact-decimal helpers (hours, cents,
shares, the money and percentage texts every flag sentence uses). The model itself is
described in `broker.risk`; each part lives in its own module beside this one.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from typing import Any

from broker.config import RiskSettings

HOURS_PER_MONTH = Decimal(730)
WEEK = timedelta(days=7)
CENT = Decimal("0.01")
RATE = Decimal("0.000001")
SHARE = Decimal("0.0001")
ZERO = Decimal(0)
#: The provider id of a commitment with a provider the broker does not track (a colo, a
#: neocloud without an adapter); the same value as `broker.ledger.OTHER_PROVIDER`, kept
#: here so the model stays free of the ledger's imports (a test keeps the two equal).
UNTRACKED_PROVIDER = "other"
#: How an untracked provider's commitment is named when no counterparty was recorded.
UNNAMED_COUNTERPARTY = "other (counterparty not recorded)"


class Severity(StrEnum):
    WARNING = "warning"
    INFO = "info"


class FlagKind(StrEnum):
    PROVIDER_CONCENTRATION = "provider_concentration"
    JURISDICTION_CONCENTRATION = "jurisdiction_concentration"
    EXPIRY_CLIFF = "expiry_cliff"
    LOW_UTILISATION = "low_utilisation"
    NO_USAGE = "no_usage"
    OFFER_WITHDRAWN = "offer_withdrawn"
    STALE_OFFER = "stale_offer"
    PROVIDER_STALE = "provider_stale"
    OVERPAYING = "overpaying"


# ------------------------------------------------------------------------ inputs


@dataclass(frozen=True, slots=True)
class Commitment:
    """One reservation of the book, as the risk model needs it."""

    id: int
    provider: str
    gpu_model: str
    gpu_family: str
    gpus: Decimal
    region: str
    jurisdiction: str | None
    starts_at: datetime
    ends_at: datetime
    rate_per_gpu_hour: Decimal
    upfront_fee: Decimal = ZERO
    kind: str = "contract"
    state: str = "active"
    currency: str = "USD"
    offer_key: str | None = None
    #: "SXM", "PCIe" or "NVL" when `gpu_model` names one (the catalogue's entry), else None:
    #: the commitment says only the family, so any form factor of it is comparable.
    form_factor: str | None = None
    #: GPUs per node (instance) when the ledger knows it: `gpus / instances` of a booking
    #: from an offer. None for an external commitment (the ledger records no node size).
    gpus_per_node: Decimal | None = None
    #: Memory per GPU of `gpu_model` in the catalogue (A100-80GB: 80); None when unknown.
    gpu_memory_gb: Decimal | None = None
    #: Who the commitment is with, as recorded: a booking's provider, or whatever an external
    #: commitment was recorded with (None: nothing was).
    counterparty: str | None = None

    @property
    def party(self) -> str:
        """Whom the commitment is with, as shown: the provider id, or for a provider the
        broker does not track (`other`) the recorded counterparty (never a guess)."""
        if self.provider != UNTRACKED_PROVIDER:
            return self.provider
        return self.counterparty or UNNAMED_COUNTERPARTY

    @property
    def label(self) -> str:
        return f"#{self.id} ({count_text(self.gpus)} {self.gpu_model}, {self.party})"


@dataclass(frozen=True, slots=True)
class UsageSample:
    reservation_id: int
    period_start: datetime
    period_end: datetime
    gpu_hours: Decimal


@dataclass(frozen=True, slots=True)
class OfferStatus:
    """What the store knows today of the offer a commitment was booked from."""

    key: str
    active: bool
    last_seen: datetime
    withdrawn_at: datetime | None = None


@dataclass(frozen=True, slots=True)
class MarketPrice:
    """One live offer of today's market (the comparables of mark-to-market)."""

    key: str
    provider: str
    gpu_model: str
    gpu_family: str
    #: The catalogue's form factor of `gpu_model` ("SXM", "PCIe", "NVL"); None where the
    #: catalogue does not distinguish one or the provider did not say which.
    form_factor: str | None
    #: GPUs of one instance (one node) of the offer.
    gpus_per_instance: Decimal
    #: Memory per GPU as the offer states it; None when not stated.
    gpu_memory_gb: Decimal | None
    jurisdiction: str | None
    market: str
    price_per_gpu_hour: Decimal
    last_seen: datetime
    currency: str = "USD"
    #: The most GPUs this offer can supply, for marketplace listings (single machines: one
    #: listing's GPUs × its stated count); None = as many as one launches (a cloud).
    max_gpus: Decimal | None = None


@dataclass(frozen=True, slots=True)
class Thresholds:
    max_provider_share: Decimal = Decimal("0.5")
    max_jurisdiction_share: Decimal = Decimal("0.75")
    expiry_cliff_share: Decimal = Decimal("0.25")
    expiry_weeks: int = 26
    utilisation_floor: Decimal = Decimal("0.6")
    usage_grace_hours: int = 168
    overpayment_tolerance: Decimal = Decimal("0.05")
    stale_after: timedelta = timedelta(minutes=120)

    @classmethod
    def from_settings(cls, risk: RiskSettings, stale_after_minutes: int) -> Thresholds:
        def dec(x: float) -> Decimal:
            return Decimal(str(x))

        return cls(
            max_provider_share=dec(risk.max_provider_share),
            max_jurisdiction_share=dec(risk.max_jurisdiction_share),
            expiry_cliff_share=dec(risk.expiry_cliff_share),
            expiry_weeks=risk.expiry_weeks,
            utilisation_floor=dec(risk.utilisation_floor),
            usage_grace_hours=risk.usage_grace_hours,
            overpayment_tolerance=dec(risk.overpayment_tolerance),
            stale_after=timedelta(minutes=stale_after_minutes),
        )

    def as_dict(self) -> dict[str, Any]:
        return {
            "max_provider_share": self.max_provider_share,
            "max_jurisdiction_share": self.max_jurisdiction_share,
            "expiry_cliff_share": self.expiry_cliff_share,
            "expiry_weeks": self.expiry_weeks,
            "utilisation_floor": self.utilisation_floor,
            "usage_grace_hours": self.usage_grace_hours,
            "overpayment_tolerance": self.overpayment_tolerance,
            "stale_after_minutes": int(self.stale_after / timedelta(minutes=1)),
        }


# ----------------------------------------------------------------------- outputs


@dataclass(frozen=True, slots=True)
class Flag:
    """A finding: what kind, how serious, about what, and a sentence saying why."""

    kind: FlagKind
    severity: Severity
    subject: str
    message: str
    reservation_ids: tuple[int, ...] = ()

    def as_dict(self) -> dict[str, Any]:
        return {
            "kind": str(self.kind),
            "severity": str(self.severity),
            "subject": self.subject,
            "message": self.message,
            "reservation_ids": list(self.reservation_ids),
        }


@dataclass(frozen=True, slots=True)
class Share:
    name: str
    reservations: int
    spend: Decimal
    spend_share: Decimal
    gpu_hours: Decimal
    gpu_hours_share: Decimal


@dataclass(frozen=True, slots=True)
class Concentration:
    dimension: str
    total_spend: Decimal
    total_gpu_hours: Decimal
    shares: tuple[Share, ...]
    #: Herfindahl-Hirschman index of the spend shares, 0..10,000; None when no spend.
    hhi: Decimal | None


@dataclass(frozen=True, slots=True)
class CliffWeek:
    week_start: datetime
    week_end: datetime
    gpus_live: Decimal
    gpus_expiring: Decimal
    gpus_starting: Decimal
    gpus_unreplaced: Decimal
    unreplaced_share: Decimal
    monthly_spend_expiring: Decimal
    reservations_expiring: tuple[int, ...]
    flagged: bool


@dataclass(frozen=True, slots=True)
class Utilisation:
    used_gpu_hours: Decimal
    #: GPU-hours committed over the periods that usage was reported for.
    covered_gpu_hours: Decimal
    samples: int
    ratio: Decimal | None


@dataclass(frozen=True, slots=True)
class MarkToMarket:
    """A commitment against its cheapest like-for-like offer today.

    Sign convention (every figure, every format): positive = the commitment pays more than
    the market (shown red), negative = it pays less (shown green), zero = at the market.
    """

    effective_rate: Decimal
    market: str
    #: What the commitment was compared with, as a phrase ("on_demand offers of H100-SXM
    #: with at least 8 GPUs per instance in EU"): the like-for-like rule applied to it.
    basis: str = ""
    market_rate: Decimal | None = None
    market_offer_key: str | None = None
    market_provider: str | None = None
    market_gpu_model: str | None = None
    market_gpus_per_instance: Decimal | None = None
    #: (effective rate − market rate) × GPUs × 730: positive = paying more than the market.
    monthly_delta: Decimal | None = None
    remaining_delta: Decimal | None = None
    #: (effective rate − market rate) / market rate: positive = paying more.
    premium: Decimal | None = None
    note: str | None = None


@dataclass(frozen=True, slots=True)
class CommitmentRisk:
    """Every figure of one commitment."""

    commitment: Commitment
    term_hours: Decimal
    remaining_hours: Decimal
    hourly_cost: Decimal
    monthly_run_rate: Decimal
    total_commitment: Decimal
    remaining_commitment: Decimal
    committed_gpu_hours: Decimal
    remaining_gpu_hours: Decimal
    utilisation: Utilisation
    mark_to_market: MarkToMarket
    stale: str | None
    flags: tuple[Flag, ...]


@dataclass(frozen=True, slots=True)
class Totals:
    reservations: int
    gpus_running: Decimal
    gpus_committed: Decimal
    hourly_run_rate: Decimal
    monthly_run_rate: Decimal
    total_commitment: Decimal
    remaining_commitment: Decimal
    committed_gpu_hours: Decimal
    remaining_gpu_hours: Decimal
    used_gpu_hours: Decimal
    covered_gpu_hours: Decimal
    utilisation: Decimal | None
    monthly_mark_to_market: Decimal
    monthly_overpayment: Decimal


@dataclass(frozen=True, slots=True)
class RiskReport:
    as_of: datetime
    now: datetime
    thresholds: Thresholds
    totals: Totals
    rows: tuple[CommitmentRisk, ...]
    concentration: Mapping[str, Concentration]
    expiry_cliffs: tuple[CliffWeek, ...]
    flags: tuple[Flag, ...]


# ----------------------------------------------------------------------- helpers


def hours(delta: timedelta) -> Decimal:
    """A timedelta in hours, exactly (no float)."""
    micro = (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds
    return Decimal(micro) / Decimal(3_600_000_000)


def cents(d: Decimal) -> Decimal:
    return d.quantize(CENT, rounding=ROUND_HALF_EVEN)


def share(part: Decimal, whole: Decimal) -> Decimal:
    return (part / whole).quantize(SHARE, rounding=ROUND_HALF_EVEN) if whole else ZERO


def count_text(d: Decimal) -> str:
    return str(int(d)) if d == d.to_integral_value() else f"{d.normalize():f}"


def usd(d: Decimal) -> str:
    """`$1,234.56` (negative: `-$1,234.56`)."""
    q = cents(d)
    return f"-${-q:,.2f}" if q < 0 else f"${q:,.2f}"


def rate_text(d: Decimal) -> str:
    """A rate in dollars: at least two decimals, up to six (`$3.50`, `$2.171347`)."""
    n = d.normalize()
    exponent = n.as_tuple().exponent
    text = f"{n:f}" if isinstance(exponent, int) and exponent < -2 else f"{d.quantize(CENT):f}"
    return f"-${text[1:]}" if text.startswith("-") else f"${text}"


def pct(d: Decimal) -> str:
    return f"{(d * 100).quantize(Decimal('0.1'), rounding=ROUND_HALF_EVEN)}%"


def signed_usd(d: Decimal) -> str:
    """A difference in dollars with its sign always written (`+$1,234.56`, `-$1,234.56`,
    `$0.00`): the form of every "versus market" figure shown to a person."""
    q = cents(d)
    return f"+{usd(q)}" if q > 0 else usd(q)


def signed_pct(d: Decimal) -> str:
    """A share as a percentage with its sign always written (`+21.3%`, `-4.0%`, `0.0%`)."""
    text = pct(d)
    if text in ("0.0%", "-0.0%"):
        return "0.0%"
    return f"+{text}" if d > 0 else text


def day_text(t: datetime) -> str:
    return f"{t:%Y-%m-%d}"


def is_live(c: Commitment, as_of: datetime) -> bool:
    return c.ends_at > as_of


def term_hours(c: Commitment) -> Decimal:
    return hours(c.ends_at - c.starts_at)


def remaining_hours(c: Commitment, as_of: datetime) -> Decimal:
    start = max(as_of, c.starts_at)
    return hours(c.ends_at - start) if c.ends_at > start else ZERO


def effective_rate(c: Commitment) -> Decimal:
    """The rate with the upfront fee spread over the term's GPU-hours."""
    gh = c.gpus * term_hours(c)
    spread = c.upfront_fee / gh if gh else ZERO
    return (c.rate_per_gpu_hour + spread).quantize(RATE, rounding=ROUND_HALF_EVEN)
