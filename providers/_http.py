"""One JSON-over-HTTPS client for the adapters that speak plain HTTP (httpx).

Owns what every such adapter would otherwise repeat: timeouts, bounded retries (429 after
its `Retry-After` when that is short enough, 5xx and dropped connections with exponential
backoff), and the mapping of every failure onto the `ProviderError` tree with a message that
names the call but never a secret (query strings are left out, known secrets are redacted).
Every request goes through a `providers._recording.Tap`: recorded by `broker poll --record`,
answered from a recording when `BROKER_<PROVIDER>__REPLAY_DIR` is set (docs/recording.md).
Not an adapter: modules starting with `_` are helpers; `discover()` skips them.
"""

from __future__ import annotations

import email.utils
import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from datetime import UTC, datetime
from typing import Any

import httpx

from broker.config import ClientSettings
from providers._record_httpx import send_httpx
from providers._recording import Tap
from providers.base import (
    AuthFailed,
    MalformedResponse,
    ProviderError,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    redact,
)

log = logging.getLogger(__name__)


class _RedactingFilter(logging.Filter):
    """httpx logs every request URL at INFO, query string included: redact it there."""

    def filter(self, record: logging.LogRecord) -> bool:
        record.msg = redact(record.getMessage())
        record.args = ()
        return True


logging.getLogger("httpx").addFilter(_RedactingFilter())

#: Backoff before retry n (1-based) when the server gives no Retry-After: base × 2^(n-1).
BACKOFF_BASE_S = 0.5


def parse_retry_after(value: str | None, now: datetime | None = None) -> float | None:
    """Seconds to wait from a `Retry-After` header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - (now or datetime.now(UTC))).total_seconds())


class JsonApi:
    """A provider's JSON API at `base_url`.

    `request()` returns the decoded JSON body or raises a `ProviderError`. Retries: up to
    `settings.max_attempts` attempts in all; a 429 is retried only when its `Retry-After`
    (or, without one, the backoff) is at most `settings.max_retry_after_s`, otherwise it
    fails at once as `RateLimited(retry_after_s)` so the scheduler can wait instead.
    `sleep` is injectable so tests can see the waits without waiting.
    """

    def __init__(
        self,
        provider: str,
        base_url: str,
        settings: ClientSettings,
        *,
        headers: Mapping[str, str] | None = None,
        secrets: Iterable[str | None] = (),
        transport: httpx.BaseTransport | None = None,
        sleep: Callable[[float], None] = time.sleep,
        backoff_base_s: float = BACKOFF_BASE_S,
    ) -> None:
        self.provider = provider
        self.settings = settings
        self.secrets = tuple(s for s in secrets if s)
        self.sleep = sleep
        self.backoff_base_s = backoff_base_s
        self.calls = 0  # HTTP requests sent (thread-safe: adapters fan out on a pool)
        self._calls_lock = threading.Lock()
        self.client = httpx.Client(
            base_url=base_url.rstrip("/"),
            headers={"Accept": "application/json", **(headers or {})},
            timeout=httpx.Timeout(settings.timeout_s),
            transport=transport,
            follow_redirects=True,
        )
        self.tap = Tap.for_settings(provider, settings, secrets=self.secrets)

    def close(self) -> None:
        self.client.close()

    def _fail(self, exc: ProviderError) -> ProviderError:
        return (
            type(exc)(redact(str(exc), self.secrets))
            if not isinstance(exc, RateLimited)
            else RateLimited(redact(str(exc), self.secrets), exc.retry_after_s)
        )

    def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, Any] | None = None,
        json_body: Any = None,
        headers: Mapping[str, str] | None = None,
        what: str | None = None,
    ) -> Any:
        """Call the API and return its JSON. `what` names the call in errors (default:
        `METHOD path`, never the query string)."""
        label = what or f"{method} {path.split('?', 1)[0]}"
        attempts = self.settings.max_attempts
        for attempt in range(1, attempts + 1):
            try:
                return self._once(method, path, params, json_body, headers, label)
            except ProviderError as exc:
                wait = self._retry_wait(exc, attempt)
                if attempt >= attempts or wait is None:
                    raise self._fail(exc) from None
                log.info(
                    "provider.retry %s %s attempt %d/%d in %.2fs: %s",
                    self.provider,
                    label,
                    attempt,
                    attempts,
                    wait,
                    redact(str(exc), self.secrets),
                )
                self.sleep(wait)
        raise AssertionError("unreachable")  # pragma: no cover

    def _retry_wait(self, exc: ProviderError, attempt: int) -> float | None:
        """Seconds to wait before retrying after `exc`, or None when it must not be retried."""
        backoff = self.backoff_base_s * float(2 ** (attempt - 1))
        if isinstance(exc, RateLimited):
            wait = exc.retry_after_s if exc.retry_after_s is not None else backoff
            return wait if wait <= self.settings.max_retry_after_s else None
        if isinstance(exc, ProviderTimeout | ProviderUnavailable):
            return backoff
        return None

    def _once(
        self,
        method: str,
        path: str,
        params: Mapping[str, Any] | None,
        json_body: Any,
        headers: Mapping[str, str] | None,
        label: str,
    ) -> Any:
        with self._calls_lock:
            self.calls += 1
        try:
            request = self.client.build_request(
                method, path, params=params, json=json_body, headers=headers
            )
            response = send_httpx(self.tap, self.client, request)
            body = response.content
        except httpx.TimeoutException:
            raise ProviderTimeout(
                f"{label}: no answer within {self.settings.timeout_s:g}s"
            ) from None
        except httpx.TransportError as exc:
            raise ProviderUnavailable(
                f"{label}: connection failed ({type(exc).__name__})"
            ) from None
        status = response.status_code
        if status == 429:
            retry_after = parse_retry_after(response.headers.get("Retry-After"))
            raise RateLimited(f"{label}: HTTP 429 rate limited", retry_after)
        if status >= 500:
            raise ProviderUnavailable(f"{label}: HTTP {status}{_detail(body)}")
        if status in (401, 403):
            raise AuthFailed(f"{label}: HTTP {status} credentials rejected{_detail(body)}")
        if status >= 400:
            raise RequestRejected(f"{label}: HTTP {status}{_detail(body)}")
        try:
            return json.loads(body)
        except ValueError:
            raise MalformedResponse(
                f"{label}: HTTP {status} body is not JSON ({len(body)} bytes)"
            ) from None


def _detail(body: bytes) -> str:
    """A short reason from an error body: `error.code`/`message` fields when JSON, else a
    prefix of the text. Redacted by the caller."""
    try:
        doc = json.loads(body)
    except ValueError:
        text = body[:120].decode("utf-8", "replace").strip()
        return f": {text}" if text else ""
    parts: list[str] = []
    if isinstance(doc, dict):
        err = doc.get("error", doc)
        if isinstance(err, dict):
            for k in ("code", "status", "message", "msg"):
                v = err.get(k)
                if isinstance(v, str | int) and str(v):
                    parts.append(str(v))
        elif isinstance(err, str):
            parts.append(err)
        if isinstance(doc.get("errors"), list) and doc["errors"]:
            first = doc["errors"][0]
            if isinstance(first, dict) and isinstance(first.get("message"), str):
                parts.append(first["message"])
    detail = " ".join(parts)[:200]
    return f": {detail}" if detail else ""
