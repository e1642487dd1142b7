"""Two producers ingesting at once: nothing lost, events numbered in commit order. On
PostgreSQL the interleaving that needs the ingest lock (`broker.offers.INGEST_LOCK_KEY`) is
forced, not hoped for: a second ingest starts while the first has numbered its events but
not committed them, and a follower of `/v1/events` reads in between."""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Engine, text
from sqlmodel import Session, col, select

from broker.db import session_scope
from broker.domain import PollResult, Scope
from broker.models import MarketEvent
from broker.offers import count_offers, ingest_poll
from providers.replay import read_snapshot
from tests.api.test_reservations import A100_DE, ROOM3

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


def _ingest_waits_on_the_lock(engine: Engine) -> bool:
    with engine.connect() as conn:
        return bool(
            conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                    "AND wait_event_type = 'Lock' AND wait_event = 'advisory'"
                )
            ).scalar_one()
        )


def _event_ids(engine: Engine, after: int = 0) -> list[int]:
    """The market events' ids after `after`, as a follower of `/v1/events` reads them."""
    with Session(engine) as s:
        ids = s.exec(
            select(MarketEvent.id).where(col(MarketEvent.id) > after).order_by(col(MarketEvent.id))
        ).all()
    return [i for i in ids if i is not None]


def test_an_ingest_numbered_first_commits_first_so_a_follower_skips_nothing(
    engine: Engine,
) -> None:
    """Ingest 1 has numbered its events and not committed; ingest 2 starts then. Without the
    lock ingest 2 would number its events after ingest 1's and commit first: a follower
    reading then keeps ingest 2's last id and never sees ingest 1's events. With it, ingest
    2 waits for ingest 1's commit (observed on PostgreSQL's lock table, not guessed from a
    sleep), and the follower reads nothing until both are in, in order."""
    if engine.dialect.name != "postgresql":
        pytest.skip("the ingest lock is PostgreSQL's; SQLite serialises every writer")
    # Different providers and GPU models: the two ingests share no row, only the lock.
    polls = [
        PollResult(offers=[ROOM3], scopes_ok=[Scope("aws")], scope_errors=(), fetched_at=T0),
        PollResult(
            offers=[replace(A100_DE, provider="gcp", region="europe-west3")],
            scopes_ok=[Scope("gcp")],
            scope_errors=(),
            fetched_at=T0,
        ),
    ]
    second_done = threading.Event()
    errors: list[BaseException] = []

    def second() -> None:
        try:
            with session_scope(engine) as s:
                ingest_poll(s, polls[1], source="worker-2")
        except BaseException as exc:  # surfaced below
            errors.append(exc)
        finally:
            second_done.set()

    with Session(engine) as first:
        numbered = ingest_poll(first, polls[0], source="worker-1")
        assert numbered.first_event_id is not None
        thread = threading.Thread(target=second)
        thread.start()
        deadline = time.monotonic() + 30
        while not second_done.is_set() and not _ingest_waits_on_the_lock(engine):
            assert time.monotonic() < deadline, "the second ingest neither ended nor waited"
            time.sleep(0.02)
        followed = _event_ids(engine)  # a follower polls between the two commits
        waited = not second_done.is_set()
        first.commit()
    thread.join(timeout=60)
    assert not errors and second_done.is_set()
    after = followed[-1] if followed else 0
    followed += _event_ids(engine, after)
    assert followed == _event_ids(engine), "the follower skipped events committed late"
    assert waited, "the second ingest did not wait for the first to commit"
    assert followed[0] == numbered.first_event_id
