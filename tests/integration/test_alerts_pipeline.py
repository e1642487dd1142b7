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
from broker.models import AlertDelivery, PollRun
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
