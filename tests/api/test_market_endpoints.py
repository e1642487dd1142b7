"""`/v1/offers`, `/v1/offers/{key}`, `/v1/offers/{key}/history` and `/v1/events` on the
bundled sample market, checked against independent queries of the store."""

from __future__ import annotations

from collections import Counter
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import Engine, text
from sqlmodel import Session

from broker.offers import OfferQuery, list_offers
from broker.polling import ReplaySummary
from tests.api.conftest import Clock, Keys, TestClient, bearer

STALE_AFTER = timedelta(minutes=120)


def walk(client: TestClient, key: str, path: str, **params: Any) -> tuple[list[Any], int]:
    """Every item of a paginated list, following next_cursor; and the number of pages."""
    items: list[Any] = []
    cursor = None
    pages = 0
    while True:
        query = dict(params, **({"cursor": cursor} if cursor else {}))
        resp = client.get(path, headers=bearer(key), params=query)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        pages += 1
        assert len(body["data"]) <= int(params.get("limit", 50))
        items += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return items, pages
        assert body["data"], "a page with a next_cursor is never empty"


def sql_count(engine: Engine, where: str, **params: Any) -> int:
    with engine.connect() as conn:
        return int(
            conn.execute(text(f"SELECT count(*) FROM offers WHERE {where}"), params).scalar_one()
        )


def test_pagination_walks_every_offer_exactly_once(
    client: TestClient, keys: Keys, market: ReplaySummary, engine: Engine, clock: Clock
) -> None:
    rows, pages = walk(client, keys.viewer, "/v1/offers", limit=500)
    assert pages == -(-market.offers // 500)
    keys_seen = [r["key"] for r in rows]
    assert len(keys_seen) == len(set(keys_seen)) == market.offers
    assert len(rows) == sql_count(engine, "active")
    with Session(engine) as session:
        want = list_offers(session, OfferQuery(), now=clock(), stale_after=STALE_AFTER)
    assert keys_seen == [r["key"] for r in want]
    prices = [Decimal(str(r["price_per_gpu_hour"])) for r in rows]
    assert prices == sorted(prices)


def test_small_pages_break_price_ties_by_key(
    client: TestClient, keys: Keys, market: ReplaySummary, engine: Engine, clock: Clock
) -> None:
    # H100 offers share prices across zones and sizes: ties cross page boundaries.
    rows, pages = walk(client, keys.viewer, "/v1/offers", gpu="H100", limit=7)
    with Session(engine) as session:
        models = frozenset({"H100", "H100-SXM", "H100-PCIe", "H100-NVL"})
        want = list_offers(
            session, OfferQuery(gpu_models=models), now=clock(), stale_after=STALE_AFTER
        )
    prices = Counter(r["price_per_gpu_hour"] for r in want)
    assert max(prices.values()) > 7, "the sample has ties longer than a page"
    assert [r["key"] for r in rows] == [r["key"] for r in want]
    assert pages == -(-len(want) // 7)


def test_filters_match_independent_counts(
    client: TestClient, keys: Keys, market: ReplaySummary, engine: Engine
) -> None:
    eu, _ = walk(client, keys.viewer, "/v1/offers", jurisdiction="EU", limit=500)
    assert eu and {r["jurisdiction"] for r in eu} == {"EU"}
    assert len(eu) == sql_count(engine, "active AND jurisdiction = 'EU'")

    spot, _ = walk(
        client,
        keys.viewer,
        "/v1/offers",
        gpu=["H100", "a100"],
        market="spot",
        max_price_per_gpu_hour="2.5",
        limit=500,
    )
    assert spot
    for r in spot:
        assert r["gpu_model"].startswith(("H100", "A100")) and r["market"] == "spot"
        assert Decimal(str(r["price_per_gpu_hour"])) <= Decimal("2.5")
    assert len(spot) == sql_count(
        engine,
        "active AND market = 'spot' AND price_per_gpu_hour <= 2.5 AND gpu_model IN "
        "('H100', 'H100-SXM', 'H100-PCIe', 'H100-NVL', 'A100', 'A100-80GB')",
    )

    many, _ = walk(client, keys.viewer, "/v1/offers", provider="azure,gcp", min_gpus=8, limit=500)
    assert many and {r["provider"] for r in many} <= {"azure", "gcp"}
    assert len(many) == sql_count(
        engine, "active AND provider IN ('azure', 'gcp') AND gpu_count >= 8"
    )

    region = many[0]["region"]
    country = many[0]["country"]
    by_region, _ = walk(client, keys.viewer, "/v1/offers", region=region, country=country.lower())
    assert by_region and {(r["region"], r["country"]) for r in by_region} == {(region, country)}
    assert len(by_region) == sql_count(
        engine, "active AND region = :r AND country = :c", r=region, c=country
    )
    fields = set(by_region[0])
    assert {"key", "price_per_gpu_hour", "availability", "last_seen", "stale"} <= fields


def test_stale_offers_are_hidden_unless_asked(
    client: TestClient, keys: Keys, market: ReplaySummary, clock: Clock
) -> None:
    clock.advance(minutes=121)
    resp = client.get("/v1/offers", headers=bearer(keys.viewer))
    assert resp.json() == {"data": [], "next_cursor": None}
    rows, _ = walk(client, keys.viewer, "/v1/offers", include_stale="true", limit=500)
    assert len(rows) == market.offers and all(r["stale"] for r in rows)


def test_one_offer_and_its_history(
    client: TestClient, keys: Keys, market: ReplaySummary, engine: Engine
) -> None:
    with engine.connect() as conn:
        key = conn.execute(
            text(
                "SELECT offer_key FROM market_events WHERE type = 'price_changed' "
                "GROUP BY offer_key HAVING count(*) >= 2 ORDER BY offer_key LIMIT 1"
            )
        ).scalar_one()
        n_obs = conn.execute(
            text(
                "SELECT count(*) FROM observations o JOIN offers f ON f.id = o.offer_id "
                "WHERE f.key = :k"
            ),
            {"k": key},
        ).scalar_one()
    offer = client.get(f"/v1/offers/{key}", headers=bearer(keys.viewer))
    assert offer.status_code == 200, offer.text
    detail = offer.json()
    assert detail["key"] == key and detail["active"] is True and isinstance(detail["raw"], dict)

    points, pages = walk(client, keys.viewer, f"/v1/offers/{key}/history", limit=1)
    assert len(points) == n_obs == pages >= 3
    times = [p["at"] for p in points]
    assert times == sorted(times) and len(set(times)) == len(times)
    prices = [Decimal(str(p["price_per_hour"])) for p in points]
    assert len(set(prices)) >= 2, "a price_changed offer's history shows the change"
    assert points[-1]["price_per_hour"] == detail["price_per_hour"]
    gpus = Decimal(str(detail["gpu_count"]))
    for p in points:
        want = (Decimal(str(p["price_per_hour"])) / gpus).quantize(Decimal("0.000001"))
        assert Decimal(str(p["price_per_gpu_hour"])) == want

    # A withdrawn offer is still readable, with its history.
    with engine.connect() as conn:
        gone = conn.execute(text("SELECT key FROM offers WHERE NOT active LIMIT 1")).scalar_one()
    withdrawn = client.get(f"/v1/offers/{gone}", headers=bearer(keys.viewer)).json()
    assert withdrawn["active"] is False and withdrawn["withdrawn_at"]
    assert client.get(f"/v1/offers/{gone}/history", headers=bearer(keys.viewer)).json()["data"]


def test_events_feed_continues_without_gaps(
    client: TestClient, keys: Keys, market: ReplaySummary, engine: Engine
) -> None:
    with engine.connect() as conn:
        all_ids = [r[0] for r in conn.execute(text("SELECT id FROM market_events ORDER BY id"))]
        price_ids = [
            r[0]
            for r in conn.execute(
                text("SELECT id FROM market_events WHERE type = 'price_changed' ORDER BY id")
            )
        ]
    assert len(all_ids) == sum(market.events.values()) > 1000

    # A follower: keep last_id, ask after it, until a page comes back empty.
    seen: list[int] = []
    after = 0
    while True:
        body = client.get(
            "/v1/events", headers=bearer(keys.viewer), params={"after": after, "limit": 500}
        ).json()
        seen += [e["id"] for e in body["data"]]
        assert body["last_id"] == (body["data"][-1]["id"] if body["data"] else after)
        if not body["data"]:
            break
        after = body["last_id"]
    assert seen == all_ids

    # The same through next_cursor, filtered by type.
    events, _ = walk(client, keys.viewer, "/v1/events", types="price_changed", limit=97)
    assert [e["id"] for e in events] == price_ids
    assert all(e["before"] and e["after"] and e["offer_key"] for e in events)

    # New events after a poll continue the feed exactly where the follower stopped.
    summary = client.post("/v1/providers/replay/poll", headers=bearer(keys.admin)).json()
    assert summary["first_event_id"] == all_ids[-1] + 1
    more = client.get(
        "/v1/events", headers=bearer(keys.viewer), params={"after": after, "limit": 500}
    ).json()
    new_ids = [e["id"] for e in more["data"]]
    while more["next_cursor"]:
        more = client.get(
            "/v1/events",
            headers=bearer(keys.viewer),
            params={"cursor": more["next_cursor"], "limit": 500},
        ).json()
        new_ids += [e["id"] for e in more["data"]]
    assert new_ids == list(range(summary["first_event_id"], summary["last_event_id"] + 1))
    assert len(new_ids) == sum(summary["events"].values())


def test_events_refuse_unknown_types_and_mixed_positions(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    h = bearer(keys.viewer)
    resp = client.get("/v1/events?types=price_changed,price_dropped", headers=h)
    assert resp.status_code == 422
    err = resp.json()["error"]
    assert "price_dropped" in err["message"] and "offer_appeared" in err["message"]
    assert "provider_recovered" in err["details"][0]["valid"]
    cursor = client.get("/v1/events?limit=1", headers=h).json()["next_cursor"]
    assert client.get(f"/v1/events?after=1&cursor={cursor}", headers=h).status_code == 422
    # A cursor of one list is refused by another.
    resp = client.get(f"/v1/offers?cursor={cursor}", headers=h)
    assert resp.status_code == 400 and resp.json()["error"]["code"] == "invalid_cursor"
