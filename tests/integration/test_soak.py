"""A seeded random fault soak (bounded: 80 steps, loopback only) over the embedded pipeline:
a Lambda fake whose market moves and which fails at random (5xx, 429, garbage, timeouts),
Slack failing at random (429, 5xx), alert subscriptions, capacity requests and bookings.
After every step the invariants hold:
- the market events replayed per offer give exactly the stored offers (active, price,
  availability): nothing changed without an event, no event without a change;
- every Slack message belongs to exactly one sent delivery (none twice, none lost once the
  sweep has run);
- the ledger balances: every reservation has its `created` entry, and no offer holds more
  live GPUs than it offered.
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
from broker.config import LambdaCloudSettings, Settings
from broker.db import session_scope
from broker.models import CapacityRequest
from broker.pipeline import after_ingest, sweep_embedded
from broker.polling import poll_source
from providers.lambda_cloud import LambdaCloud
from tests.fakes.http import FakeHttpServer, FakeResponse, serve
from tests.fakes.lambda_cloud_api import PATH, REGIONS, LambdaFake, catalogue, error_body
from tests.fakes.slack import FakeSlack, text_response

STEPS = 80
SEED = 20261123
SECRET = "secret_lambda-soak-0123456789"


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
        over = conn.execute(
            text(
                "SELECT count(*) FROM (SELECT r.offer_key, sum(r.gpus) AS held, "
                "max(o.available_count * o.gpu_count) AS room FROM reservations r "
                "JOIN offers o ON o.key = r.offer_key WHERE r.state IN ('held', 'active') "
                "AND o.available_count IS NOT NULL GROUP BY r.offer_key) x "
                "WHERE x.held > x.room"
            )
        ).scalar_one()
    assert missing == 0 and over == 0


def test_random_fault_soak_keeps_every_invariant(
    engine: Engine, tmp_path: Path, http: FakeHttpServer, slack_http: FakeHttpServer
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
        for model in ("H100", "A100", "B200"):
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
        outcome = poll_source(engine, source, clock=clock)
        after_ingest(engine, outcome, settings, clock)
        if rnd.random() < 0.2:  # someone books the best option of a request
            with session_scope(engine) as session:
                row = session.get(CapacityRequest, rnd.randint(1, 3))
                if row is not None and row.best and row.state in capacity.LIVE_STATES:
                    body = ledger.ReserveIn.model_validate({"offers": row.best["offers"]})
                    try:
                        ledger.reserve(
                            session, row, body, actor="soak", settings=settings, now=clock()
                        )
                        actions["booked"] += 1
                    except (ledger.LedgerConflict, ledger.LedgerInvalid):
                        actions["booking_refused"] += 1
        clock.now += timedelta(seconds=settings.alerts.max_backoff_s + 1)
        sweep_embedded(engine, settings, clock)  # retries due deliveries
        check_events_reconcile(engine)
        check_deliveries(engine, slack)
        check_ledger(engine)
    # The soak did exercise what it claims to.
    assert actions["market"] > 10 and actions["provider_fault"] > 5 and actions["slack_fault"] > 5
    assert len(slack.messages) > 5
    with engine.connect() as conn:
        states: dict[str, int] = dict(
            conn.execute(text("SELECT state, count(*) FROM alert_deliveries GROUP BY state")).all()
        )
    assert set(states) == {"sent"}, states
