"""API keys with an expiry stop working at it; the last use is recorded."""

from __future__ import annotations

from datetime import timedelta

import pytest
from sqlalchemy import Engine

from broker import auth
from broker.db import session_scope
from tests.api.conftest import Clock, TestClient, bearer


def test_an_expired_key_is_401_and_last_use_is_stamped(
    client: TestClient, engine: Engine, clock: Clock
) -> None:
    with session_scope(engine) as session:
        created = auth.create_api_key(
            session, "ops", auth.Role.VIEWER, clock=clock, expires_in=auth.parse_duration("2d")
        )
    assert client.get("/v1/providers", headers=bearer(created.key)).status_code == 200
    with session_scope(engine) as session:
        (row,) = [r for r in auth.list_api_keys(session, "ops")]
    assert row["last_used_at"] == clock() and row["expires_at"] == clock() + timedelta(days=2)
    clock.advance(days=2)
    r = client.get("/v1/providers", headers=bearer(created.key))
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthenticated"


@pytest.mark.parametrize("text", ["0d", "-1d", "90 days", "1y", ""])
def test_bad_durations_are_refused(text: str) -> None:
    with pytest.raises(auth.AuthError, match="bad duration"):
        auth.parse_duration(text)
    assert auth.parse_duration("90d") == timedelta(days=90)
    assert auth.parse_duration("12h") == timedelta(hours=12)
