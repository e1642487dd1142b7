"""The accelerator catalogue: every name in the market data set maps, by table and rule."""

from __future__ import annotations

import ast
import csv
from functools import lru_cache
from pathlib import Path

import pytest

from broker import gpus
from broker.gpus import AcceleratorKind, UnknownGpu, normalise, resolve_query, tpu_chips


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
    assert {n for n, f in others.items() if f is not None} == {"H200-NVL"}
    assert others["H200-NVL"] == "NVL" and others["H200"] is None


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
    ["Z9000", "H1000", "H100X", "", "   ", "RTX 3060 Ti", "RTX_4070S_Ti", "tpu-v9-8", "tpu-v7x-8"],
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
