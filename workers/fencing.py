"""The scheduler's leader lease in Redis, with a fencing token.

    broker:scheduler:leader        "<fence>.<nonce>@<host>:<pid>", gone after the TTL unless renewed
    broker:scheduler:leader:fence  the fence of the latest lease: INCR at each acquisition

Taking the lease and drawing its fence are one Lua script, so no two leases ever hold the
same fence and a newer lease always holds a greater one. The leader puts its fence on every
poll it enqueues (`broker.poll(provider, fence=...)`); the worker running the poll refuses
it unless that fence is still the latest (`fence_is_current`). A leader paused past its
lease (a long GC, SIGSTOP, a VM migration) may still enqueue when it wakes, before it
notices the lease is gone, but a newer leader has drawn a newer fence by then: the stale
poll is refused where it runs (Kleppmann, "How to do distributed locking", 2016).
"""

from __future__ import annotations

import os
import socket
import uuid

import redis

LOCK_NAME = "broker:scheduler:leader"

_ACQUIRE = """
if redis.call('exists', KEYS[1]) == 1 then return 0 end
local fence = redis.call('incr', KEYS[2])
redis.call('set', KEYS[1], fence .. '.' .. ARGV[1], 'PX', ARGV[2])
return fence
"""
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""


def identity() -> str:
    """This process, as the lease names its holder: `host:pid`."""
    return f"{socket.gethostname()}:{os.getpid()}"


def fence_key(lock_name: str = LOCK_NAME) -> str:
    return f"{lock_name}:fence"


def current_fence(client: redis.Redis, lock_name: str = LOCK_NAME) -> int | None:
    """The fence of the latest lease taken (None: none since Redis lost its data)."""
    value = client.get(fence_key(lock_name))
    return None if value is None else int(value)


def fence_is_current(client: redis.Redis, fence: int, lock_name: str = LOCK_NAME) -> bool:
    """Whether work stamped with `fence` comes from the latest lease."""
    return current_fence(client, lock_name) == fence


class Lease:
    """One holder's lease on `lock_name`: `acquire` (returns the fence), `renew`, `release`.

    Each `Lease` object is a holder of its own (two in one process never share a lease).
    """

    def __init__(self, client: redis.Redis, lock_name: str, ttl_s: float) -> None:
        self.client, self.lock_name, self.ttl_ms = client, lock_name, max(1, int(ttl_s * 1000))
        self.holder = f"{uuid.uuid4().hex[:8]}@{identity()}"
        self.fence: int | None = None
        self._acquire = client.register_script(_ACQUIRE)
        self._renew = client.register_script(_RENEW)
        self._release = client.register_script(_RELEASE)

    @property
    def _value(self) -> str:
        return f"{self.fence}.{self.holder}"

    def acquire(self) -> int | None:
        """Take the lease if nobody holds it; its fence, or None.

        Raises:
            redis.exceptions.RedisError: Redis does not answer.
        """
        keys = [self.lock_name, fence_key(self.lock_name)]
        fence = int(self._acquire(keys=keys, args=[self.holder, self.ttl_ms]))
        self.fence = fence or None
        return self.fence

    def renew(self) -> bool:
        """Extend the lease by the TTL; False when it is not ours any more (expired, taken).

        Raises:
            redis.exceptions.RedisError: Redis does not answer.
        """
        if self.fence is None:
            return False
        return bool(self._renew(keys=[self.lock_name], args=[self._value, self.ttl_ms]))

    def release(self) -> None:
        """Give the lease up at once if still ours (a clean stop: a standby need not wait)."""
        if self.fence is not None:
            self._release(keys=[self.lock_name], args=[self._value])
        self.fence = None
