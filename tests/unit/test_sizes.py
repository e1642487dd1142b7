"""The size tables: the shipped rows agree with the market data set, the provider's own API
data and the adapters' series tables; the loaders reject bad rows with file and line."""

from __future__ import annotations

import csv
import fnmatch
import gzip
import json
import re
import statistics
import tomllib
from collections import defaultdict
from decimal import Decimal
from pathlib import Path

import pytest

from broker import gpus, sizes
from broker.domain import Market, to_count
from broker.sizes import load_fractions, load_markets
from providers.azure import series_gpu

REPO = Path(__file__).resolve().parents[2]
FRACTIONS_HEADER = "provider,instance_type,gpu_model,fraction,memory_gb,source\n"
MARKETS_HEADER = "provider,instance_type,markets,source\n"
PARTIAL_FAMILIES = re.compile(r"^Standard_NV\d+as_v4$|^Standard_NV\d+ad[a-z]*_A10_v5$")
#: The whole-GPU size a partial family's per-GPU price is compared with (same region).
WHOLE_OF = {"A10": "Standard_NV36ads_A10_v5", "MI25": "Standard_NV32as_v4"}
#: Azure prices the 1/6 and 1/3 A10 slices about 15% below the whole A10 (0.85 of
#: NV36ads_A10_v5 per GPU in every snapshot); every other partial size is within 2% of its
#: whole GPU. A wrong fraction is off by a factor of 1.5 or more (the nearest table
#: fractions, 1/3 and 1/2), so a 20% band tells a right fraction from a wrong one.
PER_GPU_TOLERANCE = Decimal("0.2")


def azure_rows(snapshot_dirs: list[Path]) -> list[tuple[str, dict[str | None, str]]]:
    """(snapshot, row) of every azure.csv row of the data set."""
    out: list[tuple[str, dict[str | None, str]]] = []
    for snap in snapshot_dirs:
        path = snap / "azure.csv"
        if path.exists():
            with path.open(newline="", encoding="utf-8") as f:
                out += [(snap.name, row) for row in csv.DictReader(f)]
    return out


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ the shipped tables


def test_shipped_tables_load_and_name_only_catalogue_models() -> None:
    assert len(sizes.fractions_table()) > 0 and len(sizes.markets_table()) > 0
    # Every model is a canonical catalogue name (a failing row is listed with its line).
    assert sizes.unknown_models() == ()
    assert all(r.gpu_model in gpus.CATALOGUE for r in sizes.fractions_table())


def test_tables_ship_as_package_data() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))
    assert "data/*.csv" in pyproject["tool"]["setuptools"]["package-data"]["broker"]
    assert sizes.DEFAULT_FRACTIONS.parent == Path(sizes.__file__).parent / "data"


def test_every_partial_azure_size_of_the_data_set_has_an_entry(
    snapshot_dirs: list[Path],
) -> None:
    seen = {
        row["InstanceType"]
        for _, row in azure_rows(snapshot_dirs)
        if PARTIAL_FAMILIES.match(row["InstanceType"] or "")
    }
    assert len(seen) == 10  # NV4/8/16/32as_v4, NV6/12/18/36/72ads and NV36adms A10 v5
    missing = sorted(t for t in seen if sizes.fraction("azure", t) is None)
    assert missing == []


def test_fractions_agree_with_the_data_sets_fractional_counts(
    snapshot_dirs: list[Path],
) -> None:
    # The anycloud files write the A10 slices' counts as fractions (0.167, 0.333, 0.5).
    checked = 0
    for _, row in azure_rows(snapshot_dirs):
        count = Decimal(row["AcceleratorCount"] or "0")
        if 0 < count < 1:
            entry = sizes.fraction("azure", row["InstanceType"] or "")
            assert entry is not None and entry.fraction == to_count(count), row
            checked += 1
    assert checked > 0


def test_partial_sizes_cost_per_gpu_what_a_whole_gpu_of_their_family_costs(
    snapshot_dirs: list[Path],
) -> None:
    """Price / fraction of a partial size against the whole-GPU size's price / fraction in
    the same region and snapshot; the median over regions, so that a price excursion of one
    row (data set README, "Azure price excursions") does not decide."""
    per_gpu: dict[tuple[str, str, str], Decimal] = {}
    for snap, row in azure_rows(snapshot_dirs):
        entry = sizes.fraction("azure", row["InstanceType"] or "")
        if entry is not None and entry.gpu_model in WHOLE_OF and row["Price"]:
            per_gpu[(snap, row["Region"] or "", entry.instance_type)] = (
                Decimal(row["Price"]) / entry.fraction
            )
    ratios: dict[tuple[str, str], list[Decimal]] = defaultdict(list)
    for (snap, region, itype), price in per_gpu.items():
        model = sizes.fraction("azure", itype)
        assert model is not None
        whole = per_gpu.get((snap, region, WHOLE_OF[model.gpu_model]))
        if whole and model.fraction < 1:
            ratios[(snap, itype)].append(price / whole)
    partial_types = {itype for _, itype in ratios}
    assert len(partial_types) == 6  # 1/8, 1/4, 1/2 MI25; 1/6, 1/3, 1/2 A10
    for (snap, itype), values in ratios.items():
        median = statistics.median(values)
        assert abs(median - 1) <= PER_GPU_TOLERANCE, (snap, itype, median)


def test_azure_models_agree_with_the_adapters_series_table() -> None:
    checked = 0
    for row in sizes.fractions_table():
        if row.provider != "azure" or (gpu := series_gpu(row.instance_type)) is None:
            continue
        model = gpus.normalise(gpu, provider="azure", instance_type=row.instance_type)
        assert model is not None and model.name == row.gpu_model, row
        checked += 1
    assert checked >= 11  # the NVv4, NVads A10 v5 and ND96is MI300X rows


def test_partial_slices_have_less_memory_than_their_whole_gpu() -> None:
    for row in sizes.fractions_table():
        whole = gpus.CATALOGUE[row.gpu_model].memory_gb
        if row.fraction < 1 and row.memory_gb is not None and whole is not None:
            assert row.memory_gb < whole, row


def test_aws_rows_match_describe_instance_types() -> None:
    """The g6f / gr6f rows against the DescribeInstanceTypes data moto bundles (AWS's own
    answer): fraction = LogicalGpuCount x GpuPartitionSize, memory = SizeInMiB / 1024."""
    moto = pytest.importorskip("moto")
    path = Path(moto.__file__).parent / "ec2" / "resources" / "instance_types.json.gz"
    with gzip.open(path, "rt", encoding="utf-8") as f:
        types = json.load(f)
    rows = [r for r in sizes.fractions_table() if r.provider == "aws"]
    assert {r.instance_type for r in rows} == {
        name
        for name, t in types.items()
        if any(
            0 < float(g.get("GpuPartitionSize", 1)) < 1
            for g in (t.get("GpuInfo") or {}).get("Gpus", [])
        )
    }
    for row in rows:
        (device,) = types[row.instance_type]["GpuInfo"]["Gpus"]
        share = Decimal(str(device["GpuPartitionSize"])) * device["LogicalGpuCount"]
        assert row.fraction == to_count(share)
        assert row.memory_gb == Decimal(device["MemoryInfo"]["SizeInMiB"]) / 1024
        assert gpus.normalise(device["Name"], provider="aws", instance_type=row.instance_type)
        assert row.gpu_model == "L4"


def test_gcp_restrictions_leave_out_on_demand_and_match_unambiguously(
    data_dir: Path,
) -> None:
    host_types: set[str] = set()
    for path in (data_dir / "offers").glob("*/hosts/gcp.csv"):
        with path.open(newline="", encoding="utf-8") as f:
            host_types |= {row["InstanceType"] for row in csv.DictReader(f)}
    rows = [r for r in sizes.markets_table().rows if r.provider == "gcp"]
    for name in host_types:
        matching = [r for r in rows if fnmatch.fnmatchcase(name, r.instance_type)]
        assert len(matching) <= 1, (name, matching)
    restricted = {t for t in host_types if sizes.markets_sold("gcp", t) is not None}
    assert restricted == {
        "a3-highgpu-1g",
        "a3-highgpu-2g",
        "a3-highgpu-4g",
        "a3-ultragpu-8g",
        "a3-ultragpu-8g-nolssd",
        "a4-highgpu-8g",
    }
    for t in restricted:
        markets = sizes.markets_sold("gcp", t)
        assert markets is not None and Market.ON_DEMAND not in markets and Market.SPOT in markets
    assert sizes.markets_sold("gcp", "a3-highgpu-1g") == frozenset({Market.SPOT})
    # The 8-GPU A3 High and A3 Mega are sold on demand: no restriction.
    assert sizes.markets_sold("gcp", "a3-highgpu-8g") is None
    assert sizes.markets_sold("gcp", "a3-megagpu-8g") is None


# ------------------------------------------------------------------ lookups


def test_fraction_lookup_is_exact_on_provider_and_ignores_case() -> None:
    entry = sizes.fraction("azure", "standard_nv6ads_a10_v5")
    assert entry is not None and entry.instance_type == "Standard_NV6ads_A10_v5"
    assert sizes.fraction("aws", "Standard_NV6ads_A10_v5") is None
    assert sizes.fraction("azure", "Standard_NV6ads_A10_v6") is None
    assert sizes.fraction("azure", "Standard_ND96isr_H100_v5") is None


def test_markets_exact_rows_win_then_the_first_pattern(tmp_path: Path) -> None:
    table = load_markets(
        write(
            tmp_path,
            "m.csv",
            MARKETS_HEADER
            + "gcp,a3-ultragpu-*,spot reserved,s\n"
            + "gcp,a3-*,reserved,s\n"
            + "gcp,a3-ultragpu-8g,capacity_block,s\n"
            + "gcp,a9-flexonly-1g,,s\n",
        )
    )
    assert table.get("gcp", "a3-ultragpu-8g") == frozenset({Market.CAPACITY_BLOCK})
    assert table.get("gcp", "A3-ULTRAGPU-8G-nolssd") == frozenset({Market.SPOT, Market.RESERVED})
    assert table.get("gcp", "a3-megagpu-8g") == frozenset({Market.RESERVED})
    assert table.get("gcp", "a9-flexonly-1g") == frozenset()  # sold in no broker market
    assert table.get("gcp", "a2-highgpu-1g") is None
    assert table.get("aws", "a3-ultragpu-8g") is None


# ------------------------------------------------------------------ validation


def test_a_model_the_catalogue_lacks_is_kept_and_reported(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", FRACTIONS_HEADER + "azure,Standard_X1,ZZ9000,0.5,4,s\n")
    table = load_fractions(path)
    row = table.get("azure", "Standard_X1")
    assert row is not None and row.gpu_model == "ZZ9000"
    (message,) = table.unknown
    assert f"{path} line 2" in message and "ZZ9000" in message


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("azure,Standard_X1,A10,abc,4,s", "fraction 'abc' is not a number"),
        ("azure,Standard_X1,A10,0,4,s", "must be a positive number"),
        ("azure,Standard_X1,A10,0.1667,4,s", "more than three decimals (write 0.167"),
        ("azure,Standard_X1,A10,0.5,-4,s", "memory_gb '-4' must be a positive number"),
        ("azure,Standard_X1,a10,0.5,4,s", "not a canonical name; use 'A10'"),
        ("azure,Standard_X1,Radeon MI25,0.5,4,s", "use 'MI25'"),
        ("azure,Standard_X1,,0.5,4,s", "gpu_model '' is not a canonical name"),
        ("azure,Standard_X*,A10,0.5,4,s", "not patterns"),
        ("azure,Standard_X1,A10,0.5,4,", "source must not be empty"),
        ("Azure,Standard_X1,A10,0.5,4,s", "is not a provider id"),
        ("azure,Standard_X1 ,A10,0.5,4,s", "leading or trailing blanks"),
        ("azure,Standard_X1,A10,0.5,4,s,extra", "more fields than the header names"),
        ("azure,Standard_X1,A10,0.5", "missing field 'memory_gb'"),
    ],
)
def test_a_bad_fractions_row_fails_with_file_and_line(
    tmp_path: Path, line: str, error: str
) -> None:
    path = write(tmp_path, "f.csv", FRACTIONS_HEADER + "azure,Standard_OK,A10,1,24,s\n" + line)
    with pytest.raises(ValueError) as exc:
        load_fractions(path)
    assert f"{path} line 3" in str(exc.value) and error in str(exc.value)


def test_duplicate_rows_fail_ignoring_case(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "f.csv",
        FRACTIONS_HEADER + "azure,Standard_X1,A10,1,24,s\nazure,standard_x1,A10,1,24,s\n",
    )
    with pytest.raises(ValueError, match=r"line 3: duplicate row .* \(first at .* line 2\)"):
        load_fractions(path)
    path = write(tmp_path, "m.csv", MARKETS_HEADER + "gcp,a4-*,spot,s\ngcp,A4-*,reserved,s\n")
    with pytest.raises(ValueError, match="line 3: duplicate row"):
        load_markets(path)


@pytest.mark.parametrize(
    ("line", "error"),
    [
        ("gcp,a4-highgpu-8g,flex_start,s", "must be distinct names among"),
        ("gcp,a4-highgpu-8g,spot spot,s", "must be distinct names among"),
        ("gcp,a4-highgpu-8g,spot,", "source must not be empty"),
        (",a4-highgpu-8g,spot,s", "is not a provider id"),
    ],
)
def test_a_bad_markets_row_fails_with_file_and_line(tmp_path: Path, line: str, error: str) -> None:
    path = write(tmp_path, "m.csv", MARKETS_HEADER + line + "\n")
    with pytest.raises(ValueError) as exc:
        load_markets(path)
    assert f"{path} line 2" in str(exc.value) and error in str(exc.value)


def test_a_wrong_header_fails(tmp_path: Path) -> None:
    path = write(tmp_path, "f.csv", "provider,instance_type,gpu,fraction,memory_gb,source\n")
    with pytest.raises(ValueError, match="line 1: header must name the columns"):
        load_fractions(path)
    path = write(tmp_path, "m.csv", "provider,instance_type,markets\n")
    with pytest.raises(ValueError, match="line 1: header must name the columns"):
        load_markets(path)
