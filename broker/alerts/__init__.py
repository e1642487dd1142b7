"""Slack alerts: subscriptions, match sets, the outbox, message building and delivery.

A subscription is a market filter ("8x H100 in the EU under $3/GPU-hour") or a capacity
request (its `best_option_changed`), plus a Slack channel: an incoming or workflow webhook
URL, or a bot token and channel, stored encrypted (`broker.secrets`) and shown only masked.

## Edge-triggered matching
Each offer subscription keeps its **match set** (`alert_matches`): the current offers that
pass its filter and are not sold out. `match_events` looks only at the offers a batch of
market events touched and compares each with the set:

- passes and not in the set → it **entered**: alert, add it with its price;
- passes and in the set, price at least `price_drop_pct` below the price last alerted →
  **price drop**: alert, remember the new price;
- fails (withdrawn, sold out, too dear, filtered out) and in the set → it **left**: removed
  silently, so coming back alerts again.

A batch with no change touches no offer, so nobody hears anything. A new subscription's set
is seeded with what matches now, silently: it alerts on changes from then on.
Everything a batch decides for one subscription becomes **one** message ("3 new 8×H100
offers in the EU, cheapest $2.89/GPU-h on ...").

## The outbox
`match_events` runs in the caller's transaction (`broker.pipeline.process_events`, with the
rescoring), so the match-set changes and the `alert_deliveries` rows they cause commit
together or not at all. Each row has a unique `dedupe_key` (subscription + event range):
processing a batch twice writes nothing twice. `deliver` sends one row and records every
outcome, never twice and never leaving a row stuck; `sweep` finds what a lost task left.

## The modules
- `store`: tables, states, `AlertError`, error text made safe to store;
- `clock`: stamps from the injected clock, decisions to send in the database's time;
- `webhooks`: which webhook URLs may be stored and called, and their masks;
- `filters`: `OfferFilter` (what users write) and `CompiledFilter` (what the matcher runs);
- `subscriptions`: the API's bodies and create/read/update/delete, test messages;
- `matching`: match sets and the outbox rows of a batch;
- `messages`: the Slack messages (pure);
- `slack`: one POST to Slack (no redirects followed) and its answer classified;
- `delivery`: `deliver` and `sweep`.

Everything callers use is importable from `broker.alerts`.
"""

from __future__ import annotations

from broker.alerts.clock import database_now, decision_now, due_now, is_process_clock
from broker.alerts.delivery import DeliveryOutcome, Sweep, deliver, sweep
from broker.alerts.filters import CompiledFilter, OfferFilter
from broker.alerts.matching import claim_batch, mark_processed, match_events, write_delivery
from broker.alerts.messages import (
    build_test_message,
    offer_link,
    offers_message,
    request_message,
    slack_escape,
)
from broker.alerts.slack import (
    GONE,
    GONE_STATUS,
    TRANSIENT,
    SendResult,
    send_bot,
    send_webhook,
)
from broker.alerts.store import (
    ACTIVE,
    CANCELLED,
    DELIVERIES,
    DISABLED,
    EVENTS,
    FAILED,
    MATCHES,
    OFFERS,
    PENDING,
    REQUEST_EVENTS,
    RUNS,
    SENDING,
    SENT,
    SUBS,
    UNCONFIRMED,
    AlertError,
)
from broker.alerts.subscriptions import (
    Channel,
    SlackBotChannel,
    SlackWebhookChannel,
    SubscriptionIn,
    SubscriptionPatch,
    create_subscription,
    delete_subscription,
    deliveries_of,
    enqueue_test,
    get_subscription,
    list_subscriptions,
    subscription_out,
    update_subscription,
)
from broker.alerts.webhooks import check_webhook_url, mask_token, mask_webhook, webhook_kind

__all__ = [
    "ACTIVE",
    "CANCELLED",
    "DELIVERIES",
    "DISABLED",
    "EVENTS",
    "FAILED",
    "GONE",
    "GONE_STATUS",
    "MATCHES",
    "OFFERS",
    "PENDING",
    "REQUEST_EVENTS",
    "RUNS",
    "SENDING",
    "SENT",
    "SUBS",
    "TRANSIENT",
    "UNCONFIRMED",
    "AlertError",
    "Channel",
    "CompiledFilter",
    "DeliveryOutcome",
    "OfferFilter",
    "SendResult",
    "SlackBotChannel",
    "SlackWebhookChannel",
    "SubscriptionIn",
    "SubscriptionPatch",
    "Sweep",
    "build_test_message",
    "check_webhook_url",
    "claim_batch",
    "create_subscription",
    "database_now",
    "decision_now",
    "delete_subscription",
    "deliver",
    "deliveries_of",
    "due_now",
    "enqueue_test",
    "get_subscription",
    "is_process_clock",
    "list_subscriptions",
    "mark_processed",
    "mask_token",
    "mask_webhook",
    "match_events",
    "offer_link",
    "offers_message",
    "request_message",
    "send_bot",
    "send_webhook",
    "slack_escape",
    "subscription_out",
    "sweep",
    "update_subscription",
    "webhook_kind",
    "write_delivery",
]
