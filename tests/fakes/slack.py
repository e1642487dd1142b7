"""A local fake Slack speaking the wire format slack_sdk talks to.

- Incoming webhooks: `POST /services/T.../B.../<secret>` with a JSON body; `200 ok` as
  text, or Slack's documented errors as status + text body (`400 invalid_payload`,
  `400 no_text`, `403 invalid_token`, `404 no_service`, `410 channel_is_archived`, 429 with
  `Retry-After`, 500).
- Web API: `POST /api/chat.postMessage` with `Authorization: Bearer <token>`; HTTP 200 with
  `{"ok": true, "channel", "ts", "message"}` or `{"ok": false, "error": "invalid_auth" |
  "channel_not_found" | ...}`, and 429 + `Retry-After` with `{"ok": false, "error":
  "ratelimited"}`.

`messages` holds what Slack accepted (and would show), in order; `server.requests` every
request, faults included. Faults are queued with `server.fail(...)` (see tests.fakes.http).
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


@dataclass
class SlackMessage:
    target: str  # the webhook path, or the channel of a bot message
    text: str
    blocks: list[dict[str, Any]]
    #: When Slack accepted it (`time.time()`), for latency figures.
    received_at: float = field(default_factory=time.time)


def text_response(status: int, text: str, headers: dict[str, str] | None = None) -> FakeResponse:
    return FakeResponse(
        status, body=text.encode(), headers={"Content-Type": "text/html", **(headers or {})}
    )


class FakeSlack:
    def __init__(self, server: FakeHttpServer) -> None:
        self.server = server
        self.messages: list[SlackMessage] = []
        self.tokens: set[str] = set()
        self.channels: set[str] = {"#gpu-alerts", "C0GPUALERT"}
        #: Seconds an accepted message's answer is held back (Slack has it, the sender waits).
        self.answer_delay_s = 0.0
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

    def bot_token(self) -> str:
        token = "xoxb-1-" + secrets.token_hex(12)
        self.tokens.add(token)
        return token

    def to(self, target: str) -> list[SlackMessage]:
        """Accepted messages of a webhook URL (or path) or a bot channel."""
        path = target.split(str(self.server.port), 1)[-1]
        return [m for m in self.messages if m.target in (target, path)]

    # ---------------------------------------------------------------- answers

    def _accept(self, target: str, body: dict[str, Any]) -> None:
        with self._lock:
            self.messages.append(
                SlackMessage(target, str(body.get("text") or ""), list(body.get("blocks") or []))
            )

    def _webhook(self, req: FakeRequest) -> FakeResponse:
        try:
            body = json.loads(req.body)
        except ValueError:
            return text_response(400, "invalid_payload")
        if not isinstance(body, dict):
            return text_response(400, "invalid_payload")
        if not body.get("text") and not body.get("blocks"):
            return text_response(400, "no_text")
        self._accept(req.path, body)
        answer = text_response(200, "ok")
        answer.delay_s = self.answer_delay_s
        return answer

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
        if channel not in self.channels:
            return FakeResponse(json={"ok": False, "error": "channel_not_found"})
        if not body.get("text") and not body.get("blocks"):
            return FakeResponse(json={"ok": False, "error": "no_text"})
        self._accept(channel, body)
        ts = f"{len(self.messages)}.000100"
        return FakeResponse(
            json={"ok": True, "channel": channel, "ts": ts, "message": {"text": body["text"]}}
        )


def slack() -> Iterator[FakeSlack]:
    """Generator for a pytest fixture: a started fake Slack."""
    with FakeHttpServer() as server:
        yield FakeSlack(server)
