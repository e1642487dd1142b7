"""Replaying the real market data set through the store, on SQLite and PostgreSQL.

The expected events are computed here from the CSVs with a deliberately separate, naive
reading (csv module, a literal GCP host table), not with the replay provider's code.
"""

from __future__ import annotations

import csv
from collections import Counter
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.db import session_scope
from broker.domain import Market, PollResult, Scope, ScopeError
from broker.models import MarketEvent, StoredOffer
from broker.offers import OfferQuery, count_offers, ingest_poll, list_offers
from broker.polling import replay_results
from providers.replay import read_snapshot

Q = Decimal("0.000001")
T0 = datetime(2026, 11, 23, 12, 0, tzinfo=UTC)

# GCP host machine types seen in the data set -> (accelerator as the catalog names it, count),
# written out by hand from GCP's machine tables.
GCP_HOSTS: dict[str, tuple[str, int]] = {
    "a2-highgpu-1g": ("A100", 1),
    "a2-highgpu-2g": ("A100", 2),
    "a2-highgpu-4g": ("A100", 4),
    "a2-highgpu-8g": ("A100", 8),
    "a2-megagpu-16g": ("A100", 16),
    "a2-ultragpu-1g": ("A100-80GB", 1),
    "a2-ultragpu-2g": ("A100-80GB", 2),
    "a2-ultragpu-4g": ("A100-80GB", 4),
    "a2-ultragpu-8g": ("A100-80GB", 8),
    "a3-highgpu-1g": ("H100", 1),
    "a3-highgpu-2g": ("H100", 2),
    "a3-highgpu-4g": ("H100", 4),
    "a3-highgpu-8g": ("H100", 8),
    "a3-edgegpu-8g": ("H100", 8),
    "a3-edgegpu-8g-nolssd": ("H100", 8),
    "a3-megagpu-8g": ("H100-MEGA", 8),
    "a3-ultragpu-8g": ("H200", 8),
    "a3-ultragpu-8g-nolssd": ("H200", 8),
    "a4-highgpu-8g": ("B200", 8),
    "g2-standard-4": ("L4", 1),
    "g2-standard-8": ("L4", 1),
    "g2-standard-12": ("L4", 1),
    "g2-standard-16": ("L4", 1),
    "g2-standard-32": ("L4", 1),
    "g2-standard-24": ("L4", 2),
    "g2-standard-48": ("L4", 4),
    "g2-standard-96": ("L4", 8),
}
MARKETS = (("on_demand", "Price"), ("spot", "SpotPrice"))
# Azure sizes whose catalog count is wrong -> GPUs per instance, written out by hand from
# Microsoft's size tables: partial GPUs (NVv4: 1/8 ... 1 MI25; NVads A10 v5: 1/6 ... 2 A10,
# rounded as counts are, 3 places) and ND H100 v5 (8 GPUs; the SkyPilot files say 12).
GPUS_PER_INSTANCE: dict[str, Decimal] = {
    "Standard_ND96isr_H100_v5": Decimal(8),
    "Standard_ND96is_H100_v5": Decimal(8),
    "Standard_NV4as_v4": Decimal("0.125"),
    "Standard_NV8as_v4": Decimal("0.25"),
    "Standard_NV16as_v4": Decimal("0.5"),
    "Standard_NV32as_v4": Decimal(1),
    "Standard_NV6ads_A10_v5": Decimal("0.167"),
    "Standard_NV12ads_A10_v5": Decimal("0.333"),
    "Standard_NV18ads_A10_v5": Decimal("0.5"),
}
# GCP machine types sold only as Spot / Flex-start / reservations, never on demand (GCP's
# accelerator-optimized machines page, consumption options by machine type).
NOT_ON_DEMAND = ("a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g", "a3-ultragpu-", "a4-")


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _price(text: str | None) -> Decimal | None:
    if not text or not text.strip():
        return None
    d = Decimal(text.strip())
    return d.quantize(Q) if d > 0 else None


class Naive(NamedTuple):
    """An offer as this test reads it from the CSV, by hand."""

    price: Decimal
    accelerator: str  # AcceleratorName as written in the file
    gpus: Decimal
    region: str
    vcpus: str = ""
    memory: str = ""

    @property
    def spec(self) -> tuple[Decimal, Decimal | None, Decimal | None]:
        def num(text: str) -> Decimal | None:
            return Decimal(text) if text.strip() else None

        return self.gpus, num(self.vcpus), num(self.memory)


def _sold(instance_type: str, market: str) -> bool:
    return market != "on_demand" or not instance_type.startswith(NOT_ON_DEMAND)


def expected_offers(folder: Path) -> dict[str, dict[str, Naive]]:
    """provider -> {offer key: Naive} for each cloud file in `folder`."""
    out: dict[str, dict[str, Naive]] = {}
    for path in sorted(folder.glob("*.csv")):
        provider = "lambda_cloud" if path.stem == "lambda" else path.stem
        offers: dict[str, Naive] = {}
        if provider == "gcp":
            hosts: list[dict[str, str]] = []
            if (folder / "hosts" / "gcp.csv").exists():
                hosts = _rows(folder / "hosts" / "gcp.csv")
            for row in _rows(path):
                name, zone = row["AcceleratorName"], row["AvailabilityZone"]
                if name.startswith("tpu-"):
                    for market, col in MARKETS:
                        p = _price(row[col])
                        if p is not None:
                            key = f"gcp/{row['Region']}/{zone}/{name}/{market}"
                            offers.setdefault(key, Naive(p, name, Decimal(1), row["Region"]))
                    continue
                count = int(Decimal(row["AcceleratorCount"]))
                for host in hosts:
                    if host["AvailabilityZone"] != zone:
                        continue
                    if GCP_HOSTS.get(host["InstanceType"]) != (name, count):
                        continue
                    for market, col in MARKETS:
                        if not _sold(host["InstanceType"], market):
                            continue
                        accel = _price(row[col])
                        raw_host = (host[col] or "").strip()
                        if (
                            host["InstanceType"].startswith("a4-")
                            and raw_host
                            and Decimal(raw_host) == 0
                        ):
                            host_price: Decimal | None = Decimal(0)
                        else:
                            host_price = _price(raw_host)
                        if accel is not None and host_price is not None:
                            key = f"gcp/{row['Region']}/{zone}/{host['InstanceType']}/{market}"
                            offers.setdefault(
                                key,
                                Naive(
                                    accel + host_price,
                                    name,
                                    Decimal(count),
                                    row["Region"],
                                    host["vCPUs"],
                                    host["MemoryGiB"],
                                ),
                            )
        else:
            for row in _rows(path):
                zone = (row.get("AvailabilityZone") or "").strip()
                where = f"{row['Region']}/{zone}" if zone else row["Region"]
                for market, col in MARKETS:
                    p = _price(row[col])
                    if p is not None:
                        offers.setdefault(
                            f"{provider}/{where}/{row['InstanceType']}/{market}",
                            Naive(
                                p,
                                row["AcceleratorName"],
                                GPUS_PER_INSTANCE.get(
                                    row["InstanceType"], Decimal(row["AcceleratorCount"])
                                ),
                                row["Region"],
                                row.get("vCPUs") or "",
                                row.get("MemoryGiB") or "",
                            ),
                        )
        out[provider] = offers
    return out


def expected_events(folders: list[Path]) -> tuple[Counter[tuple[str, str]], int]:
    """(Counter of (event type, offer key), number of current offers) after replaying."""
    active: dict[str, dict[str, Naive]] = {}
    events: Counter[tuple[str, str]] = Counter()
    for folder in folders:
        for provider, offers in expected_offers(folder).items():
            now = dict(offers)
            before = active.get(provider, {})
            for key, o in now.items():
                if key not in before:
                    events["offer_appeared", key] += 1
                    continue
                if before[key].price != o.price:
                    events["price_changed", key] += 1
                if before[key].spec != o.spec:
                    events["spec_changed", key] += 1
            for key in before.keys() - now.keys():
                events["offer_withdrawn", key] += 1
            active[provider] = now
    return events, sum(len(v) for v in active.values())


def stored_events(engine: Engine) -> list[MarketEvent]:
    with Session(engine) as s:
        return list(s.exec(select(MarketEvent).order_by(col(MarketEvent.id))).all())


def test_replaying_every_snapshot_yields_the_independent_diff(
    engine: Engine, snapshot_dirs: list[Path]
) -> None:
    clock_ticks = iter(T0 + timedelta(seconds=i) for i in range(10_000))
    summary = replay_results(
        engine,
        ((f.name, read_snapshot(f, fetched_at=next(clock_ticks))) for f in snapshot_dirs),
        clock=lambda: T0,
    )
    want, current = expected_events(snapshot_dirs)
    got = Counter(
        (e.type, e.offer_key)
        for e in stored_events(engine)
        if e.type.startswith(("offer_", "price_", "spec_"))
    )
    assert got == want
    assert summary.snapshots == len(snapshot_dirs)
    assert summary.offers == current
    by_type = Counter(t for t, _ in want.elements())
    assert summary.as_dict()["events"] == {
        "offer_appeared": by_type["offer_appeared"],
        "offer_withdrawn": by_type["offer_withdrawn"],
        "price_changed": by_type["price_changed"],
        "availability_changed": 0,  # price lists say nothing about capacity
        "spec_changed": by_type["spec_changed"],
    }
    assert summary.errors == []
    # Event ids are gap-free and increasing in commit order.
    ids = [e.id for e in stored_events(engine)]
    assert ids == list(range(1, len(ids) + 1))


def test_same_snapshot_twice_yields_no_events(engine: Engine, snapshot_dirs: list[Path]) -> None:
    folder = snapshot_dirs[-1]
    first = replay_results(engine, [("a", read_snapshot(folder, fetched_at=T0))])
    assert first.events["offer_appeared"] > 3000
    n_events = len(stored_events(engine))
    again = replay_results(engine, [("b", read_snapshot(folder, T0 + timedelta(minutes=5)))])
    assert sum(again.events.values()) == 0
    assert len(stored_events(engine)) == n_events
    assert again.offers == first.offers
    # The second poll refreshed last_seen of every offer it saw.
    with Session(engine) as s:
        seen = {o.last_seen for o in s.exec(select(StoredOffer)).all()}
    assert seen == {T0 + timedelta(minutes=5)}


def _snapshot(engine: Engine) -> dict[str, Any]:
    with Session(engine) as s:
        offers = {
            o.key: (
                o.price_per_hour,
                o.price_per_gpu_hour,
                o.gpu_model,
                o.gpu_count,
                o.active,
                o.jurisdiction,
                o.last_seen,
            )
            for o in s.exec(select(StoredOffer)).all()
        }
        events = [
            (e.id, e.type, e.offer_key, e.before, e.after)
            for e in s.exec(select(MarketEvent).order_by(col(MarketEvent.id))).all()
        ]
    return {"offers": offers, "events": events}


@pytest.mark.postgres
def test_postgresql_and_sqlite_give_identical_results(
    sqlite_engine: Engine, pg_database: str, snapshot_dirs: list[Path]
) -> None:
    from broker.db import make_engine
    from tests.conftest import _reset_pg

    pg = make_engine(url=pg_database)
    _reset_pg(pg)
    folders = snapshot_dirs[-4:]
    for eng in (sqlite_engine, pg):
        ticks = iter(T0 + timedelta(hours=i) for i in range(100))
        replay_results(eng, ((f.name, read_snapshot(f, next(ticks))) for f in folders))
    a, b = _snapshot(sqlite_engine), _snapshot(pg)
    assert a["offers"] == b["offers"]
    assert a["events"] == b["events"]
    pg.dispose()


def test_failed_scope_withdraws_nothing_and_turns_stale_after_ttl(
    engine: Engine, snapshot_dirs: list[Path]
) -> None:
    aws = [f for f in snapshot_dirs if (f / "aws.csv").exists()]
    first, second = read_snapshot(aws[-2], T0), read_snapshot(aws[-1], T0 + timedelta(hours=1))
    first = replace(
        first, offers=[o for o in first.offers if o.provider == "aws"], scopes_ok=[Scope("aws")]
    )
    with session_scope(engine) as s:
        ingest_poll(s, first, source="test")
    # Second poll: aws region us-east-1 failed (timeout), every other aws region succeeded.
    regions = {o.region for o in second.offers if o.provider == "aws"}
    failed = "us-east-1"
    partial = PollResult(
        offers=[o for o in second.offers if o.provider == "aws" and o.region != failed],
        scopes_ok=[Scope("aws", r) for r in sorted(regions - {failed})],
        scope_errors=[ScopeError(Scope("aws", failed), "timeout", "read timed out after 10s")],
        fetched_at=second.fetched_at,
    )
    with session_scope(engine) as s:
        outcome = ingest_poll(s, partial, source="test")
    assert outcome.status == "degraded"
    withdrawn = [e for e in stored_events(engine) if e.type == "offer_withdrawn"]
    assert withdrawn, "the real 2023-12-31 -> 2024-05-01 AWS diff withdraws offers elsewhere"
    assert not [e for e in withdrawn if e.offer_key and e.offer_key.startswith(f"aws/{failed}/")]
    assert any(e.type == "provider_degraded" and e.provider == "aws" for e in stored_events(engine))

    ttl = timedelta(hours=2)
    first_east = {o.key for o in first.offers if o.provider == "aws" and o.region == failed}
    query = OfferQuery(providers=("aws",), regions=(failed,))
    with Session(engine) as s:
        # Within the TTL the failed region's last good offers are still served, fresh.
        fresh = list_offers(s, query, now=T0 + timedelta(hours=1), stale_after=ttl)
        assert {r["key"] for r in fresh} == first_east
        assert not any(r["stale"] for r in fresh)
        # Past the TTL since they were last seen (T0) they are stale: hidden by default,
        # shown and flagged with include_stale; other regions (seen at T0+1h) stay fresh.
        later = T0 + ttl + timedelta(minutes=1)
        assert list_offers(s, query, now=later, stale_after=ttl) == []
        stale = list_offers(
            s,
            OfferQuery(providers=("aws",), regions=(failed,), include_stale=True),
            now=later,
            stale_after=ttl,
        )
        assert {r["key"] for r in stale} == first_east and all(r["stale"] for r in stale)
        assert count_offers(s, now=later, stale_after=ttl, stale=True) == len(first_east)

    # The next good poll of the region recovers: no longer stale, provider recovered.
    full = read_snapshot(aws[-1], T0 + timedelta(hours=3))
    with session_scope(engine) as s:
        outcome = ingest_poll(s, full, source="test")
    assert outcome.status == "ok"
    assert any(e.type == "provider_recovered" for e in stored_events(engine))
    with Session(engine) as s:
        rows = list_offers(s, query, now=T0 + timedelta(hours=3), stale_after=ttl)
    assert rows and not any(r["stale"] for r in rows)


def test_offer_query_filters_and_sorts(
    engine: Engine, data_dir: Path, snapshot_dirs: list[Path]
) -> None:
    folder = snapshot_dirs[-1]  # 2026-05-20: GCP has EU H100 spot under $4/GPU-h
    replay_results(engine, [("s", read_snapshot(folder, T0))])
    from broker.gpus import resolve_query

    query = OfferQuery(
        gpu_models=resolve_query("H100"),
        jurisdictions=("eu",),
        markets=(Market.SPOT,),
        max_price_per_gpu_hour=Decimal(4),
    )
    with Session(engine) as s:
        rows = list_offers(s, query, now=T0, stale_after=timedelta(hours=1))
    prices = [r["price_per_gpu_hour"] for r in rows]
    assert prices == sorted(prices)
    # Independent expectation: the naive CSV reading, the data set's own region file.
    with (data_dir / "regions.csv").open(newline="") as f:
        eu = {(r["provider"], r["region"]) for r in csv.DictReader(f) if r["jurisdiction"] == "EU"}
    want = {
        key
        for provider, offers in expected_offers(folder).items()
        for key, o in offers.items()
        if key.endswith("/spot")
        and o.accelerator in {"H100", "H100-MEGA"}
        and ("lambda" if provider == "lambda_cloud" else provider, o.region) in eu
        and (o.price / o.gpus).quantize(Q) <= 4
    }
    assert want, "the data set has EU H100 spot offers under $4/GPU-h at 2026-05-20"
    assert {r["key"] for r in rows} == want
