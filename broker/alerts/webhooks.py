"""Which Slack webhook URLs a subscription may hold, and how they are shown.

A webhook URL is a secret (whoever holds it can post) and a request target the broker
will call, so it is checked strictly when it is stored and again before every send
(`check_webhook_url`): only the shapes Slack issues, on an allowed host, nothing a client
library would quietly rewrite. Every refusal says what is wrong without echoing the URL.

Slack's shapes, all on `hooks.slack.com`:

- incoming webhooks: `/services/T…/B…/<secret>`
  (docs.slack.dev/messaging/sending-messages-using-incoming-webhooks);
- Workflow Builder webhook triggers: `/triggers/T…/<digits>/<secret>`
  (docs.slack.dev/tools/slack-github-action/sending-techniques/sending-data-webhook-slack-workflow);
- legacy Workflow Builder webhooks: `/workflows/T…/A…/<digits>/<secret>`.

Workflow webhooks take flat string variables, not Block Kit: `webhook_kind` tells the
sender which body to post.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Literal
from urllib.parse import SplitResult, urlsplit

from broker.alerts.store import AlertError
from broker.config import Settings

_FIELD = "channel.url"
_SEGMENT = r"[A-Za-z0-9_-]{1,128}"
#: Path shape -> what Slack calls it.
WEBHOOK_PATHS: dict[str, re.Pattern[str]] = {
    "incoming webhook": re.compile(rf"/services(?:/{_SEGMENT}){{3}}"),
    "workflow trigger": re.compile(rf"/triggers(?:/{_SEGMENT}){{3}}"),
    "legacy workflow": re.compile(rf"/workflows(?:/{_SEGMENT}){{4}}"),
}
_SHAPES = "/services/T…/B…/…, /triggers/T…/…/… or /workflows/T…/A…/…/…"


def _invalid(message: str) -> AlertError:
    return AlertError("invalid_webhook", message, _FIELD)


def _check_characters(url: str) -> None:
    """Printable ASCII only: a space, tab or control character (a NUL, a newline) or a
    non-ASCII letter is stripped, re-encoded or refused by one HTTP layer or another, so
    the URL stored would not be the URL called."""
    for position, char in enumerate(url, start=1):
        code = ord(char)
        if code > 0x7F:
            raise _invalid(f"the webhook URL has a non-ASCII character at position {position}")
        if code <= 0x20 or code == 0x7F:
            what = "a space" if char == " " else "whitespace or a control character"
            raise _invalid(f"the webhook URL has {what} at position {position}")


def _split(url: str) -> tuple[SplitResult, str, str]:
    """(parts, host, host:port) or AlertError."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").lower()
        port = parts.port
    except ValueError:
        raise _invalid("not a URL") from None
    return parts, host, f"{host}:{port}" if port else host


def _check_scheme(parts: SplitResult, host: str) -> None:
    """https, or plain http to a loopback host (a local fake Slack in tests)."""
    if parts.scheme == "https":
        return
    if parts.scheme == "http":
        try:
            loopback = ipaddress.ip_address(host).is_loopback
        except ValueError:
            loopback = host == "localhost"
        if loopback:
            return
    raise _invalid("the webhook URL must be https://")


def check_webhook_url(url: str, settings: Settings) -> None:
    """Raise `AlertError` unless `url` is a Slack webhook URL the broker may call: printable
    ASCII without whitespace, https (plain http only for an allowed loopback host), its
    `host` or `host:port` in `BROKER_SLACK_WEBHOOK_HOSTS` (no SSRF: never a bare IP outside
    the list), no credentials, query or fragment, and a path of one of Slack's shapes."""
    _check_characters(url)
    parts, host, hostport = _split(url)
    if parts.scheme not in ("https", "http") or not host:
        raise _invalid("the webhook URL must be https://")
    if parts.username or parts.password:
        raise _invalid("the webhook URL must not carry credentials")
    allowed = {h.lower() for h in settings.slack_webhook_hosts or []}
    if host not in allowed and hostport not in allowed:
        raise AlertError(
            "webhook_host_not_allowed",
            f"webhook host {hostport!r} is not allowed (allowed: "
            f"{', '.join(sorted(allowed)) or 'none'}; set BROKER_SLACK_WEBHOOK_HOSTS)",
            _FIELD,
        )
    _check_scheme(parts, host)
    if parts.query or parts.fragment or url.endswith(("?", "#")):
        raise _invalid("the webhook URL must not have a query or fragment")
    if not any(p.fullmatch(parts.path) for p in WEBHOOK_PATHS.values()):
        raise _invalid(f"the webhook URL's path is not one Slack issues ({_SHAPES})")


def webhook_kind(url: str) -> Literal["incoming", "workflow"]:
    """`incoming` (posts Block Kit messages) or `workflow` (starts a workflow with
    variables)."""
    path = urlsplit(url).path
    return "incoming" if WEBHOOK_PATHS["incoming webhook"].fullmatch(path) else "workflow"


def mask_webhook(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.scheme}://{parts.netloc}/…{url[-4:]}"


def mask_token(token: str, channel: str) -> str:
    return f"{channel} via {token[:5]}…{token[-4:]}"
