"""Slack alerts: subscriptions, match sets, the outbox, message building and delivery.

A subscription is a market filter ("8x H100 in the EU under $3/GPU-hour") or a capacity
request (its `best_option_changed`), plus a Slack channel: an incoming-webhook URL or a bot
token and channel, stored encrypted (`broker.secrets`) and shown only masked.

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
processing a batch twice writes nothing twice. `deliver` sends one row: it claims it
(`pending → sending`, committed), calls Slack, and records the outcome: `sent`; `pending`
again with a backoff (429 with its Retry-After, 5xx, timeouts, an answer cut off mid-body);
`failed` after `max_attempts` or on a permanent rejection of the message; a target Slack
says is gone or closed to us for good (404 `no_service`, 403
`posting_to_general_channel_denied`, `invalid_auth`, `channel_not_found`,
`restricted_action`...) disables the subscription with the reason. A row
left `sending` past its claim (the worker died mid-call) becomes `unconfirmed` and is not
resent: Slack may already have shown it, and an alert must never arrive twice.
"""

from __future__ import annotations

import functools
import http.client
import ipaddress
import logging
import math
import re
import urllib.error
import uuid
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Annotated, Any, Literal
from urllib.parse import quote, urlsplit

from pydantic import BaseModel, ConfigDict, Field, SecretStr, field_validator, model_validator
from sqlalchemy import Connection, Engine, and_, delete, func, insert, select, update
from sqlmodel import Session, col

from broker import gpus, regions
from broker.config import Settings
from broker.db import keyset_page, session_scope
from broker.domain import Availability, Clock, utcnow
from broker.inputs import MAX_SECRET, MarketList, ModelList, PlaceList
from broker.models import (
    AlertDelivery,
    AlertMatch,
    AlertSubscription,
    CapacityRequest,
    MarketEvent,
    PollRun,
    RequestEvent,
    StoredOffer,
)
from broker.offers import gpu_filters
from broker.requests import MARKET_COLUMNS
from broker.scoring import MarketOffer, ScoringConfig, time_to_power
from broker.secrets import SecretBox, SecretUnavailable

log = logging.getLogger(__name__)
#: slack_sdk logs the full webhook URL at DEBUG; its logger is pinned to INFO so a secret
#: never reaches a handler, whatever the root level.
_SLACK_LOG = logging.getLogger("broker.alerts.slack")
_SLACK_LOG.setLevel(logging.INFO)

SUBS = AlertSubscription.__table__  # type: ignore[attr-defined]
MATCHES = AlertMatch.__table__  # type: ignore[attr-defined]
DELIVERIES = AlertDelivery.__table__  # type: ignore[attr-defined]
OFFERS = StoredOffer.__table__  # type: ignore[attr-defined]
EVENTS = MarketEvent.__table__  # type: ignore[attr-defined]
RUNS = PollRun.__table__  # type: ignore[attr-defined]
REQUEST_EVENTS = RequestEvent.__table__  # type: ignore[attr-defined]

ACTIVE, DISABLED = "active", "disabled"
PENDING, SENDING, SENT = "pending", "sending", "sent"
FAILED, CANCELLED, UNCONFIRMED = "failed", "cancelled", "unconfirmed"
_CHUNK = 500


class AlertError(ValueError):
    """A subscription change that is not allowed (`code`/`field` for the API's error shape)."""

    def __init__(self, code: str, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.code, self.field = code, field


# -------------------------------------------------------------------- validation


@functools.cache
def _known() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """Jurisdictions, countries, region names (`r` and `provider/r`) and providers."""
    table = regions.load_table()
    jurisdictions: set[str] = set()
    countries: set[str] = set()
    names: set[str] = set()
    for provider in table.providers():
        for r in table.regions_of(provider):
            jurisdictions.add(r.jurisdiction)
            countries.add(r.country)
            names |= {r.region, f"{provider}/{r.region}"}
    return (
        frozenset(jurisdictions),
        frozenset(countries),
        frozenset(names),
        frozenset(table.providers()) | {"replay"},
    )


def _codes(values: list[str], known: frozenset[str], what: str) -> list[str]:
    out = []
    for raw in values:
        code = raw.strip().upper()
        if code not in known:
            raise ValueError(f"unknown {what} {raw!r} (known: {', '.join(sorted(known))})")
        out.append(code)
    return sorted(set(out))


class OfferFilter(BaseModel):
    """Which offers a subscription hears about; every field narrows, empty = any."""

    model_config = ConfigDict(extra="forbid")

    gpu_models: ModelList = Field(
        default_factory=list,
        description='Models or families, e.g. ["H100"], "H100 80GB", or MODEL:COUNT for at '
        'least COUNT per instance ("H100:8").',
    )
    min_gpus: int | None = Field(
        default=None, ge=1, le=64, description="At least this many GPUs per instance."
    )
    jurisdictions: PlaceList = Field(default_factory=list, description="EU, US, ...")
    countries: PlaceList = Field(default_factory=list, description="ISO 3166-1 alpha-2.")
    regions: PlaceList = Field(
        default_factory=list, description="Region ids: eu-west-1 or aws/eu-west-1."
    )
    markets: MarketList = Field(default_factory=list)
    providers: PlaceList = Field(default_factory=list)
    max_price_per_gpu_hour: Decimal | None = Field(default=None, ge=0, max_digits=12)
    exclude_anomalies: bool = Field(
        default=False, description="Stay silent on offers whose price a sanity rule flagged."
    )

    @field_validator("gpu_models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        for name in v:
            gpus.parse_gpu_filter(name)  # GpuFilterError says why (near matches, bad count)
        return v

    @field_validator("jurisdictions")
    @classmethod
    def _jurisdictions(cls, v: list[str]) -> list[str]:
        return _codes(v, _known()[0], "jurisdiction")

    @field_validator("countries")
    @classmethod
    def _countries(cls, v: list[str]) -> list[str]:
        return _codes(v, _known()[1], "country")

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in _known()[2]:
                raise ValueError(f"unknown region {name!r}: use eu-west-1 or aws/eu-west-1")
        return sorted(set(v))

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str]) -> list[str]:
        known = _known()[3]
        for name in v:
            if name not in known:
                raise ValueError(f"unknown provider {name!r} (known: {', '.join(sorted(known))})")
        return sorted(set(v))


class SlackWebhookChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["slack_webhook"]
    url: SecretStr = Field(
        max_length=MAX_SECRET, description="An incoming-webhook URL. Write-only: shown masked."
    )


class SlackBotChannel(BaseModel):
    model_config = ConfigDict(extra="forbid")

    type: Literal["slack_bot"]
    token: SecretStr = Field(
        max_length=MAX_SECRET, description="A bot token (xoxb-...). Write-only."
    )
    channel: str = Field(min_length=1, max_length=128, description="#name or channel id.")

    @field_validator("token")
    @classmethod
    def _token(cls, v: SecretStr) -> SecretStr:
        text = v.get_secret_value()
        if not text.startswith(("xoxb-", "xoxp-")) or len(text) > 500 or not text.isprintable():
            raise ValueError("must be a Slack bot or user token (xoxb-... or xoxp-...)")
        return v


Channel = Annotated[SlackWebhookChannel | SlackBotChannel, Field(discriminator="type")]


class SubscriptionIn(BaseModel):
    """`POST /v1/subscriptions`: a `filter` over offers, or a `request_id` to follow."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(min_length=1, max_length=256)
    filter: OfferFilter | None = None
    request_id: int | None = Field(default=None, ge=1, le=2**62)
    channel: Channel
    price_drop_pct: Decimal | None = Field(
        default=None,
        gt=0,
        le=1,
        max_digits=5,
        description="Re-alert when an alerted offer gets this much cheaper (0.05 = 5 %).",
    )

    @model_validator(mode="after")
    def _one_target(self) -> SubscriptionIn:
        if (self.filter is None) == (self.request_id is None):
            raise ValueError("give exactly one of filter (offers) or request_id (a request)")
        return self


class SubscriptionPatch(BaseModel):
    """`PATCH /v1/subscriptions/{id}`: rename, refilter, new channel, pause or re-enable."""

    model_config = ConfigDict(extra="forbid")

    name: str | None = Field(default=None, min_length=1, max_length=256)
    filter: OfferFilter | None = None
    channel: Channel | None = None
    price_drop_pct: Decimal | None = Field(default=None, gt=0, le=1, max_digits=5)
    state: Literal["active", "disabled"] | None = None


def check_webhook_url(url: str, settings: Settings) -> None:
    """Raise `AlertError` unless `url` is an https URL on an allowed host (no SSRF): its
    `host` or `host:port` must be in `BROKER_SLACK_WEBHOOK_HOSTS`; plain http only for an
    allowed loopback host; never credentials in the URL, never a bare IP outside the list."""
    allowed = {h.lower() for h in settings.slack_webhook_hosts or []}
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise AlertError("invalid_webhook", "not a URL", "channel.url") from None
    hostport = f"{host}:{port}" if port else host
    if parts.scheme not in ("https", "http") or not host:
        raise AlertError("invalid_webhook", "the webhook URL must be https://", "channel.url")
    if parts.username or parts.password:
        raise AlertError(
            "invalid_webhook", "the webhook URL must not carry credentials", "channel.url"
        )
    if host not in allowed and hostport not in allowed:
        raise AlertError(
            "webhook_host_not_allowed",
            f"webhook host {hostport!r} is not allowed (allowed: "
            f"{', '.join(sorted(allowed)) or 'none'}; set BROKER_SLACK_WEBHOOK_HOSTS)",
            "channel.url",
        )
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if not loopback:
            raise AlertError("invalid_webhook", "the webhook URL must be https://", "channel.url")
    if not parts.path or parts.path == "/":
        raise AlertError("invalid_webhook", "the webhook URL has no path", "channel.url")


def mask_webhook(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…{url[-4:]}"


def mask_token(token: str, channel: str) -> str:
    return f"{channel} via {token[:5]}…{token[-4:]}"


# ----------------------------------------------------------------- filter matching


@dataclass(frozen=True)
class CompiledFilter:
    """A stored filter ready to test offer rows against."""

    models: frozenset[str] | None
    min_gpus: int | None
    jurisdictions: frozenset[str]
    countries: frozenset[str]
    regions: frozenset[str]
    markets: frozenset[str]
    providers: frozenset[str]
    max_price: Decimal | None
    minimums: Mapping[str, int] = field(default_factory=dict)
    exclude_anomalies: bool = False

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> CompiledFilter:
        models, minimums = gpu_filters(spec.get("gpu_models") or [])
        price = spec.get("max_price_per_gpu_hour")
        return cls(
            models=models,
            minimums=minimums,
            exclude_anomalies=bool(spec.get("exclude_anomalies")),
            min_gpus=spec.get("min_gpus"),
            jurisdictions=frozenset(spec.get("jurisdictions") or ()),
            countries=frozenset(spec.get("countries") or ()),
            regions=frozenset(spec.get("regions") or ()),
            markets=frozenset(spec.get("markets") or ()),
            providers=frozenset(spec.get("providers") or ()),
            max_price=Decimal(str(price)) if price is not None else None,
        )

    def matches(self, o: Any) -> bool:
        """Does offer row `o` (active, not sold out) pass? Unknown place fails a place rule."""
        if not o.active or o.availability == Availability.UNAVAILABLE:
            return False
        if o.gpu_model is None:
            return False  # an accelerator the catalogue does not know: counted, never alerted
        if self.models is not None and o.gpu_model not in self.models:
            return False
        if self.min_gpus is not None and o.gpu_count < self.min_gpus:
            return False
        least = self.minimums.get(o.gpu_model)
        if least is not None and o.gpu_count < least:
            return False
        if self.exclude_anomalies and o.anomalies:
            return False
        if self.jurisdictions and o.jurisdiction not in self.jurisdictions:
            return False
        if self.countries and o.country not in self.countries:
            return False
        if self.regions and not (
            o.region in self.regions or f"{o.provider}/{o.region}" in self.regions
        ):
            return False
        if self.markets and o.market not in self.markets:
            return False
        if self.providers and o.provider not in self.providers:
            return False
        return self.max_price is None or o.price_per_gpu_hour <= self.max_price

    def place(self) -> str:
        """`in the EU`, `in DE, FR`, `in eu-west-1` or empty."""
        parts = sorted(self.jurisdictions) + sorted(self.countries) + sorted(self.regions)
        return (
            f" in the {parts[0]}"
            if parts == ["EU"]
            else (f" in {', '.join(parts)}" if parts else "")
        )


#: What the scorer reads (time to power in messages) plus what a filter and a message need.
_OFFER_COLUMNS = (*MARKET_COLUMNS, "zone", "active")


def _offer_rows(conn: Connection, keys: Sequence[str] | None = None) -> list[Any]:
    cols = [OFFERS.c[c] for c in _OFFER_COLUMNS]
    if keys is None:
        return list(conn.execute(select(*cols).where(OFFERS.c.active)))
    out: list[Any] = []
    for i in range(0, len(keys), _CHUNK):
        out += conn.execute(select(*cols).where(OFFERS.c.key.in_(keys[i : i + _CHUNK]))).all()
    return out


# ------------------------------------------------------------------ subscriptions


def subscription_out(row: AlertSubscription, matching: int | None = None) -> dict[str, Any]:
    channel: dict[str, Any] = {"type": row.channel_type}
    if row.channel_type == "slack_webhook":
        channel["url"] = row.channel_hint
    else:
        channel["token"] = row.channel_hint.split(" via ", 1)[-1]
        channel["channel"] = row.channel_name
    return {
        "id": row.id,
        "name": row.name,
        "kind": row.kind,
        "filter": row.filter if row.kind == "offers" else None,
        "request_id": row.request_id,
        "channel": channel,
        "price_drop_pct": str(row.price_drop_pct),
        "state": row.state,
        "disabled_reason": row.disabled_reason,
        "matching_offers": matching,
        "created_by": row.created_by,
        "created_at": row.created_at,
        "updated_at": row.updated_at,
    }


def _apply_channel(
    row: AlertSubscription, channel: SlackWebhookChannel | SlackBotChannel, settings: Settings
) -> None:
    box = SecretBox(settings)
    if isinstance(channel, SlackWebhookChannel):
        url = channel.url.get_secret_value()
        check_webhook_url(url, settings)
        row.channel_type, row.channel_name = "slack_webhook", None
        row.channel_secret, row.channel_hint = box.seal(url), mask_webhook(url)
    else:
        token = channel.token.get_secret_value()
        row.channel_type, row.channel_name = "slack_bot", channel.channel
        row.channel_secret = box.seal(token)
        row.channel_hint = mask_token(token, channel.channel)


def _seed_matches(session: Session, row: AlertSubscription, now: datetime) -> int:
    """Replace the match set with what passes the filter now (silently); its size."""
    assert row.id is not None
    conn = session.connection()
    conn.execute(delete(MATCHES).where(MATCHES.c.subscription_id == row.id))
    flt = CompiledFilter.of(row.filter)
    rows = [
        {
            "subscription_id": row.id,
            "offer_key": o.key,
            "price_per_gpu_hour": o.price_per_gpu_hour,
            "entered_at": now,
        }
        for o in _offer_rows(conn)
        if flt.matches(o)
    ]
    if rows:
        conn.execute(insert(MATCHES), rows)
    return len(rows)


def create_subscription(
    session: Session,
    team_id: int,
    body: SubscriptionIn,
    *,
    actor: str,
    settings: Settings,
    clock: Clock = utcnow,
) -> tuple[AlertSubscription, int | None]:
    """Store a subscription (secret sealed) and seed its match set; (row, matching now)."""
    now = clock()
    if body.request_id is not None:
        req = session.get(CapacityRequest, body.request_id)
        if req is None or req.team_id != team_id:
            raise AlertError(
                "not_found", f"no capacity request {body.request_id} in this team", "request_id"
            )
    row = AlertSubscription(
        team_id=team_id,
        name=body.name,
        kind="offers" if body.filter is not None else "request",
        filter=body.filter.model_dump(mode="json") if body.filter is not None else {},
        request_id=body.request_id,
        price_drop_pct=body.price_drop_pct
        if body.price_drop_pct is not None
        else Decimal(str(settings.alerts.price_drop_pct)),
        channel_type="",
        channel_secret="",
        channel_hint="",
        state=ACTIVE,
        created_by=actor,
        created_at=now,
        updated_at=now,
    )
    _apply_channel(row, body.channel, settings)
    session.add(row)
    session.flush()
    matching = _seed_matches(session, row, now) if row.kind == "offers" else None
    return row, matching


def get_subscription(
    session: Session, team_id: int, subscription_id: int
) -> AlertSubscription | None:
    row = session.get(AlertSubscription, subscription_id)
    if row is None or row.team_id != team_id or row.deleted_at is not None:
        return None
    return row


def list_subscriptions(
    session: Session, team_id: int, *, after_id: int | None = None, limit: int = 50
) -> list[AlertSubscription]:
    return keyset_page(
        session,
        AlertSubscription,
        col(AlertSubscription.team_id) == team_id,
        col(AlertSubscription.deleted_at).is_(None),
        after_id=after_id,
        limit=limit,
    )


def update_subscription(
    session: Session,
    row: AlertSubscription,
    patch: SubscriptionPatch,
    *,
    settings: Settings,
    clock: Clock = utcnow,
) -> tuple[AlertSubscription, int | None]:
    now = clock()
    fields = patch.model_fields_set
    if "filter" in fields:
        if row.kind != "offers" or patch.filter is None:
            raise AlertError(
                "invalid_request", "only an offers subscription has a filter", "filter"
            )
        row.filter = patch.filter.model_dump(mode="json")
    if "name" in fields and patch.name is not None:
        row.name = patch.name
    if "price_drop_pct" in fields and patch.price_drop_pct is not None:
        row.price_drop_pct = patch.price_drop_pct
    if "channel" in fields and patch.channel is not None:
        _apply_channel(row, patch.channel, settings)
    reseed = "filter" in fields
    if "state" in fields and patch.state is not None and patch.state != row.state:
        row.state = patch.state
        row.disabled_reason = None if patch.state == ACTIVE else "paused through the API"
        reseed = reseed or patch.state == ACTIVE
    row.updated_at = now
    session.add(row)
    session.flush()
    matching = None
    if reseed and row.kind == "offers":
        matching = _seed_matches(session, row, now)
    return row, matching


def delete_subscription(session: Session, row: AlertSubscription, clock: Clock = utcnow) -> None:
    """Soft-delete: the row stays for its deliveries; unsent ones are cancelled."""
    now = clock()
    conn = session.connection()
    conn.execute(delete(MATCHES).where(MATCHES.c.subscription_id == row.id))
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.subscription_id == row.id, DELIVERIES.c.state == PENDING)
        .values(state=CANCELLED, last_error="subscription deleted")
    )
    row.deleted_at = row.updated_at = now
    session.add(row)


def enqueue_test(
    session: Session, row: AlertSubscription, settings: Settings, clock: Clock = utcnow
) -> int:
    """An outbox row with a test message for this subscription; its id."""
    now = clock()
    assert row.id is not None
    payload = build_test_message(row, settings)
    key = f"test:{row.id}:{uuid.uuid4().hex}"  # every test call is a new message
    return _write_delivery(session.connection(), row, "test", key, payload, now, now)


def deliveries_of(
    session: Session, row: AlertSubscription, *, after_id: int | None = None, limit: int = 50
) -> list[AlertDelivery]:
    where = col(AlertDelivery.subscription_id) == row.id
    return keyset_page(session, AlertDelivery, where, after_id=after_id, limit=limit)


# ------------------------------------------------------------------------ matching


@dataclass
class _SubView:
    id: int
    team_id: int
    name: str
    filter: CompiledFilter
    drop: Decimal
    entered: list[Any] = field(default_factory=list)
    drops: list[tuple[Any, Decimal]] = field(default_factory=list)


def _write_delivery(
    conn: Connection,
    sub: Any,
    kind: str,
    dedupe_key: str,
    payload: dict[str, Any],
    now: datetime,
    event_at: datetime | None,
) -> int:
    """Insert one outbox row unless its dedupe key exists; its id either way."""
    existing = conn.execute(
        select(DELIVERIES.c.id).where(DELIVERIES.c.dedupe_key == dedupe_key)
    ).scalar()
    if existing is not None:
        return int(existing)
    return int(
        conn.execute(
            insert(DELIVERIES).returning(DELIVERIES.c.id),
            {
                "dedupe_key": dedupe_key,
                "subscription_id": sub.id,
                "team_id": sub.team_id,
                "kind": kind,
                "created_at": now,
                "event_at": event_at,
                "payload": payload,
                "state": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            },
        ).scalar_one()
    )


def match_events(
    conn: Connection, first_id: int, last_id: int, settings: Settings, now: datetime
) -> list[int]:
    """Run the offer subscriptions over the offers market events `first..last` touched and
    the request subscriptions over the `best_option_changed` those events caused; write the
    outbox rows (in the caller's transaction). Returns the new deliveries' ids."""
    in_range = and_(EVENTS.c.id >= first_id, EVENTS.c.id <= last_id)
    event_at = conn.execute(
        select(func.min(RUNS.c.ingested_at)).where(
            RUNS.c.id.in_(select(EVENTS.c.poll_run_id).where(in_range))
        )
    ).scalar()
    subs = [
        _SubView(
            s.id,
            s.team_id,
            s.name,
            CompiledFilter.of(s.filter),
            Decimal(s.price_drop_pct),
        )
        for s in conn.execute(
            select(SUBS.c.id, SUBS.c.team_id, SUBS.c.name, SUBS.c.filter, SUBS.c.price_drop_pct)
            .where(SUBS.c.kind == "offers", SUBS.c.state == ACTIVE, SUBS.c.deleted_at.is_(None))
            .order_by(SUBS.c.id)
        )
    ]
    ids: list[int] = []
    if subs:
        keys = sorted(
            set(
                conn.execute(
                    select(EVENTS.c.offer_key).where(in_range, EVENTS.c.offer_key.is_not(None))
                ).scalars()
            )
        )
        if keys:
            ids += _match_offers(conn, subs, keys, first_id, last_id, settings, now, event_at)
    ids += _match_requests(conn, first_id, last_id, settings, now, event_at)
    return ids


def _match_offers(
    conn: Connection,
    subs: list[_SubView],
    keys: list[str],
    first_id: int,
    last_id: int,
    settings: Settings,
    now: datetime,
    event_at: datetime | None,
) -> list[int]:
    offers = _offer_rows(conn, keys)
    by_model: dict[str | None, list[_SubView]] = defaultdict(list)
    for s in subs:
        for m in s.filter.models or (None,):
            by_model[m].append(s)
    sub_ids = [s.id for s in subs]
    in_set: dict[tuple[int, str], Decimal] = {}
    for i in range(0, len(keys), _CHUNK):
        for sid, key, price in conn.execute(
            select(MATCHES.c.subscription_id, MATCHES.c.offer_key, MATCHES.c.price_per_gpu_hour)
            .where(MATCHES.c.offer_key.in_(keys[i : i + _CHUNK]))
            .where(MATCHES.c.subscription_id.in_(sub_ids))
        ):
            in_set[(sid, key)] = Decimal(price)
    enter: list[dict[str, Any]] = []
    reprice: list[tuple[int, str, Decimal]] = []
    leave: list[tuple[int, str]] = []
    for o in offers:
        candidates = by_model.get(o.gpu_model, []) + by_model.get(None, [])
        passing = {s.id for s in candidates if s.filter.matches(o)}
        for s in candidates:
            last = in_set.pop((s.id, o.key), None)
            if s.id in passing:
                if last is None:
                    s.entered.append(o)
                    enter.append(
                        {
                            "subscription_id": s.id,
                            "offer_key": o.key,
                            "price_per_gpu_hour": o.price_per_gpu_hour,
                            "entered_at": now,
                        }
                    )
                elif o.price_per_gpu_hour <= last * (1 - s.drop):
                    s.drops.append((o, last))
                    reprice.append((s.id, o.key, o.price_per_gpu_hour))
            elif last is not None:
                leave.append((s.id, o.key))
    # Set members whose offer is not a candidate any more (the filter's models differ from
    # the offer's, e.g. after a renaming): they left too.
    leave += list(in_set)
    if enter:
        conn.execute(insert(MATCHES), enter)
    for sid, key, price in reprice:
        conn.execute(
            update(MATCHES)
            .where(MATCHES.c.subscription_id == sid, MATCHES.c.offer_key == key)
            .values(price_per_gpu_hour=price)
        )
    for sid, key in leave:
        conn.execute(
            delete(MATCHES).where(MATCHES.c.subscription_id == sid, MATCHES.c.offer_key == key)
        )
    ids = []
    cfg = ScoringConfig.from_settings(settings.scoring)
    for s in subs:
        if not s.entered and not s.drops:
            continue
        payload = offers_message(s.name, s.filter, s.entered, s.drops, settings, cfg, now)
        ids.append(
            _write_delivery(
                conn, s, "offers", f"offers:{s.id}:{first_id}-{last_id}", payload, now, event_at
            )
        )
    return ids


def _match_requests(
    conn: Connection,
    first_id: int,
    last_id: int,
    settings: Settings,
    now: datetime,
    event_at: datetime | None,
) -> list[int]:
    changes = conn.execute(
        select(
            REQUEST_EVENTS.c.id,
            REQUEST_EVENTS.c.request_id,
            REQUEST_EVENTS.c.before,
            REQUEST_EVENTS.c.after,
        )
        .where(
            REQUEST_EVENTS.c.type == "best_option_changed",
            REQUEST_EVENTS.c.market_event_id >= first_id,
            REQUEST_EVENTS.c.market_event_id <= last_id,
        )
        .order_by(REQUEST_EVENTS.c.id)
    ).all()
    if not changes:
        return []
    by_request: dict[int, list[Any]] = defaultdict(list)
    for ch in changes:
        by_request[ch.request_id].append(ch)
    subs = conn.execute(
        select(SUBS.c.id, SUBS.c.team_id, SUBS.c.name, SUBS.c.request_id).where(
            SUBS.c.kind == "request",
            SUBS.c.state == ACTIVE,
            SUBS.c.deleted_at.is_(None),
            SUBS.c.request_id.in_(list(by_request)),
        )
    ).all()
    names = dict(
        conn.execute(
            select(CapacityRequest.__table__.c.id, CapacityRequest.__table__.c.name).where(  # type: ignore[attr-defined]
                CapacityRequest.__table__.c.id.in_(list(by_request))  # type: ignore[attr-defined]
            )
        ).all()
    )
    ids = []
    for s in subs:
        for ch in by_request[s.request_id]:
            payload = request_message(
                s.name, s.request_id, names.get(s.request_id), ch.before, ch.after, settings
            )
            ids.append(
                _write_delivery(
                    conn, s, "request", f"request:{s.id}:{ch.id}", payload, now, event_at
                )
            )
    return ids


# ------------------------------------------------------------------------ messages


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


# ------------------------------------------------------------------------ delivery


@dataclass(frozen=True)
class SendResult:
    """What Slack said: `sent`, `retry` (after `retry_after` s if it said), `gone` (the
    target no longer exists: disable the subscription) or `rejected` (this message)."""

    outcome: Literal["sent", "retry", "gone", "rejected"]
    error: str | None = None
    retry_after: float | None = None


#: Slack errors meaning the webhook, token or channel is gone or closed to us for good: every
#: later message would fail the same way until someone changes something in Slack, so the
#: subscription is disabled with the reason (re-enabled by `PATCH state=active`).
GONE = frozenset(
    {
        # Incoming webhooks: "Handling errors", https://api.slack.com/messaging/webhooks
        # (docs.slack.dev/messaging/sending-messages-using-incoming-webhooks). A plain-text
        # body: 400 `user_not_found`, 403 `action_prohibited` ("should not be attempted
        # again"), 403 `posting_to_general_channel_denied` (posting to #general restricted and
        # the webhook's creator not allowed there: "You'll receive this error with a HTTP
        # 403"), 404 `channel_not_found`, 410 `channel_is_archived`; `invalid_token`,
        # `no_service` (webhook disabled, removed or invalid), `no_service_id`, `no_team`,
        # `team_disabled`. Statuses: https://api.slack.com/changelog/2016-05-17-changes-to-
        # errors-for-incoming-webhooks.
        "user_not_found",
        "action_prohibited",
        "posting_to_general_channel_denied",
        "invalid_token",
        "channel_not_found",
        "channel_is_archived",
        "no_service",
        "no_service_id",
        "no_team",
        "team_disabled",
        # chat.postMessage, HTTP 200 `{"ok": false, "error": ...}`, raised by slack_sdk as
        # SlackApiError: https://docs.slack.dev/reference/methods/chat.postMessage#errors
        # (and the errors common to every Web API method listed there).
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "is_archived",
        "not_in_channel",
        "missing_scope",
        "no_permission",
        "team_access_not_granted",
        "not_allowed_token_type",
        "access_denied",
        "accesslimited",
        "enterprise_is_restricted",
        "two_factor_setup_required",
        # "Administrators have suspended the ability to post a message."
        "ekm_access_denied",
        # "A workspace preference prevents the authenticated user from posting."
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",  # we post top-level messages only
    }
)
#: Slack errors worth another attempt (chat.postMessage's list, above: `ratelimited`,
#: `internal_error`, `fatal_error`, `service_unavailable`, `request_timeout`; and a workspace
#: in an Enterprise migration, "intermittently unavailable until the transition is complete").
TRANSIENT = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
        "org_login_required",
    }
)
#: Statuses Slack documents for a refusal of the target rather than of the message: an
#: incoming webhook's 403 (`action_prohibited`, `posting_to_general_channel_denied`), 404 (no
#: such channel or webhook), 410 (archived channel); sources above. Whatever the body says,
#: the next message would be refused too.
GONE_STATUS = frozenset({403, 404, 410})


_SLACK_ERROR = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                seconds = float(raw)
            except (TypeError, ValueError):
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def _classify(status: int, error: str, headers: Mapping[str, Any]) -> SendResult:
    if status == 429 or error in ("ratelimited", "rate_limited"):
        return SendResult("retry", f"rate limited ({status})", _retry_after(headers) or None)
    if status >= 500 or error in TRANSIENT:
        return SendResult("retry", f"Slack answered {status} {error}".strip())
    if error in GONE or status in GONE_STATUS:
        return SendResult("gone", f"Slack answered {status} {error or ''}".strip())
    return SendResult("rejected", f"Slack answered {status} {error}".strip())


#: The start of Slack's success answers: an incoming webhook's `200 ok` (text), and
#: chat.postMessage's `{"ok": true, ...}`. Matched against the part of a cut-off answer
#: that did arrive.
_WEBHOOK_OK = re.compile(rb"ok?\Z")
_API_OK = re.compile(rb'\s*\{\s*"ok"\s*:\s*true\b')


def _cut_off(exc: http.client.HTTPException, accepted: re.Pattern[bytes], what: str) -> SendResult:
    """An answer that broke off: `IncompleteRead` (fewer body bytes than its Content-Length,
    the connection closed), or another broken HTTP answer (bad status line...). slack_sdk
    lets these through untouched: urllib raises them from `read()` of the answer (or of
    the HTTPError's body), outside the `URLError`/`OSError` family, and with no retry
    handler configured `_perform_http_request` re-raises them (slack_sdk/webhook/client.py,
    slack_sdk/web/base_client.py `_perform_urllib_http_request`). A transient send error:
    retried with the usual backoff. Unless the part that did arrive already is Slack's
    success answer: then Slack has the message, and sending it again would show it twice."""
    partial = exc.partial if isinstance(exc, http.client.IncompleteRead) else b""
    if partial and accepted.match(partial):
        log.info("alerts.cut_off_after_accept %s: %s", what, type(exc).__name__)
        return SendResult("sent")
    return SendResult("retry", f"{what}: answer cut off ({type(exc).__name__})")


def send_webhook(url: str, payload: Mapping[str, Any], settings: Settings) -> SendResult:
    from slack_sdk.webhook import WebhookClient

    client = WebhookClient(
        url,
        timeout=math.ceil(settings.alerts.send_timeout_s),
        logger=_SLACK_LOG,
        retry_handlers=[],
    )
    try:
        resp = client.send(text=payload["text"], blocks=payload.get("blocks"))
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return SendResult("retry", f"webhook unreachable: {type(reason).__name__}")
    except http.client.HTTPException as exc:
        return _cut_off(exc, _WEBHOOK_OK, "webhook")
    # slack_sdk answers every HTTP status with a WebhookResponse (status_code, text body):
    # 200 from `_perform_http_request_internal`, the others from its `except HTTPError`.
    body = (resp.body or "").strip()
    if resp.status_code == 200:
        return SendResult("sent")
    # Only a Slack error code (`no_service`, `invalid_payload`...) is kept: a body of any
    # other shape (an HTML page, whatever a redirect led to) never reaches `last_error`.
    error = body if _SLACK_ERROR.fullmatch(body) else ""
    return _classify(resp.status_code, error, resp.headers)


def send_bot(
    token: str, channel: str, payload: Mapping[str, Any], settings: Settings
) -> SendResult:
    from slack_sdk import WebClient
    from slack_sdk.errors import SlackApiError

    client = WebClient(
        token=token,
        base_url=settings.slack_api_url,
        timeout=math.ceil(settings.alerts.send_timeout_s),
        logger=_SLACK_LOG,
        retry_handlers=[],
    )
    try:
        client.chat_postMessage(channel=channel, text=payload["text"], blocks=payload.get("blocks"))
    except SlackApiError as exc:
        # `SlackResponse.validate()` raises it for any answer but HTTP 200 with `"ok": true`
        # (slack_sdk/web/slack_response.py): Slack's `{"ok": false, "error": ...}`.
        resp = exc.response
        error = str(resp.get("error", "")) if isinstance(resp.data, dict) else ""
        error = error if _SLACK_ERROR.fullmatch(error) else ""
        return _classify(resp.status_code, error, resp.headers)
    except (urllib.error.URLError, TimeoutError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return SendResult("retry", f"Slack API unreachable: {type(reason).__name__}")
    except http.client.HTTPException as exc:
        return _cut_off(exc, _API_OK, "Slack API")
    return SendResult("sent")


@dataclass(frozen=True)
class DeliveryOutcome:
    """What `deliver` did with one row: its state after, and when to try again."""

    delivery_id: int
    state: str
    sent: bool = False
    retry_in_s: float | None = None
    latency_s: float | None = None


def _backoff(attempts: int, settings: Settings) -> float:
    a = settings.alerts
    return float(min(a.max_backoff_s, a.backoff_base_s * 2 ** max(0, attempts - 1)))


def deliver(
    engine: Engine, delivery_id: int, settings: Settings, clock: Clock = utcnow
) -> DeliveryOutcome:
    """Send one outbox row if it is due; never twice (see the module docstring)."""
    now = clock()
    with session_scope(engine) as session:
        conn = session.connection()
        row = conn.execute(select(DELIVERIES).where(DELIVERIES.c.id == delivery_id)).first()
        if row is None:
            return DeliveryOutcome(delivery_id, "missing")
        if row.state == SENDING and row.claimed_until is not None and row.claimed_until < now:
            _finish(conn, delivery_id, UNCONFIRMED, "the sender stopped mid-call; not resent")
            return DeliveryOutcome(delivery_id, UNCONFIRMED)
        if row.state != PENDING:
            return DeliveryOutcome(delivery_id, row.state)
        if row.next_attempt_at > now:
            wait = (row.next_attempt_at - now).total_seconds()
            return DeliveryOutcome(delivery_id, PENDING, retry_in_s=wait)
        sub = conn.execute(select(SUBS).where(SUBS.c.id == row.subscription_id)).one()
        if sub.deleted_at is not None:
            _finish(conn, delivery_id, CANCELLED, "subscription deleted")
            return DeliveryOutcome(delivery_id, CANCELLED)
        if sub.state != ACTIVE and row.kind != "test":
            _finish(conn, delivery_id, FAILED, f"subscription disabled: {sub.disabled_reason}")
            return DeliveryOutcome(delivery_id, FAILED)
        try:
            secret = SecretBox(settings).open(sub.channel_secret)
        except SecretUnavailable as exc:
            return _retry_later(conn, row.id, row.attempts + 1, str(exc), None, settings, now)
        claimed = conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.id == delivery_id, DELIVERIES.c.state == PENDING)
            .values(
                state=SENDING,
                attempts=DELIVERIES.c.attempts + 1,
                claimed_until=now + timedelta(seconds=settings.alerts.claim_s),
            )
        ).rowcount
        if claimed != 1:
            return DeliveryOutcome(delivery_id, "raced")
    payload = {"text": row.payload["text"], "blocks": row.payload.get("blocks")}
    if sub.channel_type == "slack_webhook":
        result = send_webhook(secret, payload, settings)
    else:
        result = send_bot(secret, sub.channel_name, payload, settings)
    done = clock()
    attempts = row.attempts + 1
    with session_scope(engine) as session:
        conn = session.connection()
        if result.outcome == "sent":
            conn.execute(
                update(DELIVERIES)
                .where(DELIVERIES.c.id == delivery_id)
                .values(state=SENT, sent_at=done, claimed_until=None, last_error=None)
            )
            latency = (done - row.event_at).total_seconds() if row.event_at else None
            log.info("alerts.sent delivery=%s subscription=%s", delivery_id, sub.id)
            return DeliveryOutcome(delivery_id, SENT, sent=True, latency_s=latency)
        if result.outcome == "retry":
            return _retry_later(
                conn, delivery_id, attempts, result.error, result.retry_after, settings, done
            )
        _finish(conn, delivery_id, FAILED, result.error)
        if result.outcome == "gone":
            conn.execute(
                update(SUBS)
                .where(SUBS.c.id == sub.id)
                .values(state=DISABLED, disabled_reason=result.error, updated_at=done)
            )
            log.warning("alerts.subscription_disabled id=%s: %s", sub.id, result.error)
        return DeliveryOutcome(delivery_id, FAILED)


def _finish(conn: Connection, delivery_id: int, state: str, error: str | None) -> None:
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id)
        .values(state=state, claimed_until=None, last_error=(error or "")[:1000] or None)
    )


def _retry_later(
    conn: Connection,
    delivery_id: int,
    attempts: int,
    error: str | None,
    retry_after: float | None,
    settings: Settings,
    now: datetime,
) -> DeliveryOutcome:
    if attempts >= settings.alerts.max_attempts:
        _finish(conn, delivery_id, FAILED, f"gave up after {attempts} attempts: {error}")
        return DeliveryOutcome(delivery_id, FAILED)
    wait = retry_after if retry_after is not None else _backoff(attempts, settings)
    conn.execute(
        update(DELIVERIES)
        .where(DELIVERIES.c.id == delivery_id)
        .values(
            state=PENDING,
            attempts=attempts,
            claimed_until=None,
            next_attempt_at=now + timedelta(seconds=wait),
            last_error=(error or "")[:1000] or None,
        )
    )
    log.info("alerts.retry delivery=%s in %.1fs: %s", delivery_id, wait, error)
    return DeliveryOutcome(delivery_id, PENDING, retry_in_s=wait)


# --------------------------------------------------------------------------- sweep


@dataclass
class Sweep:
    """Work whose task may have been lost: event ranges of unprocessed poll runs, due
    deliveries; and how many cut-off sends were marked unconfirmed."""

    ranges: list[tuple[int, int]] = field(default_factory=list)
    deliveries: list[int] = field(default_factory=list)
    unconfirmed: int = 0


def sweep(
    engine: Engine,
    settings: Settings,
    clock: Clock = utcnow,
    *,
    delivery_grace_s: float | None = None,
) -> Sweep:
    """What to (re-)queue: poll runs whose events are still unprocessed `sweep_grace_s`
    after ingest, pending deliveries due `delivery_grace_s` (default the same) ago; marks
    sends cut off past their claim `unconfirmed`."""
    now = clock()
    grace = timedelta(seconds=settings.alerts.sweep_grace_s)
    delivery_grace = grace if delivery_grace_s is None else timedelta(seconds=delivery_grace_s)
    out = Sweep()
    with session_scope(engine) as session:
        conn = session.connection()
        runs = select(RUNS.c.id).where(
            RUNS.c.processed_at.is_(None), RUNS.c.ingested_at <= now - grace
        )
        out.ranges = [
            (int(lo), int(hi))
            for lo, hi in conn.execute(
                select(func.min(EVENTS.c.id), func.max(EVENTS.c.id))
                .where(EVENTS.c.poll_run_id.in_(runs))
                .group_by(EVENTS.c.poll_run_id)
                .order_by(func.min(EVENTS.c.id))
            )
        ]
        out.deliveries = list(
            conn.execute(
                select(DELIVERIES.c.id)
                .where(
                    DELIVERIES.c.state == PENDING,
                    DELIVERIES.c.next_attempt_at <= now - delivery_grace,
                )
                .order_by(DELIVERIES.c.id)
                .limit(1000)
            ).scalars()
        )
        out.unconfirmed = conn.execute(
            update(DELIVERIES)
            .where(DELIVERIES.c.state == SENDING, DELIVERIES.c.claimed_until < now)
            .values(
                state=UNCONFIRMED,
                claimed_until=None,
                last_error="the sender stopped mid-call; not resent",
            )
        ).rowcount
    return out


def mark_processed(conn: Connection, first_id: int, last_id: int, now: datetime) -> None:
    """Stamp the poll runs whose events lie in `first..last` as processed."""
    conn.execute(
        update(RUNS)
        .where(
            RUNS.c.id.in_(
                select(EVENTS.c.poll_run_id).where(EVENTS.c.id >= first_id, EVENTS.c.id <= last_id)
            ),
            RUNS.c.processed_at.is_(None),
        )
        .values(processed_at=now)
    )
