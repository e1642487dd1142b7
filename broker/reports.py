"""Commitment reports: the book, its totals and every risk metric and flag, as JSON, CSV or
one self-contained HTML page (Jinja2, `templates/commitments.html.j2`, inline SVG charts
built in `broker.report_charts`).

`build_report` expires what has ended (`broker.ledger.expire_reservations`, so a report is
right without a scheduler), loads the book of a team (or of every team) live at `as_of`,
the usage, the state of the offers it was booked from and today's market, and runs
`broker.risk.assess`. Market-derived figures (mark-to-market, stale data) are always today's:
the store keeps the current market, not the market of `as_of`.

The book at `as_of`: reservations not cancelled by then (a reservation cancelled after
`as_of` still counts) whose end is after `as_of`; their current rate (an amendment's
previous rate is in the ledger history).

Mark-to-market is like for like (`broker.risk.market`): `_market` gives each offer its form
factor and GPUs per instance, `commitment_of` gives each reservation the form factor its
model names and, for a booking, its GPUs per node (`gpus / instances`). A reservation with
a provider the broker does not track (`other`) is named by its recorded counterparty.

"Versus market" has one sign convention in every format (`MTM_SIGN_CONVENTION`, in the JSON
and the HTML legend): effective rate minus market rate, so positive = paying more than the
market, red (`mtm_class` = `over`), written with a `+` in the HTML; negative = paying less,
green (`under`); zero, or no comparable, has no colour. CSV and JSON carry the signed
numbers as they are.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime
from decimal import ROUND_HALF_EVEN, Decimal
from enum import StrEnum
from functools import cache
from pathlib import Path
from typing import Any

import jinja2
from sqlalchemy import String, cast, func, or_, select
from sqlmodel import Session

from broker import gpus, risk
from broker.config import Settings
from broker.domain import Availability
from broker.ledger import expire_reservations
from broker.models import Reservation, StoredOffer, Team, UsageSample
from broker.report_charts import cliff_chart, spend_chart, utilisation_chart
from broker.risk import (
    Commitment,
    CommitmentRisk,
    MarketPrice,
    OfferStatus,
    RiskReport,
    Thresholds,
)
from broker.scoring import ScoringConfig

TEMPLATES = Path(__file__).parent / "templates"
_RES = Reservation.__table__  # type: ignore[attr-defined]
_OFFERS = StoredOffer.__table__  # type: ignore[attr-defined]
_USAGE = UsageSample.__table__  # type: ignore[attr-defined]
_TEAMS = Team.__table__  # type: ignore[attr-defined]


class ReportFormat(StrEnum):
    JSON = "json"
    CSV = "csv"
    HTML = "html"


MEDIA_TYPES = {
    ReportFormat.JSON: "application/json",
    ReportFormat.CSV: "text/csv; charset=utf-8",
    ReportFormat.HTML: "text/html; charset=utf-8",
}


@dataclass(frozen=True)
class CommitmentReport:
    """A built report: the risk model's output plus who and when."""

    risk: RiskReport
    team: str | None
    teams: Mapping[int, str]
    rows: Sequence[Reservation]
    generated_at: datetime
    expired_now: Sequence[int]

    @property
    def by_id(self) -> dict[int, Reservation]:
        return {r.id: r for r in self.rows if r.id is not None}


# -------------------------------------------------------------------------- build


def _form_factor(model: str) -> str | None:
    """The catalogue's form factor of a canonical model; None when it names none (plain
    `H100`, `A100-80GB`) or the catalogue does not know the model."""
    try:
        return gpus.get(model).form_factor
    except gpus.UnknownGpu:
        return None


def _memory(model: str) -> Decimal | None:
    """The catalogue's memory per GPU of a canonical model; None when it says none."""
    try:
        memory = gpus.get(model).memory_gb
    except gpus.UnknownGpu:
        return None
    return Decimal(memory) if memory is not None else None


def commitment_of(row: Reservation) -> Commitment:
    """The risk model's view of a reservation. GPUs per node come only from a booking
    (`gpus / instances`); an external commitment records no node size, so None."""
    assert row.id is not None
    per_node = row.gpus / row.instances if row.instances else None
    return Commitment(
        id=row.id,
        provider=row.provider,
        gpu_model=row.gpu_model,
        gpu_family=row.gpu_family,
        gpus=row.gpus,
        region=row.region,
        jurisdiction=row.jurisdiction,
        starts_at=row.starts_at,
        ends_at=row.ends_at,
        rate_per_gpu_hour=row.rate_per_gpu_hour,
        upfront_fee=row.upfront_fee_usd,
        kind=row.kind,
        state=row.state,
        currency=row.currency,
        offer_key=row.offer_key,
        form_factor=_form_factor(row.gpu_model),
        gpu_memory_gb=_memory(row.gpu_model),
        gpus_per_node=per_node,
        counterparty=row.counterparty,
    )


def load_book(session: Session, team_id: int | None, as_of: datetime) -> list[Reservation]:
    """Reservations of the team (None: every team) live at `as_of`, by start then id."""
    stmt = select(Reservation).where(
        _RES.c.ends_at > as_of,
        or_(
            _RES.c.cancelled_at.is_(None),
            _RES.c.cancelled_at > as_of,
        ),
    )
    if team_id is not None:
        stmt = stmt.where(_RES.c.team_id == team_id)
    stmt = stmt.order_by(_RES.c.starts_at, _RES.c.id)
    return list(session.exec(stmt).scalars().all())  # type: ignore[call-overload]


def _usage(session: Session, ids: Sequence[int]) -> list[risk.UsageSample]:
    out: list[risk.UsageSample] = []
    for chunk in range(0, len(ids), 500):
        part = ids[chunk : chunk + 500]
        for r in session.connection().execute(
            select(
                _USAGE.c.reservation_id,
                _USAGE.c.period_start,
                _USAGE.c.period_end,
                _USAGE.c.gpu_hours,
            ).where(_USAGE.c.reservation_id.in_(part))
        ):
            out.append(
                risk.UsageSample(r.reservation_id, r.period_start, r.period_end, r.gpu_hours)
            )
    return out


def _offer_status(session: Session, keys: Sequence[str]) -> dict[str, OfferStatus]:
    out: dict[str, OfferStatus] = {}
    for chunk in range(0, len(keys), 500):
        part = keys[chunk : chunk + 500]
        for r in session.connection().execute(
            select(
                _OFFERS.c.key, _OFFERS.c.active, _OFFERS.c.last_seen, _OFFERS.c.withdrawn_at
            ).where(_OFFERS.c.key.in_(part))
        ):
            out[r.key] = OfferStatus(r.key, bool(r.active), r.last_seen, r.withdrawn_at)
    return out


def _provider_last_seen(session: Session, providers: Sequence[str]) -> dict[str, datetime]:
    rows = session.connection().execute(
        select(_OFFERS.c.provider, func.max(_OFFERS.c.last_seen))
        .where(_OFFERS.c.active, _OFFERS.c.provider.in_(list(providers)))
        .group_by(_OFFERS.c.provider)
    )
    return {p: last for p, last in rows if last is not None}


def _market(session: Session, families: set[str], stale_before: datetime) -> list[MarketPrice]:
    """Fresh live offers (not sold out) of the comparable markets, of the book's GPU
    families, each with its form factor and GPUs per instance (what like-for-like compares);
    a marketplace listing (`ScoringConfig.uncombinable_providers`: single machines) carries
    the most GPUs it can supply. An offer of an accelerator the catalogue does not know
    (`gpu_model` NULL) is like nothing in the book: skipped."""
    c = _OFFERS.c
    rows = session.connection().execute(
        select(
            c.key,
            c.provider,
            c.gpu_model,
            c.gpu_family,
            c.form_factor,
            c.gpu_memory_gb,
            c.jurisdiction,
            c.market,
            c.price_per_gpu_hour,
            c.last_seen,
            c.currency,
            c.gpu_count,
            c.available_count,
        ).where(
            c.active,
            c.gpu_model.is_not(None),
            # A price a sanity rule flags (broker.anomalies) is no yardstick.
            cast(c.anomalies, String) == "[]",
            c.last_seen >= stale_before,
            c.availability != Availability.UNAVAILABLE,
            c.market.in_(
                sorted({*risk.COMPARABLE_MARKET.values(), risk.DEFAULT_COMPARABLE_MARKET})
            ),
        )
    )
    marketplaces = ScoringConfig().uncombinable_providers
    out = []
    for r in rows:
        family = gpus.family_of(r.gpu_model, r.gpu_family)
        if family in families:
            most = r.gpu_count * (r.available_count or 1) if r.provider in marketplaces else None
            out.append(
                MarketPrice(
                    key=r.key,
                    provider=r.provider,
                    gpu_model=r.gpu_model,
                    gpu_family=family,
                    form_factor=r.form_factor,
                    gpus_per_instance=r.gpu_count,
                    gpu_memory_gb=r.gpu_memory_gb,
                    jurisdiction=r.jurisdiction,
                    market=r.market,
                    price_per_gpu_hour=r.price_per_gpu_hour,
                    last_seen=r.last_seen,
                    currency=r.currency,
                    max_gpus=most,
                )
            )
    return out


def build_report(
    session: Session,
    *,
    settings: Settings,
    now: datetime,
    as_of: datetime | None = None,
    team_id: int | None = None,
    team: str | None = None,
) -> CommitmentReport:
    """The commitment report of `team_id` (None: every team) at `as_of` (default `now`).
    Writes only the expiry of reservations whose end has passed (with ledger entries)."""
    as_of = as_of or now
    expired = expire_reservations(session, now)
    rows = load_book(session, team_id, as_of)
    ids = [r.id for r in rows if r.id is not None]
    thresholds = Thresholds.from_settings(settings.risk, settings.stale_after_minutes)
    book = [commitment_of(r) for r in rows]
    report = risk.assess(
        book,
        _usage(session, ids),
        _offer_status(session, sorted({r.offer_key for r in rows if r.offer_key})),
        _provider_last_seen(session, sorted({r.provider for r in rows})),
        _market(session, {c.gpu_family for c in book}, now - thresholds.stale_after),
        as_of=as_of,
        now=now,
        thresholds=thresholds,
    )
    team_ids = sorted({r.team_id for r in rows})
    teams = {
        tid: name
        for tid, name in session.connection().execute(
            select(_TEAMS.c.id, _TEAMS.c.name).where(_TEAMS.c.id.in_(team_ids))
        )
    }
    return CommitmentReport(report, team, teams, rows, now, expired)


# --------------------------------------------------------------------------- JSON

#: The one sign convention of every "versus market" figure (`mtm_*`, the totals' mark to
#: market), stated in the JSON and the HTML legend; `mtm_class` gives its colour.
MTM_SIGN_CONVENTION = (
    "effective rate minus the cheapest like-for-like market rate: positive = paying more "
    "than today's market (red), negative = paying less (green), zero = at the market"
)


def mtm_class(d: Decimal | None) -> str:
    """The CSS class of a "versus market" figure: `over` (red) when positive, `under`
    (green) when negative, none at zero or when there is no comparable."""
    if d is None or d == 0:
        return ""
    return "over" if d > 0 else "under"


def _num(d: Decimal | None, places: int | None = None) -> int | float | None:
    """A JSON number (counts, hours, shares): an int when whole."""
    if d is None:
        return None
    if places is not None:
        d = d.quantize(Decimal(1).scaleb(-places), rounding=ROUND_HALF_EVEN)
    return int(d) if d == d.to_integral_value() else float(d)


def _money(d: Decimal | None) -> str | None:
    """Money as an exact decimal string (two places; rates keep up to six)."""
    if d is None:
        return None
    n = d.normalize()
    exponent = n.as_tuple().exponent
    if isinstance(exponent, int) and exponent < -2:
        return f"{n:f}"
    return f"{d.quantize(Decimal('0.01')):f}"


def _iso(t: datetime | None) -> str | None:
    return None if t is None else t.isoformat().replace("+00:00", "Z")


def row_dict(r: CommitmentRisk, row: Reservation, team: str | None) -> dict[str, Any]:
    c = r.commitment
    m = r.mark_to_market
    u = r.utilisation
    return {
        "id": c.id,
        "team": team,
        "state": row.state,
        "kind": c.kind,
        "source": row.source,
        "provider": c.provider,
        "counterparty": row.counterparty,
        "offer_key": c.offer_key,
        "request_id": row.request_id,
        "gpu_model": c.gpu_model,
        "gpu_family": c.gpu_family,
        "gpus": _num(c.gpus),
        "gpus_per_node": _num(c.gpus_per_node),
        "region": c.region,
        "country": row.country,
        "jurisdiction": c.jurisdiction,
        "starts_at": _iso(c.starts_at),
        "ends_at": _iso(c.ends_at),
        "term_hours": _num(r.term_hours, 2),
        "remaining_hours": _num(r.remaining_hours, 2),
        "currency": c.currency,
        "rate_per_gpu_hour": _money(c.rate_per_gpu_hour),
        "upfront_fee_usd": _money(c.upfront_fee),
        "effective_rate_per_gpu_hour": _money(m.effective_rate),
        "hourly_cost": _money(risk.cents(r.hourly_cost)),
        "monthly_run_rate": _money(r.monthly_run_rate),
        "total_commitment": _money(r.total_commitment),
        "remaining_commitment": _money(r.remaining_commitment),
        "committed_gpu_hours": _num(r.committed_gpu_hours, 2),
        "remaining_gpu_hours": _num(r.remaining_gpu_hours, 2),
        "used_gpu_hours": _num(u.used_gpu_hours, 3),
        "covered_gpu_hours": _num(u.covered_gpu_hours, 2),
        "usage_samples": u.samples,
        "utilisation": _num(u.ratio),
        "market": m.market,
        "mtm_basis": m.basis,
        "market_rate_per_gpu_hour": _money(m.market_rate),
        "market_offer_key": m.market_offer_key,
        "market_provider": m.market_provider,
        "market_gpu_model": m.market_gpu_model,
        "market_gpus_per_instance": _num(m.market_gpus_per_instance),
        "mtm_monthly": _money(m.monthly_delta),
        "mtm_remaining": _money(m.remaining_delta),
        "mtm_premium": _num(m.premium),
        "mtm_note": m.note,
        "stale": r.stale,
        "flags": [f.as_dict() for f in r.flags],
    }


def _concentration(conc: risk.Concentration) -> dict[str, Any]:
    return {
        "total_spend": _money(conc.total_spend),
        "total_gpu_hours": _num(conc.total_gpu_hours, 2),
        "hhi": _num(conc.hhi),
        "shares": [
            {
                "name": s.name,
                "reservations": s.reservations,
                "spend": _money(s.spend),
                "spend_share": _num(s.spend_share),
                "gpu_hours": _num(s.gpu_hours, 2),
                "gpu_hours_share": _num(s.gpu_hours_share),
            }
            for s in conc.shares
        ],
    }


def _cliff(w: risk.CliffWeek) -> dict[str, Any]:
    return {
        "week_start": _iso(w.week_start),
        "week_end": _iso(w.week_end),
        "gpus_live": _num(w.gpus_live),
        "gpus_expiring": _num(w.gpus_expiring),
        "gpus_starting": _num(w.gpus_starting),
        "gpus_unreplaced": _num(w.gpus_unreplaced),
        "unreplaced_share": _num(w.unreplaced_share),
        "monthly_spend_expiring": _money(w.monthly_spend_expiring),
        "reservations_expiring": list(w.reservations_expiring),
        "flagged": w.flagged,
    }


def to_json(rep: CommitmentReport) -> dict[str, Any]:
    """Totals, one row per reservation, every risk metric and every flag."""
    r = rep.risk
    t = r.totals
    by_id = rep.by_id
    thresholds = {
        k: (_num(v) if isinstance(v, Decimal) else v) for k, v in r.thresholds.as_dict().items()
    }
    return {
        "report": "commitments",
        "team": rep.team,
        "as_of": _iso(r.as_of),
        "generated_at": _iso(rep.generated_at),
        "currency": "USD",
        "hours_per_month": _num(risk.HOURS_PER_MONTH),
        "mtm_sign_convention": MTM_SIGN_CONVENTION,
        "thresholds": thresholds,
        "totals": {
            "reservations": t.reservations,
            "gpus_running": _num(t.gpus_running),
            "gpus_committed": _num(t.gpus_committed),
            "hourly_run_rate": _money(t.hourly_run_rate),
            "monthly_run_rate": _money(t.monthly_run_rate),
            "total_commitment": _money(t.total_commitment),
            "remaining_commitment": _money(t.remaining_commitment),
            "committed_gpu_hours": _num(t.committed_gpu_hours, 2),
            "remaining_gpu_hours": _num(t.remaining_gpu_hours, 2),
            "used_gpu_hours": _num(t.used_gpu_hours, 3),
            "covered_gpu_hours": _num(t.covered_gpu_hours, 2),
            "utilisation": _num(t.utilisation),
            "monthly_mark_to_market": _money(t.monthly_mark_to_market),
            "monthly_overpayment": _money(t.monthly_overpayment),
            "flags": len(r.flags),
        },
        "reservations": [
            row_dict(x, by_id[x.commitment.id], rep.teams.get(by_id[x.commitment.id].team_id))
            for x in r.rows
        ],
        "concentration": {k: _concentration(v) for k, v in r.concentration.items()},
        "expiry_cliffs": [_cliff(w) for w in r.expiry_cliffs],
        "utilisation": {
            "used_gpu_hours": _num(t.used_gpu_hours, 3),
            "covered_gpu_hours": _num(t.covered_gpu_hours, 2),
            "ratio": _num(t.utilisation),
            "floor": _num(r.thresholds.utilisation_floor),
        },
        "stale": [
            {"reservation_id": x.commitment.id, "message": x.stale}
            for x in r.rows
            if x.stale is not None
        ],
        "flags": [f.as_dict() for f in r.flags],
    }


# ---------------------------------------------------------------------------- CSV

CSV_COLUMNS = (
    "id",
    "team",
    "state",
    "kind",
    "source",
    "provider",
    "counterparty",
    "offer_key",
    "request_id",
    "gpu_model",
    "gpu_family",
    "gpus",
    "gpus_per_node",
    "region",
    "country",
    "jurisdiction",
    "starts_at",
    "ends_at",
    "term_hours",
    "remaining_hours",
    "currency",
    "rate_per_gpu_hour",
    "upfront_fee_usd",
    "effective_rate_per_gpu_hour",
    "hourly_cost",
    "monthly_run_rate",
    "total_commitment",
    "remaining_commitment",
    "committed_gpu_hours",
    "remaining_gpu_hours",
    "used_gpu_hours",
    "covered_gpu_hours",
    "usage_samples",
    "utilisation",
    "market",
    "mtm_basis",
    "market_rate_per_gpu_hour",
    "market_offer_key",
    "market_provider",
    "market_gpu_model",
    "market_gpus_per_instance",
    "mtm_monthly",
    "mtm_remaining",
    "mtm_premium",
    "stale",
    "flag_kinds",
    "flags",
)
#: Free-text columns: a cell starting with one of these is prefixed with `'` so a
#: spreadsheet shows it as text instead of running it as a formula. A team's name is
#: free text too (`broker apikey create --team`). Numeric columns are not listed: a
#: negative amount must stay a number.
_TEXT_COLUMNS = {
    "team",
    "counterparty",
    "offer_key",
    "region",
    "mtm_basis",
    "market_offer_key",
    "stale",
    "flags",
}
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def _cell(column: str, value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    if column in _TEXT_COLUMNS and text.startswith(_FORMULA_START):
        return "'" + text
    return text


def to_csv(rep: CommitmentReport) -> str:
    """One row per reservation with its risk columns; UTF-8 with a byte-order mark (so
    spreadsheets read non-ASCII names right), CRLF line ends, ISO 8601 UTC times, plain
    decimal numbers (money exact, no currency sign or thousands separator)."""
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(CSV_COLUMNS)
    for d in to_json(rep)["reservations"]:
        d = dict(d)
        flags = d.pop("flags")
        d["flag_kinds"] = " ".join(f["kind"] for f in flags)
        d["flags"] = " | ".join(f["message"] for f in flags)
        w.writerow([_cell(col, d.get(col)) for col in CSV_COLUMNS])
    return "\ufeff" + buf.getvalue()


# --------------------------------------------------------------------------- HTML


@cache
def _environment() -> jinja2.Environment:
    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["usd"] = lambda d: "" if d is None else risk.usd(d)
    env.filters["pct"] = lambda d: "" if d is None else risk.pct(d)
    env.filters["num"] = lambda d: "" if d is None else risk.count_text(d)
    env.filters["rate"] = lambda d: "" if d is None else risk.rate_text(d)
    env.filters["signed_usd"] = lambda d: "" if d is None else risk.signed_usd(d)
    env.filters["signed_pct"] = lambda d: "" if d is None else risk.signed_pct(d)
    env.filters["mtm_class"] = mtm_class
    env.filters["day"] = lambda t: "" if t is None else f"{t:%Y-%m-%d}"
    env.filters["stamp"] = lambda t: "" if t is None else f"{t:%Y-%m-%d %H:%M} UTC"
    env.filters["f1"] = lambda x: f"{x:.1f}"
    return env


def to_html(rep: CommitmentReport) -> str:
    """One self-contained page: headline numbers, flags, charts (inline SVG), the table."""
    r = rep.risk
    by_id = rep.by_id
    charts = [
        spend_chart(
            "chart-spend-provider", "Remaining spend by provider", r.concentration["provider"]
        ),
        spend_chart(
            "chart-spend-jurisdiction",
            "Remaining spend by jurisdiction",
            r.concentration["jurisdiction"],
        ),
        cliff_chart(r.expiry_cliffs),
        utilisation_chart(r.rows, r.thresholds.utilisation_floor),
    ]
    return (
        _environment()
        .get_template("commitments.html.j2")
        .render(
            report=r,
            team=rep.team,
            teams=rep.teams,
            rows=[(x, by_id[x.commitment.id]) for x in r.rows],
            charts={c.id: c for c in charts},
            generated_at=rep.generated_at,
            hours_per_month=risk.HOURS_PER_MONTH,
            untracked=risk.UNTRACKED_PROVIDER,
            warnings=sum(1 for f in r.flags if f.severity == risk.Severity.WARNING),
        )
    )


def render(rep: CommitmentReport, fmt: ReportFormat | str) -> str:
    """The report as text in `fmt` (JSON pretty-printed)."""
    fmt = ReportFormat(fmt)
    if fmt == ReportFormat.JSON:
        return json.dumps(to_json(rep), indent=2) + "\n"
    if fmt == ReportFormat.CSV:
        return to_csv(rep)
    return to_html(rep)


def parse_as_of(text: str) -> datetime:
    """`2026-06-01` (midnight UTC) or an ISO 8601 time with a timezone.

    Raises:
        ValueError: anything else.
    """
    value = text.strip()
    try:
        if len(value) == 10:
            d = date.fromisoformat(value)
            t = datetime(d.year, d.month, d.day, tzinfo=UTC)
        else:
            t = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(
            f"not a date or time: {text!r}; use 2026-06-01 or 2026-06-01T12:00:00Z"
        ) from None
    if t.tzinfo is None:
        raise ValueError(f"{text!r} has no timezone; add Z or +00:00")
    try:
        utc = t.astimezone(UTC)
    except OverflowError:
        raise ValueError(f"{text!r} is out of range") from None
    if not 1970 <= utc.year <= 9000:
        raise ValueError(f"{text!r} is out of range (years 1970 to 9000)")
    return utc


__all__ = [
    "CSV_COLUMNS",
    "MEDIA_TYPES",
    "MTM_SIGN_CONVENTION",
    "CommitmentReport",
    "ReportFormat",
    "build_report",
    "load_book",
    "mtm_class",
    "parse_as_of",
    "render",
    "to_csv",
    "to_html",
    "to_json",
]
