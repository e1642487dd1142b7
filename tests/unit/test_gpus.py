"""The GPU catalogue: every accelerator name of the data set normalises, by table."""

from __future__ import annotations

import ast
import csv
from pathlib import Path

import pytest

from broker import gpus
from broker.gpus import AcceleratorKind, normalise, resolve_query, tpu_chips


def _memory_mib(info: str) -> int | None:
    if not info.startswith("{"):
        return None
    try:
        return int(float(ast.literal_eval(info)["Gpus"][0]["MemoryInfo"]["SizeInMiB"]))
    except (KeyError, IndexError):
        return None


def test_every_accelerator_name_in_the_data_set_normalises(snapshot_dirs: list[Path]) -> None:
    failures: set[tuple[str, str]] = set()
    seen = 0
    for folder in snapshot_dirs:
        for path in sorted(folder.glob("*.csv")):
            provider = "lambda_cloud" if path.stem == "lambda" else path.stem
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    seen += 1
                    model = normalise(
                        row["AcceleratorName"],
                        provider=provider,
                        instance_type=row["InstanceType"],
                        memory_mib=_memory_mib(row.get("GpuInfo") or ""),
                    )
                    if model is None:
                        failures.add((f"{folder.name}/{path.name}", row["AcceleratorName"]))
    assert seen > 30_000
    assert sorted(failures) == []


@pytest.mark.parametrize(
    "name, provider, instance_type, memory_mib, expected",
    [
        ("H100", "aws", "p5.48xlarge", 81920, "H100-SXM"),
        ("H100", "azure", "Standard_NC40ads_H100_v5", None, "H100-NVL"),
        ("H100", "azure", "Standard_ND96isr_H100_v5", None, "H100-SXM"),
        ("H100", "lambda_cloud", "gpu_1x_h100_pcie", 81920, "H100-PCIe"),
        ("H100", "lambda_cloud", "gpu_8x_h100_sxm5", 81920, "H100-SXM"),
        ("H100-MEGA", "gcp", "a3-megagpu-8g", None, "H100-SXM"),
        ("H100", "runpod", "1x_H100_SECURE", None, "H100-PCIe"),
        ("H100-SXM", "runpod", "1x_H100-SXM_SECURE", None, "H100-SXM"),
        ("H100", "vast", "1x-H100_SXM-32-65536", 81559, "H100"),  # Vast reduced the name
        ("H100", "vast", "1x-H100_NVL-32-65536", 95830, "H100-NVL"),  # only the NVL has 94 GB
        ("A100", "vast", "1x-A100_SXM4-32-65536", 81920, "A100-80GB"),
        ("A100", "vast", "1x-A100_SXM4-32-65536", 40960, "A100"),
        ("A6000", "lambda_cloud", "gpu_1x_a6000", None, "RTXA6000"),
        ("RTX6000", "lambda_cloud", "gpu_1x_rtx6000", None, "RTX6000"),
        ("RTX 3070", "scaleway", "GPU-3070-S", None, "RTX3070"),
        ("NVIDIA GeForce RTX 3070", None, None, None, "RTX3070"),
        ("Radeon MI25", "azure", "Standard_NV4as_v4", None, "MI25"),
        ("tpu-v5p-1024", "gcp", "", None, "TPU-v5p"),
    ],
)
def test_mapping_rules(
    name: str,
    provider: str | None,
    instance_type: str | None,
    memory_mib: int | None,
    expected: str,
) -> None:
    model = normalise(name, provider=provider, instance_type=instance_type, memory_mib=memory_mib)
    assert model is not None and model.name == expected


def test_rtx6000_is_not_the_ada_card() -> None:
    quadro, ada = gpus.get("RTX6000"), gpus.get("RTX6000-Ada")
    assert quadro.family != ada.family and (quadro.memory_gb, ada.memory_gb) == (24, 48)


def test_non_gpu_accelerators_are_kept_and_typed() -> None:
    for name in (
        "Inferentia",
        "Trainium",
        "Gaudi HL-205",
        "Qualcomm AI100",
        "Virtex UltraScale (VU9P)",
    ):
        model = normalise(name, provider="aws")
        assert model is not None and model.kind == AcceleratorKind.OTHER
    tpu = normalise("tpu-v4-128")
    assert tpu is not None and tpu.kind == AcceleratorKind.TPU


def test_unknown_names_are_none_never_a_guess() -> None:
    assert normalise("Z9000") is None
    assert normalise("H1000") is None


def test_resolve_query_family_model_and_near_match() -> None:
    assert resolve_query("h100") == {"H100", "H100-SXM", "H100-PCIe", "H100-NVL"}
    assert resolve_query("H100-SXM") == {"H100-SXM"}
    assert resolve_query("a100") == {"A100", "A100-80GB"}
    assert resolve_query("RTX A6000") == {"RTXA6000"}
    with pytest.raises(gpus.UnknownGpu, match="Did you mean: H100"):
        resolve_query("H10")


@pytest.mark.parametrize(
    "slice_name, chips",
    [
        ("tpu-v2-8", 4),
        ("tpu-v3-32", 16),
        ("tpu-v4-8", 4),
        ("tpu-v5p-1024", 512),
        ("tpu-v5litepod-8", 8),
        ("tpu-v6e-256", 256),
        ("H100", None),
    ],
)
def test_tpu_chips(slice_name: str, chips: int | None) -> None:
    assert tpu_chips(slice_name) == chips


def test_catalogue_is_consistent() -> None:
    lower = [n.lower() for n in gpus.CATALOGUE]
    assert len(lower) == len(set(lower))
    for model in gpus.CATALOGUE.values():
        assert model.name in resolve_query(model.family)
