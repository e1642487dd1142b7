"""RunPod adapter benchmark: `python -m bench.adapter_runpod` (last line: one JSON object).

Starts the fake RunPod GraphQL API (tests/fakes/runpod_api.py, a real socket on 127.0.0.1)
with RunPod's full GPU list (38 types, runpod/docs `references/gpu-types.mdx`) and 30 data
centres (28 of RunPod's REST `dataCenterIds` plus two the region table lacks), stock in
about 80% of (data centre, type, cloud) cells, and a fixed per-request latency of 50 ms.
Measures:

- `wall_s`: a full poll (1 catalogue request + 30 per-data-centre requests on the bounded
  pool, default `max_concurrency` 8), median of 3;
- `wall_s_concurrency_32`: the same with `max_concurrency` 32 (every data centre at once);
- `slowest_region_s`: the slowest single-data-centre poll (catalogue + that data centre,
  `BROKER_RUNPOD__DATA_CENTERS=<dc>`), over all 30;
- `api_calls`, `offers`, `parse_s` (offers built from the recorded answers, no network).

Full poll ÷ slowest single region is bounded by (1 + ⌈30 / max_concurrency⌉) / 2 round
trips: 2.5× at the default 8, 1.0–1.5× with 32. The fake runs in the same process (its
GraphQL parsing shares the GIL with the adapter), so the figures are upper bounds.
"""

from __future__ import annotations

import json
import statistics
import sys
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from broker.config import RunpodSettings  # noqa: E402
from broker.domain import PollResult  # noqa: E402
from providers.runpod import (  # noqa: E402
    CATALOGUE_QUERY,
    Runpod,
    parse_catalogue,
    parse_stock,
    stock_query,
)
from tests.fakes.http import FakeHttpServer  # noqa: E402
from tests.fakes.runpod_api import (  # noqa: E402
    DATA_CENTERS,
    RunpodFake,
    full_stock,
    gpu_catalogue,
)

KEY = "rp_bench_key_0123456789"
LATENCY_S = 0.05


def _clock() -> datetime:
    return datetime.now(UTC)


def _poll(
    fake: RunpodFake, concurrency: int, dcs: list[str] | None = None
) -> tuple[PollResult, float, int]:
    settings = RunpodSettings(
        base_url=fake.url,
        timeout_s=30,
        max_attempts=1,
        max_concurrency=concurrency,
        data_centers=dcs,
    )
    adapter = Runpod(KEY, settings, clock=_clock)
    before = len(fake.server.requests)
    t0 = time.perf_counter()
    result = adapter.fetch()
    wall = time.perf_counter() - t0
    adapter.close()
    return result, wall, len(fake.server.requests) - before


def _parse_only(fake: RunpodFake) -> float:
    """Seconds to build every offer from answers fetched beforehand (no network)."""
    with httpx.Client(base_url=fake.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
        cat_doc = c.post("/graphql", json={"query": CATALOGUE_QUERY}).json()
        docs = {
            dc.id: c.post("/graphql", json={"query": stock_query(dc.id)}).json()
            for dc in fake.data_centers
        }
    t0 = time.perf_counter()
    cat = parse_catalogue(cat_doc)
    for dc, doc in docs.items():
        parse_stock(doc, cat, dc)
    return time.perf_counter() - t0


def run() -> dict[str, object]:
    with FakeHttpServer() as server:
        gpus = gpu_catalogue()
        fake = RunpodFake(server, gpus, DATA_CENTERS, full_stock(gpus, DATA_CENTERS), api_key=KEY)
        parse_s = _parse_only(fake)
        fake.latency_s = LATENCY_S
        walls: list[float] = []
        result: PollResult | None = None
        calls = 0
        for _ in range(3):
            result, wall, calls = _poll(fake, 8)
            walls.append(wall)
        assert result is not None and not result.scope_errors, result and result.scope_errors
        wide = statistics.median(_poll(fake, 32)[1] for _ in range(3))
        singles = {dc.id: _poll(fake, 1, [dc.id])[1] for dc in DATA_CENTERS}
        slowest = max(singles.values())
        wall = statistics.median(walls)
        out: dict[str, Any] = {
            "adapter": "runpod",
            "regions": len(DATA_CENTERS),
            "gpu_types": len(gpus),
            "offers": len(result.offers),
            "api_calls": calls,
            "wall_s": round(wall, 4),
            "slowest_region_s": round(slowest, 4),
            "full_over_slowest": round(wall / slowest, 2),
            "max_concurrency": 8,
            "wall_s_concurrency_32": round(wide, 4),
            "full_over_slowest_concurrency_32": round(wide / slowest, 2),
            "latency_s": LATENCY_S,
            "parse_s": round(parse_s, 4),
            "skipped": dict(result.skipped),
        }
        return out


def main() -> None:
    out = run()
    print(
        f"runpod: {out['offers']} offers from {out['regions']} data centres × "
        f"{out['gpu_types']} GPU types in {out['api_calls']} calls; full poll {out['wall_s']}s "
        f"(max_concurrency 8), {out['wall_s_concurrency_32']}s (32); slowest single data "
        f"centre {out['slowest_region_s']}s"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
