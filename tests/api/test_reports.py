"""`GET /v1/reports/commitments` over HTTP (SQLite and PostgreSQL) on the bundled sample
market and on a real snapshot of the market data set: totals, mark-to-market against the
cheapest like-for-like live offer (same family and form factor, at least the GPUs per node),
the counterparty's name, the sign and colour of "versus market", concentration, expiry
cliffs, utilisation, stale data, as_of, team scope, CSV and HTML. Every expectation is
recomputed here from the inputs and the offers table, not read back from the code."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from pathlib import Path
from typing import Any, NamedTuple

import pytest
from sqlalchemy import Engine, String, cast, func, or_, select

from broker.auth import Role, create_api_key
from broker.db import session_scope
from broker.domain import Market, Offer
from broker.models import LedgerEntry, StoredOffer
from broker.polling import ReplaySummary, replay_results
from broker.reports import CSV_COLUMNS
from providers import replay
from tests.api.conftest import T0, Clock, Keys, TestClient, bearer
from tests.api.test_reservations import hours, ingest

D = timedelta(days=1)
CENT = Decimal("0.01")
#: The form factor a model name states (the catalogue's H100 variants); others state none.
FORM_FACTOR = {"H100-SXM": "SXM", "H100-PCIe": "PCIe", "H100-NVL": "NVL", "H200-NVL": "NVL"}
#: Memory per GPU of the models the test books name, from NVIDIA's data sheets (A100 40 or
#: 80 GB; every H100 at least 80 GB).
MEMORY_GB = {
    "A100": Decimal(40),
    "A100-80GB": Decimal(80),
    "H100": Decimal(80),
    "H100-SXM": Decimal(80),
    "H100-PCIe": Decimal(80),
    "H100-NVL": Decimal(94),
    "L4": Decimal(24),
}
#: The real snapshot replayed for the like-for-like test (the newest of the data set).
REAL_SNAPSHOT = "2026-05-20"


def iso(t: datetime) -> str:
    return t.isoformat().replace("+00:00", "Z")


#: The alpha book: EU H100 from two providers, a US A100 reservation with a fee, an L4
#: contract with a colo in Switzerland; one cancelled, one over before the clock.
BOOK: list[dict[str, Any]] = [
    {
        "provider": "lambda_cloud",
        "gpu_model": "H100-SXM",
        "gpus": 16,
        "region": "europe-central-1",
        "starts_at": iso(T0 - 30 * D),
        "ends_at": iso(T0 + 60 * D),
        "rate_per_gpu_hour": "4.50",
        "kind": "contract",
        "counterparty": "Lambda",
    },
    {
        "provider": "gcp",
        "gpu_model": "H100",
        "gpus": 64,
        "region": "europe-west4",
        "starts_at": iso(T0 - 20 * D),
        "ends_at": iso(T0 + 10 * D),
        "rate_per_gpu_hour": "1.20",
        "kind": "contract",
        "counterparty": '=HYPERLINK("http://evil")',
    },
    {
        "provider": "azure",
        "gpu_model": "A100-80GB",
        "gpus": 8,
        "region": "eastus",
        "starts_at": iso(T0 - 65 * D),
        "ends_at": iso(T0 + 300 * D),
        "rate_per_gpu_hour": "2.10",
        "upfront_fee_usd": "5000",
        "kind": "reserved_1y",
    },
    {
        "provider": "other",
        "country": "CH",
        "region": "Zurich colo",
        "gpu_model": "L4",
        "gpus": 8,
        "starts_at": iso(T0 + 7 * D),
        "ends_at": iso(T0 + 97 * D),
        "rate_per_gpu_hour": "0.90",
        "kind": "contract",
        "counterparty": "<script>alert(1)</script>",
    },
]
CANCELLED = {**BOOK[0], "gpus": 8, "rate_per_gpu_hour": "9.99", "counterparty": "gone"}
OVER = {**BOOK[0], "ends_at": iso(T0 - D), "counterparty": "over"}


def gpus(b: dict[str, Any]) -> Decimal:
    return Decimal(str(b["gpus"]))


def rate(b: dict[str, Any]) -> Decimal:
    return Decimal(b["rate_per_gpu_hour"])


def remaining(b: dict[str, Any], now: datetime) -> Decimal:
    """What is left to pay of reservation `b` after `now`."""
    start = max(iso(now), b["starts_at"])
    return rate(b) * gpus(b) * hours(start, b["ends_at"])


@pytest.fixture
def book(client: TestClient, keys: Keys, market: ReplaySummary) -> list[dict[str, Any]]:
    out = []
    for body in [*BOOK, CANCELLED, OVER]:
        r = client.post("/v1/reservations", json=body, headers=bearer(keys.member))
        assert r.status_code == 201, r.text
        out.append(r.json())
    r = client.patch(
        f"/v1/reservations/{out[4]['id']}",
        json={"state": "cancelled", "reason": "duplicate"},
        headers=bearer(keys.member),
    )
    assert r.status_code == 200
    # Usage of the Lambda reservation: two weeks, 40 % and 50 % used.
    lam = out[0]["id"]
    for start, used in ((T0 - 14 * D, 16 * 168 * Decimal("0.4")), (T0 - 7 * D, 16 * 168 / 2)):
        r = client.post(
            f"/v1/reservations/{lam}/usage",
            json={
                "period_start": iso(start),
                "period_end": iso(start + 7 * D),
                "gpu_hours": str(used),
            },
            headers=bearer(keys.member),
        )
        assert r.status_code == 201, r.text
    return out[:4]


def report(client: TestClient, key: str, **params: str) -> Any:
    r = client.get("/v1/reports/commitments", params=params, headers=bearer(key))
    assert r.status_code == 200, r.text
    return r


class MarketRow(NamedTuple):
    price: Decimal
    key: str
    gpu_model: str
    form_factor: str | None
    gpu_count: Decimal


def market_rows(
    engine: Engine,
    family: str,
    jurisdiction: str,
    market: str,
    now: datetime,
    gpus: Decimal,
    *,
    form_factor: str | None = None,
    per_node: Decimal | None = None,
    memory_gb: Decimal | None = None,
) -> list[MarketRow]:
    """Fresh, not sold-out live offers of a family in a jurisdiction and market that can
    supply `gpus` (a Vast listing is one machine: only if it alone holds them), of
    `form_factor`, at least `per_node` GPUs per instance and at least 85 % of `memory_gb`
    per GPU (unknown memory passes) when given, with no price anomaly, cheapest first (then
    by key), by SQL over the offers table."""
    o = StoredOffer.__table__  # type: ignore[attr-defined]
    machine_gpus = o.c.gpu_count * func.coalesce(o.c.available_count, 1)
    stmt = (
        select(o.c.price_per_gpu_hour, o.c.key, o.c.gpu_model, o.c.form_factor, o.c.gpu_count)
        .where(
            o.c.active,
            o.c.gpu_family == family,
            o.c.jurisdiction == jurisdiction,
            o.c.market == market,
            o.c.availability != "unavailable",
            o.c.last_seen >= now - timedelta(minutes=120),
            or_(o.c.provider != "vast", machine_gpus >= gpus),
            cast(o.c.anomalies, String) == "[]",
        )
        .order_by(o.c.price_per_gpu_hour, o.c.key)
    )
    if form_factor is not None:
        stmt = stmt.where(o.c.form_factor == form_factor)
    if per_node is not None:
        stmt = stmt.where(o.c.gpu_count >= per_node)
    if memory_gb is not None:
        stmt = stmt.where(
            or_(o.c.gpu_memory_gb.is_(None), o.c.gpu_memory_gb >= memory_gb * Decimal("0.85"))
        )
    with engine.connect() as conn:
        return [
            MarketRow(Decimal(r[0]), r[1], r[2], r[3], Decimal(r[4])) for r in conn.execute(stmt)
        ]


def best_market(
    engine: Engine,
    family: str,
    jurisdiction: str,
    market: str,
    now: datetime,
    gpus: Decimal,
    *,
    form_factor: str | None = None,
    per_node: Decimal | None = None,
    memory_gb: Decimal | None = None,
) -> tuple[Decimal, str] | None:
    """The cheapest of `market_rows`: (price, key)."""
    rows = market_rows(
        engine,
        family,
        jurisdiction,
        market,
        now,
        gpus,
        form_factor=form_factor,
        per_node=per_node,
        memory_gb=memory_gb,
    )
    return None if not rows else (rows[0].price, rows[0].key)


def party(b: dict[str, Any]) -> str:
    """Whom a reservation is with, as the report must name it."""
    if b["provider"] != "other":
        return str(b["provider"])
    return str(b["counterparty"] or "other (counterparty not recorded)")


def q(d: Decimal, places: str = "0.01") -> Decimal:
    return d.quantize(Decimal(places), rounding=ROUND_HALF_EVEN)


def test_json_report_totals_mark_to_market_and_flags(
    client: TestClient, keys: Keys, book: list[dict[str, Any]], engine: Engine, clock: Clock
) -> None:
    body = report(client, keys.admin).json()
    assert body["team"] == "alpha" and body["as_of"] == iso(T0) and body["currency"] == "USD"
    rows = {r["id"]: r for r in body["reservations"]}
    assert set(rows) == {b["id"] for b in book}  # not the cancelled one, not the one over
    now = clock()
    running = [b for b in book if b["starts_at"] <= iso(now)]
    hourly = sum((rate(b) * gpus(b) for b in running), Decimal(0))
    t = body["totals"]
    assert Decimal(t["hourly_run_rate"]) == q(hourly)
    assert Decimal(t["monthly_run_rate"]) == q(hourly * 730)
    assert t["gpus_running"] == sum(gpus(b) for b in running) == 88
    assert t["gpus_committed"] == 96 and t["reservations"] == 4
    assert Decimal(t["remaining_commitment"]) == sum(q(remaining(b, now)) for b in book)
    total = sum(
        q(rate(b) * gpus(b) * hours(b["starts_at"], b["ends_at"]) + Decimal(b["upfront_fee_usd"]))
        for b in book
    )
    assert Decimal(t["total_commitment"]) == total

    # Mark-to-market: each row against the cheapest fresh on-demand offer of its family (and
    # form factor, when its model names one) in its jurisdiction, by SQL over the offers
    # table. External commitments record no GPUs per node: any instance size compares.
    monthly_sum = Decimal(0)
    for b in book:
        row = rows[b["id"]]
        assert row["gpus_per_node"] is None
        best = best_market(
            engine,
            b["gpu_family"],
            b["jurisdiction"],
            "on_demand",
            now,
            gpus(b),
            form_factor=FORM_FACTOR.get(b["gpu_model"]),
            memory_gb=MEMORY_GB.get(b["gpu_model"]),
        )
        eff = rate(b) + Decimal(b["upfront_fee_usd"]) / (
            gpus(b) * hours(b["starts_at"], b["ends_at"])
        )
        assert Decimal(row["effective_rate_per_gpu_hour"]) == q(eff, "0.000001")
        if best is None:
            assert row["market_rate_per_gpu_hour"] is None and row["mtm_monthly"] is None
            assert row["mtm_note"].startswith("no fresh on_demand offers of")
            continue
        price, key = best
        assert row["market_offer_key"] == key
        assert Decimal(row["market_rate_per_gpu_hour"]) == price
        monthly = q((q(eff, "0.000001") - price) * gpus(b) * 730)
        assert Decimal(row["mtm_monthly"]) == monthly
        monthly_sum += monthly
    assert Decimal(t["monthly_mark_to_market"]) == monthly_sum
    lam, gcp, _az, _colo = (rows[b["id"]] for b in book)
    # The sample market has EU H100-SXM on demand: the SXM contract is marked against SXM.
    assert lam["market_offer_key"] is not None and gcp["market_offer_key"] is not None
    assert lam["mtm_basis"] == (
        "on_demand offers of H100-SXM of any instance size (the commitment records no GPUs "
        "per node) in EU"
    )
    assert lam["market_gpu_model"] == "H100-SXM"
    # Sign convention: Lambda at $4.50 is above the EU SXM market (positive, flagged with a
    # sentence); GCP at $1.20 is below it (negative, not flagged).
    assert body["mtm_sign_convention"].startswith("effective rate minus")
    assert Decimal(lam["mtm_monthly"]) > 0 and lam["mtm_premium"] > 0
    over = [f for f in lam["flags"] if f["kind"] == "overpaying"]
    assert over and lam["market_offer_key"] in over[0]["message"]
    assert f"${Decimal(lam['mtm_monthly']):,.2f}/month" in over[0]["message"]
    assert "above the market" in over[0]["message"]
    assert Decimal(gcp["mtm_monthly"]) < 0 and gcp["mtm_premium"] < 0
    assert not any(f["kind"] == "overpaying" for f in gcp["flags"])
    assert Decimal(t["monthly_overpayment"]) == sum(
        (Decimal(r["mtm_monthly"]) for r in rows.values() if (r["mtm_monthly"] or "0")[0] != "-"),
        Decimal(0),
    )


def test_json_report_utilisation_concentration_and_cliffs(
    client: TestClient, keys: Keys, book: list[dict[str, Any]], clock: Clock
) -> None:
    body = report(client, keys.admin).json()
    rows = {r["id"]: r for r in body["reservations"]}
    lam, gcp, az, _colo = (rows[b["id"]] for b in book)
    now = clock()
    # Utilisation of the Lambda reservation: (0.4 + 0.5) / 2 over two full weeks.
    assert lam["utilisation"] == 0.45 and lam["usage_samples"] == 2
    assert any(f["kind"] == "low_utilisation" for f in lam["flags"])
    assert body["utilisation"]["ratio"] == 0.45
    # GCP and Azure have run more than a week with no usage: informational.
    assert [f["kind"] for f in gcp["flags"]] == ["no_usage"]
    assert any(f["kind"] == "no_usage" for f in az["flags"])

    # Concentration by remaining spend, recomputed.
    spend: dict[str, Decimal] = {}
    gpu_hours: dict[str, Decimal] = {}
    for b in book:  # by whom each is with: the colo by its counterparty, not as "other"
        left = hours(max(iso(now), b["starts_at"]), b["ends_at"])
        spend[party(b)] = spend.get(party(b), Decimal(0)) + remaining(b, now)
        gpu_hours[party(b)] = gpu_hours.get(party(b), Decimal(0)) + gpus(b) * left
    assert "other" not in spend and BOOK[3]["counterparty"] in spend
    whole = sum(spend.values(), Decimal(0))
    whole_gh = sum(gpu_hours.values(), Decimal(0))
    shares = {s["name"]: s for s in body["concentration"]["provider"]["shares"]}
    assert set(shares) == set(spend)
    for name, value in spend.items():
        assert Decimal(shares[name]["spend"]) == q(value)
        assert Decimal(str(shares[name]["spend_share"])) == q(value / whole, "0.0001")
        assert Decimal(str(shares[name]["gpu_hours"])) == gpu_hours[name]
    hhi = sum((((v / whole) * 100) ** 2 for v in spend.values()), Decimal(0))
    assert body["concentration"]["provider"]["hhi"] == int(q(hhi, "1"))
    flagged = {f["subject"] for f in body["flags"] if f["kind"] == "provider_concentration"}
    assert flagged == {
        f"provider {n}"
        for n in spend
        if spend[n] / whole > Decimal("0.5") or gpu_hours[n] / whole_gh > Decimal("0.5")
    }
    assert flagged  # azure: 51 % of the spend
    juris = {s["name"]: s["spend_share"] for s in body["concentration"]["jurisdiction"]["shares"]}
    assert set(juris) == {"EU", "US", "CH"}

    # Expiry cliff: the 64 GCP GPUs end in the second week with nothing to replace them.
    week1 = body["expiry_cliffs"][1]
    assert week1["week_start"] == iso(T0 + 7 * D) and week1["reservations_expiring"] == [gcp["id"]]
    assert week1["gpus_expiring"] == 64 and week1["gpus_unreplaced"] == 64 and week1["flagged"]
    assert len(body["expiry_cliffs"]) == 26
    cliff = [f for f in body["flags"] if f["kind"] == "expiry_cliff"]
    assert cliff and cliff[0]["subject"] == f"week of {(T0 + 7 * D):%Y-%m-%d}"
    # Every flag says why.
    for f in body["flags"]:
        assert f["message"].endswith(".") and len(f["message"]) > 40
    assert body["thresholds"]["max_provider_share"] == 0.5


def test_as_of_scope_and_bad_parameters(
    client: TestClient, keys: Keys, book: list[dict[str, Any]], engine: Engine
) -> None:
    later = report(client, keys.member, as_of="2026-08-01").json()
    assert later["as_of"] == "2026-08-01T00:00:00Z"
    # Over by then: GCP (ends 2026-05-31) and Lambda (2026-07-20).
    assert {r["id"] for r in later["reservations"]} == {book[2]["id"], book[3]["id"]}
    earlier = report(client, keys.member, as_of="2026-04-01T00:00:00+02:00").json()
    assert earlier["as_of"] == "2026-03-31T22:00:00Z"
    ids = {r["id"] for r in earlier["reservations"]}
    assert book[0]["id"] in ids and book[1]["id"] in ids
    for params, field in [
        ({"as_of": "yesterday"}, "as_of"),
        ({"as_of": "2026-06-01T00:00:00"}, "as_of"),
        ({"as_of": "9999-12-31"}, "as_of"),
        ({"as_of": "0001-01-01T00:00:00+05:00"}, "as_of"),
        ({"format": "xml"}, "format"),
    ]:
        r = client.get("/v1/reports/commitments", params=params, headers=bearer(keys.member))
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"][0]["field"] == field
    # Another team sees its own (empty) book.
    beta = report(client, keys.viewer).json()
    assert beta["team"] == "beta" and beta["reservations"] == [] and beta["flags"] == []
    assert beta["totals"]["reservations"] == 0 and beta["totals"]["utilisation"] is None
    assert client.get("/v1/reports/commitments").status_code == 401


def test_report_expires_ended_reservations_without_a_scheduler(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock
) -> None:
    body = {**BOOK[2], "ends_at": iso(T0 + timedelta(hours=1))}
    rid = client.post("/v1/reservations", json=body, headers=bearer(keys.member)).json()["id"]
    assert report(client, keys.member).json()["totals"]["reservations"] == 1
    clock.advance(hours=2)
    assert report(client, keys.member).json()["totals"]["reservations"] == 0
    le = LedgerEntry.__table__  # type: ignore[attr-defined]
    with engine.connect() as conn:
        actions = list(
            conn.execute(
                select(le.c.action, le.c.actor).where(le.c.reservation_id == rid).order_by(le.c.id)
            )
        )
    assert [tuple(a) for a in actions][-1] == ("expired", "system")
    # A report as of before the end still shows it.
    past = report(client, keys.member, as_of=iso(T0)).json()
    assert [r["id"] for r in past["reservations"]] == [rid]
    assert past["reservations"][0]["state"] == "expired"


def test_stale_and_withdrawn_offers_are_flagged(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock, book: list[dict[str, Any]]
) -> None:
    clock.advance(hours=3)  # the sample market, polled at T0, is now stale
    body = report(client, keys.member).json()
    rows = {r["id"]: r for r in body["reservations"]}
    for b in book[:3]:  # providers with market data
        kinds = [f["kind"] for f in rows[b["id"]]["flags"]]
        assert "provider_stale" in kinds, kinds
        assert rows[b["id"]]["stale"] and "older than the 120 min" in rows[b["id"]]["stale"]
        # No fresh comparable any more.
        assert rows[b["id"]]["market_rate_per_gpu_hour"] is None
    assert rows[book[3]["id"]]["stale"] is None  # `other`: nothing to be stale
    assert len(body["stale"]) == 3


def test_csv_report_opens_as_a_table(
    client: TestClient, keys: Keys, book: list[dict[str, Any]]
) -> None:
    r = report(client, keys.member, format="csv")
    assert r.headers["content-type"].startswith("text/csv")
    assert 'filename="commitments-2026-05-21.csv"' in r.headers["content-disposition"]
    assert r.content.startswith(b"\xef\xbb\xbf")  # UTF-8 byte-order mark for spreadsheets
    rows = list(csv.DictReader(io.StringIO(r.content.decode("utf-8-sig"))))
    assert tuple(rows[0].keys()) == CSV_COLUMNS
    by_json = {x["id"]: x for x in report(client, keys.member).json()["reservations"]}
    assert [int(x["id"]) for x in rows] == list(by_json)
    for x in rows:
        j = by_json[int(x["id"])]
        for col in ("rate_per_gpu_hour", "total_commitment", "remaining_commitment"):
            assert Decimal(x[col]) == Decimal(j[col])
        assert x["mtm_monthly"] == (j["mtm_monthly"] or "")
        assert x["flag_kinds"].split() == [f["kind"] for f in j["flags"]]
        assert x["flags"] == " | ".join(f["message"] for f in j["flags"])
        assert x["starts_at"] == j["starts_at"] and x["gpus"] == str(j["gpus"])
        assert x["mtm_basis"] == j["mtm_basis"] and x["gpus_per_node"] == ""
        assert x["market_provider"] == (j["market_provider"] or "")
    # A formula in free text is neutralised; the value is kept.
    gcp = next(x for x in rows if int(x["id"]) == book[1]["id"])
    assert gcp["counterparty"] == "'" + BOOK[1]["counterparty"]
    # Negative money stays a number.
    assert Decimal(gcp["mtm_monthly"]) < 0


#: Team names a spreadsheet would run as formulas (`=`, `+`, `-`, `@`; a leading tab or
#: CR is stripped from a team name, so it never starts one).
FORMULA_TEAMS = ('=HYPERLINK("http://evil","x")', "+1+cmd|' /C calc'!A0", "-2+3", "@SUM(A1:A9)")


def test_csv_neutralises_a_team_name_that_is_a_formula(
    client: TestClient, engine: Engine, clock: Clock
) -> None:
    for name in FORMULA_TEAMS:
        with session_scope(engine) as session:
            key = create_api_key(session, name, Role.MEMBER, clock=clock).key
        r = client.post("/v1/reservations", json=BOOK[2], headers=bearer(key))
        assert r.status_code == 201, r.text
        assert report(client, key).json()["team"] == name  # JSON keeps the value as is
        text = report(client, key, format="csv").content.decode("utf-8-sig")
        [row] = list(csv.DictReader(io.StringIO(text)))
        assert row["team"] == "'" + name, row["team"]
        assert Decimal(row["rate_per_gpu_hour"]) == Decimal(BOOK[2]["rate_per_gpu_hour"])


def test_html_report_is_self_contained_with_charts(
    client: TestClient, keys: Keys, book: list[dict[str, Any]]
) -> None:
    r = report(client, keys.member, format="html")
    assert r.headers["content-type"].startswith("text/html")
    html = r.text
    for chart in (
        "chart-spend-provider",
        "chart-spend-jurisdiction",
        "chart-expiry",
        "chart-utilisation",
    ):
        assert re.search(rf'<svg id="{chart}"', html), chart
    assert html.count("<rect") > 26  # the 26 weeks, the bars
    # Self-contained: no script, no stylesheet link, no external URL.
    assert "<script" not in html.replace("&lt;script&gt;", "")
    assert "<link" not in html and not re.search(r'(src|href)\s*=\s*["\']?https?:', html)
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in html  # user text is escaped
    assert "GPU commitments of alpha" in html
    for b in book:
        assert f">{b['id']}</td>" in html

    # "Versus market": positive = red `over` with a `+`, negative = green `under`, in the
    # table as in the JSON; the legend and the card say the same.
    rows = {r["id"]: r for r in report(client, keys.member).json()["reservations"]}
    cells = mtm_cells(html)
    assert set(cells) == set(rows)
    signs = set()
    for rid, (cls, value, text) in cells.items():
        delta = rows[rid]["mtm_monthly"]
        if delta is None:
            assert (cls, value, text) == ("", None, "")
            continue
        d = Decimal(delta)
        signs.add((d > 0) - (d < 0))
        assert value == delta
        expected = "over" if d > 0 else "under" if d < 0 else ""
        assert cls == expected, (rid, delta, cls)
        assert text.startswith("+$" if d > 0 else "-$" if d < 0 else "$")
    assert signs >= {1, -1}  # the book has both
    assert_mtm_colours(html)
    legend = re.search(r'<p class="legend" id="mtm-legend">(.*?)</p>', html, re.S)
    assert legend and "paying more than the market" in legend.group(1)
    assert '<span class="mtm over">+ red' in legend.group(1)
    assert '<span class="mtm under">− green' in legend.group(1)
    total = Decimal(report(client, keys.member).json()["totals"]["monthly_mark_to_market"])
    card = re.search(r'<div id="mtm-total" class="v mtm ?(\w*)" data-mtm="([^"]+)">', html)
    assert card and Decimal(card.group(2)) == total
    assert card.group(1) == ("over" if total > 0 else "under" if total < 0 else "")


def mtm_cells(html: str) -> dict[int, tuple[str, str | None, str]]:
    """Reservation id -> (colour class, data-mtm, text) of its "Vs market" cell."""
    out = {}
    for m in re.finditer(r'<tr>\s*<td class="n">(\d+)</td>(.*?)</tr>', html, re.S):
        cell = re.search(
            r'<td class="n mtm ?(\w*)"(?: data-mtm="([^"]*)")?>(.*?)</td>', m.group(2), re.S
        )
        assert cell, m.group(0)
        text = re.sub(r"<[^>]+>", " ", cell.group(3)).strip()
        out[int(m.group(1))] = (cell.group(1), cell.group(2), text)
    return out


def assert_mtm_colours(html: str) -> None:
    """The stylesheet paints `over` in the red and `under` in the green of the page."""
    bad = re.search(r"--bad: (#[0-9a-f]{6})", html)
    ok = re.search(r"--ok: (#[0-9a-f]{6})", html)
    assert bad and ok and (bad.group(1), ok.group(1)) == ("#dc2626", "#16a34a")
    assert ".mtm.over { color: var(--bad); }" in html
    assert ".mtm.under { color: var(--ok); }" in html


def test_empty_book_renders_in_every_format(client: TestClient, keys: Keys) -> None:
    assert report(client, keys.member).json()["reservations"] == []
    text = report(client, keys.member, format="csv").content.decode("utf-8-sig")
    assert text.strip() == ",".join(CSV_COLUMNS)
    html = report(client, keys.member, format="html").text
    assert "No live commitments" in html and '<svg id="chart-expiry"' in html


@pytest.fixture
def beta_member(engine: Engine, clock: Clock) -> str:
    with session_scope(engine) as session:
        return create_api_key(session, "beta", Role.MEMBER, clock=clock).key


def test_report_is_team_scoped(
    client: TestClient, keys: Keys, book: list[dict[str, Any]], beta_member: str
) -> None:
    r = client.post("/v1/reservations", json=BOOK[2], headers=bearer(beta_member))
    assert r.status_code == 201
    beta = report(client, beta_member).json()
    assert [x["id"] for x in beta["reservations"]] == [r.json()["id"]]
    alpha = report(client, keys.member).json()
    assert r.json()["id"] not in {x["id"] for x in alpha["reservations"]}


# ------------------------------------------------------- like for like, on real data


@pytest.fixture
def real_market(engine: Engine, clock: Clock, data_dir: Path) -> ReplaySummary:
    """The newest real snapshot of the market data set, polled at the clock."""
    folder = data_dir / "offers" / REAL_SNAPSHOT
    result = replay.read_snapshot(folder, fetched_at=clock())
    summary = replay_results(engine, [(folder.name, result)], clock=clock)
    assert summary.offers > 0 and not summary.errors, summary.errors
    return summary


def test_the_brokers_own_pick_is_marked_like_for_like_on_a_real_snapshot(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock, real_market: ReplaySummary
) -> None:
    now = clock()
    # The real EU market sells H100s cheaper than an 8-GPU SXM node: a 1-GPU NVL or PCIe
    # card. Those are what a family-only comparison marked the node against.
    any_h100 = market_rows(engine, "H100", "EU", "on_demand", now, Decimal(8))
    nodes = market_rows(
        engine, "H100", "EU", "on_demand", now, Decimal(8), form_factor="SXM", per_node=Decimal(8)
    )
    assert nodes and any_h100[0].price < nodes[0].price
    assert any_h100[0].form_factor != "SXM" or any_h100[0].gpu_count < 8

    # Book the broker's top pick for 8 × H100-SXM in the EU, as a user would.
    r = client.post(
        "/v1/requests",
        json={
            "name": "8x H100-SXM in the EU",
            "gpu_models": ["H100-SXM"],
            "gpus": 8,
            "gpus_per_node": 8,
            "duration_hours": 336,
            "residency": {"allow": ["EU"]},
            "markets": ["on_demand"],
        },
        headers=bearer(keys.member),
    )
    assert r.status_code == 201, r.text
    rid = r.json()["id"]
    rec = client.get(f"/v1/requests/{rid}/recommendations", headers=bearer(keys.member)).json()
    pick = rec["options"][0]
    booked = client.post(
        f"/v1/requests/{rid}/reserve", json={"offers": pick["offers"]}, headers=bearer(keys.member)
    )
    assert booked.status_code == 201, booked.text
    (res,) = booked.json()["reservations"]
    assert (res["gpu_model"], res["gpus"], res["instances"]) == ("H100-SXM", 8, 1)

    row = next(
        x for x in report(client, keys.member).json()["reservations"] if x["id"] == res["id"]
    )
    assert row["gpus_per_node"] == 8 and row["counterparty"] == res["provider"]
    # The comparable is an SXM offer of at least 8 GPUs per instance...
    (offer,) = [x for x in nodes if x.key == row["market_offer_key"]]
    assert offer.form_factor == "SXM" and offer.gpu_count >= 8
    assert row["market_gpu_model"] == offer.gpu_model == "H100-SXM"
    assert Decimal(str(row["market_gpus_per_instance"])) == offer.gpu_count
    # ... the cheapest of them, computed here from the offers table.
    assert row["market_offer_key"] == nodes[0].key
    assert Decimal(row["market_rate_per_gpu_hour"]) == nodes[0].price
    rate = Decimal(res["rate_per_gpu_hour"])
    assert Decimal(row["mtm_monthly"]) == q((rate - nodes[0].price) * 8 * 730)
    # Never one of the cheaper cards of another form factor or fewer GPUs per node.
    unlike = {x.key for x in any_h100 if x.form_factor != "SXM" or x.gpu_count < 8}
    assert row["market_offer_key"] not in unlike
    # The booked offer is itself like for like: the market is at most its rate; the top
    # pick, the cheapest node, is at the market and not "overpaying".
    assert nodes[0].price <= rate
    if res["offer_key"] == nodes[0].key:
        assert Decimal(row["mtm_monthly"]) == 0 and row["mtm_premium"] == 0
    assert not any(f["kind"] == "overpaying" for f in row["flags"])
    html = report(client, keys.member, format="html").text
    assert mtm_cells(html)[res["id"]][0] == ("" if rate == nodes[0].price else "over")


def test_external_commitments_compare_with_the_form_factor_they_name_on_a_real_snapshot(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock, real_market: ReplaySummary
) -> None:
    now = clock()
    sxm: dict[str, Any] = {
        "provider": "lambda_cloud",
        "gpu_model": "H100-SXM",
        "gpus": 8,
        "region": "europe-central-1",
        "starts_at": iso(now - D),
        "ends_at": iso(now + 30 * D),
        "rate_per_gpu_hour": "3.50",
        "kind": "contract",
    }
    plain = {**sxm, "gpu_model": "H100"}
    ids = []
    for body in (sxm, plain):
        r = client.post("/v1/reservations", json=body, headers=bearer(keys.member))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    rows = {x["id"]: x for x in report(client, keys.member).json()["reservations"]}
    # No node size is recorded: any instance size compares, and the report says so.
    assert rows[ids[0]]["gpus_per_node"] is None
    assert "of any instance size" in rows[ids[0]]["mtm_basis"]
    any_h100 = market_rows(engine, "H100", "EU", "on_demand", now, Decimal(8))
    any_sxm = market_rows(engine, "H100", "EU", "on_demand", now, Decimal(8), form_factor="SXM")
    assert any_h100[0].form_factor != "SXM"  # the real market has a cheaper non-SXM H100
    # H100-SXM: the cheapest SXM offer of any size, never the cheaper PCIe or NVL card.
    assert rows[ids[0]]["market_offer_key"] == any_sxm[0].key
    assert Decimal(rows[ids[0]]["market_rate_per_gpu_hour"]) == any_sxm[0].price
    # Plain H100 names no form factor: the cheapest H100 of any form factor.
    assert rows[ids[1]]["market_offer_key"] == any_h100[0].key
    assert Decimal(rows[ids[1]]["mtm_monthly"]) == q(
        (Decimal(plain["rate_per_gpu_hour"]) - any_h100[0].price) * 8 * 730
    )


def test_the_counterparty_is_named_never_other(client: TestClient, keys: Keys) -> None:
    colo = {**BOOK[3], "counterparty": "Zurich Colo AG"}
    unnamed = {**BOOK[3], "counterparty": None, "gpus": 4}
    ids = []
    for body in (colo, unnamed):
        r = client.post("/v1/reservations", json=body, headers=bearer(keys.member))
        assert r.status_code == 201, r.text
        ids.append(r.json()["id"])
    body = report(client, keys.member).json()
    names = {s["name"] for s in body["concentration"]["provider"]["shares"]}
    assert names == {"Zurich Colo AG", "other (counterparty not recorded)"}
    regions = {s["name"] for s in body["concentration"]["region"]["shares"]}
    assert regions == {
        f"Zurich Colo AG/{BOOK[3]['region']}",
        f"other (counterparty not recorded)/{BOOK[3]['region']}",
    }
    rows = {r["id"]: r for r in body["reservations"]}
    assert rows[ids[0]]["provider"] == "other"  # the record is kept as it was recorded
    assert rows[ids[0]]["counterparty"] == "Zurich Colo AG"
    assert rows[ids[1]]["counterparty"] is None  # nothing invented
    for f in body["flags"]:
        assert ", other)" not in f["message"] and f["subject"] != "provider other"
    (conc,) = [f for f in body["flags"] if f["kind"] == "provider_concentration"]
    assert conc["subject"] == "provider Zurich Colo AG" and conc["reservation_ids"] == [ids[0]]
    held = (Decimal(colo["gpus"]) / (colo["gpus"] + unnamed["gpus"]) * 100).quantize(Decimal("0.1"))
    assert conc["message"].startswith(f"Provider Zurich Colo AG holds {held}% of the remaining")
    html = report(client, keys.member, format="html").text
    parties = re.findall(r'<td class="party">([^<]*)<div class="sub">([^<]*)</div>', html)
    assert [(p.strip(), "provider not tracked by the broker" in sub) for p, sub in parties] == [
        ("Zurich Colo AG", True),
        ("other (counterparty not recorded)", True),
    ]
    assert re.search(r'<text [^>]*class="label end">Zurich Colo AG</text>', html)


def test_an_offer_of_an_unknown_accelerator_is_never_a_comparable(
    client: TestClient, keys: Keys, engine: Engine, clock: Clock, real_market: ReplaySummary
) -> None:
    # An accelerator the catalogue does not know is kept with gpu_model NULL: it is like
    # nothing in the book, however cheap.
    unknown = Offer(
        provider="aws",
        region="eu-central-1",
        instance_type="x9.mystery",
        market=Market.ON_DEMAND,
        gpu_model=None,
        gpu_name_raw="Mystery X1",
        accelerator_kind=None,
        gpu_count=Decimal(8),
        price_per_hour=Decimal("0.08"),
        country="DE",
        jurisdiction="EU",
    )
    ingest(engine, [unknown], clock())
    body = {
        "provider": "aws",
        "gpu_model": "H100",
        "gpus": 8,
        "region": "eu-central-1",
        "starts_at": iso(clock() - D),
        "ends_at": iso(clock() + 30 * D),
        "rate_per_gpu_hour": "3.00",
        "kind": "contract",
    }
    r = client.post("/v1/reservations", json=body, headers=bearer(keys.member))
    assert r.status_code == 201, r.text
    (row,) = report(client, keys.member).json()["reservations"]
    expected = best_market(engine, "H100", "EU", "on_demand", clock(), Decimal(8))
    assert expected is not None and row["market_offer_key"] == expected[1] != unknown.key
