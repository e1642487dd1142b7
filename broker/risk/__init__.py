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

**Mark-to-market** against today's market (`broker.risk.market`): the cheapest fresh,
live, not sold-out offer *like for like*: the same GPU family and, when the commitment names
one, the same form factor (H100-SXM with H100-SXM only; plain H100 with any H100); at
least the commitment's GPUs per node when the ledger knows them (a booking of 8-GPU
instances compares with offers of 8 or more GPUs per instance; an external commitment
records no node size and compares with any size, which its `basis` states); the same
jurisdiction and currency; the comparable market (spot commitments with spot offers, every
other kind with on-demand: what the same GPUs would cost today without a commitment); a
marketplace listing (a single machine, e.g. on Vast) only when it alone holds the
commitment's GPUs. A commitment's *effective* rate spreads its upfront fee over the term's
GPU-hours. Monthly over/under-payment = (effective rate − market rate) × GPUs × 730;
flagged when the effective rate exceeds the market by more than `overpayment_tolerance`.

**Sign convention of "versus market"**, one for every figure (`monthly_delta`,
`remaining_delta`, `premium`, the totals) in every format (JSON, CSV, HTML, the flag
sentences): **positive = paying more than the market**, shown red with an explicit `+`;
**negative = paying less than the market**, shown green; zero is at the market (no colour).

**Counterparty.** A commitment is named by its provider, or, when the provider is one the
broker does not track (`other`), by the counterparty recorded with it (`Commitment.party`;
"other (counterparty not recorded)" when none was): in labels, flags and concentration.

Layout: `records` (the records and the decimal helpers), `exposure` (concentration, expiry
cliffs), `utilisation`, `freshness` (stale data), `market` (mark-to-market); `assess` here
runs them all. Everything is importable from `broker.risk`.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Mapping, Sequence
from datetime import datetime

from broker.risk.exposure import concentration, concentration_flags, expiry_cliffs
from broker.risk.freshness import staleness
from broker.risk.market import (
    COMPARABLE_MARKET,
    DEFAULT_COMPARABLE_MARKET,
    best_comparable,
    comparable_basis,
    comparable_market,
    is_like_for_like,
    mark_to_market,
    overpayment_flag,
)
from broker.risk.records import (
    CENT,
    HOURS_PER_MONTH,
    UNNAMED_COUNTERPARTY,
    UNTRACKED_PROVIDER,
    ZERO,
    CliffWeek,
    Commitment,
    CommitmentRisk,
    Concentration,
    Flag,
    FlagKind,
    MarketPrice,
    MarkToMarket,
    OfferStatus,
    RiskReport,
    Severity,
    Share,
    Thresholds,
    Totals,
    UsageSample,
    Utilisation,
    cents,
    count_text,
    day_text,
    effective_rate,
    hours,
    is_live,
    pct,
    rate_text,
    remaining_hours,
    share,
    signed_pct,
    signed_usd,
    term_hours,
    usd,
)
from broker.risk.utilisation import utilisation_flags, utilisation_of


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
    by_res: dict[int, list[UsageSample]] = defaultdict(list)
    for s in usage:
        by_res[s.reservation_id].append(s)
    rows = [
        assess_commitment(
            c, by_res.get(c.id, ()), offers, provider_last_seen, market, as_of=as_of, now=now, t=t
        )
        for c in live
    ]

    conc = {d: concentration(live, as_of, d) for d in ("provider", "region", "jurisdiction")}
    flags: list[Flag] = []
    flags += concentration_flags(conc["provider"], t.max_provider_share, live, as_of)
    flags += concentration_flags(conc["jurisdiction"], t.max_jurisdiction_share, live, as_of)
    cliffs, cliff_flags = expiry_cliffs(live, as_of, t.expiry_weeks, t.expiry_cliff_share)
    flags += cliff_flags
    totals = _totals(live, rows, as_of)
    if totals.utilisation is not None and (
        totals.used_gpu_hours / totals.covered_gpu_hours < t.utilisation_floor
    ):
        flags.append(
            Flag(
                FlagKind.LOW_UTILISATION,
                Severity.WARNING,
                "book",
                f"The book used {count_text(totals.used_gpu_hours)} of "
                f"{count_text(totals.covered_gpu_hours.quantize(CENT))} GPU-hours committed "
                f"over the reported periods ({pct(totals.utilisation)}), below the "
                f"{pct(t.utilisation_floor)} floor.",
                tuple(r.commitment.id for r in rows if r.utilisation.samples),
            )
        )
    for r in rows:
        flags += r.flags
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


def assess_commitment(
    c: Commitment,
    usage: Sequence[UsageSample],
    offers: Mapping[str, OfferStatus],
    provider_last_seen: Mapping[str, datetime],
    market: Sequence[MarketPrice],
    *,
    as_of: datetime,
    now: datetime,
    t: Thresholds,
) -> CommitmentRisk:
    """Every figure and flag of one live commitment."""
    term = term_hours(c)
    left = remaining_hours(c, as_of)
    hourly = c.rate_per_gpu_hour * c.gpus
    u = utilisation_of(c, usage, as_of)
    m = mark_to_market(c, market, as_of, now - t.stale_after)
    stale = staleness(c, offers, provider_last_seen, now, t.stale_after)
    row_flags = [*utilisation_flags(c, u, as_of, t)]
    if stale is not None:
        row_flags.append(stale)
    over = overpayment_flag(c, m, t.overpayment_tolerance)
    if over is not None:
        row_flags.append(over)
    return CommitmentRisk(
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


def _totals(live: Sequence[Commitment], rows: Sequence[CommitmentRisk], as_of: datetime) -> Totals:
    used = sum((r.utilisation.used_gpu_hours for r in rows), ZERO)
    covered = sum((r.utilisation.covered_gpu_hours for r in rows), ZERO)
    running = [c for c in live if c.starts_at <= as_of]
    hourly_run = sum((c.rate_per_gpu_hour * c.gpus for c in running), ZERO)
    mtm = [d for r in rows if (d := r.mark_to_market.monthly_delta) is not None]
    return Totals(
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


__all__ = [
    "COMPARABLE_MARKET",
    "DEFAULT_COMPARABLE_MARKET",
    "HOURS_PER_MONTH",
    "UNNAMED_COUNTERPARTY",
    "UNTRACKED_PROVIDER",
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
    "assess_commitment",
    "best_comparable",
    "cents",
    "comparable_basis",
    "comparable_market",
    "concentration",
    "concentration_flags",
    "count_text",
    "day_text",
    "effective_rate",
    "expiry_cliffs",
    "hours",
    "is_like_for_like",
    "is_live",
    "mark_to_market",
    "overpayment_flag",
    "pct",
    "rate_text",
    "remaining_hours",
    "share",
    "signed_pct",
    "signed_usd",
    "staleness",
    "term_hours",
    "usd",
    "utilisation_flags",
    "utilisation_of",
]
