"""The accelerator catalogue and the normalisation of provider names onto it.

Owns the one list of accelerators the broker knows (`CATALOGUE`: GPUs, Google TPU
generations and other accelerators such as Inferentia, Trainium, Gaudi, Qualcomm AI 100 and
the f1 FPGA, each typed by `AcceleratorKind`), the rules that turn what a provider calls a
card into a catalogue entry, and the reading of a user's GPU filter (`resolve_query`,
`parse_gpu_filter`). It leaves reading provider payloads to the adapters in `providers/`,
prices and counts to `broker.offers`, and regions to `broker.regions`.

Normalisation is table-driven, never fuzzy: a name is cleaned (lower case, separators and
leading vendor words dropped) and looked up in `_ALIASES`; a few documented per-provider
rules then refine a name the provider leaves ambiguous, by instance type (H100 form factor,
Inferentia generation) or by the memory the provider reports (Vast's `A100` for 40 and
80 GB cards, the RTX 4060 Ti's 8 and 16 GB). A name no rule covers gives `None`; the caller
skips and counts the row.

Form factor is tracked where it changes what a user gets (H100: SXM, PCIe, NVL). A name that
does not say which (`H100` from Vast's reduced catalog names, Paperspace, FluidStack) gives
the entry `H100` with `form_factor=None` rather than a guess. Vast's own listing name is
not reduced: its API's `gpu_name` (`H100 NVL`) and the market data set's InstanceType
(`1x-H100_NVL-32-65536`) carry it, and normalising that name gives the specific entry.

Ti and SUPER cards are their own models and their own families (`RTX4070TiS`, `RTX4060Ti`,
`RTX3060Ti`, as `RTX3080Ti` and `RTX4080S` already were): another chip configuration and
often other memory, so a filter for `RTX4060` does not quietly include a 4060 Ti. Memory
variants of one card share a family (`A100` / `A100-80GB`, `RTX4060Ti` / `RTX4060Ti-16GB`).

Errors (all `ValueError`s, so callers that only want "bad input" catch that):

    GpuFilterError        a user's GPU filter cannot be read
    ├── UnknownGpu        no catalogue entry or family matches the name; names near matches
    └── BadGpuCount       the `:COUNT` of `MODEL:COUNT` is not a whole number >= 1
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
    OTHER = "other"  # Inferentia, Trainium, Gaudi, Qualcomm AI 100, FPGA (VU9P)


@dataclass(frozen=True, slots=True)
class GpuModel:
    """One catalogue entry.

    `memory_gb` is per accelerator (per chip for TPUs), in GB as the vendor's spec states it,
    `None` where no figure is published for the unit a provider sells. `form_factor` is
    "SXM", "PCIe" or "NVL" where the catalogue distinguishes variants (H100, H200) or where
    the vendor sells the model in one form only and says so (B300: SXM); else `None`.
    """

    name: str
    family: str
    vendor: str
    kind: AcceleratorKind
    memory_gb: int | None
    form_factor: str | None = None


class GpuFilterError(ValueError):
    """A GPU name or filter the catalogue cannot read; the message says why."""


class UnknownGpu(GpuFilterError):
    """A GPU model or family the catalogue does not know; the message names near matches."""


class BadGpuCount(GpuFilterError):
    """The count of a `MODEL:COUNT` filter is not a whole number of at least 1."""


_G, _T, _X = AcceleratorKind.GPU, AcceleratorKind.TPU, AcceleratorKind.OTHER

_ENTRIES: tuple[GpuModel, ...] = (
    # NVIDIA data centre
    # Blackwell Ultra: 288 GB HBM3e per GPU, the B300 an SXM module ("NVIDIA-B300-SXM6-AC",
    # docs.nvidia.com/nim/bionemo/boltz2 release notes 1.7.0). AWS p6-b300 reports 275040 MiB
    # per GPU (268.6 GiB = 288 GB). The GB300 is the same GPU paired with a Grace CPU on a
    # superchip board (GB300 NVL72: 72 Blackwell Ultra GPUs); a superchip is not a card form
    # factor, so form_factor stays None for GB200 and GB300.
    GpuModel("GB300", "GB300", "NVIDIA", _G, 288),
    GpuModel("B300", "B300", "NVIDIA", _G, 288, "SXM"),
    # GB200: 186 GB HBM3e per GPU (GB200 NVL72: 13.4 TB for 72 GPUs; dstackai/gpuhunt
    # src/gpuhunt/_internal/constraints.py KNOWN_NVIDIA_GPUS "GB200" memory=186).
    GpuModel("GB200", "GB200", "NVIDIA", _G, 186),
    GpuModel("B200", "B200", "NVIDIA", _G, 180),
    GpuModel("H200", "H200", "NVIDIA", _G, 141),
    GpuModel("H200-NVL", "H200", "NVIDIA", _G, 141, "NVL"),
    GpuModel("GH200", "GH200", "NVIDIA", _G, 96),  # Lambda's gpu_1x_gh200 reports 98304 MiB
    # The provider did not say which H100; 80 GB is the least any H100 variant has.
    GpuModel("H100", "H100", "NVIDIA", _G, 80),
    GpuModel("H100-SXM", "H100", "NVIDIA", _G, 80, "SXM"),
    GpuModel("H100-PCIe", "H100", "NVIDIA", _G, 80, "PCIe"),
    GpuModel("H100-NVL", "H100", "NVIDIA", _G, 94, "NVL"),
    GpuModel("A100", "A100", "NVIDIA", _G, 40),
    GpuModel("A100-80GB", "A100", "NVIDIA", _G, 80),
    GpuModel("L40S", "L40S", "NVIDIA", _G, 48),
    GpuModel("L40", "L40", "NVIDIA", _G, 48),
    GpuModel("L4", "L4", "NVIDIA", _G, 24),
    GpuModel("A40", "A40", "NVIDIA", _G, 48),
    GpuModel("A800", "A800", "NVIDIA", _G, 80),  # export variant of the A100 80 GB
    GpuModel("A30", "A30", "NVIDIA", _G, 24),
    GpuModel("A16", "A16", "NVIDIA", _G, 16),  # per GPU; an A16 board carries four
    GpuModel("A10", "A10", "NVIDIA", _G, 24),
    GpuModel("A10G", "A10G", "NVIDIA", _G, 24),
    GpuModel("T4", "T4", "NVIDIA", _G, 16),
    GpuModel("T4G", "T4G", "NVIDIA", _G, 16),  # AWS g5g: T4G beside Graviton (Arm) hosts
    GpuModel("V100", "V100", "NVIDIA", _G, 16),
    GpuModel("V100-32GB", "V100", "NVIDIA", _G, 32),
    GpuModel("P100", "P100", "NVIDIA", _G, 16),
    GpuModel("P40", "P40", "NVIDIA", _G, 24),
    GpuModel("P4", "P4", "NVIDIA", _G, 8),
    GpuModel("K80", "K80", "NVIDIA", _G, 12),  # per GPU; a K80 board carries two
    GpuModel("K520", "K520", "NVIDIA", _G, 4),  # per GPU; AWS g2 reports 4096 MiB
    GpuModel("M60", "M60", "NVIDIA", _G, 8),  # per GPU; AWS g3 reports 8192 MiB
    # NVIDIA workstation. RTX PRO 6000 Blackwell, Workstation and Server Edition: 96 GB GDDR7
    # each (gpuhunt KNOWN_NVIDIA_GPUS "RTXPRO6000" memory=96; Vast's RTX_PRO_6000_WS reports
    # 97887 MiB). One family: same chip and memory, cooled for a desk or a server.
    GpuModel("RTXPRO6000WS", "RTXPRO6000", "NVIDIA", _G, 96),
    GpuModel("RTXPRO6000S", "RTXPRO6000", "NVIDIA", _G, 96),
    GpuModel("RTX6000-Ada", "RTX6000-Ada", "NVIDIA", _G, 48),
    GpuModel("RTX5880-Ada", "RTX5880-Ada", "NVIDIA", _G, 48),
    GpuModel("RTX5000-Ada", "RTX5000-Ada", "NVIDIA", _G, 32),
    GpuModel("RTX4000-Ada", "RTX4000-Ada", "NVIDIA", _G, 20),
    GpuModel("RTX2000-Ada", "RTX2000-Ada", "NVIDIA", _G, 16),
    GpuModel("RTXA6000", "RTXA6000", "NVIDIA", _G, 48),
    GpuModel("RTXA5000", "RTXA5000", "NVIDIA", _G, 24),
    GpuModel("RTXA4500", "RTXA4500", "NVIDIA", _G, 20),
    GpuModel("RTXA4000", "RTXA4000", "NVIDIA", _G, 16),
    GpuModel("RTX6000", "RTX6000", "NVIDIA", _G, 24),  # Quadro RTX 6000 (Turing), not Ada
    # NVIDIA consumer
    GpuModel("RTX5090", "RTX5090", "NVIDIA", _G, 32),
    GpuModel("RTX5070", "RTX5070", "NVIDIA", _G, 12),
    GpuModel("RTX5080", "RTX5080", "NVIDIA", _G, 16),
    GpuModel("RTX5070Ti", "RTX5070Ti", "NVIDIA", _G, 16),
    GpuModel("RTX4090", "RTX4090", "NVIDIA", _G, 24),
    GpuModel("RTX4090D", "RTX4090D", "NVIDIA", _G, 24),
    GpuModel("RTX4080", "RTX4080", "NVIDIA", _G, 16),
    GpuModel("RTX4080S", "RTX4080S", "NVIDIA", _G, 16),
    # Ti and SUPER cards seen in Vast listings (RTX_4070S_Ti, RTX_4060_Ti, RTX_3060_Ti in the
    # market data set's vast.csv). Memory from gpuhunt KNOWN_NVIDIA_GPUS: RTX4070TiSUPER 16,
    # RTX4060Ti 8 and 16 (two boards, chosen by reported memory), RTX3060Ti 8; vast.csv
    # agrees (4x RTX_4070S_Ti 65504 MiB, 4x RTX_4060_Ti 65520 MiB, 1x RTX_3060_Ti 8192 MiB).
    GpuModel("RTX4070TiS", "RTX4070TiS", "NVIDIA", _G, 16),  # RTX 4070 Ti SUPER
    GpuModel("RTX4070Ti", "RTX4070Ti", "NVIDIA", _G, 12),
    GpuModel("RTX4070", "RTX4070", "NVIDIA", _G, 12),
    GpuModel("RTX4060Ti", "RTX4060Ti", "NVIDIA", _G, 8),
    GpuModel("RTX4060Ti-16GB", "RTX4060Ti", "NVIDIA", _G, 16),
    GpuModel("RTX4060", "RTX4060", "NVIDIA", _G, 8),
    GpuModel("RTX3090", "RTX3090", "NVIDIA", _G, 24),
    GpuModel("RTX3090Ti", "RTX3090Ti", "NVIDIA", _G, 24),
    GpuModel("RTX3080Ti", "RTX3080Ti", "NVIDIA", _G, 12),
    GpuModel("RTX3080", "RTX3080", "NVIDIA", _G, 10),
    GpuModel("RTX3070", "RTX3070", "NVIDIA", _G, 8),
    GpuModel("RTX3060Ti", "RTX3060Ti", "NVIDIA", _G, 8),
    GpuModel("RTX3060", "RTX3060", "NVIDIA", _G, 12),
    # AMD. VRAM of MI355X (288), MI325X (256) and Radeon PRO V710 (28) from AMD's ROCm GPU
    # specifications table (rocm.docs.amd.com reference/gpu-specs, ROCm/rocm-docs
    # docs/reference/gpu-specs.rst); Radeon PRO V620 (32) from the same table in its earlier
    # form (ROCm docs/reference/gpu-arch-specs.rst). The V710 backs Azure's NVads V710 v5,
    # the V620 Azure's NGads V620.
    GpuModel("MI355X", "MI355X", "AMD", _G, 288),
    GpuModel("MI325X", "MI325X", "AMD", _G, 256),
    GpuModel("MI300X", "MI300X", "AMD", _G, 192),
    GpuModel("MI250X", "MI250X", "AMD", _G, 128),  # per OAM module (two dies)
    GpuModel("MI210", "MI210", "AMD", _G, 64),
    GpuModel("MI100", "MI100", "AMD", _G, 32),
    GpuModel("MI25", "MI25", "AMD", _G, 16),
    GpuModel("V710", "V710", "AMD", _G, 28),  # Radeon PRO V710
    GpuModel("V620", "V620", "AMD", _G, 32),  # Radeon PRO V620
    GpuModel("V520", "V520", "AMD", _G, 8),  # Radeon Pro V520 (AWS g4ad)
    # Google TPU generations, HBM per chip (cloud.google.com/tpu/docs/v2 ... /v6e)
    GpuModel("TPU-v2", "TPU-v2", "Google", _T, 16),
    GpuModel("TPU-v3", "TPU-v3", "Google", _T, 32),
    GpuModel("TPU-v4", "TPU-v4", "Google", _T, 32),
    GpuModel("TPU-v5e", "TPU-v5e", "Google", _T, 16),
    GpuModel("TPU-v5p", "TPU-v5p", "Google", _T, 95),
    GpuModel("TPU-v6e", "TPU-v6e", "Google", _T, 32),
    # Other accelerators. Device memory per chip from the AWS Neuron architecture guides
    # (awsdocs-neuron.readthedocs-hosted.com: inferentia, inferentia2, trainium).
    GpuModel("Inferentia", "Inferentia", "AWS", _X, 8),  # Inf1
    GpuModel("Inferentia2", "Inferentia", "AWS", _X, 32),  # Inf2
    GpuModel("Trainium", "Trainium", "AWS", _X, 32),  # Trn1, Trn1n
    GpuModel("Trainium2", "Trainium", "AWS", _X, 96),  # Trn2 (96 GiB per chip, AWS docs)
    GpuModel("Gaudi", "Gaudi", "Intel", _X, 32),  # Habana Gaudi HL-205 (AWS dl1)
    GpuModel("AI100", "AI100", "Qualcomm", _X, None),  # Cloud AI 100 (AWS dl2q)
    GpuModel("VU9P", "VU9P", "Xilinx", _X, None),  # Virtex UltraScale+ FPGA (AWS f1)
    GpuModel("VU47P", "VU47P", "Xilinx", _X, None),  # Virtex UltraScale+ FPGA (AWS f2)
)

CATALOGUE: Mapping[str, GpuModel] = MappingProxyType({m.name: m for m in _ENTRIES})

_BY_LOWER: dict[str, GpuModel] = {m.name.lower(): m for m in _ENTRIES}
_FAMILIES: dict[str, frozenset[str]] = {}
for _m in _ENTRIES:
    _FAMILIES[_m.family.lower()] = _FAMILIES.get(_m.family.lower(), frozenset()) | {_m.name}

#: Leading words dropped before the alias lookup, so that "NVIDIA GeForce RTX 3070",
#: "RTX 3070" and "RTX3070" agree.
_VENDOR_WORDS = frozenset(
    {"nvidia", "tesla", "geforce", "quadro", "amd", "radeon", "instinct", "aws", "intel"}
    | {"habana", "qualcomm", "xilinx", "google"}
)


def _clean(name: str) -> str:
    """Lower-case, separators and leading vendor words dropped: "NVIDIA RTX A6000" -> "rtxa6000"."""
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    while words and words[0] in _VENDOR_WORDS:
        words.pop(0)
    return "".join(words)


#: Cleaned provider spelling -> canonical name. Every canonical name's own cleaned form is
#: added below. Spellings are those of the market data set ("Accelerators seen" in
#: shared/data/README.md), the GpuInfo names in it, and RunPod's GPU ids as SkyPilot maps
#: them (skypilot-org/skypilot sky/provision/runpod/utils.py, GPU_NAME_MAP).
_ALIASES: dict[str, str] = {
    # H100: a name that states the form factor wins over every provider rule.
    "h100sxm": "H100-SXM",  # RunPod "H100-SXM"; Vast's unreduced "H100_SXM"
    "h100sxm5": "H100-SXM",
    "h10080gbhbm3": "H100-SXM",  # RunPod's id (and nvidia-smi's name) for the SXM card
    "h100mega": "H100-SXM",  # GCP a3-megagpu; see _h100_by_provider
    "h100mega80gb": "H100-SXM",  # GCP accelerator type nvidia-h100-mega-80gb
    "h100pcie": "H100-PCIe",  # Scaleway GpuInfo "NVIDIA H100 PCIe"; RunPod id
    "h100nvl": "H100-NVL",
    "h10080gb": "H100",  # GCP accelerator type nvidia-h100-80gb; refined by provider
    "h200sxm": "H200",
    "h200nvl": "H200-NVL",  # Vast "H200_NVL"
    "h200141gb": "H200",  # GCP accelerator type nvidia-h200-141gb (A3 Ultra)
    # A100 and V100: memory-stating names are explicit; the others are refined by memory.
    "a10040gb": "A100",
    "a100sxm4": "A100",  # Vast's unreduced names
    "a100sxm": "A100",
    "a800pcie": "A800",
    "gh200sxm": "GH200",
    "qrtx6000": "RTX6000",  # Vast "Q_RTX_6000": the Quadro RTX 6000
    "rtxpro6000": "RTXPRO6000WS",  # Vast's plain "RTX_PRO_6000" is the workstation card
    "rtxpro6000blackwellserveredition": "RTXPRO6000S",  # Azure NC RTX PRO 6000 BSE v6
    "a100pcie": "A100",
    "a10080gb": "A100-80GB",
    "a10080gbsxm": "A100-80GB",  # RunPod; form factor is not tracked for A100
    "a10080gbpcie": "A100-80GB",
    "a100sxm480gb": "A100-80GB",
    "v10016gb": "V100",
    "v10032gb": "V100-32GB",
    # Names that differ between clouds
    "a6000": "RTXA6000",  # Lambda's "A6000" is the RTX A6000 (Ampere, 48 GB)
    "rtx6000": "RTX6000",  # Lambda's "RTX6000" is the Quadro RTX 6000 (Turing, 24 GB)
    "rtx6000adageneration": "RTX6000-Ada",
    "rtx5880adageneration": "RTX5880-Ada",
    "rtx4000adageneration": "RTX4000-Ada",
    "rtx4000sffada": "RTX4000-Ada",  # RunPod "RTX 4000 SFF Ada" (same chip and memory)
    "rtx4000sffadageneration": "RTX4000-Ada",
    "rtx5000adageneration": "RTX5000-Ada",
    "rtx2000adageneration": "RTX2000-Ada",
    "rtx4080super": "RTX4080S",
    "rtx4070sti": "RTX4070TiS",  # Vast "RTX 4070S Ti" / "RTX_4070S_Ti"
    "rtx4070tisuper": "RTX4070TiS",
    "rtx4060ti8gb": "RTX4060Ti",  # the 8 GB board named like the 16 GB one
    "v100fhhl": "V100",  # RunPod ids (runpod/docs references/gpu-types.mdx)
    "v100sxm216gb": "V100",
    "v100sxm232gb": "V100-32GB",
    "rtxpro6000blackwellworkstationedition": "RTXPRO6000WS",
    "p100pcie16gb": "P100",  # Scaleway GpuInfo "Tesla P100-PCIE-16GB"
    "prov520": "V520",  # AWS "Radeon Pro V520"
    "prov710": "V710",  # Azure "AMD Radeon PRO V710"
    "prov620": "V620",  # Azure "AMD Radeon PRO V620"
    "mi300xoam": "MI300X",  # RunPod "AMD Instinct MI300X OAM"
    "gaudihl205": "Gaudi",  # AWS "Gaudi HL-205"
    "cloudai100": "AI100",
    "virtexultrascalevu9p": "VU9P",  # AWS "Virtex UltraScale (VU9P)"
    "virtexultrascalevu47p": "VU47P",  # AWS "Virtex UltraScale+ (VU47P)"
    "rtxproserver6000": "RTXPRO6000S",  # AWS g7e "RTX PRO Server 6000"
    "tpuv5litepod": "TPU-v5e",
}
for _m in _ENTRIES:
    _ALIASES.setdefault(_clean(_m.name), _m.name)

#: Cleaned names that do not say how much memory the card has, and the family members the
#: reported memory chooses between. Vast writes `A100` for 40 and 80 GB cards alike
#: (shared/data/README.md, "Vast names are reduced").
_MEMORY_AMBIGUOUS: dict[str, tuple[str, ...]] = {
    "a100": ("A100", "A100-80GB"),
    "a100sxm4": ("A100", "A100-80GB"),
    "a100sxm": ("A100", "A100-80GB"),
    "a100pcie": ("A100", "A100-80GB"),
    "v100": ("V100", "V100-32GB"),
    "rtx4060ti": ("RTX4060Ti", "RTX4060Ti-16GB"),  # Vast "RTX 4060 Ti": 8 or 16 GB boards
}
#: Reported memory within this fraction of a member's catalogue memory picks that member;
#: the slack covers MiB-vs-GB rounding and usable-memory figures (SCP: 81251 MiB for 80 GB).
_MEMORY_TOLERANCE = 0.15

# Slice names: "tpu-v4-128" (the data set and SkyPilot) or GCP's accelerator type "v4-128".
_TPU_SLICE = re.compile(r"^(?:tpu-)?(v2|v3|v4|v5litepod|v5p|v6e)-(\d+)$")
_TPU_MODEL = {
    "v2": "TPU-v2",
    "v3": "TPU-v3",
    "v4": "TPU-v4",
    "v5litepod": "TPU-v5e",
    "v5p": "TPU-v5p",
    "v6e": "TPU-v6e",
}
# v2, v3, v4 and v5p chips have two TensorCores and their slice names count cores
# ("v4-8" is 4 chips, cloud.google.com/tpu/docs/v4 and /v5p topology tables); v5e and v6e
# chips have one TensorCore and their names count chips (/tpu/docs/v5e, /tpu/docs/v6e).
_TPU_CORES_PER_CHIP = {"v2": 2, "v3": 2, "v4": 2, "v5p": 2, "v5litepod": 1, "v6e": 1}

_AZURE_NC_H100 = re.compile(r"^Standard_NCC?\d+[a-z]*_H100_v5$", re.IGNORECASE)
_AZURE_ND_H100 = re.compile(r"^Standard_ND\d+[a-z]*_H100_v5$", re.IGNORECASE)
_SCALEWAY_H100_PCIE = re.compile(r"^H100-\d+-80G$")


def _h100_by_provider(provider: str | None, instance_type: str) -> str | None:
    """Which H100 a provider's plain `H100` is, where the provider's own listing says."""
    if provider == "aws" and instance_type.startswith("p5."):
        # P5: H100 SXM 80 GB (aws.amazon.com/ec2/instance-types/p5). p5e/p5en carry H200.
        return "H100-SXM"
    if provider == "lambda_cloud":
        # Lambda names the form factor in the type: gpu_1x_h100_pcie, gpu_8x_h100_sxm5
        # (lambda.ai/instances lists "H100 PCIe" and "H100 SXM" separately).
        if "_pcie" in instance_type.lower():
            return "H100-PCIe"
        if "_sxm" in instance_type.lower():
            return "H100-SXM"
    if provider == "azure":
        # NCads/NCCads H100 v5: "NVIDIA H100 NVL GPU ... 94GB memory each"; ND H100 v5:
        # eight H100 on an NVLink 4.0 HGX board, i.e. SXM (MicrosoftDocs/azure-docs
        # articles/virtual-machines/sizes/gpu-accelerated/includes/ncadsh100v5-,
        # nccadsh100v5-, ndh100v5-series-summary.md).
        if _AZURE_NC_H100.match(instance_type):
            return "H100-NVL"
        if _AZURE_ND_H100.match(instance_type):
            return "H100-SXM"
    if provider == "gcp":
        # GCP sells H100 only in A3 machine types (a3-highgpu/edgegpu as `H100`, a3-megagpu
        # as `H100-MEGA`), all H100 SXM 80 GB (cloud.google.com/compute/docs/gpus). GCP
        # accelerator rows carry no instance type, so the rule cannot check it.
        return "H100-SXM"
    if provider == "runpod":
        # RunPod lists "H100 PCIe", "H100 SXM" and "H100 NVL" apart; SkyPilot's catalog
        # names them H100, H100-SXM, H100-NVL (GPU_NAME_MAP: 'H100': 'NVIDIA H100 PCIe').
        return "H100-PCIe"
    if provider == "scaleway":
        # H100-1-80G and H100-2-80G are PCIe (GpuInfo: "NVIDIA H100 PCIe"); the later
        # H100-SXM-2/4/8-80G are SXM (scaleway/docs-content, gpu/reference-content/
        # migration-h100.mdx).
        if instance_type.startswith("H100-SXM-"):
            return "H100-SXM"
        if _SCALEWAY_H100_PCIE.match(instance_type):
            return "H100-PCIe"
    # Vast reduces H100_SXM and H100_NVL to H100; Paperspace and FluidStack do not say.
    return None


def _by_memory(candidates: tuple[str, ...], memory_mib: int) -> str | None:
    """The family member whose memory the reported per-GPU figure matches, if exactly one."""
    gib = memory_mib / 1024
    hits = [
        name
        for name in candidates
        if (gb := CATALOGUE[name].memory_gb) is not None and abs(gib - gb) <= _MEMORY_TOLERANCE * gb
    ]
    return hits[0] if len(hits) == 1 else None


def normalise(
    name: str,
    *,
    provider: str | None = None,
    instance_type: str | None = None,
    memory_mib: int | None = None,
) -> GpuModel | None:
    """The catalogue entry a provider's accelerator name denotes, or None.

    Args:
        name: the provider's accelerator name (`H100`, `RTX 3070`, `tpu-v4-128`, ...).
        provider: the broker's provider id (`aws`, `lambda_cloud`, ...); enables that
            provider's refinement rules. None applies none.
        instance_type: the provider's instance type, read by the form-factor rules
            (`p5.48xlarge`, `gpu_1x_h100_pcie`, `Standard_NC40ads_H100_v5`).
        memory_mib: memory per GPU as the provider reports it (not the instance total),
            used only where the name is shared by family members of different memory
            (`A100` for 40 and 80 GB); a figure matching no member leaves the plain entry.

    Returns:
        The entry, or None when no table entry or rule covers the name: never a guess.
        A TPU slice name gives its generation's entry; `tpu_chips` gives its size.
    """
    text = name.strip()
    slice_match = _TPU_SLICE.match(text.lower())
    if slice_match:
        return CATALOGUE[_TPU_MODEL[slice_match.group(1)]]
    cleaned = _clean(text)
    canonical = _ALIASES.get(cleaned)
    if canonical is None:
        return None
    it = instance_type or ""
    if canonical == "H100":
        canonical = _h100_by_provider(provider, it) or canonical
    elif canonical == "Inferentia" and provider == "aws" and it.startswith("inf2."):
        # AWS names both generations "Inferentia"; Inf2 carries Inferentia2
        # (awsdocs-neuron: "At the heart of each Inf2 instance are up to twelve Inferentia2").
        canonical = "Inferentia2"
    elif canonical == "Trainium" and provider == "aws" and it.startswith("trn2"):
        canonical = "Trainium2"  # AWS may name both generations "Trainium"
    elif canonical == "RTXPRO6000WS" and provider == "gcp":
        canonical = "RTXPRO6000S"  # GCP's G4 machines carry the Server Edition
    elif cleaned in _MEMORY_AMBIGUOUS and memory_mib is not None and memory_mib > 0:
        canonical = _by_memory(_MEMORY_AMBIGUOUS[cleaned], memory_mib) or canonical
    return CATALOGUE[canonical]


def get(name: str) -> GpuModel:
    """The catalogue entry whose canonical name is `name`, compared case-insensitively.

    Raises:
        UnknownGpu: no entry has that name; the message names near matches.
    """
    model = _BY_LOWER.get(name.strip().lower())
    if model is None:
        raise _unknown(name)
    return model


def family_of(model: str, stored: str | None = None) -> str:
    """The family of a canonical model (`stored` wins when the record has one); a model the
    catalogue does not know is its own family."""
    if stored:
        return stored
    try:
        return get(model).family
    except UnknownGpu:
        return model


_FAMILIES_BY_CLEANED: dict[str, frozenset[str]] = {
    _clean(family): members for family, members in _FAMILIES.items()
}

#: "<name> <N>GB", "<name>-<N>G", "<name> <N> GB": a name, then the memory it asks for. The
#: separator is required, so names that end in a G (`T4G`, `A10G`) are not read as memory.
_MEMORY_QUERY = re.compile(r"^(?P<name>.*?\S)[\s_-]+(?P<gb>\d+)\s*gb?$", re.IGNORECASE)


def _resolve_name(query: str) -> frozenset[str] | None:
    """The models a name covers (see `resolve_query`), or None when it names nothing."""
    q = query.strip().lower()
    if q in _FAMILIES:
        return _FAMILIES[q]
    if q in _BY_LOWER:
        return frozenset({_BY_LOWER[q].name})
    cleaned = _clean(q)
    if not cleaned:
        return None
    if cleaned in _FAMILIES_BY_CLEANED:
        return _FAMILIES_BY_CLEANED[cleaned]
    if cleaned in _MEMORY_AMBIGUOUS:
        # A name that does not say the memory covers every memory it is sold with
        # (`A100 SXM4` -> A100 and A100-80GB), not only the plain entry normalise gives.
        return frozenset(_MEMORY_AMBIGUOUS[cleaned])
    model = normalise(query)
    return frozenset({model.name}) if model is not None else None


def _resolve_with_memory(query: str) -> frozenset[str] | None:
    """`<name> <N>GB`: the models of `<name>` whose catalogue memory is N GB.

    None when the query has no memory suffix or its name part names nothing.

    Raises:
        UnknownGpu: the name is known but none of its models has N GB, and the whole query
            is no provider spelling either (`H100 40GB`).
    """
    m = _MEMORY_QUERY.match(query.strip())
    if m is None:
        return None
    base = _resolve_name(m["name"])
    if base is None:
        return None
    gb = int(m["gb"])
    hits = frozenset(n for n in base if CATALOGUE[n].memory_gb == gb)
    if hits:
        return hits
    whole = _resolve_name(query)  # a provider id that embeds the memory: A100-SXM4-80GB
    if whole is not None:
        return whole
    known = ", ".join(f"{n} {CATALOGUE[n].memory_gb} GB" for n in sorted(base))
    raise UnknownGpu(f"Unknown GPU {query!r}: no {m['name'].strip()} has {gb} GB ({known}).")


def resolve_query(query: str) -> frozenset[str]:
    """The canonical names a user's GPU filter covers, matched case-insensitively.

    A family name covers every member (`H100` -> H100, H100-SXM, H100-PCIe, H100-NVL); a
    model name covers itself (`H100-SXM`); a provider spelling covers what it normalises to
    (`RTX A6000` -> RTXA6000, `H100 SXM5` -> H100-SXM), or its whole family when it names
    one (`NVIDIA A100`). A name followed by a memory size (`H100 80GB`, `A100-80G`,
    `A100 40GB`) covers the models of that name whose catalogue memory is that many GB:
    `H100 80GB` -> H100, H100-SXM, H100-PCIe, not the 94 GB H100-NVL.

    Raises:
        UnknownGpu: nothing matches; the message suggests near matches, or says which
            memory sizes the named model has.
    """
    q = query.strip().lower()
    if q in _FAMILIES:
        return _FAMILIES[q]
    if q in _BY_LOWER:
        return frozenset({_BY_LOWER[q].name})
    models = _resolve_with_memory(query)
    if models is None:
        models = _resolve_name(query)
    if models is None:
        raise _unknown(query)
    return models


_COUNT = re.compile(r"[0-9]+")


def parse_gpu_filter(text: str) -> tuple[frozenset[str], int | None]:
    """One user GPU filter, `MODEL` or `MODEL:COUNT`: the models it covers and the least
    number of them an instance must carry (None: any number).

    `H100:8` -> (resolve_query("H100"), 8); `H100 80GB:4` -> the 80 GB H100s, 4. One filter
    per string: a caller that accepts a list splits it first.

    Raises:
        UnknownGpu: the model part names nothing (see `resolve_query`).
        BadGpuCount: the count is not a whole number of at least 1 (`H100:0`, `H100:x`,
            `H100:8:2`, `H100:`).
    """
    name, sep, count_text = text.partition(":")
    models = resolve_query(name)
    if not sep:
        return models, None
    count_text = count_text.strip()
    if not _COUNT.fullmatch(count_text) or int(count_text) < 1:
        raise BadGpuCount(
            f"Bad GPU count {count_text!r} in {text.strip()!r}: write MODEL:COUNT with a "
            "whole number of GPUs of at least 1, e.g. H100:8."
        )
    return models, int(count_text)


def tpu_chips(slice_name: str) -> int | None:
    """Chips in a GCP TPU slice.

    v2, v3, v4 and v5p names count TensorCores, two per chip (`tpu-v4-8` -> 4); v5e
    (`v5litepod`) and v6e names count chips (`tpu-v6e-8` -> 8). Returns None for a name that
    is not a slice name of a known generation, or whose core count is not whole chips.
    """
    m = _TPU_SLICE.match(slice_name.strip().lower())
    if not m:
        return None
    cores, per_chip = int(m.group(2)), _TPU_CORES_PER_CHIP[m.group(1)]
    if cores == 0 or cores % per_chip:
        return None
    return cores // per_chip


def _unknown(value: str) -> UnknownGpu:
    """An UnknownGpu naming `value`, up to four near matches and the known families."""
    by_lower = {n.lower(): n for m in _ENTRIES for n in (m.name, m.family)}
    near = difflib.get_close_matches(value.strip().lower(), list(by_lower), n=4, cutoff=0.6)
    hint = f" Did you mean: {', '.join(by_lower[n] for n in near)}?" if near else ""
    families = ", ".join(sorted({m.family for m in _ENTRIES}, key=str.lower))
    return UnknownGpu(f"Unknown GPU {value!r}.{hint} Known families: {families}")
