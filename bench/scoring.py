"""Scoring benchmarks (issue 6): recommendations latency and rescoring 1,000 open requests.

`run()` returns the figures; `python -m bench.scoring` prints them as one JSON line.
- rescoring: a store holding the real 2026-05-08T2152 market and 1,000 open requests of
  varied shape (models, sizes, gangs, residency, caps, markets); then the real 2026-05-20
  snapshot is ingested (a full re-poll with its real changes) and `after_ingest` rescores
  every request its events touch. Timed: that rescoring call, on SQLite and PostgreSQL.
- recommendations through the API: `broker serve`'s app under uvicorn on 127.0.0.1, one
  request's `GET /v1/requests/{id}/recommendations` called repeatedly over real HTTP
  (keep-alive, httpx); p50/p99 of the client-side latency.
"""

from __future__ import annotations

import json
import os
import random
import socket
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("BROKER_BENCH_DATA_DIR", REPO.parent / "shared" / "data"))
T0 = datetime(2026, 5, 20, 12, tzinfo=UTC)
N_REQUESTS = 1000


def _bodies(n: int, seed: int = 7) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    models = [["H100"], ["H100", "H200"], ["A100"], ["L4"], ["A10G", "L4"], ["H200"], ["B200"]]
    places: list[dict[str, list[str]]] = [
        {},
        {"allow": ["EU"]},
        {"allow": ["US"]},
        {"deny": ["CN"]},
        {"allow": ["EU", "GB", "CH"]},
    ]
    out = []
    for i in range(n):
        per_node = rng.choice([None, None, 8])
        gpus = rng.choice([8, 16, 32, 64]) if per_node else rng.choice([1, 2, 4, 8, 24, 64])
        body: dict[str, Any] = {
            "name": f"bench-{i}",
            "gpu_models": rng.choice(models),
            "gpus": gpus,
            "duration_hours": rng.choice([24, 168, 672]),
            "residency": rng.choice(places),
            "markets": rng.choice([["on_demand"], ["on_demand", "capacity_block"], ["spot"]]),
        }
        if per_node:
            body["gpus_per_node"] = per_node
        if rng.random() < 0.5:
            body["max_price_per_gpu_hour"] = str(rng.choice([1.5, 2.5, 4, 8]))
        out.append(body)
    return out


def rescoring(db_url: str) -> dict[str, Any]:
    from broker import db
    from broker.config import Settings
    from broker.models import Team
    from broker.offers import ingest_poll
    from broker.pipeline import after_ingest
    from broker.requests import RequestIn, create_request
    from providers.replay import read_snapshot

    settings = Settings(
        database_url=db_url, data_dir=Path(tempfile.gettempdir()), rate_limit_per_minute=0
    )
    engine = db.make_engine(url=settings.effective_database_url)
    db.upgrade(engine)
    before = read_snapshot(DATA / "offers" / "2026-05-08T2152", T0 - timedelta(minutes=5))
    after = read_snapshot(DATA / "offers" / "2026-05-20", T0)
    with db.session_scope(engine) as s:
        ingest_poll(s, before, source="replay", clock=lambda: T0 - timedelta(minutes=5))
    t0 = time.perf_counter()
    with db.session_scope(engine) as s:
        team = Team(name="bench", created_at=T0)
        s.add(team)
        s.flush()
        assert team.id is not None
        for body in _bodies(N_REQUESTS):
            create_request(
                s, team.id, RequestIn.model_validate(body), settings=settings, clock=lambda: T0
            )
    create_s = time.perf_counter() - t0
    with db.session_scope(engine) as s:
        outcome = ingest_poll(s, after, source="replay", clock=lambda: T0)
    t0 = time.perf_counter()
    after_ingest(engine, outcome, settings, clock=lambda: T0)
    rescore_s = time.perf_counter() - t0
    from sqlmodel import Session, func, select

    from broker.models import RequestEvent

    with Session(engine) as s:
        changed = s.exec(select(func.count()).select_from(RequestEvent)).one()
    engine.dispose()
    return {
        "requests": N_REQUESTS,
        "offers_after": len(after.offers),
        "market_events": sum(outcome.events.values()),
        "create_s": round(create_s, 3),
        "rescore_s": round(rescore_s, 3),
        "best_option_changed": int(changed),
    }


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def api_latency(db_url: str, calls: int = 300) -> dict[str, Any]:
    import httpx
    import uvicorn

    from broker import db
    from broker.api.app import create_app
    from broker.auth import create_api_key
    from broker.config import Settings
    from broker.offers import ingest_poll
    from providers.replay import read_snapshot

    settings = Settings(
        database_url=db_url, data_dir=Path(tempfile.gettempdir()), rate_limit_per_minute=0
    )
    engine = db.make_engine(url=settings.effective_database_url)
    db.upgrade(engine)
    with db.session_scope(engine) as s:
        ingest_poll(s, read_snapshot(DATA / "offers" / "2026-05-20", T0), source="replay")
    with db.session_scope(engine) as s:
        key = create_api_key(s, team="bench", role="member").key
    # The API's clock just after the snapshot, so its offers are fresh (not stale).
    app = create_app(settings=settings, engine=engine, clock=lambda: T0 + timedelta(minutes=5))
    port = _free_port()
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    while not server.started:
        time.sleep(0.01)
    try:
        with httpx.Client(
            base_url=f"http://127.0.0.1:{port}", headers={"Authorization": f"Bearer {key}"}
        ) as client:
            body = {
                "gpu_models": ["H100"],
                "gpus": 64,
                "gpus_per_node": 8,
                "duration_hours": 672,
                "residency": {"allow": ["EU"]},
            }
            rid = client.post("/v1/requests", json=body).json()["id"]
            url = f"/v1/requests/{rid}/recommendations"
            client.get(url).raise_for_status()  # warm (market cache)
            lat = []
            for _ in range(calls):
                t0 = time.perf_counter()
                r = client.get(url)
                lat.append((time.perf_counter() - t0) * 1000)
                r.raise_for_status()
            doc = r.json()
    finally:
        server.should_exit = True
        thread.join(timeout=10)
        engine.dispose()
    lat.sort()
    return {
        "calls": calls,
        "options": doc.get("total_options", len(doc["options"])),
        "excluded_groups": len(doc["excluded"]),
        "p50_ms": round(statistics.median(lat), 2),
        "p99_ms": round(lat[int(len(lat) * 0.99) - 1], 2),
    }


def run(pg_url: str | None = None) -> dict[str, Any]:
    with tempfile.TemporaryDirectory() as tmp:
        out: dict[str, Any] = {
            "rescoring_sqlite": rescoring(f"sqlite:///{tmp}/rescore.db"),
            "api_sqlite": api_latency(f"sqlite:///{tmp}/api.db"),
        }
        if pg_url:
            out["rescoring_postgresql"] = rescoring(pg_url)
    return out


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1] if len(sys.argv) > 1 else None)))
