"""`redact` masks what is left of a known secret when a message was cut off in the middle of
it before redaction (an adapter truncating a provider's error that echoed the key)."""

from __future__ import annotations

from datetime import UTC, datetime

from broker.domain import Scope, redact
from providers.base import ProviderUnavailable, poll_scopes

KEY = "rpa_Z9x8C7v6B5n4M3q2W1e0R"  # 25 characters, made up


def test_a_secret_cut_off_by_truncation_is_still_masked() -> None:
    for kept in (25, 24, 16, 6):
        text = ("upstream said: invalid key " + KEY)[: 27 + kept]
        out = redact(text, [KEY])
        assert KEY[:6] not in out, (kept, out)
        assert out.startswith("upstream said: invalid key ***")
    # Fewer than 6 characters of it are not taken for the secret.
    assert redact("rpa_Z is a model name", [KEY]) == "rpa_Z is a model name"
    assert redact("nothing secret here", [KEY]) == "nothing secret here"


def test_poll_errors_carry_no_start_of_the_key() -> None:
    def fetch(scope: Scope) -> list[object]:
        # An adapter that truncates the provider's message at 40 characters, mid-key.
        raise ProviderUnavailable(f"503 from upstream: bad key {KEY}"[:40])

    result = poll_scopes(
        "runpod",
        [Scope("runpod", "EU-RO-1")],
        fetch,  # type: ignore[arg-type]
        clock=lambda: datetime(2026, 12, 1, tzinfo=UTC),
        secrets=[KEY],
    )
    (err,) = result.scope_errors
    assert KEY[:6] not in err.message and err.message.endswith("***")
