"""`broker.risk`: the pure commitment-risk model. Expectations are recomputed here from the
inputs (spend = rate × GPUs × hours, shares, HHI, weeks), not copied from the code."""

from __future__ import annotations

from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal

from broker import ledger, risk
from broker.config import RiskSettings
from broker.risk import (
    Commitment,
    FlagKind,
    MarketPrice,
    OfferStatus,
    Severity,
    Thresholds,
    UsageSample,
)

AS_OF = datetime(2026, 6, 1, tzinfo=UTC)
H = timedelta(hours=1)
D = timedelta(days=1)
W = timedelta(days=7)


def c(
    id: int,
    provider: str = "aws",
    *,
    gpus: int = 8,
    rate: str = "2.00",
    start: datetime = AS_OF - 10 * D,
    end: datetime = AS_OF + 90 * D,
    family: str = "H100",
    model: str | None = None,
    jurisdiction: str | None = "US",
    region: str = "us-east-1",
    upfront: str = "0",
    kind: str = "contract",
    offer_key: str | None = None,
    form_factor: str | None = None,
    per_node: int | None = None,
    counterparty: str | None = None,
) -> Commitment:
    return Commitment(
        id=id,
        provider=provider,
        gpu_model=model or family,
        gpu_family=family,
        gpus=Decimal(gpus),
        region=region,
        jurisdiction=jurisdiction,
        starts_at=start,
        ends_at=end,
        rate_per_gpu_hour=Decimal(rate),
        upfront_fee=Decimal(upfront),
        kind=kind,
        offer_key=offer_key,
        form_factor=form_factor,
        gpus_per_node=None if per_node is None else Decimal(per_node),
        counterparty=counterparty,
    )


def hours_between(a: datetime, b: datetime) -> Decimal:
    return Decimal(int((b - a).total_seconds())) / 3600


def q2(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.01"), rounding=ROUND_HALF_EVEN)


def q4(d: Decimal) -> Decimal:
    return d.quantize(Decimal("0.0001"), rounding=ROUND_HALF_EVEN)


def test_hours_is_exact() -> None:
    assert risk.hours(timedelta(days=2, minutes=30)) == Decimal("48.5")
    assert risk.hours(timedelta(microseconds=1)) * 3600 * 10**6 == 1


# -------------------------------------------------------------------- concentration


def test_concentration_shares_hhi_and_provider_flag() -> None:
    book = [
        c(1, "aws", gpus=64, rate="3.00", end=AS_OF + 60 * D),
        c(2, "gcp", gpus=16, rate="2.50", end=AS_OF + 30 * D, region="us-central1"),
        c(3, "lambda_cloud", gpus=8, rate="2.00", start=AS_OF + 7 * D, end=AS_OF + 37 * D),
        c(4, "aws", gpus=8, rate="9.99", end=AS_OF - H),  # ended: not in the live book
    ]
    spend = {
        "aws": Decimal("3.00") * 64 * hours_between(AS_OF, AS_OF + 60 * D),
        "gcp": Decimal("2.50") * 16 * hours_between(AS_OF, AS_OF + 30 * D),
        "lambda_cloud": Decimal("2.00") * 8 * hours_between(AS_OF + 7 * D, AS_OF + 37 * D),
    }
    total = sum(spend.values(), Decimal(0))
    conc = risk.concentration(book, AS_OF, "provider")
    assert [s.name for s in conc.shares] == ["aws", "gcp", "lambda_cloud"]
    for s in conc.shares:
        assert s.spend == q2(spend[s.name])
        assert s.spend_share == q4(spend[s.name] / total)
    assert conc.total_spend == q2(total)
    assert conc.hhi == sum((((v / total) * 100) ** 2 for v in spend.values()), Decimal(0)).quantize(
        Decimal(1)
    )
    gh = {
        "aws": 64 * hours_between(AS_OF, AS_OF + 60 * D),
        "gcp": 16 * hours_between(AS_OF, AS_OF + 30 * D),
        "lambda_cloud": 8 * hours_between(AS_OF + 7 * D, AS_OF + 37 * D),
    }
    assert {s.name: s.gpu_hours for s in conc.shares} == gh

    flags = risk.concentration_flags(conc, Decimal("0.5"), book, AS_OF)
    assert [f.kind for f in flags] == [FlagKind.PROVIDER_CONCENTRATION]
    (flag,) = flags
    assert flag.reservation_ids == (1,)
    aws_pct = (spend["aws"] / total * 100).quantize(Decimal("0.1"))
    assert f"aws holds {aws_pct}%" in flag.message
    assert "above the 50.0% provider threshold" in flag.message
    # A higher threshold: nothing to say.
    assert risk.concentration_flags(conc, Decimal("0.99"), book, AS_OF) == []


def test_jurisdiction_flag_counts_gpu_hours_too() -> None:
    # Spend is split evenly, but the EU holds 80 % of the GPU-hours (cheap GPUs).
    book = [
        c(1, "verda", gpus=32, rate="1.00", jurisdiction="EU", region="FIN-01"),
        c(2, "aws", gpus=8, rate="4.00", jurisdiction="US"),
    ]
    conc = risk.concentration(book, AS_OF, "jurisdiction")
    eu = next(s for s in conc.shares if s.name == "EU")
    assert eu.spend_share == Decimal("0.5") and eu.gpu_hours_share == Decimal("0.8")
    (flag,) = risk.concentration_flags(conc, Decimal("0.75"), book, AS_OF)
    assert flag.kind == FlagKind.JURISDICTION_CONCENTRATION and flag.subject == "jurisdiction EU"
    assert "80.0% of the remaining GPU-hours" in flag.message
    unknown = risk.concentration([c(5, jurisdiction=None)], AS_OF, "jurisdiction")
    assert [s.name for s in unknown.shares] == ["unknown"]
    assert unknown.hhi == Decimal(10000)


# -------------------------------------------------------------------- expiry cliffs


def test_expiry_cliffs_by_week_with_replacement_by_family() -> None:
    book = [
        c(1, gpus=64, end=AS_OF + 2 * D),  # week 0
        c(2, gpus=32, end=AS_OF + 9 * D),  # week 1, replaced by #3 (same family)
        c(3, gpus=32, start=AS_OF + 10 * D, end=AS_OF + 200 * D),
        c(4, gpus=16, end=AS_OF + 16 * D, family="A100"),  # week 2, #5 is another family
        c(5, gpus=16, start=AS_OF + 15 * D, end=AS_OF + 100 * D),
        c(6, gpus=8, end=AS_OF + 400 * D),
    ]
    weeks, flags = risk.expiry_cliffs(book, AS_OF, 26, Decimal("0.25"))
    assert len(weeks) == 26
    assert weeks[0].week_start == AS_OF and weeks[25].week_end == AS_OF + 26 * W
    expected_flagged = []
    for i, w in enumerate(weeks):
        ws, we = AS_OF + i * W, AS_OF + (i + 1) * W
        live = [x for x in book if x.starts_at < we and x.ends_at > ws]
        exp = [x for x in live if ws < x.ends_at <= we]
        new = [x for x in live if ws <= x.starts_at < we]
        unreplaced = sum(
            (
                max(
                    Decimal(0),
                    sum(x.gpus for x in exp if x.gpu_family == fam)
                    - sum((x.gpus for x in new if x.gpu_family == fam), Decimal(0)),
                )
                for fam in {x.gpu_family for x in exp}
            ),
            Decimal(0),
        )
        live_gpus = sum(x.gpus for x in live)
        assert w.gpus_live == live_gpus
        assert w.gpus_expiring == sum((x.gpus for x in exp), Decimal(0))
        assert w.gpus_unreplaced == unreplaced
        assert w.reservations_expiring == tuple(sorted(x.id for x in exp))
        assert w.monthly_spend_expiring == q2(
            sum((x.rate_per_gpu_hour * x.gpus for x in exp), Decimal(0)) * 730
        )
        assert w.flagged == (unreplaced / live_gpus > Decimal("0.25"))
        if w.flagged:
            expected_flagged.append(f"week of {ws:%Y-%m-%d}")
    # Week 0: 64 of 64+32+16+8 GPUs expire, nothing starts.
    assert weeks[0].gpus_unreplaced == 64 and weeks[0].flagged
    assert weeks[0].unreplaced_share == q4(Decimal(64) / 120)
    # Week 1: #2 expires, #3 (same family, same size) starts: replaced.
    assert weeks[1].gpus_expiring == 32 and weeks[1].gpus_unreplaced == 0
    assert not weeks[1].flagged
    # Week 2: 16 A100 expire; 16 H100 starting do not replace them: 16 of 104 < 25 %.
    assert weeks[2].gpus_unreplaced == 16 and not weeks[2].flagged
    # Week 14: #5 (16 of the 56 GPUs then) ends unreplaced: 28.6 % > 25 %.
    assert [f.subject for f in flags] == expected_flagged
    assert expected_flagged == [f"week of {AS_OF:%Y-%m-%d}", f"week of {AS_OF + 14 * W:%Y-%m-%d}"]
    assert flags[0].reservation_ids == (1,)
    assert "64 GPUs expire" in flags[0].message and "above the 25.0% threshold" in flags[0].message
    # With a 10 % threshold, week 2 (15.4 %) is flagged too.
    _, low = risk.expiry_cliffs(book, AS_OF, 26, Decimal("0.10"))
    assert len(low) == 3 and "A100: 16" in low[1].message


# ---------------------------------------------------------------------- utilisation


def test_utilisation_over_reported_periods_and_flags() -> None:
    res = c(1, gpus=8, rate="2.00", start=AS_OF - 20 * D)
    samples = [
        UsageSample(1, AS_OF - 20 * D, AS_OF - 13 * D, Decimal("600")),
        UsageSample(1, AS_OF - 13 * D, AS_OF - 6 * D, Decimal("500")),
        UsageSample(1, AS_OF - 1 * D, AS_OF + 1 * D, Decimal("300")),  # ends after as_of
        UsageSample(2, AS_OF - 13 * D, AS_OF - 6 * D, Decimal("1")),  # another reservation
    ]
    u = risk.utilisation_of(res, samples, AS_OF)
    covered = 8 * hours_between(AS_OF - 20 * D, AS_OF - 6 * D)
    assert u.samples == 2 and u.used_gpu_hours == 1100 and u.covered_gpu_hours == covered
    assert u.ratio == q4(Decimal(1100) / covered)
    (flag,) = risk.utilisation_flags(res, u, AS_OF, Thresholds())
    assert flag.kind == FlagKind.LOW_UTILISATION and flag.reservation_ids == (1,)
    idle = q2((1 - Decimal(1100) / covered) * Decimal("2.00") * 8 * 730)
    assert f"${idle:,.2f}/month" in flag.message and "below the 60.0% floor" in flag.message
    assert risk.utilisation_flags(res, u, AS_OF, Thresholds(utilisation_floor=Decimal("0.3"))) == []


def test_no_usage_is_informational_after_the_grace_period() -> None:
    none = risk.utilisation_of(c(1, start=AS_OF - 3 * D), [], AS_OF)
    assert none.ratio is None and none.samples == 0
    t = Thresholds(usage_grace_hours=168)
    assert risk.utilisation_flags(c(1, start=AS_OF - 3 * D), none, AS_OF, t) == []
    (flag,) = risk.utilisation_flags(c(1, start=AS_OF - 8 * D), none, AS_OF, t)
    assert flag.kind == FlagKind.NO_USAGE and flag.severity == Severity.INFO
    assert "has run 8 days with no usage reported" in flag.message
    # Not started yet: nothing to report.
    assert risk.utilisation_flags(c(1, start=AS_OF + D), none, AS_OF, t) == []


# ----------------------------------------------------------------------- staleness


def test_stale_offer_withdrawn_offer_and_stale_provider() -> None:
    now = AS_OF
    after = timedelta(minutes=120)
    offers = {
        "fresh": OfferStatus("fresh", True, now - 30 * timedelta(minutes=1)),
        "old": OfferStatus("old", True, now - 5 * H),
        "gone": OfferStatus("gone", False, now - 2 * D, withdrawn_at=now - 2 * D),
    }
    last = {"aws": now - 3 * H, "gcp": now - 10 * timedelta(minutes=1)}
    assert risk.staleness(c(1, offer_key="fresh"), offers, last, now, after) is None
    stale = risk.staleness(c(2, offer_key="old"), offers, last, now, after)
    assert stale is not None and stale.kind == FlagKind.STALE_OFFER
    assert "last seen 5.0 h ago" in stale.message and "120 min" in stale.message
    gone = risk.staleness(c(3, offer_key="gone"), offers, last, now, after)
    assert gone is not None and gone.kind == FlagKind.OFFER_WITHDRAWN
    assert f"withdrew on {now - 2 * D:%Y-%m-%d}" in gone.message
    external = risk.staleness(c(4, "aws"), offers, last, now, after)
    assert external is not None and external.kind == FlagKind.PROVIDER_STALE
    assert risk.staleness(c(5, "gcp"), offers, last, now, after) is None
    # A provider the broker has no data for: nothing to be stale.
    assert risk.staleness(c(6, "other"), offers, last, now, after) is None


# ------------------------------------------------------------------- mark-to-market


def mp(key: str, price: str, **kw: object) -> MarketPrice:
    """An offer of today's market; by default 8 × H100-SXM per instance, EU, on demand."""
    base = MarketPrice(
        key=key,
        provider=key.split("/")[0],
        gpu_model="H100-SXM",
        gpu_family="H100",
        form_factor="SXM",
        gpus_per_instance=Decimal(8),
        gpu_memory_gb=Decimal(80),
        jurisdiction="EU",
        market="on_demand",
        price_per_gpu_hour=Decimal(price),
        last_seen=AS_OF - 10 * timedelta(minutes=1),
    )
    return replace(base, **kw)  # type: ignore[arg-type]


MARKET = [
    mp("lambda_cloud/eu/8x-h100-sxm/on_demand", "2.99"),
    mp("verda/fin/8x-h100-sxm/on_demand", "3.10"),
    mp("vast/de/h100/spot", "1.20", market="spot"),
    mp("aws/us/h100/on_demand", "1.50", jurisdiction="US"),
    mp("gcp/eu/a100/on_demand", "1.00", gpu_family="A100", gpu_model="A100", form_factor=None),
    mp("runpod/eu/h100/on_demand", "2.50", last_seen=AS_OF - 3 * H),  # stale
    # A marketplace listing: one machine of 8 GPUs.
    mp("vast/de/h100/on_demand", "2.20", max_gpus=Decimal(8)),
    # Cheaper H100s that are not an 8-GPU SXM node: another form factor, a single GPU, and
    # a listing whose provider did not say which H100 it is.
    mp(
        "lambda_cloud/eu/1x-h100-pcie/on_demand",
        "1.90",
        gpu_model="H100-PCIe",
        form_factor="PCIe",
        gpus_per_instance=Decimal(1),
    ),
    mp("lambda_cloud/eu/1x-h100-sxm/on_demand", "2.10", gpus_per_instance=Decimal(1)),
    mp(
        "vast/fr/h100/on_demand",
        "1.95",
        gpu_model="H100",
        form_factor=None,
        max_gpus=Decimal(8),
    ),
]
STALE_BEFORE = AS_OF - 2 * H


def cheapest_like_for_like(res: Commitment) -> MarketPrice | None:
    """The expected comparable, by the rule written out here: fresh, same family, the form
    factor the commitment names, at least its GPUs per node, same jurisdiction, on demand
    (spot for spot), a marketplace listing only if it holds every GPU."""
    fits = [
        m
        for m in MARKET
        if m.last_seen >= STALE_BEFORE
        and m.gpu_family == res.gpu_family
        and (res.form_factor is None or m.form_factor == res.form_factor)
        and (res.gpus_per_node is None or m.gpus_per_instance >= res.gpus_per_node)
        and m.jurisdiction == res.jurisdiction
        and m.market == ("spot" if res.kind == "spot" else "on_demand")
        and (m.max_gpus is None or m.max_gpus >= res.gpus)
    ]
    return min(fits, key=lambda m: (m.price_per_gpu_hour, m.key), default=None)


def sxm_node(
    id: int = 1, *, gpus: int = 16, per_node: int | None = 8, rate: str = "3.00"
) -> Commitment:
    return c(
        id,
        "lambda_cloud",
        gpus=gpus,
        rate=rate,
        model="H100-SXM",
        form_factor="SXM",
        per_node=per_node,
        jurisdiction="EU",
        region="europe-central-1",
        end=AS_OF + 30 * D,
    )


def test_an_sxm_node_is_marked_only_against_sxm_offers_of_at_least_its_node_size() -> None:
    res = sxm_node()
    m = risk.mark_to_market(res, MARKET, AS_OF, STALE_BEFORE)
    best = cheapest_like_for_like(res)
    assert best is not None and m.market_offer_key == best.key
    # Not the $1.90 PCIe card, not the $2.10 single SXM GPU, not the $1.95 H100 of unknown
    # form factor: the 8-GPU SXM node at $2.99.
    assert m.market_offer_key == "lambda_cloud/eu/8x-h100-sxm/on_demand"
    assert (m.market_gpu_model, m.market_gpus_per_instance) == ("H100-SXM", Decimal(8))
    assert m.basis == "on_demand offers of H100-SXM with at least 8 GPUs per instance in EU"
    cheaper_unlike = [
        x
        for x in MARKET
        if x.price_per_gpu_hour < best.price_per_gpu_hour and x.market == "on_demand"
    ]
    assert {x.form_factor for x in cheaper_unlike} >= {"PCIe", None}
    assert {x.gpus_per_instance for x in cheaper_unlike} >= {Decimal(1)}
    # An 8-GPU node fits the 8-GPU marketplace listing.
    small = risk.mark_to_market(sxm_node(gpus=8), MARKET, AS_OF, STALE_BEFORE)
    assert small.market_offer_key == "vast/de/h100/on_demand"
    assert small.market_offer_key == getattr(cheapest_like_for_like(sxm_node(gpus=8)), "key", None)


def test_an_80gb_commitment_is_not_marked_against_a_40gb_card() -> None:
    a100 = [
        mp(
            "gcp/eu/a100-40/on_demand",
            "1.00",
            gpu_family="A100",
            gpu_model="A100",
            form_factor=None,
            gpu_memory_gb=Decimal(40),
        ),
        mp(
            "gcp/eu/a100-80/on_demand",
            "1.60",
            gpu_family="A100",
            gpu_model="A100-80GB",
            form_factor=None,
            gpu_memory_gb=Decimal("79.2"),
        ),
        mp(
            "gcp/eu/a100-x/on_demand",
            "1.20",
            gpu_family="A100",
            gpu_model="A100",
            form_factor=None,
            gpu_memory_gb=None,
        ),
    ]
    big = replace(
        c(1, family="A100", model="A100-80GB", jurisdiction="EU", rate="2.00"),
        gpu_memory_gb=Decimal(80),
    )
    m = risk.mark_to_market(big, a100, AS_OF, STALE_BEFORE)
    # Unknown memory cannot be judged and passes; the stated 40 GB card never does.
    assert m.market_offer_key == "gcp/eu/a100-x/on_demand"
    known = [x for x in a100 if x.gpu_memory_gb is not None]
    assert risk.mark_to_market(big, known, AS_OF, STALE_BEFORE).market_offer_key == (
        "gcp/eu/a100-80/on_demand"
    )
    small = replace(big, gpu_model="A100", gpu_memory_gb=Decimal(40))
    assert risk.mark_to_market(small, known, AS_OF, STALE_BEFORE).market_offer_key == (
        "gcp/eu/a100-40/on_demand"
    )


def test_without_a_node_size_any_size_compares_and_a_plain_family_any_form_factor() -> None:
    # An external SXM commitment records no GPUs per node: offers of any size compare, and
    # the basis says so.
    external = sxm_node(per_node=None)
    m = risk.mark_to_market(external, MARKET, AS_OF, STALE_BEFORE)
    assert m.market_offer_key == "lambda_cloud/eu/1x-h100-sxm/on_demand"
    assert m.market_offer_key == getattr(cheapest_like_for_like(external), "key", None)
    assert "of any instance size (the commitment records no GPUs per node)" in m.basis
    # A commitment on plain H100 compares with any H100, the PCIe card included.
    plain = c(2, gpus=16, rate="3.00", jurisdiction="EU")
    assert plain.form_factor is None
    p = risk.mark_to_market(plain, MARKET, AS_OF, STALE_BEFORE)
    assert p.market_offer_key == "lambda_cloud/eu/1x-h100-pcie/on_demand"
    assert p.market_offer_key == getattr(cheapest_like_for_like(plain), "key", None)
    assert p.basis.startswith("on_demand offers of any H100 of any instance size")
    # Nothing like for like: no figures, and the note says what was looked for.
    nvl = replace(sxm_node(), gpu_model="H100-NVL", form_factor="NVL")
    none = risk.mark_to_market(nvl, MARKET, AS_OF, STALE_BEFORE)
    assert none.market_rate is None and none.monthly_delta is None and none.premium is None
    assert none.note == (
        "no fresh on_demand offers of H100-NVL with at least 8 GPUs per instance in EU "
        "to compare with"
    )


def test_mark_to_market_monthly_delta_sign_and_overpayment_flag() -> None:
    res = sxm_node(rate="4.10")
    best = cheapest_like_for_like(res)
    assert best is not None
    m = risk.mark_to_market(res, MARKET, AS_OF, STALE_BEFORE)
    diff = Decimal("4.10") - best.price_per_gpu_hour
    assert diff > 0
    assert m.monthly_delta == q2(diff * 16 * 730) and m.monthly_delta > 0
    assert m.remaining_delta == q2(diff * 16 * hours_between(AS_OF, AS_OF + 30 * D))
    assert m.premium == q4(diff / best.price_per_gpu_hour) and m.premium > 0
    flag = risk.overpayment_flag(res, m, Decimal("0.05"))
    assert flag is not None and flag.kind == FlagKind.OVERPAYING
    assert best.key in flag.message and f"${q2(diff * 16 * 730):,.2f}/month" in flag.message
    assert f"{risk.pct(m.premium)} above the market" in flag.message
    assert "8 × H100-SXM per instance" in flag.message and m.basis in flag.message
    # Cheaper than the market: negative figures, no flag.
    cheap = risk.mark_to_market(sxm_node(rate="2.00"), MARKET, AS_OF, STALE_BEFORE)
    assert cheap.monthly_delta == q2((Decimal("2.00") - best.price_per_gpu_hour) * 16 * 730)
    assert cheap.monthly_delta < 0 and cheap.premium is not None and cheap.premium < 0
    assert risk.overpayment_flag(res, cheap, Decimal("0.05")) is None
    # Within tolerance: no flag.
    near = sxm_node(rate="3.10")
    near_m = risk.mark_to_market(near, MARKET, AS_OF, STALE_BEFORE)
    assert near_m.monthly_delta is not None and near_m.monthly_delta > 0
    assert risk.overpayment_flag(near, near_m, Decimal("0.05")) is None


def test_mark_to_market_spreads_upfront_and_matches_spot_with_spot() -> None:
    start, end = AS_OF - 10 * D, AS_OF + 355 * D
    res = c(1, gpus=8, rate="2.00", upfront="8760", jurisdiction="EU", start=start, end=end)
    eff = Decimal("2.00") + Decimal(8760) / (8 * hours_between(start, end))
    assert risk.effective_rate(res) == eff.quantize(Decimal("0.000001"))
    spot = risk.mark_to_market(
        c(2, gpus=8, rate="1.50", kind="spot", jurisdiction="EU"), MARKET, AS_OF, STALE_BEFORE
    )
    assert spot.market == "spot" and spot.market_offer_key == "vast/de/h100/spot"
    none = risk.mark_to_market(c(3, jurisdiction="JP"), MARKET, AS_OF, STALE_BEFORE)
    assert none.market_rate is None and none.monthly_delta is None
    assert none.note == (
        "no fresh on_demand offers of any H100 of any instance size (the commitment records "
        "no GPUs per node) in JP to compare with"
    )


def test_signed_texts_write_the_sign_of_a_difference() -> None:
    assert risk.signed_usd(Decimal("4088")) == "+$4,088.00"
    assert risk.signed_usd(Decimal("-12.5")) == "-$12.50"
    assert risk.signed_usd(Decimal("0.001")) == "$0.00"
    assert risk.signed_pct(Decimal("0.2128")) == "+21.3%"
    assert risk.signed_pct(Decimal("-0.04")) == "-4.0%"
    assert risk.signed_pct(Decimal("-0.0001")) == "0.0%"


# -------------------------------------------------------------------- counterparty


def test_an_untracked_provider_is_named_by_its_counterparty_never_a_guess() -> None:
    assert risk.UNTRACKED_PROVIDER == ledger.OTHER_PROVIDER
    colo = c(1, "other", gpus=8, counterparty="Zurich Colo AG", jurisdiction="CH")
    other_colo = c(2, "other", gpus=8, counterparty="Geneva DC SA", jurisdiction="CH")
    unnamed = c(3, "other", gpus=8, jurisdiction="CH")
    cloud = c(4, "gcp", gpus=8, counterparty="Google Cloud EMEA")
    assert colo.party == "Zurich Colo AG" and colo.label == "#1 (8 H100, Zurich Colo AG)"
    assert unnamed.party == risk.UNNAMED_COUNTERPARTY == "other (counterparty not recorded)"
    assert cloud.party == "gcp"  # a tracked provider keeps its id
    conc = risk.concentration([colo, other_colo, unnamed, cloud], AS_OF, "provider")
    assert {s.name for s in conc.shares} == {
        "Zurich Colo AG",
        "Geneva DC SA",
        risk.UNNAMED_COUNTERPARTY,
        "gcp",
    }
    region = risk.concentration([colo], AS_OF, "region")
    assert [s.name for s in region.shares] == ["Zurich Colo AG/us-east-1"]
    small = c(5, "gcp", gpus=2)
    (flag,) = risk.concentration_flags(
        risk.concentration([colo, small], AS_OF, "provider"), Decimal("0.5"), [colo], AS_OF
    )
    assert flag.subject == "provider Zurich Colo AG" and "other" not in flag.message


# ------------------------------------------------------------------------- assess


def test_assess_totals_rows_and_every_flag_has_a_sentence() -> None:
    book = [
        c(1, "aws", gpus=64, rate="4.00", jurisdiction="EU", end=AS_OF + 3 * D),
        c(2, "aws", gpus=8, rate="2.00", jurisdiction="EU", start=AS_OF + D, end=AS_OF + 60 * D),
        c(3, "gcp", gpus=8, rate="2.00", end=AS_OF - D),  # over before as_of
    ]
    usage = [UsageSample(1, AS_OF - 10 * D, AS_OF - 3 * D, Decimal(1000))]
    report = risk.assess(
        book, usage, {}, {}, MARKET, as_of=AS_OF, now=AS_OF, thresholds=Thresholds()
    )
    assert [r.commitment.id for r in report.rows] == [1, 2]
    t = report.totals
    assert t.gpus_running == 64 and t.gpus_committed == 72
    assert t.hourly_run_rate == Decimal("256.00")
    assert t.monthly_run_rate == Decimal(256 * 730)
    total1 = Decimal("4.00") * 64 * hours_between(AS_OF - 10 * D, AS_OF + 3 * D)
    total2 = Decimal("2.00") * 8 * hours_between(AS_OF + D, AS_OF + 60 * D)
    assert t.total_commitment == q2(total1) + q2(total2)
    rem1 = Decimal("4.00") * 64 * 72
    assert t.remaining_commitment == q2(rem1) + q2(total2)
    assert t.used_gpu_hours == 1000
    assert t.utilisation == q4(Decimal(1000) / (64 * 7 * 24))
    kinds = {f.kind for f in report.flags}
    assert FlagKind.PROVIDER_CONCENTRATION in kinds  # aws holds all
    assert FlagKind.JURISDICTION_CONCENTRATION in kinds  # EU holds all
    assert FlagKind.EXPIRY_CLIFF in kinds  # 64 of 72 GPUs end in week 0
    assert FlagKind.LOW_UTILISATION in kinds
    assert FlagKind.OVERPAYING in kinds  # $4.00 vs $1.90 for any H100 on demand in the EU
    for f in report.flags:
        assert f.message.endswith(".") and len(f.message) > 40
    mtm = [r.mark_to_market.monthly_delta for r in report.rows]
    assert t.monthly_mark_to_market == sum(d for d in mtm if d is not None)
    assert t.monthly_overpayment == sum(d for d in mtm if d is not None and d > 0)


def test_thresholds_from_settings() -> None:
    s = RiskSettings(max_provider_share=0.4, expiry_weeks=12)
    t = Thresholds.from_settings(s, stale_after_minutes=30)
    assert t.max_provider_share == Decimal("0.4") and t.expiry_weeks == 12
    assert t.stale_after == timedelta(minutes=30)
    assert t.as_dict()["stale_after_minutes"] == 30
