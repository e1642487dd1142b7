"""Verda adapter benchmark: `python -m bench.adapter_verda` (last line: one JSON object).

Starts the fake Verda API (tests/fakes/verda_api.py, OAuth2 + REST on 127.0.0.1) with a
realistic catalogue of 31 instance types (29 GPU types: Verda's GPU families in 1/2/4/8-GPU
sizes, plus 2 CPU nodes) at Verda's 4 locations (FIN-01, FIN-02, FIN-03, ICE-01): every GPU
type listed on demand everywhere, every other one on spot; a fixed per-request latency of
50 ms.
Measures:

- `wall_s`: a cold poll (token + catalogue + the two availability calls, run concurrently),
  median of 3 fresh adapters;
- `wall_s_warm`: a poll with the token cached (catalogue + availability);
- `slowest_region_s`: the slowest single scope (one market's availability call, timed
  alone with a valid token); Verda answers every location in one call per market;
- `api_calls`, `offers`, `parse_s` (offers built from recorded answers, no network).

A warm poll is two round trips (catalogue, then both markets at once), so it is about
2× the slowest scope; a cold poll adds the token round trip.
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

from broker.config import VerdaSettings  # noqa: E402
from broker.domain import Market, PollResult  # noqa: E402
from providers.verda import (  # noqa: E402
    AVAILABILITY_PATH,
    TYPES_PATH,
    Verda,
    parse_availability,
    parse_instance_types,
)
from tests.fakes.http import FakeHttpServer  # noqa: E402
from tests.fakes.verda_api import LOCATIONS, VerdaFake, VerdaType  # noqa: E402

CLIENT_ID = "bench-client"
SECRET = "bench-secret-0123456789"
LATENCY_S = 0.05

#: (model, name, per-GPU GB, cores per GPU, RAM GB per GPU, $/GPU-h, spot $/GPU-h, sizes)
_FAMILIES = [
    ("B200", "B200 SXM6 180GB", 180, 30, 184, "4.90", "1.70", (1, 2, 4, 8)),
    ("H200", "H200 SXM5 141GB", 141, 44, 185, "3.75", "1.31", (1, 2, 4, 8)),
    ("H100", "H100 SXM5 80GB", 80, 30, 120, "2.65", "1.12", (1, 2, 4, 8)),
    ("A100", "A100 SXM4 80GB", 80, 22, 120, "1.29", "0.45", (1, 2, 4, 8)),
    ("A100", "A100 SXM4 40GB", 40, 22, 120, "0.75", "0.28", (1, 2, 4, 8)),
    ("L40S", "L40S 48GB", 48, 20, 60, "0.91", "0.36", (1, 2, 4)),
    ("RTX 6000 Ada", "RTX 6000 Ada 48GB", 48, 10, 60, "0.77", "0.27", (1, 2)),
    ("RTX A6000", "RTX A6000 48GB", 48, 10, 60, "0.49", "0.17", (1, 2)),
    ("V100", "Tesla V100 16GB", 16, 6, 23, "0.14", "0.05", (1, 2)),
]


def bench_catalogue() -> list[VerdaType]:
    out: list[VerdaType] = []
    for model, name, gb, cores, ram, price, spot, sizes in _FAMILIES:
        tag = model.replace(" ", "").upper()
        for n in sizes:
            out.append(
                VerdaType(
                    f"{n}{tag}.{gb}S.{cores * n}V",
                    model,
                    name,
                    f"{n}x {name}",
                    n,
                    gb * n,
                    cores * n,
                    ram * n,
                    f"{float(price) * n:.4f}",
                    f"{float(spot) * n:.4f}",
                )
            )
    out += [
        VerdaType("CPU.4V.16G", "", "CPU Node", "", 0, 0, 4, 16, "0.0300", "0.0100"),
        VerdaType("CPU.32V.128G", "", "CPU Node", "", 0, 0, 32, 128, "0.2400", None),
    ]
    return out


def _clock() -> datetime:
    return datetime.now(UTC)


def _adapter(fake: VerdaFake) -> Verda:
    settings = VerdaSettings(base_url=fake.url, timeout_s=30, max_attempts=1)
    return Verda(CLIENT_ID, SECRET, settings, clock=_clock)


def _timed(adapter: Verda) -> tuple[PollResult, float]:
    t0 = time.perf_counter()
    result = adapter.fetch()
    return result, time.perf_counter() - t0


def run() -> dict[str, object]:
    types = bench_catalogue()
    gpu_names = [t.instance_type for t in types if t.gpus]
    available = {
        "on_demand": {loc: list(gpu_names) for loc in LOCATIONS},
        "spot": {loc: gpu_names[::2] for loc in LOCATIONS},
    }
    with FakeHttpServer() as server:
        fake = VerdaFake(server, types, available, client_id=CLIENT_ID, client_secret=SECRET)
        # Parse cost alone, from answers fetched beforehand.
        warm = _adapter(fake)
        token = warm.tokens.current()
        headers = {"Authorization": f"Bearer {token}"}
        with httpx.Client(base_url=fake.url, headers=headers) as c:
            types_doc = c.get(TYPES_PATH, params={"currency": "usd"}).json()
            avail_docs = {
                m: c.get(AVAILABILITY_PATH, params={"is_spot": flag}).json()
                for m, flag in ((Market.ON_DEMAND, "false"), (Market.SPOT, "true"))
            }
        t0 = time.perf_counter()
        cat = parse_instance_types(types_doc)
        for m, doc in avail_docs.items():
            parse_availability(doc, cat, m)
        parse_s = time.perf_counter() - t0

        fake.latency_s = LATENCY_S
        cold: list[float] = []
        result: PollResult | None = None
        calls = 0
        for _ in range(3):
            adapter = _adapter(fake)
            before = len(server.requests)
            result, wall = _timed(adapter)
            calls = len(server.requests) - before
            cold.append(wall)
            adapter.close()
        assert result is not None and not result.scope_errors, result and result.scope_errors
        warm_walls = [_timed(warm)[1] for _ in range(3)]
        singles: list[float] = []
        with httpx.Client(base_url=fake.url, headers=headers) as c:
            for flag in ("false", "true"):
                t0 = time.perf_counter()
                c.get(AVAILABILITY_PATH, params={"is_spot": flag}).raise_for_status()
                singles.append(time.perf_counter() - t0)
        warm.close()
        slowest = max(singles)
        wall = statistics.median(cold)
        wall_warm = statistics.median(warm_walls)
        out: dict[str, Any] = {
            "adapter": "verda",
            "regions": len(LOCATIONS),
            "instance_types": len(types),
            "offers": len(result.offers),
            "api_calls": calls,
            "wall_s": round(wall, 4),
            "wall_s_warm": round(wall_warm, 4),
            "slowest_region_s": round(slowest, 4),
            "warm_over_slowest": round(wall_warm / slowest, 2),
            "latency_s": LATENCY_S,
            "parse_s": round(parse_s, 4),
            "skipped": dict(result.skipped),
        }
        return out


def main() -> None:
    out = run()
    print(
        f"verda: {out['offers']} offers from {out['instance_types']} types × {out['regions']} "
        f"locations in {out['api_calls']} calls; cold poll {out['wall_s']}s, warm "
        f"{out['wall_s_warm']}s; slowest single scope {out['slowest_region_s']}s"
    )
    print(json.dumps(out))


if __name__ == "__main__":
    main()
