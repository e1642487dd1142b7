"""A fake of Azure Resource Manager (Compute SKUs and usages) and the Azure Retail Prices API,
on `FakeHttpServer`.

Serves JSON shaped as PROVIDERS.md §3 documents it, at the paths the real
`azure-mgmt-compute` client and the retail API use:

    GET /subscriptions/{sub}/providers/Microsoft.Compute/skus                 (api-version)
    GET /subscriptions/{sub}/providers/Microsoft.Compute/locations/{loc}/usages
    GET /api/retail/prices?$filter=serviceName eq 'Virtual Machines' and armRegionName eq '{loc}'

ARM lists page with `{"value": [...], "nextLink": <absolute URL>}`, the link carrying the fake's
own host, the `api-version` and a `$skiptoken` (the SDK requests it verbatim); the retail API
pages with `{"Items": [...], "NextPageLink": <absolute URL with $skip> | null, "Count": n}`.
Errors use ARM's envelope (`arm_error`). Faults can be queued for one page of one list
(`fail_page`); `latency_s` delays every answer (benchmarks); `cache_pages` keeps encoded pages
(benchmarks: the catalogue must not change afterwards) and `shared_prices` are served to every
priced location (benchmarks: a full-size price list held once).
"""

from __future__ import annotations

import json
import re
import zlib
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

SUBSCRIPTION = "00000000-0000-0000-0000-000000000000"
PRICES_PATH = "/api/retail/prices"
SHARED_LOCATION = "zzsharedlocationzz"
_REGION_FILTER = re.compile(r"armRegionName eq '([^']*)'")


def arm_error(
    status: int,
    code: str,
    message: str,
    *,
    headers: dict[str, str] | None = None,
    delay_s: float = 0.0,
) -> FakeResponse:
    """An error in ARM's envelope `{"error": {"code", "message"}}`."""
    return FakeResponse(
        status,
        json={"error": {"code": code, "message": message}},
        headers=headers or {},
        delay_s=delay_s,
    )


# ------------------------------------------------------------------ resource builders


def restriction(
    kind: str,
    location: str,
    *,
    zones: Sequence[str] = (),
    reason: str = "NotAvailableForSubscription",
) -> dict[str, Any]:
    """A `restrictions[]` entry (`type` "Location" or "Zone")."""
    info: dict[str, Any] = {"locations": [location]}
    if zones:
        info["zones"] = list(zones)
    return {"type": kind, "values": [location], "restrictionInfo": info, "reasonCode": reason}


def vm_sku(
    name: str,
    location: str,
    *,
    family: str,
    vcpus: int,
    memory_gb: str,
    gpus: str | None = None,
    zones: Sequence[str] = (),
    restrictions: Sequence[dict[str, Any]] = (),
    rdma: bool = False,
) -> dict[str, Any]:
    """One `virtualMachines` resource SKU entry for one location, as ARM lists them."""
    caps = [
        {"name": "MaxResourceVolumeMB", "value": "737280"},
        {"name": "vCPUs", "value": str(vcpus)},
        {"name": "MemoryGB", "value": memory_gb},
        {"name": "HyperVGenerations", "value": "V1,V2"},
        {"name": "LowPriorityCapable", "value": "True"},
        {"name": "vCPUsAvailable", "value": str(vcpus)},
        {"name": "PremiumIO", "value": "True"},
        {"name": "AcceleratedNetworkingEnabled", "value": "True"},
        {"name": "RdmaEnabled", "value": "True" if rdma else "False"},
        {"name": "MaxNetworkInterfaces", "value": "8"},
    ]
    if gpus is not None:
        caps.insert(3, {"name": "GPUs", "value": gpus})
    size = name.removeprefix("Standard_")
    return {
        "resourceType": "virtualMachines",
        "name": name,
        "tier": "Standard",
        "size": size,
        "family": family,
        "locations": [location],
        "locationInfo": [
            {
                "location": location,
                "zones": list(zones),
                "zoneDetails": [
                    {
                        "Name": list(zones),
                        "capabilities": [{"name": "UltraSSDAvailable", "value": "True"}],
                    }
                ]
                if zones
                else [],
            }
        ],
        "capabilities": caps,
        "restrictions": list(restrictions),
    }


def disk_sku(name: str, location: str) -> dict[str, Any]:
    """A non-VM resource SKU (the list carries disks, availability sets, ... too)."""
    return {
        "resourceType": "disks",
        "name": name,
        "tier": "Premium",
        "size": "P30",
        "locations": [location],
        "locationInfo": [{"location": location, "zones": ["1", "2", "3"]}],
        "capabilities": [{"name": "MaxSizeGiB", "value": "1024"}],
        "restrictions": [],
    }


def usage(name: str, current: int, limit: int, localized: str) -> dict[str, Any]:
    return {
        "unit": "Count",
        "currentValue": current,
        "limit": limit,
        "name": {"value": name, "localizedValue": localized},
    }


#: `location` as the retail API spells it, for the fixture's locations.
RETAIL_LOCATION = {
    "eastus": "US East",
    "westeurope": "EU West",
    "brazilsouth": "BR South",
    "uksouth": "UK South",
}


def price(
    sku: str,
    location: str,
    retail: float,
    *,
    kind: str = "Consumption",
    spot: bool = False,
    windows: bool = False,
    low_priority: bool = False,
    term: str | None = None,
    meter_id: str | None = None,
    product: str | None = None,
    primary: bool = True,
    effective: str = "2025-01-01T00:00:00Z",
    currency: str = "USD",
    unit: str = "1 Hour",
) -> dict[str, Any]:
    """One Retail Prices `Items[]` row for a VM size (fields of PROVIDERS.md §3.7)."""
    size = sku.removeprefix("Standard_").replace("_", " ")
    sku_name = size + (" Spot" if spot else "") + (" Low Priority" if low_priority else "")
    series = product or f"Virtual Machines {size.split(' ', 1)[-1]} Series"
    if windows:
        series += " Windows"
    meter = meter_id or f"meter-{location}-{sku}-{kind}-{sku_name}-{term}-{windows}".lower()
    row: dict[str, Any] = {
        "currencyCode": currency,
        "tierMinimumUnits": 0.0,
        "retailPrice": retail,
        "unitPrice": retail,
        "armRegionName": location,
        "location": RETAIL_LOCATION.get(location, location),
        "effectiveStartDate": effective,
        "meterId": meter,
        "meterName": sku_name,
        "productId": f"DZH318Z0{zlib.crc32(series.encode()) % 10000:04d}",
        "skuId": f"DZH318Z0XXXX/{zlib.crc32(meter.encode()) % 10000:04d}",
        "productName": series,
        "skuName": sku_name,
        "serviceName": "Virtual Machines",
        "serviceId": "DZH313Z7MMC8",
        "serviceFamily": "Compute",
        "unitOfMeasure": unit,
        "type": kind,
        "isPrimaryMeterRegion": primary,
        "armSkuName": sku,
    }
    if term is not None:
        row["reservationTerm"] = term
    return row


# ------------------------------------------------------------------ the fake


@dataclass
class AzureCatalogue:
    """What the fake serves; tests may change it between polls (unless pages are cached)."""

    skus: list[dict[str, Any]] = field(default_factory=list)
    usages: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    prices: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    #: Rows served after every priced location's own rows, `SHARED_LOCATION` replaced by the
    #: location (the plain sizes' meters of a full-size market, held once).
    shared_prices: list[dict[str, Any]] = field(default_factory=list)

    def locations(self) -> set[str]:
        return {loc for s in self.skus for loc in s.get("locations", [])}


class AzureFake:
    """ARM + Retail Prices on one `FakeHttpServer`."""

    def __init__(
        self,
        server: FakeHttpServer,
        catalogue: AzureCatalogue,
        *,
        subscription: str = SUBSCRIPTION,
        sku_page_size: int = 4,
        price_page_size: int = 5,
        latency_s: float = 0.0,
        cache_pages: bool = False,
    ) -> None:
        self.server = server
        self.catalogue = catalogue
        self.subscription = subscription
        self.sku_page_size = sku_page_size
        self.price_page_size = price_page_size
        self.latency_s = latency_s
        self.cache_pages = cache_pages
        self._pages: dict[tuple[str, str, int], bytes] = {}
        self._shared_rows: list[bytes] | None = None
        #: (list, location or "", page number from 1) → queued answers for that page.
        self.faults: dict[tuple[str, str, int], deque[FakeResponse]] = {}
        self.skus_path = f"/subscriptions/{subscription}/providers/Microsoft.Compute/skus"
        server.route("GET", self.skus_path, self._skus)
        server.route("GET", PRICES_PATH, self._prices)
        for location in sorted(catalogue.locations() | set(catalogue.usages)):
            self.add_location(location)

    @property
    def url(self) -> str:
        return self.server.url

    @property
    def prices_url(self) -> str:
        return f"{self.server.url}{PRICES_PATH}"

    def usages_path(self, location: str) -> str:
        return (
            f"/subscriptions/{self.subscription}/providers/Microsoft.Compute/locations/"
            f"{location}/usages"
        )

    def add_location(self, location: str) -> None:
        self.server.route(
            "GET", self.usages_path(location), lambda req: self._usages(req, location)
        )

    def fail_page(self, kind: str, page: int, *responses: FakeResponse, location: str = "") -> None:
        """Answer page `page` (from 1) of list `kind` ("skus", "usages", "prices") of
        `location` with these responses, one per request, before the normal answer."""
        self.faults.setdefault((kind, location, page), deque()).extend(responses)

    def price_requests(self, location: str) -> list[FakeRequest]:
        return [
            r
            for r in self.server.requests_to(PRICES_PATH)
            if location in _REGION_FILTER.findall(r.param("$filter") or "")
        ]

    # ---------------------------------------------------------------- serving

    def _fault(self, kind: str, location: str, page: int) -> FakeResponse | None:
        queued = self.faults.get((kind, location, page))
        return queued.popleft() if queued else None

    def _ok(self, key: tuple[str, str, int], make: Any) -> FakeResponse:
        body = self._pages.get(key) if self.cache_pages else None
        if body is None:
            body = json.dumps(make()).encode()
            if self.cache_pages:
                self._pages[key] = body
        return FakeResponse(body=body, delay_s=self.latency_s)

    def _skus(self, req: FakeRequest) -> FakeResponse:
        if not req.param("api-version"):
            return arm_error(400, "MissingApiVersionParameter", "api-version is required")
        token = req.param("$skiptoken") or "0"
        start = int(token)
        page = start // self.sku_page_size + 1
        fault = self._fault("skus", "", page)
        if fault is not None:
            return fault
        version = req.param("api-version") or ""

        def make() -> dict[str, Any]:
            chunk = self.catalogue.skus[start : start + self.sku_page_size]
            doc: dict[str, Any] = {"value": chunk}
            end = start + self.sku_page_size
            if end < len(self.catalogue.skus):
                doc["nextLink"] = (
                    f"{self.url}{self.skus_path}?api-version={version}&$skiptoken={end}"
                )
            return doc

        return self._ok(("skus", "", page), make)

    def _usages(self, req: FakeRequest, location: str) -> FakeResponse:
        fault = self._fault("usages", location, 1)
        if fault is not None:
            return fault
        return self._ok(
            ("usages", location, 1), lambda: {"value": self.catalogue.usages.get(location, [])}
        )

    def _shared(self) -> list[bytes]:
        if self._shared_rows is None:
            self._shared_rows = [json.dumps(r).encode() for r in self.catalogue.shared_prices]
        return self._shared_rows

    def _prices(self, req: FakeRequest) -> FakeResponse:
        odata = req.param("$filter") or ""
        regions = _REGION_FILTER.findall(odata)
        if "serviceName eq 'Virtual Machines'" not in odata or len(regions) != 1:
            return FakeResponse(400, json={"Error": {"Message": f"unexpected filter {odata!r}"}})
        location = regions[0]
        skip = int(req.param("$skip") or 0)
        page = skip // self.price_page_size + 1
        fault = self._fault("prices", location, page)
        if fault is not None:
            return fault
        own = self.catalogue.prices.get(location, [])
        shared = self._shared() if location in self.catalogue.prices else []
        end = skip + self.price_page_size
        parts = [json.dumps(r).encode() for r in own[skip:end]]
        parts += shared[max(skip - len(own), 0) : max(end - len(own), 0)]
        items = b",".join(parts).replace(SHARED_LOCATION.encode(), location.encode())
        link = (
            f"{self.prices_url}?$filter={quote(odata, safe='')}&$skip={end}"
            if end < len(own) + len(shared)
            else None
        )
        body = (
            b'{"BillingCurrency": "USD", "CustomerEntityId": "Default", '
            b'"CustomerEntityType": "Retail", "Items": ['
            + items
            + b'], "NextPageLink": '
            + json.dumps(link).encode()
            + f', "Count": {len(parts)}}}'.encode()
        )
        return FakeResponse(body=body, delay_s=self.latency_s)


# ------------------------------------------------------------------ the test market

US, NL, BR = "eastus", "westeurope", "brazilsouth"
ND_H100 = "Standard_ND96isr_H100_v5"
NC_H100 = "Standard_NC40ads_H100_v5"
NC_A100 = "Standard_NC24ads_A100_v4"
NV_A10 = "Standard_NV6ads_A10_v5"
NV_A10_WHOLE = "Standard_NV36ads_A10_v5"
ND_GB200 = "Standard_ND128isr_NDR_GB200_v6"
NC_K80 = "Standard_NC6"
NC_T4 = "Standard_NC8as_T4_v3"
D4 = "Standard_D4s_v5"

#: The fixture's prices, USD as the retail API writes them (per hour; reservations per term).
PRICES: dict[str, float] = {
    "nd_h100_us": 98.32,
    "nd_h100_us_windows": 106.18,
    "nd_h100_us_spot": 39.33,
    "nd_h100_us_spot_windows": 47.19,
    "nd_h100_us_low_priority": 19.66,
    "nd_h100_us_devtest": 90.0,
    "nd_h100_us_1y": 537000.0,
    "nd_h100_us_3y": 1086000.0,
    "nd_h100_nl": 110.24,
    "nd_h100_nl_spot": 44.1,
    "nd_h100_nl_1y": 602000.0,
    "nc_h100_us": 6.98,
    "nc_h100_us_spot": 2.792,
    "nc_a100_us": 3.673,
    "nc_a100_us_spot": 0.7346,
    "nc_a100_nl": 4.1,
    "nv_a10_us": 0.454,
    # NV6ads / NV36ads A10 v5 in eastus as the market data set has them (2026-05-20 azure.csv).
    "nv_a10_whole_us": 3.2,
    "gb200_us": 108.0,
    # Standard_NC6 in eastus, SkyPilot's Azure catalog (market data set, 2022-12-31 azure.csv).
    "nc_k80_us": 0.9,
    "d4_us": 0.192,
    "d4_nl": 0.21,
}


def sample_catalogue() -> AzureCatalogue:
    """Two GPU locations (eastus, westeurope), one without GPUs (brazilsouth)."""
    p = PRICES
    skus = [
        vm_sku(D4, US, family="standardDSv5Family", vcpus=4, memory_gb="16", zones=["1", "2"]),
        vm_sku(
            ND_H100,
            US,
            family="standardNDSH100v5Family",
            gpus="8",
            vcpus=96,
            memory_gb="1900",
            zones=["1", "2", "3"],
            restrictions=[restriction("Zone", US, zones=["3"])],
            rdma=True,
        ),
        disk_sku("Premium_LRS", US),
        vm_sku(
            NC_H100,
            US,
            family="standardNCadsH100v5Family",
            gpus="1",
            vcpus=40,
            memory_gb="320",
            zones=["2", "3"],
            restrictions=[restriction("Location", US)],
        ),
        vm_sku(
            NC_A100,
            US,
            family="StandardNCADSA100v4Family",
            gpus="1",
            vcpus=24,
            memory_gb="220",
            zones=["1", "2", "3"],
        ),
        vm_sku(NV_A10, US, family="StandardNVADSA10v5Family", gpus="1", vcpus=6, memory_gb="55"),
        vm_sku(
            NV_A10_WHOLE, US, family="StandardNVADSA10v5Family", gpus="1", vcpus=36, memory_gb="440"
        ),
        # No `GPUs` capability at all, as ARM lists ND GB200 v6 (SkyPilot fetch_azure.py,
        # AZURE_MISSING_GPU_COUNT, from `az vm list-skus --all`; the family name is the one its
        # FAMILY_NAME_TO_SKYPILOT_GPU_NAME maps). An entry without `GPUs` is the shape of the
        # spec's own example (Azure/azure-rest-api-specs, specification/compute/resource-manager/
        # Microsoft.Compute/Skus/stable/2021-07-01/examples/skus/ListAvailableResourceSkus.json).
        vm_sku(
            ND_GB200,
            US,
            family="standardNDISRGB200V6NDRFamily",
            vcpus=128,
            memory_gb="900",
            rdma=True,
        ),
        # A retired size still listed (NC-series, K80, retired 2023-09-06): 6 vCPUs, 56 GiB,
        # 1 GPU (MicrosoftDocs/azure-docs nc-series specs); family as SkyPilot's fetcher maps it.
        vm_sku(NC_K80, US, family="standardNCFamily", gpus="1", vcpus=6, memory_gb="56"),
        vm_sku(NC_T4, US, family="standardNCASv3_T4Family", gpus="1", vcpus=8, memory_gb="56"),
        vm_sku(D4, NL, family="standardDSv5Family", vcpus=4, memory_gb="16", zones=["1", "2"]),
        vm_sku(
            ND_H100,
            NL,
            family="standardNDSH100v5Family",
            gpus="8",
            vcpus=96,
            memory_gb="1900",
            zones=["1", "2", "3"],
            rdma=True,
        ),
        vm_sku(
            NC_A100, NL, family="StandardNCADSA100v4Family", gpus="1", vcpus=24, memory_gb="220"
        ),
        vm_sku(D4, BR, family="standardDSv5Family", vcpus=4, memory_gb="16"),
        disk_sku("Premium_LRS", BR),
    ]
    us_prices = [
        price(D4, US, p["d4_us"]),
        price(ND_H100, US, p["nd_h100_us"], meter_id="nd-h100-us"),
        price(ND_H100, US, p["nd_h100_us_windows"], windows=True),
        price(ND_H100, US, p["nd_h100_us_spot"], spot=True, meter_id="nd-h100-us-spot"),
        price(ND_H100, US, p["nd_h100_us_spot_windows"], spot=True, windows=True),
        price(ND_H100, US, p["nd_h100_us_low_priority"], low_priority=True),
        price(ND_H100, US, p["nd_h100_us_devtest"], kind="DevTestConsumption"),
        price(ND_H100, US, p["nd_h100_us_1y"], kind="Reservation", term="1 Year"),
        price(ND_H100, US, p["nd_h100_us_3y"], kind="Reservation", term="3 Years"),
        price(NC_H100, US, p["nc_h100_us"]),
        price(NC_H100, US, p["nc_h100_us_spot"], spot=True),
        # Some H100 products end in " Win" rather than " Windows" (SkyPilot fetch_azure.py).
        price(NC_H100, US, 7.5, product="Virtual Machines NCadsH100v5 Srs Win"),
        price(NC_A100, US, p["nc_a100_us"]),
        price(NC_A100, US, p["nc_a100_us_spot"], spot=True),
        price(NV_A10, US, p["nv_a10_us"]),
        price(NV_A10_WHOLE, US, p["nv_a10_whole_us"]),
        price(ND_GB200, US, p["gb200_us"]),
        price(NC_K80, US, p["nc_k80_us"]),
    ]
    nl_prices = [
        price(D4, NL, p["d4_nl"]),
        price(ND_H100, NL, p["nd_h100_nl"]),
        price(ND_H100, NL, p["nd_h100_nl_spot"], spot=True),
        price(ND_H100, NL, p["nd_h100_nl_1y"], kind="Reservation", term="1 Year"),
        price(NC_A100, NL, p["nc_a100_nl"]),
    ]
    usages = {
        US: [
            usage("availabilitySets", 0, 2500, "Availability Sets"),
            usage("cores", 12, 350, "Total Regional vCPUs"),
            usage("lowPriorityCores", 0, 100, "Total Regional Low-priority vCPUs"),
            usage("standardDSv5Family", 4, 100, "Standard DSv5 Family vCPUs"),
            usage("standardNDSH100v5Family", 0, 96, "Standard NDSH100v5 Family vCPUs"),
            usage("standardNCadsH100v5Family", 0, 0, "Standard NCadsH100v5 Family vCPUs"),
            usage("StandardNCADSA100v4Family", 24, 48, "Standard NCADSA100v4 Family vCPUs"),
        ],
        NL: [
            usage("cores", 0, 100, "Total Regional vCPUs"),
            usage("lowPriorityCores", 0, 0, "Total Regional Low-priority vCPUs"),
            usage("standardNDSH100v5Family", 96, 192, "Standard NDSH100v5 Family vCPUs"),
        ],
        BR: [usage("cores", 0, 10, "Total Regional vCPUs")],
    }
    return AzureCatalogue(skus=skus, usages=usages, prices={US: us_prices, NL: nl_prices})


# ------------------------------------------------------------------ a full-size market


#: GPU sizes a large location offers: (name, family, GPUs, vCPUs, MemoryGB, on-demand $/h);
#: GPUs None = no `GPUs` capability (ND GB200 v6, as in `sample_catalogue`).
LARGE_GPU_SIZES: tuple[tuple[str, str, str | None, int, str, float], ...] = (
    ("Standard_ND96isr_H100_v5", "standardNDSH100v5Family", "8", 96, "1900", 98.32),
    ("Standard_ND96is_H100_v5", "standardNDSH100v5Family", "8", 96, "1900", 88.49),
    ("Standard_ND96isr_H200_v5", "standardNDSH200v5Family", "8", 96, "1850", 110.0),
    ("Standard_ND96isr_MI300X_v5", "standardNDISRMI300Xv5Family", "8", 96, "1850", 48.0),
    ("Standard_NC40ads_H100_v5", "standardNCadsH100v5Family", "1", 40, "320", 6.98),
    ("Standard_NC80adis_H100_v5", "standardNCadsH100v5Family", "2", 80, "640", 13.96),
    ("Standard_NCC40ads_H100_v5", "standardNCCadsH100v5Family", "1", 40, "320", 6.98),
    ("Standard_NC24ads_A100_v4", "StandardNCADSA100v4Family", "1", 24, "220", 3.673),
    ("Standard_NC48ads_A100_v4", "StandardNCADSA100v4Family", "2", 48, "440", 7.346),
    ("Standard_NC96ads_A100_v4", "StandardNCADSA100v4Family", "4", 96, "880", 14.692),
    ("Standard_ND96asr_v4", "StandardNDASv4_A100Family", "8", 96, "900", 27.197),
    ("Standard_ND96amsr_A100_v4", "standardNDAMSv4_A100Family", "8", 96, "1900", 32.77),
    ("Standard_NV6ads_A10_v5", "StandardNVADSA10v5Family", "1", 6, "55", 0.454),
    ("Standard_NV12ads_A10_v5", "StandardNVADSA10v5Family", "1", 12, "110", 0.908),
    ("Standard_NV18ads_A10_v5", "StandardNVADSA10v5Family", "1", 18, "220", 1.6),
    ("Standard_NV36ads_A10_v5", "StandardNVADSA10v5Family", "1", 36, "440", 3.2),
    ("Standard_NV36adms_A10_v5", "StandardNVADSA10v5Family", "1", 36, "880", 4.52),
    ("Standard_NV72ads_A10_v5", "StandardNVADSA10v5Family", "2", 72, "880", 6.52),
    ("Standard_NC4as_T4_v3", "standardNCASv3_T4Family", "1", 4, "28", 0.526),
    ("Standard_NC8as_T4_v3", "standardNCASv3_T4Family", "1", 8, "56", 0.752),
    ("Standard_NC16as_T4_v3", "standardNCASv3_T4Family", "1", 16, "110", 1.204),
    ("Standard_NC64as_T4_v3", "standardNCASv3_T4Family", "4", 64, "440", 4.352),
    ("Standard_NC6s_v3", "standardNCSv3Family", "1", 6, "112", 3.06),
    ("Standard_NC12s_v3", "standardNCSv3Family", "2", 12, "224", 6.12),
    ("Standard_NC24s_v3", "standardNCSv3Family", "4", 24, "448", 12.24),
    ("Standard_NC24rs_v3", "standardNCSv3Family", "4", 24, "448", 13.464),
    ("Standard_ND40rs_v2", "standardNDSv2Family", "8", 40, "672", 22.032),
    ("Standard_NC8ads_A10_v4", "StandardNCADSA10v4Family", "1", 8, "100", 0.95),
    ("Standard_NC16ads_A10_v4", "StandardNCADSA10v4Family", "1", 16, "200", 1.9),
    ("Standard_NC32ads_A10_v4", "StandardNCADSA10v4Family", "2", 32, "400", 3.8),
    ("Standard_ND128isr_NDR_GB200_v6", "standardNDISRGB200V6NDRFamily", None, 128, "900", 108.0),
)


def _filler_names(n: int) -> list[tuple[str, str, int]]:
    """`n` plain (non-GPU) VM size names with families and vCPUs, Azure-shaped."""
    series = ["D{}s_v5", "D{}ds_v5", "E{}s_v5", "E{}ds_v5", "F{}s_v2", "D{}as_v5", "E{}as_v5"]
    series += ["D{}ads_v5", "E{}ads_v5", "D{}s_v4", "E{}s_v4", "D{}_v5", "E{}_v5", "L{}s_v3"]
    series += ["M{}ms", "D{}pds_v5", "E{}pds_v5", "D{}ls_v5", "B{}ms", "D{}s_v6", "E{}s_v6"]
    sizes = [2, 4, 8, 16, 32, 48, 64, 96]
    out: list[tuple[str, str, int]] = []
    for s in series:
        fam = "standard" + s.replace("{}", "").replace("_", "").upper() + "Family"
        for v in sizes:
            out.append((f"Standard_{s.format(v)}", fam, v))
            if len(out) == n:
                return out
    while len(out) < n:  # more than the series give: numbered variants
        i = len(out)
        out.append((f"Standard_X{i}s_v9", "standardXSv9Family", 8))
    return out


def large_catalogue(
    locations: Iterable[str],
    *,
    filler_sizes: int = 100,
    no_gpu_every: int = 0,
    price_rows_per_location: int = 6000,
) -> AzureCatalogue:
    """A full-size subscription: every location lists `filler_sizes` plain VM sizes and
    (all but every `no_gpu_every`-th location) the GPU sizes of `LARGE_GPU_SIZES` with the
    per-location variation Azure shows (not every size everywhere); each location's retail
    price list has about `price_rows_per_location` rows (Linux, Windows, spot, low priority,
    Dev/Test and 1/3-year reservation meters of every size), as a real location's VM meters."""
    cat = AzureCatalogue()
    fillers = _filler_names(filler_sizes)
    for i, location in enumerate(sorted(locations)):
        gpu_here = no_gpu_every <= 0 or i % no_gpu_every != no_gpu_every - 1
        sizes = [
            g for j, g in enumerate(LARGE_GPU_SIZES) if gpu_here and (i + j) % 5 != 0
        ]  # ~80% of GPU sizes per GPU location
        factor = 1.0 + (i % 7) * 0.03
        rows: list[dict[str, Any]] = []
        usages = [
            usage("cores", 0, 350, "Total Regional vCPUs"),
            usage("lowPriorityCores", 0, 100, "Total Regional Low-priority vCPUs"),
        ]
        families: set[str] = set()
        for name, fam, gpus, vcpus, mem, od in sizes:
            zones = ["1", "2", "3"] if i % 3 else []
            cat.skus.append(
                vm_sku(
                    name,
                    location,
                    family=fam,
                    gpus=gpus,
                    vcpus=vcpus,
                    memory_gb=mem,
                    zones=zones,
                    rdma=name.startswith("Standard_ND"),
                )
            )
            base = round(od * factor, 4)
            rows += [
                price(name, location, base),
                price(name, location, round(base * 1.08, 4), windows=True),
                price(name, location, round(base * 0.4, 4), spot=True),
                price(name, location, round(base * 0.45, 4), spot=True, windows=True),
                price(
                    name, location, round(base * 8760 * 0.62, 2), kind="Reservation", term="1 Year"
                ),
                price(
                    name,
                    location,
                    round(base * 26280 * 0.41, 2),
                    kind="Reservation",
                    term="3 Years",
                ),
            ]
            families.add(fam)
        for fam in sorted(families):
            usages.append(usage(fam, 0, 96, fam))
        for name, fam, vcpus in fillers:
            cat.skus.append(
                vm_sku(name, location, family=fam, vcpus=vcpus, memory_gb=str(vcpus * 4))
            )
        cat.skus.append(disk_sku("Premium_LRS", location))
        cat.skus.append(disk_sku("StandardSSD_LRS", location))
        if rows:
            cat.prices[location] = rows
        cat.usages[location] = usages
    # The plain sizes' meters (Linux, Windows, spot, low priority, Dev/Test, reservations) fill
    # each location's price list up to the realistic row count; held once, served everywhere.
    kinds: list[dict[str, Any]] = [
        {},
        {"windows": True},
        {"spot": True},
        {"spot": True, "windows": True},
        {"low_priority": True},
        {"kind": "DevTestConsumption"},
        {"kind": "Reservation", "term": "1 Year"},
        {"kind": "Reservation", "term": "3 Years"},
    ]
    gpu_rows = len(LARGE_GPU_SIZES) * 6 * 4 // 5
    for k in range(max(price_rows_per_location - gpu_rows, 0)):
        name, _, vcpus = fillers[(k // len(kinds)) % len(fillers)]
        cat.shared_prices.append(
            price(
                name,
                SHARED_LOCATION,
                round(0.048 * vcpus, 4),
                meter_id=f"filler-{SHARED_LOCATION}-{k}",
                **kinds[k % len(kinds)],
            )
        )
    return cat
