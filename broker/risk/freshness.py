"""Stale data: a commitment whose offer was withdrawn or not seen lately, or whose
provider's newest market data is old, cannot be checked against today's market."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime, timedelta
from decimal import Decimal

from broker.risk.records import (
    Commitment,
    Flag,
    FlagKind,
    OfferStatus,
    Severity,
    day_text,
    hours,
)

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
            when = f" on {day_text(st.withdrawn_at)}" if st.withdrawn_at else ""
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
