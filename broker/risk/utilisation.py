"""Utilisation: GPU-hours used over GPU-hours committed in the reported periods, per
commitment, and the flags for low or unreported usage (rules in `broker.risk`)."""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from decimal import Decimal

from broker.risk.records import (
    CENT,
    HOURS_PER_MONTH,
    ZERO,
    Commitment,
    Flag,
    FlagKind,
    Severity,
    Thresholds,
    UsageSample,
    Utilisation,
    cents,
    count_text,
    hours,
    pct,
    share,
    usd,
)

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
