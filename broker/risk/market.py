"""Mark-to-market: each commitment against the cheapest like-for-like offer of today.

Like for like means what the same capacity would cost today without the commitment:

- the same GPU family, and the same form factor when the commitment names one (a
  commitment on `H100-SXM` compares with H100-SXM offers only, never with H100-PCIe or
  with an H100 whose form factor the provider did not say; one on plain `H100` with any
  H100);
- at least the commitment's GPUs per node when the ledger knows them (`gpus / instances`
  of a booking from an offer: an 8-GPU node compares with offers of 8 or more GPUs per
  instance, never with a 1-GPU instance). An external commitment records no node size:
  it compares with offers of any size, and its `basis` says so instead of guessing one;
- the same jurisdiction and currency, a fresh offer (seen within `stale_after`), not sold
  out, in the comparable market (spot with spot, every other kind with on-demand);
- a marketplace listing (one machine, e.g. on Vast) only when it alone holds all the
  commitment's GPUs.

Sign convention, the same in JSON, CSV, HTML and every sentence: a difference is the
commitment's effective rate minus the market rate, so **positive = paying more than the
market** (red where coloured) and **negative = paying less** (green); zero is at the market.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from broker.risk.records import (
    HOURS_PER_MONTH,
    Commitment,
    Flag,
    FlagKind,
    MarketPrice,
    MarkToMarket,
    Severity,
    cents,
    count_text,
    effective_rate,
    pct,
    rate_text,
    remaining_hours,
    share,
    usd,
)

#: The market a commitment of each kind is compared with (all others: on_demand).
COMPARABLE_MARKET = {"spot": "spot"}
DEFAULT_COMPARABLE_MARKET = "on_demand"


def comparable_market(kind: str) -> str:
    return COMPARABLE_MARKET.get(kind, DEFAULT_COMPARABLE_MARKET)


def is_like_for_like(c: Commitment, m: MarketPrice) -> bool:
    """Whether offer `m` sells what commitment `c` holds: same family, the form factor `c`
    names (if any), at least `c`'s GPUs per node (if known), same jurisdiction, currency and
    comparable market; a marketplace listing only when it alone holds `c`'s GPUs. Freshness
    is the caller's."""
    return (
        m.gpu_family == c.gpu_family
        and (c.form_factor is None or m.form_factor == c.form_factor)
        and (c.gpus_per_node is None or m.gpus_per_instance >= c.gpus_per_node)
        and _memory_fits(c, m)
        and c.jurisdiction is not None
        and m.jurisdiction == c.jurisdiction
        and m.market == comparable_market(c.kind)
        and m.currency == c.currency
        and (m.max_gpus is None or m.max_gpus >= c.gpus)
    )


#: Slack when comparing an offer's stated memory per GPU with the catalogue's figure of the
#: commitment's model: providers report usable memory (SCP: 81251 MiB for an 80 GB A100),
#: the same tolerance `broker.gpus` uses to tell 40 from 80 GB cards.
MEMORY_TOLERANCE = Decimal("0.85")


def _memory_fits(c: Commitment, m: MarketPrice) -> bool:
    """An offer of less memory per GPU than the commitment's model is not like for like
    (an A100 40 GB does not price an A100-80GB commitment); unknown on either side passes."""
    if c.gpu_memory_gb is None or m.gpu_memory_gb is None:
        return True
    return m.gpu_memory_gb >= c.gpu_memory_gb * MEMORY_TOLERANCE


def comparable_basis(c: Commitment) -> str:
    """The like-for-like rule applied to `c`, as a phrase for the report."""
    what = c.gpu_model if c.form_factor is not None else f"any {c.gpu_family}"
    size = (
        f"with at least {count_text(c.gpus_per_node)} GPUs per instance"
        if c.gpus_per_node is not None
        else "of any instance size (the commitment records no GPUs per node)"
    )
    where = c.jurisdiction or "an unknown jurisdiction"
    return f"{comparable_market(c.kind)} offers of {what} {size} in {where}"


def best_comparable(
    c: Commitment, market: Iterable[MarketPrice], stale_before: datetime
) -> MarketPrice | None:
    """The cheapest fresh like-for-like offer (`is_like_for_like`); ties: the smaller key."""
    best: MarketPrice | None = None
    for m in market:
        if (
            m.last_seen >= stale_before
            and is_like_for_like(c, m)
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
    """`c`'s effective rate against its best comparable; the deltas are positive when `c`
    pays more than the market. No comparable: the deltas are None and `note` says why."""
    eff = effective_rate(c)
    want = comparable_market(c.kind)
    basis = comparable_basis(c)
    best = best_comparable(c, market, stale_before)
    if best is None:
        return MarkToMarket(
            effective_rate=eff,
            market=want,
            basis=basis,
            note=f"no fresh {basis} to compare with",
        )
    diff = eff - best.price_per_gpu_hour
    return MarkToMarket(
        effective_rate=eff,
        market=want,
        basis=basis,
        market_rate=best.price_per_gpu_hour,
        market_offer_key=best.key,
        market_provider=best.provider,
        market_gpu_model=best.gpu_model,
        market_gpus_per_instance=best.gpus_per_instance,
        monthly_delta=cents(diff * c.gpus * HOURS_PER_MONTH),
        remaining_delta=cents(diff * c.gpus * remaining_hours(c, as_of)),
        premium=share(diff, best.price_per_gpu_hour),
    )


def overpayment_flag(c: Commitment, m: MarkToMarket, tolerance: Decimal) -> Flag | None:
    """A warning when `c`'s effective rate is above its comparable by more than
    `tolerance` (a share of the market rate)."""
    if m.market_rate is None or m.monthly_delta is None or m.remaining_delta is None:
        return None
    if m.effective_rate <= m.market_rate * (1 + tolerance):
        return None
    assert m.premium is not None and m.market_gpus_per_instance is not None
    fee = " (upfront fee included)" if c.upfront_fee else ""
    return Flag(
        FlagKind.OVERPAYING,
        Severity.WARNING,
        f"reservation {c.id}",
        f"Reservation {c.label} pays {rate_text(m.effective_rate)}/GPU-hour{fee}; the "
        f"cheapest of the {m.basis} today is {rate_text(m.market_rate)} "
        f"({m.market_offer_key}, {count_text(m.market_gpus_per_instance)} × "
        f"{m.market_gpu_model} per instance): {pct(m.premium)} above the market, "
        f"{usd(m.monthly_delta)}/month and {usd(m.remaining_delta)} over the remaining term "
        f"(tolerance {pct(tolerance)}).",
        (c.id,),
    )
