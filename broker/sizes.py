"""Facts about a provider's instance sizes that its catalogue or API does not state plainly.

Owns two tables beside this module (provenance of every row in `data/README.md`):

- `data/fractions.csv`: sizes that carry a *part* of one accelerator (Azure NVv4 = 1/8 ... 1
  MI25, NVads A10 v5 = 1/6 ... 2 A10, AWS g6f = 1/8 ... 1/2 L4, ...), plus the whole sizes of
  those families and the few sizes whose API entry states no GPU count at all (Azure ND GB200
  v6, ND GB300 v6, ND96is MI300X v5). `fraction()` gives the GPUs per instance (the fraction)
  and the memory of the slice, so that price per GPU-hour = price / fraction.
- `data/markets.csv`: the markets a machine type is sold in, where a provider sells a type
  in fewer markets than its price list suggests (GCP A3 High 1g/2g/4g: Spot and Flex-start
  only). `markets_sold()` gives the set, or None when no restriction is known.

Leaves to others: reading provider payloads (the adapters in `providers/` and the replay
path apply these facts), the accelerator catalogue (`broker.gpus`; a row naming a model the
catalogue does not know yet is kept and reported by `unknown_models()`, never dropped), and
what a market means (`broker.domain.Market`).

Lookups are exact on (provider id, instance type), the instance type compared
case-insensitively (Azure matches size names without regard to case; no provider has two
sizes that differ only by case). `markets.csv` may also hold `fnmatch` patterns (`*`, `?`,
`[...]`, e.g. `a3-ultragpu-*`): an exact row wins, then the first matching pattern in file
order. Unknown is None, never a guess. Both files are read and validated once (a bad row
fails with its file and line). Pure: no database, no HTTP.
"""

from __future__ import annotations

import csv
import fnmatch
import logging
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from pathlib import Path

from broker import gpus
from broker.domain import Market, to_count

log = logging.getLogger(__name__)

DATA_DIR = Path(__file__).parent / "data"
DEFAULT_FRACTIONS = DATA_DIR / "fractions.csv"
DEFAULT_MARKETS = DATA_DIR / "markets.csv"
# Listed by hand, not derived from the dataclasses, so that a new field cannot silently
# change the file formats the tables are validated against.
_FRACTION_COLUMNS = ("provider", "instance_type", "gpu_model", "fraction", "memory_gb", "source")
_MARKET_COLUMNS = ("provider", "instance_type", "markets", "source")
_PROVIDER = re.compile(r"^[a-z][a-z0-9_]*$")
_PATTERN_CHARS = frozenset("*?[")


@dataclass(frozen=True, slots=True)
class Fraction:
    """One size carrying `fraction` of a `gpu_model` (canonical name in `broker.gpus`),
    with `memory_gb` of accelerator memory; `source` is the public page that says so.

    Attributes:
        provider: the broker's provider id (`azure`, `aws`).
        instance_type: the size as the provider spells it.
        gpu_model: canonical catalogue name (`A10`, `MI25`, `L4`, `GB200`).
        fraction: GPUs per instance as a three-decimal count, the unit of
            `Offer.gpu_count`: 0.167 for 1/6 of a GPU, 1 or more for whole sizes.
        memory_gb: accelerator memory per GPU unit counted by `fraction`, in GB (GiB as
            providers report it): the slice's memory for a partial size (4 for 1/6 of an
            A10), each GPU's memory for a whole size; None where the source gives no
            unambiguous figure (then the catalogue's per-GPU memory applies).
        source: public URL or repository path the row comes from.
    """

    provider: str
    instance_type: str
    gpu_model: str
    fraction: Decimal
    memory_gb: Decimal | None
    source: str


@dataclass(frozen=True, slots=True)
class MarketsRow:
    """The markets one machine type (or `fnmatch` pattern) is sold in."""

    provider: str
    instance_type: str
    markets: frozenset[Market]
    source: str

    @property
    def is_pattern(self) -> bool:
        return any(c in _PATTERN_CHARS for c in self.instance_type)


class FractionTable:
    """The rows of `fractions.csv`, by (provider, instance type); built by `load_fractions`."""

    def __init__(self, rows: Sequence[Fraction], unknown: Sequence[str] = ()) -> None:
        self.rows = tuple(rows)
        #: one message per row whose `gpu_model` the catalogue does not know (file and line).
        self.unknown = tuple(unknown)
        self._by_key = {(r.provider, r.instance_type.casefold()): r for r in rows}

    def get(self, provider: str, instance_type: str) -> Fraction | None:
        return self._by_key.get((provider, instance_type.casefold()))

    def __iter__(self) -> Iterator[Fraction]:
        return iter(self.rows)

    def __len__(self) -> int:
        return len(self.rows)


class MarketsTable:
    """The rows of `markets.csv`: exact rows by key, patterns in file order."""

    def __init__(self, rows: Sequence[MarketsRow]) -> None:
        self.rows = tuple(rows)
        self._exact = {
            (r.provider, r.instance_type.casefold()): r for r in rows if not r.is_pattern
        }
        self._patterns = [r for r in rows if r.is_pattern]

    def row_for(self, provider: str, instance_type: str) -> MarketsRow | None:
        """The exact row, else the first pattern row matching, else None."""
        folded = instance_type.casefold()
        row = self._exact.get((provider, folded))
        if row is not None:
            return row
        for r in self._patterns:
            if r.provider == provider and fnmatch.fnmatchcase(folded, r.instance_type.casefold()):
                return r
        return None

    def get(self, provider: str, instance_type: str) -> frozenset[Market] | None:
        row = self.row_for(provider, instance_type)
        return row.markets if row is not None else None

    def __len__(self) -> int:
        return len(self.rows)


# --------------------------------------------------------------------------- parsing


def _read(path: Path, columns: Sequence[str]) -> Iterator[tuple[str, dict[str, str]]]:
    """(`file line N`, fields) of every row, header and field shapes checked."""
    with path.open(newline="", encoding="utf-8") as f:
        reader = csv.DictReader(f)
        found = list(reader.fieldnames or [])
        if sorted(found) != sorted(columns) or len(found) != len(set(found)):
            raise ValueError(
                f"{path} line 1: header must name the columns {', '.join(columns)} once each "
                f"(found: {', '.join(found) or 'none'})"
            )
        for rec in reader:
            where = f"{path} line {reader.line_num}"
            if rec.get(None) is not None:
                raise ValueError(f"{where}: more fields than the header names")
            values: dict[str, str] = {}
            for col in columns:
                value = rec.get(col)
                if not isinstance(value, str):
                    raise ValueError(f"{where}: missing field {col!r}")
                if value != value.strip():
                    raise ValueError(f"{where}: field {col} has leading or trailing blanks")
                values[col] = value
            if not _PROVIDER.match(values["provider"]):
                raise ValueError(f"{where}: provider {values['provider']!r} is not a provider id")
            if not values["instance_type"] or not values["source"]:
                raise ValueError(f"{where}: instance_type and source must not be empty")
            yield where, values


def _number(where: str, column: str, text: str) -> Decimal:
    try:
        value = Decimal(text)
    except InvalidOperation:
        raise ValueError(f"{where}: {column} {text!r} is not a number") from None
    if not value.is_finite() or value <= 0:
        raise ValueError(f"{where}: {column} {text!r} must be a positive number")
    return value


def _fraction_row(where: str, v: Mapping[str, str]) -> tuple[Fraction, str | None]:
    """A row as a `Fraction`, plus a report when its model is not in the catalogue.

    Raises:
        ValueError: a bad value; a model name that is not canonical but that the catalogue
            knows under another spelling (`a10`, `Radeon MI25`) is bad, not unknown.
    """
    if any(c in _PATTERN_CHARS for c in v["instance_type"]):
        raise ValueError(f"{where}: fractions.csv takes exact instance types, not patterns")
    fraction = _number(where, "fraction", v["fraction"])
    if to_count(fraction) != fraction:
        raise ValueError(
            f"{where}: fraction {v['fraction']!r} has more than three decimals "
            f"(write {to_count(fraction)}, as broker.domain.to_count keeps it)"
        )
    memory = _number(where, "memory_gb", v["memory_gb"]) if v["memory_gb"] else None
    model = v["gpu_model"]
    unknown: str | None = None
    if model not in gpus.CATALOGUE:
        known = gpus.normalise(model) if model else None
        if not model or known is not None:
            better = f"; use {known.name!r}" if known is not None else ""
            raise ValueError(f"{where}: gpu_model {model!r} is not a canonical name{better}")
        unknown = f"{where}: gpu_model {model!r} is not in broker.gpus.CATALOGUE"
    row = Fraction(v["provider"], v["instance_type"], model, fraction, memory, v["source"])
    return row, unknown


def load_fractions(path: Path = DEFAULT_FRACTIONS) -> FractionTable:
    """Parse and validate a fractions table (header `provider,instance_type,gpu_model,
    fraction,memory_gb,source`, any column order).

    A row whose `gpu_model` the catalogue does not know (yet) is kept, listed in the
    table's `unknown` and logged once: the catalogue is edited apart from this table, and a
    missing entry must show up as the adapters' unrecognised offers, not hide the size.

    Raises:
        OSError: the file cannot be read.
        ValueError: a bad header or row (empty key or source, non-positive or non-numeric
            fraction or memory, a fraction with more than three decimals, a pattern, a
            non-canonical model name, a duplicate (provider, instance type)); the message
            names the file and line.
    """
    rows: list[Fraction] = []
    unknown: list[str] = []
    first: dict[tuple[str, str], str] = {}
    for where, values in _read(path, _FRACTION_COLUMNS):
        row, problem = _fraction_row(where, values)
        key = (row.provider, row.instance_type.casefold())
        if key in first:
            raise ValueError(
                f"{where}: duplicate row for {key[0]} {row.instance_type!r} (first at {first[key]})"
            )
        first[key] = where
        rows.append(row)
        if problem is not None:
            unknown.append(problem)
            log.warning("sizes.unknown_gpu_model %s", problem)
    return FractionTable(rows, unknown)


def _markets(where: str, text: str) -> frozenset[Market]:
    names = text.split()
    valid = {m.value for m in Market}
    bad = [n for n in names if n not in valid]
    if bad or len(names) != len(set(names)):
        raise ValueError(
            f"{where}: markets {text!r} must be distinct names among {', '.join(sorted(valid))}"
            " separated by blanks"
        )
    return frozenset(Market(n) for n in names)


def load_markets(path: Path = DEFAULT_MARKETS) -> MarketsTable:
    """Parse and validate a markets table (header `provider,instance_type,markets,source`,
    any column order). `markets` lists broker market names separated by blanks; it may be
    empty (a type sold in no market the broker models, e.g. Flex-start only).

    Raises:
        OSError: the file cannot be read.
        ValueError: a bad header or row (empty key or source, an unknown or repeated market,
            a duplicate (provider, instance type or pattern)); the message names the file and
            line.
    """
    rows: list[MarketsRow] = []
    first: dict[tuple[str, str], str] = {}
    for where, v in _read(path, _MARKET_COLUMNS):
        row = MarketsRow(
            v["provider"], v["instance_type"], _markets(where, v["markets"]), v["source"]
        )
        key = (row.provider, row.instance_type.casefold())
        if key in first:
            raise ValueError(
                f"{where}: duplicate row for {key[0]} {row.instance_type!r} (first at {first[key]})"
            )
        first[key] = where
        rows.append(row)
    return MarketsTable(rows)


# --------------------------------------------------------------------------- lookups


@lru_cache(maxsize=1)
def fractions_table() -> FractionTable:
    """The shipped `data/fractions.csv`, parsed once (raises as `load_fractions`)."""
    return load_fractions(DEFAULT_FRACTIONS)


@lru_cache(maxsize=1)
def markets_table() -> MarketsTable:
    """The shipped `data/markets.csv`, parsed once (raises as `load_markets`)."""
    return load_markets(DEFAULT_MARKETS)


def fraction(provider: str, instance_type: str) -> Fraction | None:
    """The size-table entry of a size (a partial size, a whole size of a partial family, or a
    size whose API states no GPU count), or None when the table does not list it.

    Raises:
        ValueError: the shipped table is invalid (see `load_fractions`).
    """
    return fractions_table().get(provider, instance_type)


def markets_sold(provider: str, instance_type: str) -> frozenset[Market] | None:
    """The markets `instance_type` is sold in, or None when the table knows no restriction
    (every market the provider prices it in).

    Raises:
        ValueError: the shipped table is invalid (see `load_markets`).
    """
    return markets_table().get(provider, instance_type)


def unknown_models() -> tuple[str, ...]:
    """One message (file, line, name) per shipped fractions row whose `gpu_model` is not in
    `broker.gpus.CATALOGUE`; empty when every model is known."""
    return fractions_table().unknown
