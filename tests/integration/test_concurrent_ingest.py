"""Two producers ingesting at once: nothing lost, events numbered in commit order."""

from __future__ import annotations

import itertools
import threading
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.db import session_scope
from broker.domain import PollResult, Scope
from broker.models import MarketEvent
from broker.offers import count_offers, ingest_poll
from providers.replay import read_snapshot

T0 = datetime(2026, 11, 23, tzinfo=UTC)


def _only(result: PollResult, provider: str) -> PollResult:
    return PollResult(
        offers=[o for o in result.offers if o.provider == provider],
        scopes_ok=[Scope(provider)],
        scope_errors=(),
        fetched_at=T0,
    )


def test_concurrent_ingests_keep_every_event_in_contiguous_blocks(
    engine: Engine, snapshot_dirs: list[Path]
) -> None:
    snap = read_snapshot(snapshot_dirs[3], T0)  # 2024-05-01: 13 clouds
    polls = [_only(snap, p) for p in ("aws", "gcp", "oci", "runpod")]
    outcomes: dict[int, tuple[int | None, int | None, int]] = {}
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            with session_scope(engine) as s:
                r = ingest_poll(s, polls[i], source=f"worker-{i}")
            outcomes[i] = (r.first_event_id, r.last_event_id, sum(r.events.values()))
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(len(polls))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not errors
    with Session(engine) as s:
        ids = list(s.exec(select(MarketEvent.id).order_by(col(MarketEvent.id))).all())
        assert count_offers(s) == sum(len(p.offers) for p in polls)
    assert ids == list(range(1, len(ids) + 1))  # no gap, no duplicate
    blocks = sorted(
        (f, last, n) for f, last, n in outcomes.values() if f is not None and last is not None
    )
    assert len(blocks) == len(polls)
    for first, last, n in blocks:
        assert last - first + 1 == n
    for (_, last, _), (nxt, _, _) in itertools.pairwise(blocks):
        assert nxt == last + 1  # each poll's events form one block, in commit order
