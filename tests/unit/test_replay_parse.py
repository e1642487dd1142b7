"""The replay provider's reading of the snapshot format, on real rows and on bad input."""

from __future__ import annotations

import csv
import shutil
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from broker.domain import Market, Offer
from broker.offers import unrecognised_of
from providers.replay import Replay, list_snapshots, read_snapshot

T0 = datetime(2026, 11, 23, tzinfo=UTC)


def _by_key(offers: list[Offer] | tuple[Offer, ...]) -> dict[str, Offer]:
    return {o.key: o for o in offers}


@pytest.fixture(scope="module")
def may2024(data_dir: Path) -> dict[str, Offer]:
    result = read_snapshot(data_dir / "offers" / "2024-05-01", T0)
    assert not result.scope_errors
    return _by_key(list(result.offers))


def test_gcp_offer_is_host_plus_accelerator(may2024: dict[str, Offer]) -> None:
    # Data README "Units": a2-highgpu-1g in us-central1 = host 0.73948 + A100 2.93391 =
    # 3.67339, GCP's published hourly rate.
    offers = [
        o
        for k, o in may2024.items()
        if k.startswith("gcp/us-central1/") and k.endswith("/a2-highgpu-1g/on_demand")
    ]
    assert offers and {o.price_per_hour for o in offers} == {Decimal("3.67339")}
    o = offers[0]
    assert (o.gpu_model, o.gpu_count, o.vcpus) == ("A100", Decimal(1), Decimal(12))


def test_gcp_accelerator_without_host_price_gives_no_offer(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2024-05-01", T0)
    assert not [o for o in result.offers if o.provider == "gcp" and o.gpu_model in {"T4", "V100"}]
    assert result.skipped["no_host_price"] > 0


def test_gcp_b200_host_priced_zero_is_bundled(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2026-05-20", T0)
    b200 = [o for o in result.offers if o.instance_type == "a4-highgpu-8g"]
    assert b200
    # Data README: the B200 accelerator row carries the whole price (64.44 or 90.216 per 8).
    assert {o.price_per_hour for o in b200 if o.market == Market.ON_DEMAND} <= {
        Decimal("64.44"),
        Decimal("90.216"),
    }


def test_tpu_slice_is_priced_per_chip(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2024-05-01", T0)
    v4 = [o for o in result.offers if o.instance_type == "tpu-v4-8"]
    assert v4 and all(o.gpu_count == 4 and o.accelerator_kind == "tpu" for o in v4)
    # GCP lists every tpu-v4 row twice: duplicates are dropped, not ingested twice.
    assert result.skipped["duplicate_row"] >= 35


def test_zero_and_empty_prices_are_placeholders(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2026-05-20", T0)
    # Vast's SpotPrice is 0.00 on every row: no Vast spot offer at all.
    assert not [o for o in result.offers if o.provider == "vast" and o.market == Market.SPOT]
    assert result.skipped["zero_price:spot"] >= 64
    assert result.skipped["empty_price:spot"] > 0  # lambda has no spot prices


def test_lambda_file_is_provider_lambda_cloud_and_jurisdiction_mapped(
    may2024: dict[str, Offer],
) -> None:
    o = may2024["lambda_cloud/europe-central-1/gpu_8x_v100/on_demand"]
    assert (o.country, o.jurisdiction, o.gpu_count) == ("DE", "EU", Decimal(8))


def test_azure_unquoted_generation_field_is_tolerated(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2026-05-20", T0)
    o = _by_key(list(result.offers))["azure/australiaeast/Standard_NC12s_v3/on_demand"]
    assert o.price_per_hour == Decimal("8.468") and o.gpu_count == 2


def test_azure_nd96isr_h100_count_corrected_to_eight(may2024: dict[str, Offer]) -> None:
    nd = [o for o in may2024.values() if o.instance_type == "Standard_ND96isr_H100_v5"]
    assert nd and all(o.gpu_count == 8 for o in nd)
    assert all(o.raw["AcceleratorCount"] == "12" for o in nd)  # raw keeps what the source said


def test_azure_fractional_gpu_keeps_whole_gpu_price(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2026-05-20", T0)
    o = next(
        o
        for o in result.offers
        if o.instance_type == "Standard_NV6ads_A10_v5" and o.market == Market.ON_DEMAND
    )
    assert o.gpu_count == Decimal("0.167")
    assert o.price_per_gpu_hour == (o.price_per_hour / Decimal("0.167")).quantize(
        Decimal("0.000001")
    )


# ----------------------------------------------------------------------- bad input


def _copy(data_dir: Path, tmp_path: Path, snap: str, files: list[str]) -> Path:
    folder = tmp_path / snap
    folder.mkdir()
    for f in files:
        shutil.copy(data_dir / "offers" / snap / f, folder / f)
    return folder


def test_missing_column_fails_that_provider_with_file_and_line(
    data_dir: Path, tmp_path: Path
) -> None:
    folder = _copy(data_dir, tmp_path, "2024-05-01", ["lambda.csv", "scp.csv"])
    text = (folder / "scp.csv").read_text().splitlines()
    header = text[0].split(",")
    i = header.index("Price")
    (folder / "scp.csv").write_text(
        "\n".join(",".join(c for j, c in enumerate(line.split(",")) if j != i) for line in text[:1])
        + "\n"
        + "\n".join(text[1:])
        + "\n"
    )
    result = read_snapshot(folder, T0)
    assert [str(e.scope) for e in result.scope_errors] == ["scp/*"]
    msg = result.scope_errors[0].message
    assert "scp.csv line 1" in msg and "'Price'" in msg
    assert not [o for o in result.offers if o.provider == "scp"]
    assert [str(s) for s in result.scopes_ok] == ["lambda_cloud/*"]


@pytest.mark.parametrize(
    "content, why",
    [
        ("", "empty file"),
        ("InstanceType,AcceleratorName,AcceleratorCount,Price,SpotPrice,Region\n", "no data rows"),
    ],
)
def test_empty_file_is_a_failed_poll_not_a_withdrawal(
    tmp_path: Path, content: str, why: str
) -> None:
    folder = tmp_path / "2026-01-01"
    folder.mkdir()
    (folder / "lambda.csv").write_text(content)
    result = read_snapshot(folder, T0)
    assert not result.scopes_ok and not result.offers
    assert why in result.scope_errors[0].message and "lambda.csv" in result.scope_errors[0].message


def test_bad_rows_are_skipped_and_counted_with_file_and_line(
    data_dir: Path, tmp_path: Path
) -> None:
    folder = _copy(data_dir, tmp_path, "2024-05-01", ["scp.csv"])
    lines = (folder / "scp.csv").read_text().splitlines(keepends=True)
    n_rows = len(lines) - 1
    lines[1] = lines[1].replace(",2.27,", ",two,")  # non-numeric price
    (folder / "scp.csv").write_text("".join(lines))
    result = read_snapshot(folder, T0)
    assert result.skipped["bad_price"] == 1
    assert set(result.skipped) <= {"bad_price", "empty_price:spot"}  # scp has no spot prices
    assert any("scp.csv:2: bad_price" in n for n in result.notes)
    assert len(result.offers) == n_rows - 1
    assert result.scopes_ok and not result.scope_errors


def test_unknown_region_and_accelerator_keep_every_priced_row(
    data_dir: Path, tmp_path: Path
) -> None:
    """Nothing priced is dropped for being unknown: a new region of a provider keeps its
    offers with a null location, a new accelerator name keeps them with a null model and the
    raw name; both are counted per provider as unrecognised."""
    folder = _copy(data_dir, tmp_path, "2024-05-01", ["scp.csv"])
    with (folder / "scp.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    header = list(rows[0])
    priced = sum(1 for r in rows for c in ("Price", "SpotPrice") if (r[c] or "").strip())
    rows[0]["Region"] = "MARS-NORTH-1"
    rows[1]["AcceleratorName"] = "Quantum-Flux-9000"
    with (folder / "scp.csv").open("w", newline="") as f:
        writer = csv.DictWriter(f, header)
        writer.writeheader()
        writer.writerows(rows)
    result = read_snapshot(folder, T0)
    assert len(result.offers) == priced
    assert all(reason.startswith("empty_price") for reason in result.skipped)
    mars = [o for o in result.offers if o.region == "MARS-NORTH-1"]
    assert mars and all(o.country is None and o.jurisdiction is None for o in mars)
    flux = [o for o in result.offers if o.gpu_name_raw == "Quantum-Flux-9000"]
    assert flux and all(o.gpu_model is None and o.accelerator_kind is None for o in flux)
    assert unrecognised_of(result.offers) == {
        "scp": {
            "regions": {"MARS-NORTH-1": len(mars)},
            "gpu_names": {"Quantum-Flux-9000": len(flux)},
        }
    }


def test_replay_provider_walks_snapshots_by_clock(data_dir: Path) -> None:
    snaps = list_snapshots(data_dir / "offers")
    assert [p.name for p in snaps] == sorted(p.name for p in snaps) and len(snaps) == 11
    t = datetime(2026, 1, 1, tzinfo=UTC)
    provider = Replay(snaps, step_s=300, clock=lambda: t)
    first = provider.current_snapshot()
    later = Replay(snaps, step_s=300, clock=lambda: t.replace(minute=5)).current_snapshot()
    assert snaps.index(later) == (snaps.index(first) + 1) % len(snaps)


def test_offer_rejects_nonsense() -> None:
    with pytest.raises(ValueError, match="price_per_hour must be > 0"):
        Offer(
            provider="aws",
            region="us-east-1",
            instance_type="p5.48xlarge",
            market=Market.ON_DEMAND,
            gpu_model="H100-SXM",
            gpu_count=Decimal(8),
            price_per_hour=Decimal(0),
        )
    o = Offer(
        provider="aws",
        region="us-east-1",
        zone="use1-az2",
        instance_type="p5.48xlarge",
        market=Market.SPOT,
        gpu_model="H100-SXM",
        gpu_count=Decimal(8),
        price_per_hour=Decimal("30.970000"),
    )
    assert o.key == "aws/us-east-1/use1-az2/p5.48xlarge/spot"
    assert o.price_per_gpu_hour == Decimal("3.871250")


def test_vast_memory_is_per_gpu_not_per_listing(data_dir: Path) -> None:
    result = read_snapshot(data_dir / "offers" / "2026-05-20", T0)
    by_type: dict[str, set[tuple[str | None, Decimal | None]]] = {}
    for o in result.offers:
        if o.provider == "vast":
            by_type.setdefault(o.instance_type, set()).add((o.gpu_model, o.gpu_memory_gb))
    # Vast writes the listing's total memory: 2x RTX 5090 = 65214 MiB, one card 32607 MiB.
    assert by_type["1x-RTX_5090-32-65536"] == by_type["2x-RTX_5090-32-65536"]
    # Two 40 GB A100s (81920 MiB in all) are A100, not A100-80GB.
    assert {m for m, _ in by_type["2x-A100_PCIE-32-65536"]} == {"A100"}


def test_broken_gcp_host_file_fails_the_gcp_poll(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy(data_dir, tmp_path, "2024-05-01", ["gcp.csv", "lambda.csv"])
    (folder / "hosts").mkdir()
    src = (data_dir / "offers" / "2024-05-01" / "hosts" / "gcp.csv").read_text().splitlines()
    (folder / "hosts" / "gcp.csv").write_text(
        "\n".join(line.rsplit(",", 2)[0] for line in src) + "\n"
    )  # Price, SpotPrice cut off
    result = read_snapshot(folder, T0)
    assert [str(e.scope) for e in result.scope_errors] == ["gcp/*"]
    assert "hosts/gcp.csv line 1: missing columns 'Price', 'SpotPrice'" in (
        result.scope_errors[0].message
    )
    assert not [o for o in result.offers if o.provider == "gcp"]
