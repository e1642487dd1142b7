"""`/v1/subscriptions` over HTTP, with the broker's sender talking to a local fake Slack:
CRUD, secrets write-only and encrypted at rest, the allow-list and Slack's URL shapes, test
messages, Slack's errors (disable on gone, retry on 429/5xx), redirects never followed,
stored URLs that cannot be sent, team isolation and roles."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, func, select, text
from sqlmodel import col

from broker import gpus
from broker.config import ReplaySettings, Settings
from broker.db import session_scope
from broker.models import AlertDelivery, AlertMatch, AlertSubscription, StoredOffer
from broker.polling import ReplaySummary
from tests.api.conftest import Clock, Keys, TestClient, bearer
from tests.fakes.http import FakeResponse, closed_port
from tests.fakes.slack import FakeSlack, slack, text_response


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    yield from slack()


@pytest.fixture
def settings(tmp_path: Path, fake_slack: FakeSlack) -> Settings:
    return Settings(
        data_dir=tmp_path,
        replay=ReplaySettings(enabled=True, step_s=10**9),
        slack_webhook_hosts=["hooks.slack.com", fake_slack.host],
        slack_api_url=fake_slack.api_url,
    )


#: A well-formed webhook URL on an allowed host; the tests bend it.
HOOK = "https://hooks.slack.com/services/T0AAA/B0BBB/SECRETpw"


def webhook_body(url: str, **kw: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "name": "eu h100",
        "filter": {"gpu_models": ["H100"], "jurisdictions": ["EU"]},
        "channel": {"type": "slack_webhook", "url": url},
    }
    body.update(kw)
    return body


def count(engine: Engine, model: Any) -> int:
    with session_scope(engine) as s:
        return int(s.execute(select(func.count()).select_from(model)).scalar_one())


def test_create_seeds_the_match_set_and_hides_the_url(
    client: TestClient,
    keys: Keys,
    engine: Engine,
    market: ReplaySummary,
    fake_slack: FakeSlack,
) -> None:
    url = fake_slack.webhook()
    r = client.post("/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    sub = r.json()
    secret_part = url.rsplit("/", 1)[-1]
    assert secret_part not in r.text
    assert sub["channel"] == {
        "type": "slack_webhook",
        "url": f"{fake_slack.server.url}/…{url[-4:]}",
    }
    assert sub["state"] == "active" and sub["kind"] == "offers"
    # What matches now, counted straight from the offers table.
    h100 = gpus.resolve_query("H100")
    with session_scope(engine) as s:
        expected = s.execute(
            select(func.count())
            .select_from(StoredOffer)
            .where(
                StoredOffer.active,  # type: ignore[arg-type]
                col(StoredOffer.gpu_model).in_(h100),
                StoredOffer.jurisdiction == "EU",  # type: ignore[arg-type]
                StoredOffer.availability != "unavailable",  # type: ignore[arg-type]
            )
        ).scalar_one()
        stored = s.execute(
            text("SELECT channel_secret FROM alert_subscriptions WHERE id = :i"), {"i": sub["id"]}
        ).scalar_one()
    assert expected > 0
    assert sub["matching_offers"] == expected == count(engine, AlertMatch)
    assert secret_part not in stored and "hooks" not in stored and "127.0.0.1" not in stored
    # Seeding is silent.
    assert fake_slack.messages == [] and count(engine, AlertDelivery) == 0
    got = client.get(f"/v1/subscriptions/{sub['id']}", headers=bearer(keys.admin)).json()
    assert got["channel"] == sub["channel"] and got["matching_offers"] is None
    listed = client.get("/v1/subscriptions", headers=bearer(keys.member)).json()
    assert [s["id"] for s in listed["data"]] == [sub["id"]]


def test_test_message_reaches_the_webhook(
    client: TestClient, keys: Keys, engine: Engine, fake_slack: FakeSlack
) -> None:
    url = fake_slack.webhook()
    sub = client.post("/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member))
    sid = sub.json()["id"]
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member))
    assert r.status_code == 200, r.text
    assert r.json()["state"] == "sent" and r.json()["attempts"] == 1
    [msg] = fake_slack.to(url)
    assert "eu h100" in msg.text and "in the EU" in msg.text
    assert msg.blocks[0]["type"] == "section"
    deliveries = client.get(f"/v1/subscriptions/{sid}/deliveries", headers=bearer(keys.admin))
    assert [d["state"] for d in deliveries.json()["data"]] == ["sent"]


def test_bot_channel_and_a_gone_channel_disables_until_reenabled(
    client: TestClient, keys: Keys, fake_slack: FakeSlack
) -> None:
    token = fake_slack.bot_token()
    body = webhook_body("", channel={"type": "slack_bot", "token": token, "channel": "#gpu-alerts"})
    r = client.post("/v1/subscriptions", json=body, headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    assert token not in r.text
    assert r.json()["channel"] == {
        "type": "slack_bot",
        "token": f"xoxb-…{token[-4:]}",
        "channel": "#gpu-alerts",
    }
    sid = r.json()["id"]
    assert (
        client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()["state"]
        == "sent"
    )
    assert [m.target for m in fake_slack.messages] == ["#gpu-alerts"]
    assert (
        fake_slack.server.requests_to("/api/chat.postMessage")[0].headers["authorization"]
        == f"Bearer {token}"
    )

    fake_slack.channels.discard("#gpu-alerts")  # archived/deleted in Slack
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member))
    assert r.json()["state"] == "failed"
    assert "channel_not_found" in r.json()["last_error"]
    sub = client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).json()
    assert sub["state"] == "disabled" and "channel_not_found" in sub["disabled_reason"]

    fake_slack.channels.add("#gpu-alerts")
    r = client.patch(
        f"/v1/subscriptions/{sid}", json={"state": "active"}, headers=bearer(keys.member)
    )
    assert r.json()["state"] == "active" and r.json()["disabled_reason"] is None
    assert (
        client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()["state"]
        == "sent"
    )


def test_webhook_404_disables_and_429_5xx_are_retried(
    client: TestClient, keys: Keys, fake_slack: FakeSlack, clock: Clock, settings: Settings
) -> None:
    url = fake_slack.webhook()
    path = url.split(str(fake_slack.server.port), 1)[1]
    sid = client.post(
        "/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member)
    ).json()["id"]

    fake_slack.server.fail("POST", path, text_response(429, "rate_limited", {"Retry-After": "7"}))
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    assert r["state"] == "pending" and r["attempts"] == 1
    assert r["next_attempt_at"].startswith(
        (clock() + timedelta(seconds=7)).strftime("%Y-%m-%dT%H:%M:%S")
    )

    fake_slack.server.fail("POST", path, text_response(500, "rollup_error"))
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    assert r["state"] == "pending" and r["last_error"] == "Slack answered 500 rollup_error"
    assert url not in r["last_error"]
    # A body that is not a Slack error code (a page some proxy or redirect served) is dropped.
    page = '<html>{"AccessKeyId": "ASIA-from-some-internal-service"}</html>'
    fake_slack.server.fail("POST", path, text_response(502, page))
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    assert r["state"] == "pending" and r["last_error"] == "Slack answered 502"

    fake_slack.server.fail("POST", path, text_response(404, "no_service"))
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    assert r["state"] == "failed" and "no_service" in r["last_error"]
    sub = client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).json()
    assert sub["state"] == "disabled" and "404" in sub["disabled_reason"]
    assert fake_slack.messages == []


@pytest.mark.parametrize(
    ("channel", "refuse", "error", "reason"),
    [
        # Posting to #general is restricted and the webhook's creator may not post there:
        # Slack's webhook answers 403 with this body (api.slack.com/messaging/webhooks).
        (
            "slack_webhook",
            "webhook",
            "posting_to_general_channel_denied",
            "Slack answered 403 posting_to_general_channel_denied",
        ),
        # chat.postMessage answers HTTP 200 with `{"ok": false, "error": ...}`.
        ("slack_bot", "#gpu-alerts", "restricted_action", "Slack answered 200 restricted_action"),
        ("slack_bot", "token", "ekm_access_denied", "Slack answered 200 ekm_access_denied"),
    ],
)
def test_a_permanent_refusal_disables_with_slacks_reason_until_reenabled(
    client: TestClient,
    keys: Keys,
    fake_slack: FakeSlack,
    channel: str,
    refuse: str,
    error: str,
    reason: str,
) -> None:
    if channel == "slack_webhook":
        url = fake_slack.webhook()
        body = webhook_body(url)
        target = url
        requests = url.split(str(fake_slack.server.port), 1)[1]
    else:
        token = fake_slack.bot_token()
        body = webhook_body(
            "", channel={"type": "slack_bot", "token": token, "channel": "#gpu-alerts"}
        )
        target = token if refuse == "token" else refuse
        requests = "/api/chat.postMessage"
    sid = client.post("/v1/subscriptions", json=body, headers=bearer(keys.member)).json()["id"]
    fake_slack.refuse(target, error)

    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    assert (r["state"], r["attempts"], r["last_error"]) == ("failed", 1, reason)
    sub = client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).json()
    assert (sub["state"], sub["disabled_reason"]) == ("disabled", reason)
    assert len(fake_slack.server.requests_to(requests)) == 1 and fake_slack.messages == []

    # Fixed in Slack and re-enabled: delivered again.
    fake_slack.restore(target)
    r = client.patch(
        f"/v1/subscriptions/{sid}", json={"state": "active"}, headers=bearer(keys.member)
    )
    assert (r.json()["state"], r.json()["disabled_reason"]) == ("active", None)
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member))
    assert r.json()["state"] == "sent"
    assert len(fake_slack.messages) == 1


def test_an_answer_cut_off_mid_body_is_retried_with_backoff_and_sent_once(
    engine: Engine,
    client: TestClient,
    keys: Keys,
    fake_slack: FakeSlack,
    clock: Clock,
    settings: Settings,
) -> None:
    """A 500 whose body breaks off (the connection closes before its Content-Length): a
    transient send error, not an exception out of the delivery."""
    from broker import alerts

    url = fake_slack.webhook()
    path = url.split(str(fake_slack.server.port), 1)[1]
    sid = client.post(
        "/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member)
    ).json()["id"]
    fake_slack.server.fail("POST", path, text_response(500, "rollup_error", truncate=True))
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["attempts"]) == ("pending", 1)
    assert out["last_error"] == "webhook: answer cut off (RemoteProtocolError)"
    assert out["next_attempt_at"].startswith(
        (clock() + timedelta(seconds=settings.alerts.backoff_base_s)).strftime("%Y-%m-%dT%H:%M:%S")
    )
    assert alerts.deliver(engine, out["id"], settings, clock).state == "pending"  # not yet due
    clock.advance(seconds=settings.alerts.backoff_base_s)
    assert alerts.deliver(engine, out["id"], settings, clock).sent
    assert alerts.deliver(engine, out["id"], settings, clock).state == "sent"
    assert len(fake_slack.server.requests_to(path)) == 2
    [msg] = fake_slack.to(url)
    assert "eu h100" in msg.text


def test_gives_up_after_max_attempts(
    engine: Engine,
    client: TestClient,
    keys: Keys,
    fake_slack: FakeSlack,
    clock: Clock,
    settings: Settings,
) -> None:
    from broker import alerts

    settings.alerts.max_attempts = 3
    url = fake_slack.webhook()
    path = url.split(str(fake_slack.server.port), 1)[1]
    sid = client.post(
        "/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member)
    ).json()["id"]
    fake_slack.server.fail("POST", path, *[FakeResponse(503, body=b"") for _ in range(3)])
    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    did = r["id"]
    states = [r["state"]]
    for _ in range(3):
        clock.advance(hours=1)
        states.append(alerts.deliver(engine, did, settings, clock).state)
    assert states == ["pending", "pending", "failed", "failed"]
    assert len(fake_slack.server.requests_to(path)) == 3
    assert fake_slack.messages == []


@pytest.mark.parametrize(
    ("patch", "code"),
    [
        (
            {"channel": {"type": "slack_webhook", "url": "https://evil.example/services/x"}},
            "webhook_host_not_allowed",
        ),
        (
            {"channel": {"type": "slack_webhook", "url": "http://169.254.169.254/latest/"}},
            "webhook_host_not_allowed",
        ),
        ({"channel": {"type": "slack_webhook", "url": "file:///etc/passwd"}}, "invalid_webhook"),
        # URLs some HTTP layer strips, re-encodes or refuses: the URL called would not be the
        # URL stored (then a 500 on /test, a row stuck `sending`).
        ({"channel": {"type": "slack_webhook", "url": " " + HOOK}}, "invalid_webhook"),
        ({"channel": {"type": "slack_webhook", "url": HOOK + "\t"}}, "invalid_webhook"),
        # (A NUL is refused by the body check before: `broker.api.limits`.)
        ({"channel": {"type": "slack_webhook", "url": HOOK + "\u0000"}}, "invalid_request"),
        ({"channel": {"type": "slack_webhook", "url": HOOK + "\u00e9"}}, "invalid_webhook"),
        ({"channel": {"type": "slack_webhook", "url": HOOK + "?x=1"}}, "invalid_webhook"),
        # Not a path shape Slack issues (a legacy workflow webhook has four segments).
        (
            {"channel": {"type": "slack_webhook", "url": HOOK.replace("services", "workflows")}},
            "invalid_webhook",
        ),
        (
            {"channel": {"type": "slack_webhook", "url": "https://hooks.slack.com/x/SECRETpw"}},
            "invalid_webhook",
        ),
        ({"channel": {"type": "email", "to": "a@b"}}, "invalid_request"),
        ({"filter": {"gpu_models": ["H1000"]}}, "invalid_request"),
        ({"filter": {"regions": ["eu-west-1"] * 101}}, "invalid_request"),
        ({"filter": {"providers": ["p" * 129]}}, "invalid_request"),
        ({"filter": None, "request_id": None}, "invalid_request"),
        ({"price_drop_pct": 2}, "invalid_request"),
        ({"name": ""}, "invalid_request"),
    ],
)
def test_bad_bodies_are_422_with_a_reason_and_write_nothing(
    client: TestClient, keys: Keys, engine: Engine, patch: dict[str, Any], code: str
) -> None:
    body = webhook_body("https://hooks.slack.com/services/T1/B1/x")
    body.update(patch)
    r = client.post("/v1/subscriptions", json=body, headers=bearer(keys.member))
    assert r.status_code == 422, r.text
    assert r.json()["error"]["code"] == code
    assert r.json()["error"]["message"]
    assert "passwd" not in r.text and "SECRET" not in r.text  # the URL is not echoed
    assert count(engine, AlertSubscription) == 0


def test_isolation_roles_and_delete(
    client: TestClient, keys: Keys, engine: Engine, fake_slack: FakeSlack
) -> None:
    url = fake_slack.webhook()
    r = client.post("/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.viewer))
    assert r.status_code == 403
    sid = client.post(
        "/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member)
    ).json()["id"]
    for method, path in [
        ("GET", f"/v1/subscriptions/{sid}"),
        ("PATCH", f"/v1/subscriptions/{sid}"),
        ("DELETE", f"/v1/subscriptions/{sid}"),
        ("POST", f"/v1/subscriptions/{sid}/test"),
        ("GET", f"/v1/subscriptions/{sid}/deliveries"),
    ]:
        r = client.request(
            method, path, json={} if method == "PATCH" else None, headers=bearer(keys.viewer)
        )
        assert r.status_code in (403, 404), (method, path, r.status_code)
        if method == "GET":
            assert r.status_code == 404
    assert client.get("/v1/subscriptions", headers=bearer(keys.viewer)).json()["data"] == []
    assert client.get("/v1/subscriptions").status_code == 401
    # Another team's capacity request cannot be followed.
    req = client.post(
        "/v1/requests",
        json={"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24},
        headers=bearer(keys.member),
    ).json()
    body = webhook_body(url, filter=None, request_id=req["id"])
    ok = client.post("/v1/subscriptions", json=body, headers=bearer(keys.member))
    assert ok.status_code == 201 and ok.json()["kind"] == "request"
    assert client.delete(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).status_code == 204
    assert client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).status_code == 404
    assert count(engine, AlertMatch) == 0


#: Where a redirect points: an internal service the broker can reach but Slack users must not.
INTERNAL = "/latest/meta-data/iam/security-credentials/broker"


@pytest.mark.parametrize("status", [302, 307])
@pytest.mark.parametrize("port", ["open", "closed"])
def test_a_webhook_redirect_is_never_followed_and_disables_the_subscription(
    client: TestClient, keys: Keys, fake_slack: FakeSlack, status: int, port: str
) -> None:
    """An allowed webhook host answers a redirect to an internal address: nothing reaches
    it, the alert fails with a fixed reason (no Location, no body) that is the same whether
    the port pointed at is open or closed, and the subscription is disabled."""
    for method in ("GET", "POST"):
        fake_slack.server.route(method, INTERNAL, text_response(200, "ok"))
    base = fake_slack.server.url if port == "open" else f"http://127.0.0.1:{closed_port()}"
    url = fake_slack.webhook()
    sid = client.post(
        "/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member)
    ).json()["id"]
    fake_slack.redirect(url, base + INTERNAL, status)

    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member))
    assert r.status_code == 200, r.text
    reason = f"webhook answered {status}: a redirect, never followed"
    assert (r.json()["state"], r.json()["attempts"], r.json()["last_error"]) == (
        "failed",
        1,
        reason,
    )
    sub = client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).json()
    assert (sub["state"], sub["disabled_reason"]) == ("disabled", reason)
    assert fake_slack.server.requests_to(INTERNAL) == [] and fake_slack.messages == []
    assert len(fake_slack.to(url)) == 0 and len(fake_slack.server.requests) == 1


def test_the_web_api_redirecting_is_never_followed_either(
    client: TestClient, keys: Keys, fake_slack: FakeSlack
) -> None:
    from tests.fakes.slack import POST_MESSAGE

    fake_slack.server.route("GET", INTERNAL, text_response(200, '{"ok": true}'))
    token = fake_slack.bot_token()
    body = webhook_body("", channel={"type": "slack_bot", "token": token, "channel": "#gpu-alerts"})
    sid = client.post("/v1/subscriptions", json=body, headers=bearer(keys.member)).json()["id"]
    fake_slack.redirect(POST_MESSAGE, fake_slack.server.url + INTERNAL, 302)

    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member)).json()
    reason = "Slack API answered 302: a redirect, never followed"
    assert (r["state"], r["last_error"]) == ("failed", reason)
    sub = client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).json()
    assert (sub["state"], sub["disabled_reason"]) == ("disabled", reason)
    assert fake_slack.server.requests_to(INTERNAL) == [] and fake_slack.messages == []


def store_webhook(engine: Engine, settings: Settings, subscription_id: int, url: str) -> None:
    """Seal `url` into a subscription as an older broker, which checked less, stored it."""
    from broker.secrets import SecretBox

    with session_scope(engine) as s:
        s.execute(
            text("UPDATE alert_subscriptions SET channel_secret = :c WHERE id = :i"),
            {"c": SecretBox(settings).seal(url), "i": subscription_id},
        )


@pytest.mark.parametrize(
    ("bend", "reason"),
    [
        (lambda url: " " + url, "a space at position 1"),
        (lambda url: url + "\u00e9", "a non-ASCII character"),
        (lambda url: url + "\x00", "whitespace or a control character"),
        (lambda url: url.replace("/services/", "/hooks/"), "not one Slack issues"),
    ],
)
def test_a_stored_url_that_cannot_be_sent_fails_and_disables_without_a_call(
    client: TestClient,
    keys: Keys,
    engine: Engine,
    fake_slack: FakeSlack,
    settings: Settings,
    bend: Callable[[str], str],
    reason: str,
) -> None:
    """Stored before the check was strict: `/test` answers (no 500), the delivery ends
    `failed` (never stuck `sending`), the subscription is disabled, nothing is called."""
    url = fake_slack.webhook()
    sid = client.post(
        "/v1/subscriptions", json=webhook_body(url), headers=bearer(keys.member)
    ).json()["id"]
    store_webhook(engine, settings, sid, bend(url))

    r = client.post(f"/v1/subscriptions/{sid}/test", headers=bearer(keys.member))
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["state"], out["attempts"]) == ("failed", 0)
    assert out["last_error"].startswith("the stored webhook URL is refused: ")
    assert reason in out["last_error"] and url.rsplit("/", 1)[1] not in r.text
    sub = client.get(f"/v1/subscriptions/{sid}", headers=bearer(keys.member)).json()
    assert (sub["state"], sub["disabled_reason"]) == ("disabled", out["last_error"])
    assert fake_slack.server.requests == []
