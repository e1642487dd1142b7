"""GCP prices: Cloud Billing Catalog SKUs of Compute Engine read into unit prices, and the
unit prices summed into the hourly price of one GPU machine type.

Owns the SKU wording (what a description prices, in which market), the price book, which
SKU family prices which machine series, the Local SSD bundled with some machine types, and
the sum. It makes no call and reads no clock: `providers.gcp` pages the catalogue in and hands
each page to `PriceBook.add_page`; `providers._gcp_offers` asks `price_parts` for a price.

## The price of a machine
GCP bills a GPU VM as its GPUs plus its vCPUs plus its memory plus its bundled Local SSD (if
any), each at a per-region rate ("Google Cloud bills accelerator-optimized machine types for
their attached GPUs, predefined vCPU, memory, and bundled Local SSD (if applicable)",
cloud.google.com/compute/docs/accelerator-optimized-machines; rates on
cloud.google.com/compute/vm-instance-pricing and /compute/gpus-pricing). The catalogue holds
those rates as SKUs, and the peers that price GPU VMs in production sum them the same way
(dstackai/gpuhunt `src/gpuhunt/providers/gcp.py`, `Prices.get_instance_price`; skypilot-org/
skypilot `sky/catalog/data_fetchers/fetch_gcp.py`, `get_vm_df` + `get_gpu_df`):

    price/hour = GPU SKU × GPUs + core SKU × vCPUs + RAM SKU × GiB + Local SSD SKU × GiB

A GPU SKU sold as "(N gpu slice)" ("A4 Nvidia B200 (1 gpu slice)") is the whole machine's
price per N GPUs: there are no A4 core/RAM SKUs, "The GPU pricing (B200) includes the full VM
cost" (SkyPilot `fetch_gcp.py`; gpuhunt prices A4 from the slice alone). Then the price is
slice / N × GPUs and nothing else is added.

## SKU wording (description → what it prices)
A description is `[Spot Preemptible |Preemptible ]<head>[ attached to ...| running in ...|
in ...]`. The head names the component:

- `<Family> Instance Core|Ram` → the vCPU / GiB-hour rate of SKU family `<Family>`: "A2",
  "A3", "A3Plus" (A3 Mega), "A3Ultra" (A3 Ultra), "G2", "G4" (cloudpilot-ai/
  karpenter-provider-gcp `pkg/providers/pricing/instanceprice/families.go`, `familyMatchers`;
  Cyclenerd/google-cloud-pricing-cost-calculator `build/mapping.csv`, `gce.compute.cpu.g4`).
  Which family prices which machine series is `HOST_SKU_FAMILY`, a table, because the two do
  not follow from each other: a3-megagpu-8g is billed on "A3Plus" SKUs, not "A3" ones
  (gpuhunt maps "A3Plus Instance" to a3-megagpu), a3-ultragpu on "A3Ultra" (families.go,
  `machineNameFamilyPrefixOverrides`). A series not in the table is not priced.
- `[<Series> ]<vendor> <model words> GPU`, or no vendor at all: "Nvidia H100 80GB GPU",
  "Nvidia H100 80GB Mega GPU" / "... Plus GPU" (A3 Mega's H100 in some regions), "H200 141GB
  GPU" (SkyPilot `get_gpu_df`; families.go `gpuSKUPrefixes`). Matched to an accelerator type
  on its model words, vendor words dropped (`model_words`).
- `[<Series> ]<vendor> <model> (N gpu slice)`: "A4 Nvidia B200 (1 gpu slice)", "Spot
  Preemptible A4 Nvidia B200 (1 gpu slice)" (gpuhunt `add_compute_gpu_slice_sku`; SkyPilot).
- GPU names without the word GPU, in `GPU_SKU_HEADS`: "RTX 6000 96GB" is G4's RTX PRO 6000
  (accelerator type nvidia-rtx-pro-6000; gpuhunt `add_compute_sku`; mapping.csv
  `gce.compute.gpu.rtx6000`, spot "RTX 6000 96GB attached to Spot ...").
- "SSD backed Local Storage" (resource family Storage, priced per GiB-month) and its spot
  variant "SSD backed Local Storage attached to Spot Preemptible VMs" (mapping.csv
  `gce.storage.ssd.local[.spot]`; gpuhunt `add_storage_sku`).

## Market
Only `usageType` OnDemand and Preemptible SKUs are read (Commit1Yr/Commit3Yr are
resource-based commitments, not a purchasable instance). The market is read from the
description as well as the usage type: some spot SKUs are tagged `usageType: OnDemand` —
spot B200 slices ("GCP has a bug where some B200 spot SKUs have usageType='OnDemand' but the
description contains 'Spot Preemptible'", SkyPilot `get_gpu_df`) and preemptible TPUs
("'usageType' of preemptible TPUs are 'OnDemand'", SkyPilot `get_tpu_df`; gpuhunt
`get_tpu_prices` reads spot as `"Preemptible" in description`). So a SKU is `spot` when its
usage type is Preemptible or its description says "Preemptible", else `on_demand`.

## Unit prices
Each SKU's price is its latest `pricingInfo[]` entry's lowest tier, `unitPrice.units +
unitPrice.nanos / 10^9` (`Decimal`), per `usageUnit`: `h` (GPU, core), `GiBy.h` (RAM),
`GiBy.mo` (Local SSD, turned into GiB-hours over 730 hours a month, as gpuhunt does:
`hours_in_month = 730  # according to GCP pricing`). A SKU applies to the regions in its
`serviceRegions`. SKUs for commitments, reservations, sole tenancy, custom/premium/extended
shapes and DWS/calendar/flex modes are ignored. A part missing in a region and market leaves
the offer unpriced (`no_price:<market>`); two SKUs pricing one part differently leave it
unpriced too (`ambiguous_price`): never a guess.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from broker.domain import Market

MAX_NOTES = 50
#: Hours in a month in GCP's price lists (gpuhunt `hours_in_month`, "according to GCP
#: pricing"): a per-GiB-month Local SSD rate over 730 is its GiB-hour rate.
HOURS_PER_MONTH = Decimal(730)

#: Machine series (the name up to its second dash) → the family word of the "<Family>
#: Instance Core/Ram" SKUs that bill its vCPUs and memory. a2-*, a3-highgpu/edgegpu and g2-*
#: on their own family (SkyPilot `fetch_gcp.py` `SERIES_TO_DESCRIPTION`: a2 → "A2 Instance",
#: a3 → "A3 Instance", g2 → "G2 Instance"); a3-megagpu on "A3Plus" (gpuhunt `add_compute_sku`:
#: "A3Plus Instance" → a3-megagpu); a3-ultragpu on "A3Ultra" (cloudpilot-ai/
#: karpenter-provider-gcp `instanceprice/families.go`); g4-standard on "G4" (families.go;
#: Cyclenerd mapping.csv `gce.compute.cpu.g4`). A4 has no core/RAM SKUs: its GPU slice SKU
#: carries the machine (SkyPilot), "a4" is listed so that the lookup fails as `no_price`.
HOST_SKU_FAMILY: Mapping[str, str] = {
    "a2-highgpu": "a2",
    "a2-megagpu": "a2",
    "a2-ultragpu": "a2",
    "a3-highgpu": "a3",
    "a3-edgegpu": "a3",
    "a3-megagpu": "a3plus",
    "a3-ultragpu": "a3ultra",
    "a4-highgpu": "a4",
    "g2-standard": "g2",
    "g4-standard": "g4",
}

#: Local SSD bundled with a machine type, GiB. For A4X, A4, A3 and A2 Ultra "every machine
#: type comes with Local SSD storage" (cloud.google.com/compute/docs/disks/add-local-ssd),
#: billed with the machine (accelerator-optimized-machines).
#: Sizes as gpuhunt prices them (`local_ssd_sizes_gib`, citing cloud.google.com/compute/docs/
#: disks/local-ssd#lssd_disks_fixed; the A2 Ultra and A3 machine tables of
#: cloud.google.com/compute/docs/accelerator-optimized-machines list them per machine type).
#: A3 High 1g/2g/4g and A3 Ultra carry Local SSD too, but no source at hand states their sizes:
#: they are not listed, so their prices leave it out (A4's slice SKU covers the whole VM).
BUNDLED_LOCAL_SSD_GIB: Mapping[str, int] = {
    "a2-ultragpu-1g": 375,
    "a2-ultragpu-2g": 750,
    "a2-ultragpu-4g": 1500,
    "a2-ultragpu-8g": 3000,
    "a3-highgpu-8g": 6000,
    "a3-megagpu-8g": 6000,
}

#: GPU SKU heads that do not end in "GPU" → the accelerator type they price.
#: "RTX 6000 96GB": G4's NVIDIA RTX PRO 6000 (gpuhunt `add_compute_sku`; Cyclenerd mapping.csv
#: `gce.compute.gpu.rtx6000`).
GPU_SKU_HEADS: Mapping[str, str] = {"rtx 6000 96gb": "nvidia-rtx-pro-6000"}

_USAGE_TYPES = frozenset({"OnDemand", "Preemptible"})
_VENDOR_WORDS = frozenset({"nvidia", "tesla", "amd"})
#: SKUs priced for something other than a plain on-demand/spot VM of a standard shape.
_EXCLUDED_SKU_WORDS = (
    "commitment",
    "reserved",
    "reservation",
    "sole tenancy",
    "custom",
    "premium",
    "extended",
    "dws",
    "defined duration",
    "calendar",
    "flex",
)
_PREEMPTIBLE = re.compile(r"\bpreemptible\b", re.IGNORECASE)
_MARKET_PREFIX = re.compile(r"^(?:spot preemptible |preemptible )", re.IGNORECASE)
_TAIL = re.compile(r"^(?P<head>.+?)(?: (?:attached to|running in|in) .*)?$", re.IGNORECASE)
_SERIES = r"(?:[a-z][0-9]+[a-z]* (?=(?:nvidia|amd) ))?"  # "A4 " before "Nvidia B200"
_GPU_HEAD = re.compile(rf"^{_SERIES}(?P<name>.+?) gpu$", re.IGNORECASE)
_SLICE_HEAD = re.compile(rf"^{_SERIES}(?P<name>.+?) \((?P<n>\d+) gpu slices?\)$", re.IGNORECASE)
_HOST_HEAD = re.compile(r"^(?P<family>[a-z0-9]+) instance (?P<kind>core|ram)$", re.IGNORECASE)
_LOCAL_SSD_HEAD = "ssd backed local storage"
#: Token replacements between the spellings of accelerator types, SKUs and quota metrics.
_WORD_ALIASES = {"plus": "mega"}  # "H100 80GB Plus GPU" is A3 Mega's H100 in some regions
_MEMORY_WORD = re.compile(r"^\d+gb$")


def model_words(name: str) -> frozenset[str]:
    """The words that identify a GPU model in any of GCP's spellings, vendor words dropped:
    `nvidia-h100-mega-80gb`, "Nvidia H100 80GB Mega" and `NVIDIA_H100_MEGA` (a quota metric
    without `_GPUS`) → {h100, mega, 80gb}; "Virtual Workstation" → vws."""
    text = re.sub(r"virtual[\s_-]+workstation", "vws", name.lower())
    words = re.split(r"[^a-z0-9]+", text)
    return frozenset(_WORD_ALIASES.get(w, w) for w in words if w and w not in _VENDOR_WORDS)


def without_memory(words: frozenset[str]) -> frozenset[str]:
    """`words` without the memory words ("80gb")."""
    return frozenset(w for w in words if not _MEMORY_WORD.match(w))


def machine_series(machine_type: str) -> str:
    """`a3-megagpu-8g` → `a3-megagpu`, the key of `HOST_SKU_FAMILY`."""
    return "-".join(machine_type.split("-")[:2])


def unit_price(money: Mapping[str, Any]) -> Decimal:
    """`Money {units (int64 as string), nanos}` → Decimal USD.

    Raises:
        ValueError: not numbers, or a currency other than USD.
    """
    currency = money.get("currencyCode", "USD")
    if currency != "USD":
        raise ValueError(f"currency {currency!r}")
    try:
        units = Decimal(int(str(money.get("units", "0") or "0")))
        nanos = Decimal(int(money.get("nanos", 0) or 0))
    except (TypeError, ValueError, InvalidOperation) as exc:
        raise ValueError(f"unitPrice {dict(money)!r}") from exc
    return units + nanos / Decimal(10**9)


# --------------------------------------------------------------------------- SKU wording

#: ("gpu", model words) | ("core" | "ram", SKU family word) | ("local_ssd", "").
Component = tuple[str, frozenset[str] | str]
LOCAL_SSD: Component = ("local_ssd", "")


@dataclass(frozen=True, slots=True)
class SkuLine:
    """What one SKU prices, read from its description and category.

    `units` are the usage units its price may be per, each with the hours it covers: the
    price divided by them is per the hourly unit the sum uses (GiB-month → GiB-hour: / 730).
    """

    component: Component
    market: Market
    units: Mapping[str, Decimal]
    #: For "(N gpu slice)" SKUs: GPUs per unit (the price covers the whole machine share).
    slice_gpus: int | None = None


_PER_HOUR: Mapping[str, Decimal] = {"h": Decimal(1)}
_PER_GIB_HOUR: Mapping[str, Decimal] = {"GiBy.h": Decimal(1)}
_PER_GIB_MONTH: Mapping[str, Decimal] = {"GiBy.mo": HOURS_PER_MONTH, "GiBy.h": Decimal(1)}


def read_sku(description: str, usage_type: str, resource_family: str) -> SkuLine | None:
    """What a Compute Engine SKU prices, or None when it prices nothing a GPU offer uses
    (another family, storage other than Local SSD, commitments, special modes).

    Raises:
        ValueError: a slice SKU of zero GPUs.
    """
    if usage_type not in _USAGE_TYPES:
        return None
    lowered = description.lower()
    if any(word in lowered for word in _EXCLUDED_SKU_WORDS):
        return None
    spot = usage_type == "Preemptible" or _PREEMPTIBLE.search(description) is not None
    market = Market.SPOT if spot else Market.ON_DEMAND
    match = _TAIL.match(_MARKET_PREFIX.sub("", description.strip(), count=1))
    head = match.group("head") if match else ""
    if resource_family == "Storage":
        if head.lower() != _LOCAL_SSD_HEAD:
            return None
        return SkuLine(LOCAL_SSD, market, _PER_GIB_MONTH)
    if resource_family != "Compute":
        return None
    return _read_compute_head(head, market)


def _read_compute_head(head: str, market: Market) -> SkuLine | None:
    if host := _HOST_HEAD.match(head):
        kind = host.group("kind").lower()
        units = _PER_GIB_HOUR if kind == "ram" else _PER_HOUR
        return SkuLine((kind, host.group("family").lower()), market, units)
    if named := GPU_SKU_HEADS.get(head.lower()):
        return SkuLine(("gpu", model_words(named)), market, _PER_HOUR)
    if sliced := _SLICE_HEAD.match(head):
        gpus = int(sliced.group("n"))
        if gpus <= 0:
            raise ValueError(f"slice of {gpus} GPUs")
        words = model_words(sliced.group("name"))
        return SkuLine(("gpu", words), market, _PER_HOUR, slice_gpus=gpus)
    if gpu := _GPU_HEAD.match(head):
        return SkuLine(("gpu", model_words(gpu.group("name"))), market, _PER_HOUR)
    return None


# --------------------------------------------------------------------------- price book


@dataclass(frozen=True, slots=True)
class SkuPrice:
    """One SKU's current price for one component, USD per hourly unit (h, GiB-hour)."""

    sku_id: str
    price: Decimal
    description: str
    #: For "(N gpu slice)" SKUs: GPUs per unit (the price covers the whole machine share).
    slice_gpus: int | None = None


class Ambiguous(Exception):
    """Two SKUs price one component differently: no offer rather than a guess."""


@dataclass
class PriceBook:
    """The Compute Engine SKUs that price GPU VMs, by (component, region, market)."""

    entries: dict[tuple[Component, str, Market], dict[Decimal, SkuPrice]] = field(
        default_factory=dict
    )
    skus_read: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def add_page(self, skus: Iterable[Any]) -> None:
        for sku in skus:
            self.skus_read += 1
            try:
                self._add(sku)
            except (ValueError, TypeError, KeyError, AttributeError, IndexError) as exc:
                self.skipped["bad_sku"] += 1
                if len(self.notes) < MAX_NOTES:
                    sku_id = sku.get("skuId") if isinstance(sku, dict) else None
                    self.notes.append(f"billing sku {sku_id}: unreadable ({exc})")

    def _add(self, sku: Mapping[str, Any]) -> None:
        category = sku.get("category") or {}
        description: str = sku.get("description", "")
        line = read_sku(
            description, str(category.get("usageType", "")), str(category.get("resourceFamily"))
        )
        if line is None:
            return
        pricing = sku["pricingInfo"][-1]["pricingExpression"]
        unit = pricing.get("usageUnit")
        hours = line.units.get(unit) if isinstance(unit, str) else None
        if hours is None:
            raise ValueError(f"usageUnit {unit!r}, expected one of {sorted(line.units)}")
        tiers = sorted(pricing["tieredRates"], key=lambda t: float(t.get("startUsageAmount", 0)))
        price = unit_price(tiers[0]["unitPrice"]) / hours
        if price <= 0:
            self.skipped["zero_price_sku"] += 1
            return
        entry = SkuPrice(str(sku["skuId"]), price, description, line.slice_gpus)
        for region in sku.get("serviceRegions") or ():
            self.entries.setdefault((line.component, str(region), line.market), {})[price] = entry

    def get(self, component: Component, region: str, market: Market) -> SkuPrice | None:
        """The one price of `component` in `region` and `market`, None when unpriced.

        Raises:
            Ambiguous: SKUs with different prices match.
        """
        found = self.entries.get((component, region, market))
        if not found:
            return None
        if len(found) > 1:
            ids = ", ".join(f"{p.sku_id}={p.price}" for p in found.values())
            raise Ambiguous(f"{component[0]} {_label(component)} in {region} {market}: {ids}")
        return next(iter(found.values()))


def _label(component: Component) -> str:
    key = component[1]
    return key if isinstance(key, str) else " ".join(sorted(key))


# --------------------------------------------------------------------------- the sum

#: (part name, component, quantity): "gpu" × GPUs, "core" × vCPUs, "ram" × GiB, ...
Part = tuple[str, Component, Decimal]


class Unpriced(Exception):
    """An offer that cannot be priced; `reason` is the `skipped` key that counts it."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def machine_parts(
    machine_type: str, accelerator: str, gpus: int, vcpus: int, memory_gib: Decimal
) -> list[Part]:
    """What a machine type with built-in GPUs is billed for: its GPUs, vCPUs and memory
    (on its series' SKU family) and its bundled Local SSD.

    Raises:
        Unpriced: `unknown_series`, a series whose core/RAM SKU family is not known.
    """
    series = machine_series(machine_type)
    family = HOST_SKU_FAMILY.get(series)
    if family is None:
        raise Unpriced("unknown_series", f"no core/RAM SKU family known for series {series}")
    parts: list[Part] = [
        ("gpu", ("gpu", model_words(accelerator)), Decimal(gpus)),
        ("core", ("core", family), Decimal(vcpus)),
        ("ram", ("ram", family), memory_gib),
    ]
    ssd_gib = BUNDLED_LOCAL_SSD_GIB.get(machine_type)
    if ssd_gib is not None:
        parts.append(("local_ssd", LOCAL_SSD, Decimal(ssd_gib)))
    return parts


def price_parts(
    book: PriceBook, parts: Iterable[Part], region: str, market: Market
) -> tuple[Decimal, dict[str, str]]:
    """Σ unit price × quantity over `parts` in `region` and `market`, with the SKUs used
    (`{"gpu": "<sku id>=<unit price>", ...}`). A GPU slice SKU ends the sum: it carries the
    whole machine.

    Raises:
        Unpriced: `no_price:<market>` (a part has no SKU) or `ambiguous_price`.
    """
    total = Decimal(0)
    used: dict[str, str] = {}
    for part, component, quantity in parts:
        try:
            sku = book.get(component, region, market)
        except Ambiguous as exc:
            raise Unpriced("ambiguous_price", str(exc)) from None
        if sku is None:
            raise Unpriced(f"no_price:{market}", f"no {market} {part} SKU")
        if part == "gpu" and sku.slice_gpus:
            return sku.price / sku.slice_gpus * quantity, {
                "gpu_slice": f"{sku.sku_id}={sku.price}/{sku.slice_gpus}"
            }
        total += sku.price * quantity
        used[part] = f"{sku.sku_id}={sku.price}"
    return total, used
