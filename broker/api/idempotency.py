"""`Idempotency-Key` on the POSTs that create something (requests, bookings,
reservations, imports, usage, subscriptions).

A client that may retry sends a key of its choosing (1-255 printable characters). The first
request with it claims the key in its own transaction (a unique row per team and key) and,
when it succeeds, stores its answer there: the object and the claim commit together. A retry
with the same key and the same request (method, path, body) gets that answer again, with
`Idempotent-Replayed: true`, and creates nothing (for `BROKER_IDEMPOTENCY_TTL_HOURS`, 24:
the scheduler's housekeeping forgets older keys). The same key with another request is a 422
`idempotency_key_reused`; a retry racing the first one waits for it (the row lock) and then
replays, or gets 409 `idempotency_key_in_progress` if the first has not finished. A failed
request stores nothing: its retry runs again.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Annotated, TypeVar

from fastapi import Depends, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel
from sqlalchemy import delete, select
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session

from broker.api.deps import ClockDep
from broker.api.errors import ApiError
from broker.auth import Principal
from broker.domain import Clock, utcnow
from broker.models import IdempotencyKey

HEADER = "Idempotency-Key"
M = TypeVar("M", bound=BaseModel)


@dataclass
class Idempotency:
    """The request's key (None without the header) and fingerprint."""

    key: str | None
    fingerprint: str
    clock: Clock = utcnow
    _row: IdempotencyKey | None = None

    def claim(self, session: Session, principal: Principal) -> JSONResponse | None:
        """A replayed answer when this key was used before; else claim it (None)."""
        if self.key is None:
            return None
        prior = self._find(session, principal.team_id)
        if prior is None:
            row = IdempotencyKey(
                team_id=principal.team_id,
                key=self.key,
                fingerprint=self.fingerprint,
                created_at=self.clock(),
            )
            try:
                with session.begin_nested():
                    session.add(row)
                    session.flush()
            except IntegrityError:  # a concurrent request claimed it and has committed
                prior = self._find(session, principal.team_id)
                if prior is None:
                    raise _in_progress() from None
            else:
                self._row = row
                return None
        if prior.fingerprint != self.fingerprint:
            raise ApiError(
                422,
                "idempotency_key_reused",
                f"{HEADER} {self.key!r} was used with another request (method, path or body)",
            )
        if prior.status is None:
            raise _in_progress()
        return JSONResponse(
            prior.response, status_code=prior.status, headers={"Idempotent-Replayed": "true"}
        )

    def remember(self, session: Session, status: int, answer: M) -> M:
        """Store the answer with the claim (same transaction); returns it."""
        if self._row is not None:
            self._row.status = status
            self._row.response = answer.model_dump(mode="json")
            session.add(self._row)
        return answer

    def _find(self, session: Session, team_id: int) -> IdempotencyKey | None:
        found: IdempotencyKey | None = session.execute(
            select(IdempotencyKey).where(
                IdempotencyKey.team_id == team_id,  # type: ignore[arg-type]
                IdempotencyKey.key == self.key,  # type: ignore[arg-type]
            )
        ).scalar_one_or_none()
        return found


def forget_old_keys(session: Session, now: datetime, ttl_hours: float) -> int:
    """Delete the keys older than the TTL (housekeeping); how many."""
    table = IdempotencyKey.__table__  # type: ignore[attr-defined]
    result = session.connection().execute(
        delete(table).where(table.c.created_at < now - timedelta(hours=ttl_hours))
    )
    return int(result.rowcount or 0)


def _in_progress() -> ApiError:
    return ApiError(
        409,
        "idempotency_key_in_progress",
        "a request with this Idempotency-Key is still running; retry shortly",
        headers={"Retry-After": "1"},
    )


async def get_idempotency(request: Request, clock: ClockDep) -> Idempotency:
    key = request.headers.get(HEADER)
    if key is not None and (not 1 <= len(key) <= 255 or not key.isprintable()):
        raise ApiError(
            400, "invalid_idempotency_key", f"{HEADER} must be 1-255 printable characters"
        )
    if key is None:
        return Idempotency(None, "", clock)
    body = await request.body()
    digest = hashlib.sha256()
    for part in (request.method.encode(), request.url.path.encode(), body):
        digest.update(len(part).to_bytes(8, "big") + part)
    return Idempotency(key, digest.hexdigest(), clock)


IdempotencyDep = Annotated[Idempotency, Depends(get_idempotency)]
