"""Rate limiting per API key: `BROKER_RATE_LIMIT_PER_MINUTE` requests a minute, with bursts
up to `BROKER_RATE_LIMIT_BURST`; over it, 429 `rate_limited` with `Retry-After`.

Embedded mode: a token bucket per key in this process (refilled continuously, by the
monotonic clock). Production mode (`BROKER_REDIS_URL`): one counter per key and minute in
Redis, shared by every API process (a fixed window, so a key may get up to twice the rate
across a window edge; the burst setting does not apply). If Redis does not answer, the
request is let through (logged): an outage of the limiter must not become one of the API.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass

from broker.api.errors import ApiError
from broker.config import Settings

log = logging.getLogger(__name__)


@dataclass
class _Bucket:
    tokens: float
    at: float


class RateLimiter:
    def __init__(self, settings: Settings) -> None:
        self.per_minute = settings.rate_limit_per_minute
        self.burst = max(1, settings.rate_limit_burst)
        self.redis_url = settings.redis_url
        self._buckets: dict[int, _Bucket] = {}
        self._lock = threading.Lock()
        self._redis: object | None = None

    def check(self, key_id: int, now: float | None = None) -> None:
        """Raise 429 when key `key_id` is over its rate (`now`: seconds, for tests)."""
        if self.per_minute <= 0:
            return
        if self.redis_url:
            wait = self._redis_wait(key_id, time.time() if now is None else now)
        else:
            wait = self._local_wait(key_id, time.monotonic() if now is None else now)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise ApiError(
                429,
                "rate_limited",
                f"this API key is over {self.per_minute} requests a minute; retry in {seconds} s",
                {"limit_per_minute": self.per_minute, "retry_after_s": seconds},
                headers={"Retry-After": str(seconds)},
            )

    def _local_wait(self, key_id: int, now: float) -> float | None:
        rate = self.per_minute / 60.0
        with self._lock:
            b = self._buckets.get(key_id)
            if b is None:
                b = self._buckets[key_id] = _Bucket(float(self.burst), now)
            elapsed = max(0.0, now - b.at)
            b.tokens = min(float(self.burst), b.tokens + elapsed * rate)
            b.at = max(b.at, now)
            if b.tokens >= 1:
                b.tokens -= 1
                return None
            return (1 - b.tokens) / rate

    def _redis_wait(self, key_id: int, now: float) -> float | None:
        import redis

        try:
            if self._redis is None:
                self._redis = redis.Redis.from_url(
                    self.redis_url or "", socket_timeout=0.2, socket_connect_timeout=0.2
                )
            client: redis.Redis = self._redis  # type: ignore[assignment]
            window = int(now // 60)
            name = f"broker:ratelimit:{key_id}:{window}"
            pipe = client.pipeline()
            pipe.incr(name)
            pipe.expire(name, 120)
            count = int(pipe.execute()[0])
        except redis.exceptions.RedisError as exc:
            log.warning("ratelimit.redis_unavailable: %s", type(exc).__name__)
            return None
        if count <= self.per_minute:
            return None
        return 60 - (now % 60)
