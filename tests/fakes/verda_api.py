"""A fake Verda (formerly DataCrunch) public API, in the shapes Verda's SDKs read.

- `POST /oauth2/token`: JSON `{"grant_type": "client_credentials", "client_id",
  "client_secret"}` or `{"grant_type": "refresh_token", "refresh_token"}` →
  `{access_token, refresh_token, scope, token_type, expires_in}` (verda-cloud/sdk-python
  `verda/authentication/_authentication.py`); bad credentials → 401 `{"code", "message"}`.
- `GET /instance-types?currency=usd` → a list of instance types (fields as the SDK's unit
  test fixture `tests/unit_tests/instance_types/test_instance_types.py`: prices are decimal
  strings; CPU types carry `gpu.number_of_gpus` 0).
- `GET /instance-availability?is_spot=true|false` → `[{"location_code", "availabilities":
  [instance_type, ...]}]` (Go SDK `LocationAvailability`; SDK integration test
  `test_locations.py`; the Python SDK spells the flag `isSpot`, so both are read).
Every data call needs `Authorization: Bearer <access token>`; an unknown or expired token →
401 `{"code": "unauthorized_request", ...}`. Names and specs follow Verda's real instance
types; prices are illustrative, not quotes.
"""

from __future__ import annotations

import itertools
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from tests.fakes.http import FakeHttpServer, FakeRequest, FakeResponse

TOKEN_PATH = "/oauth2/token"
TYPES_PATH = "/instance-types"
AVAILABILITY_PATH = "/instance-availability"
LOCATIONS = ("FIN-01", "FIN-02", "FIN-03", "ICE-01")


@dataclass
class VerdaType:
    """One instance type as `/instance-types` lists it."""

    instance_type: str
    model: str
    name: str
    gpu_description: str
    gpus: int
    gpu_memory_gb: int  # total across the instance's GPUs, as Verda reports it
    cores: int
    memory_gb: int
    price: str
    spot_price: str | None
    manufacturer: str = "NVIDIA"
    currency: str = "usd"

    def row(self) -> dict[str, Any]:
        row: dict[str, Any] = {
            "id": f"id-{self.instance_type}",
            "instance_type": self.instance_type,
            "name": self.name,
            "model": self.model,
            "display_name": f"{self.manufacturer} {self.name}",
            "manufacturer": self.manufacturer,
            "description": "Dedicated Hardware Instance",
            "price_per_hour": self.price,
            "spot_price": self.spot_price,
            "max_dynamic_price": None,
            "dynamic_price": None,
            "serverless_price": None,
            "serverless_spot_price": None,
            "currency": self.currency,
            "cpu": {"description": f"{self.cores} CPU", "number_of_cores": self.cores},
            "gpu": {"description": self.gpu_description, "number_of_gpus": self.gpus},
            "memory": {
                "description": f"{self.memory_gb}GB RAM",
                "size_in_gigabytes": self.memory_gb,
            },
            "gpu_memory": {
                "description": f"{self.gpu_memory_gb}GB VRAM",
                "size_in_gigabytes": self.gpu_memory_gb,
            },
            "storage": {"description": "dynamic"},
            "p2p": "",
            "best_for": ["Gargantuan ML models"],
            "supported_os": ["ubuntu-24.04-cuda-12.8-open-docker"],
            "deploy_warning": None,
        }
        return row


def catalogue() -> list[VerdaType]:
    """Verda's instance types (names and specs as Verda lists them; prices illustrative)."""
    V = VerdaType
    return [
        V(
            "1B200.30V",
            "B200",
            "B200 SXM6 180GB",
            "1x B200 SXM6 180GB",
            1,
            180,
            30,
            184,
            "4.9000",
            "1.7000",
        ),
        V(
            "8B200.240V",
            "B200",
            "B200 SXM6 180GB",
            "8x B200 SXM6 180GB",
            8,
            1440,
            240,
            1472,
            "39.2000",
            "13.6000",
        ),
        V(
            "1H200.141S.44V",
            "H200",
            "H200 SXM5 141GB",
            "1x H200 SXM5 141GB",
            1,
            141,
            44,
            185,
            "3.7500",
            "1.3100",
        ),
        V(
            "8H200.141S.176V",
            "H200",
            "H200 SXM5 141GB",
            "8x H200 SXM5 141GB",
            8,
            1128,
            176,
            1450,
            "30.0000",
            "10.5000",
        ),
        V(
            "1H100.80S.30V",
            "H100",
            "H100 SXM5 80GB",
            "1x H100 SXM5 80GB",
            1,
            80,
            30,
            120,
            "2.6500",
            "1.1200",
        ),
        V(
            "2H100.80S.80V",
            "H100",
            "H100 SXM5 80GB",
            "2x H100 SXM5 80GB",
            2,
            160,
            80,
            370,
            "5.3000",
            "2.2400",
        ),
        V(
            "8H100.80S.176V",
            "H100",
            "H100 SXM5 80GB",
            "8x H100 SXM5 80GB",
            8,
            640,
            176,
            1480,
            "21.2000",
            "8.9600",
        ),
        V(
            "1A100.22V",
            "A100",
            "A100 SXM4 80GB",
            "1x A100 SXM4 80GB",
            1,
            80,
            22,
            120,
            "1.2900",
            "0.4500",
        ),
        V(
            "8A100.176V",
            "A100",
            "A100 SXM4 80GB",
            "8x A100 SXM4 80GB",
            8,
            640,
            176,
            960,
            "10.3200",
            "3.6000",
        ),
        V(
            "1A100.40S.22V",
            "A100",
            "A100 SXM4 40GB",
            "1x A100 SXM4 40GB",
            1,
            40,
            22,
            120,
            "0.7500",
            "0.2800",
        ),
        V(
            "8A100.40S.176V",
            "A100",
            "A100 SXM4 40GB",
            "8x A100 SXM4 40GB",
            8,
            320,
            176,
            960,
            "6.0000",
            "2.2400",
        ),
        V("1L40S.20V", "L40S", "L40S 48GB", "1x L40S 48GB", 1, 48, 20, 60, "0.9100", "0.3600"),
        V(
            "1RTX6000ADA.10V",
            "RTX 6000 Ada",
            "RTX 6000 Ada 48GB",
            "1x RTX 6000 Ada 48GB",
            1,
            48,
            10,
            60,
            "0.7700",
            "0.2700",
        ),
        V(
            "1A6000.10V",
            "RTX A6000",
            "RTX A6000 48GB",
            "1x RTX A6000 48GB",
            1,
            48,
            10,
            60,
            "0.4900",
            "0.1700",
        ),
        V(
            "1V100.6V",
            "V100",
            "Tesla V100 16GB",
            "1x Tesla V100 16GB",
            1,
            16,
            6,
            23,
            "0.1400",
            "0.0500",
        ),
        V(
            "8V100.48V",
            "V100",
            "Tesla V100 16GB",
            "8x Tesla V100 16GB",
            8,
            128,
            48,
            180,
            "1.1200",
            "0.4000",
        ),
        V(
            "1RTXPRO6000.30V",
            "RTX PRO 6000",
            "RTX PRO 6000 96GB",
            "1x RTX PRO 6000 96GB",
            1,
            96,
            30,
            180,
            "1.3900",
            "0.5500",
        ),
        V("CPU.4V.16G", "", "CPU Node", "", 0, 0, 4, 16, "0.0300", "0.0100", manufacturer="AMD"),
        V("CPU.32V.128G", "", "CPU Node", "", 0, 0, 32, 128, "0.2400", None, manufacturer="AMD"),
    ]


@dataclass
class VerdaFake:
    """The market and the OAuth server behind the fake; tests mutate them between polls."""

    server: FakeHttpServer
    types: list[VerdaType]
    #: market ("on_demand" | "spot") -> location -> instance types available now
    available: dict[str, dict[str, list[str]]]
    client_id: str = "verda-client-id"
    client_secret: str = "verda-client-secret-0123456789"
    expires_in: int = 3600
    latency_s: float = 0.0
    #: market -> answers served to that market's availability call before the normal one
    availability_faults: dict[str, list[FakeResponse]] = field(default_factory=dict)
    valid_access: set[str] = field(default_factory=set)
    valid_refresh: set[str] = field(default_factory=set)
    token_grants: list[str] = field(default_factory=list)
    _serial: itertools.count[int] = field(default_factory=lambda: itertools.count(1))
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        self.server.route("POST", TOKEN_PATH, self.token)
        self.server.route("GET", TYPES_PATH, self.instance_types)
        self.server.route("GET", AVAILABILITY_PATH, self.availability)

    @property
    def url(self) -> str:
        return self.server.url

    def expire_access_tokens(self) -> None:
        """Every access token issued so far now answers 401 (server-side expiry)."""
        with self._lock:
            self.valid_access.clear()

    def data_requests(self) -> list[FakeRequest]:
        return [r for r in self.server.requests if r.path != TOKEN_PATH]

    # ------------------------------------------------------------------------ serving

    def _sleep(self) -> None:
        if self.latency_s:
            time.sleep(self.latency_s)

    def token(self, req: FakeRequest) -> FakeResponse:
        self._sleep()
        body = req.json() or {}
        grant = body.get("grant_type")
        with self._lock:
            self.token_grants.append(str(grant))
            if grant == "client_credentials":
                ok = (body.get("client_id"), body.get("client_secret")) == (
                    self.client_id,
                    self.client_secret,
                )
            elif grant == "refresh_token":
                ok = body.get("refresh_token") in self.valid_refresh
                self.valid_refresh.discard(body.get("refresh_token"))
            else:
                return FakeResponse(400, json={"code": "invalid_request", "message": "bad grant"})
            if not ok:
                return FakeResponse(
                    401, json={"code": "unauthorized_request", "message": "Invalid credentials"}
                )
            n = next(self._serial)
            access, refresh = f"access-{n}-abcdef0123456789", f"refresh-{n}-abcdef0123456789"
            self.valid_access.add(access)
            self.valid_refresh.add(refresh)
        return FakeResponse(
            json={
                "access_token": access,
                "refresh_token": refresh,
                "scope": "cloud-api-v1",
                "token_type": "Bearer",
                "expires_in": self.expires_in,
            }
        )

    def _authorised(self, req: FakeRequest) -> FakeResponse | None:
        auth = req.headers.get("authorization", "")
        with self._lock:
            ok = auth.startswith("Bearer ") and auth[len("Bearer ") :] in self.valid_access
        if ok:
            return None
        return FakeResponse(
            401, json={"code": "unauthorized_request", "message": "Access token is invalid"}
        )

    def instance_types(self, req: FakeRequest) -> FakeResponse:
        self._sleep()
        denied = self._authorised(req)
        if denied:
            return denied
        currency = req.param("currency") or "usd"
        rows = []
        for t in self.types:
            row = t.row()
            row["currency"] = currency if t.currency == "usd" else t.currency
            rows.append(row)
        return FakeResponse(json=rows)

    def availability(self, req: FakeRequest) -> FakeResponse:
        self._sleep()
        denied = self._authorised(req)
        if denied:
            return denied
        flag = req.param("is_spot") or req.param("isSpot") or "false"
        market = "spot" if flag == "true" else "on_demand"
        with self._lock:
            queued = self.availability_faults.get(market)
            if queued:
                return queued.pop(0)
        location = req.param("location_code")
        per_location = self.available.get(market, {})
        return FakeResponse(
            json=[
                {"location_code": loc, "availabilities": list(types)}
                for loc, types in per_location.items()
                if location is None or loc == location
            ]
        )
