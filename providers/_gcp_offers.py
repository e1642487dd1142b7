"""GCP offers and quotas: what the Compute Engine lists said about one region, turned into
`Offer`s and `Quota`s.

Owns the records the two aggregated lists are read into (`AccelType`, `MachineType`,
`Catalogue`), the rules that decide which offers exist (built-in vs N1-attachable GPUs,
deprecated types, the markets a machine type is sold in) and the GPU quota mapping. Prices
come from `providers._gcp_skus`; the calls, retries and scopes are `providers.gcp`'s. Pure:
no network, no clock.

## Markets sold
GCP prices some machine types in markets it does not sell them in: A3 High with fewer than 8
GPUs, A3 Ultra, A4 and A4X have no on-demand consumption option (cloud.google.com/compute/docs/
accelerator-optimized-machines#consumption_option_availability_by_machine_type; gpuhunt's
`GCPProvider.filter` drops the same on-demand offers, citing that table). The table is
`broker.sizes.markets_sold`; an offer in a market the table says is not sold is not emitted
and is counted as `skipped["not_sold:<market>"]`.

## Accelerators the GPU catalogue does not know
An accelerator type `broker.gpus` cannot map (say `nvidia-tesla-t4-vws`) keeps its offers:
`gpu_model` None and `gpu_name_raw` = the accelerator type name (`providers.base.
model_fields`), counted as unrecognised by the ingest, never guessed, and a note names it
once per region. The price does not depend on the model: SKUs are paired with machine and
accelerator types by the accelerator type's own words (`providers._gcp_skus.model_words`),
so such an offer is priced, or skipped as unpriced, exactly as a known one would be.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from broker import gpus, regions, sizes
from broker.config import GcpSettings
from broker.domain import Availability, Market, Offer, Quota, to_count, to_price
from providers._gcp_skus import (
    BUNDLED_LOCAL_SSD_GIB,
    MAX_NOTES,
    Part,
    PriceBook,
    Unpriced,
    machine_parts,
    model_words,
    price_parts,
    without_memory,
)
from providers.base import ScopeOffers, model_fields, place_fields

NAME = "gcp"

#: Accelerator types GCP attaches to N1 VMs (cloud.google.com/compute/docs/gpus, "N1
#: general-purpose machine series"): sold per GPU, the host machine type is the user's choice.
N1_ATTACHABLE = frozenset(
    {
        "nvidia-tesla-t4",
        "nvidia-tesla-t4-vws",
        "nvidia-tesla-v100",
        "nvidia-tesla-p100",
        "nvidia-tesla-p100-vws",
        "nvidia-tesla-p4",
        "nvidia-tesla-p4-vws",
        "nvidia-tesla-k80",
    }
)
#: The markets every GPU offer is priced in (commitments are not offered: see gcp.py).
MARKETS = (Market.ON_DEMAND, Market.SPOT)
_QUOTA_PREFIX_MARKET: tuple[tuple[str, Market], ...] = (
    ("PREEMPTIBLE_", Market.SPOT),
    ("COMMITTED_", Market.RESERVED),
)
_DEAD = frozenset({"OBSOLETE", "DELETED"})

#: `broker.sizes.markets_sold`'s shape: (provider, instance type) → markets sold, or None.
MarketsSold = Callable[[str, str], frozenset[Market] | None]


def region_of_zone(zone: str) -> str:
    """`us-central1-a` → `us-central1` (GCP zone names are the region plus `-<letter>`)."""
    return zone.rsplit("-", 1)[0]


# --------------------------------------------------------------------------- catalogue


@dataclass(frozen=True, slots=True)
class AccelType:
    name: str
    description: str
    max_per_instance: int
    deprecated: str


@dataclass(frozen=True, slots=True)
class MachineType:
    name: str
    guest_cpus: int
    memory_mb: int
    accelerators: tuple[tuple[str, int], ...]
    deprecated: str


@dataclass
class Catalogue:
    """What the two aggregated lists said, by zone."""

    accelerators: dict[str, list[AccelType]] = field(default_factory=dict)
    machine_types: dict[str, list[MachineType]] = field(default_factory=dict)
    zones: set[str] = field(default_factory=set)
    #: zone (or region) → why the aggregated list could not read it.
    unreachable: dict[str, str] = field(default_factory=dict)

    def merge(self, other: Catalogue) -> None:
        self.accelerators.update(other.accelerators)
        self.machine_types.update(other.machine_types)
        self.zones |= other.zones
        self.unreachable.update(other.unreachable)

    def accelerator_names(self) -> set[str]:
        names = {a.name for accels in self.accelerators.values() for a in accels}
        return names | {
            n for ms in self.machine_types.values() for m in ms for n, _ in m.accelerators
        }

    def regions(self) -> set[str]:
        return {region_of_zone(z) for z in self.zones} | {
            region_of_zone(z) if z.count("-") >= 2 else z for z in self.unreachable
        }

    def zones_of(self, region: str) -> list[str]:
        return sorted(z for z in self.zones if region_of_zone(z) == region)


# --------------------------------------------------------------------------- offers


@dataclass
class OfferBuilder:
    """Builds one region's offers zone by zone into `out` (offers, skipped counts, notes)."""

    region: str
    where: regions.RegionInfo | None
    availability: Availability
    book: PriceBook
    out: ScopeOffers
    settings: GcpSettings
    #: The markets-sold table (a seam: tests give their own table).
    markets_sold: MarketsSold = sizes.markets_sold
    #: accelerator type name → instance types of this region that carry it (for quotas).
    types_by_accelerator: dict[str, set[str]] = field(default_factory=dict)
    #: accelerator type names the GPU catalogue did not know (noted once each).
    unknown_accelerators: set[str] = field(default_factory=set)

    def skip(self, reason: str, note: str | None = None) -> None:
        self.out.skipped[reason] += 1
        if note and len(self.out.notes) < MAX_NOTES:
            self.out.notes.append(f"gcp {self.region}: {note}")

    def zone(self, zone: str, accels: list[AccelType], machines: list[MachineType]) -> None:
        carried = {name for m in machines for name, _ in m.accelerators}
        for m in machines:
            if m.deprecated in _DEAD:
                self.skip("deprecated")
                continue
            if len(m.accelerators) != 1:
                self.skip("mixed_accelerators", f"{zone} {m.name}: {m.accelerators}")
                continue
            accel, count = m.accelerators[0]
            self.types_by_accelerator.setdefault(accel, set()).add(m.name)
            self.machine(zone, m, accel, count)
        for a in accels:
            if a.name in carried:
                continue
            if a.deprecated in _DEAD:
                self.skip("deprecated")
                continue
            if a.name not in N1_ATTACHABLE:
                self.skip("no_machine_type", f"{zone} {a.name}: no polled machine type carries it")
                continue
            if not self.settings.attachable_gpus:
                continue
            self.types_by_accelerator.setdefault(a.name, set()).add(a.name)
            self.attachable(zone, a)

    def _model(self, accel: str, instance_type: str) -> gpus.GpuModel | None:
        """The catalogue's model of `accel`, or None (the offers are kept, unrecognised)."""
        model = gpus.normalise(accel, provider=NAME, instance_type=instance_type)
        if model is None and accel not in self.unknown_accelerators:
            self.unknown_accelerators.add(accel)
            if len(self.out.notes) < MAX_NOTES:
                self.out.notes.append(
                    f"gcp {self.region}: {accel} not in the GPU catalogue, offers kept "
                    "without gpu_model"
                )
        return model

    def _priced(
        self, instance_type: str, parts: list[Part], market: Market, label: str
    ) -> tuple[Decimal, dict[str, str]] | None:
        """The price of `parts` in `market`, or None (skipped and counted): the market is not
        sold for this instance type, or a part has no single price."""
        sold = self.markets_sold(NAME, instance_type)
        if sold is not None and market not in sold:
            self.skip(f"not_sold:{market}")
            return None
        try:
            return price_parts(self.book, parts, self.region, market)
        except Unpriced as exc:
            self.skip(exc.reason, f"{label}: {exc}")
            return None

    def machine(self, zone: str, m: MachineType, accel: str, count: int) -> None:
        model = self._model(accel, m.name)
        memory_gib = Decimal(m.memory_mb) / 1024
        try:
            parts = machine_parts(m.name, accel, count, m.guest_cpus, memory_gib)
        except Unpriced as exc:
            self.skip(exc.reason, f"{zone} {m.name}: {exc}")
            return
        for market in MARKETS:
            priced = self._priced(m.name, parts, market, f"{zone} {m.name}")
            if priced is None:
                continue
            total, used = priced
            raw = {
                "machine_type": m.name,
                "accelerator_type": accel,
                "guest_accelerator_count": count,
                "guest_cpus": m.guest_cpus,
                "memory_mb": m.memory_mb,
                "skus": used,
            }
            if "local_ssd" in used:
                raw["local_ssd_gib"] = BUNDLED_LOCAL_SSD_GIB[m.name]
            if m.deprecated:
                raw["deprecated"] = m.deprecated
            self.offer(
                zone,
                m.name,
                market,
                model,
                Decimal(count),
                total,
                raw,
                accelerator=accel,
                vcpus=Decimal(m.guest_cpus),
                memory_gb=memory_gib,
            )

    def attachable(self, zone: str, a: AccelType) -> None:
        model = self._model(a.name, a.name)
        parts: list[Part] = [("gpu", ("gpu", model_words(a.name)), Decimal(1))]
        for market in MARKETS:
            priced = self._priced(a.name, parts, market, f"{zone} {a.name}")
            if priced is None:
                continue
            total, used = priced
            raw: dict[str, Any] = {
                "accelerator_type": a.name,
                "description": a.description,
                "pricing": "gpu_only",
                "host": "any N1 machine type, billed separately (not included)",
                "max_per_instance": a.max_per_instance,
                "skus": used,
            }
            self.offer(
                zone,
                a.name,
                market,
                model,
                Decimal(1),
                total,
                raw,
                accelerator=a.name,
                vcpus=None,
                memory_gb=None,
            )

    def offer(
        self,
        zone: str,
        instance_type: str,
        market: Market,
        model: gpus.GpuModel | None,
        count: Decimal,
        total: Decimal,
        raw: dict[str, Any],
        *,
        accelerator: str,
        vcpus: Decimal | None,
        memory_gb: Decimal | None,
    ) -> None:
        """One offer; `accelerator` is GCP's accelerator type name (kept as `gpu_name_raw`
        when `model` is None)."""
        price = to_price(total)
        if price <= 0:
            self.skip(f"zero_price:{market}")
            return
        self.out.offers.append(
            Offer(
                provider=NAME,
                region=self.region,
                zone=zone,
                instance_type=instance_type,
                market=market,
                **model_fields(model, accelerator),
                gpu_count=to_count(count),
                gpu_memory_gb=(
                    Decimal(model.memory_gb)
                    if model is not None and model.memory_gb is not None
                    else None
                ),
                vcpus=vcpus,
                memory_gb=memory_gb,
                **place_fields(self.where),
                price_per_hour=price,
                availability=self.availability,
                raw=raw,
            )
        )


# --------------------------------------------------------------------------- quotas


def quota_accelerator(gpu: str, accelerator_names: Iterable[str]) -> str | None:
    """The accelerator type a quota metric's GPU part names (`NVIDIA_H100` → nvidia-h100-80gb).

    Same model words first; else the same words once memory words are dropped from the type
    name, if exactly one type matches and `broker.gpus` maps both to the same model (so
    `NVIDIA_A100`, the 40 GB quota, never lands on nvidia-a100-80gb).
    """
    words = model_words(gpu)
    names = sorted(accelerator_names)
    for name in names:
        if model_words(name) == words:
            return name
    model = gpus.normalise(gpu, provider=NAME)
    loose = [
        name
        for name in names
        if without_memory(model_words(name)) == words
        and model is not None
        and gpus.normalise(name, provider=NAME) == model
    ]
    return loose[0] if len(loose) == 1 else None


def region_quotas(
    region: str,
    info: Any,
    types_by_accelerator: Mapping[str, set[str]],
    accelerator_names: Iterable[str],
) -> list[Quota]:
    """The region's `*_GPUS` quotas, each tied to the instance types using that GPU here."""
    names = list(accelerator_names)
    out: list[Quota] = []
    for q in info.quotas:
        metric = str(q.metric)
        if not metric.endswith("_GPUS") or metric == "GPUS_ALL_REGIONS":
            continue
        market = Market.ON_DEMAND
        gpu = metric[: -len("_GPUS")]
        for prefix, prefix_market in _QUOTA_PREFIX_MARKET:
            if gpu.startswith(prefix):
                gpu, market = gpu[len(prefix) :], prefix_market
                break
        accel = quota_accelerator(gpu, names)
        out.append(
            Quota(
                provider=NAME,
                region=region,
                name=metric,
                unit="gpus",
                limit=Decimal(str(q.limit)),
                usage=Decimal(str(q.usage)),
                market=market,
                instance_types=frozenset(types_by_accelerator.get(accel, ()) if accel else ()),
                description=f"accelerator type {accel}" if accel else None,
            )
        )
    return out
