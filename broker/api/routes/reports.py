"""`/v1/reports/commitments`: the caller's team's commitment report as JSON, CSV or HTML.

Thin: `broker.reports` builds it (expiring ended reservations first, so the report is right
without a scheduler) and renders it. Any role may read its team's report.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query
from fastapi.responses import HTMLResponse, JSONResponse, Response

from broker import reports
from broker.api.deps import ClockDep, CurrentPrincipal, SessionDep, SettingsDep
from broker.api.errors import invalid

router = APIRouter(prefix="/reports", tags=["reports"])

_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The report: JSON (totals, per-reservation rows, concentration, expiry "
        "cliffs, utilisation, stale data, mark-to-market, flags), CSV (one row per "
        "reservation with its risk columns) or one self-contained HTML page.",
        "content": {
            "application/json": {"schema": {"type": "object"}},
            "text/csv": {"schema": {"type": "string"}},
            "text/html": {"schema": {"type": "string"}},
        },
    }
}


@router.get("/commitments", response_class=Response, responses=_RESPONSES)
def commitments(
    session: SessionDep,
    principal: CurrentPrincipal,
    settings: SettingsDep,
    clock: ClockDep,
    as_of: Annotated[
        str | None,
        Query(
            max_length=64,
            description="A date (2026-06-01, midnight UTC) or an ISO 8601 time with a "
            "timezone; default now. The book live at that moment; market figures are today's.",
        ),
    ] = None,
    fmt: Annotated[
        reports.ReportFormat, Query(alias="format", description="json, csv or html.")
    ] = reports.ReportFormat.JSON,
) -> Response:
    """What the team has committed to, with whom, until when, for how much, and the risk:
    concentration by provider, region and jurisdiction (Herfindahl index), expiry cliffs
    over the next weeks, utilisation, stale data and mark-to-market against today's best
    comparable offer, each flag with a sentence."""
    now = clock()
    when = None
    if as_of is not None:
        try:
            when = reports.parse_as_of(as_of)
        except ValueError as exc:
            raise invalid("as_of", str(exc)) from None
    rep = reports.build_report(
        session,
        settings=settings,
        now=now,
        as_of=when,
        team_id=principal.team_id,
        team=principal.team,
    )
    if fmt == reports.ReportFormat.JSON:
        return JSONResponse(reports.to_json(rep))
    day = f"{rep.risk.as_of:%Y-%m-%d}"
    if fmt == reports.ReportFormat.CSV:
        return Response(
            reports.to_csv(rep),
            media_type=reports.MEDIA_TYPES[reports.ReportFormat.CSV],
            headers={"Content-Disposition": f'attachment; filename="commitments-{day}.csv"'},
        )
    return HTMLResponse(reports.to_html(rep))
