"""A fake Vast.ai search API: `POST /bundles/` in the documented shape.

The answer is `{"offers": [...]}`, one object per rentable listing, with the fields of the
documented example answer (https://docs.vast.ai/api-reference/search/search-offers) and
vast-cli's `vastai/data/offer.py` `Offer` model (`id`, `machine_id`, `host_id`, `gpu_name`,
`num_gpus`, `gpu_ram` (MB per GPU), `cpu_cores`, `cpu_cores_effective`, `cpu_ram` (MB, the
whole machine), `dph_base`, `dph_total`, `min_bid`, `storage_cost` (USD per GB-month),
`geolocation`, `reliability2`, `verification`, ...); the CPU and RAM defaults are the
documented example's (64 cores, 32 effective, 65536 MB). The query's `type` chooses the
listing set (`on-demand` or `bid`), so a test can fail one market and not the other. Errors
are Vast's: `{"success": false, "error", "msg"}` bodies, and 429 as plain text "API requests
too frequent" without Retry-After. Prices and places are illustrative, not quotes.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

PATH = "/bundles/"
RATE_LIMITED = FakeResponse(429, body=b"API requests too frequent", headers={})


def listing(
    ask_id: int,
    machine_id: int,
    gpu_name: str,
    num_gpus: int,
    dph_total: float,
    *,
    gpu_ram: int = 24564,
    min_bid: float | None = None,
    geolocation: str | None = "Sweden, SE",
    host_id: int = 98765,
    dph_base: float | None = None,
    storage_cost: float = 0.15,
    cpu_cores: int | None = 64,
    cpu_cores_effective: float = 32.0,
    cpu_ram: int = 65536,
    reliability2: float = 0.9912,
    rented: bool = False,
    rentable: bool = True,
    gpu_frac: float = 1.0,
) -> dict[str, Any]:
    """One search-offers object as the API answers it."""
    base = dph_base if dph_base is not None else round(dph_total - 0.02, 4)
    out: dict[str, Any] = {
        "id": ask_id,
        "ask_contract_id": ask_id,
        "machine_id": machine_id,
        "host_id": host_id,
        "gpu_name": gpu_name,
        "num_gpus": num_gpus,
        "gpu_ram": gpu_ram,
        "gpu_total_ram": gpu_ram * num_gpus,
        "gpu_frac": gpu_frac,
        "dph_base": base,
        "dph_total": dph_total,
        "min_bid": min_bid if min_bid is not None else round(dph_total * 0.6, 4),
        "storage_cost": storage_cost,
        "reliability": reliability2,
        "reliability2": reliability2,
        "rentable": rentable,
        "rented": rented,
        "verification": "verified",
        "verified": True,
        "external": False,
        "hosting_type": 1,
        "duration": 2592000.0,
        "cuda_max_good": 12.4,
        "driver_version": "550.54.15",
        "inet_up": 850.2,
        "inet_down": 920.7,
        "cpu_cores": cpu_cores,
        "cpu_cores_effective": cpu_cores_effective,
        "cpu_ram": cpu_ram,
        "disk_space": 512.0,
        "static_ip": True,
        "is_bid": False,
        "search": {
            "gpuCostPerHour": base,
            "diskHour": round(dph_total - base, 4),
            "totalHour": dph_total,
        },
    }
    if geolocation is not None:
        out["geolocation"] = geolocation
    return out


@dataclass
class VastFake:
    """`POST /bundles/` on a FakeHttpServer. `on_demand` / `bid` are the listings each query
    type answers; `fail` maps a query type to a response served instead (one market fails);
    `latency_s` delays every answer; `bodies` records every query body."""

    server: FakeHttpServer
    api_key: str
    on_demand: list[Any] = field(default_factory=list)  # Any: tests inject bad listings
    bid: list[Any] = field(default_factory=list)
    fail: dict[str, FakeResponse] = field(default_factory=dict)
    latency_s: float = 0.0
    bodies: list[dict[str, Any]] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.server.route("POST", PATH, self._answer)

    @property
    def url(self) -> str:
        return self.server.url

    def _answer(self, req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            # The OpenAPI lists 404 "Unauthorized - invalid or missing API key"; a bad key
            # seen in practice is 401/403. The fake answers 401.
            return FakeResponse(
                401, json={"success": False, "error": "auth_error", "msg": "Invalid api key"}
            )
        body = req.json()
        self.bodies.append(body)
        kind = body.get("type") if isinstance(body, dict) else None
        if kind in self.fail:
            return self.fail[kind]
        if kind == "on-demand":
            listings = self.on_demand
        elif kind == "bid":
            listings = self.bid
        else:
            return FakeResponse(
                400,
                json={"success": False, "error": "invalid_args", "msg": f"bad type {kind!r}"},
            )
        limit = body.get("limit")
        if isinstance(limit, int):
            listings = listings[:limit]
        return FakeResponse(json={"offers": listings}, delay_s=self.latency_s)


#: (gpu_name as Vast spells it, MiB per GPU, typical USD per GPU-hour on demand).
MARKET_GPUS: list[tuple[str, int, float]] = [
    ("RTX 4090", 24564, 0.35),
    ("RTX 3090", 24576, 0.20),
    ("RTX 5090", 32607, 0.60),
    ("RTX A6000", 49140, 0.45),
    ("RTX 6000Ada", 49140, 0.75),
    ("A100 SXM4", 81920, 1.10),
    ("A100 PCIE", 40960, 0.80),
    ("H100 SXM", 81559, 1.90),
    ("H100 NVL", 95830, 2.00),
    ("H200", 143771, 2.60),
    ("L40S", 46068, 0.70),
    ("Tesla V100", 16384, 0.15),
    ("GTX 1080 Ti", 11264, 0.08),  # not in the broker's catalogue: kept, gpu_model None
]
#: Geolocations as Vast writes them (state or country name, ISO code; sometimes only the
#: code, sometimes an empty first part), plus a listing without one.
MARKET_GEOS: list[str | None] = [
    "Sweden, SE",
    "Florida, US",
    "Oregon, US",
    "US",
    "Germany, DE",
    "The Netherlands, NL",
    "Ontario, CA",
    ", CA",
    "Norway, NO",
    "Japan, JP",
    "Taiwan, TW",
    "South Korea, KR",
    "Switzerland, CH",
    "France, FR",
    "Poland, PL",
    None,
]


def market(n: int, seed: int = 7) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """A marketplace of about `n` listings: (on-demand listings, interruptible listings).

    Machines of 1, 2, 4 or 8 GPUs; a machine of k GPUs lists chunks of k and, half the time,
    k/2 (Vast's partial-machine offers); every listing is offered interruptible too, at
    about 60 % of its on-demand price. Deterministic for a seed.
    """
    rng = random.Random(seed)
    on_demand: list[dict[str, Any]] = []
    machine = 10_000
    ask = 20_000_000
    while len(on_demand) < n:
        machine += 1
        name, ram, per_gpu = rng.choice(MARKET_GPUS)
        size = rng.choice((1, 2, 4, 8))
        geo = rng.choice(MARKET_GEOS)
        chunks = [size] + ([size // 2] if size > 1 and rng.random() < 0.5 else [])
        for k in chunks:
            ask += 1
            price = round(per_gpu * k * rng.uniform(0.8, 1.4) + 0.02, 4)
            on_demand.append(
                listing(
                    ask,
                    machine,
                    name,
                    k,
                    price,
                    gpu_ram=ram,
                    geolocation=geo,
                    host_id=machine // 3,
                    min_bid=round(price * 0.6, 4),
                    gpu_frac=k / size,
                )
            )
    on_demand = on_demand[:n]
    bid = [dict(o, is_bid=True) for o in on_demand]
    return on_demand, bid
