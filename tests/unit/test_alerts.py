"""The pure parts of alerts: webhook URLs checked (allow-list against SSRF, Slack's shapes,
nothing a client would rewrite) and redacted, filters, message text, Slack answers
classified (redirects never followed)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from pydantic import ValidationError

from broker import alerts
from broker.alerts import slack
from broker.alerts.slack import Answer
from broker.config import Settings
from broker.domain import redact
from broker.scoring import ScoringConfig

NOW = datetime(2026, 5, 21, 12, 0, tzinfo=UTC)


def settings(tmp_path: Path, hosts: str = "hooks.slack.com,127.0.0.1:8081") -> Settings:
    return Settings(data_dir=tmp_path, slack_webhook_hosts=hosts.split(","))


@pytest.mark.parametrize(
    ("url", "code"),
    [
        ("https://hooks.slack.com/services/T1/B2/abc", None),
        ("http://127.0.0.1:8081/services/T1/B2/abc", None),
        ("http://hooks.slack.com/services/T1/B2/abc", "invalid_webhook"),
        ("http://169.254.169.254/latest/meta-data/", "webhook_host_not_allowed"),
        ("https://169.254.169.254/latest/meta-data/", "webhook_host_not_allowed"),
        ("file:///etc/passwd", "invalid_webhook"),
        ("https://10.0.0.7/services/x", "webhook_host_not_allowed"),
        ("https://127.0.0.1:9999/services/x", "webhook_host_not_allowed"),
        ("https://hooks.slack.com.evil.example/services/x", "webhook_host_not_allowed"),
        ("https://user:pw@hooks.slack.com/services/x", "invalid_webhook"),
        ("https://hooks.slack.com/", "invalid_webhook"),
        ("gopher://hooks.slack.com/x", "invalid_webhook"),
        ("not a url", "invalid_webhook"),
    ],
)
def test_webhook_urls_must_be_on_the_allow_list(tmp_path: Path, url: str, code: str | None) -> None:
    if code is None:
        alerts.check_webhook_url(url, settings(tmp_path))
        return
    with pytest.raises(alerts.AlertError) as err:
        alerts.check_webhook_url(url, settings(tmp_path))
    assert err.value.code == code
    assert "abc" not in str(err.value) and "passwd" not in str(err.value)


HOOK = "https://hooks.slack.com/services/T0AAA/B0BBB/SECRETabc"


@pytest.mark.parametrize(
    "url",
    [
        HOOK,
        # Workflow Builder's webhook triggers and its legacy workflow webhooks (module doc of
        # broker.alerts.webhooks for the shapes and their sources).
        "https://hooks.slack.com/triggers/T0AAA/3141592653589/SECRETabc",
        "https://hooks.slack.com/workflows/T0AAA/A0BBB/401462654968871023/SECRETabc",
        "http://127.0.0.1:8081/triggers/T0AAA/3141592653589/SECRETabc",
    ],
)
def test_slacks_webhook_shapes_are_accepted(tmp_path: Path, url: str) -> None:
    alerts.check_webhook_url(url, settings(tmp_path))


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        (" " + HOOK, "a space at position 1"),
        ("\t" + HOOK, "whitespace or a control character at position 1"),
        (HOOK + " ", "a space at position 55"),
        (HOOK.replace("SECRET", "SECRET\t"), "whitespace or a control character"),
        (HOOK + "\n", "whitespace or a control character"),
        (HOOK + "\x00", "whitespace or a control character at position 55"),
        (HOOK.replace("SECRET", "SECRET\x7f"), "control character"),
        (HOOK + "é", "non-ASCII character at position 55"),
        (HOOK.replace("slack", "slаck"), "non-ASCII character"),  # a Cyrillic а
        (HOOK.replace("SECRET", "SECRET%20"), "not one Slack issues"),
        (HOOK + "?x=1", "query or fragment"),
        (HOOK + "#frag", "query or fragment"),
        (HOOK + "?", "query or fragment"),
        (HOOK + "/", "not one Slack issues"),
        (HOOK + "/more", "not one Slack issues"),
        ("https://hooks.slack.com/services/SECRETabc", "not one Slack issues"),
        ("https://hooks.slack.com/services/T0AAA/../SECRETabc", "not one Slack issues"),
        ("https://hooks.slack.com/triggers/T0AAA/SECRETabc", "not one Slack issues"),
        ("https://hooks.slack.com/workflows/T0AAA/A0/SECRETabc", "not one Slack issues"),
        ("https://hooks.slack.com/api/SECRETabc", "not one Slack issues"),
        ("https://hooks.slack.com\\@evil.example/services/T/B/SECRETabc", "credentials"),
    ],
)
def test_webhook_urls_that_cannot_be_sent_as_stored_are_refused_without_echo(
    tmp_path: Path, url: str, reason: str
) -> None:
    """Characters some HTTP layer strips, re-encodes or refuses, and paths that are not
    Slack's, are refused when stored: the URL called must be the URL stored."""
    with pytest.raises(alerts.AlertError) as err:
        alerts.check_webhook_url(url, settings(tmp_path))
    assert err.value.code == "invalid_webhook" and err.value.field == "channel.url"
    assert reason in str(err.value)
    assert "SECRET" not in str(err.value) and "T0AAA" not in str(err.value)


def test_every_webhook_path_shape_is_redacted() -> None:
    for url in (
        HOOK,
        "https://hooks.slack.com/triggers/T0AAA/3141592653589/SECRETabc",
        "https://hooks.slack.com/workflows/T0AAA/A0BBB/401462654968871023/SECRETabc",
    ):
        out = redact(f'HTTP Request: POST {url} "HTTP/1.1 302 Found"')
        assert "SECRET" not in out and "T0AAA" not in out, out
        assert out.startswith("HTTP Request: POST https://hooks.slack.com/")
        assert out.endswith('/*** "HTTP/1.1 302 Found"')


def test_workflow_webhooks_get_text_only() -> None:
    assert alerts.webhook_kind(HOOK) == "incoming"
    assert alerts.webhook_kind("https://hooks.slack.com/triggers/T0/1/x") == "workflow"
    assert alerts.webhook_kind("https://hooks.slack.com/workflows/T0/A0/1/x") == "workflow"


def test_a_loopback_host_needs_its_own_entry_even_for_http(tmp_path: Path) -> None:
    with pytest.raises(alerts.AlertError):
        alerts.check_webhook_url(
            "http://127.0.0.1:8081/services/x", settings(tmp_path, "hooks.slack.com")
        )


def test_masks_keep_only_the_host_and_last_characters() -> None:
    url = "https://hooks.slack.com/services/T000/B000/SECRETsecretSECRET"
    masked = alerts.mask_webhook(url)
    assert masked == "https://hooks.slack.com/…CRET"
    assert "T000" not in masked and "SECRETsecret" not in masked
    token = "xoxb-1234-5678-abcdefabcdef"
    assert alerts.mask_token(token, "#gpu") == "#gpu via xoxb-…cdef"


def offer(**kw: Any) -> SimpleNamespace:
    base: dict[str, Any] = {
        "key": "aws/eu-west-1/p5.48xlarge/on_demand",
        "provider": "aws",
        "region": "eu-west-1",
        "zone": None,
        "instance_type": "p5.48xlarge",
        "market": "on_demand",
        "gpu_model": "H100-SXM",
        "gpu_count": Decimal(8),
        "price_per_hour": Decimal("24.00"),
        "price_per_gpu_hour": Decimal("3.00"),
        "country": "IE",
        "jurisdiction": "EU",
        "availability": "available",
        "available_count": None,
        "earliest_start": None,
        "upfront_fee": None,
        "min_duration_hours": None,
        "max_duration_hours": None,
        "vcpus": Decimal(192),
        "active": True,
        "last_seen": NOW,
        "anomalies": [],
    }
    base.update(kw)
    return SimpleNamespace(**base)


def compiled(**spec: Any) -> alerts.CompiledFilter:
    body = alerts.OfferFilter.model_validate(spec)
    return alerts.CompiledFilter.of(body.model_dump(mode="json"))


def test_filter_fields_each_narrow() -> None:
    f = compiled(
        gpu_models=["H100"],
        min_gpus=8,
        jurisdictions=["eu"],
        markets=["on_demand"],
        max_price_per_gpu_hour="3.00",
    )
    assert f.matches(offer())
    assert not f.matches(offer(gpu_model="A100"))
    assert not f.matches(offer(gpu_count=Decimal(4)))
    assert not f.matches(offer(jurisdiction="US"))
    assert not f.matches(offer(jurisdiction=None))
    assert not f.matches(offer(market="spot"))
    assert not f.matches(offer(price_per_gpu_hour=Decimal("3.01")))
    assert not f.matches(offer(availability="unavailable"))
    assert not f.matches(offer(active=False))
    assert f.matches(offer(availability="unknown"))
    assert compiled(regions=["aws/eu-west-1"]).matches(offer())
    assert compiled(regions=["eu-west-1"]).matches(offer())
    assert not compiled(regions=["eu-west-2"]).matches(offer())
    assert compiled(countries=["ie"]).matches(offer())
    assert not compiled(providers=["gcp"]).matches(offer())
    assert compiled().matches(offer())


def test_model_count_and_anomaly_filters() -> None:
    eight = compiled(gpu_models=["H100:8", "A100"])
    assert eight.matches(offer()) and eight.matches(offer(gpu_model="A100", gpu_count=1))
    assert not eight.matches(offer(gpu_count=Decimal(4)))
    flagged = offer(anomalies=[{"code": "below_provider_median", "message": "cheap"}])
    assert compiled().matches(flagged)
    assert not compiled(exclude_anomalies=True).matches(flagged)
    assert compiled(exclude_anomalies=True).matches(offer())
    # An accelerator the catalogue does not know is counted as unrecognised, never alerted.
    assert not compiled().matches(offer(gpu_model=None, gpu_name_raw="Zorptron"))
    with pytest.raises(ValidationError, match="H100:0"):
        alerts.OfferFilter.model_validate({"gpu_models": ["H100:0"]})


@pytest.mark.parametrize(
    ("spec", "field"),
    [
        ({"gpu_models": ["H1000"]}, "gpu_models"),
        ({"jurisdictions": ["XX"]}, "jurisdictions"),
        ({"countries": ["ZZ"]}, "countries"),
        ({"regions": ["mars-1"]}, "regions"),
        ({"providers": ["nimbus"]}, "providers"),
        ({"markets": ["lease"]}, "markets"),
        ({"min_gpus": 0}, "min_gpus"),
        ({"max_price_per_gpu_hour": "-1"}, "max_price_per_gpu_hour"),
        ({"colour": "red"}, "colour"),
    ],
)
def test_bad_filters_name_their_field(spec: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as err:
        alerts.OfferFilter.model_validate(spec)
    assert err.value.errors()[0]["loc"][0] == field


def test_a_subscription_names_exactly_one_target() -> None:
    channel = {"type": "slack_webhook", "url": "https://hooks.slack.com/services/a/b/c"}
    with pytest.raises(ValidationError, match="exactly one"):
        alerts.SubscriptionIn.model_validate({"name": "x", "channel": channel})
    with pytest.raises(ValidationError, match="exactly one"):
        alerts.SubscriptionIn.model_validate(
            {"name": "x", "channel": channel, "filter": {}, "request_id": 3}
        )
    with pytest.raises(ValidationError, match="xoxb"):
        alerts.SubscriptionIn.model_validate(
            {
                "name": "x",
                "filter": {},
                "channel": {"type": "slack_bot", "token": "hunter2", "channel": "#a"},
            }
        )


def test_one_message_per_batch_cheapest_first_with_the_rest_counted(tmp_path: Path) -> None:
    s = settings(tmp_path)
    s.alerts.max_offers_per_message = 2
    entered = [
        offer(
            key=f"lambda_cloud/europe-central-1/gpu_8x_h100_{i}/on_demand",
            provider="lambda_cloud",
            region="europe-central-1",
            country="DE",
            instance_type=f"gpu_8x_h100_{i}",
            price_per_gpu_hour=Decimal(p),
            price_per_hour=Decimal(p) * 8,
        )
        for i, p in enumerate(["3.10", "2.89", "2.99"])
    ]
    f = compiled(gpu_models=["H100"], jurisdictions=["EU"])
    msg = alerts.offers_message("eu h100", f, entered, [], s, ScoringConfig(), NOW)
    assert msg["text"].startswith(
        "3 new 8×H100-SXM offers in the EU, cheapest $2.89/GPU-h on lambda_cloud europe-central-1"
    )
    sections = [b for b in msg["blocks"] if b["type"] == "section"]
    assert len(sections) == 2
    assert "gpu_8x_h100_1" in sections[0]["text"]["text"]  # $2.89 first
    assert "$23.12/h per instance" in sections[0]["text"]["text"]
    assert "europe-central-1 (DE)" in sections[0]["text"]["text"]
    assert (
        "http://127.0.0.1:8000/v1/offers/lambda_cloud/europe-central-1/"
        in sections[0]["text"]["text"]
    )
    assert "ready in" in sections[0]["text"]["text"]
    assert msg["blocks"][-1]["elements"][0]["text"].startswith("and 1 more")
    assert msg["offers"] == [entered[1].key, entered[2].key, entered[0].key]


def test_price_drops_say_what_it_was(tmp_path: Path) -> None:
    o = offer(price_per_gpu_hour=Decimal("2.50"), price_per_hour=Decimal("20.00"))
    msg = alerts.offers_message(
        "x", compiled(), [], [(o, Decimal("3.00"))], settings(tmp_path), ScoringConfig(), NOW
    )
    assert msg["text"].startswith(
        "1 price drop on 8×H100-SXM: aws eu-west-1 now $2.50/GPU-h (was $3.00)"
    )
    assert "(was $3.00/GPU-h)" in msg["blocks"][1]["text"]["text"]
    assert "price flagged" not in msg["blocks"][1]["text"]["text"]


def test_a_flagged_price_says_so_in_the_alert(tmp_path: Path) -> None:
    why = "$1.00/GPU-h is under half the median $3.00 of aws's p5.48xlarge on_demand offers"
    o = offer(anomalies=[{"code": "below_provider_median", "message": why}])
    msg = alerts.offers_message("x", compiled(), [o], [], settings(tmp_path), ScoringConfig(), NOW)
    assert f":warning: price flagged: {why}" in msg["blocks"][1]["text"]["text"]


@pytest.mark.parametrize(
    ("status", "error", "headers", "outcome", "retry_after"),
    [
        (429, "", {"Retry-After": "7"}, "retry", 7.0),
        (200, "ratelimited", {"retry-after": "3"}, "retry", 3.0),
        (503, "", {}, "retry", None),
        (200, "internal_error", {}, "retry", None),
        (404, "no_service", {}, "gone", None),
        (403, "invalid_token", {}, "gone", None),
        (410, "channel_is_archived", {}, "gone", None),
        (200, "channel_not_found", {}, "gone", None),
        (200, "invalid_auth", {}, "gone", None),
        # Incoming webhooks (api.slack.com/messaging/webhooks, "Handling errors").
        (403, "posting_to_general_channel_denied", {}, "gone", None),
        (403, "action_prohibited", {}, "gone", None),
        (400, "user_not_found", {}, "gone", None),
        (404, "no_team", {}, "gone", None),
        (403, "", {}, "gone", None),  # a webhook's 403 refuses the target, whatever the body
        # chat.postMessage: HTTP 200 with `{"ok": false, "error": ...}`.
        (200, "restricted_action", {}, "gone", None),
        (200, "restricted_action_read_only_channel", {}, "gone", None),
        (200, "team_access_not_granted", {}, "gone", None),
        (200, "ekm_access_denied", {}, "gone", None),
        (200, "no_permission", {}, "gone", None),
        (200, "team_added_to_org", {}, "retry", None),
        (400, "invalid_payload", {}, "rejected", None),
        (400, "too_many_attachments", {}, "rejected", None),
        (200, "msg_too_long", {}, "rejected", None),
        (200, "invalid_blocks", {}, "rejected", None),
    ],
)
def test_slack_answers_are_classified(
    status: int, error: str, headers: dict[str, str], outcome: str, retry_after: float | None
) -> None:
    result = slack.classify(status, error, headers)
    assert result.outcome == outcome
    assert result.retry_after == retry_after


@pytest.mark.parametrize(
    ("answer", "outcome", "error"),
    [
        # Nothing or an error's start arrived: Slack may not have the message, try again.
        (Answer(500, {}, b"rollu", "RemoteProtocolError"), "retry", "answer cut off"),
        (Answer(200, {}, b'{"ok": false, "err', "ReadTimeout"), "retry", "answer cut off"),
        (Answer(200, {}, b"", "RemoteProtocolError"), "retry", "answer cut off"),
        # What arrived is Slack's success answer: sent, never again.
        (Answer(200, {}, b'{"ok": true, "chan', "RemoteProtocolError"), "sent", None),
        (Answer(200, {}, b'{"ok":true,"channel":"C1"', "ReadError"), "sent", None),
    ],
)
def test_a_bot_answer_cut_off_is_retried_unless_it_already_said_ok(
    answer: Answer, outcome: str, error: str | None
) -> None:
    result = slack.bot_result(answer)
    assert result.outcome == outcome
    if error:
        assert result.error == f"Slack API: {error} ({answer.cut_off})"


def test_a_webhook_200_is_sent_even_when_its_body_breaks_off() -> None:
    """The status says Slack took it: sending again would show it twice."""
    assert slack.webhook_result(Answer(200, {}, b"o", "RemoteProtocolError")).outcome == "sent"
    cut = slack.webhook_result(Answer(500, {}, b"roll", "RemoteProtocolError"))
    assert (cut.outcome, cut.error) == ("retry", "webhook: answer cut off (RemoteProtocolError)")
    # A workflow webhook's JSON answers.
    assert slack.webhook_result(Answer(200, {}, b'{"ok": true}')).outcome == "sent"
    failed = slack.webhook_result(Answer(200, {}, b'{"ok": false, "error": "invalid_token"}'))
    assert (failed.outcome, failed.error) == ("gone", "Slack answered 200 invalid_token")
    refused = slack.webhook_result(Answer(404, {}, b'{"ok": false, "error": "no_service"}'))
    assert (refused.outcome, refused.error) == ("gone", "Slack answered 404 no_service")


@pytest.mark.parametrize("status", [301, 302, 303, 307, 308])
@pytest.mark.parametrize("result", [slack.webhook_result, slack.bot_result])
def test_a_redirect_is_a_permanent_refusal_that_says_nothing_of_where_it_pointed(
    status: int, result: Callable[[Answer], alerts.SendResult]
) -> None:
    location = "http://169.254.169.254/latest/meta-data/iam/security-credentials/role"
    body = b'{"ok": true, "AccessKeyId": "ASIAEXAMPLEEXAMPLE00"}'
    out = result(Answer(status, {"location": location}, body))
    assert out.outcome == "gone"
    assert out.error is not None and out.error.endswith(f"{status}: a redirect, never followed")
    assert "169.254" not in out.error and "ASIA" not in out.error and "{" not in out.error


def test_user_text_cannot_ping_or_disguise_a_link(tmp_path: Path) -> None:
    evil = "<!channel> & <https://evil.example|slack.com>"
    inert = "&lt;!channel&gt; &amp; &lt;https://evil.example|slack.com&gt;"
    msg = alerts.offers_message(
        evil, compiled(), [offer()], [], settings(tmp_path), ScoringConfig(), NOW
    )
    assert evil not in str(msg) and inert in msg["text"]
    assert inert in msg["blocks"][-1]["elements"][0]["text"]
    req = alerts.request_message(evil, 7, evil, None, None, settings(tmp_path))
    assert "<!channel>" not in req["text"] and inert in req["blocks"][-1]["elements"][0]["text"]
