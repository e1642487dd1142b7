"""SQLModel tables: the market store (offers, observations, market events, poll runs,
provider states, quotas) and the requests side (teams, API keys, capacity requests, request
events). Every change here comes with an Alembic migration in `migrations/`
(a test compares the two).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    CheckConstraint,
    Column,
    ForeignKey,
    Index,
    Integer,
    Numeric,
    String,
    UniqueConstraint,
    text,
)
from sqlmodel import Field, SQLModel

from broker.db import UTCDateTime

ID = BigInteger().with_variant(Integer(), "sqlite")
MONEY = Numeric(18, 6)
COUNT = Numeric(10, 3)
SIZE = Numeric(12, 2)


class StoredOffer(SQLModel, table=True):
    """The current state of every offer ever seen; withdrawn ones stay with `active=False`."""

    __tablename__ = "offers"
    __table_args__ = (
        Index("ix_offers_provider_active", "provider", "active"),
        Index("ix_offers_active_price", "active", "price_per_gpu_hour"),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    key: str = Field(sa_column=Column(String(512), nullable=False, unique=True))
    provider: str = Field(sa_column=Column(String(64), nullable=False))
    region: str = Field(sa_column=Column(String(128), nullable=False))
    zone: str | None = Field(default=None, sa_column=Column(String(128)))
    instance_type: str = Field(sa_column=Column(String(128), nullable=False))
    market: str = Field(sa_column=Column(String(32), nullable=False))
    offering_id: str | None = Field(default=None, sa_column=Column(String(128)))
    #: None when the catalogue does not know the provider's name (`gpu_name_raw` holds it).
    gpu_model: str | None = Field(default=None, sa_column=Column(String(64), index=True))
    gpu_name_raw: str | None = Field(default=None, sa_column=Column(String(128)))
    gpu_family: str | None = Field(default=None, sa_column=Column(String(64)))
    accelerator_kind: str | None = Field(default=None, sa_column=Column(String(16)))
    gpu_vendor: str | None = Field(default=None, sa_column=Column(String(32)))
    form_factor: str | None = Field(default=None, sa_column=Column(String(16)))
    gpu_count: Decimal = Field(sa_column=Column(COUNT, nullable=False))
    gpu_memory_gb: Decimal | None = Field(default=None, sa_column=Column(SIZE))
    vcpus: Decimal | None = Field(default=None, sa_column=Column(SIZE))
    memory_gb: Decimal | None = Field(default=None, sa_column=Column(SIZE))
    interconnect: str | None = Field(default=None, sa_column=Column(String(64)))
    country: str | None = Field(default=None, sa_column=Column(String(2)))
    jurisdiction: str | None = Field(default=None, sa_column=Column(String(8)))
    continent: str | None = Field(default=None, sa_column=Column(String(32)))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    price_per_hour: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    price_per_gpu_hour: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    upfront_fee: Decimal | None = Field(default=None, sa_column=Column(MONEY))
    availability: str = Field(sa_column=Column(String(16), nullable=False))
    available_count: int | None = Field(default=None, sa_column=Column(Integer))
    earliest_start: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    min_duration_hours: int | None = Field(default=None, sa_column=Column(Integer))
    max_duration_hours: int | None = Field(default=None, sa_column=Column(Integer))
    first_seen: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    last_seen: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    active: bool = Field(nullable=False)
    withdrawn_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    #: Hash of the descriptive fields (not price, availability or raw): a change updates the
    #: row (a change of a `SPEC_FIELDS` field is also a `spec_changed` event).
    fingerprint: str = Field(sa_column=Column(String(32), nullable=False))
    raw: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: Price-sanity flags `[{code, message}]` (`broker.anomalies`), refreshed by every ingest.
    anomalies: list[dict[str, str]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False, server_default="[]")
    )
    #: The poll that last confirmed this offer (its `source`: origin and fetched_at).
    poll_run_id: int | None = Field(
        default=None,
        sa_column=Column(ID, ForeignKey("poll_runs.id", name="fk_offers_poll_run_id"), index=True),
    )


class Observation(SQLModel, table=True):
    """Price/availability history as change points: one row when an offer appears,
    returns, is withdrawn, or its price, availability or spec changes (a re-poll with no
    change adds none; `offers.last_seen` says how long the last point held). `kind` says
    which; a `withdrawn` point starts a gap that the next `returned` point ends. Each point
    keeps the GPU count and per-GPU price of its own time."""

    __tablename__ = "observations"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    offer_id: int = Field(sa_column=Column(ID, ForeignKey("offers.id"), nullable=False, index=True))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: appeared | changed | withdrawn | returned
    kind: str = Field(sa_column=Column(String(16), nullable=False, server_default="changed"))
    price_per_hour: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    gpu_count: Decimal | None = Field(default=None, sa_column=Column(COUNT))
    price_per_gpu_hour: Decimal | None = Field(default=None, sa_column=Column(MONEY))
    availability: str = Field(sa_column=Column(String(16), nullable=False))
    available_count: int | None = Field(default=None, sa_column=Column(Integer))
    poll_run_id: int | None = Field(
        default=None,
        sa_column=Column(ID, ForeignKey("poll_runs.id", name="fk_observations_poll_run_id")),
    )


class MarketEvent(SQLModel, table=True):
    """Append-only, monotonically numbered: the market's change feed (`after=<id>`)."""

    __tablename__ = "market_events"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    type: str = Field(sa_column=Column(String(32), nullable=False, index=True))
    provider: str = Field(sa_column=Column(String(64), nullable=False))
    offer_key: str | None = Field(default=None, sa_column=Column(String(512), index=True))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    poll_run_id: int | None = Field(
        default=None,
        sa_column=Column(ID, ForeignKey("poll_runs.id", name="fk_offers_poll_run_id"), index=True),
    )
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class PollRun(SQLModel, table=True):
    """One poll of one source (an adapter, or the replay of one snapshot), as ingested."""

    __tablename__ = "poll_runs"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    source: str = Field(sa_column=Column(String(64), nullable=False, index=True))
    label: str | None = Field(default=None, sa_column=Column(String(256)))
    fetched_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    ingested_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    offers_seen: int = Field(nullable=False)
    scopes_ok: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    scope_errors: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    events: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    skipped: dict[str, int] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: provider -> where its data came from (adapter and endpoints, or snapshot file).
    origins: dict[str, str] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    #: provider -> {"regions": {name: offers}, "gpu_names": {name: offers}} the tables did
    #: not recognise (the offers are kept with null location / model).
    unrecognised: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )
    #: When `broker.pipeline.process_events` handled this run's events (rescoring, alert
    #: matching); None with events = still to do (a sweep re-enqueues it if its task was lost).
    processed_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class ProviderState(SQLModel, table=True):
    """Each provider's health as its last polls left it."""

    __tablename__ = "provider_states"

    provider: str = Field(sa_column=Column(String(64), primary_key=True))
    status: str = Field(sa_column=Column(String(16), nullable=False))
    last_poll_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    last_success_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    consecutive_failures: int = Field(default=0, nullable=False)
    last_errors: list[dict[str, Any]] = Field(
        default_factory=list, sa_column=Column(JSON, nullable=False)
    )
    #: What the provider's last successful poll could not map: `PollRun.unrecognised`.
    unrecognised: dict[str, Any] = Field(
        default_factory=dict, sa_column=Column(JSON, nullable=False, server_default="{}")
    )


class StoredQuota(SQLModel, table=True):
    """The account quotas the last successful poll of each region reported (upserted)."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("provider", "region", "name", "market"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    provider: str = Field(sa_column=Column(String(64), nullable=False))
    region: str = Field(sa_column=Column(String(128), nullable=False))
    name: str = Field(sa_column=Column(String(128), nullable=False))
    #: The market the quota governs, `*` for all.
    market: str = Field(sa_column=Column(String(32), nullable=False))
    unit: str = Field(sa_column=Column(String(16), nullable=False))
    limit: Decimal = Field(sa_column=Column(SIZE, nullable=False))
    usage: Decimal | None = Field(default=None, sa_column=Column(SIZE))
    instance_types: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    description: str | None = Field(default=None, sa_column=Column(String(256)))
    seen_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class Team(SQLModel, table=True):
    """Who owns requests, reservations and subscriptions; API keys belong to one team."""

    __tablename__ = "teams"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    name: str = Field(sa_column=Column(String(128), nullable=False, unique=True))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class ApiKey(SQLModel, table=True):
    """An API key, stored as its SHA-256 (keys are 256-bit random, so a fast hash is safe);
    `prefix` (the key's first characters) finds the row and is what listings show."""

    __tablename__ = "api_keys"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False, index=True))
    role: str = Field(sa_column=Column(String(16), nullable=False))
    prefix: str = Field(sa_column=Column(String(16), nullable=False, index=True))
    key_hash: str = Field(sa_column=Column(String(64), nullable=False, unique=True))
    name: str | None = Field(default=None, sa_column=Column(String(128)))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    #: After this the key is refused (401, "expired"); None = no expiry.
    expires_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class CapacityRequest(SQLModel, table=True):
    """A team's need ("64 H100 in the EU within 10 days for 4 weeks under $3.50"). `spec`
    holds the validated request body; `best` the last best option (for change detection)."""

    __tablename__ = "capacity_requests"
    __table_args__ = (Index("ix_requests_team_state", "team_id", "state"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False))
    name: str | None = Field(default=None, sa_column=Column(String(256)))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    spec: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    #: Canonical GPU models the request accepts (expanded from families), for rescoring.
    gpu_models: list[str] = Field(default_factory=list, sa_column=Column(JSON, nullable=False))
    best: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    scored_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class RequestEvent(SQLModel, table=True):
    """Append-only events of capacity requests (`best_option_changed`, state changes)."""

    __tablename__ = "request_events"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    request_id: int = Field(
        sa_column=Column(ID, ForeignKey("capacity_requests.id"), nullable=False, index=True)
    )
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False, index=True))
    type: str = Field(sa_column=Column(String(32), nullable=False))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: The last market event that led to it (None for API-caused changes).
    market_event_id: int | None = Field(default=None, sa_column=Column(ID))
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


# ------------------------------------------------------------------- the ledger

#: GPU-hours used (usage samples): three decimals.
GPU_HOURS = Numeric(18, 3)
#: Reservation states that hold capacity (count against an offer's stated quantity).
LIVE_RESERVATION_STATES = ("held", "active")


class Reservation(SQLModel, table=True):
    """A commitment of a team: booked through the broker from an offer (`offer_key` set) or
    recorded from outside it. Changed only through `broker.ledger`, each change appending a
    `LedgerEntry`. States `held → active → expired | cancelled`. Money in `currency`."""

    __tablename__ = "reservations"
    __table_args__ = (
        Index("ix_reservations_team_state", "team_id", "state"),
        Index("ix_reservations_offer_key_state", "offer_key", "state"),
        #: A capacity-block offering is bought whole: at most one live reservation of it.
        Index(
            "uq_reservations_live_capacity_block",
            "offer_key",
            unique=True,
            sqlite_where=text("kind = 'capacity_block' AND state IN ('held', 'active')"),
            postgresql_where=text("kind = 'capacity_block' AND state IN ('held', 'active')"),
        ),
        CheckConstraint("ends_at > starts_at", name="ck_reservations_term"),
        CheckConstraint("gpus > 0", name="ck_reservations_gpus"),
        CheckConstraint("rate_per_gpu_hour >= 0", name="ck_reservations_rate"),
        CheckConstraint("upfront_fee_usd >= 0", name="ck_reservations_upfront_fee"),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False))
    request_id: int | None = Field(
        default=None, sa_column=Column(ID, ForeignKey("capacity_requests.id"), index=True)
    )
    #: `request` (booked from an offer through a capacity request), `api` or `import`.
    source: str = Field(sa_column=Column(String(16), nullable=False))
    offer_key: str | None = Field(default=None, sa_column=Column(String(512)))
    instances: int | None = Field(default=None, sa_column=Column(Integer))
    provider: str = Field(sa_column=Column(String(64), nullable=False))
    gpu_model: str = Field(sa_column=Column(String(64), nullable=False))
    gpu_family: str = Field(sa_column=Column(String(64), nullable=False))
    gpus: Decimal = Field(sa_column=Column(COUNT, nullable=False))
    region: str = Field(sa_column=Column(String(128), nullable=False))
    country: str | None = Field(default=None, sa_column=Column(String(2)))
    jurisdiction: str | None = Field(default=None, sa_column=Column(String(8)))
    starts_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    ends_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    currency: str = Field(sa_column=Column(String(3), nullable=False))
    rate_per_gpu_hour: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    upfront_fee_usd: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    kind: str = Field(sa_column=Column(String(32), nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    counterparty: str | None = Field(default=None, sa_column=Column(String(256)))
    notes: str | None = Field(default=None, sa_column=Column(String(2000)))
    created_by: str = Field(sa_column=Column(String(160), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    activated_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    cancelled_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class LedgerEntry(SQLModel, table=True):
    """Append-only: one change of a reservation (who, when, why, before/after)."""

    __tablename__ = "ledger_entries"

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    reservation_id: int = Field(
        sa_column=Column(ID, ForeignKey("reservations.id"), nullable=False, index=True)
    )
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False, index=True))
    at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: `team/key-prefix` of an API key, `cli` or `system` (the expiry task).
    actor: str = Field(sa_column=Column(String(160), nullable=False))
    #: created | activated | extended | rate_amended | amended | cancelled | expired
    action: str = Field(sa_column=Column(String(32), nullable=False))
    reason: str | None = Field(default=None, sa_column=Column(String(1000)))
    before: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    after: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))


class UsageSample(SQLModel, table=True):
    """GPU-hours used against a reservation over one period (API or CSV import)."""

    __tablename__ = "usage_samples"
    __table_args__ = (
        UniqueConstraint("reservation_id", "period_start", name="uq_usage_samples_period"),
        CheckConstraint("period_end > period_start", name="ck_usage_samples_period"),
        CheckConstraint("gpu_hours >= 0", name="ck_usage_samples_gpu_hours"),
    )

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    reservation_id: int = Field(
        sa_column=Column(ID, ForeignKey("reservations.id"), nullable=False, index=True)
    )
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False, index=True))
    period_start: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    period_end: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    gpu_hours: Decimal = Field(sa_column=Column(GPU_HOURS, nullable=False))
    source: str = Field(sa_column=Column(String(16), nullable=False))
    recorded_by: str = Field(sa_column=Column(String(160), nullable=False))
    recorded_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


# ------------------------------------------------------------------------ alerts


class AlertSubscription(SQLModel, table=True):
    """Who hears about what: a market filter (`kind` offers) or a capacity request's
    `best_option_changed` (`kind` request), sent to a Slack channel. The webhook URL or bot
    token is stored encrypted (`broker.secrets`); `channel_hint` is its masked form, the only
    one the API shows. Deleted subscriptions stay (their deliveries refer to them) with
    `deleted_at` set."""

    __tablename__ = "alert_subscriptions"
    __table_args__ = (Index("ix_alert_subscriptions_team", "team_id", "deleted_at"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False))
    name: str = Field(sa_column=Column(String(256), nullable=False))
    #: `offers` (a market filter) or `request` (a capacity request's best option).
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    filter: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    request_id: int | None = Field(
        default=None, sa_column=Column(ID, ForeignKey("capacity_requests.id"), index=True)
    )
    #: A price drop of an offer already in the match set alerts when it is at least this
    #: share of the price last alerted (0.05 = 5 %).
    price_drop_pct: Decimal = Field(sa_column=Column(Numeric(6, 4), nullable=False))
    #: `slack_webhook` or `slack_bot`.
    channel_type: str = Field(sa_column=Column(String(16), nullable=False))
    #: The Slack channel of a bot subscription (`#gpu-alerts` or `C0123`); not a secret.
    channel_name: str | None = Field(default=None, sa_column=Column(String(128)))
    channel_secret: str = Field(sa_column=Column(String(4000), nullable=False))
    channel_hint: str = Field(sa_column=Column(String(128), nullable=False))
    #: `active` or `disabled` (Slack said the target is gone; `disabled_reason` says why).
    state: str = Field(sa_column=Column(String(16), nullable=False))
    disabled_reason: str | None = Field(default=None, sa_column=Column(String(500)))
    created_by: str = Field(sa_column=Column(String(160), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    updated_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    deleted_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))


class AlertMatch(SQLModel, table=True):
    """A subscription's match set: the offers that currently pass its filter, with the price
    last alerted. Entering the set alerts; leaving it removes the row (so re-entering alerts
    again); a price drop past the threshold alerts and lowers `price_per_gpu_hour`."""

    __tablename__ = "alert_matches"

    subscription_id: int = Field(
        sa_column=Column(ID, ForeignKey("alert_subscriptions.id"), primary_key=True)
    )
    offer_key: str = Field(sa_column=Column(String(512), primary_key=True))
    price_per_gpu_hour: Decimal = Field(sa_column=Column(MONEY, nullable=False))
    entered_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))


class AlertDelivery(SQLModel, table=True):
    """The outbox: one Slack message to send, written in the transaction that decided it.
    `dedupe_key` is unique (a batch processed twice writes no second row). States:
    `pending → sending → sent`, back to `pending` with `next_attempt_at` after a retryable
    failure, `failed` (gave up, or the subscription was disabled), `cancelled` (subscription
    deleted first), `unconfirmed` (a worker died while sending: not resent, so never twice)."""

    __tablename__ = "alert_deliveries"
    __table_args__ = (Index("ix_alert_deliveries_state_next", "state", "next_attempt_at"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    dedupe_key: str = Field(sa_column=Column(String(255), nullable=False, unique=True))
    subscription_id: int = Field(
        sa_column=Column(ID, ForeignKey("alert_subscriptions.id"), nullable=False, index=True)
    )
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False))
    #: `offers`, `request` or `test`.
    kind: str = Field(sa_column=Column(String(16), nullable=False))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: When the earliest market event behind it was written (event → Slack latency).
    event_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    #: `{"text": ..., "blocks": [...]}`: Slack's message, built when the batch was matched.
    payload: dict[str, Any] = Field(default_factory=dict, sa_column=Column(JSON, nullable=False))
    state: str = Field(sa_column=Column(String(16), nullable=False))
    attempts: int = Field(default=0, nullable=False)
    next_attempt_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
    #: While `sending`: until when the sending worker holds it.
    claimed_until: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    sent_at: datetime | None = Field(default=None, sa_column=Column(UTCDateTime()))
    last_error: str | None = Field(default=None, sa_column=Column(String(1000)))


class IdempotencyKey(SQLModel, table=True):
    """A POST made with an `Idempotency-Key` header: claimed in the transaction that creates
    the object, holding the answer once it is made, so a retried POST replays it."""

    __tablename__ = "idempotency_keys"
    __table_args__ = (UniqueConstraint("team_id", "key", name="uq_idempotency_keys_team_key"),)

    id: int | None = Field(default=None, sa_column=Column(ID, primary_key=True, autoincrement=True))
    team_id: int = Field(sa_column=Column(ID, ForeignKey("teams.id"), nullable=False))
    key: str = Field(sa_column=Column(String(255), nullable=False))
    #: SHA-256 of method, path and body: the same key with another request is refused.
    fingerprint: str = Field(sa_column=Column(String(64), nullable=False))
    status: int | None = Field(default=None, sa_column=Column(Integer))
    response: Any = Field(default=None, sa_column=Column(JSON))
    created_at: datetime = Field(sa_column=Column(UTCDateTime(), nullable=False))
