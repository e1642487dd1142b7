"""A fake AWS endpoint for the `aws` adapter: EC2, Price List and Service Quotas on one port.

boto3 is pointed at it with `endpoint_url=` (or `AWS_ENDPOINT_URL`), so every client (one EC2
client per region, the Pricing client, the Service Quotas clients) POSTs to the same
`http://127.0.0.1:<port>/`. The fake tells the calls apart the way AWS's own front ends do:

- EC2 speaks the `ec2` query protocol (PROVIDERS.md §1.1): a form-encoded body with
  `Action=...&Version=2016-11-15`, answered with XML. The XML is written from botocore's own
  service model (`ec2_xml`): element names are the model's `locationName`s
  (`instanceTypeSet`, `gpuInfo/gpus/item/name`, ...), every list member is an `<item>`, as
  §1.9 verified against real responses. An error is `<Response><Errors><Error><Code>`.
- Pricing (`X-Amz-Target: AWSPriceListService.GetProducts`) and Service Quotas
  (`X-Amz-Target: ServiceQuotasV20190624.*`) speak JSON 1.1; errors are
  `{"__type": code, "message": ...}` with HTTP 400 (§1.8).

The region of a call is read from its SigV4 `Authorization` header (`Credential=<key>/<date>/
<region>/<service>/aws4_request`), which is what lets one port serve thirty regions. Lists are
paginated by the fake's `page_size` (or the request's MaxResults, whichever is smaller) with an
opaque NextToken, so the adapter's paging is really exercised (moto ignores MaxResults).
Faults are queued per (action, region, page) and served instead of the normal answer; every
call is logged in `calls`.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from fnmatch import fnmatchcase
from functools import cache
from typing import Any
from urllib.parse import parse_qs
from xml.sax.saxutils import escape

import botocore.session
from botocore.model import ServiceModel, Shape

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

EC2_NS = "http://ec2.amazonaws.com/doc/2016-11-15/"
XML = {"Content-Type": "text/xml;charset=UTF-8"}
JSON11 = {"Content-Type": "application/x-amz-json-1.1"}
_CREDENTIAL = re.compile(r"Credential=[^/]+/\d{8}/([^/]+)/([^/]+)/aws4_request")


@cache
def _model(service: str) -> ServiceModel:
    return botocore.session.get_session().get_service_model(service)


def _xml_scalar(shape: Shape, value: Any) -> str:
    if shape.type_name == "boolean":
        return "true" if value else "false"
    if shape.type_name == "timestamp":
        if isinstance(value, datetime):
            value = value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
        return escape(str(value))
    return escape(str(value))


def _xml(shape: Shape, value: Any, tag: str) -> str:
    if shape.type_name == "structure":
        inner = []
        for name, member in shape.members.items():  # type: ignore[attr-defined]
            if name in value and value[name] is not None:
                inner.append(_xml(member, value[name], member.serialization.get("name", name)))
        return f"<{tag}>{''.join(inner)}</{tag}>"
    if shape.type_name == "list":
        member = shape.member  # type: ignore[attr-defined]
        item = member.serialization.get("name", "member")
        return f"<{tag}>{''.join(_xml(member, v, item) for v in value)}</{tag}>"
    return f"<{tag}>{_xml_scalar(shape, value)}</{tag}>"


def ec2_xml(action: str, data: Mapping[str, Any], request_id: str = "fake-request-id") -> bytes:
    """The XML body AWS sends for an EC2 `action` whose boto3 answer would be `data`.

    Written from botocore's output shape of the operation, so a field the model does not
    know is dropped (as botocore would ignore it) instead of being invented.
    """
    out = _model("ec2").operation_model(action).output_shape
    assert out is not None
    parts = [f"<requestId>{request_id}</requestId>"]
    for name, member in out.members.items():
        if name in data and data[name] is not None:
            parts.append(_xml(member, data[name], member.serialization.get("name", name)))
    body = "".join(parts)
    return (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<{action}Response xmlns="{EC2_NS}">'
        f"{body}</{action}Response>"
    ).encode()


def ec2_error(status: int, code: str, message: str) -> FakeResponse:
    """An EC2 error answer (PROVIDERS.md §1.9: `<Response><Errors><Error>...`)."""
    body = (
        f'<?xml version="1.0" encoding="UTF-8"?>\n<Response><Errors><Error><Code>{escape(code)}'
        f"</Code><Message>{escape(message)}</Message></Error></Errors>"
        f"<RequestID>fake-request-id</RequestID></Response>"
    )
    return FakeResponse(status, body=body.encode(), headers=dict(XML))


def json_error(status: int, code: str, message: str) -> FakeResponse:
    """A JSON 1.1 error answer (Pricing, Service Quotas)."""
    return FakeResponse(
        status, body=json.dumps({"__type": code, "message": message}).encode(), headers=JSON11
    )


@dataclass
class Call:
    """One request the fake answered: which API, which region, with what parameters."""

    service: str  # ec2 | pricing | servicequotas
    action: str
    region: str
    params: dict[str, Any]
    page: int


@dataclass
class Fault:
    response: FakeResponse
    action: str | None = None
    region: str | None = None
    page: int | None = None
    times: int = 1


@dataclass
class AwsFake:
    """The state the fake serves, per region, in boto3's dict shapes.

    `instance_types[region]` are `InstanceTypeInfo` dicts (with `IncludeUnsupportedInRegion`
    every region's types are listed, as AWS lists types defined anywhere), `offerings[region]` are
    `{"InstanceType", "Location"}` (LocationType availability-zone), `spot[region]` are
    `SpotPrice` dicts, `capacity_blocks[region]` are `CapacityBlockOffering` dicts,
    `price_items` are decoded Price List products (served as JSON strings, as AWS does), and
    `quotas[region]` are `ServiceQuota` dicts (`default_quotas[region]` for
    GetAWSDefaultServiceQuota).
    """

    server: FakeHttpServer
    regions: list[dict[str, str]] = field(default_factory=list)
    instance_types: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    offerings: dict[str, list[dict[str, str]]] = field(default_factory=dict)
    spot: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    capacity_blocks: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    price_items: list[dict[str, Any]] = field(default_factory=list)
    quotas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    default_quotas: dict[str, list[dict[str, Any]]] = field(default_factory=dict)
    page_size: int = 1000
    latency_s: float = 0.0
    #: Serve a repeated request from a cache of bodies (benchmarks: the data never change,
    #: and the fake shares the client's process, so its own XML writing must not be measured).
    cache_answers: bool = False
    calls: list[Call] = field(default_factory=list)
    faults: list[Fault] = field(default_factory=list)

    def __post_init__(self) -> None:
        _model("ec2")  # load the service model now, not inside the first (timed) answer
        # Thirty regions' clients connect at once; the stdlib server listens with a backlog
        # of 5, and an overflowing backlog resets connections here (AWS's front ends do not).
        self.server.httpd.socket.listen(128)
        self._lock = threading.Lock()
        self._cache: dict[tuple[str, str, str], FakeResponse] = {}
        self.server.route("POST", "/", self._answer)

    @property
    def url(self) -> str:
        return self.server.url

    # ---------------------------------------------------------------- setup

    def fail(
        self,
        response: FakeResponse,
        *,
        action: str | None = None,
        region: str | None = None,
        page: int | None = None,
        times: int = 1,
    ) -> None:
        """Serve `response` instead of the answer to the next `times` matching calls
        (`action` e.g. "DescribeSpotPriceHistory" or "GetProducts"; None matches any)."""
        self.faults.append(Fault(response, action, region, page, times))

    def calls_to(self, action: str, region: str | None = None) -> list[Call]:
        return [c for c in self.calls if c.action == action and region in (None, c.region)]

    # -------------------------------------------------------------- serving

    def _answer(self, req: FakeRequest) -> FakeResponse:
        match = _CREDENTIAL.search(req.headers.get("authorization", ""))
        region = match.group(1) if match else "?"
        target = req.headers.get("x-amz-target")
        if target:
            service = "pricing" if target.startswith("AWSPriceListService") else "servicequotas"
            action = target.rsplit(".", 1)[-1]
            params: dict[str, Any] = json.loads(req.body or b"{}")
            token = params.get("NextToken")
        else:
            service = "ec2"
            form = parse_qs(req.body.decode(), keep_blank_values=True)
            params = {k: v[0] for k, v in form.items()}
            action = params.get("Action", "?")
            token = params.get("NextToken")
        offset = int(token) if token else 0
        limit = min(self.page_size, int(params.get("MaxResults") or self.page_size))
        page = offset // limit + 1 if limit else 1
        with self._lock:
            self.calls.append(Call(service, action, region, params, page))
            for fault in self.faults:
                if (
                    fault.times > 0
                    and fault.action in (None, action)
                    and fault.region in (None, region)
                    and fault.page in (None, page)
                ):
                    fault.times -= 1
                    return fault.response
        handler = self._handlers().get(action)
        if handler is None:
            if service == "ec2":
                return ec2_error(400, "InvalidAction", f"The action {action} is not valid")
            return json_error(400, "UnknownOperationException", action)
        key = (action, region, json.dumps(params, sort_keys=True, default=str))
        cached = self._cache.get(key) if self.cache_answers else None
        if cached is None:
            cached = handler(region, params, offset, limit)
            if self.cache_answers:
                self._cache[key] = cached
        return replace(cached, delay_s=self.latency_s)

    def _handlers(self) -> dict[str, Callable[[str, dict[str, Any], int, int], FakeResponse]]:
        return {
            "DescribeRegions": self._describe_regions,
            "DescribeInstanceTypes": self._describe_instance_types,
            "DescribeInstanceTypeOfferings": self._describe_offerings,
            "DescribeSpotPriceHistory": self._describe_spot,
            "DescribeCapacityBlockOfferings": self._describe_capacity_blocks,
            "GetProducts": self._get_products,
            "ListServiceQuotas": self._list_quotas,
            "GetAWSDefaultServiceQuota": self._default_quota,
        }

    @staticmethod
    def _ec2_page(
        action: str, key: str, rows: Sequence[Any], offset: int, limit: int
    ) -> FakeResponse:
        data: dict[str, Any] = {key: list(rows[offset : offset + limit])}
        if offset + limit < len(rows):
            data["NextToken"] = str(offset + limit)
        return FakeResponse(body=ec2_xml(action, data), headers=dict(XML))

    @staticmethod
    def _json_page(
        key: str, rows: Sequence[Any], offset: int, limit: int, **extra: Any
    ) -> FakeResponse:
        data: dict[str, Any] = {**extra, key: list(rows[offset : offset + limit])}
        if offset + limit < len(rows):
            data["NextToken"] = str(offset + limit)
        return FakeResponse(body=json.dumps(data).encode(), headers=JSON11)

    def _describe_regions(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        rows = [
            {**r, "Endpoint": f"ec2.{r['RegionName']}.amazonaws.com"}
            for r in self.regions
            if params.get("AllRegions") == "true"
            or r.get("OptInStatus") in ("opt-in-not-required", "opted-in")
        ]
        return FakeResponse(body=ec2_xml("DescribeRegions", {"Regions": rows}), headers=dict(XML))

    def _describe_instance_types(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        patterns = _filter_values(params, "instance-type")
        if params.get("IncludeUnsupportedInRegion") == "true":
            known: dict[str, dict[str, Any]] = {}
            for types in self.instance_types.values():
                for t in types:
                    known.setdefault(t["InstanceType"], t)
            supported = {t["InstanceType"] for t in self.instance_types.get(region, [])}
            candidates = [
                {**t, "SupportedInRegion": name in supported} for name, t in sorted(known.items())
            ]
        else:
            candidates = self.instance_types.get(region, [])
        rows = [
            t
            for t in candidates
            if patterns is None or any(fnmatchcase(t["InstanceType"], p) for p in patterns)
        ]
        return self._ec2_page("DescribeInstanceTypes", "InstanceTypes", rows, offset, limit)

    def _describe_offerings(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        names = _filter_values(params, "instance-type")
        rows = [
            {"InstanceType": o["InstanceType"], "LocationType": "availability-zone", **o}
            for o in self.offerings.get(region, [])
            if names is None or o["InstanceType"] in names  # exact, as moto (§1.3)
        ]
        return self._ec2_page(
            "DescribeInstanceTypeOfferings", "InstanceTypeOfferings", rows, offset, limit
        )

    def _describe_spot(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        types = set(_numbered(params, "InstanceType"))
        products = set(_numbered(params, "ProductDescription"))
        rows = [
            s
            for s in self.spot.get(region, [])
            if (not types or s["InstanceType"] in types)
            and (not products or s["ProductDescription"] in products)
        ]
        return self._ec2_page("DescribeSpotPriceHistory", "SpotPriceHistory", rows, offset, limit)

    def _describe_capacity_blocks(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        hours = int(params["CapacityDurationHours"])
        rows = [
            c
            for c in self.capacity_blocks.get(region, [])
            if c["InstanceType"] == params.get("InstanceType")
            and c["CapacityBlockDurationHours"] == hours
        ]
        return self._ec2_page(
            "DescribeCapacityBlockOfferings", "CapacityBlockOfferings", rows, offset, limit
        )

    def _get_products(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        def matches(item: Mapping[str, Any]) -> bool:
            attrs = item["product"]["attributes"]
            for f in params.get("Filters", []):
                have = attrs.get(f["Field"])
                if f["Type"] in ("TERM_MATCH", "EQUALS") and have != f["Value"]:
                    return False
                if f["Type"] == "ANY_OF" and have not in f["Value"].split(","):
                    return False
            return True

        rows = [json.dumps(i) for i in self.price_items if matches(i)]
        return self._json_page("PriceList", rows, offset, limit, FormatVersion="aws_v1")

    def _list_quotas(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        if params.get("ServiceCode") != "ec2":
            return json_error(400, "NoSuchResourceException", "no such service")
        return self._json_page("Quotas", self.quotas.get(region, []), offset, limit)

    def _default_quota(
        self, region: str, params: dict[str, Any], offset: int, limit: int
    ) -> FakeResponse:
        for q in self.default_quotas.get(region, []):
            if q["QuotaCode"] == params.get("QuotaCode"):
                return FakeResponse(body=json.dumps({"Quota": q}).encode(), headers=JSON11)
        return json_error(400, "NoSuchResourceException", "The request failed: no such quota")


def _numbered(params: Mapping[str, Any], prefix: str) -> list[str]:
    """`InstanceType.1=a&InstanceType.2=b` → ["a", "b"] (EC2 query lists)."""
    pat = re.compile(rf"^{re.escape(prefix)}\.(\d+)$")
    found = [(int(m.group(1)), v) for k, v in params.items() if (m := pat.match(k))]
    return [v for _, v in sorted(found)]


def _filter_values(params: Mapping[str, Any], name: str) -> list[str] | None:
    """The values of EC2 filter `name` (`Filter.N.Name` / `Filter.N.Value.M`), or None."""
    for key, value in params.items():
        m = re.match(r"^Filter\.(\d+)\.Name$", key)
        if m and value == name:
            return _numbered(params, f"Filter.{m.group(1)}.Value")
    return None


def spot_row(
    zone: str, instance_type: str, price: str, at: datetime, product: str = "Linux/UNIX"
) -> dict[str, Any]:
    """One `SpotPrice` record as DescribeSpotPriceHistory returns it."""
    return {
        "AvailabilityZone": zone,
        "InstanceType": instance_type,
        "ProductDescription": product,
        "SpotPrice": price,
        "Timestamp": at,
    }


def offerings(instance_type: str, zones: Iterable[str]) -> list[dict[str, str]]:
    return [{"InstanceType": instance_type, "Location": z} for z in zones]
