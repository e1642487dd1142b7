"""Which offers a subscription hears about: the `OfferFilter` a user writes (every name
checked against the catalogues, with the valid ones in the error) and the `CompiledFilter`
the matcher runs over offer rows. Pure, apart from `offer_rows`, the one read of offers.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator
from sqlalchemy import Connection, select

from broker import gpus, regions
from broker.alerts.store import CHUNK, OFFERS
from broker.domain import Availability
from broker.inputs import MarketList, ModelList, PlaceList
from broker.offers import gpu_filters
from broker.requests import MARKET_COLUMNS


@functools.cache
def _known() -> tuple[frozenset[str], frozenset[str], frozenset[str], frozenset[str]]:
    """Jurisdictions, countries, region names (`r` and `provider/r`) and providers."""
    table = regions.load_table()
    jurisdictions: set[str] = set()
    countries: set[str] = set()
    names: set[str] = set()
    for provider in table.providers():
        for r in table.regions_of(provider):
            jurisdictions.add(r.jurisdiction)
            countries.add(r.country)
            names |= {r.region, f"{provider}/{r.region}"}
    return (
        frozenset(jurisdictions),
        frozenset(countries),
        frozenset(names),
        frozenset(table.providers()) | {"replay"},
    )


def _codes(values: list[str], known: frozenset[str], what: str) -> list[str]:
    out = []
    for raw in values:
        code = raw.strip().upper()
        if code not in known:
            raise ValueError(f"unknown {what} {raw!r} (known: {', '.join(sorted(known))})")
        out.append(code)
    return sorted(set(out))


class OfferFilter(BaseModel):
    """Which offers a subscription hears about; every field narrows, empty = any."""

    model_config = ConfigDict(extra="forbid")

    gpu_models: ModelList = Field(
        default_factory=list,
        description='Models or families, e.g. ["H100"], "H100 80GB", or MODEL:COUNT for at '
        'least COUNT per instance ("H100:8").',
    )
    min_gpus: int | None = Field(
        default=None, ge=1, le=64, description="At least this many GPUs per instance."
    )
    jurisdictions: PlaceList = Field(default_factory=list, description="EU, US, ...")
    countries: PlaceList = Field(default_factory=list, description="ISO 3166-1 alpha-2.")
    regions: PlaceList = Field(
        default_factory=list, description="Region ids: eu-west-1 or aws/eu-west-1."
    )
    markets: MarketList = Field(default_factory=list)
    providers: PlaceList = Field(default_factory=list)
    max_price_per_gpu_hour: Decimal | None = Field(default=None, ge=0, max_digits=12)
    exclude_anomalies: bool = Field(
        default=False, description="Stay silent on offers whose price a sanity rule flagged."
    )

    @field_validator("gpu_models")
    @classmethod
    def _models(cls, v: list[str]) -> list[str]:
        for name in v:
            gpus.parse_gpu_filter(name)  # GpuFilterError says why (near matches, bad count)
        return v

    @field_validator("jurisdictions")
    @classmethod
    def _jurisdictions(cls, v: list[str]) -> list[str]:
        return _codes(v, _known()[0], "jurisdiction")

    @field_validator("countries")
    @classmethod
    def _countries(cls, v: list[str]) -> list[str]:
        return _codes(v, _known()[1], "country")

    @field_validator("regions")
    @classmethod
    def _regions(cls, v: list[str]) -> list[str]:
        for name in v:
            if name not in _known()[2]:
                raise ValueError(f"unknown region {name!r}: use eu-west-1 or aws/eu-west-1")
        return sorted(set(v))

    @field_validator("providers")
    @classmethod
    def _providers(cls, v: list[str]) -> list[str]:
        known = _known()[3]
        for name in v:
            if name not in known:
                raise ValueError(f"unknown provider {name!r} (known: {', '.join(sorted(known))})")
        return sorted(set(v))


@dataclass(frozen=True)
class CompiledFilter:
    """A stored filter ready to test offer rows against."""

    models: frozenset[str] | None
    min_gpus: int | None
    jurisdictions: frozenset[str]
    countries: frozenset[str]
    regions: frozenset[str]
    markets: frozenset[str]
    providers: frozenset[str]
    max_price: Decimal | None
    minimums: Mapping[str, int] = field(default_factory=dict)
    exclude_anomalies: bool = False

    @classmethod
    def of(cls, spec: Mapping[str, Any]) -> CompiledFilter:
        models, minimums = gpu_filters(spec.get("gpu_models") or [])
        price = spec.get("max_price_per_gpu_hour")
        return cls(
            models=models,
            minimums=minimums,
            exclude_anomalies=bool(spec.get("exclude_anomalies")),
            min_gpus=spec.get("min_gpus"),
            jurisdictions=frozenset(spec.get("jurisdictions") or ()),
            countries=frozenset(spec.get("countries") or ()),
            regions=frozenset(spec.get("regions") or ()),
            markets=frozenset(spec.get("markets") or ()),
            providers=frozenset(spec.get("providers") or ()),
            max_price=Decimal(str(price)) if price is not None else None,
        )

    def matches(self, o: Any) -> bool:
        """Does offer row `o` (active, not sold out) pass? Unknown place fails a place rule."""
        if not o.active or o.availability == Availability.UNAVAILABLE:
            return False
        if o.gpu_model is None:
            return False  # an accelerator the catalogue does not know: counted, never alerted
        if self.models is not None and o.gpu_model not in self.models:
            return False
        if self.min_gpus is not None and o.gpu_count < self.min_gpus:
            return False
        least = self.minimums.get(o.gpu_model)
        if least is not None and o.gpu_count < least:
            return False
        if self.exclude_anomalies and o.anomalies:
            return False
        if self.jurisdictions and o.jurisdiction not in self.jurisdictions:
            return False
        if self.countries and o.country not in self.countries:
            return False
        if self.regions and not (
            o.region in self.regions or f"{o.provider}/{o.region}" in self.regions
        ):
            return False
        if self.markets and o.market not in self.markets:
            return False
        if self.providers and o.provider not in self.providers:
            return False
        return self.max_price is None or o.price_per_gpu_hour <= self.max_price

    def place(self) -> str:
        """`in the EU`, `in DE, FR`, `in eu-west-1` or empty."""
        parts = sorted(self.jurisdictions) + sorted(self.countries) + sorted(self.regions)
        return (
            f" in the {parts[0]}"
            if parts == ["EU"]
            else (f" in {', '.join(parts)}" if parts else "")
        )


#: What the scorer reads (time to power in messages) plus what a filter and a message need.
OFFER_COLUMNS = (*MARKET_COLUMNS, "zone", "active")


def offer_rows(conn: Connection, keys: Sequence[str] | None = None) -> list[Any]:
    """The offer rows filters and messages read (`OFFER_COLUMNS`): every active offer, or
    the offers with these keys, active or not (a withdrawn one leaves its match sets)."""
    cols = [OFFERS.c[c] for c in OFFER_COLUMNS]
    if keys is None:
        return list(conn.execute(select(*cols).where(OFFERS.c.active)))
    out: list[Any] = []
    for i in range(0, len(keys), CHUNK):
        out += conn.execute(select(*cols).where(OFFERS.c.key.in_(keys[i : i + CHUNK]))).all()
    return out
