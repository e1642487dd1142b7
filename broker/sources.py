"""Which providers are enabled, and the adapters to poll them: the rules of `broker poll`.

Every registered adapter whose `from_settings` does not raise `ProviderDisabled` is
enabled; `replay` is enabled when no cloud adapter is (or as `BROKER_REPLAY__ENABLED`
says). Used by the embedded scheduler (`workers.embedded`) and the API
(`GET /v1/providers`, `POST /v1/providers/{name}/poll`); knows nothing of HTTP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from broker.config import Settings
from broker.domain import Clock
from broker.polling import Source
from providers import base as provider_base

log = logging.getLogger(__name__)

REPLAY = "replay"
REPLAY_DISABLED = (
    "disabled because a cloud adapter is configured "
    "(set BROKER_REPLAY__ENABLED=true to poll it too)"
)
REPLAY_OFF = "disabled by BROKER_REPLAY__ENABLED=false"


@dataclass
class Sources:
    """Adapters built from the registry: `enabled` by name, and why the others are not."""

    enabled: dict[str, Source] = field(default_factory=dict)
    disabled: dict[str, str] = field(default_factory=dict)

    @property
    def names(self) -> list[str]:
        return sorted({*self.enabled, *self.disabled})


def _build(name: str, settings: Settings, clock: Clock) -> Source | str:
    """The adapter, or the one-line reason it is disabled."""
    cls = provider_base.get_provider_class(name)
    try:
        source: Source = cls.from_settings(settings, clock)
    except provider_base.ProviderDisabled as exc:
        return str(exc).splitlines()[0] if str(exc) else "not configured"
    except FileNotFoundError as exc:  # replay over a path that is not there
        return str(exc)
    except Exception as exc:  # a bug in an adapter's setup must not take the caller down
        log.exception("provider.setup_crashed", extra={"provider": name})
        return f"adapter failed to start: {type(exc).__name__}"
    return source


def build_sources(settings: Settings, clock: Clock) -> Sources:
    """Every registered provider, built or with the reason it is disabled."""
    out = Sources()
    names = provider_base.provider_names()
    for name in names:
        if name == REPLAY:
            continue
        built = _build(name, settings, clock)
        if isinstance(built, str):
            out.disabled[name] = built
        else:
            out.enabled[name] = built
    if REPLAY in names:
        wanted = settings.replay.enabled
        if wanted is None:
            wanted = not out.enabled
        if not wanted:
            out.disabled[REPLAY] = (
                REPLAY_OFF if settings.replay.enabled is False else REPLAY_DISABLED
            )
        else:
            built = _build(REPLAY, settings, clock)
            if isinstance(built, str):
                out.disabled[REPLAY] = built
            else:
                out.enabled[REPLAY] = built
    return out


class SourceCatalog:
    """`build_sources` cached for `ttl_s` (building an adapter may look up credentials).

    Thread-safe: the API serves requests on a thread pool.
    """

    def __init__(
        self,
        settings: Settings,
        clock: Clock,
        *,
        ttl_s: float = 300.0,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.settings, self.clock, self.ttl_s, self._monotonic = settings, clock, ttl_s, monotonic
        self._lock = threading.Lock()
        self._cached: tuple[float, Sources] | None = None

    def current(self) -> Sources:
        with self._lock:
            now = self._monotonic()
            if self._cached is None or now - self._cached[0] >= self.ttl_s:
                self._cached = (now, build_sources(self.settings, self.clock))
            return self._cached[1]
