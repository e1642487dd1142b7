"""Benchmark of the Lambda Cloud adapter: `python -m bench.adapter_lambda_cloud`.

A fake Lambda API (tests/fakes/lambda_cloud_api.py, real socket on 127.0.0.1) answers Lambda's
23 GPU instance types, each with capacity in all 17 public regions (391 offers, the largest
answer Lambda can give today), after 50 ms of latency per request. Full polls through the real
adapter (httpx → JSON → offers), then the parse alone on the decoded answer.

Lambda answers every region in one call, so there is no fan-out across regions:
`slowest_region_s` is that one call (the poll's floor) and the poll cannot be faster.
Prints one JSON object on the last line.
"""

from __future__ import annotations

import json
import statistics
import time
from datetime import UTC, datetime
from typing import Any

from broker.config import LambdaCloudSettings
from providers.lambda_cloud import LambdaCloud, parse_instance_types
from tests.fakes.http import FakeHttpServer
from tests.fakes.lambda_cloud_api import REGIONS, LambdaFake, catalogue, instance_types_body

KEY = "bench-lambda-key-0123456789"
LATENCY_S = 0.05
POLLS = 5
PARSE_ROUNDS = 200


def run() -> dict[str, object]:
    types = catalogue()
    for t in types:
        t.regions = list(REGIONS)
    with FakeHttpServer() as server:
        fake = LambdaFake(server, types, api_key=KEY, latency_s=LATENCY_S)
        adapter = LambdaCloud(
            KEY,
            LambdaCloudSettings(base_url=fake.url, timeout_s=5.0, max_attempts=1),
            clock=lambda: datetime.now(UTC),
        )
        walls: list[float] = []
        offers = 0
        for _ in range(POLLS):
            t0 = time.perf_counter()
            result = adapter.fetch()
            walls.append(time.perf_counter() - t0)
            assert not result.scope_errors, result.scope_errors
            offers = len(result.offers)
        calls = adapter.calls
        adapter.close()

    doc: Any = json.loads(json.dumps(instance_types_body(types)))
    t0 = time.perf_counter()
    for _ in range(PARSE_ROUNDS):
        parsed = parse_instance_types(doc)
    parse_s = (time.perf_counter() - t0) / PARSE_ROUNDS
    return {
        "adapter": "lambda_cloud",
        "regions": len(REGIONS),
        "instance_types": len(types),
        "offers": offers,
        "polls": POLLS,
        "api_calls": calls,
        "api_calls_per_poll": calls / POLLS,
        "latency_per_request_s": LATENCY_S,
        "wall_s": round(statistics.median(walls), 4),
        "wall_s_max": round(max(walls), 4),
        "slowest_region_s": round(max(walls), 4),
        "response_bytes": len(json.dumps(instance_types_body(types))),
        "parse_s": round(parse_s, 6),
        "parse_offers_per_s": round(len(parsed.offers) / parse_s),
    }


if __name__ == "__main__":
    figures = run()
    print(json.dumps(figures))
