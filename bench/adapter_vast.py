"""Benchmark of the Vast.ai adapter: `python -m bench.adapter_vast`.

A fake Vast search API (tests/fakes/vast_api.py, real socket on 127.0.0.1) answers a
marketplace of 5,000 listings per search (on-demand and interruptible: 10,000 listings a
poll, about 3.8 MB of JSON per search), 13 GPU models (one of them unknown to the catalogue,
skipped), 16 geolocation spellings (12 countries, plus listings without one: region
`unknown`), after 50 ms of latency per request. Full polls through the real adapter
(httpx → JSON → offers), then the parse alone on a decoded answer.

The adapter's pacing between the two searches (`min_interval_s`, 6 s: Vast enforces a minimum
interval per endpoint, 10 searches a minute) is turned off here so the figures show the
adapter's own cost; a real poll adds that pause once (`pacing_s_per_poll`).
`slowest_region_s` is the slowest single search (one market's scope); the two searches run
one after the other by design, so a poll is about the sum of both plus parsing.
Prints one JSON object on the last line.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from broker.config import VastSettings
from broker.domain import Market
from providers.vast import MIN_INTERVAL_S, Vast, parse_offers, search_query
from tests.fakes.http import FakeHttpServer
from tests.fakes.vast_api import MARKET_GEOS, MARKET_GPUS, VastFake, market

KEY = "bench-vast-key-0123456789abcdef"
LISTINGS = 5_000
LATENCY_S = 0.05
POLLS = 3
PARSE_ROUNDS = 5


def run() -> dict[str, object]:
    on_demand, bid = market(LISTINGS)
    with FakeHttpServer() as server:
        fake = VastFake(server, KEY, on_demand=on_demand, bid=bid, latency_s=LATENCY_S)
        adapter = Vast(
            KEY,
            VastSettings(base_url=fake.url, timeout_s=10.0, max_attempts=1),
            clock=lambda: datetime.now(UTC),
            min_interval_s=0.0,
        )
        walls: list[float] = []
        offers = 0
        regions: set[str] = set()
        skipped: dict[str, int] = {}
        for _ in range(POLLS):
            t0 = time.perf_counter()
            result = adapter.fetch()
            walls.append(time.perf_counter() - t0)
            assert not result.scope_errors, result.scope_errors
            offers = len(result.offers)
            regions = {o.region for o in result.offers}
            skipped = dict(result.skipped)
        calls = adapter.calls
        # One search alone (the slowest scope), timed on its own.
        single: list[float] = []
        for kind in (Market.ON_DEMAND, Market.SPOT):
            t0 = time.perf_counter()
            adapter.api.request("POST", "/bundles/", json_body=search_query(kind, 10_000))
            single.append(time.perf_counter() - t0)
        adapter.close()

    body = json.dumps({"offers": on_demand})
    doc: Any = json.loads(body)
    t0 = time.perf_counter()
    for _ in range(PARSE_ROUNDS):
        got = parse_offers(doc, Market.ON_DEMAND)
    parse_s = (time.perf_counter() - t0) / PARSE_ROUNDS
    return {
        "adapter": "vast",
        "regions": len(regions),
        "geolocation_spellings": len(MARKET_GEOS),
        "gpu_models": len(MARKET_GPUS),
        "listings_per_search": LISTINGS,
        "offers": offers,
        "skipped": skipped,
        "polls": POLLS,
        "api_calls": calls,
        "api_calls_per_poll": calls / POLLS,
        "latency_per_request_s": LATENCY_S,
        "wall_s": round(statistics.median(walls), 4),
        "wall_s_max": round(max(walls), 4),
        "slowest_region_s": round(max(single), 4),
        "pacing_s_per_poll": MIN_INTERVAL_S,
        "response_bytes_per_search": len(body),
        "parse_s": round(parse_s, 4),
        "parse_offers_per_s": round(len(got.offers) / parse_s),
    }


if __name__ == "__main__":
    figures = run()
    print(json.dumps(figures))
