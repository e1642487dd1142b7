"""A fake of the Compute Engine and Cloud Billing Catalog REST APIs, on `FakeHttpServer`.

Serves JSON shaped as Google's REST references document it (cloud.google.com/compute/docs/
reference/rest/v1: acceleratorTypes, machineTypes, regions; cloud.google.com/billing/docs/
reference/rest/v1/services.skus/list), at the paths the real `compute_v1` REST transport and
the billing catalogue use:

    GET /compute/v1/projects/{p}/aggregated/acceleratorTypes   (maxResults, pageToken)
    GET /compute/v1/projects/{p}/aggregated/machineTypes       (+ filter: `name eq "RE2"`)
    GET /compute/v1/projects/{p}/regions/{region}
    GET /v1/services/6F81-5844-456A/skus                        (pageSize, pageToken, key)

Aggregated lists page across zones by item, as the real API does: every zone without items
on a page carries a `NO_RESULTS_ON_PAGE` warning, and zones marked unreachable carry an
`UNREACHABLE` warning. Errors use Google's JSON error envelope (`google_error`). The catalogue
is plain data held by the fake, so a test may change it between polls; `latency_s` delays
every answer (benchmarks).
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from decimal import Decimal
from socketserver import StreamRequestHandler
from typing import Any, cast

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

SERVICE_ID = "6F81-5844-456A"
SELF = "https://www.googleapis.com/compute/v1/projects"


def google_error(
    code: int,
    status: str,
    message: str,
    *,
    reason: str | None = None,
    headers: dict[str, str] | None = None,
    delay_s: float = 0.0,
) -> FakeResponse:
    """An error in Google's JSON envelope, as `google.api_core` parses it."""
    error: dict[str, Any] = {"code": code, "message": message, "status": status}
    if reason:
        error["errors"] = [{"message": message, "domain": "usageLimits", "reason": reason}]
    return FakeResponse(code, json={"error": error}, headers=headers or {}, delay_s=delay_s)


# ------------------------------------------------------------------ resource builders


def _id(*parts: str) -> str:
    """A stable numeric id (uint64 as a string, as Compute writes ids)."""
    return str(zlib.crc32("/".join(parts).encode()))


def accelerator_type(project: str, zone: str, name: str, description: str, max_cards: int) -> Any:
    return {
        "kind": "compute#acceleratorType",
        "id": _id(zone, name),
        "creationTimestamp": "2023-05-10T10:00:00.000-07:00",
        "name": name,
        "description": description,
        "maximumCardsPerInstance": max_cards,
        "zone": f"{SELF}/{project}/zones/{zone}",
        "selfLink": f"{SELF}/{project}/zones/{zone}/acceleratorTypes/{name}",
    }


def machine_type(
    project: str,
    zone: str,
    name: str,
    cpus: int,
    memory_mb: int,
    accelerator: tuple[str, int] | None = None,
) -> Any:
    gpus = f", {accelerator[1]} GPUs" if accelerator else ""
    out: dict[str, Any] = {
        "kind": "compute#machineType",
        "id": _id(zone, name),
        "creationTimestamp": "2023-05-10T10:00:00.000-07:00",
        "name": name,
        "description": f"{cpus} vCPUs, {memory_mb // 1024} GB RAM{gpus}",
        "guestCpus": cpus,
        "memoryMb": memory_mb,
        "imageSpaceGb": 0,
        "maximumPersistentDisks": 128,
        "maximumPersistentDisksSizeGb": "263168",
        "zone": zone,
        "selfLink": f"{SELF}/{project}/zones/{zone}/machineTypes/{name}",
        "isSharedCpu": False,
        "architecture": "X86_64",
    }
    if accelerator:
        out["accelerators"] = [
            {"guestAcceleratorType": accelerator[0], "guestAcceleratorCount": accelerator[1]}
        ]
    return out


def region(
    project: str,
    name: str,
    zones: Iterable[str],
    quotas: Iterable[tuple[str, float, float]] = (),
    status: str = "UP",
) -> Any:
    return {
        "kind": "compute#region",
        "id": _id(name),
        "creationTimestamp": "1969-12-31T16:00:00.000-08:00",
        "name": name,
        "description": name,
        "status": status,
        "zones": [f"{SELF}/{project}/zones/{z}" for z in zones],
        "quotas": [{"metric": m, "limit": limit, "usage": usage} for m, limit, usage in quotas],
        "selfLink": f"{SELF}/{project}/regions/{name}",
        "supportsPzs": False,
    }


def sku(
    sku_id: str,
    description: str,
    resource_group: str,
    usage_type: str,
    service_regions: Iterable[str],
    units: str,
    nanos: int,
    usage_unit: str = "h",
    resource_family: str = "Compute",
) -> Any:
    regions = list(service_regions)
    described = {"h": "hour", "GiBy.h": "gibibyte hour", "GiBy.mo": "gibibyte month"}
    base = {"h": "s", "GiBy.h": "By.s", "GiBy.mo": "By.s"}
    return {
        "name": f"services/{SERVICE_ID}/skus/{sku_id}",
        "skuId": sku_id,
        "description": description,
        "category": {
            "serviceDisplayName": "Compute Engine",
            "resourceFamily": resource_family,
            "resourceGroup": resource_group,
            "usageType": usage_type,
        },
        "serviceRegions": regions,
        "pricingInfo": [
            {
                "summary": "",
                "pricingExpression": {
                    "usageUnit": usage_unit,
                    "displayQuantity": 1,
                    "tieredRates": [
                        {
                            "startUsageAmount": 0,
                            "unitPrice": {"currencyCode": "USD", "units": units, "nanos": nanos},
                        }
                    ],
                    "usageUnitDescription": described.get(usage_unit, usage_unit),
                    "baseUnit": base.get(usage_unit, "s"),
                    "baseUnitDescription": "second",
                    "baseUnitConversionFactor": 3600,
                },
                "aggregationInfo": {
                    "aggregationLevel": "ACCOUNT",
                    "aggregationInterval": "DAILY",
                    "aggregationCount": 1,
                },
                "currencyConversionRate": 1,
                "effectiveTime": "2026-05-01T07:09:00.000Z",
            }
        ],
        "serviceProviderName": "Google",
        "geoTaxonomy": {
            "type": "MULTI_REGIONAL" if len(regions) > 1 else "REGIONAL",
            "regions": regions,
        },
    }


# ------------------------------------------------------------------ the fake


@dataclass
class GcpCatalogue:
    """What the fake serves. Zones listed in `zones` appear in every aggregated page (with a
    warning where they hold nothing on that page)."""

    project: str = "broker-test"
    zones: list[str] = field(default_factory=list)
    accelerator_types: dict[str, list[Any]] = field(default_factory=dict)
    machine_types: dict[str, list[Any]] = field(default_factory=dict)
    regions: dict[str, Any] = field(default_factory=dict)
    skus: list[Any] = field(default_factory=list)
    unreachable_zones: set[str] = field(default_factory=set)


_FILTER = re.compile(r"""^name eq (?:"(?P<dq>[^"]*)"|'(?P<sq>[^']*)'|(?P<bare>\S+))$""")


class GcpFake:
    """Routes the catalogue onto a started `FakeHttpServer`."""

    def __init__(
        self, server: FakeHttpServer, catalogue: GcpCatalogue, latency_s: float = 0.0
    ) -> None:
        self.server = server
        # Headers and body leave in two writes; without TCP_NODELAY every keep-alive request
        # waits ~40 ms for the client's delayed ACK (measured), which would dwarf `latency_s`.
        cast(
            "type[StreamRequestHandler]", server.httpd.RequestHandlerClass
        ).disable_nagle_algorithm = True
        self.catalogue = catalogue
        self.latency_s = latency_s
        p = catalogue.project
        self.accelerators_path = f"/compute/v1/projects/{p}/aggregated/acceleratorTypes"
        self.machines_path = f"/compute/v1/projects/{p}/aggregated/machineTypes"
        self.skus_path = f"/v1/services/{SERVICE_ID}/skus"
        self.token_path = "/token"
        server.route("GET", self.accelerators_path, self._accelerators)
        server.route("GET", self.machines_path, self._machines)
        server.route("GET", self.skus_path, self._skus)
        for name in catalogue.regions:
            self.add_region_route(name)

    @property
    def url(self) -> str:
        return self.server.url

    def region_path(self, name: str) -> str:
        return f"/compute/v1/projects/{self.catalogue.project}/regions/{name}"

    def add_region_route(self, name: str) -> None:
        self.server.route("GET", self.region_path(name), lambda req: self._region(name))

    # -------------------------------------------------------------- answers

    def _ok(self, doc: Any) -> FakeResponse:
        return FakeResponse(body=json.dumps(doc).encode(), delay_s=self.latency_s)

    def _region(self, name: str) -> FakeResponse:
        doc = self.catalogue.regions.get(name)
        if doc is None:
            return google_error(404, "NOT_FOUND", f"The resource 'regions/{name}' was not found")
        return self._ok(doc)

    def _aggregated(
        self, req: FakeRequest, kind: str, data: dict[str, list[Any]], list_key: str
    ) -> FakeResponse:
        items = [(z, it) for z in sorted(data) for it in data[z]]
        flt = req.param("filter")
        if flt:
            m = _FILTER.match(flt.strip())
            if not m:
                return google_error(
                    400, "INVALID_ARGUMENT", f"Invalid value for field 'filter': '{flt}'"
                )
            pattern = re.compile(m.group("dq") or m.group("sq") or m.group("bare") or "")
            items = [(z, it) for z, it in items if pattern.fullmatch(it["name"])]
        size = min(int(req.param("maxResults") or 500), 500)
        start = int((req.param("pageToken") or "tok0").removeprefix("tok"))
        page = items[start : start + size]
        grouped: dict[str, Any] = {}
        for zone, item in page:
            grouped.setdefault(f"zones/{zone}", {list_key: []})[list_key].append(item)
        for zone in self.catalogue.zones:
            scope = f"zones/{zone}"
            if zone in self.catalogue.unreachable_zones:
                grouped[scope] = {
                    "warning": {
                        "code": "UNREACHABLE",
                        "message": f"The scope '{scope}' is unreachable.",
                        "data": [{"key": "scope", "value": scope}],
                    }
                }
            elif scope not in grouped:
                grouped[scope] = {
                    "warning": {
                        "code": "NO_RESULTS_ON_PAGE",
                        "message": f"There are no results for scope '{scope}' on this page.",
                        "data": [{"key": "scope", "value": scope}],
                    }
                }
        doc: dict[str, Any] = {
            "kind": f"compute#{kind}AggregatedList",
            "id": f"projects/{self.catalogue.project}/aggregated/{kind}s",
            "items": grouped,
            "selfLink": f"{SELF}/{self.catalogue.project}/aggregated/{kind}s",
        }
        if start + size < len(items):
            doc["nextPageToken"] = f"tok{start + size}"
        return self._ok(doc)

    def _accelerators(self, req: FakeRequest) -> FakeResponse:
        return self._aggregated(
            req, "acceleratorType", self.catalogue.accelerator_types, "acceleratorTypes"
        )

    def _machines(self, req: FakeRequest) -> FakeResponse:
        return self._aggregated(req, "machineType", self.catalogue.machine_types, "machineTypes")

    def _skus(self, req: FakeRequest) -> FakeResponse:
        size = min(int(req.param("pageSize") or 5000), 5000)
        start = int((req.param("pageToken") or "s0").removeprefix("s"))
        doc: dict[str, Any] = {"skus": self.catalogue.skus[start : start + size]}
        if start + size < len(self.catalogue.skus):
            doc["nextPageToken"] = f"s{start + size}"
        return self._ok(doc)


# ------------------------------------------------------------------ the test catalogue

#: SKU unit prices of the test catalogue, (units, nanos), USD per hour (RAM: per GiB-hour;
#: Local SSD: per GiB-month, as GCP prices it). Illustrative figures in the range of GCP's
#: published rates (GPU rows from the anycloud snapshot of 2026-05: 8x H100 = 33.60609 in
#: us-central1, 101.88413 in europe-west4; a2-highgpu-1g host = 12 x 0.031611 + 85 x
#: 0.004237); the rows added for A3 Mega/Ultra, A4 spot, G4 and Local SSD are made up, chosen
#: only to differ from each other so that a wrong SKU shows in the sum.
PRICES: dict[str, tuple[str, int]] = {
    "h100_us": ("4", 200761250),
    "h100_us_spot": ("2", 253500000),
    "h100_nl": ("12", 735516250),
    "h100_nl_spot": ("5", 96950000),
    "h100_mega_us": ("4", 560000000),
    "a3_core_us": ("0", 23766000),
    "a3_ram_us": ("0", 2413000),
    "a3_core_us_spot": ("0", 9506000),
    "a3_ram_us_spot": ("0", 965000),
    "a3_core_nl": ("0", 26143000),
    "a3_ram_nl": ("0", 2654000),
    "a3_core_nl_spot": ("0", 10457000),
    "a3_ram_nl_spot": ("0", 1062000),
    "a3plus_core_us": ("0", 26924000),
    "a3plus_ram_us": ("0", 2344000),
    "h200_us": ("5", 290000000),
    "h200_us_spot": ("2", 116000000),
    "a3ultra_core_us": ("0", 30100000),
    "a3ultra_ram_us": ("0", 3020000),
    "a3ultra_core_us_spot": ("0", 12040000),
    "a3ultra_ram_us_spot": ("0", 1208000),
    "a100_us": ("2", 933908000),
    "a100_us_spot": ("1", 173560000),
    "a100_80gb_us": ("3", 928080000),
    "a2_core_us": ("0", 31611000),
    "a2_ram_us": ("0", 4237000),
    "a2_core_us_spot": ("0", 12644000),
    "a2_ram_us_spot": ("0", 1695000),
    "l4_us": ("0", 559900000),
    "g2_core_us": ("0", 22306000),
    "g2_ram_us": ("0", 2612000),
    "rtx6000_us": ("2", 100000000),
    "rtx6000_us_spot": ("0", 840000000),
    "g4_core_us": ("0", 26000000),
    "g4_ram_us": ("0", 3000000),
    "g4_core_us_spot": ("0", 10400000),
    "g4_ram_us_spot": ("0", 1200000),
    "b200_slice_us": ("8", 55000000),
    "b200_slice_us_spot": ("3", 222000000),
    "lssd_us": ("0", 80000000),
    "lssd_us_spot": ("0", 48000000),
    "lssd_nl": ("0", 88000000),
    "lssd_nl_spot": ("0", 52800000),
    "t4_us": ("0", 350000000),
    "t4_us_spot": ("0", 140000000),
    "t4_nl": ("0", 410000000),
    "t4_vws_us": ("0", 550000000),
    "t4_vws_us_spot": ("0", 340000000),
}

US = "us-central1"
NL = "europe-west4"
EMPTY = "me-west1"  # a region whose zones have no GPU at all
US_ZONES = [f"{US}-a", f"{US}-b", f"{US}-c", f"{US}-f"]
NL_ZONES = [f"{NL}-a", f"{NL}-b", f"{NL}-c"]
EMPTY_ZONES = [f"{EMPTY}-a", f"{EMPTY}-b", f"{EMPTY}-c"]
AMERICAS = [US, "us-east4", "us-west1"]

#: (name, vCPUs, memoryMb, built-in accelerator) of the sample's machine types. Shapes from
#: GCP's accelerator-optimised machine tables (cloud.google.com/compute/docs/accelerator-
#: optimized-machines); g4-standard-48 as gpuhunt lists it (dstackai/gpuhunt
#: src/gpuhunt/providers/gcp.py, 48 vCPUs, 180 GB, 1 RTX PRO 6000).
A3_HIGH_8G = ("a3-highgpu-8g", 208, 1916928, ("nvidia-h100-80gb", 8))
A3_HIGH_1G = ("a3-highgpu-1g", 26, 239616, ("nvidia-h100-80gb", 1))
A3_MEGA_8G = ("a3-megagpu-8g", 208, 1916928, ("nvidia-h100-mega-80gb", 8))
A3_ULTRA_8G = ("a3-ultragpu-8g", 224, 3022848, ("nvidia-h200-141gb", 8))
A2_HIGH_1G = ("a2-highgpu-1g", 12, 87040, ("nvidia-tesla-a100", 1))
A2_ULTRA_1G = ("a2-ultragpu-1g", 12, 174080, ("nvidia-a100-80gb", 1))
G2_STD_4 = ("g2-standard-4", 4, 16384, ("nvidia-l4", 1))
G4_STD_48 = ("g4-standard-48", 48, 184320, ("nvidia-rtx-pro-6000", 1))
A4_HIGH_8G = ("a4-highgpu-8g", 224, 4063232, ("nvidia-b200", 8))
N1_STD_4 = ("n1-standard-4", 4, 15360, None)
N2_STD_8 = ("n2-standard-8", 8, 32768, None)

ACCELERATOR_DESCRIPTIONS = {
    "nvidia-h100-80gb": ("NVIDIA H100 80GB", 8),
    "nvidia-h100-mega-80gb": ("NVIDIA H100 80GB MEGA", 8),
    "nvidia-h200-141gb": ("NVIDIA H200 141GB", 8),
    "nvidia-tesla-a100": ("NVIDIA A100 40GB", 16),
    "nvidia-a100-80gb": ("NVIDIA A100 80GB", 8),
    "nvidia-l4": ("NVIDIA L4", 8),
    "nvidia-l4-vws": ("NVIDIA L4 Virtual Workstation", 8),
    "nvidia-rtx-pro-6000": ("NVIDIA RTX PRO 6000", 8),
    "nvidia-b200": ("NVIDIA B200", 8),
    "nvidia-tesla-t4": ("NVIDIA T4", 4),
    "nvidia-tesla-t4-vws": ("NVIDIA T4 Virtual Workstation", 4),
    "nvidia-tesla-v100": ("NVIDIA V100", 8),
}


#: Where a SKU of the sample applies, by the short name `SAMPLE_SKUS` uses.
_WHERE = {"americas": AMERICAS, "nl": [NL]}

#: The sample's SKUs, two lines each: `<skuId> <resourceGroup> <usageType> <where> <PRICES
#: key>`, then the description in GCP's wording. Resource groups LocalSSD and PDStandard are
#: in resource family Storage, priced per GiB-month; RAM per GiB-hour; the rest per hour. The
#: last four are decoys the adapter must not use (a commitment, another family, sole tenancy,
#: persistent disk). Where each wording comes from:
#: - "<GPU> GPU running in ...", "Spot Preemptible <GPU> GPU ...", "<GPU> GPU attached to Spot
#:   Preemptible VMs ...", "<Family> Instance Core/Ram ...": Cyclenerd/google-cloud-pricing-
#:   cost-calculator build/mapping.csv (gce.compute.gpu.*, gce.compute.cpu.*/ram.*);
#: - "A3Plus Instance Core/Ram" (A3 Mega): dstackai/gpuhunt src/gpuhunt/providers/gcp.py
#:   (`"A3Plus Instance": "a3-megagpu"`); "A3Ultra Instance Core/Ram": cloudpilot-ai/
#:   karpenter-provider-gcp pkg/providers/pricing/instanceprice/families.go;
#: - "H200 141GB GPU" (no vendor): skypilot-org/skypilot sky/catalog/data_fetchers/
#:   fetch_gcp.py (`gpu_names = ['H200 141GB GPU']`) and families.go `gpuSKUPrefixes`;
#: - "A4 Nvidia B200 (1 gpu slice)", "Spot Preemptible A4 Nvidia B200 (1 gpu slice)" with
#:   usageType OnDemand: gpuhunt `add_compute_gpu_slice_sku`, SkyPilot `get_gpu_df` ("some
#:   B200 spot SKUs have usageType='OnDemand' but the description contains 'Spot
#:   Preemptible'");
#: - "RTX 6000 96GB running in ..." / "RTX 6000 96GB attached to Spot ...", "G4 Instance
#:   Core/Ram", "Spot Preemptible G4 Instance ...": mapping.csv (gce.compute.gpu.rtx6000,
#:   gce.compute.cpu.g4[.spot]); gpuhunt `add_compute_sku` ("RTX 6000 96GB");
#: - "SSD backed Local Storage[ in <place>]" and "... attached to Spot Preemptible VMs",
#:   resource family Storage, group LocalSSD, per GiB-month: mapping.csv
#:   (gce.storage.ssd.local[.spot]); gpuhunt `add_storage_sku` (price / 730 hours).
SAMPLE_SKUS = """
0A1B-H100-0001 GPU OnDemand americas h100_us
    Nvidia H100 80GB GPU running in Americas
0A1B-H100-0002 GPU Preemptible americas h100_us_spot
    Spot Preemptible Nvidia H100 80GB GPU running in Americas
0A1B-H100-0003 GPU OnDemand nl h100_nl
    Nvidia H100 80GB GPU running in Netherlands
0A1B-H100-0004 GPU Preemptible nl h100_nl_spot
    Spot Preemptible Nvidia H100 80GB GPU running in Netherlands
0A1B-H1MG-0001 GPU OnDemand americas h100_mega_us
    Nvidia H100 80GB Mega GPU running in Americas
0A1B-A3CR-0001 CPU OnDemand americas a3_core_us
    A3 Instance Core running in Americas
0A1B-A3RM-0001 RAM OnDemand americas a3_ram_us
    A3 Instance Ram running in Americas
0A1B-A3CR-0002 CPU Preemptible americas a3_core_us_spot
    Spot Preemptible A3 Instance Core running in Americas
0A1B-A3RM-0002 RAM Preemptible americas a3_ram_us_spot
    Spot Preemptible A3 Instance Ram running in Americas
0A1B-A3CR-0003 CPU OnDemand nl a3_core_nl
    A3 Instance Core running in Netherlands
0A1B-A3RM-0003 RAM OnDemand nl a3_ram_nl
    A3 Instance Ram running in Netherlands
0A1B-A3CR-0004 CPU Preemptible nl a3_core_nl_spot
    Spot Preemptible A3 Instance Core running in Netherlands
0A1B-A3RM-0004 RAM Preemptible nl a3_ram_nl_spot
    Spot Preemptible A3 Instance Ram running in Netherlands
0A1B-A3PC-0001 CPU OnDemand americas a3plus_core_us
    A3Plus Instance Core running in Americas
0A1B-A3PR-0001 RAM OnDemand americas a3plus_ram_us
    A3Plus Instance Ram running in Americas
0A1B-H200-0001 GPU OnDemand americas h200_us
    H200 141GB GPU running in Americas
0A1B-H200-0002 GPU Preemptible americas h200_us_spot
    H200 141GB GPU attached to Spot Preemptible VMs running in Americas
0A1B-A3UC-0001 CPU OnDemand americas a3ultra_core_us
    A3Ultra Instance Core running in Americas
0A1B-A3UR-0001 RAM OnDemand americas a3ultra_ram_us
    A3Ultra Instance Ram running in Americas
0A1B-A3UC-0002 CPU Preemptible americas a3ultra_core_us_spot
    Spot Preemptible A3Ultra Instance Core running in Americas
0A1B-A3UR-0002 RAM Preemptible americas a3ultra_ram_us_spot
    Spot Preemptible A3Ultra Instance Ram running in Americas
0A1B-A100-0001 GPU OnDemand americas a100_us
    Nvidia Tesla A100 GPU running in Americas
0A1B-A100-0002 GPU Preemptible americas a100_us_spot
    Spot Preemptible Nvidia Tesla A100 GPU running in Americas
0A1B-A180-0001 GPU OnDemand americas a100_80gb_us
    Nvidia Tesla A100 80GB GPU running in Americas
0A1B-A2CR-0001 CPU OnDemand americas a2_core_us
    A2 Instance Core running in Americas
0A1B-A2RM-0001 RAM OnDemand americas a2_ram_us
    A2 Instance Ram running in Americas
0A1B-A2CR-0002 CPU Preemptible americas a2_core_us_spot
    Spot Preemptible A2 Instance Core running in Americas
0A1B-A2RM-0002 RAM Preemptible americas a2_ram_us_spot
    Spot Preemptible A2 Instance Ram running in Americas
0A1B-L4GP-0001 GPU OnDemand americas l4_us
    Nvidia L4 GPU running in Americas
0A1B-G2CR-0001 CPU OnDemand americas g2_core_us
    G2 Instance Core running in Americas
0A1B-G2RM-0001 RAM OnDemand americas g2_ram_us
    G2 Instance Ram running in Americas
0A1B-RTX6-0001 GPU OnDemand americas rtx6000_us
    RTX 6000 96GB running in Americas
0A1B-RTX6-0002 GPU Preemptible americas rtx6000_us_spot
    RTX 6000 96GB attached to Spot Preemptible VMs running in Americas
0A1B-G4CR-0001 CPU OnDemand americas g4_core_us
    G4 Instance Core running in Americas
0A1B-G4RM-0001 RAM OnDemand americas g4_ram_us
    G4 Instance Ram running in Americas
0A1B-G4CR-0002 CPU Preemptible americas g4_core_us_spot
    Spot Preemptible G4 Instance Core running in Americas
0A1B-G4RM-0002 RAM Preemptible americas g4_ram_us_spot
    Spot Preemptible G4 Instance Ram running in Americas
0A1B-B200-0001 GPU OnDemand americas b200_slice_us
    A4 Nvidia B200 (1 gpu slice) running in Americas
0A1B-B200-0002 GPU OnDemand americas b200_slice_us_spot
    Spot Preemptible A4 Nvidia B200 (1 gpu slice) running in Americas
0A1B-LSSD-0001 LocalSSD OnDemand americas lssd_us
    SSD backed Local Storage
0A1B-LSSD-0002 LocalSSD Preemptible americas lssd_us_spot
    SSD backed Local Storage attached to Spot Preemptible VMs
0A1B-LSSD-0003 LocalSSD OnDemand nl lssd_nl
    SSD backed Local Storage in Netherlands
0A1B-LSSD-0004 LocalSSD Preemptible nl lssd_nl_spot
    SSD backed Local Storage attached to Spot Preemptible VMs in Netherlands
0A1B-T4GP-0001 GPU OnDemand americas t4_us
    Nvidia Tesla T4 GPU running in Americas
0A1B-T4GP-0002 GPU Preemptible americas t4_us_spot
    Nvidia Tesla T4 GPU attached to Spot Preemptible VMs running in Americas
0A1B-T4GP-0003 GPU OnDemand nl t4_nl
    Nvidia Tesla T4 GPU running in Netherlands
0A1B-H100-0009 GPU Commit1Yr americas h100_us_spot
    Commitment v1: Nvidia H100 80GB GPU in Americas for 1 Year
0A1B-N1CR-0001 N1Standard OnDemand americas a3_core_us
    N1 Predefined Instance Core running in Americas
0A1B-A3CR-0009 CPU OnDemand americas a2_core_us
    A3 Instance Core running on Sole Tenancy in Americas
0A1B-PDST-0001 PDStandard OnDemand americas lssd_us
    Storage PD Capacity
"""


#: A T4 with an NVIDIA RTX Virtual Workstation licence: accelerator type `nvidia-tesla-t4-vws`,
#: attachable to N1 (cloud.google.com/compute/docs/gpus: "NVIDIA T4 (nvidia-tesla-t4)
#: (nvidia-tesla-t4-vws)"), which `broker.gpus` does not know (the unrecognised path). Not in
#: `sample_catalogue()`; tests add it. SKU wording as for the T4 (mapping.csv gce.compute.gpu.t4
#: and .t4.spot) with the "Virtual Workstation" words GCP's pricing page gives the vWS GPUs,
#: as `SKU_NAMES` below spells it; prices illustrative (the T4's plus a licence).
T4_VWS = "nvidia-tesla-t4-vws"
T4_VWS_SKUS = """
0A1B-T4VW-0001 GPU OnDemand americas t4_vws_us
    Nvidia Tesla T4 Virtual Workstation GPU running in Americas
0A1B-T4VW-0002 GPU Preemptible americas t4_vws_us_spot
    Nvidia Tesla T4 Virtual Workstation GPU attached to Spot Preemptible VMs running in Americas
"""


def sample_skus(table: str = SAMPLE_SKUS) -> list[Any]:
    """The wire form of the SKUs of a `SAMPLE_SKUS`-shaped table."""
    lines = [line for line in table.splitlines() if line.strip()]
    out: list[Any] = []
    for head, description in zip(lines[::2], lines[1::2], strict=True):
        sku_id, group, usage, where, key = head.split()
        storage = group in ("LocalSSD", "PDStandard")
        unit = "GiBy.mo" if storage else "GiBy.h" if group == "RAM" else "h"
        units, nanos = PRICES[key]
        family = "Storage" if storage else "Compute"
        out.append(
            sku(
                sku_id, description.strip(), group, usage, _WHERE[where], units, nanos, unit, family
            )
        )
    return out


def sample_catalogue(project: str = "broker-test") -> GcpCatalogue:
    """A small, realistic catalogue: us-central1 (A3 high/mega/ultra, A2 high/ultra, G2, G4,
    A4, T4, V100 without a price, L4 vWS unknown to the GPU catalogue), europe-west4 (A3 high,
    A2 ultra without prices, T4) and me-west1 (no GPUs)."""
    cat = GcpCatalogue(project=project, zones=US_ZONES + NL_ZONES + EMPTY_ZONES)

    def accels(zone: str, *names: str) -> None:
        cat.accelerator_types[zone] = [
            accelerator_type(project, zone, n, *ACCELERATOR_DESCRIPTIONS[n]) for n in names
        ]

    def machines(zone: str, *shapes: tuple[str, int, int, tuple[str, int] | None]) -> None:
        cat.machine_types[zone] = [machine_type(project, zone, *shape) for shape in shapes]

    accels(
        f"{US}-a",
        "nvidia-h100-80gb",
        "nvidia-h100-mega-80gb",
        "nvidia-h200-141gb",
        "nvidia-tesla-a100",
        "nvidia-a100-80gb",
        "nvidia-l4",
        "nvidia-l4-vws",
        "nvidia-rtx-pro-6000",
        "nvidia-b200",
        "nvidia-tesla-t4",
        "nvidia-tesla-v100",
    )
    machines(
        f"{US}-a",
        A3_HIGH_8G,
        A3_HIGH_1G,
        A3_MEGA_8G,
        A3_ULTRA_8G,
        A2_HIGH_1G,
        A2_ULTRA_1G,
        G2_STD_4,
        G4_STD_48,
        A4_HIGH_8G,
        N1_STD_4,
        N2_STD_8,
    )
    accels(f"{US}-b", "nvidia-tesla-t4", "nvidia-l4")
    machines(f"{US}-b", G2_STD_4, N1_STD_4)
    accels(f"{NL}-a", "nvidia-h100-80gb", "nvidia-tesla-t4", "nvidia-a100-80gb")
    machines(f"{NL}-a", A3_HIGH_8G, A2_ULTRA_1G, N1_STD_4)
    machines(f"{NL}-b", N1_STD_4)
    machines(f"{EMPTY}-a", N1_STD_4)

    cat.regions[US] = region(
        project,
        US,
        US_ZONES,
        quotas=[
            ("CPUS", 2400.0, 12.0),
            ("NVIDIA_H100_GPUS", 16.0, 8.0),
            ("PREEMPTIBLE_NVIDIA_H100_GPUS", 64.0, 0.0),
            ("NVIDIA_H100_MEGA_GPUS", 8.0, 0.0),
            ("NVIDIA_A100_GPUS", 16.0, 0.0),
            ("NVIDIA_A100_80GB_GPUS", 0.0, 0.0),
            ("NVIDIA_L4_GPUS", 8.0, 1.0),
            ("NVIDIA_T4_GPUS", 4.0, 0.0),
            ("COMMITTED_NVIDIA_T4_GPUS", 2.0, 0.0),
            ("GPUS_ALL_REGIONS", 32.0, 9.0),
        ],
    )
    cat.regions[NL] = region(
        project,
        NL,
        NL_ZONES,
        quotas=[("NVIDIA_H100_GPUS", 8.0, 0.0), ("PREEMPTIBLE_NVIDIA_T4_GPUS", 4.0, 2.0)],
    )
    cat.regions[EMPTY] = region(project, EMPTY, EMPTY_ZONES, quotas=[("CPUS", 24.0, 0.0)])
    cat.skus = sample_skus()
    return cat


# ------------------------------------------------------------------ a full-size catalogue

#: GPU machine shapes per accelerator type: (name, vCPUs, memory GiB, GPUs), from GCP's
#: accelerator-optimised machine tables (cloud.google.com/compute/docs/accelerator-optimized-
#: machines).
SHAPES: dict[str, list[tuple[str, int, int, int]]] = {
    "nvidia-tesla-a100": [
        ("a2-highgpu-1g", 12, 85, 1),
        ("a2-highgpu-2g", 24, 170, 2),
        ("a2-highgpu-4g", 48, 340, 4),
        ("a2-highgpu-8g", 96, 680, 8),
        ("a2-megagpu-16g", 96, 1360, 16),
    ],
    "nvidia-a100-80gb": [
        ("a2-ultragpu-1g", 12, 170, 1),
        ("a2-ultragpu-2g", 24, 340, 2),
        ("a2-ultragpu-4g", 48, 680, 4),
        ("a2-ultragpu-8g", 96, 1360, 8),
    ],
    "nvidia-h100-80gb": [
        ("a3-highgpu-1g", 26, 234, 1),
        ("a3-highgpu-2g", 52, 468, 2),
        ("a3-highgpu-4g", 104, 936, 4),
        ("a3-highgpu-8g", 208, 1872, 8),
        ("a3-edgegpu-8g", 208, 1872, 8),
    ],
    "nvidia-h100-mega-80gb": [("a3-megagpu-8g", 208, 1872, 8)],
    "nvidia-h200-141gb": [("a3-ultragpu-8g", 224, 2952, 8)],
    "nvidia-b200": [("a4-highgpu-8g", 224, 3968, 8)],
    "nvidia-l4": [
        ("g2-standard-4", 4, 16, 1),
        ("g2-standard-8", 8, 32, 1),
        ("g2-standard-12", 12, 48, 1),
        ("g2-standard-16", 16, 64, 1),
        ("g2-standard-24", 24, 96, 2),
        ("g2-standard-32", 32, 128, 1),
        ("g2-standard-48", 48, 192, 4),
        ("g2-standard-96", 96, 384, 8),
    ],
}
#: Share of zones offering each accelerator type (roughly GCP's GPU-regions table).
SPREAD: dict[str, float] = {
    "nvidia-tesla-t4": 0.75,
    "nvidia-tesla-t4-vws": 0.5,
    "nvidia-l4": 0.6,
    "nvidia-l4-vws": 0.4,
    "nvidia-tesla-a100": 0.3,
    "nvidia-a100-80gb": 0.2,
    "nvidia-h100-80gb": 0.25,
    "nvidia-h100-mega-80gb": 0.12,
    "nvidia-h200-141gb": 0.06,
    "nvidia-b200": 0.05,
    "nvidia-tesla-v100": 0.15,
    "nvidia-tesla-p100": 0.12,
    "nvidia-tesla-p4": 0.12,
}
#: SKU wording of each accelerator type (the spot GPU SKUs say "attached to Spot Preemptible
#: VMs" for the N1 GPUs, "Spot Preemptible ..." first for the others; sources of the wordings
#: at `SAMPLE_SKUS`).
SKU_NAMES: dict[str, str] = {
    "nvidia-tesla-t4": "Nvidia Tesla T4 GPU",
    "nvidia-tesla-t4-vws": "Nvidia Tesla T4 Virtual Workstation GPU",
    "nvidia-l4": "Nvidia L4 GPU",
    "nvidia-l4-vws": "Nvidia L4 Virtual Workstation GPU",
    "nvidia-tesla-a100": "Nvidia Tesla A100 GPU",
    "nvidia-a100-80gb": "Nvidia Tesla A100 80GB GPU",
    "nvidia-h100-80gb": "Nvidia H100 80GB GPU",
    "nvidia-h100-mega-80gb": "Nvidia H100 80GB Mega GPU",
    "nvidia-h200-141gb": "H200 141GB GPU",
    "nvidia-b200": "A4 Nvidia B200 (1 gpu slice)",
    "nvidia-tesla-v100": "Nvidia Tesla V100 GPU",
    "nvidia-tesla-p100": "Nvidia Tesla P100 GPU",
    "nvidia-tesla-p4": "Nvidia Tesla P4 GPU",
}
GPU_BASE_PRICE = {
    "nvidia-tesla-t4": "0.35",
    "nvidia-tesla-t4-vws": "0.55",
    "nvidia-l4": "0.5599",
    "nvidia-l4-vws": "0.7599",
    "nvidia-tesla-a100": "2.933908",
    "nvidia-a100-80gb": "3.92808",
    "nvidia-h100-80gb": "4.20076125",
    "nvidia-h100-mega-80gb": "4.56",
    "nvidia-h200-141gb": "5.29",
    "nvidia-b200": "8.055",
    "nvidia-tesla-v100": "2.48",
    "nvidia-tesla-p100": "1.46",
    "nvidia-tesla-p4": "0.60",
}
FAMILIES = ["A2", "A3", "A3Plus", "A3Ultra", "G2"]
NON_GPU_TYPES = [
    (f"{fam}-{kind}-{n}", n, n * mult)
    for fam in ("n1", "n2", "n2d", "e2", "c3", "c3d", "c4", "n4")
    for kind, mult in (("standard", 4), ("highmem", 8), ("highcpu", 1))
    for n in (2, 4, 8, 16, 32)
]


def _money(price: Decimal) -> tuple[str, int]:
    units = int(price)
    return str(units), int((price - units) * 1_000_000_000)


def _region_price_skus(r: str, in_region: set[str], factor: Decimal) -> list[Any]:
    """The GPU, core/RAM and Local SSD SKUs of region `r` of `large_catalogue`, on demand and
    spot, at the base prices times `factor`."""
    out: list[Any] = []
    seq = 0
    for accel in sorted(in_region):
        base = Decimal(GPU_BASE_PRICE[accel]) * factor
        name = SKU_NAMES[accel]
        spot_name = (
            f"{name} attached to Spot Preemptible VMs"
            if accel.startswith("nvidia-tesla")
            else f"Spot Preemptible {name}"
        )
        for usage, desc, price in (
            ("OnDemand", name, base),
            ("Preemptible", spot_name, (base * Decimal("0.4")).quantize(Decimal("0.000001"))),
        ):
            seq += 1
            out.append(
                sku(
                    f"G-{r}-{seq:04d}",
                    f"{desc} running in {r}",
                    "GPU",
                    usage,
                    [r],
                    *_money(price),
                )
            )
    for fam in FAMILIES:
        for usage, prefix, mult in (
            ("OnDemand", "", 1),
            ("Preemptible", "Spot Preemptible ", Decimal("0.4")),
        ):
            for kind, group, unit, price in (
                ("Core", "CPU", "h", Decimal("0.031611")),
                ("Ram", "RAM", "GiBy.h", Decimal("0.004237")),
            ):
                seq += 1
                out.append(
                    sku(
                        f"H-{r}-{seq:04d}",
                        f"{prefix}{fam} Instance {kind} running in {r}",
                        group,
                        usage,
                        [r],
                        *_money((price * factor * mult).quantize(Decimal("0.000001"))),
                        usage_unit=unit,
                    )
                )
    for usage, tail, mult in (
        ("OnDemand", "in", 1),
        ("Preemptible", "attached to Spot Preemptible VMs in", Decimal("0.6")),
    ):
        seq += 1
        # Illustrative Local SSD rate, USD per GiB-month.
        monthly = (Decimal("0.08") * factor * mult).quantize(Decimal("0.000001"))
        out.append(
            sku(
                f"L-{r}-{seq:04d}",
                f"SSD backed Local Storage {tail} {r}",
                "LocalSSD",
                usage,
                [r],
                *_money(monthly),
                usage_unit="GiBy.mo",
                resource_family="Storage",
            )
        )
    return out


def large_catalogue(
    region_names: list[str], project: str = "broker-bench", seed: int = 7, skus_total: int = 25_000
) -> GcpCatalogue:
    """A full-size catalogue for benchmarks: every region given, 3 zones each (4 in
    us-central1), accelerator types spread as `SPREAD`, the GPU machine shapes of `SHAPES`
    plus 120 plain machine types per zone (which the machine-type filter drops), quotas per
    GPU and market, and about `skus_total` SKUs (GPU, core, RAM and Local SSD SKUs per region
    and market, the rest storage/network/other-family SKUs the adapter ignores)."""
    rng = random.Random(seed)
    cat = GcpCatalogue(project=project)
    for r in region_names:
        zones = [f"{r}-{s}" for s in ("a", "b", "c", "f")[: 4 if r == "us-central1" else 3]]
        cat.zones += zones
        in_region: set[str] = set()
        for z in zones:
            names = sorted(n for n, share in SPREAD.items() if rng.random() < share)
            in_region |= set(names)
            cat.accelerator_types[z] = [
                accelerator_type(project, z, n, n.replace("-", " ").upper(), 8) for n in names
            ]
            machines = [
                machine_type(project, z, name, cpus, gib * 1024, (n, count))
                for n in names
                for name, cpus, gib, count in SHAPES.get(n, [])
            ]
            machines += [machine_type(project, z, n, c, g * 1024) for n, c, g in NON_GPU_TYPES]
            cat.machine_types[z] = machines
        quotas = [("CPUS", 2400.0, 24.0), ("GPUS_ALL_REGIONS", 64.0, 8.0)]
        for n in sorted(in_region):
            metric = "NVIDIA_" + n.removeprefix("nvidia-").removeprefix("tesla-").upper().replace(
                "-", "_"
            )
            metric = (
                metric.replace("_80GB", "").replace("_141GB", "")
                if "A100" not in metric
                else metric
            )
            for prefix in ("", "PREEMPTIBLE_", "COMMITTED_"):
                quotas.append((f"{prefix}{metric}_GPUS", float(rng.choice([0, 8, 16, 64])), 0.0))
        cat.regions[r] = region(project, r, zones, quotas)
        factor = Decimal(100 + rng.randint(0, 40)) / 100
        cat.skus += _region_price_skus(r, in_region, factor)
    filler = max(0, skus_total - len(cat.skus))
    groups = [
        ("Storage", "PDStandard", "GiBy.mo"),
        ("Network", "Egress", "GiBy"),
        ("Compute", "N1Standard", "h"),
    ]
    for i in range(filler):
        family, group, unit = groups[i % len(groups)]
        r = region_names[i % len(region_names)]
        cat.skus.append(
            sku(
                f"F{i:06d}",
                f"{group} filler SKU {i} in {r}",
                group,
                "OnDemand",
                [r],
                "0",
                1000 + i,
                unit,
                family,
            )
        )
    rng.shuffle(cat.skus)
    return cat
