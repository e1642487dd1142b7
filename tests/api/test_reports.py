"""`GET /v1/reports/commitments` over HTTP (SQLite and PostgreSQL) on the bundled sample
market: totals, mark-to-market against the best comparable live offer, concentration, expiry
cliffs, utilisation, stale data, as_of, team scope, CSV and HTML. Every expectation is
recomputed here from the inputs and the offers table, not read back from the code."""

from __future__ import annotations

import csv
import io
import re
from datetime import datetime, timedelta
from decimal import ROUND_HALF_EVEN, Decimal
from typing import Any

import pytest
from sqlalchemy import Engine, func, or_, select

from broker.auth import Role, create_api_key
from broker.db import session_scope
from broker.models import LedgerEntry, StoredOffer
from broker.polling import ReplaySummary
from broker.reports import CSV_COLUMNS
from tests.api.conftest import T0, Clock, Keys, TestClient, bearer
from tests.api.test_reservations import hours

D = timedelta(days=1)
CENT = Decimal("0.01")


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
        "rate_per_gpu_hour": "3.50",
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


def best_market(
    engine: Engine, family: str, jurisdiction: str, market: str, now: datetime, gpus: Decimal
) -> tuple[Decimal, str] | None:
    """The cheapest fresh, not sold-out live offer of a family in a jurisdiction and market
    that can supply `gpus` (a Vast listing is one machine: only if it alone holds them), by
    SQL."""
    o = StoredOffer.__table__  # type: ignore[attr-defined]
    machine_gpus = o.c.gpu_count * func.coalesce(o.c.available_count, 1)
    with engine.connect() as conn:
        row = conn.execute(
            select(o.c.price_per_gpu_hour, o.c.key)
            .where(
                o.c.active,
                o.c.gpu_family == family,
                o.c.jurisdiction == jurisdiction,
                o.c.market == market,
                o.c.availability != "unavailable",
                o.c.last_seen >= now - timedelta(minutes=120),
                or_(o.c.provider != "vast", machine_gpus >= gpus),
            )
            .order_by(o.c.price_per_gpu_hour, o.c.key)
            .limit(1)
        ).first()
    return None if row is None else (Decimal(row[0]), row[1])


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

    def rate(b: dict[str, Any]) -> Decimal:
        return Decimal(b["rate_per_gpu_hour"])

    running = [b for b in book if b["starts_at"] <= iso(now)]
    hourly = sum((rate(b) * gpus(b) for b in running), Decimal(0))
    t = body["totals"]
    assert Decimal(t["hourly_run_rate"]) == q(hourly)
    assert Decimal(t["monthly_run_rate"]) == q(hourly * 730)
    assert t["gpus_running"] == sum(gpus(b) for b in running) == 88
    assert t["gpus_committed"] == 96 and t["reservations"] == 4

    def remaining(b: dict[str, Any]) -> Decimal:
        start = max(iso(now), b["starts_at"])
        return rate(b) * gpus(b) * hours(start, b["ends_at"])

    assert Decimal(t["remaining_commitment"]) == sum(q(remaining(b)) for b in book)
    total = sum(
        q(rate(b) * gpus(b) * hours(b["starts_at"], b["ends_at"]) + Decimal(b["upfront_fee_usd"]))
        for b in book
    )
    assert Decimal(t["total_commitment"]) == total

    # Mark-to-market: each row against the cheapest fresh on-demand offer of its family in
    # its jurisdiction, by SQL over the offers table.
    monthly_sum = Decimal(0)
    for b in book:
        row = rows[b["id"]]
        best = best_market(engine, b["gpu_family"], b["jurisdiction"], "on_demand", now, gpus(b))
        eff = rate(b) + Decimal(b["upfront_fee_usd"]) / (
            gpus(b) * hours(b["starts_at"], b["ends_at"])
        )
        assert Decimal(row["effective_rate_per_gpu_hour"]) == q(eff, "0.000001")
        if best is None:
            assert row["market_rate_per_gpu_hour"] is None and row["mtm_monthly"] is None
            assert "no fresh on_demand offer" in row["mtm_note"]
            continue
        price, key = best
        assert row["market_offer_key"] == key
        assert Decimal(row["market_rate_per_gpu_hour"]) == price
        monthly = q((q(eff, "0.000001") - price) * gpus(b) * 730)
        assert Decimal(row["mtm_monthly"]) == monthly
        monthly_sum += monthly
    assert Decimal(t["monthly_mark_to_market"]) == monthly_sum
    # The sample market has EU H100 on demand (from $1.98) and US A100: all but the
    # colo's L4 in CH have a comparable.
    assert [rows[b["id"]]["market_rate_per_gpu_hour"] is None for b in book] == [
        False,
        False,
        False,
        best_market(engine, "L4", "CH", "on_demand", now, Decimal(8)) is None,
    ]
    lam, gcp, az, _colo = (rows[b["id"]] for b in book)
    # Lambda at $3.50 is far above the EU market: flagged with a sentence.
    over = [f for f in lam["flags"] if f["kind"] == "overpaying"]
    assert over and lam["market_offer_key"] in over[0]["message"]
    assert f"${Decimal(lam['mtm_monthly']):,.2f}/month" in over[0]["message"]
    assert Decimal(gcp["mtm_monthly"]) < 0 and not any(
        f["kind"] == "overpaying" for f in gcp["flags"]
    )

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
    for b in book:
        left = hours(max(iso(now), b["starts_at"]), b["ends_at"])
        spend[b["provider"]] = spend.get(b["provider"], Decimal(0)) + remaining(b)
        gpu_hours[b["provider"]] = gpu_hours.get(b["provider"], Decimal(0)) + gpus(b) * left
    whole = sum(spend.values(), Decimal(0))
    whole_gh = sum(gpu_hours.values(), Decimal(0))
    shares = {s["name"]: s for s in body["concentration"]["provider"]["shares"]}
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
    # A formula in free text is neutralised; the value is kept.
    gcp = next(x for x in rows if int(x["id"]) == book[1]["id"])
    assert gcp["counterparty"] == "'" + BOOK[1]["counterparty"]
    # Negative money stays a number.
    assert Decimal(gcp["mtm_monthly"]) < 0


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
