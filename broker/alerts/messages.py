"""The Slack messages: one Block Kit message per subscription and batch (new offers, then
price drops, cheapest first), a request's best option changed, a test message. Pure: rows
and settings in, `{"text", "blocks", ...}` out; user text escaped so it cannot ping or
disguise a link.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any
from urllib.parse import quote

from broker.alerts.filters import CompiledFilter
from broker.config import Settings
from broker.models import AlertSubscription
from broker.scoring import MarketOffer, ScoringConfig, time_to_power


def _money(value: Decimal | float | str) -> str:
    return f"${Decimal(str(value)):,.2f}"


def _count(value: Decimal) -> str:
    return f"{value.normalize():f}" if value != value.to_integral() else str(int(value))


def offer_link(key: str, settings: Settings) -> str:
    return f"{settings.public_url.rstrip('/')}/v1/offers/{quote(key, safe='/')}"


def _ttp_text(o: Any, cfg: ScoringConfig, now: datetime) -> str:
    ttp = time_to_power(MarketOffer.from_row(o), now, cfg)
    if ttp is None:
        return "time to power unknown"
    return f"ready in ~{ttp.hours:.2g} h ({ttp.basis})"


def _shape(offers: Iterable[Any]) -> str:
    """`8×H100` when every offer is that shape, else the models (`H100, H200`)."""
    shapes = {(o.gpu_count, o.gpu_model) for o in offers}
    if len(shapes) == 1:
        count, model = next(iter(shapes))
        return f"{_count(count)}×{model}"
    return ", ".join(sorted({m for _, m in shapes}))


def _offer_section(
    o: Any, settings: Settings, cfg: ScoringConfig, now: datetime, was: Decimal | None = None
) -> dict[str, Any]:
    where = f"{o.region}" + (f" ({o.country})" if o.country else "")
    availability = str(o.availability) + (
        f" ({o.available_count})" if o.available_count is not None else ""
    )
    price = f"{_money(o.price_per_gpu_hour)}/GPU-h · {_money(o.price_per_hour)}/h per instance"
    if was is not None:
        price += f" (was {_money(was)}/GPU-h)"
    text = (
        f"*{o.provider}* {where} · {o.market}\n"
        f"`{o.instance_type}` {_count(o.gpu_count)}×{o.gpu_model}\n"
        f"{price}\n{availability} · {_ttp_text(o, cfg, now)}\n"
        f"<{offer_link(o.key, settings)}|offer details>"
    )
    for flag in getattr(o, "anomalies", None) or ():
        text += f"\n:warning: price flagged: {flag['message']}"
    return {"type": "section", "text": {"type": "mrkdwn", "text": text}}


def offers_message(
    name: str,
    flt: CompiledFilter,
    entered: list[Any],
    drops: list[tuple[Any, Decimal]],
    settings: Settings,
    cfg: ScoringConfig,
    now: datetime,
) -> dict[str, Any]:
    """One Block Kit message for one subscription's batch: new offers, then price drops,
    cheapest first. `offers`/`price_drops` (offer keys) are for the record, not sent."""
    entered = sorted(entered, key=lambda o: (o.price_per_gpu_hour, o.key))
    drops = sorted(drops, key=lambda d: (d[0].price_per_gpu_hour, d[0].key))
    place = flt.place()
    lines = []
    if entered:
        best = entered[0]
        noun = "offer" if len(entered) == 1 else "offers"
        lines.append(
            f"{len(entered)} new {_shape(entered)} {noun}{place}, cheapest "
            f"{_money(best.price_per_gpu_hour)}/GPU-h on {best.provider} {best.region}"
        )
    if drops:
        o, was = drops[0]
        noun = "price drop" if len(drops) == 1 else "price drops"
        lines.append(
            f"{len(drops)} {noun} on {_shape(o for o, _ in drops)}{place}: "
            f"{o.provider} {o.region} now {_money(o.price_per_gpu_hour)}/GPU-h "
            f"(was {_money(was)})"
        )
    text = "; ".join(lines)
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": text[:150]}}
    ]
    room = settings.alerts.max_offers_per_message
    shown = 0
    for o in entered[:room]:
        blocks.append(_offer_section(o, settings, cfg, now))
        shown += 1
    for o, was in drops[: max(0, room - shown)]:
        blocks.append(_offer_section(o, settings, cfg, now, was))
        shown += 1
    hidden = len(entered) + len(drops) - shown
    footer = f"Subscription “{slack_escape(name)}”"
    if hidden:
        footer = f"and {hidden} more · " + footer
    blocks.append({"type": "context", "elements": [{"type": "mrkdwn", "text": footer}]})
    return {
        "text": f"{text} (subscription “{slack_escape(name)}”)",
        "blocks": blocks,
        "offers": [o.key for o in entered],
        "price_drops": [o.key for o, _ in drops],
    }


def slack_escape(text: str) -> str:
    """User text made inert in Slack's mrkdwn and notification text: `&`, `<`, `>` as
    entities, so a name cannot ping (`<!channel>`) or disguise a link (`<url|label>`).
    The rule of Slack's "Formatting text for app surfaces", section "Escaping text"
    (api.slack.com/reference/surfaces/formatting#escaping)."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _option_text(best: Mapping[str, Any] | None) -> str:
    if not best:
        return "no option"
    parts = ", ".join(f"{p['instances']}× {p['key']}" for p in best.get("offers", []))
    return (
        f"{parts} at {_money(best['price_per_gpu_hour'])}/GPU-h, "
        f"ready in ~{best.get('time_to_power_hours')} h, total {_money(best['total_cost_usd'])}"
    )


def request_message(
    sub_name: str,
    request_id: int,
    request_name: str | None,
    before: Mapping[str, Any] | None,
    after: Mapping[str, Any] | None,
    settings: Settings,
) -> dict[str, Any]:
    label = f"request {request_id}" + (f" “{request_name}”" if request_name else "")
    head = f"Best option for {label} changed" if after else f"No option left for {label}"
    link = f"{settings.public_url.rstrip('/')}/v1/requests/{request_id}/recommendations"
    body = f"*Now:* {_option_text(after)}\n*Was:* {_option_text(before)}\n<{link}|recommendations>"
    return {
        "text": f"{slack_escape(head)}: {_option_text(after)}",
        "blocks": [
            {"type": "header", "text": {"type": "plain_text", "text": head[:150]}},
            {"type": "section", "text": {"type": "mrkdwn", "text": body}},
            {
                "type": "context",
                "elements": [
                    {"type": "mrkdwn", "text": f"Subscription “{slack_escape(sub_name)}”"}
                ],
            },
        ],
        "request_id": request_id,
    }


def build_test_message(row: AlertSubscription, settings: Settings) -> dict[str, Any]:
    what = (
        f"offers{CompiledFilter.of(row.filter).place()}"
        if row.kind == "offers"
        else f"capacity request {row.request_id}"
    )
    text = (
        "Test message from the GPU capacity broker: subscription "
        f"“{slack_escape(row.name)}” ({what})."
    )
    return {
        "text": text,
        "blocks": [{"type": "section", "text": {"type": "mrkdwn", "text": text}}],
    }
