"""The RunPod fake (tests/fakes/runpod_api.py) against RunPod's GraphQL API Spec, version 1.1.0
(https://graphql-spec.runpod.io; schemas/runpod_graphql_gputype_1.1.0.json): every `GpuType`
field the fake answers is a field of the spec's `GpuType`, and the value the fake serves for it
has the JSON type of the spec's example (Int, Float, Boolean, String; null allowed, as GraphQL
fields without `!`).

Only `GpuType` could be read from the spec page; the fake's `LowestPrice`, `DataCenter`,
`GpuLowestPriceInput` fields and the root `countryCodes` are not checked here (the fake's
README names their third-party sources: gpuhunt, SkyPilot, runpod-python).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import pytest

from tests.contracts.contract import load_schema
from tests.fakes.http import FakeHttpServer, FakeRequest
from tests.fakes.runpod_api import DATA_CENTERS, GPU_FIELDS, PATH, RunpodFake, gpu_catalogue

SPEC = load_schema("runpod_graphql_gputype_1.1.0.json")
#: The spec's GpuType fields and the JSON type of each in its example response.
GPU_TYPE: dict[str, Any] = SPEC["response"]["data"]["gpuTypes"][0]


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "Boolean"
    if isinstance(value, int):
        return "Int"
    if isinstance(value, float):
        return "Float"
    if isinstance(value, str):
        return "String"
    if isinstance(value, list):
        return "List"
    return type(value).__name__


def gpu_type_problems(row: dict[str, Any], where: str) -> list[str]:
    problems: list[str] = []
    for name, value in row.items():
        if name not in GPU_TYPE:
            problems.append(f"{where}: {name!r} is not a field of GpuType")
            continue
        if value is None or name == "lowestPrice":
            continue
        want, got = _kind(GPU_TYPE[name]), _kind(value)
        if got != want and not (want == "Float" and got == "Int"):  # GraphQL Float accepts ints
            problems.append(f"{where}/{name}: {value!r} is a {got}, the spec's is a {want}")
    return problems


@pytest.fixture(scope="module")
def fake() -> Iterator[RunpodFake]:
    with FakeHttpServer() as server:
        yield RunpodFake(server, gpu_catalogue(), list(DATA_CENTERS))


def _ask(fake: RunpodFake, query: str) -> Any:
    req = FakeRequest(
        "POST",
        PATH,
        {},
        {"authorization": f"Bearer {fake.api_key}"},
        json.dumps({"query": query}).encode(),
    )
    resp = fake.answer(req)
    assert resp.status == 200, resp.payload()[:300]
    return json.loads(resp.payload())


def test_every_gpu_type_field_the_fake_answers_is_in_the_spec(fake: RunpodFake) -> None:
    fields = " ".join(sorted(GPU_FIELDS))
    rows = _ask(fake, f"query {{ gpuTypes {{ {fields} }} }}")["data"]["gpuTypes"]
    assert len(rows) == len(gpu_catalogue())
    problems = [p for row in rows for p in gpu_type_problems(row, str(row["id"]))]
    assert problems == [], "\n".join(problems)
    assert "lowestPrice" in GPU_TYPE  # the field the fake resolves separately


# ------------------------------------------------------------------------ the checks bite


def test_an_invented_field_or_a_wrong_type_is_caught() -> None:
    row = {"id": "NVIDIA H100 80GB HBM3", "memoryInGb": "80", "stockLevel": "High"}
    assert gpu_type_problems(row, "h100") == [
        "h100/memoryInGb: '80' is a String, the spec's is a Int",
        "h100: 'stockLevel' is not a field of GpuType",
    ]
