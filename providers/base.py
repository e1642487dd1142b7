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
with `@register`, and `discover()` imports every module of the package except `base` and
helpers named `_*` (`_http`: the shared JSON client).
"""

from __future__ import annotations

import difflib
import importlib
import logging
import pkgutil
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, TypeVar

from broker.config import Settings
from broker.domain import Clock, Offer, PollResult, Quota, Scope, ScopeError, redact
from broker.gpus import GpuModel

log = logging.getLogger(__name__)

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
    "RequestRejected",
    "Scope",
    "ScopeError",
    "ScopeOffers",
    "UnknownProvider",
    "discover",
    "failed_poll",
    "get_provider_class",
    "model_fields",
    "place_fields",
    "poll_scopes",
    "provider_names",
    "redact",
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


class RequestRejected(ProviderError):
    """A 4xx other than auth or rate limit: our request no longer fits the API."""

    code = "rejected"


def model_fields(model: GpuModel | None, raw_name: str | None = None) -> dict[str, Any]:
    """The `Offer` fields a catalogue model fills (`Offer(..., **model_fields(model))`).
    With no model (the catalogue does not know the provider's name) the offer keeps the
    provider's name as `gpu_name_raw` and every catalogue field is None: listed and
    counted as unrecognised, never guessed."""
    if model is None:
        if not raw_name:
            raise ValueError("an unrecognised accelerator needs its provider name")
        return {
            "gpu_model": None,
            "gpu_name_raw": raw_name,
            "gpu_family": None,
            "accelerator_kind": None,
            "gpu_vendor": None,
            "form_factor": None,
        }
    return {
        "gpu_model": model.name,
        "gpu_family": model.family,
        "accelerator_kind": str(model.kind),
        "gpu_vendor": model.vendor,
        "form_factor": model.form_factor,
    }


class Place(Protocol):
    """Where an offer is: a `broker.regions.RegionInfo`, or an adapter's own record."""

    @property
    def country(self) -> str | None: ...
    @property
    def jurisdiction(self) -> str | None: ...
    @property
    def continent(self) -> str | None: ...


def place_fields(info: Place | None) -> dict[str, Any]:
    """Country, jurisdiction and continent of a region; all None when it is not in the
    region table (never guessed)."""
    return {
        "country": info.country if info else None,
        "jurisdiction": info.jurisdiction if info else None,
        "continent": info.continent if info else None,
    }


@dataclass
class ScopeOffers:
    """What fetching one scope produced: offers, rows skipped (by reason), notes, quotas."""

    offers: list[Offer] = field(default_factory=list)
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)
    quotas: list[Quota] = field(default_factory=list)


def poll_scopes(
    provider: str,
    scopes: Sequence[Scope],
    fetch_one: Callable[[Scope], ScopeOffers | Iterable[Offer]],
    *,
    clock: Clock,
    max_workers: int = 8,
    secrets: Iterable[str | None] = (),
    failed: Sequence[ScopeError] = (),
    capacity_by_presence: frozenset[tuple[str, str]] = frozenset(),
) -> PollResult:
    """Fetch every scope on a bounded thread pool and assemble one `PollResult`.

    A scope whose `fetch_one` raises a `ProviderError` lands in `scope_errors` with its
    redacted message and contributes no offers (so ingest leaves its last good offers alone);
    any other exception is a bug, logged and reported as code `error`. Scopes that already
    failed before the fan-out (say, the price list) come in as `failed`.
    """
    secrets = tuple(secrets)
    fetched_at = clock()
    offers: list[Offer] = []
    ok: list[Scope] = []
    errors: list[ScopeError] = list(failed)
    skipped: Counter[str] = Counter()
    notes: list[str] = []
    quotas: list[Quota] = []

    def one(scope: Scope) -> ScopeOffers | ScopeError:
        try:
            got = fetch_one(scope)
        except ProviderError as exc:
            err = exc.to_scope_error(scope)
            return ScopeError(scope, err.code, redact(err.message, secrets), err.retry_after_s)
        except Exception as exc:
            log.error(
                "provider.scope_crashed %s %s: %s",
                provider,
                scope,
                redact(f"{type(exc).__name__}: {exc}", secrets),
            )
            return ScopeError(scope, "error", f"adapter error: {type(exc).__name__}")
        return got if isinstance(got, ScopeOffers) else ScopeOffers(list(got))

    workers = max(1, min(max_workers, len(scopes)))
    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=f"poll-{provider}") as pool:
        for scope, outcome in zip(scopes, pool.map(one, scopes), strict=True):
            if isinstance(outcome, ScopeError):
                errors.append(outcome)
                continue
            ok.append(scope)
            offers += outcome.offers
            skipped.update(outcome.skipped)
            notes += outcome.notes
            quotas += outcome.quotas
    for e in errors:
        log.warning("provider.scope_failed %s %s %s: %s", provider, e.scope, e.code, e.message)
    return PollResult(
        offers=offers,
        scopes_ok=ok,
        scope_errors=errors,
        fetched_at=fetched_at,
        skipped=dict(skipped),
        notes=notes[:50],
        capacity_by_presence=capacity_by_presence,
        quotas=quotas,
    )


def failed_poll(
    provider: str, exc: ProviderError, clock: Clock, secrets: Iterable[str | None] = ()
) -> PollResult:
    """A poll that failed as a whole (the catalogue or price list could not be read)."""
    err = exc.to_scope_error(Scope(provider))
    log.warning("provider.poll_failed %s %s: %s", provider, err.code, redact(err.message, secrets))
    return PollResult(
        offers=(),
        scopes_ok=(),
        scope_errors=(
            ScopeError(err.scope, err.code, redact(err.message, secrets), err.retry_after_s),
        ),
        fetched_at=clock(),
    )


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
        if info.name != "base" and not info.name.startswith("_"):
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
