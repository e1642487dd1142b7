"""The Azure fake (tests/fakes/azure_fake.py) against Azure/azure-rest-api-specs and the
Retail Prices API's documented fields, closed-world (no field a schema does not define, every
field it requires):

- `GET .../Microsoft.Compute/skus` pages: `ResourceSkusResult` of Skus/stable/2021-07-01/
  skus.json (the api-version azure-mgmt-compute 39.0.0 sends), errors `ErrorResponse` of
  common-types/resource-management/v3 (schemas/azure_compute_skus_2021-07-01.json);
- `GET .../locations/{location}/usages`: `ListUsagesResult` of Compute/stable/2026-04-01/
  ComputeRP.json (the SDK's api-version for usage.list), errors `CloudError` of
  Microsoft.Compute/common-types/v1 (schemas/azure_compute_usages_2026-04-01.json);
- `GET /api/retail/prices` pages: the envelope and item fields Microsoft documents
  (schemas/azure_retail_prices_documented.json; Microsoft publishes no formal schema).

Every page of the sample catalogue and of a small `large_catalogue` (which adds disks, shared
price rows and every reservation/spot/Windows variant) is fetched from the fake's own routes,
following `nextLink` / `NextPageLink` as a client does.

One known wire deviation is applied to the published schema, and only that one:
`ResourceSkuZoneDetails.name` is sent as `Name` by the real service (Azure/azure-sdk-for-go
issues #23342, #25068, #25597; Azure/azure-rest-api-specs PR #44118 changes the spec's wire
name to `Name`; azure-mgmt-compute 39.0.0's model already reads `rest_field(name="Name")`).
"""

from __future__ import annotations

import copy
import json
from collections.abc import Iterator
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from tests.contracts.contract import load_schema, schema_problems
from tests.fakes.azure_fake import (
    AzureCatalogue,
    AzureFake,
    arm_error,
    large_catalogue,
    price,
    sample_catalogue,
    usage,
    vm_sku,
)
from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

SKUS_SPEC = load_schema("azure_compute_skus_2021-07-01.json")
USAGES_SPEC = load_schema("azure_compute_usages_2026-04-01.json")
RETAIL = load_schema("azure_retail_prices_documented.json")
SKUS_API_VERSION = SKUS_SPEC["x-source"]["api-version"]


def on_the_wire(spec: dict[str, Any]) -> dict[str, Any]:
    """The published skus schema with the one documented wire deviation: zone details'
    `name` is `Name` on the wire (see the module docstring)."""
    out = copy.deepcopy(spec)
    props = out["definitions"]["ResourceSkuZoneDetails"]["properties"]
    props["Name"] = props.pop("name")
    return out


SKUS_WIRE = on_the_wire(SKUS_SPEC)


def _get(fake: AzureFake, url: str) -> FakeResponse:
    parts = urlsplit(url)
    answer = fake.server.routes[("GET", parts.path)]
    assert callable(answer)
    req = FakeRequest("GET", parts.path, parse_qs(parts.query), {}, b"")
    return answer(req)


def _pages(fake: AzureFake, url: str, link: str) -> list[Any]:
    """Every page of a list, following its next-page link; each must be a 200."""
    pages: list[Any] = []
    next_url: str | None = url
    while next_url:
        resp = _get(fake, next_url)
        assert resp.status == 200, (next_url, resp.status, resp.payload()[:200])
        page = json.loads(resp.payload())
        pages.append(page)
        next_url = page.get(link)
        assert len(pages) < 10_000
    return pages


def _catalogues() -> Iterator[tuple[str, AzureCatalogue]]:
    yield "sample", sample_catalogue()
    yield (
        "large",
        large_catalogue(
            ["eastus", "westeurope", "uksouth", "brazilsouth"],
            filler_sizes=12,
            no_gpu_every=4,
            price_rows_per_location=300,
        ),
    )


@pytest.fixture(scope="module", params=["sample", "large"])
def fake(request: pytest.FixtureRequest) -> Iterator[AzureFake]:
    catalogue = dict(_catalogues())[request.param]
    with FakeHttpServer() as server:
        yield AzureFake(server, catalogue)


def _problems(doc: dict[str, Any], status: str, pages: list[Any]) -> list[str]:
    target = doc["x-responses"][status]
    return [
        f"page {i}: {p}" for i, page in enumerate(pages) for p in schema_problems(doc, target, page)
    ]


# ------------------------------------------------------------------------ ARM


def test_resource_sku_pages_are_resource_skus_result(fake: AzureFake) -> None:
    pages = _pages(fake, f"{fake.url}{fake.skus_path}?api-version={SKUS_API_VERSION}", "nextLink")
    assert sum(len(p["value"]) for p in pages) == len(fake.catalogue.skus)
    assert len(pages) > 1  # nextLink pages were checked too
    problems = _problems(SKUS_WIRE, "200", pages)
    assert problems == [], "\n".join(problems)


def test_usage_lists_are_list_usages_result(fake: AzureFake) -> None:
    locations = sorted(fake.catalogue.usages)
    assert locations
    problems = [
        f"{loc} {p}"
        for loc in locations
        for p in _problems(
            USAGES_SPEC, "200", _pages(fake, f"{fake.url}{fake.usages_path(loc)}", "nextLink")
        )
    ]
    assert problems == [], "\n".join(problems)


def test_the_fakes_arm_errors_are_both_error_schemas(fake: AzureFake) -> None:
    """`arm_error` bodies (the fake's own 400 for a missing api-version, and every fault the
    tests queue through it) fit `ErrorResponse` (skus) and `CloudError` (usages)."""
    served = _get(fake, f"{fake.url}{fake.skus_path}")
    assert served.status == 400
    bodies = [
        json.loads(served.payload()),
        json.loads(arm_error(429, "TooManyRequests", "slow down").payload()),
        json.loads(arm_error(403, "AuthorizationFailed", "no").payload()),
    ]
    for body in bodies:
        assert schema_problems(SKUS_SPEC, SKUS_SPEC["x-responses"]["default"], body) == []
        assert schema_problems(USAGES_SPEC, USAGES_SPEC["x-responses"]["default"], body) == []


def test_zone_details_follow_the_wire_not_the_published_spec() -> None:
    """The fake sends `Name`, as ARM does; the published 2021-07-01 schema says `name`."""
    sku = vm_sku(
        "Standard_D4s_v5",
        "eastus",
        family="standardDSv5Family",
        vcpus=4,
        memory_gb="16",
        zones=["1"],
    )
    page = {"value": [sku]}
    assert schema_problems(SKUS_SPEC, SKUS_SPEC["x-responses"]["200"], page) == [
        "value/0/locationInfo/0/zoneDetails/0: Additional properties are not allowed "
        "('Name' was unexpected)"
    ]
    assert schema_problems(SKUS_WIRE, SKUS_WIRE["x-responses"]["200"], page) == []


# ------------------------------------------------------------------------ Retail Prices


def test_retail_price_pages_are_the_documented_shape(fake: AzureFake) -> None:
    priced = sorted(fake.catalogue.prices)
    assert priced
    problems: list[str] = []
    for loc in priced:
        odata = f"serviceName eq 'Virtual Machines' and armRegionName eq '{loc}'"
        pages = _pages(fake, f"{fake.prices_url}?$filter={odata}", "NextPageLink")
        assert sum(len(p["Items"]) for p in pages) >= len(fake.catalogue.prices[loc])
        problems += [f"{loc} {p}" for p in _problems(RETAIL, "200", pages)]
    assert problems == [], "\n".join(problems)


# ------------------------------------------------------------------------ the checks bite


def test_an_invented_field_or_a_missing_one_is_caught() -> None:
    sku = vm_sku("Standard_NC6", "eastus", family="standardNCFamily", vcpus=6, memory_gb="56")
    sku["gpuCount"] = 1
    sku["capabilities"][0]["unit"] = "MB"
    assert schema_problems(SKUS_WIRE, SKUS_WIRE["x-responses"]["200"], {"value": [sku]}) == [
        "value/0/capabilities/0: Additional properties are not allowed ('unit' was unexpected)",
        "value/0: Additional properties are not allowed ('gpuCount' was unexpected)",
    ]
    assert schema_problems(SKUS_WIRE, SKUS_WIRE["x-responses"]["200"], {"nextLink": "x"}) == [
        "<root>: 'value' is a required property"
    ]
    row = usage("cores", 1, 10, "Total Regional vCPUs")
    del row["unit"]
    row["name"]["id"] = "cores"
    assert schema_problems(USAGES_SPEC, USAGES_SPEC["x-responses"]["200"], {"value": [row]}) == [
        "value/0/name: Additional properties are not allowed ('id' was unexpected)",
        "value/0: 'unit' is a required property",
    ]
    item = price("Standard_NC6", "eastus", 0.9)
    item["spotPrice"] = 0.2
    del item["retailPrice"]
    page = {
        "BillingCurrency": "USD",
        "CustomerEntityId": "Default",
        "CustomerEntityType": "Retail",
        "Items": [item],
        "NextPageLink": None,
        "Count": 1,
    }
    assert schema_problems(RETAIL, RETAIL["x-responses"]["200"], page) == [
        "Items/0: 'retailPrice' is a required property",
        "Items/0: Additional properties are not allowed ('spotPrice' was unexpected)",
    ]
