"""Response models shared by the routers (one family per resource, as in STYLE §3).

Money, counts and sizes are `Decimal` in the store and JSON numbers on the wire (as in
`broker offers --format json`); times are ISO 8601 UTC (`...Z`).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Annotated, Any

from pydantic import BaseModel, Field, PlainSerializer


def _number(value: Decimal) -> float | int:
    return int(value) if value == value.to_integral_value() else float(value)


#: A Decimal written as a JSON number.
Num = Annotated[Decimal, PlainSerializer(_number, return_type=float, when_used="json")]


class AnomalyPublic(BaseModel):
    """A price-sanity flag (rules in docs/anomalies.md)."""

    code: str
    message: str


class SourcePublic(BaseModel):
    """Where an offer's (or a history point's) numbers came from."""

    poll_id: int = Field(description="The poll (GET /v1/polls/{id}).")
    origin: str | None = Field(
        description="The adapter and endpoint(s), or the snapshot folder, file and commit."
    )
    fetched_at: datetime


class OfferPublic(BaseModel):
    """One current offer (the fields of `broker offers --format json`)."""

    key: str
    provider: str
    instance_type: str
    gpu_model: str | None = Field(
        description="Canonical model; null when the catalogue does not know the provider's "
        "name (see gpu_name_raw)."
    )
    gpu_name_raw: str | None = Field(
        default=None, description="The provider's accelerator name when gpu_model is null."
    )
    gpu_family: str | None
    form_factor: str | None = None
    accelerator_kind: str | None
    gpu_count: Num
    gpu_memory_gb: Num | None
    vcpus: Num | None
    memory_gb: Num | None
    region: str
    zone: str | None
    country: str | None
    jurisdiction: str | None
    continent: str | None
    market: str
    currency: str
    price_per_hour: Num
    price_per_gpu_hour: Num
    upfront_fee: Num | None
    availability: str
    available_count: int | None
    earliest_start: datetime | None
    first_seen: datetime
    last_seen: datetime
    stale: bool
    anomalies: list[AnomalyPublic] = Field(
        default_factory=list,
        description="Price-sanity flags; an empty list when no rule flags the price.",
    )
    source: SourcePublic | None = Field(
        default=None, description="The poll that last confirmed this offer."
    )
    time_to_power_hours: float | None = Field(
        default=None,
        description="Hours until usable (broker.scoring.time_to_power), with sort=time_to_power; "
        "null for a sold-out offer with no history.",
    )


class OfferDetail(OfferPublic):
    """One offer, current or withdrawn, with every stored field and the provider's raw ones."""

    active: bool
    withdrawn_at: datetime | None
    gpu_vendor: str | None
    interconnect: str | None
    offering_id: str | None
    min_duration_hours: int | None
    max_duration_hours: int | None
    raw: dict[str, Any]


class ObservationPublic(BaseModel):
    """A change point of an offer: `appeared`, `changed` (price, availability or spec),
    `withdrawn` (a gap begins: the offer was not on sale until the next `returned`) or
    `returned`. Each point keeps the GPU count and per-GPU price of its own time."""

    at: datetime
    kind: str
    price_per_hour: Num
    gpu_count: Num | None
    price_per_gpu_hour: Num | None
    availability: str
    available_count: int | None
    source: SourcePublic | None = None


class PollPublic(BaseModel):
    """One poll of one source as it was ingested: what it covered, what failed, what it
    skipped or could not map, the events it wrote and where its data came from."""

    id: int
    source: str
    label: str | None
    fetched_at: datetime
    ingested_at: datetime
    status: str
    offers_seen: int
    scopes_ok: list[str]
    scope_errors: list[dict[str, Any]]
    events: dict[str, int]
    skipped: dict[str, int]
    origins: dict[str, str]
    unrecognised: dict[str, Any]
    processed_at: datetime | None


class EventPublic(BaseModel):
    """A market event: `offer_appeared | offer_withdrawn | price_changed |
    availability_changed | provider_degraded | provider_recovered`, with before/after."""

    id: int
    type: str
    provider: str
    offer_key: str | None
    at: datetime
    poll_run_id: int | None
    before: dict[str, Any] | None
    after: dict[str, Any] | None


class ScopeErrorPublic(BaseModel):
    scope: str
    code: str
    message: str
    retry_after_s: float | None = None


class ProviderPublic(BaseModel):
    """A registered provider adapter and the health its polls left."""

    name: str
    status: str
    reason: str | None
    #: The market providers whose offers this adapter polls (replay: the clouds of its
    #: snapshots; an adapter: itself).
    feeds: list[str]
    last_poll_at: datetime | None
    last_success_at: datetime | None
    consecutive_failures: int
    scope_errors: list[ScopeErrorPublic]
    offers: int
    stale_offers: int
    unrecognised: dict[str, dict[str, dict[str, int]]] = Field(
        default_factory=dict,
        description="What the last successful poll could not map, per market provider: "
        '{provider: {"regions": {name: offers}, "gpu_names": {name: offers}}} (the offers are '
        "kept, with a null location or model; add the region or name to the tables).",
    )


class PollSummary(BaseModel):
    """What `POST /v1/providers/{name}/poll` did (as `broker poll --json` per provider)."""

    provider: str
    status: str
    poll_run_id: int
    offers: int
    events: dict[str, int]
    first_event_id: int | None
    last_event_id: int | None
    skipped: dict[str, int]
    scope_errors: list[ScopeErrorPublic]
    #: Whether the after-ingest pipeline (request rescoring) ran cleanly.
    pipeline_ok: bool


class Health(BaseModel):
    status: str


class Readiness(BaseModel):
    status: str
    database: str
    revision: str | None
    head: str | None
