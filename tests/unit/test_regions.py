"""The region table: every region of the market data set resolves, the rows agree with the
data set's checked region file, and the jurisdiction rule holds for every row."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest

from broker import regions
from broker.regions import (
    CONTINENTS,
    DEFAULT_TABLE,
    EU_EEA,
    RegionInfo,
    jurisdiction_for_country,
    load_table,
)

# Typed out again on purpose: an independent statement of the rule the module encodes.
EU_MEMBERS = {
    "AT",
    "BE",
    "BG",
    "HR",
    "CY",
    "CZ",
    "DK",
    "EE",
    "FI",
    "FR",
    "DE",
    "GR",
    "HU",
    "IE",
    "IT",
    "LV",
    "LT",
    "LU",
    "MT",
    "NL",
    "PL",
    "PT",
    "RO",
    "SK",
    "SI",
    "ES",
    "SE",
}
EEA_NON_EU = {"IS", "LI", "NO"}
VAST_CONTINENTS = {"NA": "North America", "EU": "Europe", "AS": "Asia"}
HEADER = "provider,region,country,jurisdiction,city,continent\n"


def provider_id(cloud: str) -> str:
    """The broker's provider id for a data-set cloud name (file stem)."""
    return "lambda_cloud" if cloud == "lambda" else cloud


def all_rows() -> list[RegionInfo]:
    table = load_table()
    return [info for p in table.providers() for info in table.regions_of(p)]


def test_every_region_of_every_snapshot_resolves(snapshot_dirs: list[Path]) -> None:
    files = [path for folder in snapshot_dirs for path in sorted(folder.rglob("*.csv"))]
    assert any(p.parent.name == "hosts" for p in files)  # hosts/gcp.csv is walked too
    unresolved: list[str] = []
    for path in files:
        with path.open(newline="", encoding="utf-8") as f:
            for line, row in enumerate(csv.DictReader(f), start=2):
                provider = provider_id(path.stem)
                if regions.resolve(provider, row["Region"]) is None:
                    unresolved.append(f"{path}:{line}: {provider} {row['Region']!r}")
    assert unresolved == []


def test_table_carries_and_agrees_with_the_data_sets_region_file(data_dir: Path) -> None:
    with (data_dir / "regions.csv").open(newline="", encoding="utf-8") as f:
        shared = list(csv.DictReader(f))
    assert len(shared) >= 234
    disagreements: list[str] = []
    for row in shared:
        info = regions.resolve(provider_id(row["provider"]), row["region"])
        expected = (row["country"], row["jurisdiction"], row["city"] or None, row["continent"])
        got = None if info is None else (info.country, info.jurisdiction, info.city, info.continent)
        if got != expected:
            disagreements.append(f"{row['provider']} {row['region']!r}: {got} != {expected}")
    assert disagreements == []


def test_eu_eea_is_the_eu_plus_iceland_liechtenstein_norway() -> None:
    assert len(EU_MEMBERS) == 27
    assert EU_EEA == EU_MEMBERS | EEA_NON_EU


def test_jurisdiction_for_country() -> None:
    assert jurisdiction_for_country("DE") == "EU"
    assert jurisdiction_for_country(" de ") == "EU"
    assert [jurisdiction_for_country(c) for c in ("NO", "IS", "LI")] == ["EU"] * 3
    assert [jurisdiction_for_country(c) for c in ("CH", "GB", "US", "hk")] == [
        "CH",
        "GB",
        "US",
        "HK",
    ]
    for bad in ("Germany", "", "D", "DEU", "D1", "ÄÖ"):
        with pytest.raises(ValueError, match="alpha-2"):
            jurisdiction_for_country(bad)


def test_every_row_follows_the_jurisdiction_rule() -> None:
    rows = all_rows()
    assert len(rows) == len(load_table())
    wrong = [
        r
        for r in rows
        if r.jurisdiction != ("EU" if r.country in EU_MEMBERS | EEA_NON_EU else r.country)
        or not re.fullmatch(r"[A-Z]{2}", r.country)
        or r.continent not in CONTINENTS
    ]
    assert wrong == []
    by_country = {r.country: r.jurisdiction for r in rows}
    assert (by_country["NO"], by_country["IS"]) == ("EU", "EU")
    assert (by_country["CH"], by_country["GB"]) == ("CH", "GB")


def test_vast_third_part_is_a_continent_not_the_eu() -> None:
    vast = regions.regions_of("vast")
    assert len(vast) == 34
    for info in vast:
        _place, country, continent = (part.strip() for part in info.region.split(","))
        assert info.country == country, info
        assert info.continent == VAST_CONTINENTS[continent], info
        assert info.jurisdiction == jurisdiction_for_country(country), info
    swiss = regions.resolve("vast", "Switzerland, CH, EU")
    assert swiss is not None and (swiss.jurisdiction, swiss.continent) == ("CH", "Europe")
    russia = regions.resolve("vast", "Sverdlovsk Oblast, RU, EU")
    assert russia is not None and russia.jurisdiction == "RU"


@pytest.mark.parametrize(
    "provider, region, country, jurisdiction, city",
    [
        ("aws", "eu-central-1", "DE", "EU", "Frankfurt"),
        ("aws", "eu-central-2", "CH", "CH", "Zurich"),
        ("aws", "eu-west-2", "GB", "GB", "London"),
        ("aws", "us-east-1", "US", "US", None),
        ("aws", "il-central-1", "IL", "IL", "Tel Aviv"),
        ("aws", "ap-south-2", "IN", "IN", "Hyderabad"),
        ("aws", "mx-central-1", "MX", "MX", None),
        ("gcp", "europe-west4", "NL", "EU", "Eemshaven"),
        ("gcp", "europe-north2", "SE", "EU", "Stockholm"),
        ("azure", "norwayeast", "NO", "EU", None),
        ("azure", "switzerlandnorth", "CH", "CH", "Zurich"),
        ("azure", "austriaeast", "AT", "EU", "Vienna"),
        ("lambda_cloud", "us-east-1", "US", "US", None),
        ("lambda_cloud", "europe-central-1", "DE", "EU", None),
        ("runpod", "CZ", "CZ", "EU", None),
        ("runpod", "IS", "IS", "EU", None),
    ],
)
def test_known_rows(
    provider: str, region: str, country: str, jurisdiction: str, city: str | None
) -> None:
    info = regions.resolve(provider, region)
    assert info is not None
    assert (info.country, info.jurisdiction, info.city) == (country, jurisdiction, city)


def test_unknown_region_is_none_never_a_guess() -> None:
    assert regions.resolve("aws", "us-est-1") is None
    assert regions.resolve("aws", "US-EAST-1") is None
    assert regions.resolve("lambda", "us-east-1") is None  # provider ids, not file stems
    assert regions.resolve("nosuchcloud", "us-east-1") is None
    assert regions.regions_of("nosuchcloud") == []


def test_suggest_offers_near_matches_of_that_provider_only() -> None:
    assert "us-east-1" in regions.suggest("aws", "us-est-1")
    assert regions.suggest("gcp", "europe-wst4")[0] == "europe-west4"
    assert len(regions.suggest("aws", "us-east", n=2)) <= 2
    assert regions.suggest("aws", "zzzzzzzz") == []
    assert regions.suggest("nosuchcloud", "us-east-1") == []


def test_shipped_table_is_sorted_with_module_named_providers() -> None:
    with DEFAULT_TABLE.open(newline="", encoding="utf-8") as f:
        keys = [(r["provider"], r["region"]) for r in csv.DictReader(f)]
    assert keys == sorted(keys)
    assert all(re.fullmatch(r"[a-z][a-z0-9_]*", p) for p, _ in keys)
    assert [r.region for r in regions.regions_of("aws")] == sorted(r for p, r in keys if p == "aws")


def test_default_table_is_loaded_once() -> None:
    assert load_table() is load_table()
    assert load_table(DEFAULT_TABLE) is load_table()


def test_column_order_is_free(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(
        "region,provider,continent,city,jurisdiction,country\n"
        'eu-west-3,aws,Europe,Paris,EU,FR\n"Bern, CH, EU",vast,Europe,,CH,CH\n',
        encoding="utf-8",
    )
    table = load_table(path)
    assert table.resolve("aws", "eu-west-3") == RegionInfo(
        "aws", "eu-west-3", "FR", "EU", "Paris", "Europe"
    )
    vast = table.resolve("vast", "Bern, CH, EU")
    assert vast is not None and vast.city is None


@pytest.mark.parametrize(
    "bad_row, message",
    [
        ("aws,eu-central-1,DE,DE,Frankfurt,Europe", "should be 'EU'"),
        ("aws,eu-central-2,CH,EU,Zurich,Europe", "should be 'CH'"),
        ("aws,us-east-2,US,US,,Europa", "unknown continent"),
        ("aws,us-east-1,US,US,,North America", r"duplicate row .*first at line 2"),
        ("aws,us-east-2,USA,USA,,North America", "alpha-2"),
        ("aws,us-east-2,us,us,,North America", "upper case"),
        ("aws, us-east-2,US,US,,North America", "blanks"),
        ("aws,,US,US,,North America", "must not be empty"),
        ("aws,us-east-2,US,US,,North America,extra", "more fields"),
        ("aws,us-east-2,US,US", "missing field"),
    ],
)
def test_bad_row_raises_naming_file_and_line(tmp_path: Path, bad_row: str, message: str) -> None:
    path = tmp_path / "regions.csv"
    path.write_text(HEADER + "aws,us-east-1,US,US,,North America\n" + bad_row + "\n")
    with pytest.raises(ValueError, match=f"{re.escape(str(path))} line 3: .*{message}"):
        load_table(path)


def test_header_without_a_column_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "regions.csv"
    path.write_text("provider,region,country,jurisdiction,city\naws,us-east-1,US,US,\n")
    with pytest.raises(ValueError, match=rf"{re.escape(str(path))} line 1: .*continent"):
        load_table(path)
