"""Where a provider region is: country, data-residency jurisdiction, city, continent.

Owns the region table (`data/regions.csv` beside this module) and the jurisdiction rule:
`EU` for every EU and EEA state (residency rules treat them as one area), otherwise the
ISO 3166-1 alpha-2 country code. Lookups are exact; an unknown region is `None`, never a
guess from its name (callers count it and can offer `suggest()`'s near matches).
"""

from __future__ import annotations

import csv
import difflib
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: EU member states plus the EEA's Iceland, Liechtenstein and Norway.
EU_EEA: frozenset[str] = frozenset(
    [
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
        "IS",
        "LI",
        "NO",
    ]
)
CONTINENTS: frozenset[str] = frozenset(
    {"Africa", "Asia", "Europe", "North America", "Oceania", "South America"}
)
DEFAULT_TABLE = Path(__file__).parent / "data" / "regions.csv"
COLUMNS = ("provider", "region", "country", "jurisdiction", "city", "continent")


@dataclass(frozen=True, slots=True)
class RegionInfo:
    provider: str
    region: str
    country: str
    jurisdiction: str
    city: str | None
    continent: str


def jurisdiction_for_country(country: str) -> str:
    """`EU` for an EU/EEA state, else the upper-cased country code.

    Raises:
        ValueError: `country` is not two ASCII letters.
    """
    code = country.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError(f"not an ISO 3166-1 alpha-2 country code: {country!r}")
    return "EU" if code in EU_EEA else code


class RegionTable:
    """The rows of one region table, indexed by (provider, region)."""

    def __init__(self, rows: list[RegionInfo]) -> None:
        self._by_key = {(r.provider, r.region): r for r in rows}
        self._by_provider: dict[str, list[RegionInfo]] = {}
        for r in rows:
            self._by_provider.setdefault(r.provider, []).append(r)

    def resolve(self, provider: str, region: str) -> RegionInfo | None:
        return self._by_key.get((provider, region))

    def regions_of(self, provider: str) -> list[RegionInfo]:
        return list(self._by_provider.get(provider, []))

    def providers(self) -> list[str]:
        return sorted(self._by_provider)

    def suggest(self, provider: str, region: str, n: int = 3) -> list[str]:
        names = [r.region for r in self._by_provider.get(provider, [])]
        return difflib.get_close_matches(region, names, n=n, cutoff=0.6)

    def __len__(self) -> int:
        return len(self._by_key)


def _parse(path: Path) -> RegionTable:
    rows: list[RegionInfo] = []
    seen: set[tuple[str, str]] = set()
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        if tuple(reader.fieldnames or ()) != COLUMNS:
            raise ValueError(f"{path} line 1: header must be {','.join(COLUMNS)}")
        for rec in reader:
            where = f"{path} line {reader.line_num}"
            key = (rec["provider"], rec["region"])
            if not all(key):
                raise ValueError(f"{where}: provider and region must not be empty")
            if key in seen:
                raise ValueError(f"{where}: duplicate row for {key[0]} {key[1]!r}")
            seen.add(key)
            try:
                expected = jurisdiction_for_country(rec["country"])
            except ValueError as exc:
                raise ValueError(f"{where}: {exc}") from None
            if rec["jurisdiction"] != expected:
                raise ValueError(
                    f"{where}: jurisdiction {rec['jurisdiction']!r} for country "
                    f"{rec['country']!r} should be {expected!r}"
                )
            if rec["continent"] not in CONTINENTS:
                raise ValueError(f"{where}: unknown continent {rec['continent']!r}")
            rows.append(
                RegionInfo(
                    provider=key[0],
                    region=key[1],
                    country=rec["country"],
                    jurisdiction=rec["jurisdiction"],
                    city=rec["city"] or None,
                    continent=rec["continent"],
                )
            )
    return RegionTable(rows)


@lru_cache(maxsize=1)
def _default() -> RegionTable:
    return _parse(DEFAULT_TABLE)


def load_table(path: Path | None = None) -> RegionTable:
    """The region table at `path` (default: the one shipped beside this module, cached).

    Raises:
        ValueError: a row is invalid (bad country, jurisdiction not following the rule,
            unknown continent, duplicate); the message names file and line.
    """
    return _default() if path is None else _parse(path)


def resolve(provider: str, region: str) -> RegionInfo | None:
    """The region's location, or None when the table does not know it."""
    return _default().resolve(provider, region)


def regions_of(provider: str) -> list[RegionInfo]:
    return _default().regions_of(provider)


def suggest(provider: str, region: str, n: int = 3) -> list[str]:
    """Near matches among the provider's regions, for error messages."""
    return _default().suggest(provider, region, n)
