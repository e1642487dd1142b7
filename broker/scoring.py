"""Scoring: which offers can serve a capacity request, how soon, for how much, and why.

Pure functions over plain records (no database, no HTTP); `broker.requests` loads the market
into a `Market` snapshot and calls `recommend`. Everything a recommendation says can be
recomputed from its numbers.

The model
---------
**Eligibility.** An offer qualifies when its GPU model is requested (an accelerator the
catalogue does not know is never requested), its market allowed, its place passes the
residency rules (an offer whose location is unknown fails every residency rule: "location
unknown"), its price is not flagged when the request excludes anomalies, its data is fresh
(not stale), it is not sold out (unless its history says it comes back in time),
its price per GPU-hour is within the cap, its term fits the duration (a capacity block shorter
than the request cannot serve it), its instances fit the gang (`gpus_per_node` divides the
GPUs per instance) and it can be powered before `needed_by`. Every offer that fails is counted
in `excluded`, grouped by (reason, provider, GPU model) with a sentence.

**Time to power** (hours from now until the GPUs can run work), per offer:
- capacity block: until its start (high confidence);
- available now: the provider's provisioning time (`ScoringConfig.provisioning_hours`);
  `limited` availability has medium confidence;
- availability unknown (price lists: AWS, GCP, Azure on-demand): provisioning time plus
  `unverified_capacity_hours` (a launch may fail and need a retry), low confidence;
- sold out now, for providers that publish availability: the mean length of the offer's past
  sell-outs minus the time this one has lasted so far (at least the provisioning time), low
  confidence; with no past sell-out to learn from, the offer is excluded (`unavailable`);
- plus `quota_lead_hours` when a quota the poll reported for that region has less headroom
  than the instances need (a quota increase comes first);
- never before `not_before`.
An option of several offers is powered when its slowest part is.

**Cost** for the requested duration: price per instance-hour × instances × billed hours +
upfront fees, where billed hours = max(duration, the market's minimum term) (a 1-year
reservation is paid for a year; for a capacity block the upfront fee *is* its price, spread
into `price_per_hour`, so it is not added twice). Spot carries an explicit interruption
adjustment: cost × (1 + `spot_interruption_overhead`), said in the explanation.

**Ranking.** Each option's time to power and cost are min-max normalised over the options
(0 = best), weighted by the request's weights, score = 1 − weighted mean, rounded to 4
places. Ties break on cost, then time, then offer keys: deterministic. An option is on the
Pareto front when no other is at least as fast and as cheap and better in one of them.

**Quantity.** An offer is never rented more times than it exists: its `available_count`, when
the provider states one, bounds the instances, and a marketplace listing
(`uncombinable_providers`: Vast) is one machine, rented once. A price-list offer with no
stated quantity may be rented several times, and its explanation says "quantity unverified".

**Anomalies.** An offer whose price a sanity rule flagged (`broker.anomalies`) is scored with
low confidence and the option's explanation quotes the flag; `exclude_anomalies` drops it.

**Options.** Each qualifying offer that alone reaches the GPUs is an option; per (provider,
region) the cheapest qualifying offers are also combined greedily into one option when that
reaches the GPUs with more than one offer. Offers are never combined across regions (a gang
must share a network), nor on marketplaces (`uncombinable_providers`: Vast lists single
machines, some listings are alternatives on one machine).
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from decimal import ROUND_CEILING, Decimal
from enum import StrEnum
from typing import Any

from broker.config import ScoringSettings
from broker.domain import Availability, Market

HOUR = timedelta(hours=1)
#: How `excluded` names offers whose accelerator the catalogue does not know.
UNRECOGNISED = "unrecognised accelerator"


class Reason(StrEnum):
    """Why an offer did not qualify (machine-readable; `excluded[].reason`)."""

    GPU_MODEL = "gpu_model"
    MARKET = "market"
    RESIDENCY = "residency"
    STALE = "stale"
    UNAVAILABLE = "unavailable"
    PRICE = "price"
    DURATION = "duration"
    COUNT = "count"
    STARTS_TOO_LATE = "starts_too_late"
    ANOMALY = "anomaly"


class Confidence(StrEnum):
    HIGH = "high"
    MEDIUM = "medium"
    LOW = "low"


_CONFIDENCE_ORDER = {Confidence.HIGH: 2, Confidence.MEDIUM: 1, Confidence.LOW: 0}


@dataclass(frozen=True, slots=True)
class ScoringConfig:
    """The model's knobs, from Settings `BROKER_SCORING__*` (defaults documented there)."""

    #: Hours from "launch" to "GPUs running work", per provider (VM boot + image + drivers).
    provisioning_hours: Mapping[str, float] = field(
        default_factory=lambda: dict(ScoringSettings().provisioning_hours)
    )
    default_provisioning_hours: float = 0.5
    #: Extra wait assumed when a provider publishes no availability (a launch may fail).
    unverified_capacity_hours: float = 4.0
    #: Lead time of a quota increase when the headroom is too small.
    quota_lead_hours: float = 72.0
    #: Share of spot work assumed lost to interruptions (cost × (1 + this)).
    spot_interruption_overhead: float = 0.15
    #: Marketplaces whose offers are single machines: two offers may be alternative
    #: listings of one machine and machines share no network, so they are never combined.
    uncombinable_providers: frozenset[str] = frozenset({"vast"})

    def provisioning(self, provider: str) -> float:
        return self.provisioning_hours.get(provider, self.default_provisioning_hours)

    @classmethod
    def from_settings(cls, s: ScoringSettings) -> ScoringConfig:
        return cls(
            provisioning_hours=dict(s.provisioning_hours),
            default_provisioning_hours=s.default_provisioning_hours,
            unverified_capacity_hours=s.unverified_capacity_hours,
            quota_lead_hours=s.quota_lead_hours,
            spot_interruption_overhead=s.spot_interruption_overhead,
        )


@dataclass(frozen=True, slots=True)
class Residency:
    """Allow/deny lists of jurisdictions (`EU`, `US`), countries (`DE`) or regions
    (`eu-west-1`, or `provider/region`). Empty allow = anywhere not denied."""

    allow: tuple[str, ...] = ()
    deny: tuple[str, ...] = ()

    @staticmethod
    def _matches(item: str, offer: MarketOffer) -> bool:
        if len(item) == 2 and item.isalpha():
            code = item.upper()
            return code in (offer.jurisdiction, offer.country)
        return item in (offer.region, f"{offer.provider}/{offer.region}")

    def check(self, offer: MarketOffer) -> tuple[str, str] | None:
        """None when the offer may be used, else (sentence template, value) of the rule that
        excludes it; the template's `{values}` gathers the values of a group. An offer whose
        location is unknown (its region is not in the region table) fails every rule."""
        for item in self.deny:
            if self._matches(item, offer):
                return "{values} {is} denied by the request", item
        if (self.allow or self.deny) and offer.country is None and offer.jurisdiction is None:
            return (
                "location unknown: the region table does not know {values}, so residency "
                "cannot be checked",
                offer.region,
            )
        if self.allow and not any(self._matches(i, offer) for i in self.allow):
            where = offer.jurisdiction or "unknown jurisdiction"
            return f"{{values}} {{is}} not in allowed [{', '.join(self.allow)}]", where
        return None


@dataclass(frozen=True, slots=True)
class Weights:
    time_to_power: float = 0.5
    cost: float = 0.5


@dataclass(frozen=True, slots=True)
class RequestSpec:
    """A validated capacity request, as the scorer needs it."""

    gpu_models: frozenset[str]
    gpus: int
    duration_hours: int
    gpus_per_node: int | None = None
    residency: Residency = Residency()
    markets: frozenset[Market] = frozenset({Market.ON_DEMAND, Market.CAPACITY_BLOCK})
    max_price_per_gpu_hour: Decimal | None = None
    not_before: datetime | None = None
    needed_by: datetime | None = None
    weights: Weights = Weights()
    exclude_anomalies: bool = False
    #: canonical model -> the least GPUs per instance (`H100:8` in the request's models).
    min_gpus_per_instance: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class History:
    """What the offer's observations say about its sell-outs (only for providers that
    publish availability)."""

    sellouts: int  # past unavailable spells that ended
    mean_sellout_hours: float | None
    current_since: datetime | None  # when the present sell-out began


@dataclass(frozen=True, slots=True)
class MarketOffer:
    """The scorer's view of one current offer."""

    key: str
    provider: str
    region: str
    instance_type: str
    market: Market
    gpu_model: str | None
    gpu_count: Decimal
    price_per_hour: Decimal
    price_per_gpu_hour: Decimal
    country: str | None = None
    jurisdiction: str | None = None
    availability: Availability = Availability.UNKNOWN
    available_count: int | None = None
    earliest_start: datetime | None = None
    min_duration_hours: int | None = None
    max_duration_hours: int | None = None
    upfront_fee: Decimal | None = None
    vcpus: Decimal | None = None
    stale: bool = False
    last_seen: datetime | None = None
    history: History | None = None
    #: Price-sanity flags (code, message) of `broker.anomalies`.
    anomalies: tuple[tuple[str, str], ...] = ()

    @classmethod
    def from_row(cls, r: Any, history: History | None = None) -> MarketOffer:
        """From a row of the `offers` table (any object with its columns as attributes)."""
        return cls(
            key=r.key,
            provider=r.provider,
            region=r.region,
            instance_type=r.instance_type,
            market=Market(r.market),
            gpu_model=r.gpu_model,
            gpu_count=r.gpu_count,
            price_per_hour=r.price_per_hour,
            price_per_gpu_hour=r.price_per_gpu_hour,
            country=r.country,
            jurisdiction=r.jurisdiction,
            availability=Availability(r.availability),
            available_count=r.available_count,
            earliest_start=r.earliest_start,
            min_duration_hours=r.min_duration_hours,
            max_duration_hours=r.max_duration_hours,
            upfront_fee=r.upfront_fee,
            vcpus=r.vcpus,
            last_seen=r.last_seen,
            history=history,
            anomalies=anomaly_pairs(getattr(r, "anomalies", None)),
        )


def anomaly_pairs(flags: Iterable[Mapping[str, str]] | None) -> tuple[tuple[str, str], ...]:
    """Stored anomaly flags (`[{code, message}]`) as (code, message) pairs."""
    return tuple((f["code"], f["message"]) for f in flags or ())


@dataclass(frozen=True, slots=True)
class QuotaView:
    provider: str
    region: str
    name: str
    market: str  # a Market value or "*"
    unit: str  # vcpus | gpus | instances
    headroom: Decimal
    instance_types: frozenset[str]


@dataclass(frozen=True, slots=True)
class Ttp:
    hours: float
    confidence: Confidence
    basis: str


@dataclass(frozen=True, slots=True)
class Part:
    offer: MarketOffer
    instances: int
    ttp: Ttp

    @property
    def gpus(self) -> Decimal:
        return self.offer.gpu_count * self.instances


@dataclass
class Option:
    parts: list[Part]
    time_to_power_hours: float
    confidence: Confidence
    total_cost_usd: Decimal
    price_per_gpu_hour: Decimal
    gpus: Decimal
    spot_adjustment_usd: Decimal
    #: The offers' keys, in part order (identity of the option).
    keys: tuple[str, ...] = ()
    score: float = 0.0
    on_pareto_front: bool = False
    #: (rank, options, cheapest cost, fastest time) set by ranking, for `explanation`.
    context: tuple[int, int, Decimal, float] | None = None

    @property
    def explanation(self) -> str:
        """One or two sentences with the numbers that decided the rank (built on demand)."""
        if self.context is None:
            return ""
        rank, n, cheapest, fastest = self.context
        return _explain(self, rank, cheapest, fastest, n)

    @property
    def region(self) -> str:
        return self.parts[0].offer.region

    def as_dict(self) -> dict[str, Any]:
        first = self.parts[0].offer
        return {
            "offers": [
                {"key": p.offer.key, "instances": p.instances, "gpus": _num(p.gpus)}
                for p in self.parts
            ],
            "provider": first.provider,
            "region": first.region,
            "country": first.country,
            "jurisdiction": first.jurisdiction,
            "gpu_models": sorted({p.offer.gpu_model or UNRECOGNISED for p in self.parts}),
            "markets": sorted({str(p.offer.market) for p in self.parts}),
            "gpus": _num(self.gpus),
            "score": self.score,
            "time_to_power_hours": round(self.time_to_power_hours, 2),
            "confidence": str(self.confidence),
            "total_cost_usd": str(self.total_cost_usd),
            "price_per_gpu_hour": str(self.price_per_gpu_hour),
            "residency": "allowed",
            "on_pareto_front": self.on_pareto_front,
            "explanation": self.explanation,
        }


@dataclass
class ExcludedGroup:
    reason: Reason
    provider: str
    gpu_model: str
    offers: int = 0
    regions: set[str] = field(default_factory=set)
    #: The sentence after "excluded:"; `{values}` is replaced by the group's `values`.
    detail: str = ""
    values: set[str] = field(default_factory=set)
    low: Decimal | None = None

    def as_dict(self) -> dict[str, Any]:
        regions = sorted(self.regions)
        shown = ", ".join(regions[:6]) + (
            f" and {len(regions) - 6} more" if len(regions) > 6 else ""
        )
        noun = "offer" if self.offers == 1 else "offers"
        values = sorted(self.values)
        detail = self.detail.replace("{values}", ", ".join(values)).replace(
            "{is}", "is" if len(values) == 1 else "are"
        )
        if self.low is not None:
            detail = detail.replace("{low}", f"${self.low}")
        return {
            "reason": str(self.reason),
            "provider": self.provider,
            "gpu_model": self.gpu_model,
            "offers": self.offers,
            "regions": regions,
            "message": f"{self.offers} {self.gpu_model} {noun} of {self.provider} in {shown} "
            f"excluded: {detail}",
        }


@dataclass
class Recommendation:
    options: list[Option]
    excluded: list[ExcludedGroup]
    considered: int

    @property
    def best(self) -> Option | None:
        return self.options[0] if self.options else None

    def as_dict(self, limit: int | None = None) -> dict[str, Any]:
        opts = self.options if limit is None else self.options[:limit]
        return {
            "options": [dict(o.as_dict(), rank=i + 1) for i, o in enumerate(opts)],
            "excluded": [
                g.as_dict()
                for g in sorted(
                    self.excluded, key=lambda g: (str(g.reason), g.provider, g.gpu_model)
                )
            ],
            "considered_offers": self.considered,
            "total_options": len(self.options),
        }


# ------------------------------------------------------------------------ pieces


def _num(d: Decimal) -> int | float:
    return int(d) if d == d.to_integral_value() else float(d)


def _hours(delta: timedelta) -> float:
    return delta / HOUR


def time_to_power(offer: MarketOffer, now: datetime, cfg: ScoringConfig) -> Ttp | None:
    """Hours until `offer` can run work (before quotas and `not_before`); None = sold out
    with nothing in its history saying when it comes back."""
    prov = cfg.provisioning(offer.provider)
    if offer.market == Market.CAPACITY_BLOCK and offer.earliest_start is not None:
        wait = max(0.0, _hours(offer.earliest_start - now))
        return Ttp(
            wait,
            Confidence.HIGH,
            f"capacity block starts {offer.earliest_start:%Y-%m-%d %H:%M} UTC",
        )
    if offer.availability == Availability.AVAILABLE:
        return Ttp(prov, Confidence.HIGH, f"available now, {prov:g} h to provision")
    if offer.availability == Availability.LIMITED:
        return Ttp(prov, Confidence.MEDIUM, f"limited availability, {prov:g} h to provision")
    if offer.availability == Availability.UNKNOWN:
        hours = prov + cfg.unverified_capacity_hours
        return Ttp(
            hours,
            Confidence.LOW,
            f"{offer.provider} publishes no availability: {prov:g} h to provision "
            f"+ {cfg.unverified_capacity_hours:g} h assumed for unverified capacity",
        )
    h = offer.history
    if h is None or not h.sellouts or h.mean_sellout_hours is None:
        return None
    lasted = _hours(now - h.current_since) if h.current_since else 0.0
    left = max(prov, h.mean_sellout_hours - lasted)
    return Ttp(
        left,
        Confidence.LOW,
        f"sold out now; its {h.sellouts} past sell-outs lasted {h.mean_sellout_hours:.1f} h "
        "on average",
    )


def _quota_delay(
    offer: MarketOffer, instances: int, quotas: Sequence[QuotaView], cfg: ScoringConfig
) -> str | None:
    """A phrase when a reported quota is too small for `instances` of the offer."""
    for q in quotas:
        if q.provider != offer.provider or q.region != offer.region:
            continue
        if q.market not in ("*", str(offer.market)):
            continue
        if q.instance_types and offer.instance_type not in q.instance_types:
            continue
        per = {"vcpus": offer.vcpus, "gpus": offer.gpu_count, "instances": Decimal(1)}.get(q.unit)
        if per is None:
            continue
        need = per * instances
        if need > q.headroom:
            return (
                f"quota {q.name} has {_num(q.headroom)} {q.unit} free, {_num(need)} needed: "
                f"+{cfg.quota_lead_hours:g} h for an increase"
            )
    return None


def _instances_for(gpus: Decimal, per_instance: Decimal) -> int:
    if per_instance == int(per_instance):
        return (
            -(-int(gpus) // int(per_instance))
            if gpus == int(gpus)
            else math.ceil(gpus / per_instance)
        )
    return int((gpus / per_instance).to_integral_value(rounding=ROUND_CEILING))


def max_instances(offer: MarketOffer, cfg: ScoringConfig) -> int | None:
    """How many times the offer exists: the provider's stated count, one for a marketplace
    listing (a single machine), None (unverified) for a price list."""
    if offer.available_count is not None:
        return offer.available_count
    if offer.provider in cfg.uncombinable_providers:
        return 1
    return None


def _billed_hours(offer: MarketOffer, duration: int) -> int:
    return max(duration, offer.min_duration_hours or 0)


def _part_cost(part: Part, duration: int) -> Decimal:
    o = part.offer
    cost = o.price_per_hour * part.instances * _billed_hours(o, duration)
    if o.upfront_fee is not None and o.market != Market.CAPACITY_BLOCK:
        cost += o.upfront_fee * part.instances
    return cost


# ---------------------------------------------------------------------- the market


@dataclass
class MarketSnapshot:
    """Current offers indexed by GPU model, built once and scored against many requests."""

    offers: Sequence[MarketOffer]
    quotas: Sequence[QuotaView] = ()
    by_model: dict[str, list[MarketOffer]] = field(init=False)
    model_summary: dict[tuple[str, str], tuple[int, set[str]]] = field(init=False)

    def __post_init__(self) -> None:
        self._residency: dict[tuple[Residency, str], list[tuple[str, str] | None]] = {}
        self._ttp_for: tuple[datetime, int] | None = None
        self._ttp: dict[str, Ttp | None] = {}
        self.by_model = defaultdict(list)
        self.model_summary = {}
        for o in self.offers:
            model = o.gpu_model or UNRECOGNISED
            if o.gpu_model is not None:
                self.by_model[o.gpu_model].append(o)
            n, regions = self.model_summary.get((o.provider, model), (0, set()))
            regions.add(o.region)
            self.model_summary[(o.provider, model)] = (n + 1, regions)

    def time_to_power(self, offer: MarketOffer, now: datetime, cfg: ScoringConfig) -> Ttp | None:
        """`time_to_power` memoised for one (now, config) at a time: a rescoring batch asks
        the same offers again for every request."""
        if self._ttp_for != (now, id(cfg)):
            self._ttp_for = (now, id(cfg))
            self._ttp = {}
        try:
            return self._ttp[offer.key]
        except KeyError:
            ttp = self._ttp[offer.key] = time_to_power(offer, now, cfg)
            return ttp

    def residency_rules(self, residency: Residency, model: str) -> list[tuple[str, str] | None]:
        """`residency.check` of every offer of `model`, in `by_model` order (memoised: many
        requests share their residency rules)."""
        key = (residency, model)
        rules = self._residency.get(key)
        if rules is None:
            rules = [residency.check(o) for o in self.by_model.get(model, ())]
            self._residency[key] = rules
        return rules


def recommend(
    spec: RequestSpec,
    market: MarketSnapshot,
    now: datetime,
    cfg: ScoringConfig | None = None,
    *,
    with_excluded: bool = True,
    stale_before: datetime | None = None,
) -> Recommendation:
    """Rank every way the market can serve `spec`; see the module docstring for the model.

    An offer is stale when flagged so or last seen before `stale_before`. With
    `with_excluded=False` (rescoring) only the best option is kept and nothing is grouped
    into `excluded`; the best is the same as the full ranking's first."""
    cfg = cfg or ScoringConfig()
    excluded: dict[tuple[Reason, str, str, str], ExcludedGroup] = {}

    def exclude(reason: Reason, o: MarketOffer, detail: str, value: str | None = None) -> None:
        if not with_excluded:
            return
        model = o.gpu_model or UNRECOGNISED
        key = (reason, o.provider, model, detail)
        g = excluded.get(key)
        if g is None:
            g = excluded[key] = ExcludedGroup(reason, o.provider, model, detail=detail)
        g.offers += 1
        g.regions.add(o.region)
        if value is not None:
            g.values.add(value)
        if reason == Reason.PRICE and (g.low is None or o.price_per_gpu_hour < g.low):
            g.low = o.price_per_gpu_hour

    if with_excluded:
        for (provider, model), (n, regions) in market.model_summary.items():
            if model not in spec.gpu_models:
                excluded[(Reason.GPU_MODEL, provider, model, "")] = ExcludedGroup(
                    Reason.GPU_MODEL,
                    provider,
                    model,
                    offers=n,
                    regions=set(regions),
                    detail=f"{model} is not a requested model "
                    f"[{', '.join(sorted(spec.gpu_models))}]",
                )

    gpus = Decimal(spec.gpus)
    markets = ", ".join(sorted(str(m) for m in spec.markets))
    eligible: list[tuple[MarketOffer, Ttp]] = []
    considered = 0
    for model in sorted(spec.gpu_models):
        rules = market.residency_rules(spec.residency, model)
        for o, rule in zip(market.by_model.get(model, ()), rules, strict=True):
            considered += 1
            if o.market not in spec.markets:
                exclude(
                    Reason.MARKET,
                    o,
                    f"market {{values}} {{is}} not in allowed [{markets}]",
                    str(o.market),
                )
                continue
            if rule is not None:
                exclude(Reason.RESIDENCY, o, rule[0], rule[1])
                continue
            if spec.exclude_anomalies and o.anomalies:
                exclude(
                    Reason.ANOMALY,
                    o,
                    "its price is flagged ({values}) and the request excludes anomalies",
                    o.anomalies[0][0],
                )
                continue
            if o.stale or (
                stale_before is not None and o.last_seen is not None and o.last_seen < stale_before
            ):
                exclude(Reason.STALE, o, "its provider has not confirmed it recently (stale data)")
                continue
            cap = spec.max_price_per_gpu_hour
            if cap is not None and o.price_per_gpu_hour > cap:
                exclude(
                    Reason.PRICE,
                    o,
                    f"the cheapest, {{low}} per GPU-hour, is above the cap ${cap}",
                )
                continue
            if o.max_duration_hours is not None and o.max_duration_hours < spec.duration_hours:
                exclude(
                    Reason.DURATION,
                    o,
                    f"its term of at most {o.max_duration_hours} h is shorter than the "
                    f"{spec.duration_hours} h requested",
                )
                continue
            least = spec.min_gpus_per_instance.get(model)
            if least is not None and o.gpu_count < least:
                exclude(
                    Reason.COUNT,
                    o,
                    f"{_num(o.gpu_count)} GPUs per instance, the request asks for at least "
                    f"{least} ({model}:{least})",
                )
                continue
            if spec.gpus_per_node is not None:
                per = o.gpu_count
                if per != per.to_integral_value() or int(per) % spec.gpus_per_node:
                    exclude(
                        Reason.COUNT,
                        o,
                        f"{_num(per)} GPUs per instance cannot form nodes of {spec.gpus_per_node}",
                    )
                    continue
            ttp = market.time_to_power(o, now, cfg)
            if ttp is None:
                exclude(
                    Reason.UNAVAILABLE,
                    o,
                    "sold out now, with no past sell-out that ended to estimate a return",
                )
                continue
            if spec.not_before is not None:
                until = _hours(spec.not_before - now)
                if until > ttp.hours:
                    ttp = Ttp(until, ttp.confidence, ttp.basis + "; not before the requested start")
            if spec.needed_by is not None and now + ttp.hours * HOUR > spec.needed_by:
                exclude(
                    Reason.STARTS_TOO_LATE,
                    o,
                    f"the earliest power ({ttp.basis}) is after needed_by "
                    f"{spec.needed_by:%Y-%m-%d %H:%M} UTC",
                )
                continue
            eligible.append((o, ttp))

    options: list[Option] = []
    # Best-only (rescoring): single-offer candidates stay light (time, cost, keys, part);
    # only the winner becomes an `Option`.
    light: list[tuple[float, Decimal, tuple[str, ...], Part]] = []
    by_region: dict[tuple[str, str], list[tuple[MarketOffer, Ttp]]] = defaultdict(list)
    for o, ttp in eligible:
        by_region[(o.provider, o.region)].append((o, ttp))
        n = _instances_for(gpus, o.gpu_count)
        most = max_instances(o, cfg)
        if most is not None and most < n:
            continue
        part = _part(o, n, ttp, market.quotas, cfg)
        if with_excluded:
            options.append(_option([part], spec, cfg))
        else:
            light.append((part.ttp.hours, _single_total(part, spec, cfg)[0], (o.key,), part))
    singles = {opt.keys for opt in options} | {c[2] for c in light}
    single_keys = {k[0] for k in singles}
    for where, group in sorted(by_region.items(), key=lambda kv: kv[0]):
        if len(group) == 1 and group[0][0].key in single_keys:
            continue  # its single-offer option already covers the region
        if where[0] in cfg.uncombinable_providers:
            for o, _ in group:
                if o.key not in single_keys:
                    exclude(
                        Reason.COUNT,
                        o,
                        f"a listing offers fewer than the {spec.gpus} GPUs needed and "
                        f"{o.provider} listings are single machines, never combined",
                    )
            continue
        group.sort(key=lambda ot: (ot[0].price_per_gpu_hour, ot[1].hours, ot[0].key))
        parts: list[Part] = []
        have = Decimal(0)
        for o, ttp in group:
            if have >= gpus:
                break
            n = _instances_for(gpus - have, o.gpu_count)
            most = max_instances(o, cfg)
            if most is not None:
                n = min(n, most)
            if n <= 0:
                continue
            parts.append(_part(o, n, ttp, market.quotas, cfg))
            have += o.gpu_count * n
        if have >= gpus and len(parts) > 1 and tuple(p.offer.key for p in parts) not in singles:
            options.append(_option(parts, spec, cfg))
        elif have < gpus:
            for o, _ in group:
                if o.key not in single_keys:
                    exclude(
                        Reason.COUNT,
                        o,
                        f"all qualifying offers in the region together reach {_num(have)} "
                        f"of the {spec.gpus} GPUs needed",
                    )
    if with_excluded:
        _rank(options, spec.weights)
    else:
        options = _best_of(light, options, spec, cfg)
    return Recommendation(options, list(excluded.values()), considered)


def _part(
    o: MarketOffer, instances: int, ttp: Ttp, quotas: Sequence[QuotaView], cfg: ScoringConfig
) -> Part:
    delay = _quota_delay(o, instances, quotas, cfg)
    if delay:
        ttp = Ttp(ttp.hours + cfg.quota_lead_hours, ttp.confidence, f"{ttp.basis}; {delay}")
    if o.anomalies:
        ttp = Ttp(ttp.hours, Confidence.LOW, ttp.basis)
    return Part(o, instances, ttp)


def _option(parts: list[Part], spec: RequestSpec, cfg: ScoringConfig) -> Option:
    if len(parts) == 1:
        return _single(parts[0], spec, cfg)
    cost = Decimal(0)
    spot = Decimal(0)
    gpus = Decimal(0)
    for p in parts:
        c = _part_cost(p, spec.duration_hours)
        cost += c
        if p.offer.market == Market.SPOT:
            spot += c * Decimal(str(cfg.spot_interruption_overhead))
        gpus += p.gpus
    total = (cost + spot).quantize(Decimal("0.01"))
    slowest = max(parts, key=lambda p: p.ttp.hours)
    confidence = min((p.ttp.confidence for p in parts), key=_CONFIDENCE_ORDER.__getitem__)
    per_gpu_hour = (total / (gpus * spec.duration_hours)).quantize(Decimal("0.0001"))
    return Option(
        parts=parts,
        time_to_power_hours=slowest.ttp.hours,
        confidence=confidence,
        total_cost_usd=total,
        price_per_gpu_hour=per_gpu_hour,
        gpus=gpus,
        spot_adjustment_usd=spot.quantize(Decimal("0.01")),
        keys=tuple(p.offer.key for p in parts),
    )


def _single_total(p: Part, spec: RequestSpec, cfg: ScoringConfig) -> tuple[Decimal, Decimal]:
    """(total cost, spot adjustment) of one part, to the cent."""
    cost = _part_cost(p, spec.duration_hours)
    spot = (
        cost * Decimal(str(cfg.spot_interruption_overhead))
        if p.offer.market == Market.SPOT
        else Decimal(0)
    )
    return (cost + spot).quantize(_CENT), spot


def _single(p: Part, spec: RequestSpec, cfg: ScoringConfig) -> Option:
    """`_option` of one part, without the loops (the common case, and the hot one)."""
    o = p.offer
    total, spot = _single_total(p, spec, cfg)
    gpus = o.gpu_count * p.instances
    return Option(
        parts=[p],
        time_to_power_hours=p.ttp.hours,
        confidence=p.ttp.confidence,
        total_cost_usd=total,
        price_per_gpu_hour=(total / (gpus * spec.duration_hours)).quantize(_BASIS),
        gpus=gpus,
        spot_adjustment_usd=spot.quantize(_CENT),
        keys=(o.key,),
    )


_CENT = Decimal("0.01")
_BASIS = Decimal("0.0001")


def _normalise(values: Sequence[float]) -> list[float]:
    lo, hi = min(values), max(values)
    if math.isclose(lo, hi):
        return [0.0] * len(values)
    return [(v - lo) / (hi - lo) for v in values]


def _score(options: list[Option], weights: Weights) -> None:
    wt, wc = max(weights.time_to_power, 0.0), max(weights.cost, 0.0)
    total_w = (wt + wc) or 1.0
    nt = _normalise([o.time_to_power_hours for o in options])
    nc = _normalise([float(o.total_cost_usd) for o in options])
    for o, t, c in zip(options, nt, nc, strict=True):
        o.score = round(1.0 - (wt * t + wc * c) / total_w, 4)


def _rank_key(o: Option) -> tuple[float, Decimal, float, tuple[str, ...]]:
    return (-o.score, o.total_cost_usd, o.time_to_power_hours, o.keys)


def _best_of(
    light: list[tuple[float, Decimal, tuple[str, ...], Part]],
    combined: list[Option],
    spec: RequestSpec,
    cfg: ScoringConfig,
) -> list[Option]:
    """The one best option (as `_rank` would put first) among light single-offer candidates
    and full combined options; scored over all of them."""
    cands: list[tuple[float, Decimal, tuple[str, ...], Part | Option]] = list(light)
    cands += [(o.time_to_power_hours, o.total_cost_usd, o.keys, o) for o in combined]
    if not cands:
        return []
    w = spec.weights
    wt, wc = max(w.time_to_power, 0.0), max(w.cost, 0.0)
    total_w = (wt + wc) or 1.0
    nt = _normalise([c[0] for c in cands])
    nc = _normalise([float(c[1]) for c in cands])
    scores = [round(1.0 - (wt * t + wc * c) / total_w, 4) for t, c in zip(nt, nc, strict=True)]
    i = min(range(len(cands)), key=lambda k: (-scores[k], cands[k][1], cands[k][0], cands[k][2]))
    item = cands[i][3]
    best = item if isinstance(item, Option) else _single(item, spec, cfg)
    best.score = scores[i]
    return [best]


def _rank(options: list[Option], weights: Weights) -> None:
    if not options:
        return
    _score(options, weights)
    options.sort(key=_rank_key)
    # Pareto front: no other option is at least as fast and as cheap and better in one.
    # Sweep by time: an option is on it when it is the cheapest of its time and cheaper than
    # every strictly faster option.
    faster_best: Decimal | None = None
    by_time: dict[float, list[Option]] = defaultdict(list)
    for o in options:
        by_time[o.time_to_power_hours].append(o)
    for hours in sorted(by_time):
        group = by_time[hours]
        low = min(o.total_cost_usd for o in group)
        for o in group:
            o.on_pareto_front = o.total_cost_usd == low and (
                faster_best is None or low < faster_best
            )
        faster_best = low if faster_best is None else min(faster_best, low)
    cheapest = min(o.total_cost_usd for o in options)
    fastest = min(o.time_to_power_hours for o in options)
    for i, o in enumerate(options):
        o.context = (i + 1, len(options), cheapest, fastest)


def _money(d: Decimal) -> str:
    return f"${d:,.2f}"


def _explain(o: Option, rank: int, cheapest: Decimal, fastest: float, n: int) -> str:
    parts = " + ".join(
        f"{p.instances} × {p.offer.instance_type} ({p.offer.market})" for p in o.parts
    )
    first = o.parts[0].offer
    place = f"{first.region} ({first.country or 'country unknown'})"
    slow = max(o.parts, key=lambda p: p.ttp.hours)
    text = (
        f"Rank {rank} of {n}: {parts} = {_num(o.gpus)} GPUs in {place} at "
        f"{_money(o.price_per_gpu_hour)}/GPU-hour, {_money(o.total_cost_usd)} in all; "
        f"power in {o.time_to_power_hours:.1f} h ({slow.ttp.basis}; {o.confidence} confidence)."
    )
    relative: list[str] = []
    if o.total_cost_usd == cheapest:
        relative.append("the cheapest option")
    else:
        relative.append(f"{_money(o.total_cost_usd - cheapest)} more than the cheapest")
    if math.isclose(o.time_to_power_hours, fastest):
        relative.append("among the fastest")
    else:
        relative.append(f"{o.time_to_power_hours - fastest:.1f} h slower than the fastest")
    text += " It is " + " and ".join(relative) + "."
    unverified = [p for p in o.parts if p.instances > 1 and p.offer.available_count is None]
    if unverified:
        names = ", ".join(sorted({p.offer.instance_type for p in unverified}))
        text += (
            f" Quantity unverified: {first.provider} states no count for {names}, so "
            "whether that many instances exist is not known."
        )
    for p in o.parts:
        for _code, message in p.offer.anomalies:
            text += f" Price flagged ({p.offer.instance_type}): {message}"
    if o.spot_adjustment_usd:
        text += f" Spot: includes {_money(o.spot_adjustment_usd)} for work lost to interruptions."
    return text


def market_from_rows(rows: Iterable[Mapping[str, Any]]) -> list[MarketOffer]:
    """`MarketOffer`s from `broker.offers.list_offers`-shaped dicts (histories not loaded)."""
    out = []
    for r in rows:
        out.append(
            MarketOffer(
                key=r["key"],
                provider=r["provider"],
                region=r["region"],
                instance_type=r["instance_type"],
                market=Market(r["market"]),
                gpu_model=r["gpu_model"],
                gpu_count=Decimal(r["gpu_count"]),
                price_per_hour=Decimal(r["price_per_hour"]),
                price_per_gpu_hour=Decimal(r["price_per_gpu_hour"]),
                country=r.get("country"),
                jurisdiction=r.get("jurisdiction"),
                availability=Availability(r.get("availability") or "unknown"),
                available_count=r.get("available_count"),
                earliest_start=r.get("earliest_start"),
                min_duration_hours=r.get("min_duration_hours"),
                max_duration_hours=r.get("max_duration_hours"),
                upfront_fee=r.get("upfront_fee"),
                vcpus=r.get("vcpus"),
                stale=bool(r.get("stale")),
                last_seen=r.get("last_seen"),
                anomalies=anomaly_pairs(r.get("anomalies")),
            )
        )
    return out
