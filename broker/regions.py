"""Where a provider region is: country, data-residency jurisdiction, city, continent.

Owns the region table (`data/regions.csv` beside this module, provenance in
`data/README.md`) and the jurisdiction rule: `EU` for every EU and EEA state (residency
rules treat them as one area), otherwise the ISO 3166-1 alpha-2 country code. Lookups are
exact on (provider id, region string as the provider spells it); an unknown region is
`None`, never a guess from its name. Callers (the provider adapters) count what does not
resolve and can offer `suggest()`'s near matches in their messages.

Leaves to others: which regions a provider actually serves (its adapter asks the provider)
and residency decisions (scoring applies requests' rules to the jurisdictions given here).
"""

from __future__ import annotations

import csv
import difflib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

#: EU member states plus the EEA's Iceland, Liechtenstein and Norway.
EU_EEA: frozenset[str] = frozenset(
    {
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
    }
)
#: Continents as the table names them; the Middle East counts as Asia.
CONTINENTS: frozenset[str] = frozenset(
    {"Africa", "Asia", "Europe", "North America", "Oceania", "South America"}
)
DEFAULT_TABLE = Path(__file__).parent / "data" / "regions.csv"
# Listed by hand, not derived from RegionInfo, so that a new field cannot silently change
# the file format the table is validated against.
_COLUMNS = ("provider", "region", "country", "jurisdiction", "city", "continent")


@dataclass(frozen=True, slots=True)
class RegionInfo:
    """One provider region and where it is.

    Attributes:
        provider: the broker's provider id (`aws`, `lambda_cloud`, `vast`, ...).
        region: the provider's own region string, exactly as its API or catalog spells it.
        country: ISO 3166-1 alpha-2 code, upper case (`HK` and `TW` are their own codes).
        jurisdiction: data-residency bucket, `jurisdiction_for_country(country)`.
        city: city named by the provider's location table, spelled as the provider spells
            it; `None` where the provider names only a state or a country.
        continent: one of `CONTINENTS`.
    """

    provider: str
    region: str
    country: str
    jurisdiction: str
    city: str | None
    continent: str


def jurisdiction_for_country(country: str) -> str:
    """The data-residency jurisdiction of a country.

    Args:
        country: ISO 3166-1 alpha-2 code, any case, surrounding blanks ignored.

    Returns:
        `EU` for an EU or EEA state (so `NO`, `IS`, `LI` are `EU`), otherwise the
        upper-cased country code (`GB`, `CH`, `US`, ...).

    Raises:
        ValueError: `country` is not two ASCII letters.
    """
    code = country.strip().upper()
    if len(code) != 2 or not code.isascii() or not code.isalpha():
        raise ValueError(f"not an ISO 3166-1 alpha-2 country code: {country!r}")
    return "EU" if code in EU_EEA else code


class RegionTable:
    """The rows of one region table, indexed by (provider, region).

    Built by `load_table()`, which validates the rows; the constructor trusts them.
    """

    def __init__(self, rows: list[RegionInfo]) -> None:
        self._by_key = {(r.provider, r.region): r for r in rows}
        self._by_provider: dict[str, list[RegionInfo]] = {}
        for r in rows:
            self._by_provider.setdefault(r.provider, []).append(r)

    def resolve(self, provider: str, region: str) -> RegionInfo | None:
        """The row for exactly (provider, region), or `None` when the table lacks it."""
        return self._by_key.get((provider, region))

    def regions_of(self, provider: str) -> list[RegionInfo]:
        """Every row of a provider in table order; empty for an unknown provider."""
        return list(self._by_provider.get(provider, []))

    def providers(self) -> list[str]:
        """The provider ids that have at least one row, sorted."""
        return sorted(self._by_provider)

    def suggest(self, provider: str, region: str, n: int = 3) -> list[str]:
        """Up to `n` of the provider's region strings closest to `region`, best first.

        For error messages ("did you mean ...?"); never used to resolve. Empty when
        nothing is close (difflib ratio below 0.6) or the provider is unknown.
        """
        names = [r.region for r in self._by_provider.get(provider, [])]
        return difflib.get_close_matches(region, names, n=n, cutoff=0.6)

    def __len__(self) -> int:
        return len(self._by_key)


def _check_header(path: Path, fieldnames: Sequence[str] | None) -> None:
    found = list(fieldnames or [])
    missing = [c for c in _COLUMNS if c not in found]
    unknown = [c for c in found if c not in _COLUMNS]
    if missing or unknown or len(found) != len(set(found)):
        raise ValueError(
            f"{path} line 1: header must name the columns {', '.join(_COLUMNS)} once each "
            f"(missing: {missing or 'none'}, unknown: {unknown or 'none'})"
        )


def _parse_row(rec: Mapping[str | None, object], where: str) -> RegionInfo:
    if rec.get(None) is not None:
        raise ValueError(f"{where}: more fields than the header names")
    values: dict[str, str] = {}
    for col in _COLUMNS:
        value = rec.get(col)
        if not isinstance(value, str):
            raise ValueError(f"{where}: missing field {col!r}")
        if value != value.strip():
            # Lookups are exact, so a stray blank would make the row unreachable.
            raise ValueError(f"{where}: field {col} has leading or trailing blanks: {value!r}")
        values[col] = value
    if not values["provider"] or not values["region"]:
        raise ValueError(f"{where}: provider and region must not be empty")
    country = values["country"]
    try:
        expected = jurisdiction_for_country(country)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    if country != country.upper():
        raise ValueError(f"{where}: country must be upper case: {country!r}")
    if values["jurisdiction"] != expected:
        raise ValueError(
            f"{where}: jurisdiction {values['jurisdiction']!r} for country {country!r} "
            f"should be {expected!r}"
        )
    if values["continent"] not in CONTINENTS:
        raise ValueError(
            f"{where}: unknown continent {values['continent']!r} "
            f"(one of {', '.join(sorted(CONTINENTS))})"
        )
    return RegionInfo(
        provider=values["provider"],
        region=values["region"],
        country=country,
        jurisdiction=values["jurisdiction"],
        city=values["city"] or None,
        continent=values["continent"],
    )


def _parse(path: Path) -> RegionTable:
    rows: list[RegionInfo] = []
    first_line: dict[tuple[str, str], int] = {}
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        _check_header(path, reader.fieldnames)
        for rec in reader:
            where = f"{path} line {reader.line_num}"
            info = _parse_row(rec, where)
            key = (info.provider, info.region)
            if key in first_line:
                raise ValueError(
                    f"{where}: duplicate row for {info.provider} {info.region!r} "
                    f"(first at line {first_line[key]})"
                )
            first_line[key] = reader.line_num
            rows.append(info)
    return RegionTable(rows)


@lru_cache(maxsize=1)
def _default() -> RegionTable:
    return _parse(DEFAULT_TABLE)


def load_table(path: Path | None = None) -> RegionTable:
    """Parse and validate a region table.

    Args:
        path: a CSV with the header `provider,region,country,jurisdiction,city,continent`
            (any column order); `None` for the table shipped beside this module, which is
            parsed once and cached.

    Raises:
        OSError: the file cannot be read.
        ValueError: the header lacks a column, or a row is invalid (malformed country,
            jurisdiction not following the rule, unknown continent, empty or blank-padded
            key, duplicate (provider, region)); the message names the file and line.
    """
    if path is None or path == DEFAULT_TABLE:
        return _default()
    return _parse(path)


def resolve(provider: str, region: str) -> RegionInfo | None:
    """Where `region` of `provider` is, from the default table.

    An exact match on the provider id and the provider's own region string; `None` when
    the table does not know the pair (never a guess from the region's name).

    Raises:
        ValueError: the shipped table is invalid (see `load_table`).
    """
    return _default().resolve(provider, region)


def regions_of(provider: str) -> list[RegionInfo]:
    """Every region of `provider` in the default table, sorted by region string.

    Empty for a provider the table does not know.

    Raises:
        ValueError: the shipped table is invalid (see `load_table`).
    """
    return _default().regions_of(provider)


def suggest(provider: str, region: str, n: int = 3) -> list[str]:
    """Up to `n` region strings of `provider` close to `region`, best first (difflib).

    For error messages only ("did you mean us-east-1?"); empty when nothing is close.

    Raises:
        ValueError: the shipped table is invalid (see `load_table`).
    """
    return _default().suggest(provider, region, n)
