"""A local fake Slack speaking the wire format the broker's sender talks (JSON over HTTP,
`broker.alerts.slack`).

- Incoming webhooks: `POST /services/T.../B.../<secret>` with a JSON body; `200 ok` as
  text, or Slack's documented errors as status + plain-text body: the "Handling errors"
  table of https://api.slack.com/messaging/webhooks (docs.slack.dev/messaging/sending-
  messages-using-incoming-webhooks) with the statuses of
  https://api.slack.com/changelog/2016-05-17-changes-to-errors-for-incoming-webhooks
  (`WEBHOOK_ERRORS`: `400 invalid_payload`, `400 no_text`, `403 action_prohibited`,
  `403 posting_to_general_channel_denied` — "You'll receive this error with a HTTP 403" —,
  `403 invalid_token`, `404 no_service`, `410 channel_is_archived`, `500 rollup_error`...),
  429 with `Retry-After`.
- Workflow webhooks: `POST /triggers/T.../<digits>/<secret>` (Workflow Builder's webhook
  triggers, docs.slack.dev/tools/slack-github-action/sending-techniques/sending-data-
  webhook-slack-workflow) and the legacy `POST /workflows/T.../A.../<digits>/<secret>`,
  a JSON object of variables; `200 {"ok": true}` (@slack/webhook `WebhookTriggerResult`).
- Web API: `POST /api/chat.postMessage` with `Authorization: Bearer <token>`; HTTP 200 with
  `{"ok": true, "channel", "ts", "message"}` or `{"ok": false, "error": "invalid_auth" |
  "channel_not_found" | ...}` (https://docs.slack.dev/reference/methods/chat.postMessage:
  errors come as HTTP 200 with `ok: false`), and 429 + `Retry-After` with `{"ok": false,
  "error": "ratelimited"}`.

`refuse(target, error)` makes a webhook or bot channel answer a documented error from then
on (an admin restricted #general, the channel was archived...); `redirect(target,
location)` makes a webhook or the Web API answer a redirect from then on (a hijacked or
misconfigured host); `cut_off_answers` cuts off the answers to the next accepted messages
mid-body (Slack has the message, the sender's read breaks off). `messages` holds what Slack
accepted (and would show), in order; `server.requests` every request, faults included.
One-off faults are queued with `server.fail(...)` (see tests.fakes.http).
"""

from __future__ import annotations

import json
import secrets
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import parse_qs

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

POST_MESSAGE = "/api/chat.postMessage"

#: An incoming webhook's documented refusals: body -> HTTP status (sources in the module
#: docstring; `no_team` 404 as in docs.slack.dev/tools/java-slack-sdk/guides/incoming-webhooks).
WEBHOOK_ERRORS: dict[str, int] = {
    "invalid_payload": 400,
    "user_not_found": 400,
    "no_text": 400,
    "action_prohibited": 403,
    "posting_to_general_channel_denied": 403,
    "invalid_token": 403,
    "channel_not_found": 404,
    "no_service": 404,
    "no_team": 404,
    "channel_is_archived": 410,
    "rollup_error": 500,
}


@dataclass
class SlackMessage:
    target: str  # the webhook path, or the channel of a bot message
    text: str
    blocks: list[dict[str, Any]]
    #: When Slack accepted it (`time.time()`), for latency figures.
    received_at: float = field(default_factory=time.time)


def text_response(
    status: int, text: str, headers: dict[str, str] | None = None, *, truncate: bool = False
) -> FakeResponse:
    """A webhook answer; `truncate` cuts its body off halfway (the connection closes before
    the Content-Length announced)."""
    return FakeResponse(
        status,
        body=text.encode(),
        headers={"Content-Type": "text/html", **(headers or {})},
        truncate=truncate,
    )


class FakeSlack:
    def __init__(self, server: FakeHttpServer) -> None:
        self.server = server
        self.messages: list[SlackMessage] = []
        self.tokens: set[str] = set()
        self.channels: set[str] = {"#gpu-alerts", "C0GPUALERT"}
        #: Seconds an accepted message's answer is held back (Slack has it, the sender waits).
        self.answer_delay_s = 0.0
        #: The answers to this many next accepted messages are cut off mid-body.
        self.cut_off_answers = 0
        #: Webhook path, bot channel or token -> the error Slack answers for it from now on.
        self.refusals: dict[str, str] = {}
        self._lock = threading.Lock()
        server.route("POST", POST_MESSAGE, self._post_message)

    @property
    def api_url(self) -> str:
        return f"{self.server.url}/api/"

    @property
    def host(self) -> str:
        return f"127.0.0.1:{self.server.port}"

    def webhook(self, name: str = "alerts") -> str:
        """A new webhook URL served by this fake (the path holds a random secret)."""
        path = f"/services/T0FAKE/B{name.upper()}/{secrets.token_urlsafe(18)}"
        self.server.route("POST", path, self._webhook)
        return self.server.url + path

    def trigger(self, name: str = "workflow", *, legacy: bool = False) -> str:
        """A new workflow webhook URL served by this fake: a webhook trigger
        (`/triggers/T.../<digits>/<secret>`), or with `legacy` a Workflow Builder webhook
        (`/workflows/T.../A.../<digits>/<secret>`)."""
        digits = str(secrets.randbelow(10**12)).zfill(12)
        tail = f"{digits}/{secrets.token_urlsafe(18)}"
        kind = f"/workflows/T0FAKE/A{name.upper()}" if legacy else "/triggers/T0FAKE"
        path = f"{kind}/{tail}"
        self.server.route("POST", path, self._trigger)
        return self.server.url + path

    def redirect(self, target: str, location: str, status: int = 302) -> None:
        """From now on, answer every post to `target` (a webhook URL or path, or
        `POST_MESSAGE`) with a redirect to `location` and a body of its own."""
        body = f'<html><a href="{location}">moved</a></html>'
        answer = FakeResponse(status, body=body.encode(), headers={"Location": location})
        self.server.route("POST", self._target(target), answer)

    def bot_token(self) -> str:
        token = "xoxb-1-" + secrets.token_hex(12)
        self.tokens.add(token)
        return token

    def refuse(self, target: str, error: str) -> None:
        """From now on, refuse every post to `target` (a webhook URL or path, a bot channel
        or token) with Slack's documented `error`: for a webhook its status from
        `WEBHOOK_ERRORS` and the code as text, for the Web API `{"ok": false, "error"}`."""
        key = self._target(target)
        if key.startswith("/services/") and error not in WEBHOOK_ERRORS:
            raise ValueError(f"{error!r} is not a documented webhook error")
        self.refusals[key] = error

    def restore(self, target: str) -> None:
        """Accept posts to `target` again (the admin lifted the restriction...)."""
        self.refusals.pop(self._target(target), None)

    def _target(self, target: str) -> str:
        """A webhook URL's path; a channel or token as is."""
        return target.removeprefix(self.server.url)

    def to(self, target: str) -> list[SlackMessage]:
        """Accepted messages of a webhook URL (or path) or a bot channel."""
        path = target.split(str(self.server.port), 1)[-1]
        return [m for m in self.messages if m.target in (target, path)]

    # ---------------------------------------------------------------- answers

    def _accept(self, target: str, body: dict[str, Any], answer: FakeResponse) -> FakeResponse:
        """Record the message; the answer is held back or cut off as configured."""
        with self._lock:
            self.messages.append(
                SlackMessage(target, str(body.get("text") or ""), list(body.get("blocks") or []))
            )
            if self.cut_off_answers > 0:
                self.cut_off_answers -= 1
                answer.truncate = True
        answer.delay_s = self.answer_delay_s
        return answer

    def _webhook(self, req: FakeRequest) -> FakeResponse:
        try:
            body = json.loads(req.body)
        except ValueError:
            return text_response(400, "invalid_payload")
        if not isinstance(body, dict):
            return text_response(400, "invalid_payload")
        refused = self.refusals.get(req.path)
        if refused:
            return text_response(WEBHOOK_ERRORS[refused], refused)
        if not body.get("text") and not body.get("blocks"):
            return text_response(400, "no_text")
        return self._accept(req.path, body, text_response(200, "ok"))

    def _trigger(self, req: FakeRequest) -> FakeResponse:
        try:
            body = json.loads(req.body)
        except ValueError:
            body = None
        if not isinstance(body, dict):
            return FakeResponse(400, json={"ok": False, "error": "invalid_payload"})
        return self._accept(req.path, body, FakeResponse(json={"ok": True}))

    def _post_message(self, req: FakeRequest) -> FakeResponse:
        auth = req.headers.get("authorization", "")
        token = auth.removeprefix("Bearer ").strip()
        if req.headers.get("content-type", "").startswith("application/json"):
            body = json.loads(req.body or b"{}")
        else:
            body = {k: v[0] for k, v in parse_qs(req.body.decode()).items()}
            if isinstance(body.get("blocks"), str):
                body["blocks"] = json.loads(body["blocks"])
        if not token:
            return FakeResponse(json={"ok": False, "error": "not_authed"})
        if token not in self.tokens:
            return FakeResponse(json={"ok": False, "error": "invalid_auth"})
        channel = str(body.get("channel") or "")
        refused = self.refusals.get(token) or self.refusals.get(channel)
        if refused:
            return FakeResponse(json={"ok": False, "error": refused})
        if channel not in self.channels:
            return FakeResponse(json={"ok": False, "error": "channel_not_found"})
        if not body.get("text") and not body.get("blocks"):
            return FakeResponse(json={"ok": False, "error": "no_text"})
        ts = f"{len(self.messages) + 1}.000100"
        answer = FakeResponse(
            json={"ok": True, "channel": channel, "ts": ts, "message": {"text": body["text"]}}
        )
        return self._accept(channel, body, answer)


def slack() -> Iterator[FakeSlack]:
    """Generator for a pytest fixture: a started fake Slack."""
    with FakeHttpServer() as server:
        yield FakeSlack(server)
