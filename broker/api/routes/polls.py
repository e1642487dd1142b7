"""`/v1/polls/{id}`: one poll as it was ingested (the provenance offers point to)."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from broker.api.deps import SessionDep
from broker.api.errors import not_found
from broker.api.pagination import PollId
from broker.api.schemas import PollPublic
from broker.models import PollRun

router = APIRouter(prefix="/polls", tags=["polls"])


@router.get("/{poll_id}", response_model=PollPublic)
def read_poll(poll_id: PollId, session: SessionDep) -> dict[str, Any]:
    """One poll: source, when it was fetched and ingested, the scopes it covered and those
    that failed, rows skipped by reason, names it could not map, the events it wrote, and
    where each provider's data came from (`origins`)."""
    row = session.get(PollRun, poll_id)
    if row is None:
        raise not_found(f"no poll with id {poll_id}")
    return row.model_dump()
