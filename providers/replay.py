"""Replay: recorded market snapshots played as polls (demo, backtests, benchmarks).

## Snapshot format
A snapshot is a folder (named by its date, e.g. `2024-05-01` or `2026-05-08T1849`; names
sort chronologically) holding one CSV per cloud, `<cloud>.csv`, in the SkyPilot catalog v5
format: one row per instance type (per region, per zone where the cloud prices by zone),
columns by header name, in any order:

    InstanceType, AcceleratorName, AcceleratorCount, Price, SpotPrice, Region   (required)
    vCPUs, MemoryGiB, GpuInfo, AvailabilityZone                                 (optional)

`Price` / `SpotPrice` are USD per instance-hour on demand / on spot; empty or 0 means "no
offer in that market" (a placeholder, counted as skipped, never a free offer). The cloud
name is the file stem (`lambda.csv` is provider `lambda_cloud`). GCP prices accelerators and
host VMs in separate rows: `gcp.csv` holds accelerator rows (no InstanceType) and
`hosts/gcp.csv` the host-VM rows (see `combine_gcp`).

A `snapshots.csv` beside the snapshot folders (as in the market data set:
`date,commit,committed_at_utc,...,repository`, `date` = folder name) gives each snapshot its
provenance: every offer's `source` names the folder, the file and the commit, and
`snapshot_time` is the commit time.

## Semantics
A `<cloud>.csv` is one complete, successful poll of that cloud: its scope is the whole
provider, so an offer of that provider missing from the file is withdrawn. A cloud with no
file in the folder was not polled: its offers stay untouched. A file that cannot be read as
a whole (missing column, empty, no data rows, not CSV) is a failed poll of that provider
(a `ScopeError` naming file and line): nothing of it is ingested, nothing withdrawn. A bad
row (non-numeric or zero price, bad count) is skipped and counted by reason, with file:line
in `PollResult.notes`. Nothing priced is dropped for being unknown: a region the region
table does not know keeps its offer with a null location, an accelerator name the catalogue
does not know keeps its offer with `gpu_model` None and the name in `gpu_name_raw` (the
ingest counts both per provider as `unrecognised`).

Truth rules applied to every row (the same tables the live adapters use, `broker.sizes`):
a partial-GPU size carries its fraction and slice memory (`fraction`); a market the
provider does not sell a machine type in gives no offer (`markets_sold`, counted as
`not_sold:<market>`). Vast rows are normalised from the unreduced name inside their
InstanceType (`1x-H100_NVL-32-65536` -> H100-NVL), not from the reduced AcceleratorName.
"""

from __future__ import annotations

import ast
import csv
import re
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import Any, ClassVar

from broker import gpus, regions, sizes
from broker.config import Settings
from broker.domain import (
    Availability,
    Clock,
    Market,
    Offer,
    PollResult,
    Scope,
    ScopeError,
    to_count,
    to_price,
)
from providers.base import model_fields, place_fields, register

#: Catalog directory name -> broker provider id (only where they differ).
CLOUD_TO_PROVIDER: Mapping[str, str] = {"lambda": "lambda_cloud"}
REQUIRED_COLUMNS = (
    "InstanceType",
    "AcceleratorName",
    "AcceleratorCount",
    "Price",
    "SpotPrice",
    "Region",
)
MARKET_COLUMNS: tuple[tuple[Market, str], ...] = (
    (Market.ON_DEMAND, "Price"),
    (Market.SPOT, "SpotPrice"),
)
MAX_NOTES = 50

#: Accelerator counts the source catalog gets wrong, corrected from the provider's own size
#: table. Azure documents 8 H100 per ND96isr_H100_v5 ("ND H100 v5 series", learn.microsoft.com
#: /azure/virtual-machines/sizes/gpu-accelerated/ndh100v5-series); the SkyPilot catalog says 12.
COUNT_CORRECTIONS: Mapping[tuple[str, str], Decimal] = {
    ("azure", "Standard_ND96isr_H100_v5"): Decimal(8),
    ("azure", "Standard_ND96is_H100_v5"): Decimal(8),
}

#: GCP GPU machine shapes: host-VM name -> (accelerator as the catalog names it, count).
#: From GCP's accelerator-optimized machine tables (cloud.google.com/compute/docs/
#: accelerator-optimized-machines): A2 standard (a2-highgpu-Ng, a2-megagpu-16g: A100 40GB),
#: A2 ultra (A100 80GB), A3 high/edge (H100), A3 mega (H100, "H100-MEGA" in the catalog),
#: A3 ultra (H200), A4 (B200), G2 (L4: 1 GPU up to g2-standard-32, then 2/4/8).
GCP_HOST_SHAPES: tuple[tuple[re.Pattern[str], str, int | None], ...] = (
    (re.compile(r"^a2-highgpu-(\d+)g$"), "A100", None),
    (re.compile(r"^a2-megagpu-16g$"), "A100", 16),
    (re.compile(r"^a2-ultragpu-(\d+)g$"), "A100-80GB", None),
    (re.compile(r"^a3-highgpu-(\d+)g$"), "H100", None),
    (re.compile(r"^a3-edgegpu-8g(-nolssd)?$"), "H100", 8),
    (re.compile(r"^a3-megagpu-8g$"), "H100-MEGA", 8),
    (re.compile(r"^a3-ultragpu-8g(-nolssd)?$"), "H200", 8),
    (re.compile(r"^a4-highgpu-8g$"), "B200", 8),
    (re.compile(r"^g2-standard-(4|8|12|16|32)$"), "L4", 1),
    (re.compile(r"^g2-standard-24$"), "L4", 2),
    (re.compile(r"^g2-standard-48$"), "L4", 4),
    (re.compile(r"^g2-standard-96$"), "L4", 8),
)
#: Host families whose host rows carry price 0 because the accelerator row holds the whole
#: machine price (the data set's README, "GCP": a4-highgpu-8g hosts are 0.0 and the B200 row
#: carries the price). Elsewhere a 0 host price is a placeholder: no offer.
GCP_BUNDLED_HOST_PREFIXES = ("a4-",)


class SnapshotFileError(Exception):
    """A snapshot file that cannot be read as a whole; the message names file and line."""


@dataclass
class _Tally:
    """Skipped rows by reason, and a bounded sample of file:line notes."""

    skipped: Counter[str] = field(default_factory=Counter)
    notes: list[str] = field(default_factory=list)

    def skip(self, reason: str, where: str | None = None, detail: str = "") -> None:
        self.skipped[reason] += 1
        if where is not None and len(self.notes) < MAX_NOTES:
            self.notes.append(f"{where}: {reason}{': ' + detail if detail else ''}")


@dataclass(frozen=True, slots=True)
class _Row:
    where: str  # "path:line"
    values: Mapping[str, str]

    def get(self, column: str) -> str:
        return (self.values.get(column) or "").strip()


def provider_for(cloud: str) -> str:
    return CLOUD_TO_PROVIDER.get(cloud, cloud)


def _read_rows(path: Path) -> Iterator[_Row]:
    """Rows of one CSV by header name.

    Raises:
        SnapshotFileError: empty file, no data rows, missing required column, or not CSV.
    """
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            header = reader.fieldnames
            if not header:
                raise SnapshotFileError(f"{path}: empty file (no header line)")
            missing = [c for c in REQUIRED_COLUMNS if c not in header]
            if missing:
                raise SnapshotFileError(
                    f"{path} line 1: missing column{'s' if len(missing) > 1 else ''} "
                    f"{', '.join(repr(c) for c in missing)} (header: {', '.join(header)})"
                )
            n = 0
            for values in reader:
                values.pop(None, None)  # unquoted "V1,V2" extras (anycloud azure)
                n += 1
                yield _Row(f"{path}:{reader.line_num}", values)
            if n == 0:
                raise SnapshotFileError(f"{path} line 2: no data rows (header only)")
    except UnicodeDecodeError as exc:
        raise SnapshotFileError(f"{path}: not UTF-8 text ({exc.reason})") from exc
    except csv.Error as exc:
        raise SnapshotFileError(f"{path}: not valid CSV ({exc})") from exc


#: Clouds whose `Gpus[0].MemoryInfo.SizeInMiB` is the memory of all the instance's GPUs, not
#: of one: Vast (2x RTX 5090 rows say 65214 = 2 x 32607; 1x rows say 32607). Lambda and SCP
#: write the same shape (Size == Total with Count > 1) with a per-GPU value (8x V100: 16384),
#: so the rule is by cloud, not by shape.
TOTAL_MEMORY_CLOUDS = frozenset({"vast"})


@lru_cache(maxsize=4096)
def _gpu_memory_mib(gpu_info: str, provider: str) -> int | None:
    """Memory per GPU from a GpuInfo dict literal (`Gpus[0].MemoryInfo.SizeInMiB`, divided
    by `Gpus[0].Count` where the cloud writes the instance total there)."""
    if not gpu_info.startswith("{"):
        return None
    try:
        gpu = ast.literal_eval(gpu_info)["Gpus"][0]
        size = float(gpu["MemoryInfo"]["SizeInMiB"])
        if provider in TOTAL_MEMORY_CLOUDS:
            size /= float(gpu["Count"])
        return int(size)
    except (ValueError, SyntaxError, KeyError, IndexError, TypeError, ZeroDivisionError):
        return None


def _decimal(text: str) -> Decimal | None:
    if not text:
        return None
    try:
        d = Decimal(text)
    except InvalidOperation:
        return None
    return d if d.is_finite() else None


@lru_cache(maxsize=8192)
def _normalise(
    name: str, provider: str, instance_type: str, memory_mib: int | None
) -> gpus.GpuModel | None:
    return gpus.normalise(
        name, provider=provider, instance_type=instance_type, memory_mib=memory_mib
    )


def _price(row: _Row, column: str, tally: _Tally, market: Market) -> Decimal | None:
    text = row.get(column)
    if not text:
        tally.skip(f"empty_price:{market}")
        return None
    value = _decimal(text)
    if value is None or value < 0:
        tally.skip("bad_price", row.where, f"{column}={text!r}")
        return None
    if value == 0:
        tally.skip(f"zero_price:{market}")
        return None
    return value


@dataclass(frozen=True, slots=True)
class _Accel:
    """What a row says about its accelerator, resolved through the catalogues; `model` None
    (with `raw_name`) when the catalogue does not know the name, `region` None when the
    region table does not know the region (`region_name` is the row's own)."""

    model: gpus.GpuModel | None
    raw_name: str
    count: Decimal
    memory_gb: Decimal | None
    region_name: str
    region: regions.RegionInfo | None


#: Vast's replay InstanceType: `<count>x-<Vast's gpu_name, blanks as _>-<vCPUs>-<MiB>`
#: (shared/data README, "Vast names are reduced"); the middle part is the unreduced name.
_VAST_TYPE = re.compile(r"^\d+x-(?P<name>.+)-\d+-\d+$")


def _listing_name(provider: str, instance_type: str, name: str) -> str:
    """The accelerator name to normalise: Vast's full listing name where the InstanceType
    carries it (`H100_NVL`, `RTX_4070S_Ti`), else the catalog's AcceleratorName."""
    if provider == "vast":
        m = _VAST_TYPE.match(instance_type)
        if m:
            return m.group("name")
    return name


def _accelerator(row: _Row, provider: str, instance_type: str, tally: _Tally) -> _Accel | None:
    name = row.get("AcceleratorName")
    if not name:
        tally.skip("no_accelerator", row.where)
        return None
    region_name = row.get("Region")
    if not region_name:
        tally.skip("no_region", row.where)
        return None
    region = regions.resolve(provider, region_name)
    count = _decimal(row.get("AcceleratorCount"))
    if count is None or count <= 0:
        tally.skip("bad_count", row.where, f"AcceleratorCount={row.get('AcceleratorCount')!r}")
        return None
    memory_mib = _gpu_memory_mib(row.get("GpuInfo"), provider)
    name = _listing_name(provider, instance_type, name)
    model = _normalise(name, provider, instance_type, memory_mib)
    if model is not None and model.kind == gpus.AcceleratorKind.TPU:
        chips = gpus.tpu_chips(name)
        if chips is not None:
            count = Decimal(chips) * count  # the catalog counts slices; we count chips
    count = COUNT_CORRECTIONS.get((provider, instance_type), count)
    if memory_mib is not None:
        memory_gb: Decimal | None = (Decimal(memory_mib) / 1024).quantize(Decimal("0.01"))
    elif model is not None and model.memory_gb is not None:
        memory_gb = Decimal(model.memory_gb)
    else:
        memory_gb = None
    part = sizes.fraction(provider, instance_type)
    if part is not None and part.gpu_model in gpus.CATALOGUE:
        # The size table knows the size (a partial GPU, or a size whose count the catalog
        # gets wrong): its model, count and slice memory win.
        model = gpus.CATALOGUE[part.gpu_model]
        count = part.fraction
        if part.memory_gb is not None:
            memory_gb = part.memory_gb
        elif model.memory_gb is not None:
            memory_gb = Decimal(model.memory_gb)
    return _Accel(model, name, to_count(count), memory_gb, region_name, region)


def _sold(provider: str, instance_type: str, market: Market, tally: _Tally) -> bool:
    """False (counted as `not_sold:<market>`) when the provider does not sell the type in
    that market, whatever its price list says (`broker.sizes.markets_sold`)."""
    sold = sizes.markets_sold(provider, instance_type)
    if sold is None or market in sold:
        return True
    tally.skip(f"not_sold:{market}")
    return False


def _offer(
    provider: str,
    row: _Row,
    accel: _Accel,
    instance_type: str,
    market: Market,
    price: Decimal,
    *,
    zone: str | None,
    vcpus: Decimal | None,
    memory_gb: Decimal | None,
    raw: dict[str, Any],
) -> Offer:
    return Offer(
        provider=provider,
        region=accel.region_name,
        zone=zone or None,
        instance_type=instance_type,
        market=market,
        **model_fields(accel.model, accel.raw_name),
        gpu_count=accel.count,
        gpu_memory_gb=accel.memory_gb,
        vcpus=vcpus,
        memory_gb=memory_gb,
        **place_fields(accel.region),
        price_per_hour=to_price(price),
        availability=Availability.UNKNOWN,  # a price list says nothing about capacity
        raw=raw,
    )


def parse_cloud_rows(provider: str, rows: Iterator[_Row], tally: _Tally) -> list[Offer]:
    """Offers from the rows of one (non-GCP) cloud file: one per row and priced market."""
    offers: list[Offer] = []
    for row in rows:
        instance_type = row.get("InstanceType")
        if not instance_type:
            tally.skip("no_instance_type", row.where)
            continue
        accel = _accelerator(row, provider, instance_type, tally)
        if accel is None:
            continue
        vcpus, mem = _decimal(row.get("vCPUs")), _decimal(row.get("MemoryGiB"))
        for market, column in MARKET_COLUMNS:
            price = _price(row, column, tally, market)
            if price is not None and _sold(provider, instance_type, market, tally):
                offers.append(
                    _offer(
                        provider,
                        row,
                        accel,
                        instance_type,
                        market,
                        price,
                        zone=row.get("AvailabilityZone"),
                        vcpus=vcpus,
                        memory_gb=mem,
                        raw=dict(row.values),
                    )
                )
    return offers


def gcp_host_shape(instance_type: str) -> tuple[str, int] | None:
    """(accelerator name as the catalog writes it, count) a GCP GPU host VM carries."""
    for pattern, accel, count in GCP_HOST_SHAPES:
        m = pattern.match(instance_type)
        if m:
            return accel, count if count is not None else int(m.group(1))
    return None


def combine_gcp(accel_rows: Iterator[_Row], host_rows: list[_Row], tally: _Tally) -> list[Offer]:
    """GCP offers: what a user pays for a usable machine.

    GCP bills a GPU VM as the host machine type plus its attached accelerators, and the
    catalog lists them as separate rows. For every accelerator row (model, count, zone) we
    pair each host-VM row of the same zone whose machine shape carries exactly that many of
    that accelerator (`GCP_HOST_SHAPES`), and price the offer as host + accelerators, per
    market (spot = host spot + accelerator spot; both must be priced). Where GCP prices the
    machine in the accelerator row and the host row is 0 (A4), the host adds nothing. TPU
    rows need no host: a slice is priced whole. Accelerator rows with no host row in the
    zone (N1-attached T4/V100/P100/P4/K80, which the data set has no host prices for) give
    no offer: counted as `no_host_price`, never priced as the accelerator alone.
    """
    hosts: dict[tuple[str, str, int], list[_Row]] = {}
    for host in host_rows:
        shape = gcp_host_shape(host.get("InstanceType"))
        if shape is None:
            tally.skip("gcp_unknown_host_shape", host.where, host.get("InstanceType"))
            continue
        hosts.setdefault((host.get("AvailabilityZone"), *shape), []).append(host)

    offers: list[Offer] = []
    for row in accel_rows:
        name = row.get("AcceleratorName")
        if name.startswith("tpu-"):
            accel = _accelerator(row, "gcp", name, tally)
            if accel is None:
                continue
            for market, column in MARKET_COLUMNS:
                price = _price(row, column, tally, market)
                if price is not None and _sold("gcp", name, market, tally):
                    offers.append(
                        _offer(
                            "gcp",
                            row,
                            accel,
                            name,
                            market,
                            price,
                            zone=row.get("AvailabilityZone"),
                            vcpus=None,
                            memory_gb=None,
                            raw=dict(row.values),
                        )
                    )
            continue
        count = _decimal(row.get("AcceleratorCount"))
        if count is None or count <= 0 or count != int(count):
            tally.skip("bad_count", row.where, f"AcceleratorCount={row.get('AcceleratorCount')!r}")
            continue
        matches = hosts.get((row.get("AvailabilityZone"), name, int(count)), [])
        if not matches:
            tally.skip("no_host_price")
            continue
        accel_prices = {m: _price(row, column, tally, m) for m, column in MARKET_COLUMNS}
        for host in matches:
            host_type = host.get("InstanceType")
            accel = _accelerator(row, "gcp", host_type, tally)
            if accel is None:
                break
            bundled = host_type.startswith(GCP_BUNDLED_HOST_PREFIXES)
            for market, column in MARKET_COLUMNS:
                accel_price = accel_prices[market]
                if accel_price is None or not _sold("gcp", host_type, market, tally):
                    continue
                if bundled and _decimal(host.get(column)) == 0:
                    host_price: Decimal | None = Decimal(0)
                else:
                    host_price = _price(host, column, tally, market)
                if host_price is None:
                    continue
                raw = {"accelerator": dict(row.values), "host": dict(host.values)}
                offers.append(
                    _offer(
                        "gcp",
                        row,
                        accel,
                        host_type,
                        market,
                        accel_price + host_price,
                        zone=row.get("AvailabilityZone"),
                        vcpus=_decimal(host.get("vCPUs")),
                        memory_gb=_decimal(host.get("MemoryGiB")),
                        raw=raw,
                    )
                )
    return offers


def parse_cloud_file(path: Path, tally: _Tally) -> list[Offer]:
    """Offers of one `<cloud>.csv` (GCP: combined with `hosts/gcp.csv` beside it).

    Raises:
        SnapshotFileError: the file cannot be read as a whole.
    """
    provider = provider_for(path.stem)
    if provider == "gcp":
        host_path = path.parent / "hosts" / path.name
        host_rows = list(_read_rows(host_path)) if host_path.exists() else []
        return combine_gcp(_read_rows(path), host_rows, tally)
    return parse_cloud_rows(provider, _read_rows(path), tally)


def _dedupe(offers: list[Offer], tally: _Tally) -> list[Offer]:
    """One offer per key. Identical repeats (GCP lists every TPU row twice) are dropped;
    a repeat that disagrees keeps the first and is counted as a conflict."""
    seen: dict[str, Offer] = {}
    for offer in offers:
        first = seen.setdefault(offer.key, offer)
        if first is not offer:
            if first == offer:
                tally.skip("duplicate_row")
            else:
                tally.skip("conflicting_duplicate", offer.key, "differs from an earlier row")
    return list(seen.values())


@dataclass(frozen=True, slots=True)
class SnapshotInfo:
    """A snapshot's provenance, from the `snapshots.csv` beside its folder."""

    name: str
    commit: str
    committed_at: datetime
    repository: str
    catalog_path: str

    def describe(self) -> str:
        return (
            f"{self.repository}@{self.commit[:12]} {self.catalog_path}, committed "
            f"{self.committed_at:%Y-%m-%dT%H:%M:%SZ}"
        )


@lru_cache(maxsize=64)
def _snapshot_index(index: Path) -> dict[str, SnapshotInfo]:
    if not index.is_file():
        return {}
    out = {}
    with index.open(newline="", encoding="utf-8") as f:
        for i, row in enumerate(csv.DictReader(f), start=2):
            try:
                at = datetime.fromisoformat(row["committed_at_utc"].replace("Z", "+00:00"))
                out[row["date"]] = SnapshotInfo(
                    row["date"], row["commit"], at, row["repository"], row["catalog_path"]
                )
            except (KeyError, ValueError, AttributeError) as exc:
                raise SnapshotFileError(f"{index} line {i}: not a snapshot row ({exc})") from exc
    return out


def snapshot_info(folder: Path) -> SnapshotInfo | None:
    """The folder's line of `snapshots.csv` beside it, or None (no index, or not listed).

    Raises:
        SnapshotFileError: the index exists but a line cannot be read.
    """
    return _snapshot_index(folder.resolve().parent / INDEX_FILE).get(folder.name)


_FOLDER_TIME = re.compile(r"^(\d{4}-\d{2}-\d{2})(?:T(\d{2})(\d{2}))?$")


def snapshot_time(folder: Path) -> datetime:
    """When a snapshot was taken: its commit time where `snapshots.csv` knows it, else the
    time its name gives (`YYYY-MM-DD` = 00:00 UTC, or `YYYY-MM-DDTHHMM` UTC).

    Raises:
        ValueError: neither says (the folder name is not a date).
    """
    info = snapshot_info(folder)
    if info is not None:
        return info.committed_at
    m = _FOLDER_TIME.match(folder.name)
    if not m:
        raise ValueError(
            f"{folder}: folder name is not YYYY-MM-DD or YYYY-MM-DDTHHMM and no snapshots.csv "
            "beside it lists it, so it gives no snapshot time (drop --at-snapshot-times to "
            "stamp it now)"
        )
    day = datetime.strptime(m.group(1), "%Y-%m-%d").replace(tzinfo=UTC)
    return day + timedelta(hours=int(m.group(2) or 0), minutes=int(m.group(3) or 0))


def check_chronological(folders: Sequence[Path]) -> list[datetime]:
    """Each folder's `snapshot_time`, refusing folders given out of chronological order
    (played as polls they would end offers with last_seen before first_seen).

    Raises:
        ValueError: a folder has no time, or a folder is older than one before it (named).
    """
    times = [snapshot_time(f) for f in folders]
    for i in range(1, len(folders)):
        if times[i] < times[i - 1]:
            raise ValueError(
                f"snapshots out of chronological order: {folders[i]} "
                f"({times[i]:%Y-%m-%d %H:%M} UTC) comes after {folders[i - 1]} "
                f"({times[i - 1]:%Y-%m-%d %H:%M} UTC); give them oldest first"
            )
    return times


def _origin(path: Path) -> str:
    """Where a cloud file's offers come from: folder and file, and the commit if known."""
    files = path.name + (
        " + hosts/" + path.name if (path.parent / "hosts" / path.name).exists() else ""
    )
    info = snapshot_info(path.parent)
    where = f"replay of snapshot {path.parent.name}: {files}"
    return f"{where} ({info.describe()})" if info else where


def read_snapshot(folder: Path, fetched_at: datetime) -> PollResult:
    """One snapshot folder as one poll of every cloud that has a file in it."""
    tally = _Tally()
    offers: list[Offer] = []
    ok: list[Scope] = []
    errors: list[ScopeError] = []
    origins: dict[str, str] = {}
    for path in cloud_files(folder):
        scope = Scope(provider_for(path.stem))
        file_tally = _Tally()
        try:
            file_offers = _dedupe(parse_cloud_file(path, file_tally), file_tally)
            origins[scope.provider] = _origin(path)
        except (SnapshotFileError, OSError) as exc:
            errors.append(ScopeError(scope, "malformed", str(exc)))
            continue
        offers += file_offers
        ok.append(scope)
        tally.skipped.update(file_tally.skipped)
        tally.notes += file_tally.notes[: MAX_NOTES - len(tally.notes)]
    if not ok and not errors:
        errors.append(
            ScopeError(
                Scope("replay"), "malformed", f"{folder}: no <cloud>.csv files in this folder"
            )
        )
    return PollResult(
        offers=offers,
        scopes_ok=ok,
        scope_errors=errors,
        fetched_at=fetched_at,
        skipped=dict(tally.skipped),
        notes=tuple(tally.notes),
        origins=origins,
    )


def bundled_sample() -> Path:
    """The small sample market shipped in the package (`broker/sample/`)."""
    return Path(str(resources.files("broker") / "sample"))


#: The provenance index beside snapshot folders, never a cloud's file.
INDEX_FILE = "snapshots.csv"


def cloud_files(folder: Path) -> list[Path]:
    """The `<cloud>.csv` files of a snapshot folder, sorted (not the `snapshots.csv` index)."""
    return sorted(p for p in folder.glob("*.csv") if p.name != INDEX_FILE)


def list_snapshots(path: Path) -> list[Path]:
    """`path` itself if it holds `<cloud>.csv` files, else its snapshot subfolders, sorted.

    Raises:
        FileNotFoundError: the path does not exist or holds no snapshot.
    """
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such snapshot folder")
    if cloud_files(path):
        return [path]
    found = sorted(p for p in path.iterdir() if p.is_dir() and cloud_files(p))
    if not found:
        raise FileNotFoundError(f"{path}: holds no <cloud>.csv and no snapshot folders")
    return found


@register
class Replay:
    """The replay adapter: each poll plays the snapshot of the current time step.

    Stateless: step i = (now // step_s) mod n, so a running broker walks through the sample
    market one snapshot every `step_s` seconds and wraps around.
    """

    name: ClassVar[str] = "replay"

    def __init__(self, snapshots: list[Path], step_s: int, clock: Clock) -> None:
        if not snapshots:
            raise ValueError("replay needs at least one snapshot")
        self.snapshots, self.step_s, self.clock = snapshots, step_s, clock

    @classmethod
    def from_settings(cls, settings: Settings, clock: Clock) -> Replay:
        return cls(
            list_snapshots(settings.replay.path or bundled_sample()), settings.replay.step_s, clock
        )

    def current_snapshot(self) -> Path:
        step = int(self.clock().timestamp()) // self.step_s
        return self.snapshots[step % len(self.snapshots)]

    def fetch(self) -> PollResult:
        return read_snapshot(self.current_snapshot(), self.clock())
