"""The Verda adapter against a fake Verda API (OAuth2 + REST) over a real socket.

Verda's availability is one call per market covering every location, and nothing is
paginated, so "a page failing mid-pagination" does not exist here; its equivalent, one
market's availability call failing while the other answers, is tested per fault.
"""

from __future__ import annotations

import logging
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, select

from broker.config import Settings, VerdaSettings
from broker.db import session_scope
from broker.domain import Availability, Market, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll, unrecognised_of
from providers.base import ProviderDisabled
from providers.verda import Verda, gpu_candidates
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port
from tests.fakes.verda_api import TOKEN_PATH, TYPES_PATH, VerdaFake, VerdaType

CLIENT_ID = "verda-client-id-0001"
SECRET = "vsecret_0123456789abcdefSECRET"
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
OD, SPOT = Scope("verda", market=Market.ON_DEMAND), Scope("verda", market=Market.SPOT)


class Clock:
    def __init__(self) -> None:
        self.now = T0

    def __call__(self) -> datetime:
        return self.now

    def tick(self, minutes: int = 5) -> None:
        self.now += timedelta(minutes=minutes)


def adapter(
    url: str,
    *,
    clock: Clock | None = None,
    waits: list[float] | None = None,
    secret: str = SECRET,
    **settings: Any,
) -> Verda:
    opts: dict[str, Any] = {"timeout_s": 0.3, "max_attempts": 1, "base_url": url}
    opts.update(settings)
    return Verda(
        CLIENT_ID,
        secret,
        VerdaSettings(**opts),
        clock=clock or Clock(),
        sleep=(waits if waits is not None else []).append,
        backoff_base_s=0.01,
    )


V = VerdaType
H100X8 = V(
    "8H100.80S.176V",
    "H100",
    "H100 SXM5 80GB",
    "8x H100 SXM5 80GB",
    8,
    640,
    176,
    1480,
    "21.5200",
    "8.9600",
)
H100X1 = V(
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
)
A100_40 = V(
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
)
A100_80 = V(
    "8A100.176V", "A100", "A100 SXM4 80GB", "8x A100 SXM4 80GB", 8, 640, 176, 960, "10.3200", None
)
V100 = V(
    "1V100.6V", "V100", "Tesla V100 16GB", "1x Tesla V100 16GB", 1, 16, 6, 23, "0.1400", "0.0500"
)
MYSTERY = V(
    "1QF9000.8V",
    "QF9000",
    "QuantumFlux 9000",
    "1x QuantumFlux 9000 24GB",
    1,
    24,
    8,
    32,
    "0.5000",
    "0.2000",
)
CPU = V("CPU.4V.16G", "", "CPU Node", "", 0, 0, 4, 16, "0.0300", "0.0100", manufacturer="AMD")


def market() -> list[VerdaType]:
    return [H100X8, H100X1, A100_40, A100_80, V100, MYSTERY, CPU]


def available() -> dict[str, dict[str, list[str]]]:
    return {
        "on_demand": {
            "FIN-01": ["8H100.80S.176V", "1A100.40S.22V", "CPU.4V.16G", "1QF9000.8V"],
            "FIN-03": ["1H100.80S.30V", "8A100.176V", "1V100.6V"],
            "ICE-01": ["8H100.80S.176V"],
            "NEW-01": ["1V100.6V"],  # a location the region table does not know
        },
        "spot": {
            "FIN-01": ["1H100.80S.30V", "8A100.176V"],  # 8A100 has no spot price
            "FIN-02": ["1A100.40S.22V", "UNLISTED.1V"],
        },
    }


@pytest.fixture
def fake(fake_http: FakeHttpServer) -> VerdaFake:
    return VerdaFake(fake_http, market(), available(), client_id=CLIENT_ID, client_secret=SECRET)


def key(region: str, itype: str, market_: str) -> str:
    return f"verda/{region}/{itype}/{market_}"


# ------------------------------------------------------------------------------ parsing


def test_offers_per_listed_type_location_and_market(fake: VerdaFake) -> None:
    result = adapter(fake.url).fetch()
    assert result.scope_errors == []
    assert sorted(map(str, result.scopes_ok)) == sorted(map(str, [OD, SPOT]))
    by_key = {o.key: o for o in result.offers}
    assert sorted(by_key) == sorted(
        [
            key("FIN-01", "8H100.80S.176V", "on_demand"),
            key("FIN-01", "1A100.40S.22V", "on_demand"),
            key("FIN-03", "1H100.80S.30V", "on_demand"),
            key("FIN-03", "8A100.176V", "on_demand"),
            key("FIN-03", "1V100.6V", "on_demand"),
            key("ICE-01", "8H100.80S.176V", "on_demand"),
            key("NEW-01", "1V100.6V", "on_demand"),
            key("FIN-01", "1QF9000.8V", "on_demand"),  # unknown GPU: kept, no model
            key("FIN-01", "1H100.80S.30V", "spot"),
            key("FIN-02", "1A100.40S.22V", "spot"),
        ]
    )
    h100 = by_key[key("ICE-01", "8H100.80S.176V", "on_demand")]
    assert (h100.gpu_model, h100.form_factor, h100.gpu_family) == ("H100-SXM", "SXM", "H100")
    assert h100.gpu_count == Decimal(8)
    assert h100.price_per_hour == Decimal("21.5200")
    assert h100.price_per_gpu_hour == Decimal("21.52") / 8  # 2.69, from the fixture string
    assert (h100.gpu_memory_gb, h100.vcpus, h100.memory_gb) == (
        Decimal(80),
        Decimal(176),
        Decimal(1480),
    )
    assert (h100.country, h100.jurisdiction, h100.continent) == ("IS", "EU", "Europe")
    assert (h100.availability, h100.available_count) == (Availability.AVAILABLE, None)
    assert h100.raw["location_code"] == "ICE-01"
    assert h100.raw["price_per_hour"] == "21.5200"

    fin = by_key[key("FIN-01", "8H100.80S.176V", "on_demand")]
    assert (fin.country, fin.jurisdiction) == ("FI", "EU")

    a100_40 = by_key[key("FIN-01", "1A100.40S.22V", "on_demand")]
    assert (a100_40.gpu_model, a100_40.gpu_memory_gb) == ("A100", Decimal(40))
    a100_80 = by_key[key("FIN-03", "8A100.176V", "on_demand")]
    assert (a100_80.gpu_model, a100_80.gpu_memory_gb) == ("A100-80GB", Decimal(80))
    assert a100_80.price_per_gpu_hour == Decimal("1.290000")
    v100 = by_key[key("FIN-03", "1V100.6V", "on_demand")]
    assert (v100.gpu_model, v100.price_per_hour) == ("V100", Decimal("0.14"))

    spot = by_key[key("FIN-01", "1H100.80S.30V", "spot")]
    assert (spot.market, spot.price_per_hour) == (Market.SPOT, Decimal("1.12"))

    unknown_place = by_key[key("NEW-01", "1V100.6V", "on_demand")]
    assert (unknown_place.country, unknown_place.jurisdiction) == (None, None)
    assert any("'NEW-01' not in broker/data/regions.csv" in n for n in result.notes)

    assert result.skipped == {"no_gpu": 1, "no_price": 1, "unlisted_type": 1}
    assert result.capacity_by_presence == frozenset(
        ("verda", t.instance_type) for t in (H100X8, H100X1, A100_40, A100_80, V100, MYSTERY)
    )


def test_unknown_gpu_and_unknown_location_are_kept_without_model_or_location(
    fake: VerdaFake,
) -> None:
    fake.available["on_demand"]["NEW-01"] = ["1V100.6V", "1QF9000.8V"]
    result = adapter(fake.url).fetch()
    by_key = {o.key: o for o in result.offers}
    for region, country in (("FIN-01", "FI"), ("NEW-01", None)):
        odd = by_key[key(region, "1QF9000.8V", "on_demand")]
        assert (odd.gpu_model, odd.gpu_name_raw) == (None, "QuantumFlux 9000 24GB")
        assert (odd.gpu_family, odd.gpu_vendor, odd.accelerator_kind) == (None, None, None)
        assert (odd.gpu_count, odd.gpu_memory_gb) == (Decimal(1), Decimal(24))
        assert odd.price_per_hour == Decimal("0.5")
        assert odd.country == country
    assert by_key[key("NEW-01", "1V100.6V", "on_demand")].gpu_model == "V100"
    assert "unknown_gpu" not in result.skipped
    assert unrecognised_of(result.offers) == {
        "verda": {"regions": {"NEW-01": 2}, "gpu_names": {"QuantumFlux 9000 24GB": 2}}
    }


def test_gpu_name_candidates_most_specific_first() -> None:
    row = {"gpu": {"description": "8x H100 SXM5 80GB"}, "name": "H100 SXM5 80GB", "model": "H100"}
    assert gpu_candidates(row) == ["H100 SXM5 80GB", "H100 SXM5", "H100"]


def test_requests_token_bearer_and_market_flags(fake: VerdaFake) -> None:
    verda = adapter(fake.url, max_concurrency=1)  # JsonApi.calls is not atomic across threads
    verda.fetch()
    (token_req,) = [r for r in fake.server.requests if r.path == TOKEN_PATH]
    assert token_req.json() == {
        "grant_type": "client_credentials",
        "client_id": CLIENT_ID,
        "client_secret": SECRET,
    }
    data = fake.data_requests()
    assert len(data) == 3 and verda.calls == 4
    assert {r.headers["authorization"] for r in data} == {"Bearer access-1-abcdef0123456789"}
    (types_req,) = [r for r in data if r.path == TYPES_PATH]
    assert types_req.param("currency") == "usd"
    flags = sorted((r.param("is_spot"), r.param("isSpot")) for r in data if r.path != TYPES_PATH)
    assert flags == [("false", "false"), ("true", "true")]


def test_from_settings_needs_both_credentials() -> None:
    with pytest.raises(
        ProviderDisabled, match="BROKER_VERDA__CLIENT_ID and BROKER_VERDA__CLIENT_SECRET"
    ):
        Verda.from_settings(Settings(), Clock())
    with pytest.raises(ProviderDisabled):
        Verda.from_settings(Settings(verda={"client_id": CLIENT_ID}), Clock())
    with pytest.raises(ProviderDisabled):
        Verda.from_settings(Settings(verda={"client_secret": SECRET}), Clock())
    built = Verda.from_settings(
        Settings(verda={"client_id": CLIENT_ID, "client_secret": SECRET}), Clock()
    )
    assert isinstance(built, Verda) and Verda.name == "verda"


# ---------------------------------------------------------------------- the token


def test_token_is_cached_until_it_expires_then_refreshed(fake: VerdaFake) -> None:
    clock = Clock()
    verda = adapter(fake.url, clock=clock)
    verda.fetch()
    clock.tick(30)
    verda.fetch()
    assert fake.token_grants == ["client_credentials"]
    clock.tick(31)  # past expires_in (3600 s) minus the margin
    result = verda.fetch()
    assert fake.token_grants == ["client_credentials", "refresh_token"]
    assert result.scope_errors == [] and len(result.offers) == 10


def test_a_401_on_a_data_call_refreshes_once_then_succeeds(fake: VerdaFake) -> None:
    clock = Clock()
    verda = adapter(fake.url, clock=clock)
    verda.fetch()
    fake.expire_access_tokens()  # revoked server-side, long before expires_in
    result = verda.fetch()
    assert result.scope_errors == [] and len(result.offers) == 10
    assert fake.token_grants == ["client_credentials", "refresh_token"]


def test_a_refused_refresh_falls_back_to_client_credentials(fake: VerdaFake) -> None:
    clock = Clock()
    verda = adapter(fake.url, clock=clock)
    verda.fetch()
    fake.expire_access_tokens()
    fake.valid_refresh.clear()
    result = verda.fetch()
    assert result.scope_errors == []
    assert fake.token_grants == ["client_credentials", "refresh_token", "client_credentials"]


def test_a_data_call_refused_after_the_refresh_is_auth_failed(fake: VerdaFake) -> None:
    fake.server.fail(
        "GET",
        TYPES_PATH,
        *[FakeResponse(403, json={"code": "forbidden_action", "message": "no access"})] * 2,
    )
    result = adapter(fake.url).fetch()
    (err,) = result.scope_errors
    assert (err.scope, err.code) == (Scope("verda"), "auth_failed")
    assert len(fake.token_grants) == 2


@pytest.mark.parametrize("secret", ["wrong-secret-0123456789"])
def test_token_endpoint_401_is_auth_failed_and_never_echoed(fake: VerdaFake, secret: str) -> None:
    result = adapter(fake.url, secret=secret).fetch()
    (err,) = result.scope_errors
    assert (err.scope, err.code) == (Scope("verda"), "auth_failed")
    assert secret not in err.message
    assert fake.data_requests() == []


def test_token_endpoint_400_is_auth_failed(fake: VerdaFake) -> None:
    fake.server.fail(
        "POST", TOKEN_PATH, FakeResponse(400, json={"code": "invalid_client", "message": "no"})
    )
    (err,) = adapter(fake.url).fetch().scope_errors
    assert err.code == "auth_failed"


def test_token_answer_without_access_token_is_malformed(fake: VerdaFake) -> None:
    fake.server.fail("POST", TOKEN_PATH, FakeResponse(json={"token_type": "Bearer"}))
    (err,) = adapter(fake.url).fetch().scope_errors
    assert err.code == "malformed"


# -------------------------------------------------------------- catalogue faults


def _failed_whole(result: PollResult, code: str) -> None:
    assert list(result.offers) == []
    assert list(result.scopes_ok) == []
    (err,) = result.scope_errors
    assert err.scope == Scope("verda")
    assert err.code == code, err.message
    assert SECRET not in err.message


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (FakeResponse(delay_s=1.0, json=[]), "timeout"),
        (FakeResponse(503, json={"code": "service_unavailable", "message": "down"}), "unavailable"),
        (FakeResponse(body=b'[{"instance_type": "1V100.6V", "price_per_hour": '), "malformed"),
        (FakeResponse(json=[H100X8.row()] * 40, truncate=True), "any"),
        (FakeResponse(json={"instance_types": []}), "malformed"),
        (FakeResponse(json=[{**V100.row(), "price_per_hour": "cheap"}]), "malformed"),
        (FakeResponse(drop=True), "unavailable"),
    ],
    ids=["timeout", "5xx", "malformed-json", "truncated", "wrong-shape", "bad-price", "dropped"],
)
def test_catalogue_fault_fails_the_poll_and_returns(
    fake: VerdaFake, response: FakeResponse, code: str
) -> None:
    fake.server.fail("GET", TYPES_PATH, response)
    result = adapter(fake.url).fetch()
    if code == "any":
        assert result.scope_errors[0].code in ("unavailable", "malformed")
        code = result.scope_errors[0].code
    _failed_whole(result, code)


def test_connection_refused_fails_the_poll() -> None:
    _failed_whole(adapter(f"http://127.0.0.1:{closed_port()}").fetch(), "unavailable")


def test_429_retry_after_is_honoured_then_succeeds(fake: VerdaFake) -> None:
    fake.server.fail("GET", TYPES_PATH, FakeResponse(429, json={}, headers={"Retry-After": "4"}))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=2).fetch()
    assert waits == [4.0]
    assert result.scope_errors == [] and len(result.offers) == 10


def test_429_retry_after_beyond_the_bound_fails_at_once(fake: VerdaFake) -> None:
    fake.server.fail("GET", TYPES_PATH, FakeResponse(429, json={}, headers={"Retry-After": "600"}))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3, max_retry_after_s=30).fetch()
    assert waits == []
    _failed_whole(result, "rate_limited")
    assert result.scope_errors[0].retry_after_s == 600.0


def test_token_endpoint_5xx_is_retried(fake: VerdaFake) -> None:
    fake.server.fail("POST", TOKEN_PATH, FakeResponse(502, body=b"bad gateway"))
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=2).fetch()
    assert waits == [0.01]
    assert result.scope_errors == []


# -------------------------------------------------------- one market failing


@pytest.mark.parametrize(
    ("response", "code"),
    [
        (FakeResponse(delay_s=1.0, json=[]), "timeout"),
        (FakeResponse(500, json={"code": "server_error", "message": "oops"}), "unavailable"),
        (FakeResponse(429, json={}, headers={"Retry-After": "300"}), "rate_limited"),
        (FakeResponse(body=b"<html>maintenance</html>"), "malformed"),
        (
            FakeResponse(
                json=[{"location_code": "FIN-01", "availabilities": ["x"] * 300}], truncate=True
            ),
            "any",
        ),
        (FakeResponse(json=[{"location": "FIN-01"}]), "malformed"),
        (FakeResponse(400, json={"code": "invalid_request", "message": "is_spot?"}), "rejected"),
    ],
    ids=["timeout", "5xx", "429-too-long", "malformed", "truncated", "wrong-shape", "4xx"],
)
def test_spot_failing_leaves_on_demand(fake: VerdaFake, response: FakeResponse, code: str) -> None:
    fake.availability_faults["spot"] = [response]
    result = adapter(fake.url).fetch()
    (err,) = result.scope_errors
    assert err.scope == SPOT
    if code == "any":
        assert err.code in ("unavailable", "malformed")
    else:
        assert err.code == code, err.message
    assert SECRET not in err.message
    assert list(result.scopes_ok) == [OD]
    assert {o.market for o in result.offers} == {Market.ON_DEMAND}
    assert len(result.offers) == 8


def test_availability_429_with_short_retry_after_is_retried(fake: VerdaFake) -> None:
    fake.availability_faults["on_demand"] = [
        FakeResponse(429, json={}, headers={"Retry-After": "1.5"})
    ]
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=2).fetch()
    assert waits == [1.5]
    assert result.scope_errors == [] and len(result.offers) == 10


def test_secrets_and_tokens_never_in_logs_or_errors(
    fake: VerdaFake, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    clock = Clock()
    verda = adapter(fake.url, clock=clock, max_attempts=2)
    verda.fetch()
    token = verda.tokens.access
    assert token is not None
    fake.availability_faults["spot"] = [
        FakeResponse(503, json={"code": "x", "message": f"token {token} secret {SECRET}"})
    ] * 2
    fake.availability_faults["on_demand"] = [
        FakeResponse(400, json={"code": "x", "message": f"Bearer {token}"})
    ]
    result = verda.fetch()
    assert {e.scope for e in result.scope_errors} == {OD, SPOT}
    assert "provider.retry" in caplog.text
    for text in [caplog.text, *(e.message for e in result.scope_errors)]:
        assert SECRET not in text
        assert token not in text
        assert "refresh-1" not in text
    for o in result.offers:
        assert SECRET not in repr(o.raw) and token not in repr(o.raw)
    bad = adapter(fake.url, secret="wrong-" + SECRET).fetch()
    assert SECRET not in bad.scope_errors[0].message and SECRET not in caplog.text


# ------------------------------------------------------------------------ ingest level


def _ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="verda").events)


def _offer(engine: Engine, offer_key: str) -> tuple[bool, str]:
    with Session(engine) as session:
        row = session.exec(select(StoredOffer).where(StoredOffer.key == offer_key)).one()
        return row.active, row.availability


def test_ingest_degrades_recovers_and_tracks_availability(engine: Engine, fake: VerdaFake) -> None:
    clock = Clock()
    verda = adapter(fake.url, clock=clock)
    assert _ingest(engine, verda.fetch()) == {"offer_appeared": 10}

    # The spot call fails: spot offers stay active, on-demand is still covered.
    clock.tick()
    fake.availability_faults["spot"] = [FakeResponse(500, json={})]
    fake.available["spot"]["FIN-01"] = []  # would look sold out, were spot covered
    assert _ingest(engine, verda.fetch()) == {"provider_degraded": 1}
    spot_key = key("FIN-01", "1H100.80S.30V", "spot")
    assert _offer(engine, spot_key) == (True, "available")

    # Recovered: the spot H100 is no longer listed (sold out, not withdrawn), and the
    # 8×H100 leaves ICE-01's on-demand list.
    clock.tick()
    fake.available["on_demand"]["ICE-01"] = []
    assert _ingest(engine, verda.fetch()) == {"provider_recovered": 1, "availability_changed": 2}
    assert _offer(engine, spot_key) == (True, "unavailable")
    ice = key("ICE-01", "8H100.80S.176V", "on_demand")
    assert _offer(engine, ice) == (True, "unavailable")

    # Capacity comes back in ICE-01; the V100 leaves the catalogue (withdrawn).
    clock.tick()
    fake.available["on_demand"]["ICE-01"] = ["8H100.80S.176V"]
    fake.types = [t for t in fake.types if t.instance_type != "1V100.6V"]
    assert _ingest(engine, verda.fetch()) == {"availability_changed": 1, "offer_withdrawn": 2}
    assert _offer(engine, ice) == (True, "available")
    with Session(engine) as session:
        withdrawn = session.exec(
            select(MarketEvent).where(MarketEvent.type == "offer_withdrawn")
        ).all()
    assert sorted(e.offer_key or "" for e in withdrawn) == [
        key("FIN-03", "1V100.6V", "on_demand"),
        key("NEW-01", "1V100.6V", "on_demand"),
    ]
