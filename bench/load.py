"""Load benchmark (issue 9): a sustained request rate against two `broker serve` processes
on PostgreSQL (the production shape's API tier: two workers behind a balancer, here the
client alternating between them), loopback only, bounded in time.

Traffic: an open-loop schedule of RATE requests a second for SECONDS seconds (each request
sent at its scheduled time, whether or not earlier ones answered, so a slow server shows as
latency, not as fewer requests), 80 % `GET /v1/offers?gpu=H100&limit=50` and 20 %
`GET /v1/requests/{id}/recommendations` (64 × H100 in the EU); latency = answer − scheduled
send. Twice: on a quiet store, then while this process ingests a full re-poll of the real
market (the 2026-05-08T2152 snapshot then the 2026-05-20 one: 1,751 events).

`python -m bench.load PG_URL` prints one JSON line.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("BROKER_BENCH_DATA_DIR", REPO.parent / "shared" / "data"))
RATE = int(os.environ.get("BROKER_BENCH_RATE", "100"))
SECONDS = int(os.environ.get("BROKER_BENCH_SECONDS", "20"))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ingest(db_url: str, snapshot: str) -> float:
    from broker import db
    from broker.offers import ingest_poll
    from providers.replay import read_snapshot

    engine = db.make_engine(url=db_url)
    result = read_snapshot(DATA / "offers" / snapshot, datetime.now(UTC))
    t = time.perf_counter()
    with db.session_scope(engine) as s:
        ingest_poll(s, result, source="replay")
    took = time.perf_counter() - t
    engine.dispose()
    return took


async def _drive(urls: list[str], key: str, request_id: int, seconds: int) -> dict[str, Any]:
    import httpx

    headers = {"Authorization": f"Bearer {key}"}
    limits = httpx.Limits(max_connections=64, max_keepalive_connections=64)
    latencies: dict[str, list[float]] = {"offers": [], "recommendations": []}
    errors: dict[str, int] = {}
    async with httpx.AsyncClient(headers=headers, limits=limits, timeout=30) as client:
        loop = asyncio.get_running_loop()
        start = loop.time() + 0.2
        total = RATE * seconds

        async def one(i: int) -> None:
            at = start + i / RATE
            await asyncio.sleep(max(0.0, at - loop.time()))
            kind = "recommendations" if i % 5 == 4 else "offers"
            path = (
                f"/v1/requests/{request_id}/recommendations?limit=5"
                if kind == "recommendations"
                else "/v1/offers?gpu=H100&limit=50"
            )
            try:
                r = await client.get(urls[i % len(urls)] + path)
                if r.status_code != 200:
                    errors[str(r.status_code)] = errors.get(str(r.status_code), 0) + 1
            except httpx.HTTPError as exc:
                errors[type(exc).__name__] = errors.get(type(exc).__name__, 0) + 1
            latencies[kind].append(loop.time() - at)

        await asyncio.gather(*(one(i) for i in range(total)))
        wall = loop.time() - start
    out: dict[str, Any] = {
        "target_rps": RATE,
        "seconds": seconds,
        "requests": total,
        "achieved_rps": round(total / wall, 1),
        "errors": errors,
    }
    for kind, values in latencies.items():
        values.sort()
        q = statistics.quantiles(values, n=100, method="inclusive")
        out[kind] = {
            "n": len(values),
            "p50_ms": round(statistics.median(values) * 1000, 1),
            "p99_ms": round(q[98] * 1000, 1),
        }
    return out


def run(pg_url: str) -> dict[str, Any]:
    import httpx

    from broker import db
    from broker.auth import create_api_key

    engine = db.make_engine(url=pg_url)
    db.upgrade(engine)
    engine.dispose()
    _ingest(pg_url, "2026-05-08T2152")
    engine = db.make_engine(url=pg_url)
    with db.session_scope(engine) as s:
        key = create_api_key(s, team="load", role="member").key
    engine.dispose()
    tmp = tempfile.mkdtemp()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env.update(
        BROKER_DATABASE_URL=pg_url,
        BROKER_DATA_DIR=tmp,
        BROKER_RATE_LIMIT_PER_MINUTE="0",
        BROKER_LOG_LEVEL="WARNING",
    )
    ports = [_free_port(), _free_port()]
    servers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "broker.cli",
                "serve",
                "--no-embedded-workers",
                "--port",
                str(p),
            ],
            env=env,
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        for p in ports
    ]
    urls = [f"http://127.0.0.1:{p}" for p in ports]
    try:
        deadline = time.time() + 60
        for u in urls:
            while True:
                try:
                    if httpx.get(f"{u}/readyz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.time() > deadline:
                    raise RuntimeError("the API did not start")
                time.sleep(0.2)
        body = {
            "gpu_models": ["H100"],
            "gpus": 64,
            "gpus_per_node": 8,
            "duration_hours": 672,
            "residency": {"allow": ["EU"]},
        }
        h = {"Authorization": f"Bearer {key}"}
        rid = httpx.post(f"{urls[0]}/v1/requests", json=body, headers=h).json()["id"]
        for u in urls:  # warm each process (market cache)
            httpx.get(f"{u}/v1/requests/{rid}/recommendations", headers=h).raise_for_status()
        quiet = asyncio.run(_drive(urls, key, rid, SECONDS))
        ingest: dict[str, float] = {}

        def repoll() -> None:
            time.sleep(2)
            ingest["seconds"] = _ingest(pg_url, "2026-05-20")

        t = threading.Thread(target=repoll)
        t.start()
        during = asyncio.run(_drive(urls, key, rid, SECONDS))
        t.join()
        during["ingest_s"] = round(ingest.get("seconds", -1), 2)
    finally:
        for p in servers:
            p.send_signal(signal.SIGTERM)
        for p in servers:
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
    return {"api_processes": 2, "quiet": quiet, "during_ingest": during}


if __name__ == "__main__":
    print(json.dumps(run(sys.argv[1])))
