"""The canonical accelerator catalogue and the normalisation of provider names onto it.

Owns the one list of accelerators the broker knows (GPUs, TPUs and other accelerators such
as Inferentia or Gaudi, each typed) and the rules that map what a provider calls a card onto
it. Normalisation goes through tables: a cleaned-name alias table, then a few per-provider
refinements by instance type or reported memory, each citing its evidence. A name no rule
covers gives `None` (the caller skips and counts the row); nothing is matched fuzzily.

Form factor is tracked where it changes what a user gets (H100: SXM, PCIe, NVL). When a
provider does not say which (Vast reduces `H100_SXM` and `H100_NVL` to `H100`), the offer
gets the family-level entry `H100` with `form_factor=None` rather than a guess.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import StrEnum
from types import MappingProxyType


class AcceleratorKind(StrEnum):
    GPU = "gpu"
    TPU = "tpu"
    OTHER = "other"  # Inferentia, Trainium, Gaudi, Qualcomm AI 100, FPGA


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One catalogue entry. `memory_gb` is per accelerator (per chip for TPUs)."""

    name: str
    family: str
    vendor: str
    kind: AcceleratorKind
    memory_gb: int | None
    form_factor: str | None = None


class UnknownGpu(ValueError):
    """A GPU model or family the catalogue does not know; the message suggests near ones."""


G, T, X = AcceleratorKind.GPU, AcceleratorKind.TPU, AcceleratorKind.OTHER
_ENTRIES = (
    # NVIDIA data centre
    GpuModel("B200", "B200", "NVIDIA", G, 180),
    GpuModel("H200", "H200", "NVIDIA", G, 141),
    GpuModel("GH200", "GH200", "NVIDIA", G, 96),
    GpuModel("H100", "H100", "NVIDIA", G, 80),  # form factor not stated by the provider
    GpuModel("H100-SXM", "H100", "NVIDIA", G, 80, "SXM"),
    GpuModel("H100-PCIe", "H100", "NVIDIA", G, 80, "PCIe"),
    GpuModel("H100-NVL", "H100", "NVIDIA", G, 94, "NVL"),
    GpuModel("A100", "A100", "NVIDIA", G, 40),
    GpuModel("A100-80GB", "A100", "NVIDIA", G, 80),
    GpuModel("L40S", "L40S", "NVIDIA", G, 48),
    GpuModel("L40", "L40", "NVIDIA", G, 48),
    GpuModel("L4", "L4", "NVIDIA", G, 24),
    GpuModel("A40", "A40", "NVIDIA", G, 48),
    GpuModel("A10", "A10", "NVIDIA", G, 24),
    GpuModel("A10G", "A10G", "NVIDIA", G, 24),
    GpuModel("T4", "T4", "NVIDIA", G, 16),
    GpuModel("T4G", "T4G", "NVIDIA", G, 16),
    GpuModel("V100", "V100", "NVIDIA", G, 16),
    GpuModel("V100-32GB", "V100", "NVIDIA", G, 32),
    GpuModel("P100", "P100", "NVIDIA", G, 16),
    GpuModel("P40", "P40", "NVIDIA", G, 24),
    GpuModel("P4", "P4", "NVIDIA", G, 8),
    GpuModel("K80", "K80", "NVIDIA", G, 12),
    GpuModel("K520", "K520", "NVIDIA", G, 4),
    GpuModel("M60", "M60", "NVIDIA", G, 8),
    # NVIDIA workstation
    GpuModel("RTXPRO6000WS", "RTXPRO6000", "NVIDIA", G, 96),
    GpuModel("RTX6000-Ada", "RTX6000-Ada", "NVIDIA", G, 48),
    GpuModel("RTX5880-Ada", "RTX5880-Ada", "NVIDIA", G, 48),
    GpuModel("RTX4000-Ada", "RTX4000-Ada", "NVIDIA", G, 20),
    GpuModel("RTXA6000", "RTXA6000", "NVIDIA", G, 48),
    GpuModel("RTXA5000", "RTXA5000", "NVIDIA", G, 24),
    GpuModel("RTXA4500", "RTXA4500", "NVIDIA", G, 20),
    GpuModel("RTXA4000", "RTXA4000", "NVIDIA", G, 16),
    GpuModel("RTX6000", "RTX6000", "NVIDIA", G, 24),  # Quadro RTX 6000 (Turing), not Ada
    # NVIDIA consumer
    GpuModel("RTX5090", "RTX5090", "NVIDIA", G, 32),
    GpuModel("RTX5070", "RTX5070", "NVIDIA", G, 12),
    GpuModel("RTX4090", "RTX4090", "NVIDIA", G, 24),
    GpuModel("RTX4070", "RTX4070", "NVIDIA", G, 12),
    GpuModel("RTX4060", "RTX4060", "NVIDIA", G, 8),
    GpuModel("RTX3090", "RTX3090", "NVIDIA", G, 24),
    GpuModel("RTX3080", "RTX3080", "NVIDIA", G, 10),
    GpuModel("RTX3070", "RTX3070", "NVIDIA", G, 8),
    GpuModel("RTX3060", "RTX3060", "NVIDIA", G, 12),
    # AMD
    GpuModel("MI300X", "MI300X", "AMD", G, 192),
    GpuModel("MI25", "MI25", "AMD", G, 16),
    GpuModel("V520", "V520", "AMD", G, 8),  # Radeon Pro V520 (AWS g4ad)
    # Google TPU generations (HBM per chip)
    GpuModel("TPU-v2", "TPU-v2", "Google", T, 16),
    GpuModel("TPU-v3", "TPU-v3", "Google", T, 32),
    GpuModel("TPU-v4", "TPU-v4", "Google", T, 32),
    GpuModel("TPU-v5e", "TPU-v5e", "Google", T, 16),
    GpuModel("TPU-v5p", "TPU-v5p", "Google", T, 95),
    GpuModel("TPU-v6e", "TPU-v6e", "Google", T, 32),
    # Other accelerators
    GpuModel("Inferentia", "Inferentia", "AWS", X, None),
    GpuModel("Trainium", "Trainium", "AWS", X, 32),
    GpuModel("Gaudi", "Gaudi", "Intel", X, 32),  # Habana Gaudi HL-205 (AWS dl1)
    GpuModel("AI100", "AI100", "Qualcomm", X, None),  # Qualcomm Cloud AI 100 (AWS dl2q)
    GpuModel("VU9P", "VU9P", "Xilinx", X, None),  # Virtex UltraScale+ FPGA (AWS f1)
)
CATALOGUE: Mapping[str, GpuModel] = MappingProxyType({m.name: m for m in _ENTRIES})
_BY_LOWER = {m.name.lower(): m for m in _ENTRIES}
_FAMILIES: dict[str, frozenset[str]] = {}
for _m in _ENTRIES:
    _FAMILIES[_m.family.lower()] = _FAMILIES.get(_m.family.lower(), frozenset()) | {_m.name}

_PREFIXES = ("nvidia", "tesla", "geforce", "quadro", "amd", "radeon")


def _clean(name: str) -> str:
    """Lower-case, vendor words and separators dropped: "NVIDIA GeForce RTX 3070" -> "rtx3070"."""
    s = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    while s and s[0] in _PREFIXES:
        s = s[1:]
    return "".join(s)


#: Cleaned provider names -> canonical model (those equal to a cleaned canonical name are
#: implied). Sources: the data set's "Accelerators seen" table and each provider's listings.
_ALIASES: dict[str, str] = {
    "h100sxm": "H100-SXM",
    "h100sxm5": "H100-SXM",
    "h10080gbhbm3": "H100-SXM",
    "h100mega": "H100-SXM",  # GCP a3-megagpu: H100 SXM with more NICs
    "h100pcie": "H100-PCIe",
    "h100nvl": "H100-NVL",
    "a10080gb": "A100-80GB",
    "a10080gbsxm": "A100-80GB",
    "a10080gbpcie": "A100-80GB",
    "a100sxm4": "A100",
    "a100pcie": "A100",
    "a10040gb": "A100",
    "a6000": "RTXA6000",  # Lambda writes A6000 for the RTX A6000 (Ampere)
    "rtxa6000": "RTXA6000",
    "rtxa5000": "RTXA5000",
    "rtxa4500": "RTXA4500",
    "rtxa4000": "RTXA4000",
    "rtx6000": "RTX6000",
    "rtx6000ada": "RTX6000-Ada",
    "rtx5880ada": "RTX5880-Ada",
    "rtx4000ada": "RTX4000-Ada",
    "rtxpro6000ws": "RTXPRO6000WS",
    "v10032gb": "V100-32GB",
    "mi25": "MI25",
    "prov520": "V520",
    "gaudihl205": "Gaudi",
    "qualcommai100": "AI100",
    "ai100": "AI100",
    "virtexultrascalevu9p": "VU9P",
}
for _m in _ENTRIES:
    _ALIASES.setdefault(_clean(_m.name), _m.name)

_TPU = re.compile(r"^tpu-(v2|v3|v4|v5litepod|v5p|v6e)-(\d+)$")
_TPU_MODEL = {
    "v2": "TPU-v2",
    "v3": "TPU-v3",
    "v4": "TPU-v4",
    "v5litepod": "TPU-v5e",
    "v5p": "TPU-v5p",
    "v6e": "TPU-v6e",
}
#: Generations whose slice names count TensorCores (2 per chip); the others count chips.
_TPU_CORES_IN_NAME = {"v2", "v3", "v4", "v5p"}

_AZURE_NC_H100 = re.compile(r"^Standard_NC\w*H100_v5$")
_AZURE_ND_H100 = re.compile(r"^Standard_ND\w*H100_v5$")


def _h100_form_factor(
    provider: str | None, instance_type: str | None, memory_mib: int | None
) -> str | None:
    """Which H100 a provider's plain `H100` is, when the provider's own listing says."""
    it = instance_type or ""
    if provider == "aws" and it.startswith("p5."):
        return "H100-SXM"  # AWS P5: 8x H100 SXM5 80 GB (aws.amazon.com/ec2/instance-types/p5)
    if provider == "lambda_cloud":
        if "_pcie" in it:
            return "H100-PCIe"  # gpu_1x_h100_pcie
        if "_sxm" in it:
            return "H100-SXM"  # gpu_8x_h100_sxm5
    if provider == "azure":
        if _AZURE_NC_H100.match(it):
            return "H100-NVL"  # NC H100 v5 series: H100 NVL 94 GB (learn.microsoft.com)
        if _AZURE_ND_H100.match(it):
            return "H100-SXM"  # ND H100 v5 series: 8x H100 SXM 80 GB
    if provider == "gcp":
        return "H100-SXM"  # A3 high/edge/mega machine types carry H100 SXM5 80 GB
    if provider == "runpod":
        return "H100-PCIe"  # RunPod lists "H100 PCIe" as H100 and "H100 SXM" as H100-SXM
    if provider == "scaleway":
        return "H100-PCIe"  # GpuInfo: "NVIDIA H100 PCIe" (H100-1-80G, H100-2-80G)
    if memory_mib is not None and memory_mib >= 90 * 1024:
        return "H100-NVL"  # only the NVL has 94 GB; SXM and PCIe have 80
    return None


def normalise(
    name: str,
    *,
    provider: str | None = None,
    instance_type: str | None = None,
    memory_mib: int | None = None,
) -> GpuModel | None:
    """The canonical model a provider's accelerator name denotes, or None.

    Args:
        name: the provider's accelerator name (`H100`, `RTX 3070`, `tpu-v4-128`...).
        provider: broker provider id; enables the per-provider refinements.
        instance_type: the provider's instance type, for form factor rules.
        memory_mib: memory per accelerator as the provider reports it, which picks the
            family member where the name is shared (Vast's `A100` for 40 and 80 GB).
    """
    m = _TPU.match(name.strip().lower())
    if m:
        return CATALOGUE[_TPU_MODEL[m.group(1)]]
    canonical = _ALIASES.get(_clean(name))
    if canonical is None:
        return None
    if canonical == "H100":
        canonical = _h100_form_factor(provider, instance_type, memory_mib) or "H100"
    elif memory_mib is not None and canonical == "A100":
        canonical = "A100-80GB" if memory_mib >= 60 * 1024 else "A100"
    elif memory_mib is not None and canonical == "V100":
        canonical = "V100-32GB" if memory_mib >= 30 * 1024 else "V100"
    return CATALOGUE[canonical]


def get(name: str) -> GpuModel:
    """The catalogue entry named `name` (case-insensitive).

    Raises:
        UnknownGpu: no such entry; the message names near matches.
    """
    model = _BY_LOWER.get(name.strip().lower())
    if model is None:
        raise _unknown(name)
    return model


def resolve_query(query: str) -> frozenset[str]:
    """Canonical names a user's GPU filter covers: a family (`H100` -> every H100 entry),
    a model (`H100-SXM`), or a provider spelling (`RTX A6000`).

    Raises:
        UnknownGpu: nothing matches; the message suggests near matches.
    """
    q = query.strip().lower()
    if q in _FAMILIES:
        return _FAMILIES[q]
    if q in _BY_LOWER:
        return frozenset({_BY_LOWER[q].name})
    model = normalise(query)
    if model is not None:
        return frozenset({model.name})
    raise _unknown(query)


def tpu_chips(slice_name: str) -> int | None:
    """Chips in a GCP TPU slice: `tpu-v4-8` -> 4 (v2/v3/v4/v5p names count TensorCores,
    two per chip), `tpu-v6e-8` -> 8 (v5e/v6e names count chips). None if not a slice name."""
    m = _TPU.match(slice_name.strip().lower())
    if not m:
        return None
    n = int(m.group(2))
    return max(1, n // 2) if m.group(1) in _TPU_CORES_IN_NAME else n


def _unknown(value: str) -> UnknownGpu:
    names = sorted({m.name for m in _ENTRIES} | {m.family for m in _ENTRIES})
    near = difflib.get_close_matches(value.strip(), names, n=4, cutoff=0.5)
    hint = f" Did you mean: {', '.join(near)}?" if near else ""
    families = ", ".join(sorted({m.family for m in _ENTRIES if m.kind == G}))
    return UnknownGpu(f"Unknown GPU {value!r}.{hint} Known GPU families: {families}")
