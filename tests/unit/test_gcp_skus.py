"""GCP SKU wording, the price book and the sales rules, on SKU dicts in the catalogue's wire
shape (`tests.fakes.gcp_fake.sku`). The descriptions are GCP's own, as quoted by the peers
that read the catalogue in production (sources at `tests.fakes.gcp_fake.SAMPLE_SKUS`)."""

from __future__ import annotations

from decimal import Decimal

import pytest

from broker import gpus
from broker.config import GcpSettings
from broker.domain import Availability, Market
from providers._gcp_offers import MachineType, OfferBuilder, quota_accelerator
from providers._gcp_skus import (
    LOCAL_SSD,
    PriceBook,
    Unpriced,
    machine_parts,
    model_words,
    price_parts,
    read_sku,
)
from providers.base import ScopeOffers
from tests.fakes.gcp_fake import sku

TOKYO = "asia-northeast1"
OD, SPOT = Market.ON_DEMAND, Market.SPOT


def gpu(accelerator_type: str) -> tuple[str, frozenset[str]]:
    return ("gpu", model_words(accelerator_type))


@pytest.mark.parametrize(
    ("description", "usage", "family", "component", "market", "slice_gpus"),
    [
        # Host families named from the description: A3 Mega bills on "A3Plus", A3 Ultra on
        # "A3Ultra", G4 on "G4" (not on the "A3" / machine-prefix family).
        ("A3Plus Instance Core running in Americas", "OnDemand", "Compute",
         ("core", "a3plus"), OD, None),
        ("Spot Preemptible A3Ultra Instance Ram running in Americas", "Preemptible", "Compute",
         ("ram", "a3ultra"), SPOT, None),
        ("G4 Instance Core running in Americas", "OnDemand", "Compute", ("core", "g4"), OD, None),
        # GPU SKUs without a vendor word, with a series word, or without the word GPU.
        ("H200 141GB GPU running in Belgium", "OnDemand", "Compute",
         gpu("nvidia-h200-141gb"), OD, None),
        ("A4 Nvidia B200 (1 gpu slice) running in Netherlands", "OnDemand", "Compute",
         gpu("nvidia-b200"), OD, 1),
        ("RTX 6000 96GB running in Oregon", "OnDemand", "Compute",
         gpu("nvidia-rtx-pro-6000"), OD, None),
        ("RTX 6000 96GB attached to Spot Preemptible VMs running in Americas", "Preemptible",
         "Compute", gpu("nvidia-rtx-pro-6000"), SPOT, None),
        ("Nvidia H100 80GB Plus GPU running in Tokyo", "OnDemand", "Compute",
         gpu("nvidia-h100-mega-80gb"), OD, None),
        # Spot SKUs tagged usageType OnDemand: the description decides.
        ("Spot Preemptible A4 Nvidia B200 (1 gpu slice) running in Americas", "OnDemand",
         "Compute", gpu("nvidia-b200"), SPOT, 1),
        ("SSD backed Local Storage attached to Spot Preemptible VMs in Paris", "OnDemand",
         "Storage", LOCAL_SSD, SPOT, None),
        # Local SSD, with and without a place.
        ("SSD backed Local Storage", "OnDemand", "Storage", LOCAL_SSD, OD, None),
        ("SSD backed Local Storage in Netherlands", "OnDemand", "Storage", LOCAL_SSD, OD, None),
    ],
)  # fmt: skip
def test_sku_descriptions_name_component_and_market(
    description: str,
    usage: str,
    family: str,
    component: tuple[str, object],
    market: Market,
    slice_gpus: int | None,
) -> None:
    line = read_sku(description, usage, family)
    assert line is not None
    assert (line.component, line.market, line.slice_gpus) == (component, market, slice_gpus)


@pytest.mark.parametrize(
    ("description", "usage", "family"),
    [
        ("Commitment v1: RTX 6000 96GB in Americas for 1 Year", "Commit1Yr", "Compute"),
        ("DWS Calendar Mode A4 Nvidia B200 (1 gpu slice) running in Americas", "OnDemand",
         "Compute"),
        ("Reserved A3 Instance Core running in Americas", "OnDemand", "Compute"),
        ("N1 Predefined Instance Core running in Americas", "OnDemand", "Compute"),
        ("Storage PD Capacity", "OnDemand", "Storage"),
        ("C4 Instance Local SSD running in Frankfurt", "OnDemand", "Compute"),
    ],
)  # fmt: skip
def test_skus_that_price_no_gpu_offer_are_left_out(
    description: str, usage: str, family: str
) -> None:
    assert read_sku(description, usage, family) is None


def test_a_spot_slice_tagged_on_demand_is_a_spot_price_not_a_second_on_demand_one() -> None:
    book = PriceBook()
    book.add_page(
        [
            sku("A", "A4 Nvidia B200 (1 gpu slice) running in Tokyo", "GPU", "OnDemand",
                [TOKYO], "8", 55000000),
            sku("B", "Spot Preemptible A4 Nvidia B200 (1 gpu slice) running in Tokyo", "GPU",
                "OnDemand", [TOKYO], "3", 222000000),
        ]
    )  # fmt: skip
    on_demand = book.get(gpu("nvidia-b200"), TOKYO, OD)
    spot = book.get(gpu("nvidia-b200"), TOKYO, SPOT)
    assert on_demand is not None and (on_demand.sku_id, on_demand.slice_gpus) == ("A", 1)
    assert spot is not None and (spot.sku_id, spot.price) == ("B", Decimal("3.222"))


def test_local_ssd_per_gib_month_is_priced_per_gib_hour_over_730_hours() -> None:
    book = PriceBook()
    book.add_page(
        [
            sku("L", "SSD backed Local Storage in Tokyo", "LocalSSD", "OnDemand", [TOKYO],
                "0", 80000000, "GiBy.mo", "Storage"),
        ]
    )  # fmt: skip
    found = book.get(LOCAL_SSD, TOKYO, OD)
    assert found is not None and found.price == Decimal("0.08") / 730


@pytest.mark.parametrize(
    ("machine_type", "accelerator", "family"),
    [
        ("a3-highgpu-8g", "nvidia-h100-80gb", "a3"),
        ("a3-edgegpu-8g", "nvidia-h100-80gb", "a3"),
        ("a3-megagpu-8g", "nvidia-h100-mega-80gb", "a3plus"),
        ("a3-ultragpu-8g", "nvidia-h200-141gb", "a3ultra"),
        ("a2-ultragpu-1g", "nvidia-a100-80gb", "a2"),
        ("g4-standard-48", "nvidia-rtx-pro-6000", "g4"),
    ],
)
def test_machine_series_bill_on_their_own_sku_family(
    machine_type: str, accelerator: str, family: str
) -> None:
    parts = machine_parts(machine_type, accelerator, 8, 208, Decimal(1872))
    components = {name: component for name, component, _ in parts}
    assert components["core"] == ("core", family)
    assert components["ram"] == ("ram", family)
    assert components["gpu"] == gpu(accelerator)


def test_a_series_with_no_known_sku_family_is_not_priced() -> None:
    with pytest.raises(Unpriced) as info:
        machine_parts("a9-futuregpu-8g", "nvidia-b200", 8, 224, Decimal(3968))
    assert info.value.reason == "unknown_series"


@pytest.mark.parametrize(
    ("machine_type", "gib"),
    [
        ("a2-ultragpu-1g", 375),
        ("a2-ultragpu-2g", 750),
        ("a2-ultragpu-4g", 1500),
        ("a2-ultragpu-8g", 3000),
        ("a3-highgpu-8g", 6000),
        ("a3-megagpu-8g", 6000),
        ("a2-highgpu-1g", None),
        ("g2-standard-4", None),
    ],
)
def test_bundled_local_ssd_is_a_part_of_the_machine(machine_type: str, gib: int | None) -> None:
    parts = machine_parts(machine_type, "nvidia-h100-80gb", 8, 208, Decimal(1872))
    ssd = [quantity for name, _, quantity in parts if name == "local_ssd"]
    assert ssd == ([Decimal(gib)] if gib is not None else [])


def test_a_missing_local_ssd_price_leaves_the_machine_unpriced() -> None:
    book = PriceBook()
    book.add_page(
        [
            sku("G", "Nvidia H100 80GB GPU running in Tokyo", "GPU", "OnDemand", [TOKYO], "4", 0),
            sku("C", "A3 Instance Core running in Tokyo", "CPU", "OnDemand", [TOKYO], "0", 1000),
            sku("R", "A3 Instance Ram running in Tokyo", "RAM", "OnDemand", [TOKYO], "0", 100,
                "GiBy.h"),
        ]
    )  # fmt: skip
    parts = machine_parts("a3-highgpu-8g", "nvidia-h100-80gb", 8, 208, Decimal(1872))
    with pytest.raises(Unpriced) as info:
        price_parts(book, parts, TOKYO, OD)
    assert info.value.reason == "no_price:on_demand"
    assert "local_ssd" in str(info.value)


def _builder(book: PriceBook, sold: frozenset[Market] | None) -> OfferBuilder:
    return OfferBuilder(
        region=TOKYO,
        where=None,
        availability=Availability.UNKNOWN,
        book=book,
        out=ScopeOffers(),
        settings=GcpSettings(),
        markets_sold=lambda provider, instance_type: sold,
    )


def _a3_book() -> PriceBook:
    """H100 GPU and A3 core/RAM SKUs in Tokyo, on demand and spot."""
    book = PriceBook()
    book.add_page(
        [
            sku(f"G{usage}", f"{prefix}Nvidia H100 80GB GPU running in Tokyo", "GPU", usage,
                [TOKYO], "4", 0)
            for usage, prefix in (("OnDemand", ""), ("Preemptible", "Spot Preemptible "))
        ]
        + [
            sku(f"{kind}{usage}", f"{prefix}A3 Instance {kind} running in Tokyo", kind.upper(),
                usage, [TOKYO], "0", 1000, "GiBy.h" if kind == "Ram" else "h")
            for usage, prefix in (("OnDemand", ""), ("Preemptible", "Spot Preemptible "))
            for kind in ("Core", "Ram")
        ]
    )  # fmt: skip
    return book


def test_an_offer_in_a_market_not_sold_is_not_emitted_and_is_counted() -> None:
    book = _a3_book()
    machine = MachineType("a3-highgpu-1g", 26, 239616, (("nvidia-h100-80gb", 1),), "")

    only_spot = _builder(book, frozenset({SPOT}))
    only_spot.zone(f"{TOKYO}-a", [], [machine])
    assert [o.market for o in only_spot.out.offers] == [SPOT]
    assert only_spot.out.skipped == {"not_sold:on_demand": 1}

    unrestricted = _builder(book, None)
    unrestricted.zone(f"{TOKYO}-a", [], [machine])
    assert [o.market for o in unrestricted.out.offers] == [OD, SPOT]
    assert not unrestricted.out.skipped


def test_price_book_reads_gcp_sku_wordings() -> None:
    book = PriceBook()
    book.add_page(
        [
            sku("A", "Nvidia H100 80GB Plus GPU running in Tokyo", "GPU", "OnDemand", [TOKYO],
                "5", 0),
            sku("B", "Nvidia Tesla P4 GPU attached to Spot Preemptible VMs running in Tokyo",
                "GPU", "Preemptible", [TOKYO], "0", 216000000),
            sku("C", "Spot Preemptible A2 Instance Ram running in Tokyo", "RAM", "Preemptible",
                [TOKYO], "0", 1695000, "GiBy.h"),
            sku("D", "Reserved Nvidia H100 80GB GPU running in Tokyo", "GPU", "OnDemand", [TOKYO],
                "1", 0),
            sku("E", "A2 Instance Ram running in Tokyo", "RAM", "OnDemand", [TOKYO], "0",
                4237000, "h"),
            sku("F", "Nvidia L4 GPU running in Tokyo", "GPU", "OnDemand", [TOKYO], "x", 0),
            {
                "skuId": "G",
                "description": "Nvidia T4 GPU",
                "category": {"resourceFamily": "Compute", "usageType": "OnDemand"},
            },
        ]
    )  # fmt: skip
    mega = book.get(gpu("nvidia-h100-mega-80gb"), TOKYO, OD)
    assert mega is not None and (mega.sku_id, mega.price) == ("A", Decimal(5))
    p4 = book.get(gpu("nvidia-tesla-p4"), TOKYO, SPOT)
    assert p4 is not None and p4.price == Decimal("0.216")
    ram = book.get(("ram", "a2"), TOKYO, SPOT)
    assert ram is not None and ram.price == Decimal("0.001695")
    # The reservation SKU is ignored; a RAM SKU per hour (not per GiB-hour), an unreadable
    # price and a SKU without pricing are counted, never used.
    assert book.get(gpu("nvidia-h100-80gb"), TOKYO, OD) is None
    assert book.get(("ram", "a2"), TOKYO, OD) is None
    assert book.skipped["bad_sku"] == 3
    assert book.skus_read == 7


def test_quota_metric_names_map_onto_accelerator_types() -> None:
    names = ["nvidia-h100-80gb", "nvidia-h100-mega-80gb", "nvidia-tesla-a100", "nvidia-a100-80gb"]
    assert quota_accelerator("NVIDIA_H100", names) == "nvidia-h100-80gb"
    assert quota_accelerator("NVIDIA_H100_MEGA", names) == "nvidia-h100-mega-80gb"
    assert quota_accelerator("NVIDIA_A100", names) == "nvidia-tesla-a100"
    assert quota_accelerator("NVIDIA_A100_80GB", names) == "nvidia-a100-80gb"
    # The 40 GB quota never lands on the 80 GB type, even when it is the only A100 left.
    assert quota_accelerator("NVIDIA_A100", ["nvidia-a100-80gb"]) is None
    assert model_words("Nvidia H100 80GB Plus") == model_words("nvidia-h100-mega-80gb")


def test_an_accelerator_the_catalogue_does_not_know_is_kept_and_priced_the_same(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """SKUs pair with a machine type by the accelerator type's words, never by the catalogue's
    model: the same machine, its accelerator unknown to the catalogue, costs the same."""
    machine = MachineType("a3-highgpu-1g", 26, 239616, (("nvidia-h100-80gb", 1),), "")
    known = _builder(_a3_book(), None)
    known.zone(f"{TOKYO}-a", [], [machine])
    monkeypatch.setattr(gpus, "normalise", lambda *args, **kwargs: None)
    unknown = _builder(_a3_book(), None)
    unknown.zone(f"{TOKYO}-a", [], [machine, machine])

    assert [o.gpu_model for o in known.out.offers] == ["H100-SXM", "H100-SXM"]
    assert len(unknown.out.offers) == 4  # the same machine twice: still one note
    for before, after in zip(known.out.offers, unknown.out.offers, strict=False):
        assert (after.gpu_model, after.gpu_name_raw) == (None, "nvidia-h100-80gb")
        assert (after.gpu_family, after.gpu_memory_gb) == (None, None)
        assert (after.market, after.price_per_hour) == (before.market, before.price_per_hour)
        assert after.raw["skus"] == before.raw["skus"]
        assert (after.vcpus, after.memory_gb) == (before.vcpus, before.memory_gb)
    assert not unknown.out.skipped
    assert unknown.out.notes == [
        f"gcp {TOKYO}: nvidia-h100-80gb not in the GPU catalogue, offers kept without gpu_model"
    ]
