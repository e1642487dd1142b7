"""Talking to Slack: one HTTP POST per message, to an incoming or workflow webhook
(`send_webhook`) or to chat.postMessage (`send_bot`), and Slack's answer classified as a
`SendResult`: sent, retry (429 with its Retry-After, 5xx, timeouts, an answer cut off),
gone (the target refused for good: the subscription is disabled) or rejected (this
message). What goes into `SendResult.error` is fixed text, a status and a Slack error code:
never a URL, a token, a `Location` or a body of any other shape.

## Why our own small client, not slack_sdk
slack_sdk's synchronous clients send through urllib: `urlopen(req)`, or
`build_opener(ProxyHandler, HTTPSHandler)` when a proxy is set (`slack_sdk/webhook/client.py`
`_perform_http_request_internal`, `slack_sdk/web/base_client.py`
`_perform_urllib_http_request_internal`; in 3.48 and on main at ae87985 alike). Both
openers include urllib's `HTTPRedirectHandler`, which answers a 301/302/303 by sending a
GET to wherever `Location` points, and no constructor argument of `WebhookClient` or
`WebClient` (`ssl`, `proxy`, `retry_handlers`, `logger`) replaces the opener: only the
process-wide `urllib.request.install_opener` or overriding a private method would. An
allowed webhook host answering 302 would send the broker to any address. So both paths
post with httpx (already a dependency): `follow_redirects=False`, `send_timeout_s` for each
phase (connect, write, read), typed transport errors, the answer streamed and read up to
`MAX_ANSWER` bytes, `HTTPS_PROXY` honoured as slack_sdk did. A 3xx is a permanent refusal
with a fixed text. slack_sdk also put the URL in its own log lines; here the only line that
carries it is httpx's INFO request line, which `broker.logs` masks (every webhook path
shape, `broker.domain.redact`).

## The wire
- Incoming webhook: JSON `{"text", "blocks"}`; `200 ok` as text, else a status and an error
  code as text (`GONE`, below). Workflow webhooks (`/triggers/`, `/workflows/`) take flat
  string variables, so they get `{"text"}` only (docs.slack.dev/tools/slack-github-action/
  sending-techniques/sending-data-webhook-slack-workflow) and answer `{"ok": true}` or
  `{"ok": false, "error"}` (@slack/webhook `WebhookTriggerResult`).
- chat.postMessage: JSON with `Authorization: Bearer <token>`; HTTP 200 with `{"ok": true}`
  or `{"ok": false, "error": ...}`; 429 with Retry-After
  (docs.slack.dev/reference/methods/chat.postMessage).
"""

from __future__ import annotations

import json
import logging
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import httpx

from broker.alerts.webhooks import webhook_kind
from broker.config import Settings

log = logging.getLogger(__name__)

#: The most of an answer read: Slack's are a few bytes; anything longer is not Slack's.
MAX_ANSWER = 64 * 1024
_USER_AGENT = "gpu-capacity-broker (alerts)"


@dataclass(frozen=True)
class SendResult:
    """What Slack said: `sent`, `retry` (after `retry_after` s if it said), `gone` (the
    target no longer exists: disable the subscription) or `rejected` (this message)."""

    outcome: Literal["sent", "retry", "gone", "rejected"]
    error: str | None = None
    retry_after: float | None = None


#: Slack errors meaning the webhook, token or channel is gone or closed to us for good: every
#: later message would fail the same way until someone changes something in Slack, so the
#: subscription is disabled with the reason (re-enabled by `PATCH state=active`).
GONE = frozenset(
    {
        # Incoming webhooks: "Handling errors", https://api.slack.com/messaging/webhooks
        # (docs.slack.dev/messaging/sending-messages-using-incoming-webhooks). A plain-text
        # body: 400 `user_not_found`, 403 `action_prohibited` ("should not be attempted
        # again"), 403 `posting_to_general_channel_denied` (posting to #general restricted and
        # the webhook's creator not allowed there: "You'll receive this error with a HTTP
        # 403"), 404 `channel_not_found`, 410 `channel_is_archived`; `invalid_token`,
        # `no_service` (webhook disabled, removed or invalid), `no_service_id`, `no_team`,
        # `team_disabled`. Statuses: https://api.slack.com/changelog/2016-05-17-changes-to-
        # errors-for-incoming-webhooks.
        "user_not_found",
        "action_prohibited",
        "posting_to_general_channel_denied",
        "invalid_token",
        "channel_not_found",
        "channel_is_archived",
        "no_service",
        "no_service_id",
        "no_team",
        "team_disabled",
        # chat.postMessage, HTTP 200 `{"ok": false, "error": ...}`:
        # https://docs.slack.dev/reference/methods/chat.postMessage#errors
        # (and the errors common to every Web API method listed there).
        "invalid_auth",
        "not_authed",
        "account_inactive",
        "token_revoked",
        "token_expired",
        "is_archived",
        "not_in_channel",
        "missing_scope",
        "no_permission",
        "team_access_not_granted",
        "not_allowed_token_type",
        "access_denied",
        "accesslimited",
        "enterprise_is_restricted",
        "two_factor_setup_required",
        # "Administrators have suspended the ability to post a message."
        "ekm_access_denied",
        # "A workspace preference prevents the authenticated user from posting."
        "restricted_action",
        "restricted_action_read_only_channel",
        "restricted_action_thread_only_channel",  # we post top-level messages only
    }
)
#: Slack errors worth another attempt (chat.postMessage's list, above: `ratelimited`,
#: `internal_error`, `fatal_error`, `service_unavailable`, `request_timeout`; and a workspace
#: in an Enterprise migration, "intermittently unavailable until the transition is complete").
TRANSIENT = frozenset(
    {
        "ratelimited",
        "rate_limited",
        "internal_error",
        "fatal_error",
        "service_unavailable",
        "request_timeout",
        "team_added_to_org",
        "org_login_required",
    }
)
#: Statuses Slack documents for a refusal of the target rather than of the message: an
#: incoming webhook's 403 (`action_prohibited`, `posting_to_general_channel_denied`), 404 (no
#: such channel or webhook), 410 (archived channel); sources above. Whatever the body says,
#: the next message would be refused too.
GONE_STATUS = frozenset({403, 404, 410})


_SLACK_ERROR = re.compile(r"[a-z][a-z0-9_]{0,63}")


def _retry_after(headers: Mapping[str, Any]) -> float | None:
    for name, value in headers.items():
        if name.lower() == "retry-after":
            raw = value[0] if isinstance(value, list) else value
            try:
                seconds = float(raw)
            except (TypeError, ValueError):
                return None
            return seconds if math.isfinite(seconds) and seconds >= 0 else None
    return None


def classify(status: int, error: str, headers: Mapping[str, Any]) -> SendResult:
    if status == 429 or error in ("ratelimited", "rate_limited"):
        return SendResult("retry", f"rate limited ({status})", _retry_after(headers) or None)
    if status >= 500 or error in TRANSIENT:
        return SendResult("retry", f"Slack answered {status} {error}".strip())
    if error in GONE or status in GONE_STATUS:
        return SendResult("gone", f"Slack answered {status} {error or ''}".strip())
    return SendResult("rejected", f"Slack answered {status} {error}".strip())


#: The start of chat.postMessage's success answer, `{"ok": true, ...}`: matched against the
#: part of a cut-off answer that did arrive.
API_OK = re.compile(rb'\s*\{\s*"ok"\s*:\s*true\b')


@dataclass(frozen=True)
class Answer:
    """An HTTP answer: status, headers, the body's first `MAX_ANSWER` bytes, and the name of
    the error that cut the body off, if one did."""

    status: int
    headers: Mapping[str, str]
    body: bytes = b""
    cut_off: str | None = None


def _json(body: bytes) -> dict[str, Any]:
    try:
        data = json.loads(body)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def error_code(body: bytes) -> str:
    """Slack's error code in an answer: a webhook's text body (`no_service`) or the `error`
    of a JSON one; empty for anything else (an HTML page, a proxy's text), which is never
    stored."""
    text = body.decode("utf-8", "replace").strip()
    if text != "ok" and _SLACK_ERROR.fullmatch(text):
        return text
    error = _json(body).get("error")
    return error if isinstance(error, str) and _SLACK_ERROR.fullmatch(error) else ""


def _redirected(what: str, status: int) -> SendResult:
    """A 3xx: never followed, and permanent (the target is not where Slack serves it). The
    text is fixed: no `Location`, no body, so nothing of where it pointed leaks back."""
    return SendResult("gone", f"{what} answered {status}: a redirect, never followed")


def _read(resp: httpx.Response) -> tuple[bytes, str | None]:
    """The body, at most `MAX_ANSWER` bytes, and the error's name if it broke off (the
    connection closed or timed out mid-body, or the body could not be decoded)."""
    buf = bytearray()
    try:
        for chunk in resp.iter_bytes():
            buf += chunk
            if len(buf) >= MAX_ANSWER:
                break
    except httpx.RequestError as exc:
        return bytes(buf[:MAX_ANSWER]), type(exc).__name__
    return bytes(buf[:MAX_ANSWER]), None


def post(
    url: str, body: Mapping[str, Any], headers: Mapping[str, str], settings: Settings, what: str
) -> Answer | SendResult:
    """POST `body` as JSON, never following a redirect; the answer, or the `SendResult` of
    a call that got none: `retry` when Slack could not be reached (a connect error or a
    timeout), `gone` when the target cannot be called at all (an invalid URL or header)."""
    request_headers = {
        "Content-Type": "application/json; charset=utf-8",
        "User-Agent": _USER_AGENT,
        **headers,
    }
    timeout = httpx.Timeout(settings.alerts.send_timeout_s)
    try:
        with (
            httpx.Client(timeout=timeout, follow_redirects=False) as client,
            client.stream(
                "POST", url, content=json.dumps(body).encode(), headers=request_headers
            ) as resp,
        ):
            data, cut_off = _read(resp)
            return Answer(resp.status_code, dict(resp.headers), data, cut_off)
    except (httpx.InvalidURL, httpx.UnsupportedProtocol, httpx.LocalProtocolError) as exc:
        return SendResult("gone", f"{what}: cannot be called ({type(exc).__name__})")
    except httpx.TransportError as exc:
        return SendResult("retry", f"{what} unreachable: {type(exc).__name__}")


def webhook_result(answer: Answer) -> SendResult:
    """An incoming or workflow webhook's answer. 200 means Slack took the message (unless a
    workflow webhook's JSON says `"ok": false`), even if the body broke off after the
    status: sending it again would show it twice."""
    if 300 <= answer.status < 400:
        return _redirected("webhook", answer.status)
    if answer.status == 200 and _json(answer.body).get("ok") is not False:
        if answer.cut_off:
            log.info("alerts.cut_off_after_accept webhook: %s", answer.cut_off)
        return SendResult("sent")
    if answer.cut_off:
        return SendResult("retry", f"webhook: answer cut off ({answer.cut_off})")
    return classify(answer.status, error_code(answer.body), answer.headers)


def bot_result(answer: Answer) -> SendResult:
    """chat.postMessage's answer: sent only on HTTP 200 with `"ok": true`. Cut off, it
    counts as sent when what did arrive already says `{"ok": true`, else it is retried."""
    if 300 <= answer.status < 400:
        return _redirected("Slack API", answer.status)
    if answer.cut_off:
        if answer.status == 200 and API_OK.match(answer.body):
            log.info("alerts.cut_off_after_accept Slack API: %s", answer.cut_off)
            return SendResult("sent")
        return SendResult("retry", f"Slack API: answer cut off ({answer.cut_off})")
    if answer.status == 200 and _json(answer.body).get("ok") is True:
        return SendResult("sent")
    return classify(answer.status, error_code(answer.body), answer.headers)


def send_webhook(url: str, payload: Mapping[str, Any], settings: Settings) -> SendResult:
    """Post a message to a webhook: Block Kit to an incoming webhook, the text alone to a
    workflow webhook (its variables are flat strings)."""
    body: dict[str, Any] = {"text": payload["text"]}
    if webhook_kind(url) == "incoming" and payload.get("blocks"):
        body["blocks"] = payload["blocks"]
    answer = post(url, body, {}, settings, "webhook")
    return answer if isinstance(answer, SendResult) else webhook_result(answer)


def send_bot(
    token: str, channel: str, payload: Mapping[str, Any], settings: Settings
) -> SendResult:
    """Post a message with chat.postMessage at `settings.slack_api_url`."""
    body: dict[str, Any] = {"channel": channel, "text": payload["text"]}
    if payload.get("blocks"):
        body["blocks"] = payload["blocks"]
    url = settings.slack_api_url.rstrip("/") + "/chat.postMessage"
    answer = post(url, body, {"Authorization": f"Bearer {token}"}, settings, "Slack API")
    return answer if isinstance(answer, SendResult) else bot_result(answer)
