"""The AWS fake (tests/fakes/aws_fake.py, aws_fixtures.py) against botocore's own service
models: the `ec2` (2016-11-15), `pricing` (2017-10-15) and `service-quotas` (2019-06-24)
models shipped in the installed botocore.

Every body the fake serves to the real adapter (one poll with region discovery and two-row
pages, so NextToken is exercised) is parsed with botocore's response parser for its
operation, and walked element by element (XML) or key by key (JSON) against the operation's
output shape: an element or key the shape does not define, a missing required member, a value
that does not parse as the member's type, or a value outside a member's enum fails. The
fixtures' records (small market and the moto-snapshot market) are walked too, in their boto3
form: `ec2_xml` drops members the model does not know, so a fixture could carry a field AWS
never sends without any body showing it.

What is not covered: the Price List product documents inside `PriceList` (botocore types them
as opaque JSON strings; AWS publishes no schema for them).
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qs

import boto3
import botocore.session
import pytest
from botocore.model import StructureShape
from botocore.parsers import create_parser

from broker.config import AwsSettings
from providers.aws import Aws, tune_session
from tests.contracts.contract import (
    ec2_xml_problems,
    json_problems,
    output_shape,
    service_model,
    value_problems,
)
from tests.fakes.aws_fake import AwsFake, ec2_error, json_error
from tests.fakes.aws_fixtures import T0, UNKNOWN_GPU_TYPE, moto_market, small_market
from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

#: Every operation the fake answers, by its service (botocore's service names).
OPERATIONS = {
    "DescribeRegions": "ec2",
    "DescribeInstanceTypes": "ec2",
    "DescribeInstanceTypeOfferings": "ec2",
    "DescribeSpotPriceHistory": "ec2",
    "DescribeCapacityBlockOfferings": "ec2",
    "GetProducts": "pricing",
    "ListServiceQuotas": "service-quotas",
    "GetAWSDefaultServiceQuota": "service-quotas",
}

#: Values outside a member's enum that the fixtures send on purpose: aws_fixtures.py's
#: FICTIONAL instance type (the adapter's unknown-device path), which no model can list.
ENUM_EXEMPT = {("InstanceType", UNKNOWN_GPU_TYPE)}


@dataclass
class Served:
    service: str
    operation: str
    status: int
    body: bytes


class Clock:
    def __call__(self) -> datetime:
        return T0


@pytest.fixture(scope="module")
def served() -> Iterator[list[Served]]:
    """Everything the fake answered during one real poll of the small market."""
    log: list[Served] = []
    with FakeHttpServer() as server:
        fake = small_market(AwsFake(server, page_size=2))
        answer = server.routes[("POST", "/")]
        assert callable(answer)

        def recording(req: FakeRequest, answer: Callable[..., FakeResponse] = answer) -> Any:
            resp = answer(req)
            target = req.headers.get("x-amz-target")
            operation = target.rsplit(".", 1)[-1] if target else _form_action(req.body)
            log.append(Served(OPERATIONS[operation], operation, resp.status, resp.payload()))
            return resp

        server.route("POST", "/", recording)
        core = botocore.session.get_session()
        tune_session(core)
        session = boto3.session.Session(
            aws_access_key_id="AKIAQ3EGRQ4EXAMPLE77",
            aws_secret_access_key="wJalrXUtnFEMI/K7MDENG/bPxRfiCYzEXAMPLEKEY",
            region_name="us-east-1",
            botocore_session=core,
        )
        settings = AwsSettings(timeout_s=3.0, max_attempts=1)  # regions unset: discovered
        result = Aws(settings, session, clock=Clock(), endpoint_url=fake.url).fetch()
        assert result.scope_errors == [], result.scope_errors
        yield log


def _form_action(body: bytes) -> str:
    return parse_qs(body.decode())["Action"][0]


def _parse(service: str, operation: str, body: bytes, status: int = 200) -> dict[str, Any]:
    model = service_model(service)
    parser = create_parser(model.protocol)
    shape = output_shape(service, operation)
    headers = {"content-type": "text/xml" if model.protocol == "ec2" else "application/json"}
    parsed = parser.parse({"body": body, "headers": headers, "status_code": status}, shape)
    return dict(parsed)


def _problems(served: Served) -> list[str]:
    """`served` walked against its operation's output shape, raw and as botocore parses it."""
    shape = output_shape(served.service, served.operation)
    if served.service == "ec2":
        problems = ec2_xml_problems(served.operation, served.body, enum_exempt=ENUM_EXEMPT)
    else:
        problems = json_problems(
            shape, json.loads(served.body), served.operation, enum_exempt=ENUM_EXEMPT
        )
    parsed = _parse(served.service, served.operation, served.body)
    parsed.pop("ResponseMetadata", None)
    problems += value_problems(shape, parsed, f"parsed {served.operation}", enum_exempt=ENUM_EXEMPT)
    return problems


# ------------------------------------------------------------------------ what was served


def test_the_poll_reached_every_operation_of_the_fake(served: list[Served]) -> None:
    assert {s.operation for s in served} == set(OPERATIONS)
    # The only errors of a clean poll: default quotas the fake has none of (checked below).
    errors = {(s.operation, s.status) for s in served if s.status != 200}
    assert errors <= {("GetAWSDefaultServiceQuota", 400)}
    # Two-row pages: some list answers carried a NextToken, so paging bodies were checked.
    assert any(b"<nextToken>" in s.body for s in served if s.service == "ec2")


def test_ec2_bodies_are_botocores_output_shapes(served: list[Served]) -> None:
    bodies = [s for s in served if s.service == "ec2" and s.status == 200]
    assert bodies
    problems = [p for s in bodies for p in _problems(s)]
    assert problems == [], "\n".join(problems)


def test_json_bodies_are_botocores_output_shapes(served: list[Served]) -> None:
    bodies = [s for s in served if s.service != "ec2" and s.status == 200]
    assert bodies
    problems = [p for s in bodies for p in _problems(s)]
    assert problems == [], "\n".join(problems)


def test_parsed_answers_keep_every_served_record(served: list[Served]) -> None:
    """botocore reads back every list entry the fake wrote (nothing lost to a wrong tag)."""
    for s in served:
        if s.service != "ec2" or s.status != 200:
            continue
        parsed = _parse(s.service, s.operation, s.body)
        root = ET.fromstring(s.body)
        for key, member in output_shape("ec2", s.operation).members.items():
            node = root.find(f"{{*}}{member.serialization.get('name', key)}")
            if node is not None and member.type_name == "list":
                assert len(parsed[key]) == len(node), (s.operation, key)


# ------------------------------------------------------------------------ the fixtures


def _fixture_problems(fake: AwsFake) -> list[str]:
    ec2 = service_model("ec2")
    quotas = service_model("service-quotas")
    records: list[tuple[StructureShape, str, list[dict[str, Any]]]] = [
        (_struct(ec2, "Region"), "regions", fake.regions),
    ]
    for region in sorted(fake.instance_types):
        records.append(
            (_struct(ec2, "InstanceTypeInfo"), f"{region} types", fake.instance_types[region])
        )
    for region in sorted(fake.offerings):
        rows = [{"LocationType": "availability-zone", **o} for o in fake.offerings[region]]
        records.append((_struct(ec2, "InstanceTypeOffering"), f"{region} offerings", rows))
    for region in sorted(fake.spot):
        records.append((_struct(ec2, "SpotPrice"), f"{region} spot", fake.spot[region]))
    for region in sorted(fake.capacity_blocks):
        records.append(
            (
                _struct(ec2, "CapacityBlockOffering"),
                f"{region} capacity blocks",
                fake.capacity_blocks[region],
            )
        )
    for region in sorted(fake.quotas):
        records.append((_struct(quotas, "ServiceQuota"), f"{region} quotas", fake.quotas[region]))
    for region in sorted(fake.default_quotas):
        records.append(
            (_struct(quotas, "ServiceQuota"), f"{region} defaults", fake.default_quotas[region])
        )
    return [
        p
        for shape, where, rows in records
        for i, row in enumerate(rows)
        for p in value_problems(shape, row, f"{where}[{i}]", enum_exempt=ENUM_EXEMPT)
    ]


def _struct(model: Any, name: str) -> StructureShape:
    shape = model.shape_for(name)
    assert isinstance(shape, StructureShape)
    return shape


def test_small_market_records_are_botocore_shapes() -> None:
    fake = small_market(AwsFake(FakeHttpServer()))
    problems = _fixture_problems(fake)
    assert problems == [], "\n".join(problems)


def test_moto_snapshot_market_records_are_botocore_shapes() -> None:
    """The benchmark market: moto's snapshot of the real API (every accelerated type)."""
    fake = moto_market(AwsFake(FakeHttpServer()))
    problems = _fixture_problems(fake)
    assert problems == [], "\n".join(problems[:50])


# ------------------------------------------------------------------------ errors


def test_ec2_error_envelope() -> None:
    """`<Response><Errors><Error><Code><Message>` + `<RequestID>`, as botocore's EC2 parser
    reads it (its own comment documents that structure)."""
    resp = ec2_error(400, "InvalidParameterValue", "bad & <value>")
    parsed = _parse("ec2", "DescribeInstanceTypes", resp.payload(), resp.status)
    assert parsed["Error"] == {"Code": "InvalidParameterValue", "Message": "bad & <value>"}
    assert parsed["ResponseMetadata"]["RequestId"] == "fake-request-id"
    root = ET.fromstring(resp.payload())
    assert [c.tag for c in root] == ["Errors", "RequestID"]
    assert [[e.tag for e in err] for err in root.find("Errors") or []] == [["Code", "Message"]]


def _json_error_problems(service: str, operation: str, status: int, body: bytes) -> list[str]:
    """A JSON 1.1 error: `__type` names one of the operation's modelled errors; every other
    key is a member of that error shape (`message` being botocore's documented alternative
    spelling of `Message`), and botocore reads code and message back."""
    doc = json.loads(body)
    code = doc.get("__type")
    errors = {e.name: e for e in service_model(service).operation_model(operation).error_shapes}
    if code not in errors:
        return [f"{operation}: __type {code!r} is not one of {sorted(errors)}"]
    error = errors[code]
    assert isinstance(error, StructureShape)
    members = {k.lower() for k in error.members}
    problems = [
        f"{operation}: {k!r} is not a member of {code}"
        for k in doc
        if k != "__type" and k.lower() not in members
    ]
    parsed = _parse(service, operation, body, status)
    if parsed["Error"] != {"Code": code, "Message": doc.get("message", doc.get("Message", ""))}:
        problems.append(f"{operation}: botocore read {parsed['Error']}")
    return problems


def test_served_json_errors_are_modelled_errors(served: list[Served]) -> None:
    errors = [s for s in served if s.status != 200]
    assert errors  # the adapter asks for defaults the small market does not have
    problems = [
        p for s in errors for p in _json_error_problems(s.service, s.operation, s.status, s.body)
    ]
    assert problems == [], "\n".join(problems)


@pytest.mark.parametrize(
    ("service", "operation", "code"),
    [
        ("service-quotas", "ListServiceQuotas", "NoSuchResourceException"),
        ("service-quotas", "GetAWSDefaultServiceQuota", "NoSuchResourceException"),
        ("service-quotas", "ListServiceQuotas", "TooManyRequestsException"),
    ],
)
def test_json_error_envelope(service: str, operation: str, code: str) -> None:
    resp = json_error(400, code, "The request failed")
    assert _json_error_problems(service, operation, resp.status, resp.payload()) == []


# ------------------------------------------------------------------------ the checks bite


def test_an_invented_element_or_a_bad_value_is_caught(served: list[Served]) -> None:
    body = next(s.body for s in served if s.operation == "DescribeInstanceTypes")
    invented = body.replace(b"<vCpuInfo>", b"<vCpuInfo><turboCores>4</turboCores>", 1)
    assert ec2_xml_problems("DescribeInstanceTypes", invented) == [
        "DescribeInstanceTypes/instanceTypeSet[0]/vCpuInfo: <turboCores> is not a member "
        "of VCpuInfo"
    ]
    bad = body.replace(b"<defaultVCpus>", b"<defaultVCpus>many", 1)
    assert len(ec2_xml_problems("DescribeInstanceTypes", bad)) == 1
    quotas = output_shape("service-quotas", "ListServiceQuotas")
    doc = json.loads(next(s.body for s in served if s.operation == "ListServiceQuotas"))
    doc["Quotas"][0]["Burstable"] = True
    assert json_problems(quotas, doc, "q") == [
        "q/Quotas[0]: 'Burstable' is not a member of ServiceQuota"
    ]
    record = {"InstanceType": "p5.48xlarge", "GpuInfo": {"Gpus": [{"Name": "H100", "Cores": 1}]}}
    info = service_model("ec2").shape_for("InstanceTypeInfo")
    assert value_problems(info, record, "r") == [
        "r/GpuInfo/Gpus[0]: 'Cores' is not a member of GpuDeviceInfo"
    ]
    stamp = {"AvailabilityZone": "us-east-1a", "Timestamp": datetime(2026, 5, 1, tzinfo=UTC)}
    assert value_problems(service_model("ec2").shape_for("SpotPrice"), stamp, "s") == []
