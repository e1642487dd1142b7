"""Filters that name nothing are refused with a hint, never answered with an empty list."""

from __future__ import annotations

import pytest

from broker.polling import ReplaySummary
from tests.api.conftest import Keys, TestClient, bearer


@pytest.mark.parametrize(
    ("params", "field", "words"),
    [
        ({"provider": "lambda"}, "provider", "Did you mean lambda_cloud"),
        ({"region": "eu-west-9"}, "region", "unknown region 'eu-west-9'"),
        ({"jurisdiction": "XX"}, "jurisdiction", "unknown jurisdiction 'XX'"),
        ({"country": "ZZ"}, "country", "unknown country 'ZZ'"),
        ({"gpus": "H100"}, "gpus", "did you mean gpu?"),
        ({"gpu": "H100", "sort_by": "price"}, "sort_by", "did you mean sort?"),
    ],
)
def test_unknown_names_and_parameters_are_422_with_a_hint(
    client: TestClient,
    keys: Keys,
    market: ReplaySummary,
    params: dict[str, str],
    field: str,
    words: str,
) -> None:
    r = client.get("/v1/offers", params=params, headers=bearer(keys.viewer))
    assert r.status_code == 422, r.text
    err = r.json()["error"]
    assert words in err["message"], err
    assert any(d["field"] == field for d in err["details"]), err


def test_known_names_still_filter(client: TestClient, keys: Keys, market: ReplaySummary) -> None:
    r = client.get(
        "/v1/offers",
        params={"provider": "lambda_cloud", "jurisdiction": "eu", "limit": 5},
        headers=bearer(keys.viewer),
    )
    assert r.status_code == 200, r.text
    assert r.json()["data"] and {o["provider"] for o in r.json()["data"]} == {"lambda_cloud"}
