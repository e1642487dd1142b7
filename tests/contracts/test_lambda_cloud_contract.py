"""The Lambda Cloud fake (tests/fakes/lambda_cloud_api.py) against Lambda's OpenAPI spec 1.8.3,
`GET /api/v1/instance-types` (schemas/lambda_cloud_instance_types_1.8.3.json), closed-world:
no field the spec does not define, every field it requires.

- 200: `{"data": InstanceTypes}` for the fake's whole catalogue (every instance type Lambda
  lists, each with capacity in every region, so all 17 `PublicRegionCode`s are checked).
- 401: the fake's own answer to a wrong key, against `ApiErrorUnauthorized`.
- The other error bodies the tests serve through `error_body` (429, 5xx, 403, a 200 carrying
  an error): the envelope the spec's introduction documents, `{"error": {"code", "message",
  "suggestion"?}}`, and for 401/403 the status's own schema (`ApiErrorUnauthorized`,
  `ApiErrorAccountInactive`). The spec lists no other status for this path.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contracts.contract import load_schema, schema_problems
from tests.fakes.http import FakeHttpServer, FakeRequest
from tests.fakes.lambda_cloud_api import (
    PATH,
    REGIONS,
    LambdaFake,
    LambdaType,
    catalogue,
    error_body,
    instance_types_body,
)

SPEC = load_schema("lambda_cloud_instance_types_1.8.3.json")
KEY = "secret_contract-0123456789abcdef"

#: The error envelope of the spec's introduction ("Error responses"): not a component of the
#: spec, the shape its text gives every error: code and message strings, suggestion optional.
ENVELOPE: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {
                "code": {"type": "string"},
                "message": {"type": "string"},
                "suggestion": {"type": "string"},
            },
        }
    },
}

#: Every `error_body` the integration and soak tests serve for /instance-types.
SERVED_ERRORS = [
    (503, error_body("provider/internal-unavailable", "Upstream provider unavailable", "Retry")),
    (429, error_body("global/too-many-requests")),
    (200, error_body("provider/internal-unavailable", "later")),
    (401, error_body("global/invalid-api-key", "API key was invalid", "new key")),
    (403, error_body("global/account-inactive", "API key was invalid", "new key")),
    (500, error_body("global/unknown")),
    (503, error_body("global/unavailable")),
    (429, error_body("global/rate-limit")),
]


@pytest.fixture(scope="module")
def fake() -> Iterator[LambdaFake]:
    """The fake with the whole catalogue, every type in stock everywhere."""
    types = catalogue()
    for t in types:
        t.regions = list(REGIONS)
    with FakeHttpServer() as server:
        yield LambdaFake(server, types, api_key=KEY)


def _served(fake: LambdaFake, key: str) -> tuple[int, Any]:
    answer = fake.server.routes[("GET", PATH)]
    assert callable(answer)
    req = FakeRequest("GET", PATH, {}, {"authorization": f"Bearer {key}"}, b"")
    resp = answer(req)
    return resp.status, json.loads(resp.payload())


def _response(status: int) -> dict[str, Any]:
    schema: dict[str, Any] = SPEC["x-responses"][str(status)]
    return schema


def test_instance_types_answer_is_the_spec_200(fake: LambdaFake) -> None:
    status, body = _served(fake, KEY)
    assert status == 200
    assert len(body["data"]) == len(catalogue())
    problems = schema_problems(SPEC, _response(200), body)
    assert problems == [], "\n".join(problems)


def test_wrong_key_answer_is_the_spec_401(fake: LambdaFake) -> None:
    status, body = _served(fake, "wrong")
    assert status == 401
    assert schema_problems(SPEC, _response(401), body) == []


@pytest.mark.parametrize(("status", "body"), SERVED_ERRORS, ids=lambda v: str(v))
def test_served_error_bodies_are_the_documented_envelope(status: int, body: Any) -> None:
    assert schema_problems(SPEC, ENVELOPE, body) == []
    if status != 200 and str(status) in SPEC["x-responses"]:
        assert schema_problems(SPEC, _response(status), body) == []


def test_an_error_envelope_with_status_200_is_outside_the_spec() -> None:
    """test_lambda_cloud.py serves one (the adapter maps it by its code, defensively); the
    spec's 200 is `{"data": ...}` only, so no real answer is known to look like this."""
    body = error_body("provider/internal-unavailable", "later")
    assert schema_problems(SPEC, _response(200), body) == [
        "<root>: 'data' is a required property",
        "<root>: Additional properties are not allowed ('error' was unexpected)",
    ]


def test_region_names_are_the_spec_enum() -> None:
    assert sorted(REGIONS) == sorted(SPEC["$defs"]["PublicRegionCode"]["enum"])


# ------------------------------------------------------------------------ the checks bite


def test_a_type_without_gpu_description_breaks_the_spec() -> None:
    """The fake lets a type omit `gpu_description` (tests of the adapter's fallback); the
    spec requires it, and the contract says so."""
    body = instance_types_body([LambdaType("cpu_4x_general", None, 20, 0, 4, 16, 100)])
    assert schema_problems(SPEC, _response(200), body) == [
        "data/cpu_4x_general/instance_type: 'gpu_description' is a required property"
    ]


def test_an_invented_field_or_a_missing_one_is_caught(fake: LambdaFake) -> None:
    _, body = _served(fake, KEY)
    entry = body["data"]["gpu_1x_a10"]
    entry["instance_type"]["specs"]["nvlink"] = True
    del entry["regions_with_capacity_available"][0]["description"]
    entry["regions_with_capacity_available"][1]["name"] = "mars-north-1"
    assert schema_problems(SPEC, _response(200), body) == [
        "data/gpu_1x_a10/instance_type/specs: Additional properties are not allowed "
        "('nvlink' was unexpected)",
        "data/gpu_1x_a10/regions_with_capacity_available/0: 'description' is a required property",
        f"data/gpu_1x_a10/regions_with_capacity_available/1/name: 'mars-north-1' is not one "
        f"of {SPEC['$defs']['PublicRegionCode']['enum']!r}",
    ]
    assert schema_problems(SPEC, ENVELOPE, {"error": {"code": "x", "detail": "y"}}) == [
        "error: 'message' is a required property",
        "error: Additional properties are not allowed ('detail' was unexpected)",
    ]
