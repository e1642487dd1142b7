"""A fake RunPod GraphQL API (`POST /graphql`) that answers only the fields a query asks for.

The adapter's queries are parsed for real (a small GraphQL parser below: operations,
aliases, arguments with object/list/variable values, nested selection sets), and resolved
against a mutable market, so an adapter that misspells a field, or sends an input field
`GpuLowestPriceInput` does not define, gets the GraphQL error a real server gives
(`Cannot query field ...`, `Field "x" is not defined by type ...`, HTTP 400), not a silent
`null`.

Schema covered (https://graphql-spec.runpod.io for GpuType and DataCenter; `countryCodes`,
`DataCenter.listed` and the `lowestPrice` inputs `gpuCount`, `dataCenterId`, `countryCode`,
`secureCloud`, `minCudaVersion`, `minDisk`, `minMemoryInGb`, `minVcpuCount` as
dstackai/gpuhunt `src/gpuhunt/providers/runpod.py` sends them; `lowestPrice` outputs as
gpuhunt, SkyPilot's `sky/catalog/data_fetchers/fetch_runpod.py` and runpod-python
`runpod/api/queries/gpus.py` read them):

    countryCodes -> [String]
    gpuTypes(input: GpuTypeFilter) -> [GpuType]
      GpuType: id displayName manufacturer memoryInGb maxGpuCount maxGpuCountSecureCloud
               maxGpuCountCommunityCloud secureCloud communityCloud securePrice communityPrice
               secureSpotPrice communitySpotPrice oneWeekPrice oneMonthPrice
               lowestPrice(input: GpuLowestPriceInput) -> LowestPrice
      LowestPrice: gpuName gpuTypeId stockStatus maxUnreservedGpuCount availableGpuCounts
                   uninterruptablePrice minimumBidPrice minVcpu minMemory countryCode
    dataCenters -> [DataCenter {id name location listed}]

`lowestPrice` answers for the place its input names (`dataCenterId` in secure cloud,
`countryCode` in community cloud) and for exactly `gpuCount` GPUs: a stock entry lists the
pod sizes in stock there (`Stock.counts`), any other size answers `stockStatus: null`; with
`minCudaVersion` above the hosts' CUDA (`Stock.cuda`) it answers `stockStatus: null` too.

Prices are USD per GPU-hour as JSON numbers; names, ids and memory follow RunPod's GPU list
(runpod/docs `references/gpu-types.mdx`); data centre ids are those of RunPod's REST API
(`dataCenterIds`), country codes those of the countries SkyPilot's `fetch_runpod.py`
`REGION_ZONES` maps RunPod data centres to; prices, stock and `listed` flags are
illustrative.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

PATH = "/graphql"

# ---------------------------------------------------------------------- GraphQL parsing


class GraphQLSyntaxError(ValueError):
    pass


_TOKEN = re.compile(
    r'\s*(?:(?P<str>"(?:[^"\\]|\\.)*")|(?P<num>-?\d+(?:\.\d+)?)|(?P<name>[_A-Za-z][_0-9A-Za-z]*)'
    r"|(?P<punct>[{}():\[\]$!=@]|\.\.\.)|(?P<comma>,))"
)


@dataclass
class Field:
    name: str
    alias: str
    args: dict[str, Any]
    selections: list[Field] | None


class _Parser:
    def __init__(self, text: str, variables: dict[str, Any]) -> None:
        self.tokens: list[tuple[str, str]] = []
        pos = 0
        text = re.sub(r"#[^\n]*", "", text)
        while pos < len(text):
            if text[pos:].strip() == "":
                break
            m = _TOKEN.match(text, pos)
            if not m:
                raise GraphQLSyntaxError(f"Syntax Error: Unexpected character at {pos}")
            pos = m.end()
            kind = m.lastgroup or ""
            if kind != "comma":
                self.tokens.append((kind, m.group(kind)))
        self.i = 0
        self.variables = variables

    def peek(self) -> tuple[str, str] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def at(self, value: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[1] == value

    def more(self, closing: str) -> bool:
        tok = self.peek()
        return tok is not None and tok[1] != closing

    def take(self, value: str | None = None) -> tuple[str, str]:
        tok = self.peek()
        if tok is None or (value is not None and tok[1] != value):
            raise GraphQLSyntaxError(f"Syntax Error: Expected {value!r}, found {tok!r}")
        self.i += 1
        return tok

    def document(self) -> list[Field]:
        tok = self.peek()
        if tok and tok[1] in ("query", "mutation"):
            self.take()
            nxt = self.peek()
            if nxt is not None and nxt[0] == "name":
                self.take()
            if self.at("("):
                depth = 0
                while True:  # variable definitions: skipped, values come from `variables`
                    t = self.take()[1]
                    depth += t == "("
                    depth -= t == ")"
                    if depth == 0:
                        break
        sels = self.selection_set()
        if self.peek() is not None:
            raise GraphQLSyntaxError("Syntax Error: Unexpected content after the operation")
        return sels

    def selection_set(self) -> list[Field]:
        self.take("{")
        out: list[Field] = []
        while self.more("}"):
            out.append(self.selection())
        self.take("}")
        return out

    def selection(self) -> Field:
        kind, name = self.take()
        if kind != "name":
            raise GraphQLSyntaxError(f"Syntax Error: Expected Name, found {name!r}")
        alias = name
        if self.at(":"):
            self.take(":")
            alias, name = name, self.take()[1]
        args: dict[str, Any] = {}
        if self.at("("):
            self.take("(")
            while self.more(")"):
                key = self.take()[1]
                self.take(":")
                args[key] = self.value()
            self.take(")")
        sels = self.selection_set() if self.at("{") else None
        return Field(name, alias, args, sels)

    def value(self) -> Any:
        kind, tok = self.take()
        if kind == "str":
            return json.loads(tok)
        if kind == "num":
            return float(tok) if "." in tok else int(tok)
        if tok == "$":
            return self.variables.get(self.take()[1])
        if tok in ("true", "false"):
            return tok == "true"
        if tok == "null":
            return None
        if tok == "{":
            obj: dict[str, Any] = {}
            while self.more("}"):
                key = self.take()[1]
                self.take(":")
                obj[key] = self.value()
            self.take("}")
            return obj
        if tok == "[":
            items: list[Any] = []
            while self.more("]"):
                items.append(self.value())
            self.take("]")
            return items
        if kind == "name":
            return tok  # enum value
        raise GraphQLSyntaxError(f"Syntax Error: Unexpected {tok!r}")


def parse(query: str, variables: dict[str, Any] | None = None) -> list[Field]:
    return _Parser(query, variables or {}).document()


# ---------------------------------------------------------------------------- the market


@dataclass
class RunpodGpu:
    """One GPU type as `gpuTypes` lists it; prices are USD per GPU-hour (None = not sold)."""

    id: str
    display_name: str
    memory_gb: int
    max_count: int = 8
    secure_price: float | None = None
    community_price: float | None = None
    secure_spot: float | None = None
    community_spot: float | None = None
    manufacturer: str = "Nvidia"
    max_secure: int | None = None
    max_community: int | None = None

    @property
    def secure(self) -> bool:
        return self.secure_price is not None

    @property
    def community(self) -> bool:
        return self.community_price is not None


@dataclass
class Stock:
    """What `lowestPrice(input: {dataCenterId | countryCode, secureCloud, gpuCount})` reports
    at one place: `status` for the pod sizes in `counts` (None = 1 GPU only), null for any
    other size, and null when `minCudaVersion` asks more than the hosts' `cuda`."""

    status: str | None
    max_unreserved: int | None = None
    counts: list[int] | None = None
    uninterruptable: float | None = None
    min_bid: float | None = None
    cuda: str | None = None
    #: what `availableGpuCounts` reports (None = not reported)
    listed_counts: list[int] | None = None

    def status_for(self, gpu_count: int, min_cuda: str | None) -> str | None:
        if gpu_count not in (self.counts if self.counts is not None else [1]):
            return None
        if (
            min_cuda is not None
            and self.cuda is not None
            and _version(min_cuda) > _version(self.cuda)
        ):
            return None
        return self.status


def _version(text: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(text).split("."))


@dataclass
class DataCenter:
    id: str
    name: str
    location: str
    listed: bool = True


GPU_FIELDS: dict[str, Callable[[RunpodGpu], Any]] = {
    "id": lambda g: g.id,
    "displayName": lambda g: g.display_name,
    "manufacturer": lambda g: g.manufacturer,
    "memoryInGb": lambda g: g.memory_gb,
    "maxGpuCount": lambda g: g.max_count,
    "maxGpuCountSecureCloud": lambda g: (g.max_secure or g.max_count) if g.secure else 0,
    "maxGpuCountCommunityCloud": lambda g: (g.max_community or g.max_count) if g.community else 0,
    "secureCloud": lambda g: g.secure,
    "communityCloud": lambda g: g.community,
    "securePrice": lambda g: g.secure_price,
    "communityPrice": lambda g: g.community_price,
    "secureSpotPrice": lambda g: g.secure_spot,
    "communitySpotPrice": lambda g: g.community_spot,
    "oneWeekPrice": lambda g: None,
    "oneMonthPrice": lambda g: None,
    "cudaCores": lambda g: 0,
}
LOWEST_FIELDS = (
    "gpuName",
    "gpuTypeId",
    "stockStatus",
    "maxUnreservedGpuCount",
    "availableGpuCounts",
    "uninterruptablePrice",
    "minimumBidPrice",
    "minVcpu",
    "minMemory",
    "countryCode",
    "rentedCount",
    "totalCount",
)
DC_FIELDS = ("id", "name", "location", "listed")
#: The `GpuLowestPriceInput` fields the fake accepts (those gpuhunt sends).
LOWEST_INPUTS = frozenset(
    {
        "gpuCount",
        "dataCenterId",
        "countryCode",
        "secureCloud",
        "minCudaVersion",
        "minDisk",
        "minMemoryInGb",
        "minVcpuCount",
    }
)


class _FieldError(Exception):
    pass


@dataclass
class RunpodFake:
    """The market behind the fake; tests mutate it between polls."""

    server: FakeHttpServer
    gpus: list[RunpodGpu]
    data_centers: list[DataCenter]
    #: (data centre id or country code, gpu id, "secure" | "community") -> stock; missing =
    #: lowestPrice null
    stock: dict[tuple[str, str, str], Stock] = field(default_factory=dict)
    api_key: str = "rp_test_key"
    latency_s: float = 0.0
    #: what `countryCodes` answers (RunPod lists null among them too)
    country_codes: list[str | None] = field(default_factory=lambda: list(COUNTRY_CODES))
    #: data centre id or country code -> answers served (one per request) instead of the
    #: normal one
    dc_faults: dict[str, list[FakeResponse]] = field(default_factory=dict)
    #: answers served to the catalogue query instead of the normal one
    catalogue_faults: list[FakeResponse] = field(default_factory=list)
    queries: list[str] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server.route("POST", PATH, self.answer)

    @property
    def url(self) -> str:
        return self.server.url

    def requests(self) -> list[FakeRequest]:
        return self.server.requests_to(PATH)

    def catalogue_requests(self) -> int:
        return sum(1 for q in self.queries if "lowestPrice" not in q)

    def stock_queries(self) -> list[str]:
        return [q for q in self.queries if "lowestPrice" in q]

    # ------------------------------------------------------------------------ serving

    def answer(self, req: FakeRequest) -> FakeResponse:
        if self.latency_s:
            time.sleep(self.latency_s)
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return FakeResponse(401, body=b"Unauthorized", headers={"Content-Type": "text/plain"})
        try:
            body = req.json()
            query, variables = body["query"], body.get("variables") or {}
        except (ValueError, KeyError, TypeError):
            return FakeResponse(400, json={"errors": [{"message": "Must provide query string."}]})
        with self._lock:
            self.queries.append(query)
        try:
            fields = parse(query, variables)
        except GraphQLSyntaxError as exc:
            return FakeResponse(400, json={"errors": [{"message": str(exc)}]})
        dc_ids = {
            str(_place(a.args["input"]))
            for f in fields
            for a in (f.selections or [])
            if a.name == "lowestPrice" and isinstance(a.args.get("input"), dict)
        }
        with self._lock:
            for dc in sorted(dc_ids):
                queued = self.dc_faults.get(dc)
                if queued:
                    return queued.pop(0)
            if not dc_ids and self.catalogue_faults:
                return self.catalogue_faults.pop(0)
        try:
            data = {f.alias: self._root(f) for f in fields}
        except _FieldError as exc:
            return FakeResponse(400, json={"errors": [{"message": str(exc)}]})
        return FakeResponse(json={"data": data})

    def _root(self, f: Field) -> Any:
        if f.name == "countryCodes":
            return list(self.country_codes)
        if f.name == "gpuTypes":
            flt = f.args.get("input") or {}
            gpus = [g for g in self.gpus if "id" not in flt or g.id == flt["id"]]
            return [self._gpu(g, f.selections or []) for g in gpus]
        if f.name == "dataCenters":
            out = []
            for dc in self.data_centers:
                row = {}
                for s in f.selections or []:
                    if s.name not in DC_FIELDS:
                        raise _FieldError(f'Cannot query field "{s.name}" on type "DataCenter".')
                    row[s.alias] = getattr(dc, s.name)
                out.append(row)
            return out
        raise _FieldError(f'Cannot query field "{f.name}" on type "Query".')

    def _gpu(self, g: RunpodGpu, selections: list[Field]) -> dict[str, Any]:
        row: dict[str, Any] = {}
        for s in selections:
            if s.name == "lowestPrice":
                row[s.alias] = self._lowest(g, s)
            elif s.name in GPU_FIELDS:
                row[s.alias] = GPU_FIELDS[s.name](g)
            else:
                raise _FieldError(f'Cannot query field "{s.name}" on type "GpuType".')
        return row

    def _lowest(self, g: RunpodGpu, s: Field) -> dict[str, Any] | None:
        inp = s.args.get("input") or {}
        for name in inp:
            if name not in LOWEST_INPUTS:
                raise _FieldError(f'Field "{name}" is not defined by type "GpuLowestPriceInput".')
        cloud = "secure" if inp.get("secureCloud") else "community"
        st = self.stock.get((str(_place(inp)), g.id, cloud))
        if st is None:
            return None
        count = inp.get("gpuCount", 1)
        values = {
            "gpuName": g.display_name,
            "gpuTypeId": g.id,
            "stockStatus": st.status_for(count, inp.get("minCudaVersion")),
            "maxUnreservedGpuCount": st.max_unreserved,
            "availableGpuCounts": st.listed_counts,
            "uninterruptablePrice": st.uninterruptable,
            "minimumBidPrice": st.min_bid,
            "minVcpu": 8,
            "minMemory": 31,
            "countryCode": None,
            "rentedCount": None,
            "totalCount": None,
        }
        out: dict[str, Any] = {}
        for sub in s.selections or []:
            if sub.name not in LOWEST_FIELDS:
                raise _FieldError(f'Cannot query field "{sub.name}" on type "LowestPrice".')
            out[sub.alias] = values[sub.name]
        return out


def _place(inp: dict[str, Any]) -> Any:
    """The place a `lowestPrice` input names: its data centre, else its country."""
    return inp.get("dataCenterId") or inp.get("countryCode")


def graphql_error(message: str, code: str | None = None, status: int = 200) -> FakeResponse:
    """A GraphQL error answer (RunPod can send these with HTTP 200)."""
    err: dict[str, Any] = {"message": message, "path": ["gpuTypes"]}
    if code:
        err["extensions"] = {"code": code}
    return FakeResponse(status, json={"errors": [err], "data": None})


# --------------------------------------------------------------- realistic catalogue


def gpu_catalogue() -> list[RunpodGpu]:
    """RunPod's GPU list (runpod/docs `references/gpu-types.mdx`: id, display name, memory),
    with illustrative per-GPU-hour prices; None = not sold in that cloud."""
    G = RunpodGpu
    return [
        G("AMD Instinct MI300X OAM", "MI300X", 192, 8, 2.49, None, None, None, "AMD"),
        G("NVIDIA A100 80GB PCIe", "A100 PCIe", 80, 8, 1.64, 1.19, 0.82, 0.6),
        G("NVIDIA A100-SXM4-80GB", "A100 SXM", 80, 8, 1.74, 1.39, 0.87, 0.7),
        G("NVIDIA A30", "A30", 24, 8, None, 0.22, None, 0.11),
        G("NVIDIA A40", "A40", 48, 10, 0.4, 0.35, 0.2, 0.17),
        G("NVIDIA B200", "B200", 180, 8, 5.99, None, 3.59, None),
        G("NVIDIA GeForce RTX 3070", "RTX 3070", 8, 8, None, 0.13, None, 0.07),
        G("NVIDIA GeForce RTX 3080", "RTX 3080", 10, 4, None, 0.17, None, 0.09),
        G("NVIDIA GeForce RTX 3080 Ti", "RTX 3080 Ti", 12, 5, None, 0.18, None, 0.09),
        G("NVIDIA GeForce RTX 3090", "RTX 3090", 24, 8, 0.43, 0.22, 0.21, 0.11),
        G("NVIDIA GeForce RTX 3090 Ti", "RTX 3090 Ti", 24, 8, None, 0.27, None, 0.14),
        G("NVIDIA GeForce RTX 4070 Ti", "RTX 4070 Ti", 12, 8, None, 0.19, None, 0.1),
        G("NVIDIA GeForce RTX 4080", "RTX 4080", 16, 5, None, 0.27, None, 0.14),
        G("NVIDIA GeForce RTX 4080 SUPER", "RTX 4080 SUPER", 16, 6, None, 0.28, None, 0.14),
        G("NVIDIA GeForce RTX 4090", "RTX 4090", 24, 8, 0.69, 0.34, 0.35, 0.2),
        G("NVIDIA GeForce RTX 5080", "RTX 5080", 16, 8, None, 0.35, None, 0.18),
        G("NVIDIA GeForce RTX 5090", "RTX 5090", 32, 8, 0.94, 0.69, 0.47, 0.35),
        G("NVIDIA H100 80GB HBM3", "H100 SXM", 80, 8, 2.69, 2.69, 1.75, 1.5),
        G("NVIDIA H100 NVL", "H100 NVL", 94, 10, 2.59, 2.59, 1.3, 1.3),
        G("NVIDIA H100 PCIe", "H100 PCIe", 80, 8, 2.39, 1.99, 1.25, 1.0),
        G("NVIDIA H200", "H200 SXM", 141, 8, 3.99, 3.59, 2.29, 2.09),
        G("NVIDIA L4", "L4", 24, 10, 0.43, None, 0.22, None),
        G("NVIDIA L40", "L40", 48, 10, 0.99, None, 0.5, None),
        G("NVIDIA L40S", "L40S", 48, 8, 0.86, 0.79, 0.43, 0.4),
        G("NVIDIA RTX 2000 Ada Generation", "RTX 2000 Ada", 16, 8, 0.24, 0.23, 0.12, 0.12),
        G("NVIDIA RTX 4000 Ada Generation", "RTX 4000 Ada", 20, 8, 0.26, 0.2, 0.13, 0.1),
        G("NVIDIA RTX 4000 SFF Ada Generation", "RTX 4000 Ada SFF", 20, 8, 0.25, None, 0.13, None),
        G("NVIDIA RTX 5000 Ada Generation", "RTX 5000 Ada", 32, 8, 0.77, 0.77, 0.39, 0.39),
        G("NVIDIA RTX 6000 Ada Generation", "RTX 6000 Ada", 48, 8, 0.77, 0.74, 0.39, 0.37),
        G("NVIDIA RTX A2000", "RTX A2000", 6, 8, None, 0.12, None, 0.06),
        G("NVIDIA RTX A4000", "RTX A4000", 16, 12, 0.25, 0.17, 0.13, 0.09),
        G("NVIDIA RTX A4500", "RTX A4500", 20, 4, 0.25, 0.19, 0.13, 0.1),
        G("NVIDIA RTX A5000", "RTX A5000", 24, 10, 0.27, 0.16, 0.14, 0.08),
        G("NVIDIA RTX A6000", "RTX A6000", 48, 10, 0.49, 0.33, 0.25, 0.17),
        G("Tesla V100-FHHL-16GB", "V100 FHHL", 16, 8, None, 0.2, None, 0.1),
        G("Tesla V100-PCIE-16GB", "Tesla V100", 16, 8, None, 0.19, None, 0.1),
        G("Tesla V100-SXM2-16GB", "V100 SXM2", 16, 8, None, 0.23, None, 0.12),
        G("Tesla V100-SXM2-32GB", "V100 SXM2 32GB", 32, 8, None, 0.28, None, 0.14),
    ]


#: Data centre ids of RunPod's REST API (`dataCenterIds`), location as `dataCenters` reports
#: it (a continent-level name, runpodctl docs).
DATA_CENTERS: list[DataCenter] = [
    DataCenter(dc, dc, loc)
    for dc, loc in [
        ("EU-RO-1", "Europe"),
        ("CA-MTL-1", "Canada"),
        ("EU-SE-1", "Europe"),
        ("US-IL-1", "United States"),
        ("EUR-IS-1", "Europe"),
        ("EU-CZ-1", "Europe"),
        ("US-TX-3", "United States"),
        ("EUR-IS-2", "Europe"),
        ("US-KS-2", "United States"),
        ("US-GA-2", "United States"),
        ("US-WA-1", "United States"),
        ("US-TX-1", "United States"),
        ("CA-MTL-3", "Canada"),
        ("EU-NL-1", "Europe"),
        ("US-TX-4", "United States"),
        ("US-CA-2", "United States"),
        ("US-NC-1", "United States"),
        ("OC-AU-1", "Oceania"),
        ("US-DE-1", "United States"),
        ("EUR-IS-3", "Europe"),
        ("CA-MTL-2", "Canada"),
        ("AP-JP-1", "Asia"),
        ("EUR-NO-1", "Europe"),
        ("EU-FR-1", "Europe"),
        ("US-KS-3", "United States"),
        ("US-GA-1", "United States"),
        ("AP-IN-1", "Asia"),
        ("US-MD-1", "United States"),
        ("US-OR-1", "United States"),  # not in broker/data/regions.csv: country stays None
        ("EU-XX-9", "Europe"),  # a data centre the region table does not know
    ]
]


#: What `countryCodes` answers: the countries of RunPod's data centres (the keys of SkyPilot's
#: `fetch_runpod.py` `REGION_ZONES`), and a null, which gpuhunt's catalogue skips.
COUNTRY_CODES: list[str | None] = [
    "AU", "CA", "CZ", "DK", "FR", "IN", "IS", "JP", "NL", "NO", "RO", "SE", "SG", "US", None,
]  # fmt: skip


def full_stock(
    gpus: list[RunpodGpu],
    dcs: list[DataCenter],
    pick: Callable[[int, int], Stock | None] | None = None,
    countries: list[str | None] | None = None,
) -> dict[tuple[str, str, str], Stock]:
    """Stock for every (data centre, GPU, secure) and (country, GPU, community) that
    `pick(place_index, gpu_index)` fills: by default a deterministic spread of
    High/Medium/Low/None."""

    def default(i: int, j: int) -> Stock | None:
        k = (i * 7 + j * 3) % 5
        if k == 4:
            return None
        status = ("High", "Medium", "Low", None)[k]
        return Stock(status, max_unreserved=(8, 4, 2, 0)[k], counts=[1, 2, 4, 8][: 4 - k])

    choose = pick or default
    codes = [c for c in (COUNTRY_CODES if countries is None else countries) if c]
    places = [(dc.id, "secure") for dc in dcs] + [(c, "community") for c in codes]
    out: dict[tuple[str, str, str], Stock] = {}
    for i, (place, cloud) in enumerate(places):
        for j, g in enumerate(gpus):
            st = choose(i, j)
            if st is not None and (g.secure if cloud == "secure" else g.community):
                out[(place, g.id, cloud)] = st
    return out
