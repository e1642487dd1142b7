"""A seeded random fault soak (bounded: 80 steps, loopback only) over the embedded pipeline:
a Lambda fake whose market moves and which fails at random (5xx, 429, garbage, timeouts), a
Vast fake whose listings (how many 4×L40S chunks each machine offers, at what price) move
and which fails at random too, Slack failing at random (429, 5xx), alert subscriptions,
capacity requests and bookings competing for the same offers.
After every step the invariants hold:
- the market events replayed per offer give exactly the stored offers (active, price,
  availability): nothing changed without an event, no event without a change;
- every Slack message belongs to exactly one sent delivery (none twice, none lost once the
  sweep has run);
- the ledger balances: every reservation has its `created` entry, and no offer holds more
  live GPUs than it offered. Lambda states no quantity (capacity by presence: nothing to
  over-book), so the bookings that count are Vast's: each offer says how many chunks it
  has (`available_count`), a listing with none is one machine (`max_instances`), and
  after every successful booking the live reservations overlapping its term hold no more
  than that room (checked at once: the market may shrink the room later, which does not
  undo a booking).
"""

from __future__ import annotations

import json
import random
from collections import Counter
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, text

from broker import alerts, ledger
from broker import requests as capacity
from broker.auth import get_or_create_team
from broker.config import LambdaCloudSettings, Settings, VastSettings
from broker.db import session_scope
from broker.domain import Market
from broker.models import CapacityRequest
from broker.pipeline import after_ingest, sweep_embedded
from broker.polling import poll_source
from broker.scoring import ScoringConfig
from providers.lambda_cloud import LambdaCloud
from providers.vast import Vast
from tests.fakes.http import FakeHttpServer, FakeResponse, serve
from tests.fakes.lambda_cloud_api import PATH, REGIONS, LambdaFake, catalogue, error_body
from tests.fakes.slack import FakeSlack, text_response
from tests.fakes.vast_api import RATE_LIMITED, VastFake, listing

STEPS = 80
SEED = 20261123
SECRET = "secret_lambda-soak-0123456789"
VAST_SECRET = "vast-soak-0123456789abcdef"
#: Vast machines: (machine id, geolocation); each lists 0..4 chunks of 4 L40S at a time.
MACHINES = [(41001, "Sweden, SE"), (41002, "Germany, DE"), (41003, "Oregon, US")]
L40S_MIB = 46068


class Clock:
    def __init__(self) -> None:
        self.now = datetime(2026, 6, 1, tzinfo=UTC)

    def __call__(self) -> datetime:
        return self.now


@pytest.fixture
def http() -> Any:
    yield from serve()


@pytest.fixture
def slack_http() -> Any:
    yield from serve()


@pytest.fixture
def vast_http() -> Any:
    yield from serve()


class VastMarket:
    """How many 4×L40S chunks each machine lists now, and at what price."""

    def __init__(self, fake: VastFake, rnd: random.Random) -> None:
        self.fake, self.rnd = fake, rnd
        self.chunks = {m: 2 for m, _ in MACHINES}
        self.price = {m: 2.8 + 0.2 * i for i, (m, _) in enumerate(MACHINES)}
        self.publish()

    def move(self) -> None:
        for m, _ in MACHINES:
            self.chunks[m] = self.rnd.randint(0, 4)
            if self.rnd.random() < 0.5:
                self.price[m] = round(max(1.0, self.price[m] + self.rnd.uniform(-0.4, 0.4)), 2)
        self.publish()

    def publish(self) -> None:
        self.fake.on_demand = [
            listing(m * 10 + i, m, "L40S", 4, self.price[m], gpu_ram=L40S_MIB, geolocation=geo)
            for m, geo in MACHINES
            for i in range(self.chunks[m])
        ]


def money(value: Any) -> Decimal:
    """Money as stored (6 places), whether the driver returns a float or a Decimal."""
    return Decimal(str(value)).quantize(Decimal("0.000001"))


def check_events_reconcile(engine: Engine) -> None:
    with engine.connect() as conn:
        offers = {
            r.key: (bool(r.active), money(r.price_per_hour), r.availability)
            for r in conn.execute(
                text("SELECT key, active, price_per_hour, availability FROM offers")
            )
        }
        folded: dict[str, tuple[bool, Decimal, str]] = {}
        for type_, key, after in conn.execute(
            text(
                "SELECT type, offer_key, after FROM market_events "
                "WHERE offer_key IS NOT NULL ORDER BY id"
            )
        ):
            after = after if isinstance(after, dict) else json.loads(after or "null")
            active, price, availability = folded.get(key, (False, Decimal(0), ""))
            if type_ == "offer_withdrawn":
                active = False
            else:
                active = True
                price = money(after["price_per_hour"])
                availability = after["availability"]
            folded[key] = (active, price, availability)
    assert set(folded) == set(offers)
    for key, (active, price, availability) in offers.items():
        f_active, f_price, f_availability = folded[key]
        assert f_active == active, key
        if active:
            assert (f_price, f_availability) == (price, availability), key


def check_deliveries(engine: Engine, fake: FakeSlack) -> None:
    with engine.connect() as conn:
        sent = conn.execute(
            text("SELECT count(*) FROM alert_deliveries WHERE state = 'sent'")
        ).scalar_one()
        dupes = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT dedupe_key FROM alert_deliveries "
                "GROUP BY dedupe_key HAVING count(*) > 1) d"
            )
        ).scalar_one()
    assert dupes == 0
    assert len(fake.messages) == sent


def check_ledger(engine: Engine) -> None:
    with engine.connect() as conn:
        missing = conn.execute(
            text(
                "SELECT count(*) FROM reservations r WHERE NOT EXISTS (SELECT 1 FROM "
                "ledger_entries e WHERE e.reservation_id = r.id AND e.action = 'created')"
            )
        ).scalar_one()
    assert missing == 0


def room_gpus(engine: Engine, offer_key: str) -> Decimal | None:
    """The GPUs an offer has room for now: its stated count of instances, one instance for
    a marketplace listing that states none, None (unbounded) for a price list."""
    with engine.connect() as conn:
        provider, count, gpus = conn.execute(
            text("SELECT provider, available_count, gpu_count FROM offers WHERE key = :k"),
            {"k": offer_key},
        ).one()
    if count is None and provider in ScoringConfig().uncombinable_providers:
        count = 1
    return None if count is None else Decimal(count) * Decimal(str(gpus))


def check_booking(engine: Engine, reservation_ids: list[int]) -> int:
    """Right after a booking: on each offer booked, the live reservations overlapping the new
    one's term hold no more GPUs than the offer has room for. How many had a bounded room."""
    bounded = 0
    with engine.connect() as conn:
        for rid in reservation_ids:
            key, starts, ends = conn.execute(
                text("SELECT offer_key, starts_at, ends_at FROM reservations WHERE id = :i"),
                {"i": rid},
            ).one()
            held = conn.execute(
                text(
                    "SELECT coalesce(sum(gpus), 0) FROM reservations WHERE offer_key = :k "
                    "AND state IN ('held', 'active') AND starts_at < :e AND ends_at > :s"
                ),
                {"k": key, "s": starts, "e": ends},
            ).scalar_one()
            room = room_gpus(engine, key)
            if room is not None:
                bounded += 1
                assert Decimal(str(held)) <= room, (key, held, room)
    return bounded


def test_random_fault_soak_keeps_every_invariant(
    engine: Engine,
    tmp_path: Path,
    http: FakeHttpServer,
    slack_http: FakeHttpServer,
    vast_http: FakeHttpServer,
) -> None:
    rnd = random.Random(SEED)
    clock = Clock()
    fake = LambdaFake(http, catalogue(), api_key=SECRET)
    slack = FakeSlack(slack_http)
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[slack.host])
    settings.alerts.max_attempts = 50
    source = LambdaCloud(
        SECRET,
        LambdaCloudSettings(timeout_s=0.5, max_attempts=1, base_url=fake.url),
        clock=clock,
        sleep=lambda s: None,
    )
    vast = VastFake(vast_http, VAST_SECRET)
    vast_market = VastMarket(vast, rnd)
    vast_source = Vast(
        VAST_SECRET,
        VastSettings(timeout_s=0.5, max_attempts=1, base_url=vast.url),
        clock=clock,
        sleep=lambda s: None,
        min_interval_s=0,
        markets=(Market.ON_DEMAND,),  # one search a poll: the soak's bookings are on demand
    )
    webhook = slack.webhook()
    hook_path = webhook.split(str(slack_http.port), 1)[1]
    with session_scope(engine) as session:
        team = get_or_create_team(session, "soak", clock=clock)
        assert team.id is not None
        team_id = team.id
        for name, flt in (
            ("h100", {"gpu_models": ["H100"]}),
            ("eu", {"jurisdictions": ["EU"]}),
            ("cheap", {"max_price_per_gpu_hour": "1.50"}),
        ):
            sub = alerts.SubscriptionIn.model_validate(
                {"name": name, "filter": flt, "channel": {"type": "slack_webhook", "url": webhook}}
            )
            alerts.create_subscription(session, team_id, sub, actor="soak", settings=settings)
        # Three requests Lambda serves; six for 8 L40S, which only Vast lists, in chunks
        # of 4: they want the same cheapest offers, and some bookings find no room left.
        for model in ("H100", "A100", "B200", *["L40S"] * 6):
            spec = capacity.RequestIn.model_validate(
                {"gpu_models": [model], "gpus": 8, "duration_hours": 48}
            )
            capacity.create_request(session, team_id, spec, settings=settings, clock=clock)
    regions = list(REGIONS)
    actions: Counter[str] = Counter()
    for _ in range(STEPS):
        clock.now += timedelta(minutes=rnd.choice([1, 5, 30]))
        roll = rnd.random()
        if roll < 0.45:  # the market moves
            for t in rnd.sample(fake.types, k=4):
                t.regions = rnd.sample(regions, k=rnd.randint(0, 4))
                if rnd.random() < 0.5:
                    t.price_cents_per_hour = max(10, t.price_cents_per_hour + rnd.randint(-80, 80))
            vast_market.move()
            actions["market"] += 1
        elif roll < 0.7:  # the provider fails this poll
            fault = rnd.choice(
                [
                    FakeResponse(503, json=error_body("global/unavailable")),
                    FakeResponse(
                        429, json=error_body("global/rate-limit"), headers={"Retry-After": "120"}
                    ),
                    FakeResponse(body=b"<html>bad gateway</html>"),
                    FakeResponse(json={"data": []}),
                    FakeResponse(json={}, delay_s=1.0),
                ]
            )
            http.fail("GET", PATH, fault)
            actions["provider_fault"] += 1
        if rnd.random() < 0.3:  # Slack fails the next sends
            slack_http.fail(
                "POST",
                hook_path,
                *[
                    rnd.choice(
                        [
                            text_response(500, "rollup_error"),
                            text_response(429, "rate_limited", {"Retry-After": "1"}),
                        ]
                    )
                    for _ in range(rnd.randint(1, 3))
                ],
            )
            actions["slack_fault"] += 1
        if rnd.random() < 0.15:  # Vast fails this poll
            vast.fail["on-demand"] = rnd.choice(
                [RATE_LIMITED, FakeResponse(502, body=b"<html>bad gateway</html>")]
            )
            actions["vast_fault"] += 1
        for src in (source, vast_source):
            outcome = poll_source(engine, src, clock=clock)
            after_ingest(engine, outcome, settings, clock)
        vast.fail.clear()
        if rnd.random() < 0.4:  # someone books the best option of a request
            booked: list[int] = []
            with session_scope(engine) as session:
                row = session.get(CapacityRequest, rnd.randint(1, 9))
                if row is not None and row.best and row.state in capacity.LIVE_STATES:
                    body = ledger.ReserveIn.model_validate({"offers": row.best["offers"]})
                    try:
                        booking = ledger.reserve(
                            session, row, body, actor="soak", settings=settings, now=clock()
                        )
                        booked = [r.id for r in booking.reservations if r.id is not None]
                        actions["booked"] += 1
                    except ledger.LedgerConflict as exc:
                        actions[f"refused:{exc.code}"] += 1
                    except ledger.LedgerInvalid:
                        actions["refused:invalid"] += 1
            actions["booked_in_a_bounded_room"] += check_booking(engine, booked)
        clock.now += timedelta(seconds=settings.alerts.max_backoff_s + 1)
        sweep_embedded(engine, settings, clock)  # retries due deliveries
        check_events_reconcile(engine)
        check_deliveries(engine, slack)
        check_ledger(engine)
    # The soak did exercise what it claims to.
    assert actions["market"] > 10 and actions["provider_fault"] > 5 and actions["slack_fault"] > 5
    assert actions["vast_fault"] > 3, actions
    # Bookings were held to a stated room, and some found it full.
    assert actions["booked_in_a_bounded_room"] >= 3, actions
    assert actions["refused:capacity_exhausted"] >= 1, actions
    assert len(slack.messages) > 5
    with engine.connect() as conn:
        states: dict[str, int] = dict(
            conn.execute(text("SELECT state, count(*) FROM alert_deliveries GROUP BY state")).all()
        )
    assert set(states) == {"sent"}, states
