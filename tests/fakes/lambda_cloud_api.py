"""A fake Lambda Cloud API: `GET /instance-types` in the documented shape.

`{"data": {name: {"instance_type": {...}, "regions_with_capacity_available": [...]}}}`, errors
as `{"error": {"code", "message", "suggestion"}}`: the `InstanceTypes`, `InstanceType`,
`InstanceTypeSpecs`, `Region` and `ApiErrorUnauthorized` schemas of Lambda's OpenAPI spec
(https://docs.lambda.ai/api/cloud, version 1.8.3, vendored as `openapi-1.8.3.json` in
alexandervaneck/lambda-ai-cloud-api-client), whose `InstanceTypes` example is
`gpu_1x_gh200` / "GH200 (96 GB)" in `us-west-1` "California, USA". Region names are the
spec's `PublicRegionCode` enum; their descriptions other than us-west-1's are illustrative
(the adapter reads only `name`). The market is a mutable `types` map, so a test can move
capacity between polls. Names, descriptions and specs follow Lambda's real catalogue
(gpu_description strings as Lambda writes them: "H100 (80 GB SXM5)"); prices are
illustrative, not quotes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

PATH = "/instance-types"

#: Region name -> description: the 17 names of `PublicRegionCode` (OpenAPI spec 1.8.3).
REGIONS: dict[str, str] = {
    "us-east-1": "Virginia, USA",
    "us-east-2": "Washington DC, USA",
    "us-east-3": "Washington DC, USA",
    "us-west-1": "California, USA",
    "us-west-2": "Arizona, USA",
    "us-west-3": "Utah, USA",
    "us-south-1": "Texas, USA",
    "us-south-2": "North Texas, USA",
    "us-south-3": "Central Texas, USA",
    "us-midwest-1": "Illinois, USA",
    "us-midwest-2": "Ohio, USA",
    "europe-central-1": "Germany",
    "australia-east-1": "Australia",
    "asia-northeast-1": "Osaka, Japan",
    "asia-northeast-2": "Tokyo, Japan",
    "asia-south-1": "India",
    "me-west-1": "Israel",
}


@dataclass
class LambdaType:
    """One instance type: what `instance_type` says, and where it has capacity now."""

    name: str
    gpu_description: str | None
    price_cents_per_hour: int
    gpus: int
    vcpus: int = 30
    memory_gib: int = 200
    storage_gib: int = 1400
    regions: list[str] = field(default_factory=list)

    def entry(self) -> dict[str, Any]:
        count = self.name.split("_")[1] if self.name.startswith("gpu_") else ""
        itype: dict[str, Any] = {
            "name": self.name,
            "description": f"{count} {self.gpu_description or ''}".strip(),
            "price_cents_per_hour": self.price_cents_per_hour,
            "specs": {
                "vcpus": self.vcpus,
                "memory_gib": self.memory_gib,
                "storage_gib": self.storage_gib,
                "gpus": self.gpus,
            },
        }
        if self.gpu_description is not None:
            itype["gpu_description"] = self.gpu_description
        return {
            "instance_type": itype,
            "regions_with_capacity_available": [
                {"name": r, "description": REGIONS.get(r, r)} for r in self.regions
            ],
        }


def catalogue() -> list[LambdaType]:
    """Lambda's GPU instance types (names, GPU descriptions and specs as Lambda lists them)."""
    return [
        LambdaType("gpu_1x_a10", "A10 (24 GB PCIe)", 129, 1, 30, 200, 1400),
        LambdaType("gpu_1x_rtx6000", "RTX 6000 (24 GB)", 69, 1, 14, 46, 512),
        LambdaType("gpu_1x_a6000", "A6000 (48 GB)", 109, 1, 14, 100, 512),
        LambdaType("gpu_2x_a6000", "A6000 (48 GB)", 218, 2, 28, 200, 1024),
        LambdaType("gpu_4x_a6000", "A6000 (48 GB)", 436, 4, 56, 400, 1024),
        LambdaType("gpu_1x_a100", "A100 (40 GB PCIe)", 199, 1, 30, 200, 512),
        LambdaType("gpu_1x_a100_sxm4", "A100 (40 GB SXM4)", 199, 1, 30, 200, 512),
        LambdaType("gpu_2x_a100", "A100 (40 GB SXM4)", 398, 2, 60, 450, 1024),
        LambdaType("gpu_4x_a100", "A100 (40 GB SXM4)", 796, 4, 120, 900, 1024),
        LambdaType("gpu_8x_a100", "A100 (40 GB SXM4)", 1592, 8, 124, 1800, 6144),
        LambdaType("gpu_8x_a100_80gb_sxm4", "A100 (80 GB SXM4)", 2232, 8, 240, 1800, 19456),
        LambdaType("gpu_1x_h100_pcie", "H100 (80 GB PCIe)", 329, 1, 26, 200, 1024),
        LambdaType("gpu_1x_h100_sxm5", "H100 (80 GB SXM5)", 429, 1, 26, 225, 2816),
        LambdaType("gpu_2x_h100_sxm5", "H100 (80 GB SXM5)", 838, 2, 52, 450, 5632),
        LambdaType("gpu_4x_h100_sxm5", "H100 (80 GB SXM5)", 1636, 4, 104, 900, 11264),
        LambdaType("gpu_8x_h100_sxm5", "H100 (80 GB SXM5)", 3192, 8, 208, 1800, 22528),
        LambdaType("gpu_1x_gh200", "GH200 (96 GB)", 229, 1, 64, 432, 4096),
        LambdaType("gpu_1x_b200_sxm6", "B200 (180 GB SXM6)", 699, 1, 26, 225, 2816),
        LambdaType("gpu_2x_b200_sxm6", "B200 (180 GB SXM6)", 1378, 2, 52, 450, 5632),
        LambdaType("gpu_4x_b200_sxm6", "B200 (180 GB SXM6)", 2716, 4, 104, 900, 11264),
        LambdaType("gpu_8x_b200_sxm6", "B200 (180 GB SXM6)", 5352, 8, 208, 1800, 22528),
        LambdaType("gpu_8x_v100", "Tesla V100 (16 GB)", 632, 8, 92, 448, 5952),
        LambdaType("gpu_8x_v100_n", "Tesla V100 (16 GB)", 632, 8, 92, 448, 5952),
    ]


def instance_types_body(types: list[LambdaType]) -> dict[str, Any]:
    return {"data": {t.name: t.entry() for t in types}}


def error_body(code: str, message: str = "error", suggestion: str | None = None) -> dict[str, Any]:
    error: dict[str, Any] = {"code": code, "message": message}
    if suggestion is not None:
        error["suggestion"] = suggestion
    return {"error": error}


class LambdaFake:
    """`GET /instance-types` on a FakeHttpServer, answering the current `types`.

    `latency_s` delays every answer (benchmarks). Requests without the expected bearer key
    get Lambda's 401 envelope.
    """

    def __init__(
        self,
        server: FakeHttpServer,
        types: list[LambdaType],
        *,
        api_key: str,
        latency_s: float = 0.0,
    ) -> None:
        self.server = server
        self.types = types
        self.api_key = api_key
        self.latency_s = latency_s
        server.route("GET", PATH, self._answer)

    @property
    def url(self) -> str:
        return self.server.url

    def type(self, name: str) -> LambdaType:
        return next(t for t in self.types if t.name == name)

    def _answer(self, req: FakeRequest) -> FakeResponse:
        if req.headers.get("authorization") != f"Bearer {self.api_key}":
            return FakeResponse(
                401,
                json=error_body(
                    "global/invalid-api-key",
                    "API key was invalid, expired, or deleted.",
                    "Check your API key or create a new one, then try again.",
                ),
                delay_s=self.latency_s,
            )
        return FakeResponse(json=instance_types_body(self.types), delay_s=self.latency_s)
