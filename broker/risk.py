"""Commitment risk: concentration, expiry cliffs, utilisation, stale data, mark-to-market.

Pure functions over plain records (no database, no HTTP, no clock): `broker.reports`
loads the book, the usage and today's market from the store and calls `assess`. Every
number is Decimal and can be recomputed from the inputs; every flag carries a sentence that
names the figures and the threshold behind it.

The model
---------
**The book** is the commitments passed in (the caller leaves out those cancelled before
`as_of`); one is *live* when it ends after `as_of` (it may start later: a held capacity
block next month is a commitment today).

**Money.** A commitment's hourly cost is `rate_per_gpu_hour × gpus`; its *total* is that
times the term's hours plus the upfront fee; its *remaining* commitment is the hourly cost
times the hours left after `as_of` (upfront fees are paid at booking, so they are sunk). A
month is 730 hours (8,760 / 12): monthly figures are run rates, `hourly × 730`.

**Concentration** of the live book's remaining spend and remaining GPU-hours by provider,
region and jurisdiction, with the Herfindahl-Hirschman index of the spend shares (Σ of the
squared percentage shares: 10,000 = one name holds everything; above 2,500 is "highly
concentrated" in the usual antitrust reading). A provider or jurisdiction whose share of
either exceeds its threshold is flagged.

**Expiry cliffs**, week by week for `expiry_weeks` weeks from `as_of`: the GPUs whose
commitments end in the week (end in (start, end]), those starting in it ([start, end)), and
the GPUs expiring with no commitment of the same GPU family starting that week to replace
them; a week is flagged when those exceed `expiry_cliff_share` of the GPUs committed at
some time during the week.

**Utilisation**: GPU-hours used (usage samples ended by `as_of`) over the GPU-hours
committed in the sampled periods (`gpus × period hours`), per commitment and for the book;
flagged under `utilisation_floor`. A commitment running longer than `usage_grace_hours`
with no usage reported gets an informational flag (utilisation unknown, not zero).

**Stale data** (judged at `now`, the time of the report): a commitment booked from an offer
is flagged when that offer was withdrawn (`offers.active` false) or has not been seen for
`stale_after`; a commitment recorded without an offer is flagged when its provider's newest
offer is that old. Providers the broker has no data for are not flagged (nothing to be stale).

**Mark-to-market** against today's market: the cheapest fresh live offer (not sold out) of
the same GPU
family (H100-SXM compares with H100-PCIe: one family), the same jurisdiction and currency,
in the comparable market (spot commitments with spot offers, every other kind with
on-demand: what the same GPUs would cost today without a commitment); a marketplace listing
(a single machine, e.g. on Vast) counts only when it alone holds the commitment's GPUs, so a
64-GPU contract is not marked against one rented card. A commitment's
*effective* rate spreads its upfront fee over the term's GPU-hours. Monthly over/under-payment
= (effective rate − market rate) × GPUs × 730, positive = paying more than the market;
flagged when the effective rate exceeds the market by more than `overpayment_tolerance`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
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
#: The market a commitment of each kind is compared with (all others: on_demand).
COMPARABLE_MARKET = {"spot": "spot"}
DEFAULT_COMPARABLE_MARKET = "on_demand"


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

    @property
    def label(self) -> str:
        return f"#{self.id} ({count_text(self.gpus)} {self.gpu_model}, {self.provider})"


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
    effective_rate: Decimal
    market: str
    market_rate: Decimal | None = None
    market_offer_key: str | None = None
    market_provider: str | None = None
    monthly_delta: Decimal | None = None
    remaining_delta: Decimal | None = None
    #: (effective rate − market rate) / market rate.
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


def _day(t: datetime) -> str:
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


# ----------------------------------------------------------------- concentration


def concentration(book: Sequence[Commitment], as_of: datetime, dimension: str) -> Concentration:
    """Shares of the live book's remaining spend and GPU-hours by `dimension` (`provider`,
    `region` — as `provider/region` — or `jurisdiction`), largest spend first."""
    spend: dict[str, Decimal] = defaultdict(Decimal)
    gh: dict[str, Decimal] = defaultdict(Decimal)
    count: dict[str, int] = defaultdict(int)
    for c in book:
        if not is_live(c, as_of):
            continue
        name = _dimension_value(c, dimension)
        left = remaining_hours(c, as_of)
        spend[name] += c.rate_per_gpu_hour * c.gpus * left
        gh[name] += c.gpus * left
        count[name] += 1
    total_spend = sum(spend.values(), ZERO)
    total_gh = sum(gh.values(), ZERO)
    shares = tuple(
        sorted(
            (
                Share(
                    name=n,
                    reservations=count[n],
                    spend=cents(spend[n]),
                    spend_share=share(spend[n], total_spend),
                    gpu_hours=gh[n],
                    gpu_hours_share=share(gh[n], total_gh),
                )
                for n in spend
            ),
            key=lambda s: (-s.spend, -s.gpu_hours, s.name),
        )
    )
    hhi = (
        sum((((spend[n] / total_spend) * 100) ** 2 for n in spend), ZERO).quantize(Decimal(1))
        if total_spend
        else None
    )
    return Concentration(dimension, cents(total_spend), total_gh, shares, hhi)


def _dimension_value(c: Commitment, dimension: str) -> str:
    if dimension == "provider":
        return c.provider
    if dimension == "region":
        return f"{c.provider}/{c.region}"
    if dimension == "jurisdiction":
        return c.jurisdiction or "unknown"
    raise ValueError(f"unknown concentration dimension {dimension!r}")


def concentration_flags(
    conc: Concentration, threshold: Decimal, book: Sequence[Commitment], as_of: datetime
) -> list[Flag]:
    """A flag for each name of `conc` whose spend or GPU-hour share exceeds `threshold`."""
    kind = {
        "provider": FlagKind.PROVIDER_CONCENTRATION,
        "jurisdiction": FlagKind.JURISDICTION_CONCENTRATION,
    }[conc.dimension]
    out = []
    for s in conc.shares:
        exact_spend = s.spend / conc.total_spend if conc.total_spend else ZERO
        exact_gh = s.gpu_hours / conc.total_gpu_hours if conc.total_gpu_hours else ZERO
        if exact_spend <= threshold and exact_gh <= threshold:
            continue
        ids = tuple(
            c.id
            for c in book
            if is_live(c, as_of) and _dimension_value(c, conc.dimension) == s.name
        )
        consequence = (
            f"an outage, a price change or a dispute with {s.name} hits that much of the book"
            if conc.dimension == "provider"
            else f"a change of law or an outage in {s.name} hits that much of the book"
        )
        out.append(
            Flag(
                kind,
                Severity.WARNING,
                f"{conc.dimension} {s.name}",
                f"{conc.dimension.capitalize()} {s.name} holds {pct(s.spend_share)} of the "
                f"remaining committed spend ({usd(s.spend)} of {usd(conc.total_spend)}) and "
                f"{pct(s.gpu_hours_share)} of the remaining GPU-hours "
                f"({count_text(s.gpu_hours.quantize(Decimal(1)))} of "
                f"{count_text(conc.total_gpu_hours.quantize(Decimal(1)))}) across {s.reservations} "
                f"reservation{'s' if s.reservations != 1 else ''}, above the "
                f"{pct(threshold)} {conc.dimension} threshold: {consequence}.",
                ids,
            )
        )
    return out


# ------------------------------------------------------------------ expiry cliffs


def expiry_cliffs(
    book: Sequence[Commitment], as_of: datetime, weeks: int, threshold: Decimal
) -> tuple[list[CliffWeek], list[Flag]]:
    """Week `i` spans [as_of + 7i days, as_of + 7(i+1) days)."""
    out: list[CliffWeek] = []
    flags: list[Flag] = []
    for i in range(weeks):
        ws = as_of + i * WEEK
        we = ws + WEEK
        live = [c for c in book if c.starts_at < we and c.ends_at > ws]
        expiring = [c for c in live if ws < c.ends_at <= we]
        starting = [c for c in live if ws <= c.starts_at < we]
        exp_by_family: dict[str, Decimal] = defaultdict(Decimal)
        start_by_family: dict[str, Decimal] = defaultdict(Decimal)
        for c in expiring:
            exp_by_family[c.gpu_family] += c.gpus
        for c in starting:
            start_by_family[c.gpu_family] += c.gpus
        unreplaced_by_family = {
            f: max(ZERO, n - start_by_family.get(f, ZERO)) for f, n in exp_by_family.items()
        }
        gpus_live = sum((c.gpus for c in live), ZERO)
        unreplaced = sum(unreplaced_by_family.values(), ZERO)
        exact = unreplaced / gpus_live if gpus_live else ZERO
        flagged = exact > threshold
        week = CliffWeek(
            week_start=ws,
            week_end=we,
            gpus_live=gpus_live,
            gpus_expiring=sum((c.gpus for c in expiring), ZERO),
            gpus_starting=sum((c.gpus for c in starting), ZERO),
            gpus_unreplaced=unreplaced,
            unreplaced_share=share(unreplaced, gpus_live),
            monthly_spend_expiring=cents(
                sum((c.rate_per_gpu_hour * c.gpus for c in expiring), ZERO) * HOURS_PER_MONTH
            ),
            reservations_expiring=tuple(sorted(c.id for c in expiring)),
            flagged=flagged,
        )
        out.append(week)
        if flagged:
            families = ", ".join(
                f"{f}: {count_text(n)}" for f, n in sorted(unreplaced_by_family.items()) if n
            )
            started = count_text(week.gpus_starting)
            flags.append(
                Flag(
                    FlagKind.EXPIRY_CLIFF,
                    Severity.WARNING,
                    f"week of {_day(ws)}",
                    f"Week of {_day(ws)}: {count_text(week.gpus_expiring)} GPUs expire "
                    f"(reservation{'s' if len(expiring) != 1 else ''} "
                    f"{', '.join(str(x) for x in week.reservations_expiring)}; "
                    f"{usd(week.monthly_spend_expiring)}/month) and {started} start that week, "
                    f"leaving {count_text(unreplaced)} GPUs ({families}) with no replacement: "
                    f"{pct(week.unreplaced_share)} of the {count_text(gpus_live)} GPUs "
                    f"committed that week, above the {pct(threshold)} threshold.",
                    week.reservations_expiring,
                )
            )
    return out, flags


# -------------------------------------------------------------------- utilisation


def utilisation_of(c: Commitment, samples: Iterable[UsageSample], as_of: datetime) -> Utilisation:
    """Used over committed GPU-hours in the periods reported (samples ended by `as_of`)."""
    used = covered = ZERO
    n = 0
    for s in samples:
        if s.reservation_id != c.id or s.period_end > as_of:
            continue
        start, end = max(s.period_start, c.starts_at), min(s.period_end, c.ends_at)
        if end <= start:
            continue
        used += s.gpu_hours
        covered += c.gpus * hours(end - start)
        n += 1
    ratio = share(used, covered) if covered else None
    return Utilisation(used, covered, n, ratio)


def utilisation_flags(c: Commitment, u: Utilisation, as_of: datetime, t: Thresholds) -> list[Flag]:
    if u.covered_gpu_hours and u.used_gpu_hours / u.covered_gpu_hours < t.utilisation_floor:
        assert u.ratio is not None
        idle = cents(
            (1 - u.used_gpu_hours / u.covered_gpu_hours)
            * c.rate_per_gpu_hour
            * c.gpus
            * HOURS_PER_MONTH
        )
        return [
            Flag(
                FlagKind.LOW_UTILISATION,
                Severity.WARNING,
                f"reservation {c.id}",
                f"Reservation {c.label}: {count_text(u.used_gpu_hours)} of "
                f"{count_text(u.covered_gpu_hours.quantize(CENT))} GPU-hours used over the "
                f"{u.samples} reported period{'s' if u.samples != 1 else ''} "
                f"({pct(u.ratio)}), below the {pct(t.utilisation_floor)} floor: about "
                f"{usd(idle)}/month of the commitment pays for idle GPUs.",
                (c.id,),
            )
        ]
    running = hours(min(as_of, c.ends_at) - c.starts_at) if as_of > c.starts_at else ZERO
    days = count_text((running / 24).quantize(Decimal("0.1")))
    if u.samples == 0 and running >= t.usage_grace_hours and running > 0:
        return [
            Flag(
                FlagKind.NO_USAGE,
                Severity.INFO,
                f"reservation {c.id}",
                f"Reservation {c.label} has run {days} days with no usage reported "
                f"(grace {t.usage_grace_hours} h): its utilisation cannot be judged; "
                f"report usage with POST /v1/reservations/{c.id}/usage or a usage CSV.",
                (c.id,),
            )
        ]
    return []


# ---------------------------------------------------------------------- staleness


def staleness(
    c: Commitment,
    offers: Mapping[str, OfferStatus],
    provider_last_seen: Mapping[str, datetime],
    now: datetime,
    stale_after: timedelta,
) -> Flag | None:
    cutoff = now - stale_after
    minutes = int(stale_after / timedelta(minutes=1))
    if c.offer_key is not None:
        st = offers.get(c.offer_key)
        if st is None:
            return None
        if not st.active:
            when = f" on {_day(st.withdrawn_at)}" if st.withdrawn_at else ""
            return Flag(
                FlagKind.OFFER_WITHDRAWN,
                Severity.WARNING,
                f"reservation {c.id}",
                f"Reservation {c.label} was booked from offer {c.offer_key}, which "
                f"{c.provider} withdrew{when} (no longer listed): its price and availability "
                "can no longer be checked against the market.",
                (c.id,),
            )
        if st.last_seen < cutoff:
            return Flag(
                FlagKind.STALE_OFFER,
                Severity.WARNING,
                f"reservation {c.id}",
                f"Reservation {c.label}: its offer {c.offer_key} was last seen "
                f"{_age(now - st.last_seen)} ago ({st.last_seen:%Y-%m-%d %H:%M} UTC), "
                f"longer than the {minutes} min after which data is stale: "
                f"{c.provider}'s polls may be failing.",
                (c.id,),
            )
        return None
    last = provider_last_seen.get(c.provider)
    if last is not None and last < cutoff:
        return Flag(
            FlagKind.PROVIDER_STALE,
            Severity.WARNING,
            f"reservation {c.id}",
            f"Reservation {c.label}: the newest market data of {c.provider} is "
            f"{_age(now - last)} old ({last:%Y-%m-%d %H:%M} UTC), older than the {minutes} min "
            "after which data is stale: its prices cannot be checked against today's market.",
            (c.id,),
        )
    return None


def _age(delta: timedelta) -> str:
    h = hours(delta)
    if h < 48:
        return f"{h.quantize(Decimal('0.1'))} h"
    return f"{(h / 24).quantize(Decimal('0.1'))} days"


# ------------------------------------------------------------------ mark-to-market


def comparable_market(kind: str) -> str:
    return COMPARABLE_MARKET.get(kind, DEFAULT_COMPARABLE_MARKET)


def best_comparable(
    c: Commitment, market: Iterable[MarketPrice], stale_before: datetime
) -> MarketPrice | None:
    """The cheapest fresh offer of the same GPU family, jurisdiction, currency and
    comparable market that can supply the commitment's GPUs (a marketplace listing only
    when it alone holds them); ties: the smaller key."""
    if c.jurisdiction is None:
        return None
    want = comparable_market(c.kind)
    best: MarketPrice | None = None
    for m in market:
        if (
            m.gpu_family == c.gpu_family
            and m.jurisdiction == c.jurisdiction
            and m.market == want
            and m.currency == c.currency
            and m.last_seen >= stale_before
            and (m.max_gpus is None or m.max_gpus >= c.gpus)
            and (
                best is None or (m.price_per_gpu_hour, m.key) < (best.price_per_gpu_hour, best.key)
            )
        ):
            best = m
    return best


def mark_to_market(
    c: Commitment,
    market: Iterable[MarketPrice],
    as_of: datetime,
    stale_before: datetime,
) -> MarkToMarket:
    eff = effective_rate(c)
    want = comparable_market(c.kind)
    best = best_comparable(c, market, stale_before)
    if best is None:
        where = c.jurisdiction or "an unknown jurisdiction"
        return MarkToMarket(
            effective_rate=eff,
            market=want,
            note=f"no fresh {want} offer of {c.gpu_family} in {where} to compare with",
        )
    diff = eff - best.price_per_gpu_hour
    return MarkToMarket(
        effective_rate=eff,
        market=want,
        market_rate=best.price_per_gpu_hour,
        market_offer_key=best.key,
        market_provider=best.provider,
        monthly_delta=cents(diff * c.gpus * HOURS_PER_MONTH),
        remaining_delta=cents(diff * c.gpus * remaining_hours(c, as_of)),
        premium=share(diff, best.price_per_gpu_hour),
    )


def overpayment_flag(c: Commitment, m: MarkToMarket, tolerance: Decimal) -> Flag | None:
    if m.market_rate is None or m.monthly_delta is None or m.remaining_delta is None:
        return None
    if m.effective_rate <= m.market_rate * (1 + tolerance):
        return None
    assert m.premium is not None
    fee = " (upfront fee included)" if c.upfront_fee else ""
    return Flag(
        FlagKind.OVERPAYING,
        Severity.WARNING,
        f"reservation {c.id}",
        f"Reservation {c.label} pays {rate_text(m.effective_rate)}/GPU-hour{fee} for "
        f"{c.gpu_family} in {c.jurisdiction}; the best live {m.market} offer today is "
        f"{rate_text(m.market_rate)} ({m.market_offer_key}): {pct(m.premium)} above the "
        f"market, {usd(m.monthly_delta)}/month and {usd(m.remaining_delta)} over the "
        f"remaining term (tolerance {pct(tolerance)}).",
        (c.id,),
    )


# ----------------------------------------------------------------------- the lot


def assess(
    book: Sequence[Commitment],
    usage: Sequence[UsageSample],
    offers: Mapping[str, OfferStatus],
    provider_last_seen: Mapping[str, datetime],
    market: Sequence[MarketPrice],
    *,
    as_of: datetime,
    now: datetime,
    thresholds: Thresholds | None = None,
) -> RiskReport:
    """Every metric and flag of the live part of `book` at `as_of` (market data at `now`)."""
    t = thresholds or Thresholds()
    live = sorted((c for c in book if is_live(c, as_of)), key=lambda c: (c.starts_at, c.id))
    stale_before = now - t.stale_after
    by_res: dict[int, list[UsageSample]] = defaultdict(list)
    for s in usage:
        by_res[s.reservation_id].append(s)

    rows: list[CommitmentRisk] = []
    for c in live:
        term = term_hours(c)
        left = remaining_hours(c, as_of)
        hourly = c.rate_per_gpu_hour * c.gpus
        u = utilisation_of(c, by_res.get(c.id, ()), as_of)
        m = mark_to_market(c, market, as_of, stale_before)
        stale = staleness(c, offers, provider_last_seen, now, t.stale_after)
        row_flags = [*utilisation_flags(c, u, as_of, t)]
        if stale is not None:
            row_flags.append(stale)
        over = overpayment_flag(c, m, t.overpayment_tolerance)
        if over is not None:
            row_flags.append(over)
        rows.append(
            CommitmentRisk(
                commitment=c,
                term_hours=term,
                remaining_hours=left,
                hourly_cost=hourly,
                monthly_run_rate=cents(hourly * HOURS_PER_MONTH),
                total_commitment=cents(hourly * term + c.upfront_fee),
                remaining_commitment=cents(hourly * left),
                committed_gpu_hours=c.gpus * term,
                remaining_gpu_hours=c.gpus * left,
                utilisation=u,
                mark_to_market=m,
                stale=stale.message if stale is not None else None,
                flags=tuple(row_flags),
            )
        )

    conc = {d: concentration(live, as_of, d) for d in ("provider", "region", "jurisdiction")}
    flags: list[Flag] = []
    flags += concentration_flags(conc["provider"], t.max_provider_share, live, as_of)
    flags += concentration_flags(conc["jurisdiction"], t.max_jurisdiction_share, live, as_of)
    cliffs, cliff_flags = expiry_cliffs(live, as_of, t.expiry_weeks, t.expiry_cliff_share)
    flags += cliff_flags

    used = sum((r.utilisation.used_gpu_hours for r in rows), ZERO)
    covered = sum((r.utilisation.covered_gpu_hours for r in rows), ZERO)
    if covered and used / covered < t.utilisation_floor:
        flags.append(
            Flag(
                FlagKind.LOW_UTILISATION,
                Severity.WARNING,
                "book",
                f"The book used {count_text(used)} of {count_text(covered.quantize(CENT))} "
                f"GPU-hours committed over the reported periods ({pct(share(used, covered))}), "
                f"below the {pct(t.utilisation_floor)} floor.",
                tuple(r.commitment.id for r in rows if r.utilisation.samples),
            )
        )
    for r in rows:
        flags += r.flags

    running = [c for c in live if c.starts_at <= as_of]
    hourly_run = sum((c.rate_per_gpu_hour * c.gpus for c in running), ZERO)
    mtm = [d for r in rows if (d := r.mark_to_market.monthly_delta) is not None]
    totals = Totals(
        reservations=len(rows),
        gpus_running=sum((c.gpus for c in running), ZERO),
        gpus_committed=sum((c.gpus for c in live), ZERO),
        hourly_run_rate=cents(hourly_run),
        monthly_run_rate=cents(hourly_run * HOURS_PER_MONTH),
        total_commitment=sum((r.total_commitment for r in rows), ZERO),
        remaining_commitment=sum((r.remaining_commitment for r in rows), ZERO),
        committed_gpu_hours=sum((r.committed_gpu_hours for r in rows), ZERO),
        remaining_gpu_hours=sum((r.remaining_gpu_hours for r in rows), ZERO),
        used_gpu_hours=used,
        covered_gpu_hours=covered,
        utilisation=share(used, covered) if covered else None,
        monthly_mark_to_market=sum(mtm, ZERO),
        monthly_overpayment=sum((d for d in mtm if d > 0), ZERO),
    )
    # Warnings first; otherwise in the order found (book-wide, then per reservation).
    flags.sort(key=lambda f: f.severity != Severity.WARNING)
    return RiskReport(
        as_of=as_of,
        now=now,
        thresholds=t,
        totals=totals,
        rows=tuple(rows),
        concentration=conc,
        expiry_cliffs=tuple(cliffs),
        flags=tuple(flags),
    )


__all__ = [
    "HOURS_PER_MONTH",
    "CliffWeek",
    "Commitment",
    "CommitmentRisk",
    "Concentration",
    "Flag",
    "FlagKind",
    "MarkToMarket",
    "MarketPrice",
    "OfferStatus",
    "RiskReport",
    "Severity",
    "Share",
    "Thresholds",
    "Totals",
    "UsageSample",
    "Utilisation",
    "assess",
]
