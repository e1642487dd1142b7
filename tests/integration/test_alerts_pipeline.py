"""Alerts end to end in embedded mode (SQLite and PostgreSQL): real snapshots replayed as
polls, the pipeline matching subscriptions, slack_sdk posting to a local fake Slack; the
messages expected are computed from the snapshot CSVs by a small model of the rules, not by
the broker's code."""

from __future__ import annotations

import csv
import functools
import re
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select

from broker import alerts
from broker.auth import get_or_create_team
from broker.config import Settings
from broker.db import session_scope
from broker.models import AlertDelivery, AlertSubscription, PollRun
from broker.offers import IngestResult
from broker.pipeline import after_ingest, sweep_embedded
from broker.polling import replay_results
from providers import replay
from tests.fakes.slack import FakeSlack, slack

A, B = "2026-05-01", "2026-05-08T1849"
DROP = Decimal("0.05")

#: Each subscription: its filter, and the model of it over the CSVs (file, accelerator
#: names of the family, jurisdiction or None, cap per GPU-hour or None).
SUBS: dict[str, dict[str, Any]] = {
    "azure-v100": {
        "filter": {
            "providers": ["azure"],
            "gpu_models": ["V100"],
            "max_price_per_gpu_hour": "1.50",
        },
        "model": ("azure", {"V100", "V100-32GB"}, None, Decimal("1.50")),
    },
    "lambda-a100-eu": {
        "filter": {"providers": ["lambda_cloud"], "gpu_models": ["A100"], "jurisdictions": ["EU"]},
        "model": ("lambda", {"A100", "A100-80GB"}, "EU", None),
    },
    "lambda-h100-eu": {
        "filter": {"providers": ["lambda_cloud"], "gpu_models": ["H100"], "jurisdictions": ["EU"]},
        "model": ("lambda", {"H100"}, "EU", None),
    },
}


def jurisdictions(data_dir: Path, cloud: str) -> dict[str, str]:
    with (data_dir / "regions.csv").open() as f:
        return {r["region"]: r["jurisdiction"] for r in csv.DictReader(f) if r["provider"] == cloud}


def matching(
    data_dir: Path, snapshot: str, model: tuple[Any, ...]
) -> dict[tuple[str, str, str], Decimal]:
    """(region, instance type, market) -> price per GPU-hour of the rows the filter admits."""
    cloud, names, jurisdiction, cap = model
    places = jurisdictions(data_dir, cloud)
    out = {}
    with (data_dir / "offers" / snapshot / f"{cloud}.csv").open() as f:
        for r in csv.DictReader(f):
            if r["AcceleratorName"] not in names or r["Region"] not in places:
                continue
            if jurisdiction and places[r["Region"]] != jurisdiction:
                continue
            for market, column in (("on_demand", "Price"), ("spot", "SpotPrice")):
                if not r[column] or Decimal(r[column]) <= 0:
                    continue
                per_gpu = Decimal(r[column]) / Decimal(r["AcceleratorCount"])
                if cap is None or per_gpu <= cap:
                    out[(r["Region"], r["InstanceType"], market)] = per_gpu
    return out


class EdgeModel:
    """The alerting rule on plain dicts: enter alerts, a drop of 5 % below the price last
    alerted alerts, leaving forgets."""

    def __init__(self) -> None:
        self.alerted: dict[tuple[str, str, str], Decimal] = {}

    def step(self, now: dict[tuple[str, str, str], Decimal]) -> tuple[set[Any], set[Any]]:
        entered = {k for k in now if k not in self.alerted}
        drops = {k for k in now if k in self.alerted and now[k] <= self.alerted[k] * (1 - DROP)}
        self.alerted = {k: (now[k] if k in entered | drops else self.alerted[k]) for k in now}
        return entered, drops


def offer_id(key: str) -> tuple[str, str, str]:
    parts = key.split("/")  # provider/region[/zone]/instance_type/market
    return parts[1], parts[-2], parts[-1]


def pipeline_of(engine: Engine, settings: Settings, tick: Tick, out: IngestResult) -> object:
    return after_ingest(engine, out, settings, tick)


class Tick:
    """A fixed clock."""

    def __init__(self, at: datetime) -> None:
        self.at = at

    def __call__(self) -> datetime:
        return self.at


def subscribe(
    engine: Engine,
    settings: Settings,
    fake: FakeSlack,
    names: list[str],
    now: datetime | None = None,
) -> dict[str, str]:
    """Subscribe a new webhook of `fake` per name of SUBS (team `alpha`); name -> URL."""
    clock = Tick(now or datetime.now(UTC))
    urls = {}
    with session_scope(engine) as session:
        team = get_or_create_team(session, "alpha", clock=clock)
        assert team.id is not None
        for name in names:
            urls[name] = fake.webhook(name.replace("-", ""))
            body = alerts.SubscriptionIn.model_validate(
                {
                    "name": name,
                    "filter": SUBS[name]["filter"],
                    "channel": {"type": "slack_webhook", "url": urls[name]},
                }
            )
            alerts.create_subscription(
                session, team.id, body, actor="test", settings=settings, clock=clock
            )
    return urls


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    yield from slack()


def test_two_real_snapshots_alert_exactly_the_changes(
    engine: Engine, tmp_path: Path, data_dir: Path, fake_slack: FakeSlack
) -> None:
    settings = Settings(
        data_dir=tmp_path,
        slack_webhook_hosts=[fake_slack.host],
        slack_api_url=fake_slack.api_url,
    )
    settings.alerts.max_offers_per_message = 5
    now = datetime(2026, 5, 9, tzinfo=UTC)
    urls = subscribe(engine, settings, fake_slack, list(SUBS), now)

    models = {name: EdgeModel() for name in SUBS}
    plays = [A, B, B, A]
    for i, snapshot in enumerate(plays):
        at = now + timedelta(hours=i)
        before = {name: len(fake_slack.to(url)) for name, url in urls.items()}
        result = replay.read_snapshot(data_dir / "offers" / snapshot, fetched_at=at)
        tick = Tick(at)
        replay_results(
            engine,
            [(snapshot, result)],
            clock=tick,
            after=functools.partial(pipeline_of, engine, settings, tick),
        )
        for name, spec in SUBS.items():
            entered, drops = models[name].step(matching(data_dir, snapshot, spec["model"]))
            got = fake_slack.to(urls[name])[before[name] :]
            where = f"replay {i} ({snapshot}) of {name}"
            if not entered and not drops:
                assert got == [], where
                continue
            assert len(got) == 1, where
            text = got[0].text
            if entered:
                cheapest = min(models[name].alerted[k] for k in entered)
                assert re.match(
                    rf"{len(entered)} new .+ offers?(?: in the EU)?, cheapest "
                    rf"\${cheapest:.2f}/GPU-h on ",
                    text,
                ), (where, text)
            else:
                assert "new" not in text.split(";")[0], where
            if drops:
                assert f"{len(drops)} price drop" in text, (where, text)
            # The record of the message names exactly the offers.
            with session_scope(engine) as session:
                payload = session.execute(
                    select(AlertDelivery.payload)  # type: ignore[call-overload]
                    .join_from(
                        AlertDelivery,
                        alerts.SUBS,
                        alerts.SUBS.c.id == AlertDelivery.subscription_id,
                    )
                    .where(alerts.SUBS.c.name == name)
                    .order_by(AlertDelivery.id.desc())  # type: ignore[union-attr]
                    .limit(1)
                ).scalar_one()
            assert {offer_id(k) for k in payload["offers"]} == entered, where
            assert {offer_id(k) for k in payload["price_drops"]} == drops, where
            sections = [b for b in got[0].blocks if b["type"] == "section"]
            assert len(sections) == min(5, len(entered) + len(drops)), where
    # The scenario exercised every rule at least once.
    assert any("price drop" in m.text for m in fake_slack.messages)
    assert len(fake_slack.to(urls["lambda-h100-eu"])) == 1  # appeared once, never changed
    with session_scope(engine) as session:
        states: dict[str, int] = dict(
            session.execute(
                select(AlertDelivery.state, func.count()).group_by(AlertDelivery.state)  # type: ignore[call-overload]
            ).all()
        )
        unprocessed = session.execute(
            select(func.count()).select_from(PollRun).where(PollRun.processed_at.is_(None))  # type: ignore[union-attr]
        ).scalar_one()
    assert states == {"sent": len(fake_slack.messages)}
    assert unprocessed == 0


def test_a_lost_batch_and_a_failed_send_are_caught_up_by_the_sweep(
    engine: Engine, tmp_path: Path, data_dir: Path, fake_slack: FakeSlack
) -> None:
    """Events ingested but never processed (the process crashed before its task ran) and
    a delivery Slack refused with a 503 are both finished by the sweep, once."""
    from tests.fakes.slack import text_response

    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    settings.alerts.sweep_grace_s = 60
    now = datetime(2026, 5, 9, tzinfo=UTC)
    [url] = subscribe(engine, settings, fake_slack, ["lambda-h100-eu"], now).values()
    result = replay.read_snapshot(data_dir / "offers" / A, fetched_at=now)
    replay_results(engine, [(A, result)], clock=lambda: now)  # no pipeline: "lost"
    assert sweep_embedded(engine, settings, lambda: now)["batches"] == 0  # within grace
    path = url.split(str(fake_slack.server.port), 1)[1]
    fake_slack.server.fail("POST", path, text_response(503, "service_unavailable"))
    later = now + timedelta(minutes=2)
    first = sweep_embedded(engine, settings, lambda: later)
    assert first["batches"] == 1 and first["sent"] == 0 and fake_slack.messages == []
    second = sweep_embedded(engine, settings, lambda: later + timedelta(minutes=1))
    assert second == {"batches": 0, "sent": 1, "unconfirmed": 0}
    third = sweep_embedded(engine, settings, lambda: later + timedelta(minutes=30))
    assert third == {"batches": 0, "sent": 0, "unconfirmed": 0}
    [msg] = fake_slack.messages
    expected = matching(data_dir, A, SUBS["lambda-h100-eu"]["model"])
    assert msg.text.startswith(f"{len(expected)} new ")


def test_leaving_and_reentering_alerts_again(
    engine: Engine, tmp_path: Path, data_dir: Path, fake_slack: FakeSlack
) -> None:
    """Offers withdrawn from a poll leave the match set silently; their return alerts."""
    import shutil

    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    full = data_dir / "offers" / A
    cut = tmp_path / "cut" / A
    cut.mkdir(parents=True)
    with (full / "lambda.csv").open() as src, (cut / "lambda.csv").open("w") as dst:
        rows = list(csv.DictReader(src))
        writer = csv.DictWriter(dst, fieldnames=list(rows[0]))
        writer.writeheader()
        dropped = [
            r for r in rows if r["AcceleratorName"] == "H100" and r["Region"] == "europe-central-1"
        ]
        writer.writerows(r for r in rows if r not in dropped)
    assert dropped
    shutil.copytree(full / "hosts", cut / "hosts")  # unused by lambda; keeps the folder whole
    now = datetime(2026, 5, 9, tzinfo=UTC)
    [url] = subscribe(engine, settings, fake_slack, ["lambda-h100-eu"], now).values()
    for i, folder in enumerate([full, cut, full]):
        tick = Tick(now + timedelta(hours=i))
        result = replay.read_snapshot(folder, fetched_at=tick())
        replay_results(
            engine,
            [(folder.name, result)],
            clock=tick,
            after=functools.partial(pipeline_of, engine, settings, tick),
        )
    texts = [m.text for m in fake_slack.to(url)]
    expected_all = matching(data_dir, A, SUBS["lambda-h100-eu"]["model"])
    assert len(texts) == 2
    assert texts[0].startswith(f"{len(expected_all)} new ")
    assert texts[1].startswith(f"{len(dropped)} new "), texts[1]


def subscribe_to(
    engine: Engine, settings: Settings, name: str, channel: dict[str, str], now: datetime
) -> int:
    """Subscribe SUBS[name]'s filter (team `alpha`) to `channel`; the subscription's id."""
    with session_scope(engine) as session:
        team = get_or_create_team(session, "alpha", clock=lambda: now)
        assert team.id is not None
        body = alerts.SubscriptionIn.model_validate(
            {"name": name, "filter": SUBS[name]["filter"], "channel": channel}
        )
        row, _ = alerts.create_subscription(
            session, team.id, body, actor="test", settings=settings, clock=lambda: now
        )
        assert row.id is not None
        return row.id


def play(engine: Engine, settings: Settings, data_dir: Path, snapshot: str, at: datetime) -> None:
    """Ingest `snapshot` as a poll at `at`, with the pipeline matching and delivering."""
    tick = Tick(at)
    result = replay.read_snapshot(data_dir / "offers" / snapshot, fetched_at=at)
    replay_results(
        engine,
        [(snapshot, result)],
        clock=tick,
        after=functools.partial(pipeline_of, engine, settings, tick),
    )


def deliveries(engine: Engine, subscription_id: int) -> list[tuple[str, str | None]]:
    """(state, last_error) of a subscription's outbox rows, oldest first."""
    with session_scope(engine) as session:
        return [
            (r.state, r.last_error)
            for r in session.execute(
                select(AlertDelivery)
                .where(AlertDelivery.subscription_id == subscription_id)  # type: ignore[arg-type]
                .order_by(AlertDelivery.id)  # type: ignore[arg-type]
            ).scalars()
        ]


@pytest.mark.parametrize(
    ("kind", "error", "refused_by"),
    [
        # An admin restricted posting to #general: Slack's webhook answers 403 with this body.
        ("slack_webhook", "posting_to_general_channel_denied", "webhook"),
        # chat.postMessage: "A workspace preference prevents the authenticated user from posting."
        ("slack_bot", "restricted_action", "channel"),
        # chat.postMessage: the token lacks the workspace access it needs.
        ("slack_bot", "team_access_not_granted", "token"),
    ],
)
def test_a_permanent_refusal_disables_the_subscription_and_nothing_more_is_sent(
    engine: Engine,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
    kind: str,
    error: str,
    refused_by: str,
) -> None:
    """Slack refuses the target for good: the first alert fails, the subscription is
    disabled with Slack's answer as the reason, and the next batch (which alerts a healthy
    twin subscription) sends nothing to the refused target."""
    from tests.fakes.http import FakeRequest
    from tests.fakes.slack import POST_MESSAGE

    settings = Settings(
        data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host], slack_api_url=fake_slack.api_url
    )
    now = datetime(2026, 5, 9, tzinfo=UTC)
    channel: dict[str, str]
    if kind == "slack_webhook":
        url = fake_slack.webhook("refused")
        channel = {"type": kind, "url": url}
        fake_slack.refuse(url, error)
        path, auth = url.split(str(fake_slack.server.port), 1)[1], None
    else:
        token = fake_slack.bot_token()
        channel = {"type": kind, "token": token, "channel": "#gpu-alerts"}
        fake_slack.refuse(token if refused_by == "token" else "#gpu-alerts", error)
        path, auth = POST_MESSAGE, f"Bearer {token}"

    def to_target() -> list[FakeRequest]:
        """The requests sent to the refused webhook, or with the refused bot's token."""
        return [
            r
            for r in fake_slack.server.requests_to(path)
            if auth is None or r.headers.get("authorization") == auth
        ]

    refused = subscribe_to(engine, settings, "lambda-a100-eu", channel, now)
    twin_url = fake_slack.webhook("twin")
    subscribe_to(
        engine, settings, "lambda-a100-eu", {"type": "slack_webhook", "url": twin_url}, now
    )

    play(engine, settings, data_dir, A, now)  # both subscriptions alert
    assert len(to_target()) == 1
    with session_scope(engine) as session:
        sub = session.get(AlertSubscription, refused)
        assert sub is not None
        assert sub.state == alerts.DISABLED
        assert sub.disabled_reason is not None and error in sub.disabled_reason
        if kind == "slack_webhook":
            assert sub.disabled_reason == f"Slack answered 403 {error}"
    [(state, last_error)] = deliveries(engine, refused)
    assert state == alerts.FAILED and last_error is not None and error in last_error

    play(engine, settings, data_dir, B, now + timedelta(hours=1))  # alerts the twin again
    sweep_embedded(engine, settings, lambda: now + timedelta(hours=2))
    assert len(fake_slack.to(twin_url)) == 2
    assert len(to_target()) == 1  # nothing more was sent to the refused target
    assert [m.target for m in fake_slack.messages] == [fake_slack.to(twin_url)[0].target] * 2
    assert len(deliveries(engine, refused)) == 1


@pytest.mark.parametrize("kind", ["slack_webhook", "slack_bot"])
def test_an_answer_cut_off_mid_body_is_retried_and_delivered_once(
    engine: Engine, tmp_path: Path, data_dir: Path, fake_slack: FakeSlack, kind: str
) -> None:
    """`http.client.IncompleteRead` while reading Slack's answer. Cut off before Slack took
    the message (a broken error answer): the send is retried after the backoff and delivered
    once. Cut off after Slack accepted it (what arrived is Slack's success answer): it
    counts as sent and is never sent again."""
    from tests.fakes.http import FakeResponse
    from tests.fakes.slack import POST_MESSAGE, text_response

    settings = Settings(
        data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host], slack_api_url=fake_slack.api_url
    )
    now = datetime(2026, 5, 9, tzinfo=UTC)
    if kind == "slack_webhook":
        url = fake_slack.webhook("cutoff")
        channel = {"type": kind, "url": url}
        path = url.split(str(fake_slack.server.port), 1)[1]
        target = path
        broken = text_response(500, "rollup_error", truncate=True)
        fragment = "webhook: answer cut off (IncompleteRead)"
    else:
        channel = {"type": kind, "token": fake_slack.bot_token(), "channel": "#gpu-alerts"}
        path, target = POST_MESSAGE, "#gpu-alerts"
        broken = FakeResponse(json={"ok": False, "error": "internal_error"}, truncate=True)
        fragment = "Slack API: answer cut off (IncompleteRead)"
    sid = subscribe_to(engine, settings, "lambda-a100-eu", channel, now)

    # 1. The answer breaks off before Slack took the message: retried later, sent once.
    fake_slack.server.fail("POST", path, broken)
    play(engine, settings, data_dir, A, now)
    assert fake_slack.messages == []
    [(state, last_error)] = deliveries(engine, sid)
    assert (state, last_error) == (alerts.PENDING, fragment)
    assert sweep_embedded(engine, settings, lambda: now + timedelta(minutes=1))["sent"] == 1
    assert sweep_embedded(engine, settings, lambda: now + timedelta(hours=1))["sent"] == 0
    assert len(fake_slack.server.requests_to(path)) == 2
    [first] = fake_slack.messages
    assert first.target == target
    assert deliveries(engine, sid) == [(alerts.SENT, None)]

    # 2. Slack accepts the next alert but its answer breaks off: sent, and never again.
    fake_slack.cut_off_answers = 1
    later = now + timedelta(hours=2)
    play(engine, settings, data_dir, B, later)
    sweep_embedded(engine, settings, lambda: later + timedelta(hours=1))
    assert fake_slack.cut_off_answers == 0  # the answer was cut off
    assert len(fake_slack.server.requests_to(path)) == 3
    assert len(fake_slack.messages) == 2
    assert deliveries(engine, sid) == [(alerts.SENT, None), (alerts.SENT, None)]
