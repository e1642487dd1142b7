"""Price sanity rules: which offers carry a number that looks like a source's mistake.

This module owns the rules that mark a price as suspicious and the one sentence that says
why. It is pure: it reads offers (anything shaped like `PricedOffer`: a
`broker.domain.Offer`, a `broker.models.StoredOffer`, a query row) and returns flags. It
does not drop, correct or re-rank an offer, and leaves storage, the API and alerting to
their modules: a flag is advice to the user ("this number is suspicious"), not a verdict.

Every rule compares an offer with other offers of the same batch, so `detect` must be given
a whole market (one poll of every provider, or the active offers of the store). Given one
provider's offers only, rule 4 has nothing to compare with and stays silent.

## The rules
Thresholds are the module constants below; docs/anomalies.md gives the reasoning and what
each rule flags on every snapshot of the market data set.

1. `below_provider_median` / `above_provider_median`: the price per GPU-hour is under
   half or over twice (spot: under 1/5 or over 5x) the median of the same provider's
   offers of the same instance type and market in the *other* regions, when there are at
   least `MIN_OTHER_REGIONS` of them. Each region counts once (the median of its zones), so
   a region listed per zone does not outvote the others.
2. `same_price_all_sizes`: one price per instance-hour shared by at least
   `MIN_SIZES_SHARING_PRICE` different accelerator counts of one model, in one place
   (provider, region, zone) and market: a placeholder, not a price list.
3. `spot_above_on_demand`: a spot offer priced above the cheapest on-demand offer of the
   same instance type in the same provider, region and zone (by more than
   `SPOT_ABOVE_TOLERANCE`, a rounding allowance). Equal is not above.
4. `implausible_for_model`: the price per GPU-hour is more than `MARKET_FACTOR_ON_DEMAND`
   (spot: `MARKET_FACTOR_SPOT`) times away from the market price of the model in its market
   class (spot, or every other market), judged only when at least `MIN_MARKET_PROVIDERS`
   providers with `MIN_MARKET_OFFERS` offers between them sell it. The market price is the
   median of the providers' own medians: each provider is one vote, whatever the size of
   its catalogue.

Offers whose `gpu_model` is None skip rules 2 and 4. Offers flagged by rule 2 are still
judged by rules 1 and 4 but left out of their medians, so a placeholder repeated in a few
regions does not pull the reference towards itself.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from decimal import Decimal
from itertools import chain
from typing import Protocol

#: Stable machine codes, in the order `detect` lists an offer's anomalies.
BELOW_PROVIDER_MEDIAN = "below_provider_median"
ABOVE_PROVIDER_MEDIAN = "above_provider_median"
SAME_PRICE_ALL_SIZES = "same_price_all_sizes"
SPOT_ABOVE_ON_DEMAND = "spot_above_on_demand"
IMPLAUSIBLE_FOR_MODEL = "implausible_for_model"
CODES: tuple[str, ...] = (
    BELOW_PROVIDER_MEDIAN,
    ABOVE_PROVIDER_MEDIAN,
    SAME_PRICE_ALL_SIZES,
    SPOT_ABOVE_ON_DEMAND,
    IMPLAUSIBLE_FOR_MODEL,
)

#: Rule 1, list prices (every market but spot). On-demand prices of one instance type stay
#: within 0.61x-1.42x of the other regions' median in the SkyPilot snapshots; in the 2026
#: ones only GCP's half-price H100 regions (0.45x-0.50x) and two Azure edge-zone T4 sizes
#: (2.04x) fall outside half .. twice.
PROVIDER_LOW_FACTOR = Decimal("0.5")
PROVIDER_HIGH_FACTOR = Decimal(2)
#: Rule 1, spot: spot prices follow each region's spare capacity; 0.21x-5.3x occur across
#: the data set, so only a price five times away from the other regions counts.
PROVIDER_SPOT_LOW_FACTOR = Decimal("0.2")
PROVIDER_SPOT_HIGH_FACTOR = Decimal(5)
#: Fewer other regions than this give no median worth comparing with.
MIN_OTHER_REGIONS = 3

#: Rule 2. Two sizes at one price can be a coincidence or a flat-rate product; three cannot.
MIN_SIZES_SHARING_PRICE = 3

#: Rule 3. Spot above on-demand by more than this fraction. AWS writes spot prices to four
#: decimals, so a spot price at its cap (the on-demand price) can read a hair above it
#: (p4d.24xlarge, ap-northeast-2, 2022-12-31: spot 45.388500, on-demand 45.38848).
SPOT_ABOVE_TOLERANCE = Decimal("0.001")

#: Rule 4. How far from the market price of the model a per-GPU price may be. Ordinary
#: offers reach 0.19x-8.5x on demand (Lambda's 8x V100 below, Azure's V100 against Lambda's
#: and Vast's above) and 0.18x-19x on spot (one T4 on a 64-vCPU AWS host): this rule is a
#: backstop for gross errors (cents, per-month, per-slice prices), not a judge of fair
#: prices; at 4x it would flag up to 188 ordinary offers of one snapshot.
MARKET_FACTOR_ON_DEMAND = Decimal(10)
MARKET_FACTOR_SPOT = Decimal(25)
MIN_MARKET_PROVIDERS = 2
MIN_MARKET_OFFERS = 10

_SPOT = "spot"
_ON_DEMAND = "on_demand"


@dataclass(frozen=True, slots=True)
class Anomaly:
    """One suspicious thing about one offer's price.

    `code` is one of `CODES`, stable for machines; `message` is one sentence for people,
    with the numbers that made the rule fire.
    """

    code: str
    message: str

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


class PricedOffer(Protocol):
    """What the rules read of an offer. `broker.domain.Offer`, `broker.models.StoredOffer`
    and SQLAlchemy rows with these columns all fit (read-only properties, so frozen
    dataclasses and rows satisfy it). Money is USD `Decimal`; `market` is the market's
    string value (`Market` is a `StrEnum`)."""

    @property
    def key(self) -> str: ...
    @property
    def provider(self) -> str: ...
    @property
    def region(self) -> str: ...
    @property
    def zone(self) -> str | None: ...
    @property
    def instance_type(self) -> str: ...
    @property
    def market(self) -> str: ...
    @property
    def gpu_model(self) -> str | None: ...
    @property
    def gpu_family(self) -> str | None: ...
    @property
    def accelerator_kind(self) -> str | None: ...
    @property
    def gpu_count(self) -> Decimal: ...
    @property
    def price_per_hour(self) -> Decimal: ...
    @property
    def price_per_gpu_hour(self) -> Decimal: ...


Finding = tuple[str, Anomaly]  # (offer key, anomaly)


@dataclass(frozen=True, slots=True)
class _Read:
    """An offer's fields read once: `Offer.key` and `Offer.price_per_gpu_hour` are computed
    properties, and every rule reads them several times."""

    key: str
    provider: str
    region: str
    zone: str | None
    instance_type: str
    market: str
    gpu_model: str | None
    gpu_family: str | None
    accelerator_kind: str | None
    gpu_count: Decimal
    price_per_hour: Decimal
    price_per_gpu_hour: Decimal


def _read(offer: PricedOffer) -> _Read:
    return _Read(
        key=offer.key,
        provider=offer.provider,
        region=offer.region,
        zone=offer.zone,
        instance_type=offer.instance_type,
        market=str(offer.market),
        gpu_model=offer.gpu_model,
        gpu_family=offer.gpu_family,
        accelerator_kind=offer.accelerator_kind,
        gpu_count=offer.gpu_count,
        price_per_hour=offer.price_per_hour,
        price_per_gpu_hour=offer.price_per_gpu_hour,
    )


def detect(offers: Iterable[PricedOffer]) -> dict[str, tuple[Anomaly, ...]]:
    """Offer key -> its anomalies, in `CODES` order; offers with none are absent.

    `offers` should be a whole market (see the module docstring). Placeholder prices (rule
    2) are judged like any other price but left out of the medians of rules 1 and 4, so a
    placeholder repeated across regions does not drag the reference towards itself. Linear
    in the number of offers plus a sort per group: about 60 ms of CPU for 6277 offers.
    """
    batch = [_read(offer) for offer in offers]
    placeholders = list(same_price_all_sizes(batch))
    ignored = frozenset(key for key, _ in placeholders)
    found: dict[str, list[Anomaly]] = defaultdict(list)
    for key, anomaly in chain(
        provider_median_outliers(batch, ignored),
        placeholders,
        spot_above_on_demand(batch),
        implausible_for_model(batch, ignored),
    ):
        found[key].append(anomaly)
    return {key: tuple(dict.fromkeys(anomalies)) for key, anomalies in found.items()}


def provider_median_outliers(
    offers: Sequence[PricedOffer], ignored: frozenset[str] = frozenset()
) -> Iterator[Finding]:
    """Rule 1: `below_provider_median` / `above_provider_median`.

    `ignored`: keys of offers left out of the medians (they are still judged).
    """
    groups: dict[tuple[str, str, str], list[PricedOffer]] = defaultdict(list)
    for offer in offers:
        groups[(offer.provider, offer.instance_type, str(offer.market))].append(offer)
    for (provider, instance_type, market), members in groups.items():
        references = _other_region_medians(members, ignored)
        low, high = _provider_factors(market)
        for offer in members:
            reference = references.get(offer.region)
            if reference is None:
                continue
            median, n_regions = reference
            price = offer.price_per_gpu_hour
            if price < median * low:
                code, side = BELOW_PROVIDER_MEDIAN, f"under {_fraction(low)}"
            elif price > median * high:
                code, side = ABOVE_PROVIDER_MEDIAN, f"over {_multiple(high)}"
            else:
                continue
            message = (
                f"{_usd(price)}/{_unit(offer)}-h is {side} the median {_usd(median)} of "
                f"{provider}'s {instance_type} {market} offers in {n_regions} other regions"
            )
            yield offer.key, Anomaly(code, message)


def _other_region_medians(
    members: Sequence[PricedOffer], ignored: frozenset[str]
) -> dict[str, tuple[Decimal, int]]:
    """Region -> (median per GPU-hour of the other regions, how many), for the regions of
    `members` that have at least `MIN_OTHER_REGIONS` others. A region's own price is the
    median of its offers (zones), so each region is one vote."""
    by_region: dict[str, list[Decimal]] = defaultdict(list)
    for offer in members:
        if offer.key not in ignored:
            by_region[offer.region].append(offer.price_per_gpu_hour)
    region_price = {region: _median(prices) for region, prices in by_region.items()}
    references: dict[str, tuple[Decimal, int]] = {}
    for region in {offer.region for offer in members}:
        others = [price for other, price in region_price.items() if other != region]
        if len(others) >= MIN_OTHER_REGIONS:
            references[region] = (_median(others), len(others))
    return references


def same_price_all_sizes(offers: Sequence[PricedOffer]) -> Iterator[Finding]:
    """Rule 2: `same_price_all_sizes`."""
    groups: dict[tuple[str, str, str | None, str, str], list[PricedOffer]] = defaultdict(list)
    for offer in offers:
        if offer.gpu_model:
            place = (offer.provider, offer.region, offer.zone, str(offer.market))
            groups[(*place, offer.gpu_model)].append(offer)
    for (provider, region, zone, market, model), members in groups.items():
        counts_at: dict[Decimal, set[Decimal]] = defaultdict(set)
        for offer in members:
            counts_at[offer.price_per_hour].add(offer.gpu_count)
        for price, counts in counts_at.items():
            if len(counts) < MIN_SIZES_SHARING_PRICE:
                continue
            unit = f"{_unit(members[0])}s"
            message = (
                f"{len(counts)} sizes of {model} ({_number(min(counts))} to "
                f"{_number(max(counts))} {unit}) all cost {_usd(price)}/h in {provider} "
                f"{_place(region, zone)} {market}"
            )
            for offer in members:
                if offer.price_per_hour == price:
                    yield offer.key, Anomaly(SAME_PRICE_ALL_SIZES, message)


def spot_above_on_demand(offers: Sequence[PricedOffer]) -> Iterator[Finding]:
    """Rule 3: `spot_above_on_demand`."""
    on_demand: dict[tuple[str, str, str | None, str], Decimal] = {}
    for offer in offers:
        if str(offer.market) == _ON_DEMAND:
            where = (offer.provider, offer.region, offer.zone, offer.instance_type)
            known = on_demand.get(where)
            if known is None or offer.price_per_hour < known:
                on_demand[where] = offer.price_per_hour
    for offer in offers:
        if str(offer.market) != _SPOT:
            continue
        reference = on_demand.get((offer.provider, offer.region, offer.zone, offer.instance_type))
        if reference is not None and offer.price_per_hour > reference * (1 + SPOT_ABOVE_TOLERANCE):
            message = (
                f"spot {_usd(offer.price_per_hour)}/h is above the on-demand {_usd(reference)}/h "
                f"of {offer.provider}'s {offer.instance_type} in {_place(offer.region, offer.zone)}"
            )
            yield offer.key, Anomaly(SPOT_ABOVE_ON_DEMAND, message)


def implausible_for_model(
    offers: Sequence[PricedOffer], ignored: frozenset[str] = frozenset()
) -> Iterator[Finding]:
    """Rule 4: `implausible_for_model`.

    `ignored`: keys of offers left out of the market price (they are still judged).
    """
    groups: dict[tuple[str, str], list[PricedOffer]] = defaultdict(list)
    for offer in offers:
        if offer.gpu_model:
            groups[(offer.gpu_model, market_class(str(offer.market)))].append(offer)
    for (model, klass), members in groups.items():
        by_provider: dict[str, list[Decimal]] = defaultdict(list)
        for offer in members:
            if offer.key not in ignored:
                by_provider[offer.provider].append(offer.price_per_gpu_hour)
        n_offers = sum(len(prices) for prices in by_provider.values())
        if len(by_provider) < MIN_MARKET_PROVIDERS or n_offers < MIN_MARKET_OFFERS:
            continue
        market = _median([_median(prices) for prices in by_provider.values()])
        factor = MARKET_FACTOR_SPOT if klass == _SPOT else MARKET_FACTOR_ON_DEMAND
        for offer in members:
            price = offer.price_per_gpu_hour
            if price * factor < market:
                side = f"under {_fraction(1 / factor)}"
            elif price > market * factor:
                side = f"over {_multiple(factor)}"
            else:
                continue
            message = (
                f"{_usd(price)}/{_unit(offer)}-h is {side} the market price {_usd(market)} "
                f"of {model} {klass} offers (median of {len(by_provider)} providers' medians)"
            )
            yield offer.key, Anomaly(IMPLAUSIBLE_FOR_MODEL, message)


def market_class(market: str) -> str:
    """`spot` for spot offers; `on_demand` for every other market (on-demand, capacity
    blocks, reserved): the prices rules 1 and 4 compare with each other."""
    return _SPOT if market == _SPOT else _ON_DEMAND


def _provider_factors(market: str) -> tuple[Decimal, Decimal]:
    if market_class(market) == _SPOT:
        return PROVIDER_SPOT_LOW_FACTOR, PROVIDER_SPOT_HIGH_FACTOR
    return PROVIDER_LOW_FACTOR, PROVIDER_HIGH_FACTOR


def _median(values: Sequence[Decimal]) -> Decimal:
    ordered = sorted(values)
    mid = len(ordered) // 2
    if len(ordered) % 2:
        return ordered[mid]
    return (ordered[mid - 1] + ordered[mid]) / 2


def _unit(offer: PricedOffer) -> str:
    """What the offer counts: `chip` for TPUs (a slice is priced per chip-hour), else `GPU`."""
    return "chip" if (offer.accelerator_kind or "").lower() == "tpu" else "GPU"


def _place(region: str, zone: str | None) -> str:
    return f"{region}/{zone}" if zone else region


def _fraction(factor: Decimal) -> str:
    """`half the`, `1/5 of the`: how a factor under 1 reads before "the median"."""
    if factor == Decimal("0.5"):
        return "half"
    return f"1/{_number(1 / factor)} of"


def _multiple(factor: Decimal) -> str:
    """`twice`, `5x`: how a factor over 1 reads before "the median"."""
    return "twice" if factor == 2 else f"{_number(factor)}x"


def _number(value: Decimal) -> str:
    """`8`, `0.167`: a count or factor without trailing zeros."""
    text = f"{value.normalize():f}"
    return text


def _usd(value: Decimal) -> str:
    """`$10.97`, `$0.0450`: cents, or four decimals under ten cents."""
    return f"${value:,.2f}" if value >= Decimal("0.1") else f"${value:.4f}"
