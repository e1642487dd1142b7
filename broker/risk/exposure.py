"""What the book is exposed to: concentration by provider, region and jurisdiction, and
expiry cliffs week by week (the rules are in `broker.risk`'s docstring).

A commitment with a provider the broker does not track (`other`) counts under the
counterparty it was recorded with (`Commitment.party`), so two colos are two names.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from datetime import datetime
from decimal import Decimal

from broker.risk.records import (
    HOURS_PER_MONTH,
    WEEK,
    ZERO,
    CliffWeek,
    Commitment,
    Concentration,
    Flag,
    FlagKind,
    Severity,
    Share,
    cents,
    count_text,
    day_text,
    is_live,
    pct,
    remaining_hours,
    share,
    usd,
)

# ----------------------------------------------------------------- concentration


def concentration(book: Sequence[Commitment], as_of: datetime, dimension: str) -> Concentration:
    """Shares of the live book's remaining spend and GPU-hours by `dimension` (`provider`,
    `region` — as `provider/region` — or `jurisdiction`), largest spend first. The
    provider of a commitment with an untracked provider is its counterparty (`party`)."""
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
        return c.party
    if dimension == "region":
        return f"{c.party}/{c.region}"
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
                    f"week of {day_text(ws)}",
                    f"Week of {day_text(ws)}: {count_text(week.gpus_expiring)} GPUs expire "
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
