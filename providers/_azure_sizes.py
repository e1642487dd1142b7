"""Azure GPU sizes: which resource SKUs are GPU sizes, what each carries, and the GPU
catalogue entry each maps onto. Pure: no network, no clock. The calls, prices, scopes and
offers are `providers.azure`'s.

## GPU sizes
A `virtualMachines` entry is a GPU size when it has a `GPUs` capability above 0, or the size
table lists it (ND GB200 v6, ND GB300 v6 and ND96is MI300X v5 carry no `GPUs` capability at
all: SkyPilot's fetch_azure.py, `AZURE_MISSING_GPU_COUNT`, from `az vm list-skus --all`), or
its name is of a GPU series (`_SERIES`). Dropped, and counted in the poll's `skipped` once per
location the SKU list gives (whatever `regions` polls), with a note: sizes of retired series
(`retired`: NC, NCv2, ND and NV v1, `_RETIRED`; Azure deallocates what is left of them, so
nothing can be bought), and GPU-series sizes with no `GPUs` capability that the table does not
list (`no_gpu_count`: a count is never guessed).

## The accelerator of a size (`accelerator_of`)
- `gpu_model`: the size table's model (`broker.sizes.fraction`, `broker/data/fractions.csv`)
  when it lists the size and the catalogue knows that model, else `broker.gpus.normalise` of
  the GPU the size's series carries (`_SERIES`, by SKU name, from Microsoft's size-series
  pages: ND H100 v5 → H100 → `H100-SXM` by the catalogue's Azure rule, NC(C)ads H100 v5 →
  `H100-NVL`, NC A100 v4 and ND A100 v4 (`amsr`) → `A100-80GB`, ND96asr_v4 → `A100` (40 GB),
  ...).
- A GPU size whose model neither gives, or the catalogue lacks, is kept: `gpu_model` None and
  `gpu_name_raw` = the name it was looked up by (the size table's model, else the series'
  GPU), else, for a size of a series this module does not know, Azure's own name for the
  series: the size's `family` (the size name when there is none). Through
  `providers.base.model_fields`; counted as unrecognised by the ingest, never guessed. Its
  count and price are read as for any size.
- `gpu_memory_gb` = the table's `memory_gb` (the slice's memory: 4 GB for 1/6 of an A10) when
  it gives one, else the catalogue's per-GPU figure (None for an unrecognised GPU).
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal, InvalidOperation
from typing import Any

from broker import gpus, sizes

NAME = "azure"
MAX_NOTES = 50

# --------------------------------------------------------------------------- GPU series

#: SKU-name pattern of each GPU size series → the GPU name passed to `broker.gpus.normalise`
#: (with the size as `instance_type`, so the catalogue's Azure H100 rule picks SXM / NVL).
#: Sources: Microsoft's size-series pages (MicrosoftDocs/azure-compute-docs, articles/
#: virtual-machines/sizes/gpu-accelerated/: ndh100v5, ncadsh100v5, nccadsh100v5, nd-h200-v5,
#: ndmi300xv5, nca100v4, ndma100v4 (A100 80GB), ndasra100v4 (A100 40GB), nvadsa10v5, ncast4v3,
#: ncv3 (V100 16GB), ndv2 (V100 32GB), nd-series (P40), nvv3/nv-series (M60), nvv4 (MI25),
#: nc-rtxpro6000-bse-v6 (RTX PRO 6000 Blackwell Server Edition)); NC A10 v4 and the retired
#: NCv2 (P100) / NC (K80) from the sizes SkyPilot's catalog fetcher maps by family.
_SERIES: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), gpu)
    for pattern, gpu in (
        (r"^Standard_ND\d+[a-z]*_H100_v5$", "H100"),
        (r"^Standard_NCC?\d+[a-z]*_H100_v5$", "H100"),
        (r"^Standard_ND\d+[a-z]*_H200_v5$", "H200"),
        (r"^Standard_ND\d+[a-z]*_MI300X_v5$", "MI300X"),
        (r"^Standard_NC\d+[a-z]*_A100_v4$", "A100 80GB"),
        (r"^Standard_ND\d+[a-z]*_A100_v4$", "A100 80GB"),
        (r"^Standard_ND\d+asr_v4$", "A100 40GB"),
        (r"^Standard_NC\d+[a-z]*_A10_v4$", "A10"),
        (r"^Standard_NV\d+[a-z]*_A10_v5$", "A10"),
        (r"^Standard_NC\d+[a-z]*_T4_v3$", "T4"),
        (r"^Standard_NC\d+r?s_v3$", "V100 16GB"),
        (r"^Standard_ND\d+r?s_v2$", "V100 32GB"),
        (r"^Standard_NC\d+r?s_v2$", "P100"),
        (r"^Standard_ND\d+r?s$", "P40"),
        (r"^Standard_NC\d+r?$", "K80"),
        (r"^Standard_NV\d+(?:s_v[23])?$", "M60"),
        (r"^Standard_NV\d+as_v4$", "MI25"),
        (r"^Standard_NC\d+[a-z]*_xl_RTXPRO6000BSE_v6$", "RTXPRO6000S"),
    )
)

#: Retired GPU series: Microsoft retired them and deallocates any VM left, yet old SKU lists and
#: price lists may still name them. NC (K80) and NC_Promo, NCv2 (P100), ND (P40): retired
#: 6 September 2023; NV (M60) and NV_Promo: 1 September 2022 (MicrosoftDocs/azure-docs,
#: articles/virtual-machines/nc-series-retirement.md, ncv2-series-retirement.md,
#: nd-series-retirement.md, NV-series-retirement.md). Matched on the name without `_Promo`.
_RETIRED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(pattern, re.IGNORECASE), series)
    for pattern, series in (
        (r"^Standard_NC\d+r?$", "NC"),  # NC6, NC12, NC24, NC24r
        (r"^Standard_NC\d+r?s_v2$", "NCv2"),  # NC6s_v2 ... NC24rs_v2
        (r"^Standard_ND\d+r?s$", "ND"),  # ND6s, ND12s, ND24s, ND24rs
        (r"^Standard_NV\d+$", "NV"),  # NV6, NV12, NV24 (not NVv3 NV12s_v3, NVv4 NV4as_v4)
    )
)

_PROMO = re.compile(r"_Promo$", re.IGNORECASE)


def series_gpu(sku_name: str) -> str | None:
    """The GPU name a size's series carries (`Standard_ND96isr_H100_v5` → "H100"), or None."""
    name = _PROMO.sub("", sku_name)
    for pattern, gpu in _SERIES:
        if pattern.match(name):
            return gpu
    return None


def retired_series(sku_name: str) -> str | None:
    """The retired series a size belongs to (`Standard_NC6_Promo` → "NC"), or None."""
    name = _PROMO.sub("", sku_name)
    for pattern, series in _RETIRED:
        if pattern.match(name):
            return series
    return None


def wire_decimal(value: Any) -> Decimal:
    """A wire number or numeric string as Decimal (floats via their shortest repr).

    Raises:
        ValueError: not a finite number.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"not a number: {value!r}")
    try:
        d = Decimal(repr(value)) if isinstance(value, float) else Decimal(str(value).strip())
    except InvalidOperation as exc:
        raise ValueError(f"not a number: {value!r}") from exc
    if not d.is_finite():
        raise ValueError(f"not a finite number: {value!r}")
    return d


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class GpuSku:
    """One GPU VM size in one location, as the resource SKU list reports it."""

    name: str
    family: str
    #: GPUs per instance: the size table's fraction where it lists the size, else `GPUs`.
    gpus: Decimal
    vcpus: Decimal | None
    memory_gb: Decimal | None
    rdma: bool
    zones: tuple[str, ...]
    restricted_zones: tuple[str, ...]
    #: reasonCode of a Location restriction covering this location (None = not restricted).
    location_restriction: str | None
    #: the `GPUs` capability as the API wrote it; None when the entry has none.
    api_gpus: str | None = None
    #: the size table's entry (`broker.sizes`), when it lists the size.
    table: sizes.Fraction | None = None


@dataclass
class SkuCatalogue:
    """The GPU sizes of the subscription by location, from `resource_skus.list`."""

    #: location → lower-cased size name → size.
    gpu_skus: dict[str, dict[str, GpuSku]] = field(default_factory=dict)
    #: every location with any virtual machine size (GPU or not).
    locations: set[str] = field(default_factory=set)
    entries: int = 0
    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def note(self, text: str) -> None:
        if len(self.notes) < MAX_NOTES:
            self.notes.append(text)

    def add_page(self, skus: Iterable[Any]) -> None:
        # Load the size table here: a broken shipped table must fail the poll loudly, not
        # turn every entry into a `bad_sku` below.
        sizes.fractions_table()
        for sku in skus:
            self.entries += 1
            try:
                self._add(sku)
            except (ValueError, TypeError, KeyError, AttributeError) as exc:
                self.skipped["bad_sku"] += 1
                name = sku.get("name") if isinstance(sku, dict) else None
                self.note(f"resource sku {name}: unreadable ({exc})")

    def _skip(self, reason: str, locations: set[str], note: str) -> None:
        """Count a dropped GPU size once per location it is listed in."""
        self.skipped[reason] += max(len(locations), 1)
        self.note(note)

    def _gpus_of(
        self, name: str, caps: Mapping[str, str], locations: set[str]
    ) -> tuple[Decimal, sizes.Fraction | None] | None:
        """GPUs per instance of a GPU size and its size-table entry; None for a size that is
        not a GPU size or is dropped (counted; see "GPU sizes" in the module docstring)."""
        series = retired_series(name)
        listed = sizes.fraction(NAME, name)
        api = wire_decimal(caps["GPUs"]) if "GPUs" in caps else None
        gpu_series = series_gpu(name) is not None
        if listed is None and (api is None or api <= 0) and not gpu_series:
            return None
        if series is not None:
            self._skip("retired", locations, f"resource sku {name}: {series} series is retired")
            return None
        if listed is not None:
            return listed.fraction, listed
        if api is None or api <= 0:
            self._skip(
                "no_gpu_count",
                locations,
                f"resource sku {name}: GPU series without a GPUs capability, not in the size "
                "table (broker/data/fractions.csv)",
            )
            return None
        return api, None

    def _add(self, sku: Mapping[str, Any]) -> None:
        if sku.get("resourceType") != "virtualMachines":
            return
        name = str(sku["name"])
        infos = [i for i in sku.get("locationInfo") or () if i.get("location")]
        locations = {str(i["location"]).lower() for i in infos}
        locations |= {str(loc).lower() for loc in sku.get("locations") or ()}
        self.locations |= locations
        caps = {str(c.get("name")): str(c.get("value")) for c in sku.get("capabilities") or ()}
        found = self._gpus_of(name, caps, locations)
        if found is None:
            return
        gpu_count, listed = found
        vcpus = wire_decimal(caps["vCPUs"]) if "vCPUs" in caps else None
        memory = wire_decimal(caps["MemoryGB"]) if "MemoryGB" in caps else None
        zones_of = {str(i["location"]).lower(): tuple(i.get("zones") or ()) for i in infos}
        for location in locations:
            zones = zones_of.get(location, ())
            restricted, blocked = _restrictions(sku, location)
            self.gpu_skus.setdefault(location, {}).setdefault(
                name.lower(),
                GpuSku(
                    name=name,
                    family=str(sku.get("family") or ""),
                    gpus=gpu_count,
                    vcpus=vcpus,
                    memory_gb=memory,
                    rdma=caps.get("RdmaEnabled", "").lower() == "true",
                    zones=tuple(sorted(str(z) for z in zones if str(z) not in restricted)),
                    restricted_zones=tuple(sorted(restricted)),
                    location_restriction=blocked,
                    api_gpus=caps.get("GPUs"),
                    table=listed,
                ),
            )


def _restrictions(sku: Mapping[str, Any], location: str) -> tuple[set[str], str | None]:
    """The zones a `Zone` restriction removes in `location`, and the reasonCode of a
    `Location` restriction covering it (None = not restricted)."""
    restricted: set[str] = set()
    blocked: str | None = None
    for r in sku.get("restrictions") or ():
        info = r.get("restrictionInfo") or {}
        where = {str(v).lower() for v in r.get("values") or ()}
        where |= {str(v).lower() for v in info.get("locations") or ()}
        if location not in where:
            continue
        if r.get("type") == "Location":
            blocked = str(r.get("reasonCode") or "restricted")
        elif r.get("type") == "Zone":
            restricted |= {str(z) for z in info.get("zones") or ()}
    return restricted, blocked


# --------------------------------------------------------------------------- accelerator


@dataclass(frozen=True, slots=True)
class Accelerator:
    """What a GPU size carries, in the catalogue's terms (see `accelerator_of`)."""

    #: the catalogue's model; None when the catalogue does not know the GPU.
    model: gpus.GpuModel | None
    #: the name the model was looked up by (Azure's, or the size table's): `gpu_name_raw`.
    name: str
    #: accelerator memory per GPU unit counted by `GpuSku.gpus`, GB; None when unknown.
    memory_gb: Decimal | None


def accelerator_of(sku: GpuSku) -> Accelerator:
    """The accelerator of a size: the size table's model when it lists the size (and the
    catalogue knows it), else the model of the size's series; without either the model is
    None and `name` says what was looked for (see the module docstring)."""
    table = sku.table
    gpu = series_gpu(sku.name)
    model: gpus.GpuModel | None = None
    if table is not None and table.gpu_model in gpus.CATALOGUE:
        model = gpus.CATALOGUE[table.gpu_model]
    elif gpu:
        model = gpus.normalise(gpu, provider=NAME, instance_type=sku.name)
    if model is not None:
        name = model.name
    elif table is not None:
        name = table.gpu_model
    else:
        name = gpu or sku.family or sku.name
    if table is not None and table.memory_gb is not None:
        memory: Decimal | None = table.memory_gb
    else:
        memory = Decimal(model.memory_gb) if model and model.memory_gb is not None else None
    return Accelerator(model, name, memory)


def raw_of(sku: GpuSku) -> dict[str, Any]:
    """The size's own fields kept in every offer's `raw`."""
    base: dict[str, Any] = {
        "sku": sku.name,
        "family": sku.family,
        "GPUs": sku.api_gpus,
        "vCPUs": str(sku.vcpus) if sku.vcpus is not None else None,
        "MemoryGB": str(sku.memory_gb) if sku.memory_gb is not None else None,
        "zones": list(sku.zones),
    }
    if sku.table is not None:
        memory = sku.table.memory_gb
        base["size_table"] = {
            "gpus": str(sku.table.fraction),
            "memory_gb": str(memory) if memory is not None else None,
        }
    if sku.restricted_zones:
        base["restricted_zones"] = list(sku.restricted_zones)
    if sku.location_restriction:
        base["restriction"] = sku.location_restriction
    return base
