"""`GET /v1/offers?sort=time_to_power`: every matching offer once, soonest first."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from broker.polling import ReplaySummary
from tests.api.conftest import Keys, TestClient, bearer


def walk(client: TestClient, key: str, params: dict[str, Any]) -> list[dict[str, Any]]:
    rows: list[dict[str, Any]] = []
    cursor = None
    while True:
        page = client.get(
            "/v1/offers",
            params=params | ({"cursor": cursor} if cursor else {}),
            headers=bearer(key),
        )
        assert page.status_code == 200, page.text
        body = page.json()
        rows += body["data"]
        cursor = body["next_cursor"]
        if cursor is None:
            return rows


def test_sort_by_time_to_power_walks_every_offer_once_soonest_first(
    client: TestClient, keys: Keys, market: ReplaySummary
) -> None:
    by_price = walk(client, keys.viewer, {"gpu": "H100", "limit": 500})
    by_time = walk(client, keys.viewer, {"gpu": "H100", "limit": 7, "sort": "time_to_power"})
    assert sorted(r["key"] for r in by_time) == sorted(r["key"] for r in by_price)
    assert len({r["key"] for r in by_time}) == len(by_time) > 7
    order = [
        (
            r["time_to_power_hours"] if r["time_to_power_hours"] is not None else float("inf"),
            Decimal(str(r["price_per_gpu_hour"])),
            r["key"],
        )
        for r in by_time
    ]
    assert order == sorted(order)
    assert all(
        r["time_to_power_hours"] is not None for r in by_time if r["availability"] != "unavailable"
    )
    bad = client.get(
        "/v1/offers",
        params={"sort": "time_to_power", "cursor": "bogus"},
        headers=bearer(keys.viewer),
    )
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_cursor"
    wrong = client.get("/v1/offers", params={"sort": "speed"}, headers=bearer(keys.viewer))
    assert wrong.status_code == 422 and wrong.json()["error"]["details"][0]["field"] == "sort"
