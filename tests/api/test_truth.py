"""Numbers true to the market (issue 14), over the real data set, through the store and API.

Every expectation is computed here from the CSVs (csv module) or written by hand from the
provider's own documentation, not with the replay provider's code.
"""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine

from broker.domain import Market
from broker.polling import replay_results
from broker.scoring import MarketSnapshot, RequestSpec, Residency, recommend
from providers import replay
from tests.api.conftest import Keys, TestClient, bearer
from tests.unit.test_scoring import to_market


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def _only(data_dir: Path, tmp_path: Path, snapshots: list[str], cloud: str) -> list[Path]:
    """Copies of `snapshots` holding only `<cloud>.csv` (+ hosts), with the data set's
    snapshots.csv beside them."""
    out = []
    for name in snapshots:
        src = data_dir / "offers" / name
        dst = tmp_path / name
        dst.mkdir()
        shutil.copy(src / f"{cloud}.csv", dst / f"{cloud}.csv")
        if (src / "hosts" / f"{cloud}.csv").exists():
            (dst / "hosts").mkdir()
            shutil.copy(src / "hosts" / f"{cloud}.csv", dst / "hosts" / f"{cloud}.csv")
        out.append(dst)
    shutil.copy(data_dir / "snapshots.csv", tmp_path / "snapshots.csv")
    return out


def _replay(engine: Engine, folders: list[Path]) -> None:
    times = replay.check_chronological(folders)
    replay_results(
        engine,
        ((f.name, replay.read_snapshot(f, t)) for f, t in zip(folders, times, strict=True)),
        clock=lambda: times[-1],
    )


def _offers(client: TestClient, keys: Keys, **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        q = {"limit": 500, "include_stale": "true", **params}
        if cursor:
            q["cursor"] = cursor
        r = client.get("/v1/offers", params=q, headers=bearer(keys.viewer))
        assert r.status_code == 200, r.text
        out += r.json()["data"]
        cursor = r.json()["next_cursor"]
        if not cursor:
            return out


SKYPILOT = ["2022-12-31", "2023-06-30", "2023-12-31", "2024-05-01"]


def test_history_shows_a_real_withdrawal_gap_and_where_each_point_came_from(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    folders = _only(data_dir, tmp_path, SKYPILOT, "aws")
    # Independently: on-demand AWS offers present, then absent, then present again.
    present = []
    for name in SKYPILOT:
        rows = _rows(data_dir / "offers" / name / "aws.csv")
        present.append(
            {
                f"aws/{r['Region']}/{r['AvailabilityZone']}/{r['InstanceType']}/on_demand"
                for r in rows
                if r["Price"].strip() and Decimal(r["Price"]) > 0
            }
        )
    gaps = [
        (key, i)
        for i in range(1, len(SKYPILOT) - 1)
        for key in present[i - 1] - present[i]
        if any(key in later for later in present[i + 1 :])
    ]
    assert gaps, "the data set has an AWS offer that left and came back"
    key, gone = gaps[0]
    back = next(j for j in range(gone + 1, len(SKYPILOT)) if key in present[j])
    committed = {r["date"]: r["committed_at_utc"] for r in _rows(data_dir / "snapshots.csv")}

    _replay(engine, folders)
    r = client.get(f"/v1/offers/{key}/history", headers=bearer(keys.viewer))
    assert r.status_code == 200, r.text
    points = r.json()["data"]
    kinds = [p["kind"] for p in points]
    assert kinds[0] == "appeared" and "withdrawn" in kinds and "returned" in kinds
    withdrawn = next(p for p in points if p["kind"] == "withdrawn")
    returned = next(p for p in points if p["kind"] == "returned")
    # The gap runs from the first snapshot without it to the first one with it again,
    # stamped with the commit times of snapshots.csv (not midnight of the folder's date).
    assert withdrawn["at"] == committed[SKYPILOT[gone]]
    assert returned["at"] == committed[SKYPILOT[back]]
    for p in points:
        assert p["source"]["origin"].startswith("replay of snapshot ")
        assert "skypilot-org/skypilot-catalog@" in p["source"]["origin"]
        poll = client.get(f"/v1/polls/{p['source']['poll_id']}", headers=bearer(keys.viewer))
        assert poll.status_code == 200 and poll.json()["fetched_at"] == p["source"]["fetched_at"]
    assert client.get("/v1/polls/999999", headers=bearer(keys.viewer)).status_code == 404


def test_snapshots_out_of_order_are_refused_naming_them(data_dir: Path, tmp_path: Path) -> None:
    folders = _only(data_dir, tmp_path, ["2023-06-30", "2022-12-31"], "aws")
    with pytest.raises(ValueError, match=r"2022-12-31.*comes after.*2023-06-30"):
        replay.check_chronological(folders)


def test_partial_sizes_are_priced_per_whole_gpu(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    """Azure NVv4 sizes carry 1/8 ... 1 of an MI25 and NVads A10 v5 1/6 ... 1 of an A10
    (Microsoft's size tables): the per-GPU price is the price of a whole GPU."""
    fractions = {
        "Standard_NV4as_v4": (Decimal("0.125"), Decimal(2)),
        "Standard_NV6ads_A10_v5": (Decimal("0.167"), Decimal(4)),
    }
    [folder] = _only(data_dir, tmp_path, ["2024-05-01"], "azure")
    _replay(engine, [folder])
    offers = {o["key"]: o for o in _offers(client, keys)}
    checked = 0
    for row in _rows(folder / "azure.csv"):
        part = fractions.get(row["InstanceType"])
        if part is None or not row["Price"].strip() or Decimal(row["Price"]) == 0:
            continue
        o = offers[f"azure/{row['Region']}/{row['InstanceType']}/on_demand"]
        assert Decimal(str(o["gpu_count"])) == part[0]
        assert Decimal(str(o["gpu_memory_gb"])) == part[1]
        want = (Decimal(row["Price"]) / part[0]).quantize(Decimal("0.000001"))
        assert Decimal(str(o["price_per_gpu_hour"])) == want
        checked += 1
    assert checked >= 4
    cheapest = _offers(client, keys, market="on_demand")[0]
    assert cheapest["instance_type"] != "Standard_NV4as_v4"


def test_no_on_demand_offer_of_a_type_gcp_sells_only_as_spot(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    [folder] = _only(data_dir, tmp_path, ["2026-05-20"], "gcp")
    hosts = {r["InstanceType"] for r in _rows(folder / "hosts" / "gcp.csv")}
    assert "a3-highgpu-1g" in hosts
    _replay(engine, [folder])
    offers = _offers(client, keys)
    by = {(o["instance_type"], o["market"]) for o in offers}
    for itype in ("a3-highgpu-1g", "a3-highgpu-2g", "a3-highgpu-4g"):
        assert (itype, "on_demand") not in by
        assert (itype, "spot") in by
    assert not any(
        o["market"] == "on_demand" and o["instance_type"].startswith(("a3-ultragpu-", "a4-"))
        for o in offers
    )
    assert ("a3-highgpu-8g", "on_demand") in by


def test_gcp_half_price_rows_are_flagged_and_ordinary_ones_not(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    [folder] = _only(data_dir, tmp_path, ["2026-05-20"], "gcp")
    # Independently: a3-highgpu-8g on demand, (8x H100 accelerator row + host row) / 8 per
    # zone, against the median of the other regions.
    host = {
        r["AvailabilityZone"]: Decimal(r["Price"])
        for r in _rows(folder / "hosts" / "gcp.csv")
        if r["InstanceType"] == "a3-highgpu-8g" and r["Price"].strip()
    }
    per_gpu: dict[str, Decimal] = {}
    for r in _rows(folder / "gcp.csv"):
        zone = r["AvailabilityZone"]
        eight = r["AcceleratorName"] == "H100" and r["AcceleratorCount"] in ("8", "8.0")
        if eight and zone in host and r["Price"].strip():
            per_gpu[f"gcp/{r['Region']}/{zone}/a3-highgpu-8g/on_demand"] = (
                Decimal(r["Price"]) + host[zone]
            ) / 8
    by_region: dict[str, list[Decimal]] = {}
    for key, price in per_gpu.items():
        by_region.setdefault(key.split("/")[1], []).append(price)

    def median(values: list[Decimal]) -> Decimal:
        v = sorted(values)
        return v[len(v) // 2] if len(v) % 2 else (v[len(v) // 2 - 1] + v[len(v) // 2]) / 2

    # Each region is one vote (the median of its zones), as docs/anomalies.md says.
    low = set()
    for key, price in per_gpu.items():
        region = key.split("/")[1]
        others = [median(ps) for r, ps in by_region.items() if r != region]
        if price < median(others) / 2:
            low.add(key)
    assert low, "the 2026 GCP catalog has half-price H100 rows"
    _replay(engine, [folder])
    offers = {o["key"]: o for o in _offers(client, keys, gpu="H100")}
    flagged = {k for k in per_gpu if "below_provider_median" in _codes(offers[k])}
    assert flagged == low
    clean = {o["key"] for o in _offers(client, keys, gpu="H100", exclude_anomalies="true")}
    assert not clean & low and clean


def _codes(offer: dict[str, Any]) -> set[str]:
    return {a["code"] for a in offer["anomalies"]}


def test_vast_listings_keep_their_form_factor_and_are_rented_once(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    [folder] = _only(data_dir, tmp_path, ["2026-05-20"], "vast")
    rows = _rows(folder / "vast.csv")
    _replay(engine, [folder])
    offers = {o["instance_type"]: o for o in _offers(client, keys)}
    seen = 0
    for r in rows:
        name = r["InstanceType"].split("-")[1]
        want = {"H100_NVL": "H100-NVL", "H100_SXM": "H100-SXM"}.get(name)
        if want is not None:
            assert offers[r["InstanceType"]]["gpu_model"] == want
            seen += 1
    assert seen >= 2
    # The flagship request: 64 H100 in the EU under $3.50. No option rents a listing twice.
    now = datetime(2026, 5, 20, 6, tzinfo=UTC)
    market = MarketSnapshot(replay_market(folder, now))
    for spec in (
        RequestSpec(
            gpu_models=frozenset({"H100", "H100-SXM", "H100-PCIe", "H100-NVL"}),
            gpus=64,
            duration_hours=24 * 7,
            residency=Residency(allow=("EU",)),
            markets=frozenset({Market.ON_DEMAND}),
            max_price_per_gpu_hour=Decimal("3.50"),
        ),
        RequestSpec(gpu_models=frozenset({"RTX4090"}), gpus=8, duration_hours=24),
    ):
        rec = recommend(spec, market, now)
        for opt in rec.options:
            for part in opt.parts:
                if part.offer.provider == "vast":
                    assert part.instances == 1, opt.explanation


def replay_market(folder: Path, now: datetime) -> list[Any]:
    """The scorer's view of a snapshot's offers (the unit tests' reading of an Offer)."""
    offers = replay.read_snapshot(folder, now).offers
    return [to_market(o) for o in offers if o.gpu_model is not None]


def test_a_spec_change_is_an_event_and_history_keeps_each_points_per_gpu_price(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    [folder] = _only(data_dir, tmp_path, ["2026-05-20"], "lambda")
    rows = _rows(folder / "lambda.csv")
    row = rows[0]
    key = f"lambda_cloud/{row['Region']}/{row['InstanceType']}/on_demand"
    count = Decimal(row["AcceleratorCount"])
    t0 = datetime(2026, 5, 20, tzinfo=UTC)
    replay_results(engine, [("a", replay.read_snapshot(folder, t0))], clock=lambda: t0)
    # The provider now says twice the GPUs for the same price: a spec change, and the
    # per-GPU price halves from this point on, while the old point keeps its own.
    data = (folder / "lambda.csv").read_bytes()
    old = f"{row['InstanceType']},{row['AcceleratorName']},{row['AcceleratorCount']},"
    new = f"{row['InstanceType']},{row['AcceleratorName']},{count * 2},"
    assert old.encode() in data
    (folder / "lambda.csv").write_bytes(data.replace(old.encode(), new.encode()))
    t1 = t0 + timedelta(hours=1)
    replay_results(engine, [("b", replay.read_snapshot(folder, t1))], clock=lambda: t1)
    events = client.get(
        "/v1/events", params={"types": "spec_changed"}, headers=bearer(keys.viewer)
    ).json()["data"]
    mine = [e for e in events if e["offer_key"] == key]
    assert len(mine) == 1
    assert Decimal(mine[0]["before"]["gpu_count"]) == count
    assert Decimal(mine[0]["after"]["gpu_count"]) == count * 2
    points = client.get(f"/v1/offers/{key}/history", headers=bearer(keys.viewer)).json()["data"]
    price = Decimal(row["Price"])
    assert [Decimal(str(p["price_per_gpu_hour"])) for p in points] == [
        (price / count).quantize(Decimal("0.000001")),
        (price / (count * 2)).quantize(Decimal("0.000001")),
    ]


def test_unrecognised_regions_and_names_are_shown_where_an_operator_looks(
    engine: Engine, client: TestClient, keys: Keys, data_dir: Path, tmp_path: Path
) -> None:
    [folder] = _only(data_dir, tmp_path, ["2024-05-01"], "scp")
    rows = _rows(folder / "scp.csv")
    rows[0]["Region"] = "MARS-NORTH-1"
    with (folder / "scp.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    _replay(engine, [folder])
    mars = [o for o in _offers(client, keys, provider="scp") if o["region"] == "MARS-NORTH-1"]
    assert mars and all(o["jurisdiction"] is None for o in mars)
    providers = client.get("/v1/providers", headers=bearer(keys.viewer)).json()["data"]
    replayed = next(p for p in providers if p["name"] == "replay")
    assert replayed["unrecognised"] == {"scp": {"regions": {"MARS-NORTH-1": len(mars)}}}
    text = client.get("/metrics").text
    assert f'broker_unrecognised_offers{{kind="region",provider="scp"}} {len(mars)}.0' in text


def test_flags_kept_per_model_equal_a_full_recount(engine: Engine, data_dir: Path) -> None:
    """Each ingest re-judges only the models it touched; after a series of real polls the
    stored flags must equal the rules run over the whole current market."""
    from sqlalchemy import select

    from broker import anomalies
    from broker.models import StoredOffer

    folders = [data_dir / "offers" / n for n in ("2026-04-20", "2026-05-01", "2026-05-20")]
    _replay(engine, folders)
    offers = StoredOffer.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        rows = conn.execute(select(offers).where(offers.c.active)).all()
    want = anomalies.detect(rows)
    got = {r.key: r.anomalies for r in rows if r.anomalies}
    assert got == {k: [a.as_dict() for a in v] for k, v in want.items()}
    assert got, "the 2026 catalogs have flagged prices"
