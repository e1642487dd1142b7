"""Benchmark of the Azure adapter: `python -m bench.adapter_azure`.

A fake ARM + Retail Prices API (tests/fakes/azure_fake.py, real socket on 127.0.0.1, 50 ms of
latency per request) serves a full-size subscription: every Azure location of
broker/data/regions.csv, three in four with GPU sizes (about 80% of the 31 GPU sizes of
`LARGE_GPU_SIZES` each: H100/H200/MI300X/A100/A10/T4/V100 families, partial A10s, one GB200 the
catalogue does not know), 100 plain VM sizes and two disk SKUs per location, listed one entry per
size and location as ARM does (pages of 1,000 entries); vCPU usages per location; and per GPU
location a retail price list of 5,000 Virtual Machines rows (Linux, Windows, spot, low priority,
Dev/Test and 1/3-year reservation meters), in pages of 1,000 as the real API serves them.

Measured through the real adapter (azure-mgmt-compute client + httpx retail client):
- cold full polls (`prices_ttl_s=0`: every price page read) of every location, bounded pool of
  `max_concurrency` (default 8);
- warm full polls (prices cached within `prices_ttl_s`, the default): SKU list + usages only;
- cold single-location polls (`BROKER_AZURE__REGIONS=<one>`) of the three busiest locations.
A single-location poll still reads the whole subscription SKU list, so the comparison full vs
slowest single location shows what the fan-out adds. The fake runs in a child process, so the
CPU figures are the adapter's. Prints one JSON object on the last line.
"""

from __future__ import annotations

import csv
import json
import multiprocessing
import statistics
import time
from collections import Counter
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

from azure.core.credentials import AccessToken

from broker.config import AzureSettings
from broker.domain import PollResult
from providers.azure import Azure
from tests.fakes.azure_fake import SUBSCRIPTION, AzureFake, large_catalogue
from tests.fakes.http import FakeHttpServer

LATENCY_S = 0.05
FULL_POLLS = 2
SINGLE_LOCATIONS = 3
PRICE_ROWS = 5000
FILLER_SIZES = 100
PAGE = 1000
REGIONS_CSV = Path(__file__).resolve().parents[1] / "broker" / "data" / "regions.csv"


class _Credential:
    """A TokenCredential: the fake does not check the token."""

    def get_token(self, *scopes: str, **kwargs: Any) -> AccessToken:
        return AccessToken("bench-token", int(time.time()) + 3600)


def azure_locations() -> list[str]:
    with REGIONS_CSV.open(newline="", encoding="utf-8") as f:
        return sorted(row["region"] for row in csv.DictReader(f) if row["provider"] == "azure")


def _adapter(urls: tuple[str, str], regions: list[str] | None, ttl: float) -> Azure:
    arm, prices = urls
    settings = AzureSettings(
        subscription_id=SUBSCRIPTION,
        base_url=arm,
        retail_prices_url=prices,
        regions=regions,
        timeout_s=30.0,
        max_attempts=1,
        prices_ttl_s=ttl,
    )
    return Azure(settings, subscription_id=SUBSCRIPTION, credential=_Credential())


def _poll(adapter: Azure) -> tuple[float, float, int, PollResult]:
    calls = adapter.api_calls
    t0, c0 = time.perf_counter(), time.process_time()
    result = adapter.fetch()
    wall, cpu = time.perf_counter() - t0, time.process_time() - c0
    assert not result.scope_errors, result.scope_errors
    return wall, cpu, adapter.api_calls - calls, result


def _serve(conn: Connection, names: list[str]) -> None:
    """The fake, in its own process: its CPU is not the adapter's."""
    catalogue = large_catalogue(
        names, filler_sizes=FILLER_SIZES, no_gpu_every=4, price_rows_per_location=PRICE_ROWS
    )
    gpu_entries = sum(
        1 for s in catalogue.skus if any(c["name"] == "GPUs" for c in s.get("capabilities", []))
    )
    with FakeHttpServer() as server:
        fake = AzureFake(
            server,
            catalogue,
            sku_page_size=PAGE,
            price_page_size=PAGE,
            latency_s=LATENCY_S,
            cache_pages=True,
        )
        conn.send(
            (
                (fake.url, fake.prices_url),
                {
                    "sku_entries": len(catalogue.skus),
                    "gpu_sku_entries": gpu_entries,
                    "gpu_regions": len(catalogue.prices),
                },
            )
        )
        conn.recv()  # until the benchmark is done


def run() -> dict[str, object]:
    names = azure_locations()
    ours, theirs = multiprocessing.get_context("fork").Pipe()
    server = multiprocessing.get_context("fork").Process(target=_serve, args=(theirs, names))
    server.start()
    try:
        urls, sizes = ours.recv()
        _poll(_adapter(urls, names[:1], 0))  # warm-up: the fake's page caches, imports
        colds = [_poll(_adapter(urls, None, 0)) for _ in range(FULL_POLLS)]
        cached = _adapter(urls, None, 3600)
        _poll(cached)
        warms = [_poll(cached) for _ in range(FULL_POLLS)]
        result = colds[-1][3]
        per_location = Counter(o.region for o in result.offers)
        busiest = [r for r, _ in per_location.most_common(SINGLE_LOCATIONS)]
        singles = {r: _poll(_adapter(urls, [r], 0)) for r in busiest}
    finally:
        ours.send("stop")
        server.join(timeout=10)

    cold = statistics.median(w for w, _, _, _ in colds)
    warm = statistics.median(w for w, _, _, _ in warms)
    slowest_location, single = max(singles.items(), key=lambda kv: kv[1][0])
    return {
        "adapter": "azure",
        "regions": len(names),
        **sizes,
        "price_rows_per_region": PRICE_ROWS,
        "offers": len(result.offers),
        "quotas": len(result.quotas),
        "skipped": dict(result.skipped),
        "api_calls": colds[-1][2],
        "api_calls_warm": warms[-1][2],
        "api_calls_single_region": single[2],
        "latency_per_request_s": LATENCY_S,
        "max_concurrency": AzureSettings().max_concurrency,
        "wall_s": round(cold, 3),
        "cpu_s": round(statistics.median(c for _, c, _, _ in colds), 3),
        "wall_s_warm": round(warm, 3),
        "slowest_region": slowest_location,
        "slowest_region_s": round(single[0], 3),
        "full_over_slowest_region": round(cold / single[0], 2),
        "warm_full_over_slowest_region": round(warm / single[0], 2),
    }


if __name__ == "__main__":
    figures = run()
    print(
        f"azure: {figures['regions']} locations ({figures['gpu_regions']} with GPUs), "
        f"{figures['sku_entries']} SKU entries, {figures['offers']} offers; cold full poll "
        f"{figures['wall_s']} s ({figures['cpu_s']} s CPU) in {figures['api_calls']} calls, "
        f"warm {figures['wall_s_warm']} s in {figures['api_calls_warm']} calls, slowest single "
        f"location {figures['slowest_region_s']} s"
    )
    print(json.dumps(figures))
