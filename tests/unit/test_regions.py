"""The region table: every region of the data set maps, and the jurisdiction rule holds."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest

from broker import regions
from broker.regions import jurisdiction_for_country, load_table


def test_every_region_in_the_data_set_resolves(snapshot_dirs: list[Path]) -> None:
    missing: set[tuple[str, str]] = set()
    for folder in snapshot_dirs:
        for path in sorted(folder.rglob("*.csv")):
            provider = "lambda_cloud" if path.stem == "lambda" else path.stem
            with path.open(newline="") as f:
                for row in csv.DictReader(f):
                    if regions.resolve(provider, row["Region"]) is None:
                        missing.add((provider, row["Region"]))
    assert sorted(missing) == []


def test_table_agrees_with_the_data_sets_region_file(data_dir: Path) -> None:
    with (data_dir / "regions.csv").open(newline="") as f:
        shared = list(csv.DictReader(f))
    assert len(shared) >= 234
    for row in shared:
        provider = "lambda_cloud" if row["provider"] == "lambda" else row["provider"]
        info = regions.resolve(provider, row["region"])
        assert info is not None, row
        assert (info.country, info.jurisdiction, info.city or "", info.continent) == (
            row["country"],
            row["jurisdiction"],
            row["city"],
            row["continent"],
        )


def test_jurisdiction_rule() -> None:
    assert jurisdiction_for_country("de") == "EU"
    assert [jurisdiction_for_country(c) for c in ("NO", "IS", "LI")] == ["EU"] * 3
    assert [jurisdiction_for_country(c) for c in ("CH", "GB", "US")] == ["CH", "GB", "US"]
    with pytest.raises(ValueError):
        jurisdiction_for_country("Germany")
    for info in (r for p in load_table().providers() for r in regions.regions_of(p)):
        assert info.jurisdiction == jurisdiction_for_country(info.country)


@pytest.mark.parametrize(
    "provider, region, country, jurisdiction",
    [
        ("aws", "eu-central-1", "DE", "EU"),
        ("gcp", "europe-west4", "NL", "EU"),
        ("azure", "norwayeast", "NO", "EU"),
        ("lambda_cloud", "us-east-1", "US", "US"),
        ("runpod", "CZ", "CZ", "EU"),
        ("vast", "Switzerland, CH, EU", "CH", "CH"),
        ("aws", "eu-central-2", "CH", "CH"),
        ("aws", "eu-west-2", "GB", "GB"),
    ],
)
def test_known_rows(provider: str, region: str, country: str, jurisdiction: str) -> None:
    info = regions.resolve(provider, region)
    assert info is not None and (info.country, info.jurisdiction) == (country, jurisdiction)


def test_unknown_region_is_none_with_suggestions() -> None:
    assert regions.resolve("aws", "us-est-1") is None
    assert "us-east-1" in regions.suggest("aws", "us-est-1")


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ("aws,eu-central-1,DE,DE,Frankfurt,Europe", "should be 'EU'"),
        ("aws,us-east-2,US,US,,Europa", "unknown continent"),
        ("aws,us-east-1,US,US,,North America", "duplicate row"),
    ],
)
def test_bad_table_names_the_line(tmp_path: Path, bad_row: str, message: str) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(
        "provider,region,country,jurisdiction,city,continent\n"
        "aws,us-east-1,US,US,,North America\n" + bad_row + "\n"
    )
    with pytest.raises(ValueError, match=f"line 3.*{message}"):
        load_table(path)
