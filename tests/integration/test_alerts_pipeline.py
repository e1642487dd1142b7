"""Alerts end to end in embedded mode (SQLite and PostgreSQL): real snapshots replayed as
polls, the pipeline matching subscriptions, the broker's sender posting to a local fake
Slack; the messages expected are computed from the snapshot CSVs by a small model of the
rules, not by the broker's code. Also: a subscription that cannot be sent or a send that
crashes stops nobody else's alerts; workflow webhooks; and due times, claims and the
sweep's cut-offs judged by the database's clock, whatever the worker's clock says."""

from __future__ import annotations

import csv
import functools
import logging
import re
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, update

from broker import alerts
from broker.auth import get_or_create_team
from broker.config import Settings
from broker.db import session_scope
from broker.domain import Clock, utcnow
from broker.models import AlertDelivery, AlertSubscription, PollRun
from broker.offers import IngestResult
from broker.pipeline import after_ingest, deliver_pending, sweep_embedded
from broker.polling import replay_results
from providers import replay
from tests.fakes.slack import FakeSlack, slack, text_response

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
    """The connection closes mid-body while reading Slack's answer. Cut off before Slack took
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
        fragment = "webhook: answer cut off (RemoteProtocolError)"
    else:
        channel = {"type": kind, "token": fake_slack.bot_token(), "channel": "#gpu-alerts"}
        path, target = POST_MESSAGE, "#gpu-alerts"
        broken = FakeResponse(json={"ok": False, "error": "internal_error"}, truncate=True)
        fragment = "Slack API: answer cut off (RemoteProtocolError)"
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


def store_webhook(engine: Engine, settings: Settings, subscription_id: int, url: str) -> None:
    """Seal `url` into a subscription as an older broker, which checked less, stored it."""
    from broker.secrets import SecretBox

    with session_scope(engine) as session:
        session.execute(
            update(AlertSubscription)
            .where(AlertSubscription.id == subscription_id)  # type: ignore[arg-type]
            .values(channel_secret=SecretBox(settings).seal(url))
        )


@pytest.mark.parametrize(
    "bend",
    [
        lambda url: " " + url,  # slack_sdk raised `Invalid URL detected: <the URL>`
        lambda url: url + "é",  # urllib raised UnicodeEncodeError
        lambda url: url + "\x00",  # http.client raised InvalidURL
        lambda url: url.replace("/services/", "/services/\t"),
    ],
)
def test_a_subscription_that_cannot_be_sent_never_stops_a_replay_alerting_the_others(
    engine: Engine,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
    bend: Callable[[str], str],
) -> None:
    """A webhook URL stored before the check was strict, on the first subscription of the
    batch: its delivery fails and the subscription is disabled, with a reason that does not
    echo the URL; the replay goes on and its twin gets the alert."""
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    now = datetime(2026, 5, 9, tzinfo=UTC)
    broken_url = fake_slack.webhook("broken")
    broken = subscribe_to(
        engine, settings, "lambda-a100-eu", {"type": "slack_webhook", "url": broken_url}, now
    )
    store_webhook(engine, settings, broken, bend(broken_url))
    twin_url = fake_slack.webhook("twin")
    subscribe_to(
        engine, settings, "lambda-a100-eu", {"type": "slack_webhook", "url": twin_url}, now
    )

    play(engine, settings, data_dir, A, now)

    assert len(fake_slack.to(twin_url)) == 1
    assert [r.path for r in fake_slack.server.requests] == [fake_slack.to(twin_url)[0].target]
    [(state, last_error)] = deliveries(engine, broken)
    assert state == alerts.FAILED and last_error is not None
    assert last_error.startswith("the stored webhook URL is refused: the webhook URL has")
    assert broken_url.rsplit("/", 1)[1] not in last_error
    with session_scope(engine) as session:
        sub = session.get(AlertSubscription, broken)
        assert sub is not None and (sub.state, sub.disabled_reason) == (alerts.DISABLED, last_error)


def test_a_send_that_crashes_is_recorded_and_the_others_are_still_sent(
    engine: Engine, tmp_path: Path, fake_slack: FakeSlack
) -> None:
    """A row the sender cannot handle (here one an older version wrote without `text`):
    it ends `failed` with the exception's name, not `sending` for ever, and the rows after
    it in the same call are sent."""
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    now = datetime.now(UTC)
    url = fake_slack.webhook()
    sid = subscribe_to(
        engine, settings, "lambda-h100-eu", {"type": "slack_webhook", "url": url}, now
    )
    with session_scope(engine) as session:
        sub = session.get(AlertSubscription, sid)
        assert sub is not None
        odd = alerts.enqueue_test(session, sub, settings)
        good = alerts.enqueue_test(session, sub, settings)
        session.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id == odd)  # type: ignore[arg-type]
            .values(payload={"blocks": []})
        )

    result = deliver_pending(engine, [odd, good], settings)

    assert result["states"] == {"failed": 1, "sent": 1}
    assert deliveries(engine, sid) == [
        (alerts.FAILED, "the send crashed (KeyError); not resent"),
        (alerts.SENT, None),
    ]
    assert len(fake_slack.to(url)) == 1


@pytest.fixture
def json_logs(capsys: pytest.CaptureFixture[str]) -> Iterator[None]:
    """DEBUG logs as JSON lines on the captured stderr (`broker.logs`), the root logger
    restored after."""
    from broker.logs import configure_logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    configure_logging("DEBUG", "json")
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.parametrize("legacy", [False, True])
def test_a_workflow_webhook_gets_the_text_and_its_path_is_masked_in_the_logs(
    engine: Engine,
    tmp_path: Path,
    data_dir: Path,
    fake_slack: FakeSlack,
    json_logs: None,
    capsys: pytest.CaptureFixture[str],
    legacy: bool,
) -> None:
    """Workflow webhooks (`/triggers/...`, `/workflows/...`) take flat string variables: the
    alert is posted as `{"text"}`. The request line httpx logs carries the URL: its path is
    masked like an incoming webhook's."""
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    now = datetime(2026, 5, 9, tzinfo=UTC)
    url = fake_slack.trigger("alerts", legacy=legacy)
    subscribe_to(engine, settings, "lambda-h100-eu", {"type": "slack_webhook", "url": url}, now)

    play(engine, settings, data_dir, A, now)

    [msg] = fake_slack.to(url)
    expected = matching(data_dir, A, SUBS["lambda-h100-eu"]["model"])
    assert msg.text.startswith(f"{len(expected)} new ") and msg.blocks == []
    [request] = fake_slack.server.requests
    assert set(request.json()) == {"text"}
    logs = capsys.readouterr().err
    shape = "/workflows/" if legacy else "/triggers/"
    assert f"POST {fake_slack.server.url}{shape}***" in logs
    assert url.rsplit("/", 1)[1] not in logs and "T0FAKE" not in logs


class WrongProcessClock:
    """This process's own clock, `skew` off the database's (NTP broke, a VM resumed). Not a
    simulation: `process_clock` says so, so it only stamps (`broker.alerts.clock`)."""

    process_clock = True

    def __init__(self, skew: timedelta) -> None:
        self.skew = skew

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.skew


def ingest_only(engine: Engine, data_dir: Path, snapshot: str, clock: Clock) -> IngestResult:
    """Ingest `snapshot` as a poll stamped by `clock`, its processing task lost."""
    got: list[IngestResult] = []
    result = replay.read_snapshot(data_dir / "offers" / snapshot, fetched_at=clock())
    replay_results(engine, [(snapshot, result)], clock=clock, after=got.append)
    return got[0]


def hold_claim(engine: Engine, delivery_id: int, until_s: float) -> None:
    """Leave a row `sending`, claimed until `until_s` from now in the database's time."""
    with session_scope(engine) as session:
        conn = session.connection()
        until = alerts.database_now(conn) + timedelta(seconds=until_s)
        conn.execute(
            update(AlertDelivery)
            .where(AlertDelivery.id == delivery_id)  # type: ignore[arg-type]
            .values(state=alerts.SENDING, claimed_until=until)
        )


def test_a_worker_whose_clock_is_ten_minutes_behind_delivers_every_due_alert(
    engine: Engine, tmp_path: Path, data_dir: Path, fake_slack: FakeSlack
) -> None:
    """Due times, claims and the sweep's cut-offs are judged by the database's clock: a
    process whose clock runs 10 minutes behind finds a batch lost 2 minutes ago, sends what
    it matched, sends the retry of a 503 once it is due, sends a test message a healthy
    process queued, and marks a send cut off a second ago `unconfirmed`."""
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    settings.alerts.sweep_grace_s = 60
    settings.alerts.backoff_base_s = 0.001  # a 503 is due again at once
    behind = WrongProcessClock(timedelta(minutes=-10))
    urls = subscribe(engine, settings, fake_slack, ["lambda-a100-eu", "lambda-h100-eu"])
    flaky = urls["lambda-a100-eu"].split(str(fake_slack.server.port), 1)[1]
    fake_slack.server.fail("POST", flaky, text_response(503, "service_unavailable"))
    ingest_only(engine, data_dir, A, lambda: datetime.now(UTC) - timedelta(minutes=2))

    first = sweep_embedded(engine, settings, behind)
    assert first == {"batches": 1, "sent": 1, "unconfirmed": 0}
    assert sweep_embedded(engine, settings, behind) == {"batches": 0, "sent": 1, "unconfirmed": 0}
    assert {name: len(fake_slack.to(url)) for name, url in urls.items()} == {
        "lambda-a100-eu": 1,
        "lambda-h100-eu": 1,
    }

    with session_scope(engine) as session:
        sub = session.execute(select(AlertSubscription).limit(1)).scalar_one()
        queued = alerts.enqueue_test(session, sub, settings)  # by a healthy process
        cut = alerts.enqueue_test(session, sub, settings)
    assert alerts.deliver(engine, queued, settings, behind).sent
    hold_claim(engine, cut, -1.0)  # its sender died a second ago, mid-call
    assert sweep_embedded(engine, settings, behind)["unconfirmed"] == 1
    assert len(fake_slack.messages) == 3


def test_a_worker_whose_clock_is_ten_minutes_ahead_sends_nothing_early(
    engine: Engine, tmp_path: Path, data_dir: Path, fake_slack: FakeSlack
) -> None:
    """The other way round: a process 10 minutes ahead keeps Slack's Retry-After, leaves a
    batch ingested just now to its own task, and a send in progress to its sender."""
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    settings.alerts.sweep_grace_s = 60
    ahead = WrongProcessClock(timedelta(minutes=10))
    [url] = subscribe(engine, settings, fake_slack, ["lambda-h100-eu"]).values()
    path = url.split(str(fake_slack.server.port), 1)[1]
    fake_slack.server.fail("POST", path, text_response(429, "rate_limited", {"Retry-After": "60"}))
    with session_scope(engine) as session:
        sub = session.execute(select(AlertSubscription)).scalar_one()
        limited = alerts.enqueue_test(session, sub, settings)
        sending = alerts.enqueue_test(session, sub, settings)
    assert alerts.deliver(engine, limited, settings).state == alerts.PENDING  # a healthy worker
    hold_claim(engine, sending, 60.0)  # a healthy worker is sending it now
    ingest_only(engine, data_dir, A, utcnow)

    early = alerts.deliver(engine, limited, settings, ahead)
    assert early.state == alerts.PENDING and early.retry_in_s is not None
    assert 55 < early.retry_in_s <= 60
    assert sweep_embedded(engine, settings, ahead) == {"batches": 0, "sent": 0, "unconfirmed": 0}
    assert alerts.deliver(engine, sending, settings, ahead).state == alerts.SENDING
    assert len(fake_slack.server.requests) == 1 and fake_slack.messages == []


def test_the_outbox_writes_one_row_per_dedupe_key_whenever_it_is_written(
    engine: Engine, tmp_path: Path, fake_slack: FakeSlack
) -> None:
    """Whatever else stops a batch from being processed twice (the batch claim), the outbox
    itself keeps one row per dedupe key: writing the same alert again later, as a second
    processing of the same events would, returns the first row."""
    settings = Settings(data_dir=tmp_path, slack_webhook_hosts=[fake_slack.host])
    now = datetime(2026, 5, 9, tzinfo=UTC)
    [url] = subscribe(engine, settings, fake_slack, ["lambda-h100-eu"], now).values()
    with session_scope(engine) as session:
        sub = session.execute(select(AlertSubscription)).scalars().one()
        conn = session.connection()
        first = alerts.write_delivery(conn, sub, "offers", "batch-7:sub", {"text": "x"}, now, now)
        again = alerts.write_delivery(
            conn, sub, "offers", "batch-7:sub", {"text": "x"}, now + timedelta(minutes=5), now
        )
    assert first == again
    with session_scope(engine) as session:
        assert session.execute(select(func.count()).select_from(AlertDelivery)).scalar_one() == 1
    assert url
