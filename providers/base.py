"""The provider contract: one adapter class per provider, one `fetch()`, one registry.

An adapter turns a provider's API into a `PollResult` (see `broker.domain`): the offers it
saw, the scopes it covered completely, the scopes that failed and why. It knows nothing of
the store. Errors of the SDK or HTTP layer are mapped, in one place per adapter, onto the
`ProviderError` tree below, so the poll can degrade by scope instead of crashing:

    ProviderError
    ├── ProviderTimeout        the call did not answer in time
    ├── RateLimited            429 / throttling; carries retry_after_s when the provider says
    ├── ProviderUnavailable    5xx, connection refused, DNS
    ├── MalformedResponse      the answer could not be parsed (bad JSON, missing fields)
    └── AuthFailed             credentials rejected or missing a permission

The registry is the only list of providers: a module in this package registers its class
with `@register`, and `discover()` imports every module of the package.
"""

from __future__ import annotations

import difflib
import importlib
import pkgutil
from typing import ClassVar, Protocol, TypeVar

from broker.config import Settings
from broker.domain import Clock, PollResult, Scope, ScopeError

__all__ = [
    "AuthFailed",
    "MalformedResponse",
    "PollResult",
    "Provider",
    "ProviderDisabled",
    "ProviderError",
    "ProviderTimeout",
    "ProviderUnavailable",
    "RateLimited",
    "Scope",
    "ScopeError",
    "UnknownProvider",
    "discover",
    "get_provider_class",
    "provider_names",
    "register",
]


class ProviderError(Exception):
    """A provider call failed; `code` names the kind for ScopeError and status pages."""

    code: ClassVar[str] = "error"

    def to_scope_error(self, scope: Scope) -> ScopeError:
        return ScopeError(scope=scope, code=self.code, message=str(self))


class ProviderTimeout(ProviderError):
    code = "timeout"


class RateLimited(ProviderError):
    code = "rate_limited"

    def __init__(self, message: str, retry_after_s: float | None = None) -> None:
        super().__init__(message)
        self.retry_after_s = retry_after_s

    def to_scope_error(self, scope: Scope) -> ScopeError:
        return ScopeError(scope, self.code, str(self), retry_after_s=self.retry_after_s)


class ProviderUnavailable(ProviderError):
    code = "unavailable"


class MalformedResponse(ProviderError):
    code = "malformed"


class AuthFailed(ProviderError):
    code = "auth_failed"


class ProviderDisabled(Exception):
    """The adapter is not configured (no credentials); the message says what to set."""


class UnknownProvider(ValueError):
    """A provider name that no adapter registered."""


class Provider(Protocol):
    """One adapter. `name` == module name == settings key == CLI name."""

    name: ClassVar[str]

    def fetch(self) -> PollResult:
        """Poll the provider once. Must not raise for provider faults: failed scopes go
        into `scope_errors`."""
        ...


class ProviderFactory(Protocol):
    name: ClassVar[str]

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Provider:
        """Build the adapter, or raise `ProviderDisabled` saying which setting is missing."""
        ...


_REGISTRY: dict[str, type[ProviderFactory]] = {}
P = TypeVar("P", bound=type[ProviderFactory])


def register(cls: P) -> P:
    """Class decorator: add an adapter to the registry under `cls.name`."""
    name = cls.name
    if name in _REGISTRY and _REGISTRY[name] is not cls:
        raise ValueError(f"provider {name!r} registered twice")
    _REGISTRY[name] = cls
    return cls


def discover() -> None:
    """Import every module of the `providers` package so their `@register` runs."""
    import providers

    for info in pkgutil.iter_modules(providers.__path__):
        if info.name != "base":
            importlib.import_module(f"providers.{info.name}")


def provider_names() -> list[str]:
    discover()
    return sorted(_REGISTRY)


def get_provider_class(name: str) -> type[ProviderFactory]:
    """The adapter class registered as `name`.

    Raises:
        UnknownProvider: no such adapter; the message lists the valid names and near matches.
    """
    discover()
    try:
        return _REGISTRY[name]
    except KeyError:
        near = difflib.get_close_matches(name, _REGISTRY, n=3)
        hint = f" Did you mean: {', '.join(near)}?" if near else ""
        raise UnknownProvider(
            f"Unknown provider {name!r}.{hint} Known providers: {', '.join(sorted(_REGISTRY))}"
        ) from None
