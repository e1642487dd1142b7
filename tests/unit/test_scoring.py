"""broker.scoring on real market data (../shared/data snapshots), pure: no database.

Expectations are computed here from the snapshot's offers independently of the scorer's
code paths (filters written out again, costs multiplied out by hand).
"""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest

from broker import gpus
from broker.domain import Availability, Market
from broker.scoring import (
    History,
    MarketOffer,
    MarketSnapshot,
    QuotaView,
    Reason,
    RequestSpec,
    Residency,
    ScoringConfig,
    recommend,
    time_to_power,
)
from providers.replay import read_snapshot

NOW = datetime(2026, 5, 20, 12, tzinfo=UTC)
H100S = gpus.resolve_query("H100")
ON_DEMAND_AND_BLOCKS = frozenset({Market.ON_DEMAND, Market.CAPACITY_BLOCK})


def to_market(o: object) -> MarketOffer:
    from broker.domain import Offer

    assert isinstance(o, Offer)
    return MarketOffer(
        key=o.key,
        provider=o.provider,
        region=o.region,
        instance_type=o.instance_type,
        market=o.market,
        gpu_model=o.gpu_model,
        gpu_count=o.gpu_count,
        price_per_hour=o.price_per_hour,
        price_per_gpu_hour=o.price_per_gpu_hour,
        country=o.country,
        jurisdiction=o.jurisdiction,
        availability=o.availability,
        available_count=o.available_count,
        earliest_start=o.earliest_start,
        min_duration_hours=o.min_duration_hours,
        max_duration_hours=o.max_duration_hours,
        upfront_fee=o.upfront_fee,
        vcpus=o.vcpus,
        last_seen=NOW,
    )


@pytest.fixture(scope="module")
def offers(snapshot_dirs: list[Path]) -> list[MarketOffer]:
    folder = next(p for p in snapshot_dirs if p.name == "2026-05-20")
    return [to_market(o) for o in read_snapshot(folder, NOW).offers]


@pytest.fixture(scope="module")
def market(offers: list[MarketOffer]) -> MarketSnapshot:
    return MarketSnapshot(offers)


def spec(**kw: object) -> RequestSpec:
    base: dict[str, object] = {"gpu_models": H100S, "gpus": 8, "duration_hours": 24 * 28}
    base.update(kw)
    return RequestSpec(**base)  # type: ignore[arg-type]


def test_eu_only_request_returns_only_eu_and_explains_the_rest(
    market: MarketSnapshot, offers: list[MarketOffer]
) -> None:
    rec = recommend(spec(residency=Residency(allow=("EU",))), market, NOW)
    assert rec.options, "the 2026-05-20 market has EU H100 offers"
    for opt in rec.options:
        assert {p.offer.jurisdiction for p in opt.parts} == {"EU"}
    # Independently: requested model, allowed market, outside the EU (or unknown).
    outside = [
        o
        for o in offers
        if o.gpu_model in H100S and o.market in ON_DEMAND_AND_BLOCKS and o.jurisdiction != "EU"
    ]
    assert any(o.jurisdiction == "US" for o in outside)
    groups = [g for g in rec.excluded if g.reason == Reason.RESIDENCY]
    assert sum(g.offers for g in groups) == len(outside)
    us = [g.as_dict() for g in groups if "US" in g.values]
    assert us and all("not in allowed [EU]" in g["message"] for g in us)
    assert any("US" in g["message"] for g in us)


def test_unknown_location_fails_every_residency_rule(market: MarketSnapshot) -> None:
    o = replace(next(iter(market.offers)), jurisdiction=None, country=None)
    for rules in (Residency(allow=("EU", "US")), Residency(deny=("CN",))):
        rule = rules.check(o)
        assert rule is not None and rule[0].startswith("location unknown")
        assert rule[1] == o.region
    assert Residency().check(o) is None


def test_gang_never_spans_regions_and_nodes_fit(market: MarketSnapshot) -> None:
    rec = recommend(spec(gpus=16, gpus_per_node=8), market, NOW)
    assert rec.options
    for opt in rec.options:
        assert len({(p.offer.provider, p.offer.region) for p in opt.parts}) == 1
        for p in opt.parts:
            assert p.offer.gpu_count % 8 == 0
        assert opt.gpus >= 16
    small = [g.as_dict()["message"] for g in rec.excluded if g.reason == Reason.COUNT]
    assert any("cannot form nodes of 8" in m for m in small)
    # The rest are marketplace listings: one machine of 8 cannot give 16 GPUs.
    assert all("cannot form nodes of 8" in m or "listings are single machines" in m for m in small)


@pytest.mark.parametrize("residency", [Residency(), Residency(allow=("EU",))])
def test_tighter_price_cap_never_adds_options(market: MarketSnapshot, residency: Residency) -> None:
    caps = [None, Decimal(20), Decimal(8), Decimal(4), Decimal("2.5"), Decimal(1)]
    previous: set[tuple[str, ...]] | None = None
    for cap in caps:
        rec = recommend(spec(residency=residency, max_price_per_gpu_hour=cap), market, NOW)
        keys = {o.keys for o in rec.options}
        if previous is not None:
            assert keys <= previous, f"cap {cap} added options"
        for o in rec.options:
            for p in o.parts:
                assert cap is None or p.offer.price_per_gpu_hour <= cap
        previous = keys


def test_costs_are_price_times_instances_times_hours(market: MarketSnapshot) -> None:
    hours = 24 * 28
    rec = recommend(spec(gpus=12, markets=frozenset(Market)), market, NOW)
    cfg = ScoringConfig()
    checked = 0
    for opt in rec.options:
        if len(opt.parts) != 1:
            continue
        (p,) = opt.parts
        instances = -(-12 // int(p.offer.gpu_count)) if p.offer.gpu_count >= 1 else None
        if instances is None or p.offer.gpu_count != int(p.offer.gpu_count):
            continue
        assert p.instances == instances
        billed = max(hours, p.offer.min_duration_hours or 0)
        cost = p.offer.price_per_hour * instances * billed
        if p.offer.upfront_fee and p.offer.market != Market.CAPACITY_BLOCK:
            cost += p.offer.upfront_fee * instances
        if p.offer.market == Market.SPOT:
            adj = cost * Decimal(str(cfg.spot_interruption_overhead))
            assert opt.spot_adjustment_usd == adj.quantize(Decimal("0.01"))
            assert "interruptions" in opt.explanation
            cost += adj
        assert opt.total_cost_usd == cost.quantize(Decimal("0.01"))
        checked += 1
    assert checked > 10


def test_ranking_is_deterministic_and_pareto_front_is_exact(market: MarketSnapshot) -> None:
    s = spec(gpus=32, markets=frozenset(Market))
    a = recommend(s, market, NOW).as_dict()
    b = recommend(s, MarketSnapshot(list(reversed(market.offers))), NOW).as_dict()
    assert a == b
    rec = recommend(s, market, NOW)
    scores = [o.score for o in rec.options]
    assert scores == sorted(scores, reverse=True)
    for o in rec.options:
        dominated = any(
            q.time_to_power_hours <= o.time_to_power_hours
            and q.total_cost_usd <= o.total_cost_usd
            and (
                q.time_to_power_hours < o.time_to_power_hours or q.total_cost_usd < o.total_cost_usd
            )
            for q in rec.options
        )
        assert o.on_pareto_front == (not dominated)


def _offer(**kw: object) -> MarketOffer:
    base: dict[str, object] = {
        "key": "aws/us-east-1/p5.48xlarge/on_demand",
        "provider": "aws",
        "region": "us-east-1",
        "instance_type": "p5.48xlarge",
        "market": Market.ON_DEMAND,
        "gpu_model": "H100-SXM",
        "gpu_count": Decimal(8),
        "price_per_hour": Decimal("55.04"),
        "price_per_gpu_hour": Decimal("6.88"),
        "country": "US",
        "jurisdiction": "US",
        "vcpus": Decimal(192),
        "last_seen": NOW,
    }
    base.update(kw)
    return MarketOffer(**base)  # type: ignore[arg-type]


def test_capacity_block_powers_at_its_start_and_too_late_is_excluded() -> None:
    start = NOW + timedelta(days=3)
    block = _offer(
        key="aws/us-east-1/p5.48xlarge/capacity_block/cb-1",
        market=Market.CAPACITY_BLOCK,
        earliest_start=start,
        availability=Availability.AVAILABLE,
        available_count=2,
        min_duration_hours=24 * 7,
        max_duration_hours=24 * 7,
        upfront_fee=Decimal("9246.72"),
    )
    ttp = time_to_power(block, NOW, ScoringConfig())
    assert ttp is not None and ttp.hours == 72.0
    ok = recommend(spec(gpus=16, duration_hours=24 * 7), MarketSnapshot([block]), NOW)
    (opt,) = ok.options
    assert opt.time_to_power_hours == 72.0
    # The fee is the price: 2 instances × 168 h × price_per_hour, not the fee on top.
    assert opt.total_cost_usd == (Decimal("55.04") * 2 * 168).quantize(Decimal("0.01"))
    late = recommend(
        spec(gpus=16, duration_hours=24 * 7, needed_by=NOW + timedelta(days=2)),
        MarketSnapshot([block]),
        NOW,
    )
    assert not late.options
    assert [g.reason for g in late.excluded] == [Reason.STARTS_TOO_LATE]
    longer = recommend(spec(gpus=16, duration_hours=24 * 14), MarketSnapshot([block]), NOW)
    assert [g.reason for g in longer.excluded] == [Reason.DURATION]
    too_many = recommend(spec(gpus=24, duration_hours=24 * 7), MarketSnapshot([block]), NOW)
    assert [g.reason for g in too_many.excluded] == [Reason.COUNT]


def test_quota_headroom_too_small_adds_lead_time() -> None:
    cfg = ScoringConfig()
    quota = QuotaView(
        "aws",
        "us-east-1",
        "L-417A185B",
        "on_demand",
        "vcpus",
        Decimal(384),
        frozenset({"p5.48xlarge"}),
    )
    fits = recommend(spec(gpus=16), MarketSnapshot([_offer()], [quota]), NOW)
    short = recommend(spec(gpus=24), MarketSnapshot([_offer()], [quota]), NOW)
    base = cfg.provisioning("aws") + cfg.unverified_capacity_hours
    assert fits.options[0].time_to_power_hours == base
    assert short.options[0].time_to_power_hours == base + cfg.quota_lead_hours
    assert "quota L-417A185B has 384 vcpus free, 576 needed" in short.options[0].explanation


def test_sold_out_offer_uses_its_history_or_is_excluded() -> None:
    sold = _offer(provider="lambda_cloud", availability=Availability.UNAVAILABLE)
    none = recommend(spec(), MarketSnapshot([sold]), NOW)
    assert [g.reason for g in none.excluded] == [Reason.UNAVAILABLE]
    hist = replace(
        sold,
        history=History(
            sellouts=3, mean_sellout_hours=10.0, current_since=NOW - timedelta(hours=4)
        ),
    )
    rec = recommend(spec(), MarketSnapshot([hist]), NOW)
    (opt,) = rec.options
    assert opt.time_to_power_hours == pytest.approx(6.0)
    assert str(opt.confidence) == "low"
    assert "3 past sell-outs lasted 10.0 h" in opt.explanation


def test_stale_offers_are_excluded(market: MarketSnapshot) -> None:
    rec = recommend(spec(), market, NOW, stale_before=NOW + timedelta(minutes=1))
    assert not rec.options
    assert {g.reason for g in rec.excluded} <= {
        Reason.GPU_MODEL,
        Reason.MARKET,
        Reason.STALE,
        Reason.UNAVAILABLE,
    }
    assert any(g.reason == Reason.STALE for g in rec.excluded)


def test_best_only_ranking_agrees_with_the_full_ranking(market: MarketSnapshot) -> None:
    from bench.scoring import _bodies
    from broker.requests import RequestIn

    checked = 0
    for body in _bodies(150, seed=11):
        s = RequestIn.model_validate(body).to_spec()
        full = recommend(s, market, NOW)
        fast = recommend(s, market, NOW, with_excluded=False)
        assert (full.best and full.best.keys) == (fast.best and fast.best.keys), body
        assert not fast.excluded
        checked += full.best is not None
    assert checked > 50


def test_marketplace_listings_are_never_combined_but_clouds_are() -> None:
    def four(provider: str, n: int) -> MarketOffer:
        return _offer(
            key=f"{provider}/SE/4x-H100-m{n}/on_demand",
            provider=provider,
            region="SE",
            instance_type=f"4x-H100-m{n}",
            gpu_count=Decimal(4),
            price_per_hour=Decimal(8 + n),
            price_per_gpu_hour=Decimal(8 + n) / 4,
            availability=Availability.AVAILABLE,
            available_count=1,
        )

    vast = recommend(spec(gpus=8), MarketSnapshot([four("vast", 1), four("vast", 2)]), NOW)
    assert not vast.options
    assert {g.reason for g in vast.excluded} == {Reason.COUNT}
    cloud = recommend(spec(gpus=8), MarketSnapshot([four("aws", 1), four("aws", 2)]), NOW)
    (opt,) = cloud.options
    assert [p.instances for p in opt.parts] == [1, 1] and opt.gpus == 8


def test_a_flagged_price_ranks_with_low_confidence_or_is_excluded_on_request() -> None:
    why = "$6.88/GPU-h is under half the median $14.00 of aws's p5.48xlarge on_demand offers"
    flagged = _offer(
        availability=Availability.AVAILABLE, anomalies=(("below_provider_median", why),)
    )
    clean = _offer(
        key="aws/us-west-2/p5.48xlarge/on_demand",
        region="us-west-2",
        availability=Availability.AVAILABLE,
        price_per_hour=Decimal("98.32"),
        price_per_gpu_hour=Decimal("12.29"),
    )
    market = MarketSnapshot([flagged, clean])
    rec = recommend(spec(gpus=8), market, NOW)
    by_key = {o.keys[0]: o for o in rec.options}
    assert by_key[flagged.key].confidence == "low" and by_key[clean.key].confidence == "high"
    assert f"Price flagged (p5.48xlarge): {why}" in by_key[flagged.key].explanation
    assert "Price flagged" not in by_key[clean.key].explanation
    strict = recommend(spec(gpus=8, exclude_anomalies=True), market, NOW)
    assert [o.keys for o in strict.options] == [(clean.key,)]
    (group,) = [g for g in strict.excluded if g.reason == Reason.ANOMALY]
    assert "below_provider_median" in group.as_dict()["message"]


def test_model_count_minimum_and_quantity_unverified() -> None:
    one = _offer(
        key="aws/us-east-1/p5.4xlarge/on_demand",
        instance_type="p5.4xlarge",
        gpu_count=Decimal(1),
        price_per_hour=Decimal("6.00"),
        price_per_gpu_hour=Decimal("6.00"),
    )
    eight = _offer()
    market = MarketSnapshot([one, eight])
    rec = recommend(spec(gpus=16, min_gpus_per_instance={"H100-SXM": 8}), market, NOW)
    assert {k for o in rec.options for k in o.keys} == {eight.key}
    assert any("at least 8 (H100-SXM:8)" in g.as_dict()["message"] for g in rec.excluded)
    # Two p5.48xlarge from a price list that states no count: allowed, and said so.
    (opt,) = rec.options
    assert opt.parts[0].instances == 2
    assert "Quantity unverified: aws states no count for p5.48xlarge" in opt.explanation
