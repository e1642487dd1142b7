"""Benchmark of the GCP adapter: `python -m bench.adapter_gcp`.

A fake Compute Engine + Cloud Billing Catalog (tests/fakes/gcp_fake.py, real socket on
127.0.0.1, 50 ms of latency per request) serves a full-size project: every GCP region of
broker/data/regions.csv (44), 3 zones each (4 in us-central1), accelerator types spread over
the zones roughly as GCP's GPU-regions table, the GPU machine shapes of the a2/a3/a4/g2 families
plus 120 plain machine types per zone (dropped by the machine-type filter server-side), GPU
quotas per region and market, and a 25,000-SKU price catalogue (about GCP's size; only the GPU,
core and RAM SKUs matter, the rest are storage/network filler).

Measured through the real adapter (compute_v1 REST clients + httpx billing client):
- full polls of every region (bounded pool of `max_concurrency` = 8 for the regions.get fan-out);
- single-region polls (`BROKER_GCP__REGIONS=<one>`) of the three regions with the most offers.
A single-region poll still reads the three project-wide lists (accelerator types, machine types,
SKUs) in full, so the full poll adds only the fan-out of regions.get: target full ≤ ~2× slowest
single region. Prints one JSON object on the last line.
"""

from __future__ import annotations

import csv
import json
import statistics
import time
from collections import Counter
from pathlib import Path
from typing import Any

from google.auth.credentials import AnonymousCredentials, Credentials

from broker.config import GcpSettings
from providers.gcp import Gcp
from tests.fakes.gcp_fake import GcpFake, large_catalogue
from tests.fakes.http import FakeHttpServer

LATENCY_S = 0.05
FULL_POLLS = 3
SINGLE_REGIONS = 3
REGIONS_CSV = Path(__file__).resolve().parents[1] / "broker" / "data" / "regions.csv"


def gcp_regions() -> list[str]:
    with REGIONS_CSV.open(newline="", encoding="utf-8") as f:
        return sorted(row["region"] for row in csv.DictReader(f) if row["provider"] == "gcp")


def _credentials() -> Credentials:
    factory: Any = AnonymousCredentials
    creds: Credentials = factory()
    return creds


def _poll(fake: GcpFake, regions: list[str] | None) -> tuple[float, int, Any]:
    settings = GcpSettings(
        project=fake.catalogue.project,
        api_endpoint=fake.url,
        billing_endpoint=fake.url,
        regions=regions,
        timeout_s=10.0,
        max_attempts=1,
    )
    adapter = Gcp(settings, project=fake.catalogue.project, credentials=_credentials())
    before = len(fake.server.requests)
    t0 = time.perf_counter()
    result = adapter.fetch()
    wall = time.perf_counter() - t0
    assert not result.scope_errors, result.scope_errors
    return wall, len(fake.server.requests) - before, result


def run() -> dict[str, object]:
    names = gcp_regions()
    catalogue = large_catalogue(names)
    with FakeHttpServer() as server:
        fake = GcpFake(server, catalogue, latency_s=LATENCY_S)
        fulls = [_poll(fake, None) for _ in range(FULL_POLLS)]
        result = fulls[-1][2]
        per_region = Counter(o.region for o in result.offers)
        busiest = [r for r, _ in per_region.most_common(SINGLE_REGIONS)]
        singles = {r: _poll(fake, [r]) for r in busiest}

    wall = statistics.median(w for w, _, _ in fulls)
    slowest_region, (slowest, single_calls, _) = max(singles.items(), key=lambda kv: kv[1][0])
    gpu_machine_types = sum(
        1 for ms in catalogue.machine_types.values() for m in ms if m.get("accelerators")
    )
    return {
        "adapter": "gcp",
        "regions": len(names),
        "zones": len(catalogue.zones),
        "accelerator_types": sum(len(a) for a in catalogue.accelerator_types.values()),
        "gpu_machine_types": gpu_machine_types,
        "skus": len(catalogue.skus),
        "offers": len(result.offers),
        "quotas": len(result.quotas),
        "skipped": dict(result.skipped),
        "api_calls": fulls[-1][1],
        "api_calls_single_region": single_calls,
        "latency_per_request_s": LATENCY_S,
        "max_concurrency": GcpSettings().max_concurrency,
        "wall_s": round(wall, 3),
        "wall_s_max": round(max(w for w, _, _ in fulls), 3),
        "slowest_region": slowest_region,
        "slowest_region_s": round(slowest, 3),
        "full_over_slowest_region": round(wall / slowest, 2),
    }


if __name__ == "__main__":
    figures = run()
    print(
        f"gcp: {figures['regions']} regions, {figures['zones']} zones, {figures['skus']} SKUs, "
        f"{figures['offers']} offers; full poll {figures['wall_s']} s in "
        f"{figures['api_calls']} calls, slowest single region {figures['slowest_region_s']} s"
    )
    print(json.dumps(figures))
