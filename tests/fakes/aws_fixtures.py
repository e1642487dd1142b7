"""AWS market fixtures for the fake in `aws_fake.py`, in boto3's dict shapes.

Instance types are trimmed `describe-instance-types` records: the fields the adapter reads,
copied from moto 5.2's bundled snapshot of the real API (`moto/ec2/resources/
instance_types.json.gz`, itself an AWS CLI dump), e.g. p5.48xlarge = 8 × "H100" (NVIDIA,
81920 MiB), 192 vCPUs, 2097152 MiB, EFA. Prices, spot prices, capacity-block fees and quota
values are illustrative (shaped like PROVIDERS.md §1.4, §1.5, §1.8), not quotes.

`moto_market()` builds the benchmark's market from moto's full snapshot instead: every
accelerated type and every availability-zone offering of every region moto knows.
"""

from __future__ import annotations

import gzip
import hashlib
import json
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from importlib import resources
from typing import Any

from tests.fakes.aws_fake import AwsFake, offerings, spot_row

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
US_ZONES = ["us-east-1a", "us-east-1b", "us-east-1c", "us-east-1d", "us-east-1f"]
EU_ZONES = ["eu-west-1a", "eu-west-1b", "eu-west-1c"]


def _gpu(
    name: str,
    maker: str,
    count: int,
    mib: int,
    logical: int | None = None,
    partition: float = 1.0,
) -> dict[str, Any]:
    return {
        "Gpus": [
            {
                "Name": name,
                "Manufacturer": maker,
                "Count": count,
                "LogicalGpuCount": count if logical is None else logical,
                "GpuPartitionSize": partition,
                "Workloads": ["ml-ai"],
                "MemoryInfo": {"SizeInMiB": mib},
            }
        ],
        "TotalGpuMemoryInMiB": mib * max(count, 1),
    }


def _neuron(name: str, count: int, cores: int, mib: int) -> dict[str, Any]:
    return {
        "NeuronDevices": [
            {
                "Count": count,
                "Name": name,
                "CoreInfo": {"Count": cores, "Version": 2},
                "MemoryInfo": {"SizeInMiB": mib},
            }
        ],
        "TotalNeuronDeviceMemoryInMiB": count * mib,
    }


def instance_type(
    name: str,
    vcpus: int,
    mib: int,
    *,
    classes: tuple[str, ...] = ("on-demand", "spot"),
    efa: bool = False,
    **devices: Any,
) -> dict[str, Any]:
    return {
        "InstanceType": name,
        "CurrentGeneration": True,
        "SupportedUsageClasses": list(classes),
        "VCpuInfo": {"DefaultVCpus": vcpus},
        "MemoryInfo": {"SizeInMiB": mib},
        "NetworkInfo": {"EfaSupported": efa},
        **devices,
    }


CB = ("capacity-block", "on-demand", "spot")
P5 = instance_type(
    "p5.48xlarge", 192, 2097152, classes=CB, efa=True, GpuInfo=_gpu("H100", "NVIDIA", 8, 81920)
)
G5 = instance_type("g5.xlarge", 4, 16384, GpuInfo=_gpu("A10G", "NVIDIA", 1, 22888))
G6F = instance_type(
    "g6f.large", 2, 8192, GpuInfo=_gpu("L4", "NVIDIA", 0, 2861, logical=1, partition=0.125)
)
INF2 = instance_type(
    "inf2.xlarge",
    4,
    16384,
    NeuronInfo=_neuron("Inferentia2", 1, 2, 32768),
    InferenceAcceleratorInfo={
        "Accelerators": [{"Count": 1, "Name": "Inferentia2", "Manufacturer": "AWS"}]
    },
)
TRN1 = instance_type(
    "trn1.32xlarge", 128, 524288, classes=CB, efa=True, NeuronInfo=_neuron("Trainium", 16, 2, 32768)
)
DL2Q = instance_type(
    "dl2q.24xlarge",
    96,
    786432,
    InferenceAcceleratorInfo={
        "Accelerators": [
            {
                "Count": 8,
                "Name": "Qualcomm AI100",
                "Manufacturer": "Qualcomm",
                "MemoryInfo": {"SizeInMiB": 16384},
            }
        ],
        "TotalInferenceMemoryInMiB": 131072,
    },
)
#: 8 × "B300" (NVIDIA, 275040 MiB each), as moto's snapshot has it: the catalogue's B300.
P6_B300 = instance_type(
    "p6-b300.48xlarge",
    192,
    4194304,
    classes=CB,
    efa=True,
    GpuInfo=_gpu("B300", "NVIDIA", 8, 275040),
)
#: FICTIONAL ON PURPOSE: no such instance type, device or maker exists (AWS sells nothing
#: called this). The device name is made up so that no GPU catalogue will ever know it, to
#: exercise the adapter's unknown-device path with a row that is otherwise a normal, sold
#: type (offered in an AZ, priced). Never replace it with a real type: real types get into
#: the catalogue (B300 did), and the test would then stop testing the unknown path.
UNKNOWN_GPU_TYPE = "p99z.48xlarge"
UNKNOWN_GPU_NAME = "Zorptron-Q9 Fictional"
P99Z = instance_type(
    UNKNOWN_GPU_TYPE,
    96,
    1048576,
    efa=True,
    GpuInfo=_gpu(UNKNOWN_GPU_NAME, "Fictional Silicon Inc.", 4, 65536),
)
#: No accelerator (and outside the instance-type patterns).
M5 = instance_type("m5.large", 2, 8192)

#: On-demand list prices, USD per instance-hour, as the Price List writes them.
US_PRICES = {
    "p5.48xlarge": "55.0400000000",
    "g5.xlarge": "1.0060000000",
    "g6f.large": "0.2460000000",
    "inf2.xlarge": "0.7582000000",
    "trn1.32xlarge": "21.5000000000",
    "dl2q.24xlarge": "8.9194000000",
    "p6-b300.48xlarge": "142.4200000000",
    UNKNOWN_GPU_TYPE: "40.0000000000",
}
EU_PRICES = {"p5.48xlarge": "61.6400000000", "g5.xlarge": "1.1230000000"}


def price_item(
    instance_type: str,
    region: str,
    usd: str,
    *,
    sku: str | None = None,
    operating_system: str = "Linux",
    tenancy: str = "Shared",
    pre_installed: str = "NA",
    capacity: str = "Used",
) -> dict[str, Any]:
    """One decoded Price List product (PROVIDERS.md §1.8), with a Reserved term beside the
    OnDemand one, as real items carry both."""
    key = f"{instance_type}|{region}|{operating_system}|{tenancy}|{capacity}".encode()
    sku = sku or hashlib.sha1(key).hexdigest()[:16].upper()
    return {
        "product": {
            "productFamily": "Compute Instance",
            "sku": sku,
            "attributes": {
                "instanceType": instance_type,
                "regionCode": region,
                "operatingSystem": operating_system,
                "tenancy": tenancy,
                "preInstalledSw": pre_installed,
                "capacitystatus": capacity,
                "licenseModel": "No License required",
                "marketoption": "OnDemand",
                "operation": "RunInstances",
                "servicecode": "AmazonEC2",
                "usagetype": f"BoxUsage:{instance_type}",
            },
        },
        "serviceCode": "AmazonEC2",
        "terms": {
            "OnDemand": {
                f"{sku}.JRTCKXETXF": {
                    "sku": sku,
                    "offerTermCode": "JRTCKXETXF",
                    "effectiveDate": "2026-04-01T00:00:00Z",
                    "termAttributes": {},
                    "priceDimensions": {
                        f"{sku}.JRTCKXETXF.6YS6EN2CT7": {
                            "rateCode": f"{sku}.JRTCKXETXF.6YS6EN2CT7",
                            "description": f"${usd} per On Demand Linux {instance_type} Hour",
                            "unit": "Hrs",
                            "beginRange": "0",
                            "endRange": "Inf",
                            "appliesTo": [],
                            "pricePerUnit": {"USD": usd},
                        }
                    },
                }
            },
            "Reserved": {
                f"{sku}.4NA7Y494T4": {
                    "sku": sku,
                    "offerTermCode": "4NA7Y494T4",
                    "effectiveDate": "2026-04-01T00:00:00Z",
                    "termAttributes": {
                        "LeaseContractLength": "1yr",
                        "OfferingClass": "standard",
                        "PurchaseOption": "No Upfront",
                    },
                    "priceDimensions": {
                        f"{sku}.4NA7Y494T4.6YS6EN2CT7": {
                            "rateCode": f"{sku}.4NA7Y494T4.6YS6EN2CT7",
                            "unit": "Hrs",
                            "pricePerUnit": {"USD": _reserved(usd)},
                        }
                    },
                }
            },
        },
        "version": "20260401000000",
        "publicationDate": "2026-04-01T00:00:00Z",
    }


def _reserved(usd: str) -> str:
    """A 1-year reserved rate beside the on-demand one (not read by the adapter)."""
    try:
        return f"{Decimal(usd) * Decimal('0.6'):.10f}"
    except ArithmeticError:
        return usd


def capacity_block(
    offering_id: str,
    instance_type: str,
    zone: str,
    fee: str,
    *,
    count: int = 1,
    hours: int = 24,
    minutes: int | None = None,
    start: datetime = T0 + timedelta(days=3),
    currency: str = "USD",
) -> dict[str, Any]:
    row: dict[str, Any] = {
        "CapacityBlockOfferingId": offering_id,
        "InstanceType": instance_type,
        "AvailabilityZone": zone,
        "InstanceCount": count,
        "StartDate": start,
        "EndDate": start + timedelta(hours=hours, minutes=minutes or 0),
        "CapacityBlockDurationHours": hours,
        "UpfrontFee": fee,
        "CurrencyCode": currency,
        "Tenancy": "default",
    }
    if minutes is not None:
        row["CapacityBlockDurationMinutes"] = minutes
    return row


def quota(region: str, code: str, name: str, value: float) -> dict[str, Any]:
    return {
        "ServiceCode": "ec2",
        "ServiceName": "Amazon Elastic Compute Cloud (Amazon EC2)",
        "QuotaArn": f"arn:aws:servicequotas:{region}:123456789012:ec2/{code}",
        "QuotaCode": code,
        "QuotaName": name,
        "Value": value,
        "Unit": "None",
        "Adjustable": True,
        "GlobalQuota": False,
    }


def small_market(fake: AwsFake) -> AwsFake:
    """Two regions: us-east-1 (every fixture type) and eu-west-1 (p5 in one AZ, g5)."""
    fake.regions = [
        {"RegionName": "eu-west-1", "OptInStatus": "opt-in-not-required"},
        {"RegionName": "us-east-1", "OptInStatus": "opt-in-not-required"},
        {"RegionName": "ap-east-1", "OptInStatus": "not-opted-in"},
    ]
    fake.instance_types = {
        "us-east-1": [P5, G5, G6F, INF2, TRN1, DL2Q, P6_B300, P99Z, M5],
        "eu-west-1": [P5, G5, M5],
    }
    fake.offerings = {
        "us-east-1": [
            *offerings("p5.48xlarge", ["us-east-1a", "us-east-1b", "us-east-1d"]),
            *offerings("g5.xlarge", US_ZONES),
            *offerings("g6f.large", ["us-east-1a", "us-east-1b"]),
            *offerings("inf2.xlarge", ["us-east-1a", "us-east-1c"]),
            *offerings("trn1.32xlarge", ["us-east-1f"]),
            *offerings("dl2q.24xlarge", ["us-east-1b"]),
            *offerings("p6-b300.48xlarge", ["us-east-1a"]),
            *offerings(UNKNOWN_GPU_TYPE, ["us-east-1a"]),
            *offerings("m5.large", US_ZONES),
        ],
        "eu-west-1": [
            *offerings("p5.48xlarge", ["eu-west-1c"]),
            *offerings("g5.xlarge", EU_ZONES),
        ],
    }
    fake.price_items = [
        *(price_item(t, "us-east-1", p) for t, p in US_PRICES.items()),
        *(price_item(t, "eu-west-1", p) for t, p in EU_PRICES.items()),
        # Same types, other products: never picked.
        price_item("p5.48xlarge", "us-east-1", "82.1100000000", operating_system="Windows"),
        price_item("p5.48xlarge", "us-east-1", "60.5400000000", tenancy="Dedicated"),
        price_item("g5.xlarge", "us-east-1", "0.0000000000", capacity="UnusedCapacityReservation"),
    ]
    old, new = T0 - timedelta(hours=6), T0 - timedelta(minutes=20)
    fake.spot = {
        "us-east-1": [
            spot_row("us-east-1a", "p5.48xlarge", "33.120000", old),
            spot_row("us-east-1a", "p5.48xlarge", "31.464000", new),  # newest wins
            spot_row("us-east-1b", "p5.48xlarge", "29.870100", old),
            spot_row("us-east-1b", "p5.48xlarge", "52.000000", new, product="Windows"),
            spot_row("us-east-1a", "g5.xlarge", "0.451200", new),
            spot_row("us-east-1c", "g5.xlarge", "0.398700", new, product="Linux/UNIX (Amazon VPC)"),
            spot_row("us-east-1a", UNKNOWN_GPU_TYPE, "16.000000", new),  # the fictional type
            # An AZ where the type is not offered (any more): not an offer.
            spot_row("us-east-1c", "p5.48xlarge", "12.000000", old),
        ],
        "eu-west-1": [spot_row("eu-west-1c", "p5.48xlarge", "35.810000", new)],
    }
    fake.capacity_blocks = {
        "us-east-1": [
            capacity_block("cb-0123456789abcdef0", "p5.48xlarge", "us-east-1a", "755.52"),
            capacity_block(
                "cb-0fedcba9876543210",
                "p5.48xlarge",
                "us-east-1d",
                "1416.96",
                count=2,
                start=T0 + timedelta(days=9),
            ),
            capacity_block("cb-0aaaaaaaaaaaaaaa1", "trn1.32xlarge", "us-east-1f", "310.08"),
        ],
        "eu-west-1": [],
    }
    fake.quotas = {
        "us-east-1": [
            quota("us-east-1", "L-417A185B", "Running On-Demand P instances", 384.0),
            quota("us-east-1", "L-DB2E81BA", "Running On-Demand G and VT instances", 64.0),
            quota("us-east-1", "L-7212CCBC", "All P Spot Instance Requests", 192.0),
            quota("us-east-1", "L-1216C47A", "Running On-Demand Standard instances", 1152.0),
        ],
        "eu-west-1": [
            quota("eu-west-1", "L-417A185B", "Running On-Demand P instances", 0.0),
        ],
    }
    fake.default_quotas = {
        "us-east-1": [quota("us-east-1", "L-2C3B7624", "Running On-Demand Trn instances", 256.0)],
    }
    return fake


# ------------------------------------------------------------------ the benchmark market

#: The accelerated families' quotas as ListServiceQuotas names them (values illustrative).
QUOTAS = (
    ("L-417A185B", "Running On-Demand P instances", 384.0),
    ("L-DB2E81BA", "Running On-Demand G and VT instances", 256.0),
    ("L-1945791B", "Running On-Demand Inf instances", 128.0),
    ("L-2C3B7624", "Running On-Demand Trn instances", 256.0),
    ("L-6E869C2A", "Running On-Demand DL instances", 96.0),
    ("L-74FC7D96", "Running On-Demand F instances", 128.0),
    ("L-7212CCBC", "All P Spot Instance Requests", 384.0),
    ("L-3819A6DF", "All G and VT Spot Instance Requests", 256.0),
    ("L-B5D1601B", "All Inf Spot Instance Requests", 64.0),
    ("L-6B0D517C", "All Trn Spot Instance Requests", 256.0),
    ("L-85EED4F7", "All DL Spot Instance Requests", 96.0),
    ("L-88CF9481", "All F Spot Instance Requests", 128.0),
    ("L-1216C47A", "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances", 1152.0),
)


def _moto_json(*parts: str) -> Any:
    path = resources.files("moto").joinpath("ec2", "resources", *parts)
    return json.loads(gzip.decompress(path.read_bytes()))


def moto_market(fake: AwsFake, *, at: datetime = T0) -> AwsFake:
    """Every region of moto's snapshot with its real accelerated catalogue and AZ offerings;
    illustrative prices (on-demand from vCPUs, spot at 40 %, a capacity block per AZ for each
    capacity-block type) and the accelerated quotas."""
    types: dict[str, dict[str, Any]] = _moto_json("instance_types.json.gz")
    accelerated = {
        name: info
        for name, info in types.items()
        if any(k in info for k in ("GpuInfo", "NeuronInfo", "InferenceAcceleratorInfo", "FpgaInfo"))
    }
    folder = resources.files("moto").joinpath(
        "ec2", "resources", "instance_type_offerings", "availability-zone"
    )
    region_names = sorted(p.name.removesuffix(".json.gz") for p in folder.iterdir())
    fake.regions = [{"RegionName": r, "OptInStatus": "opt-in-not-required"} for r in region_names]
    for region in region_names:
        rows = _moto_json("instance_type_offerings", "availability-zone", f"{region}.json.gz")
        offered = [o for o in rows if o["InstanceType"] in accelerated]
        fake.offerings[region] = [
            {"InstanceType": o["InstanceType"], "Location": o["Location"]} for o in offered
        ]
        names = sorted({o["InstanceType"] for o in offered})
        fake.instance_types[region] = [accelerated[n] for n in names]
        for n in names:
            usd = Decimal(accelerated[n]["VCpuInfo"]["DefaultVCpus"]) * Decimal("0.2875")
            fake.price_items.append(price_item(n, region, f"{usd:.10f}"))
        spot, blocks = [], []
        for i, o in enumerate(offered):
            n, zone = o["InstanceType"], o["Location"]
            vcpus = Decimal(accelerated[n]["VCpuInfo"]["DefaultVCpus"])
            spot.append(spot_row(zone, n, f"{vcpus * Decimal('0.115'):.6f}", at))
            if "capacity-block" in accelerated[n].get("SupportedUsageClasses", []):
                blocks.append(
                    capacity_block(f"cb-{region}-{i:08x}", n, zone, f"{vcpus * Decimal('4.2'):.2f}")
                )
        fake.spot[region] = spot
        fake.capacity_blocks[region] = blocks
        fake.quotas[region] = [quota(region, code, name, value) for code, name, value in QUOTAS]
    return fake
