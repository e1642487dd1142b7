"""The accelerator catalogue: every name in the market data set maps, by table and rule."""

from __future__ import annotations

import ast
import csv
import re
from functools import lru_cache
from pathlib import Path

import pytest

from broker import gpus
from broker.gpus import (
    AcceleratorKind,
    BadGpuCount,
    GpuFilterError,
    UnknownGpu,
    normalise,
    parse_gpu_filter,
    resolve_query,
    tpu_chips,
)


@lru_cache(maxsize=4096)
def _gpu_info_memory_mib(gpu_info: str) -> int | None:
    """`Gpus[0].MemoryInfo.SizeInMiB` of a GpuInfo dict literal; None for plain names.

    For Vast (and AWS g6.12xlarge) this figure is the listing's total, not per GPU; the walk
    below only asserts that every name maps, which holds either way.
    """
    if not gpu_info.startswith("{"):
        return None
    try:
        size = ast.literal_eval(gpu_info)["Gpus"][0]["MemoryInfo"]["SizeInMiB"]
    except (KeyError, IndexError):
        return None
    return int(float(size))


def test_every_accelerator_name_in_the_data_set_normalises(snapshot_dirs: list[Path]) -> None:
    unmapped: set[tuple[str, str]] = set()
    bad_tpu_slices: set[str] = set()
    rows = 0
    for folder in snapshot_dirs:
        for path in sorted(folder.glob("*.csv")):
            provider = "lambda_cloud" if path.stem == "lambda" else path.stem
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    rows += 1
                    name = row["AcceleratorName"]
                    model = normalise(
                        name,
                        provider=provider,
                        instance_type=row["InstanceType"],
                        memory_mib=_gpu_info_memory_mib(row.get("GpuInfo") or ""),
                    )
                    if model is None:
                        unmapped.add((f"{folder.name}/{path.name}", name))
                    elif model.kind == AcceleratorKind.TPU and tpu_chips(name) is None:
                        bad_tpu_slices.add(name)
    assert rows > 30_000, "the data set looks truncated"
    assert sorted(unmapped) == []
    assert sorted(bad_tpu_slices) == []


@pytest.mark.parametrize(
    ("name", "provider", "instance_type", "memory_mib", "expected"),
    [
        # H100 form factor, from the provider's own listing (rows of the data set)
        ("H100", "aws", "p5.48xlarge", 81920, "H100-SXM"),
        ("H100", "azure", "Standard_NC40ads_H100_v5", None, "H100-NVL"),
        ("H100", "azure", "Standard_NC80adis_H100_v5", None, "H100-NVL"),
        ("H100", "azure", "Standard_NCC40ads_H100_v5", None, "H100-NVL"),
        ("H100", "azure", "Standard_ND96isr_H100_v5", None, "H100-SXM"),
        ("H100", "lambda_cloud", "gpu_1x_h100_pcie", 81920, "H100-PCIe"),
        ("H100", "lambda_cloud", "gpu_8x_h100_sxm5", 81920, "H100-SXM"),
        ("H100", "gcp", "", 81920, "H100-SXM"),
        ("H100-MEGA", "gcp", "", 81920, "H100-SXM"),
        ("H100", "runpod", "1x_H100_SECURE", None, "H100-PCIe"),
        ("H100-SXM", "runpod", "1x_H100-SXM_SECURE", None, "H100-SXM"),
        ("H100", "scaleway", "H100-1-80G", 81559, "H100-PCIe"),
        ("H100", "scaleway", "H100-SXM-2-80G", None, "H100-SXM"),
        ("NVIDIA H100 PCIe", "scaleway", "H100-2-80G", 81559, "H100-PCIe"),
        # Providers that do not say which H100 keep the form-factor-less entry
        ("H100", "vast", "1x-H100_SXM-32-65536", 81559, "H100"),
        ("H100", "vast", "1x-H100_NVL-32-65536", 95830, "H100"),
        ("H100", "paperspace", "H100x8", None, "H100"),
        ("H100", "fluidstack", "rec0123456789abcd", 81920, "H100"),
        ("H100", "aws", "g6.xlarge", None, "H100"),
        ("H100", None, None, None, "H100"),
        # Memory picks the family member where the name is shared (per-GPU figures)
        ("A100", "vast", "1x-A100_SXM4-32-65536", 81920, "A100-80GB"),
        ("A100", "vast", "1x-A100_SXM4-32-65536", 40960, "A100"),
        ("A100", "vast", "2x-A100_PCIE-32-65536", 81920 // 2, "A100"),
        ("A100", "aws", "p4d.24xlarge", 40960, "A100"),
        ("A100", "vast", "1x-A100_SXM4-32-65536", None, "A100"),
        ("A100", "vast", "2x-A100_SXM4-32-65536", 163840, "A100"),  # a total picks nothing
        ("A100-80GB", "scp", "", 81251, "A100-80GB"),
        ("A100-80GB-SXM", "runpod", "", None, "A100-80GB"),
        ("V100", "vast", "1x-Tesla_V100-32-65536", 16384, "V100"),
        ("V100", "aws", "p3dn.24xlarge", 32768, "V100-32GB"),
        ("V100-32GB", "scp", "g1v16v2", 32510, "V100-32GB"),
        # Names that differ between clouds
        ("A6000", "lambda_cloud", "gpu_1x_a6000", 49152, "RTXA6000"),
        ("RTXA6000", "runpod", "", None, "RTXA6000"),
        ("RTX6000", "lambda_cloud", "gpu_1x_rtx6000", 24576, "RTX6000"),
        ("RTX6000-Ada", "vast", "1x-RTX_6000Ada-32-65536", 49140, "RTX6000-Ada"),
        ("RTX5880-Ada", "vast", "1x-RTX_5880Ada-32-65536", 49140, "RTX5880-Ada"),
        ("RTXPRO6000WS", "vast", "1x-RTX_PRO_6000_WS-32-65536", 97887, "RTXPRO6000WS"),
        ("GH200", "lambda_cloud", "gpu_1x_gh200", 98304, "GH200"),
        ("Radeon MI25", "azure", "Standard_NV4as_v4", None, "MI25"),
        ("MI25", "azure", "Standard_NV4as_v4", None, "MI25"),
        ("Radeon Pro V520", "aws", "g4ad.xlarge", 8192, "V520"),
        ("T4g", "aws", "g5g.xlarge", 16384, "T4G"),
        ("K520", "aws", "g2.2xlarge", 4096, "K520"),
        ("Tesla P100-PCIE-16GB", "scaleway", "", 16384, "P100"),
        # Other accelerators and TPUs
        ("Inferentia", "aws", "inf1.xlarge", None, "Inferentia"),
        ("Inferentia", "aws", "inf2.48xlarge", None, "Inferentia2"),
        ("Trainium", "aws", "trn1.32xlarge", None, "Trainium"),
        ("Gaudi HL-205", "aws", "dl1.24xlarge", 32768, "Gaudi"),
        ("Qualcomm AI100", "aws", "dl2q.24xlarge", None, "AI100"),
        ("Virtex UltraScale (VU9P)", "aws", "f1.2xlarge", None, "VU9P"),
        ("tpu-v2-8", "gcp", "", None, "TPU-v2"),
        ("tpu-v4-128", "gcp", "", None, "TPU-v4"),
        ("tpu-v5litepod-8", "gcp", "", None, "TPU-v5e"),
        ("tpu-v5p-1024", "gcp", "", None, "TPU-v5p"),
        ("tpu-v6e-256", "gcp", "", None, "TPU-v6e"),
    ],
)
def test_provider_names_map_to_the_catalogue_entry(
    name: str,
    provider: str | None,
    instance_type: str | None,
    memory_mib: int | None,
    expected: str,
) -> None:
    model = normalise(name, provider=provider, instance_type=instance_type, memory_mib=memory_mib)
    assert model is not None
    assert model.name == expected


@pytest.mark.parametrize(
    "spelling",
    ["RTX 3070", "RTX3070", "rtx3070", "NVIDIA GeForce RTX 3070", "RTX_3070", "RTX-3070"],
)
def test_spellings_of_one_card_agree(spelling: str) -> None:
    assert normalise(spelling) == gpus.get("RTX3070")


def test_lambda_a6000_is_the_rtx_a6000() -> None:
    assert normalise("A6000", provider="lambda_cloud") == normalise("RTXA6000", provider="runpod")
    assert normalise("NVIDIA RTX A6000") == gpus.get("RTXA6000")


def test_quadro_rtx6000_is_not_the_ada_card() -> None:
    quadro = normalise("RTX6000", provider="lambda_cloud")
    ada = normalise("RTX6000-Ada", provider="runpod")
    assert quadro is not None and ada is not None
    assert quadro != ada and quadro.family != ada.family
    assert (quadro.memory_gb, ada.memory_gb) == (24, 48)
    assert normalise("Quadro RTX 6000") == quadro
    assert normalise("NVIDIA RTX 6000 Ada Generation") == ada


def test_h100_form_factors_and_memory() -> None:
    h100 = {m.name: m for m in gpus.CATALOGUE.values() if m.family == "H100"}
    assert {n: m.form_factor for n, m in h100.items()} == {
        "H100": None,
        "H100-SXM": "SXM",
        "H100-PCIe": "PCIe",
        "H100-NVL": "NVL",
    }
    assert h100["H100-NVL"].memory_gb == 94
    others = {m.name: m.form_factor for m in gpus.CATALOGUE.values() if m.family != "H100"}
    assert {n for n, f in others.items() if f is not None} == {"H200-NVL", "B300"}
    assert others["H200-NVL"] == "NVL" and others["H200"] is None
    assert others["B300"] == "SXM"  # NVIDIA sells the B300 as an SXM module only


@pytest.mark.parametrize(
    ("name", "kind", "vendor"),
    [
        ("Inferentia", AcceleratorKind.OTHER, "AWS"),
        ("Trainium", AcceleratorKind.OTHER, "AWS"),
        ("Gaudi HL-205", AcceleratorKind.OTHER, "Intel"),
        ("Qualcomm AI100", AcceleratorKind.OTHER, "Qualcomm"),
        ("Virtex UltraScale (VU9P)", AcceleratorKind.OTHER, "Xilinx"),
        ("tpu-v5p-1024", AcceleratorKind.TPU, "Google"),
        ("Radeon MI25", AcceleratorKind.GPU, "AMD"),
        ("MI300X", AcceleratorKind.GPU, "AMD"),
        ("H100", AcceleratorKind.GPU, "NVIDIA"),
    ],
)
def test_accelerators_are_kept_and_typed(name: str, kind: AcceleratorKind, vendor: str) -> None:
    model = normalise(name, provider="aws")
    assert model is not None
    assert (model.kind, model.vendor) == (kind, vendor)


@pytest.mark.parametrize(
    ("name", "hbm_gb"),
    [
        ("tpu-v2-8", 16),
        ("tpu-v3-8", 32),
        ("tpu-v4-8", 32),
        ("tpu-v5litepod-1", 16),
        ("tpu-v5p-8", 95),
        ("tpu-v6e-1", 32),
    ],
)
def test_tpu_generations_carry_per_chip_hbm(name: str, hbm_gb: int) -> None:
    model = normalise(name)
    assert model is not None and model.memory_gb == hbm_gb


@pytest.mark.parametrize(
    "name",
    # GTX 1080 Ti is a real Vast card the catalogue does not carry (the Vast fake relies on it).
    ["Z9000", "H1000", "H100X", "", "   ", "RTX 4060 Tie", "GTX 1080 Ti", "tpu-v9-8", "tpu-v7x-8"],
)
def test_unknown_names_are_none_never_a_guess(name: str) -> None:
    assert normalise(name, provider="vast") is None


def test_resolve_query_covers_a_family_or_one_model() -> None:
    h100 = resolve_query("h100")
    assert h100 == {"H100", "H100-SXM", "H100-PCIe", "H100-NVL"}
    assert all(gpus.CATALOGUE[n].family == "H100" for n in h100)
    assert resolve_query("H100-SXM") == {"H100-SXM"}
    assert resolve_query("h100-nvl") == {"H100-NVL"}
    assert resolve_query("A100") == {"A100", "A100-80GB"}
    assert resolve_query("A100-80GB") == {"A100-80GB"}
    assert resolve_query("NVIDIA A100") == {"A100", "A100-80GB"}
    assert resolve_query("RTX A6000") == {"RTXA6000"}
    assert resolve_query("tpu-v4") == {"TPU-v4"}
    assert resolve_query("Inferentia") == {"Inferentia", "Inferentia2"}


def test_resolve_query_suggests_near_matches() -> None:
    with pytest.raises(UnknownGpu, match=r"Unknown GPU 'H10'\. Did you mean: H100") as info:
        resolve_query("H10")
    assert "Known families:" in str(info.value)
    assert isinstance(info.value, ValueError)
    with pytest.raises(UnknownGpu):
        resolve_query("")


def test_get_is_case_insensitive_and_raises_on_unknown() -> None:
    assert gpus.get("h100-sxm").name == "H100-SXM"
    assert gpus.get(" TPU-V5P ").name == "TPU-v5p"
    with pytest.raises(UnknownGpu, match="'H100-SXM5'"):
        gpus.get("H100-SXM5")  # an alias, not a canonical name


@pytest.mark.parametrize(
    ("slice_name", "chips"),
    [
        ("tpu-v2-8", 4),
        ("tpu-v3-32", 16),
        ("tpu-v3-2048", 1024),
        ("tpu-v4-8", 4),
        ("tpu-v4-6144", 3072),
        ("tpu-v5p-1024", 512),
        ("tpu-v5p-12288", 6144),
        ("tpu-v5litepod-1", 1),
        ("tpu-v5litepod-8", 8),
        ("tpu-v6e-8", 8),
        ("tpu-v6e-256", 256),
        ("v4-8", 4),
        ("H100", None),
        ("tpu-v4-7", None),
        ("tpu-v9-8", None),
        ("tpu-v4-0", None),
    ],
)
def test_tpu_chips(slice_name: str, chips: int | None) -> None:
    assert tpu_chips(slice_name) == chips


def test_catalogue_names_are_unique_and_resolve() -> None:
    lower = [name.lower() for name in gpus.CATALOGUE]
    assert len(lower) == len(set(lower))
    for name, model in gpus.CATALOGUE.items():
        assert model.name == name
        assert name in resolve_query(model.family)
        assert resolve_query(name) <= resolve_query(model.family)
        assert normalise(name) == model, "a canonical name normalises to itself"
        assert gpus.get(name.upper()) == model


def test_catalogue_is_read_only() -> None:
    with pytest.raises(TypeError):
        gpus.CATALOGUE["X1"] = gpus.get("H100")  # type: ignore[index]


# ----------------------------------------------------------- Vast's unreduced listing names

#: The market data set's Vast InstanceType: `<count>x-<Vast gpu_name, _ for blanks>-<vCPUs>-<MiB>`
#: (shared/data README, "Vast names are reduced"): the middle part is Vast's own name.
_VAST_TYPE = re.compile(r"^(?P<count>\d+)x-(?P<name>.+)-\d+-\d+$")


def _vast_rows(snapshot_dirs: list[Path]) -> list[tuple[str, str, str, int]]:
    """(where, listing name from InstanceType, reduced AcceleratorName, MiB per GPU) of every
    row of every vast.csv. GpuInfo's SizeInMiB is the listing's total, so it is divided by
    the GPU count the same GpuInfo gives."""
    rows = []
    for folder in snapshot_dirs:
        path = folder / "vast.csv"
        if not path.exists():
            continue
        with path.open(newline="") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                m = _VAST_TYPE.match(row["InstanceType"])
                assert m, f"{folder.name}/vast.csv line {line}: {row['InstanceType']!r}"
                gpu = ast.literal_eval(row["GpuInfo"])["Gpus"][0]
                count = int(float(gpu["Count"]))
                assert count == int(m["count"]) == int(float(row["AcceleratorCount"]))
                per_gpu = int(float(gpu["MemoryInfo"]["SizeInMiB"]) / count)
                rows.append((f"{folder.name}:{line}", m["name"], row["AcceleratorName"], per_gpu))
    return rows


def test_vast_listing_name_gives_the_model_its_memory_says(snapshot_dirs: list[Path]) -> None:
    rows = _vast_rows(snapshot_dirs)
    assert len(rows) >= 4 * 64, "every snapshot since 2026-05-01 has a 64-row vast.csv"
    disagree, refined = [], set()
    for where, listing, reduced, per_gpu_mib in rows:
        model = normalise(listing, provider="vast", memory_mib=per_gpu_mib)
        assert model is not None and model.memory_gb is not None, (where, listing)
        # Usable memory is a little under the spec (L40S: 46068 MiB of 48 GB), never 10 % off.
        if abs(per_gpu_mib / 1024 - model.memory_gb) > 0.10 * model.memory_gb:
            disagree.append((where, listing, per_gpu_mib, model.name, model.memory_gb))
        plain = normalise(reduced, provider="vast", memory_mib=per_gpu_mib)
        if plain != model:
            refined.add((listing, model.name))
    assert disagree == []
    # The reduced names lose these; the listing names keep them (H100 SXM/NVL, Ti cards).
    assert {"H100-SXM", "H100-NVL", "RTX4070TiS", "RTX4060Ti-16GB", "RTX3060Ti"} <= {
        name for _, name in refined
    }


@pytest.mark.parametrize(
    ("name", "memory_mib", "expected"),
    [
        # Vast's API writes blanks (`gpu_name`), its catalog rows underscores.
        ("H100 NVL", 95830, "H100-NVL"),
        ("H100_NVL", None, "H100-NVL"),
        ("H100 SXM", 81559, "H100-SXM"),
        ("H100_SXM", None, "H100-SXM"),
        ("RTX 4070S Ti", 16376, "RTX4070TiS"),
        ("RTX_4070S_Ti", None, "RTX4070TiS"),
        ("RTX 4060 Ti", 16380, "RTX4060Ti-16GB"),
        ("RTX 4060 Ti", 8188, "RTX4060Ti"),
        ("RTX_4060_Ti", None, "RTX4060Ti"),  # memory unknown: the plain (smaller) board
        ("RTX 3060 Ti", 8192, "RTX3060Ti"),
        ("RTX 4070", 12282, "RTX4070"),
        ("RTX 4060", 8188, "RTX4060"),
        ("RTX 3060", 12288, "RTX3060"),
        # A100: the listing name does not say the memory; the reported figure does.
        ("A100 SXM4", 81920, "A100-80GB"),
        ("A100_SXM4", 40960, "A100"),
        ("A100 PCIE", 40960, "A100"),
        ("A100_PCIE", 81920, "A100-80GB"),
    ],
)
def test_vast_names_keep_form_factor_and_ti(
    name: str, memory_mib: int | None, expected: str
) -> None:
    model = normalise(name, provider="vast", memory_mib=memory_mib)
    assert model is not None and model.name == expected


def test_ti_and_super_cards_are_their_own_family() -> None:
    for variant, base in [
        ("RTX4070TiS", "RTX4070"),
        ("RTX4070Ti", "RTX4070"),
        ("RTX4060Ti", "RTX4060"),
        ("RTX4060Ti-16GB", "RTX4060"),
        ("RTX3060Ti", "RTX3060"),
    ]:
        assert gpus.get(variant).family != gpus.get(base).family
        assert variant not in resolve_query(base)
    assert resolve_query("RTX 4060 Ti") == {"RTX4060Ti", "RTX4060Ti-16GB"}
    assert resolve_query("RTX 4070 Ti SUPER") == {"RTX4070TiS"}
    assert (gpus.get("RTX4070TiS").memory_gb, gpus.get("RTX3060Ti").memory_gb) == (16, 8)


# ------------------------------------------------------- accelerators of the current APIs


@pytest.mark.parametrize(
    ("name", "provider", "instance_type", "expected", "memory_gb", "vendor"),
    [
        ("nvidia-gb200", "gcp", None, "GB200", 186, "NVIDIA"),
        ("GB200", "aws", "p6e-gb200.36xlarge", "GB200", 186, "NVIDIA"),
        ("NVIDIA GB200", "azure", "Standard_ND128isr_NDR_GB200_v6", "GB200", 186, "NVIDIA"),
        ("nvidia-gb300", "gcp", None, "GB300", 288, "NVIDIA"),
        ("GB300", "azure", None, "GB300", 288, "NVIDIA"),
        ("NVIDIA B300", None, None, "B300", 288, "NVIDIA"),
        ("B300", "aws", "p6-b300.48xlarge", "B300", 288, "NVIDIA"),
        ("MI325X", None, None, "MI325X", 256, "AMD"),
        ("AMD Instinct MI325X", None, None, "MI325X", 256, "AMD"),
        ("AMD Instinct MI355X", None, None, "MI355X", 288, "AMD"),
        ("MI355X", None, None, "MI355X", 288, "AMD"),
        ("AMD Radeon PRO V710", "azure", "Standard_NV12ads_V710_v5", "V710", 28, "AMD"),
        ("AMD Radeon PRO V620", "azure", "Standard_NG32ads_V620_v1", "V620", 32, "AMD"),
        ("nvidia-rtx-pro-6000", "gcp", None, "RTXPRO6000S", 96, "NVIDIA"),
        (
            "NVIDIA RTX PRO 6000 Blackwell Server Edition",
            "azure",
            "Standard_NC128ds_xl_RTXPRO6000BSE_v6",
            "RTXPRO6000S",
            96,
            "NVIDIA",
        ),
        ("RTX PRO Server 6000", "aws", "g7e.2xlarge", "RTXPRO6000S", 96, "NVIDIA"),
        ("RTX_PRO_6000_WS", "vast", None, "RTXPRO6000WS", 96, "NVIDIA"),
        ("L4", "aws", "g6f.large", "L4", 24, "NVIDIA"),  # a fractional L4 is still an L4
    ],
)
def test_accelerators_of_current_apis_are_catalogued(
    name: str,
    provider: str | None,
    instance_type: str | None,
    expected: str,
    memory_gb: int,
    vendor: str,
) -> None:
    model = normalise(name, provider=provider, instance_type=instance_type)
    assert model is not None
    assert (model.name, model.memory_gb, model.vendor, model.kind) == (
        expected,
        memory_gb,
        vendor,
        AcceleratorKind.GPU,
    )


# ----------------------------------------------------------------- filters as people write


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("H100 80GB", {"H100", "H100-SXM", "H100-PCIe"}),  # not H100-NVL (94 GB)
        ("h100 80gb", {"H100", "H100-SXM", "H100-PCIe"}),
        ("H100-80G", {"H100", "H100-SXM", "H100-PCIe"}),
        ("nvidia-h100-80gb", {"H100", "H100-SXM", "H100-PCIe"}),
        ("H100 94 GB", {"H100-NVL"}),
        ("h100", {"H100", "H100-SXM", "H100-PCIe", "H100-NVL"}),
        ("H100 SXM5", {"H100-SXM"}),
        ("H100 SXM 80GB", {"H100-SXM"}),
        ("A100-80G", {"A100-80GB"}),
        ("A100 80GB", {"A100-80GB"}),
        ("A100 40GB", {"A100"}),
        ("A100-SXM4-80GB", {"A100-80GB"}),
        ("A100 SXM4", {"A100", "A100-80GB"}),  # says no memory: both memories
        ("V100 32GB", {"V100-32GB"}),
        ("RTX 4060 Ti 16GB", {"RTX4060Ti-16GB"}),
        ("Tesla P100-PCIE-16GB", {"P100"}),
        ("T4G", {"T4G"}),  # ends in G, but no memory is asked
        ("NVIDIA T4G", {"T4G"}),
        ("A10G", {"A10G"}),
    ],
)
def test_resolve_query_reads_names_as_people_write_them(query: str, expected: set[str]) -> None:
    assert resolve_query(query) == expected


def test_family_with_memory_is_the_members_with_that_memory() -> None:
    checked = 0
    for family in sorted({m.family for m in gpus.CATALOGUE.values()}):
        members = [m for m in gpus.CATALOGUE.values() if m.family == family]
        for gb in {m.memory_gb for m in members if m.memory_gb is not None}:
            expected = {m.name for m in members if m.memory_gb == gb}
            for query in (f"{family} {gb}GB", f"{family}-{gb}G", f"{family.lower()} {gb} gb"):
                assert resolve_query(query) == expected, query
                checked += 1
    assert checked > 3 * 80


def test_memory_no_member_has_is_unknown_and_says_what_exists() -> None:
    with pytest.raises(
        UnknownGpu, match=r"'H100 40GB': no H100 has 40 GB \(H100 80 GB, H100-NVL 94"
    ):
        resolve_query("H100 40GB")
    with pytest.raises(UnknownGpu, match=r"Did you mean"):
        resolve_query("Z9000 80GB")
    for nonsense in ("80GB", "H100 GB", "gb"):
        with pytest.raises(UnknownGpu):
            resolve_query(nonsense)


# ------------------------------------------------------------------------ MODEL:COUNT


@pytest.mark.parametrize(
    ("text", "query", "count"),
    [
        ("H100:8", "H100", 8),
        ("H100", "H100", None),
        (" h100 80GB : 4 ", "H100 80GB", 4),
        ("A100-80G:16", "A100-80GB", 16),
        ("RTX 4090:1", "RTX4090", 1),
    ],
)
def test_parse_gpu_filter(text: str, query: str, count: int | None) -> None:
    assert parse_gpu_filter(text) == (resolve_query(query), count)


@pytest.mark.parametrize(
    "text", ["H100:0", "H100:x", "H100:8:2", "H100:", "H100:-1", "H100:1.5", "H100:8 GPUs"]
)
def test_parse_gpu_filter_rejects_a_bad_count(text: str) -> None:
    with pytest.raises(BadGpuCount, match=r"Bad GPU count .* write MODEL:COUNT") as info:
        parse_gpu_filter(text)
    assert repr(text.strip()) in str(info.value)
    assert isinstance(info.value, GpuFilterError) and isinstance(info.value, ValueError)


@pytest.mark.parametrize("text", ["Z9000:8", ":8", "H100 40GB:8"])
def test_parse_gpu_filter_rejects_an_unknown_model(text: str) -> None:
    with pytest.raises(UnknownGpu) as info:
        parse_gpu_filter(text)
    assert isinstance(info.value, GpuFilterError)
