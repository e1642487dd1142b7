"""`/v1/providers` and `POST /v1/providers/{name}/poll`, and the embedded poller behind
`broker serve`."""

from __future__ import annotations

import logging
import time
from typing import Any, ClassVar

import pytest
from sqlalchemy import Engine, create_engine, func, select
from sqlmodel import Session

from broker.config import Settings
from broker.domain import Clock as ClockType
from broker.domain import PollResult, Scope, ScopeError, utcnow
from broker.models import PollRun
from broker.offers import count_offers
from broker.polling import ReplaySummary
from broker.sources import REPLAY_DISABLED, Sources, build_sources
from providers import base as provider_base
from providers.base import redact
from providers.replay import Replay
from tests.api.conftest import Clock, Keys, TestClient, bearer
from workers.embedded import EmbeddedPoller, poll_once

SECRET = "sk-live-0123456789abcdef"


class FlakyCloud:
    """A registered adapter whose every poll fails one region with an auth error that
    (before redaction) carried its credential."""

    name: ClassVar[str] = "zz_flaky"

    def __init__(self, clock: ClockType) -> None:
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: ClockType) -> FlakyCloud:
        return cls(clock)

    def fetch(self) -> PollResult:
        message = redact(f"401 Unauthorized for Authorization: Bearer {SECRET}", [SECRET])
        return PollResult(
            offers=(),
            scopes_ok=(),
            scope_errors=(ScopeError(Scope(self.name, "eu-west-1"), "auth_failed", message),),
            fetched_at=self.clock(),
        )


class UnconfiguredCloud:
    name: ClassVar[str] = "zz_unconfigured"

    @classmethod
    def from_settings(cls, settings: Settings, clock: ClockType) -> Any:
        raise provider_base.ProviderDisabled("set BROKER_ZZ__TOKEN to enable zz_unconfigured")


@pytest.fixture
def fake_providers(monkeypatch: pytest.MonkeyPatch) -> None:
    provider_base.discover()
    monkeypatch.setitem(provider_base._REGISTRY, FlakyCloud.name, FlakyCloud)
    monkeypatch.setitem(provider_base._REGISTRY, UnconfiguredCloud.name, UnconfiguredCloud)


def by_name(client: TestClient, key: str) -> dict[str, dict[str, Any]]:
    resp = client.get("/v1/providers", headers=bearer(key))
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["next_cursor"] is None
    return {p["name"]: p for p in body["data"]}


def test_every_registered_provider_is_listed_and_replay_is_ok_after_a_poll(
    client: TestClient, keys: Keys, market: ReplaySummary, engine: Engine, clock: Clock
) -> None:
    providers = by_name(client, keys.viewer)
    assert sorted(providers) == provider_base.provider_names()
    replay = providers["replay"]
    assert replay["status"] == "ok" and replay["scope_errors"] == []
    assert replay["feeds"] == ["azure", "gcp", "lambda_cloud", "vast"]
    assert replay["offers"] == market.offers and replay["stale_offers"] == 0
    assert replay["last_poll_at"] and replay["last_success_at"]
    for p in providers.values():
        assert p["status"] in {"ok", "degraded", "disabled", "pending"}
        assert (p["status"] == "disabled") == (p["reason"] is not None), p

    clock.advance(minutes=10)
    summary = client.post("/v1/providers/replay/poll", headers=bearer(keys.admin)).json()
    assert summary["status"] == "ok" and summary["pipeline_ok"] is True
    assert summary["offers"] > 1000 and summary["scope_errors"] == []
    with Session(engine) as session:
        current = count_offers(session)
    replay = by_name(client, keys.viewer)["replay"]
    assert replay["last_poll_at"].startswith(clock().isoformat()[:19])
    assert replay["offers"] == current

    clock.advance(hours=3)  # nobody polled since: everything is stale now
    replay = by_name(client, keys.viewer)["replay"]
    assert replay["stale_offers"] == replay["offers"] == current


def test_a_degraded_provider_shows_its_redacted_errors(
    client: TestClient, keys: Keys, fake_providers: None
) -> None:
    before = by_name(client, keys.viewer)
    assert before["zz_flaky"]["status"] == "pending" and before["zz_flaky"]["last_poll_at"] is None
    assert before["zz_unconfigured"]["status"] == "disabled"
    assert "BROKER_ZZ__TOKEN" in before["zz_unconfigured"]["reason"]
    # replay is explicitly enabled in these settings, so a configured cloud leaves it on.
    assert before["replay"]["status"] == "pending"

    for _ in range(2):
        resp = client.post("/v1/providers/zz_flaky/poll", headers=bearer(keys.admin))
        assert resp.status_code == 200, resp.text
        summary = resp.json()
        assert summary["status"] == "degraded" and summary["offers"] == 0
        assert summary["scope_errors"][0]["scope"] == "zz_flaky/eu-west-1"
    flaky = by_name(client, keys.viewer)["zz_flaky"]
    assert flaky["status"] == "degraded" and flaky["consecutive_failures"] == 2
    assert flaky["last_poll_at"] and flaky["last_success_at"] is None
    [error] = flaky["scope_errors"]
    assert error["code"] == "auth_failed" and "***" in error["message"]
    assert SECRET not in str(flaky) and SECRET not in resp.text

    events = client.get("/v1/events?types=provider_degraded", headers=bearer(keys.viewer)).json()
    assert [e["provider"] for e in events["data"]] == ["zz_flaky"]  # edge-triggered: once


def test_poll_refuses_unknown_and_disabled_providers(
    client: TestClient, keys: Keys, fake_providers: None
) -> None:
    resp = client.post("/v1/providers/replai/poll", headers=bearer(keys.admin))
    assert resp.status_code == 404
    err = resp.json()["error"]
    assert err["code"] == "not_found" and "replay" in err["message"]
    assert "replay" in err["details"]["providers"]

    resp = client.post("/v1/providers/zz_unconfigured/poll", headers=bearer(keys.admin))
    assert resp.status_code == 409
    err = resp.json()["error"]
    assert err["code"] == "conflict" and "BROKER_ZZ__TOKEN" in err["message"]


def test_replay_is_disabled_when_a_cloud_is_configured(
    fake_providers: None, settings: Settings, clock: Clock
) -> None:
    settings.replay.enabled = None  # the default: replay only when no cloud is configured
    sources = build_sources(settings, clock)
    assert "zz_flaky" in sources.enabled
    assert sources.disabled["replay"] == REPLAY_DISABLED
    assert "zz_unconfigured" in sources.disabled


class LiveLambdaLoggedOut:
    """Stands in for the live `lambda_cloud` adapter: its key was revoked, so every poll
    fails its one scope, the cloud the bundled sample (replay) also feeds."""

    name: ClassVar[str] = "lambda_cloud"

    def __init__(self, clock: ClockType) -> None:
        self.clock = clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: ClockType) -> LiveLambdaLoggedOut:
        return cls(clock)

    def fetch(self) -> PollResult:
        error = ScopeError(Scope(self.name), "auth_failed", "401 Unauthorized: invalid API key")
        return PollResult(offers=(), scopes_ok=(), scope_errors=(error,), fetched_at=self.clock())


@pytest.fixture
def live_lambda_logged_out(monkeypatch: pytest.MonkeyPatch) -> None:
    provider_base.discover()
    monkeypatch.setitem(provider_base._REGISTRY, LiveLambdaLoggedOut.name, LiveLambdaLoggedOut)


def test_two_sources_of_one_cloud_each_show_their_own_health(
    live_lambda_logged_out: None, client: TestClient, keys: Keys, clock: Clock
) -> None:
    """Replay and the live adapter both feed `lambda_cloud`: the live adapter failing does
    not make replay degraded, and replay's good poll does not make the live adapter ok."""

    def poll(name: str) -> dict[str, Any]:
        resp = client.post(f"/v1/providers/{name}/poll", headers=bearer(keys.admin))
        assert resp.status_code == 200, resp.text
        return dict(resp.json())

    assert poll("replay")["status"] == "ok"
    clock.advance(minutes=5)
    assert poll("lambda_cloud")["status"] == "degraded"
    both = by_name(client, keys.viewer)
    replay, live = both["replay"], both["lambda_cloud"]
    assert "lambda_cloud" in replay["feeds"] and live["feeds"] == ["lambda_cloud"]
    assert replay["status"] == "ok" and replay["scope_errors"] == []
    assert replay["consecutive_failures"] == 0 and replay["last_success_at"]
    assert live["status"] == "degraded" and live["consecutive_failures"] == 1
    assert [e["code"] for e in live["scope_errors"]] == ["auth_failed"]
    assert live["last_success_at"] is None

    clock.advance(minutes=5)  # replay polls again, fine: the live adapter is still failing
    assert poll("replay")["status"] == "ok"
    clock.advance(minutes=5)
    poll("lambda_cloud")
    live = by_name(client, keys.viewer)["lambda_cloud"]
    assert live["status"] == "degraded" and live["consecutive_failures"] == 2
    assert live["last_success_at"] is None and live["scope_errors"]
    assert live["last_poll_at"].startswith(clock().isoformat()[:19])
    replay = by_name(client, keys.viewer)["replay"]
    assert replay["status"] == "ok" and replay["scope_errors"] == []
    assert replay["last_poll_at"] < live["last_poll_at"]


def test_providers_page_with_a_cursor(client: TestClient, keys: Keys) -> None:
    names: list[str] = []
    cursor = None
    while True:
        params: dict[str, Any] = {"limit": 1, **({"cursor": cursor} if cursor else {})}
        body = client.get("/v1/providers", headers=bearer(keys.viewer), params=params).json()
        names += [p["name"] for p in body["data"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert names == provider_base.provider_names()


# ------------------------------------------------------------------ embedded poller


def test_embedded_poller_polls_at_once_and_survives_failures(
    sqlite_engine: Engine, settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    settings.poll_interval_s = 3600
    clock = utcnow
    sources = Sources(enabled={"replay": Replay.from_settings(settings, clock)})
    poller = EmbeddedPoller(sqlite_engine, settings, clock, sources=sources)
    assert poller.providers == ["replay"]
    poller.start()
    try:
        deadline = time.monotonic() + 60
        runs = 0
        while time.monotonic() < deadline and not runs:
            time.sleep(0.2)
            with Session(sqlite_engine) as session:
                runs = session.execute(
                    select(func.count()).select_from(PollRun).where(PollRun.status == "ok")  # type: ignore[arg-type]
                ).scalar_one()
        assert runs == 1, "the first poll runs at start, not after the interval"
        job = poller.scheduler.get_job("poll:replay")
        assert job.max_instances == 1 and job.coalesce is True
    finally:
        poller.shutdown(wait=True)

    # A store that cannot be written: logged, not raised.
    broken = create_engine("sqlite:////nonexistent/dir/broker.db")
    with caplog.at_level(logging.ERROR):
        assert poll_once(broken, sources.enabled["replay"], settings, clock) is None
    assert "embedded.poll_failed" in caplog.text
