"""The Vast.ai adapter against a fake search API over a real socket (httpx → 127.0.0.1).

Vast answers a whole market per search, without pages: the partial-answer fault here is a
search that hits its `limit` (maybe cut), and the "one scope failing" fault is one market's
search failing while the other's works.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from broker.config import Settings, VastSettings
from broker.db import session_scope
from broker.domain import Availability, Market, PollResult, Scope
from broker.models import MarketEvent, StoredOffer
from broker.offers import ingest_poll, unrecognised_of
from providers.base import ProviderDisabled, get_provider_class
from providers.vast import Vast, instance_type_of, locate
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port, serve
from tests.fakes.vast_api import PATH, RATE_LIMITED, VastFake, listing

SECRET = "vast-0123456789abcdef0123456789abcdef"
T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
ON_DEMAND = Scope("vast", market=Market.ON_DEMAND)
SPOT = Scope("vast", market=Market.SPOT)


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
    key: str = SECRET,
    limit: int = 10_000,
    **settings: Any,
) -> Vast:
    opts: dict[str, Any] = {"timeout_s": 0.5, "max_attempts": 1, "base_url": url}
    opts.update(settings)
    return Vast(
        key,
        VastSettings(**opts),
        clock=clock or Clock(),
        sleep=(waits if waits is not None else []).append,
        monotonic=lambda: 1000.0,  # time stands still: every pacing wait is a full interval
        limit=limit,
    )


def sample_listings() -> list[dict[str, Any]]:
    return [
        listing(23456789, 41234, "H100 SXM", 8, 15.46, gpu_ram=81559, min_bid=9.6, dph_base=15.2),
        listing(23456790, 41234, "H100 SXM", 4, 7.74, gpu_ram=81559, min_bid=4.8, gpu_frac=0.5),
        listing(30000001, 50001, "A100 SXM4", 8, 8.81, gpu_ram=81920, geolocation="Germany, DE"),
        listing(30000002, 50002, "A100 PCIE", 1, 0.81, gpu_ram=40960, geolocation="Florida, US"),
        listing(30000003, 50003, "RTX 4090", 1, 0.36, gpu_ram=24564, geolocation="US"),
        listing(30000004, 50004, "RTX 4090", 2, 0.71, gpu_ram=24564, geolocation=", CA"),
        listing(30000005, 50005, "L40S", 1, 0.72, gpu_ram=46068, geolocation="Switzerland, CH"),
        listing(30000006, 50006, "RTX 3090", 1, 0.21, gpu_ram=24576, geolocation=None),
        # Two 1-GPU chunks of one machine: one offer, two available.
        listing(30000007, 50007, "RTX 5090", 1, 0.61, gpu_ram=32607, geolocation="Norway, NO"),
        listing(30000008, 50007, "RTX 5090", 1, 0.59, gpu_ram=32607, geolocation="Norway, NO"),
        # Kept without a model: a GPU the catalogue does not know. Skipped: a rented listing.
        listing(30000009, 50009, "GTX 1080 Ti", 1, 0.09, gpu_ram=11264, geolocation="Earth"),
        listing(30000010, 50010, "RTX 4090", 1, 0.30, rented=True),
    ]


@pytest.fixture(scope="module")
def shared_server() -> Iterator[FakeHttpServer]:
    """One server for the module (its shutdown costs half a second), reset per test."""
    yield from serve()


@pytest.fixture
def fake_http(shared_server: FakeHttpServer) -> FakeHttpServer:
    shared_server.routes.clear()
    shared_server.faults.clear()
    shared_server.requests.clear()
    return shared_server


@pytest.fixture
def fake(fake_http: FakeHttpServer) -> VastFake:
    listings = sample_listings()
    return VastFake(fake_http, SECRET, on_demand=listings, bid=[dict(x) for x in listings])


# ------------------------------------------------------------------------------ parsing


def test_offers_from_the_documented_answer(fake: VastFake) -> None:
    waits: list[float] = []
    result = adapter(fake.url, waits=waits).fetch()
    assert list(result.scope_errors) == []
    assert list(result.scopes_ok) == [ON_DEMAND, SPOT]
    assert dict(result.skipped) == {"not_rentable": 2}
    by_key = {o.key: o for o in result.offers}
    assert len(by_key) == 2 * 10

    h100 = by_key["vast/SE/8x-H100_SXM-m41234/on_demand"]
    assert (h100.gpu_model, h100.form_factor, h100.gpu_count) == ("H100-SXM", "SXM", Decimal(8))
    assert h100.price_per_hour == Decimal("15.46")  # dph_total
    assert h100.price_per_gpu_hour == (Decimal("15.46") / 8).quantize(Decimal("0.000001"))
    assert h100.gpu_memory_gb == Decimal("79.65")  # 81559 MiB per GPU
    assert (h100.availability, h100.available_count) == (Availability.AVAILABLE, 1)
    assert (h100.region, h100.country, h100.jurisdiction, h100.continent) == (
        "SE",
        "SE",
        "EU",
        "Europe",
    )
    assert h100.raw["offer_id"] == 23456789
    assert h100.raw["machine_id"] == 41234
    assert h100.raw["geolocation"] == "Sweden, SE"
    assert {"reliability2", "verification", "dph_base", "storage_cost", "inet_up"} <= set(h100.raw)
    spot = by_key["vast/SE/8x-H100_SXM-m41234/spot"]
    assert spot.market == Market.SPOT
    # min_bid (the interruptible floor) + the same 5 GB of disk dph_total includes:
    # storage_cost 0.15 USD per GB-month × 5 GB / 720 h.
    storage = Decimal("0.15") * 5 / 720
    assert spot.price_per_hour == (Decimal("9.6") + storage).quantize(Decimal("0.000001"))
    assert spot.raw["storage_per_hour"] == str(storage.quantize(Decimal("0.000001")))
    # The half-machine chunk is its own offer.
    half = by_key["vast/SE/4x-H100_SXM-m41234/on_demand"]
    assert (half.gpu_count, half.price_per_hour) == (Decimal(4), Decimal("7.74"))

    models = {o.instance_type: o.gpu_model for o in result.offers}
    assert models["8x-A100_SXM4-m50001"] == "A100-80GB"  # 81920 MiB
    assert models["1x-A100_PCIE-m50002"] == "A100"  # 40960 MiB
    assert models["1x-L40S-m50005"] == "L40S"

    places = {o.instance_type: (o.region, o.country, o.jurisdiction) for o in result.offers}
    assert places["1x-A100_PCIE-m50002"] == ("US", "US", "US")
    assert places["1x-RTX_4090-m50003"] == ("US", "US", "US")
    assert places["2x-RTX_4090-m50004"] == ("CA", "CA", "CA")
    assert places["1x-L40S-m50005"] == ("CH", "CH", "CH")  # Europe, not the EU
    assert places["1x-RTX_5090-m50007"] == ("NO", "NO", "EU")  # EEA
    # No geolocation: no location is guessed.
    assert places["1x-RTX_3090-m50006"] == ("unknown", None, None)
    assert any("geolocation" in n and "30000006" in n for n in result.notes)

    chunks = by_key["vast/NO/1x-RTX_5090-m50007/on_demand"]
    assert chunks.available_count == 2
    assert chunks.price_per_hour == Decimal("0.59")  # the cheaper of the two listings
    assert chunks.raw["offer_ids"] == [30000007, 30000008]

    # What went over the wire: two searches, the CLI's default filters, Bearer auth.
    bodies = fake.bodies
    assert [b["type"] for b in bodies] == ["on-demand", "bid"]
    for body in bodies:
        assert body["verified"] == {"eq": True}
        assert body["rentable"] == {"eq": True}
        assert body["rented"] == {"eq": False}
        assert body["external"] == {"eq": False}
        assert body["limit"] == 10_000
    for req in fake.server.requests:
        assert (req.method, req.path) == ("POST", PATH)
        assert req.headers["authorization"] == f"Bearer {SECRET}"
    # The second search waited out the endpoint's minimum interval.
    assert waits == [6.0]


@pytest.mark.parametrize(
    ("geolocation", "where"),
    [
        ("Sweden, SE", ("SE", "SE", "EU", "Europe")),
        ("Sverdlovsk Oblast, RU", ("RU", "RU", "RU", "Europe")),
        ("Taiwan, TW", ("TW", "TW", "TW", "Asia")),
        ("US", ("US", "US", "US", "North America")),
        (", CN", ("CN", "CN", "CN", "Asia")),
        ("Brazil, BR", ("BR", "BR", "BR", None)),  # no vast row for BR: no continent
        ("", ("unknown", None, None, None)),
        ("Earth", ("unknown", None, None, None)),
        (None, ("unknown", None, None, None)),
    ],
)
def test_locate(geolocation: str | None, where: tuple[str, ...]) -> None:
    loc = locate(geolocation)
    assert (loc.region, loc.country, loc.jurisdiction, loc.continent) == where


def test_unknown_gpu_and_unknown_place_are_kept_without_model_or_location(
    fake: VastFake,
) -> None:
    result = adapter(fake.url).fetch()
    by_key = {o.key: o for o in result.offers}
    for market in ("on_demand", "spot"):
        odd = by_key[f"vast/unknown/1x-GTX_1080_Ti-m50009/{market}"]
        assert (odd.gpu_model, odd.gpu_name_raw) == (None, "GTX 1080 Ti")
        assert (odd.gpu_family, odd.gpu_vendor, odd.accelerator_kind) == (None, None, None)
        assert odd.gpu_memory_gb == Decimal("11.00")  # gpu_ram as Vast states it
        assert (odd.country, odd.jurisdiction, odd.continent) == (None, None, None)
    assert by_key["vast/unknown/1x-GTX_1080_Ti-m50009/on_demand"].price_per_hour == Decimal("0.09")
    assert "unknown_gpu" not in result.skipped
    assert unrecognised_of(result.offers) == {
        "vast": {"regions": {"unknown": 4}, "gpu_names": {"GTX 1080 Ti": 2}}
    }


def test_memory_is_the_listing_share_of_the_machine_ram(fake: VastFake) -> None:
    fake.on_demand = [
        # The documented example: 64 cores, 32 effective, 65536 MB for the whole machine.
        listing(1, 11, "H100 SXM", 8, 15.46, gpu_ram=81559),
        # A quarter of the machine's CPUs: a quarter of its RAM.
        listing(2, 12, "H100 SXM", 2, 3.9, gpu_ram=81559, cpu_cores_effective=16.0),
        # No cpu_cores: the share is unknown.
        listing(3, 13, "H100 SXM", 1, 1.9, gpu_ram=81559, cpu_cores=None),
    ]
    fake.bid = []
    result = adapter(fake.url).fetch()
    memory = {o.instance_type: o.memory_gb for o in result.offers}
    assert memory == {
        "8x-H100_SXM-m11": Decimal("32.77"),  # 65536 MB × 32 / 64 / 1000
        "2x-H100_SXM-m12": Decimal("16.38"),  # 65536 MB × 16 / 64 / 1000
        "1x-H100_SXM-m13": None,
    }
    assert {o.vcpus for o in result.offers} == {Decimal("32.0"), Decimal("16.0")}


def test_spot_prices_include_storage_as_on_demand_does(fake: VastFake) -> None:
    fake.on_demand = []
    fake.bid = [
        listing(1, 11, "RTX 4090", 1, 0.36, min_bid=0.2, storage_cost=0.3),
        listing(2, 12, "RTX 4090", 1, 0.36, min_bid=0.2),
    ]
    del fake.bid[1]["storage_cost"]
    result = adapter(fake.url).fetch()
    (spot,) = result.offers
    # 0.2 USD/h bid + 0.3 USD per GB-month × 5 GB / 720 h of disk.
    assert spot.price_per_hour == Decimal("0.202083")
    assert dict(result.skipped) == {"no_storage_cost:spot": 1}


def test_instance_type_is_per_machine_not_per_ask() -> None:
    assert instance_type_of("H100 SXM", 8, 41234) == "8x-H100_SXM-m41234"
    assert instance_type_of("RTX 6000Ada", 2, 7) == "2x-RTX_6000Ada-m7"


# ------------------------------------------------------------------------------ faults


def assert_scope_failed(result: PollResult, scope: Scope, code: str, *fragments: str) -> None:
    errors = {e.scope: e for e in result.scope_errors}
    assert scope in errors, result.scope_errors
    err = errors[scope]
    assert err.code == code, err
    assert SECRET not in err.message
    for fragment in fragments:
        assert fragment in err.message, err.message
    assert scope not in result.scopes_ok
    assert all(o.market != scope.market for o in result.offers)


def test_timeout(fake: VastFake) -> None:
    fake.fail["on-demand"] = FakeResponse(delay_s=1.0, json={"offers": []})
    result = adapter(fake.url, timeout_s=0.2).fetch()
    assert_scope_failed(result, ON_DEMAND, "timeout", "0.2s")
    assert list(result.scopes_ok) == [SPOT]
    assert len(result.offers) == 10


def test_connection_refused() -> None:
    result = adapter(f"http://127.0.0.1:{closed_port()}").fetch()
    assert_scope_failed(result, ON_DEMAND, "unavailable", "connection failed")
    assert_scope_failed(result, SPOT, "unavailable", "connection failed")
    assert list(result.offers) == []


def test_5xx_in_one_market_keeps_the_other(fake: VastFake) -> None:
    fake.fail["bid"] = FakeResponse(502, body=b"<html>Bad Gateway</html>")
    result = adapter(fake.url).fetch()
    assert_scope_failed(result, SPOT, "unavailable", "HTTP 502", "(bid)")
    assert list(result.scopes_ok) == [ON_DEMAND]
    assert {o.market for o in result.offers} == {Market.ON_DEMAND}
    assert len(result.offers) == 10


def test_429_without_retry_after_backs_off_on_its_own(fake: VastFake) -> None:
    fake.server.fail("POST", PATH, RATE_LIMITED, RATE_LIMITED)
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3).fetch()
    assert list(result.scope_errors) == []
    assert len(result.offers) == 20
    # Backoff 6 s then 12 s (no Retry-After), then the pause before the second search.
    assert waits == [6.0, 12.0, 6.0]
    assert len(fake.server.requests) == 4


def test_429_that_persists_fails_the_scope_as_rate_limited(fake: VastFake) -> None:
    fake.server.fail("POST", PATH, *[RATE_LIMITED] * 3)
    waits: list[float] = []
    result = adapter(fake.url, waits=waits, max_attempts=3).fetch()
    assert_scope_failed(result, ON_DEMAND, "rate_limited", "429")
    assert result.scope_errors[0].retry_after_s is None
    assert list(result.scopes_ok) == [SPOT]


def test_malformed_json(fake: VastFake) -> None:
    fake.fail["on-demand"] = FakeResponse(body=b'{"offers": [{"id": 1, "machine_')
    result = adapter(fake.url).fetch()
    assert_scope_failed(result, ON_DEMAND, "malformed", "not JSON")
    assert list(result.scopes_ok) == [SPOT]


@pytest.mark.parametrize(
    "body", [{"offers": {"id": 1}}, {"result": []}, [1, 2]], ids=["dict", "no-offers", "list"]
)
def test_answer_without_an_offers_list(fake: VastFake, body: Any) -> None:
    fake.fail["on-demand"] = FakeResponse(json=body)
    result = adapter(fake.url).fetch()
    assert_scope_failed(result, ON_DEMAND, "malformed", "no 'offers' list")


def test_truncated_body(fake: VastFake) -> None:
    fake.fail["bid"] = FakeResponse(json={"offers": sample_listings()}, truncate=True)
    result = adapter(fake.url).fetch()
    assert_scope_failed(result, SPOT, "unavailable")
    assert list(result.scopes_ok) == [ON_DEMAND]


def test_bad_listings_are_skipped_not_fatal(fake: VastFake) -> None:
    fake.on_demand = [
        *sample_listings()[:2],
        "not an object",
        {"id": 5, "gpu_name": "RTX 4090"},  # no machine_id / num_gpus
        listing(6, 6, "RTX 4090", 1, 0.0),  # no price
    ]
    result = adapter(fake.url).fetch()
    assert ON_DEMAND in result.scopes_ok
    on_demand = [o for o in result.offers if o.market == Market.ON_DEMAND]
    assert len(on_demand) == 2
    assert result.skipped["malformed_offer"] == 2
    assert result.skipped["no_price:on_demand"] == 1


def test_search_hitting_its_limit_keeps_offers_but_withdraws_nothing(fake: VastFake) -> None:
    result = adapter(fake.url, limit=5).fetch()
    for scope in (ON_DEMAND, SPOT):
        assert_scope_failed_keep_offers(result, scope)
    # The 5 listings answered are real: they are still reported.
    assert len([o for o in result.offers if o.market == Market.ON_DEMAND]) == 5
    assert list(result.scopes_ok) == []


def assert_scope_failed_keep_offers(result: PollResult, scope: Scope) -> None:
    (err,) = [e for e in result.scope_errors if e.scope == scope]
    assert err.code == "incomplete"
    assert "search limit" in err.message


def test_rejected_query(fake: VastFake) -> None:
    fake.fail["on-demand"] = FakeResponse(
        400, json={"success": False, "error": "invalid_args", "msg": "bad field gpu_nam"}
    )
    result = adapter(fake.url).fetch()
    assert_scope_failed(result, ON_DEMAND, "rejected", "HTTP 400", "invalid_args")


def test_success_false_with_status_200(fake: VastFake) -> None:
    fake.fail["on-demand"] = FakeResponse(
        json={"success": False, "error": "invalid_args", "msg": "nope"}
    )
    result = adapter(fake.url).fetch()
    assert_scope_failed(result, ON_DEMAND, "rejected", "invalid_args")


@pytest.mark.parametrize("status", [401, 403])
def test_expired_or_rejected_key(
    fake: VastFake, caplog: pytest.LogCaptureFixture, status: int
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = FakeResponse(
        status, json={"success": False, "error": "auth_error", "msg": f"bad key {SECRET}"}
    )
    fake.fail["on-demand"] = echo
    fake.fail["bid"] = echo
    result = adapter(fake.url, max_attempts=3).fetch()
    assert_scope_failed(result, ON_DEMAND, "auth_failed", f"HTTP {status}")
    assert_scope_failed(result, SPOT, "auth_failed", f"HTTP {status}")
    assert len(fake.server.requests) == 2  # never retried
    assert SECRET not in caplog.text


def test_wrong_key_never_logged(fake: VastFake, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    other = "vast-expired-key-ffffffffffffffffffff"
    result = adapter(fake.url, key=other).fetch()
    assert_scope_failed(result, ON_DEMAND, "auth_failed")
    assert other not in caplog.text
    assert all(other not in e.message for e in result.scope_errors)


# ------------------------------------------------------------------------------ settings


def test_disabled_without_a_key() -> None:
    with pytest.raises(ProviderDisabled, match="BROKER_VAST__API_KEY"):
        Vast.from_settings(Settings(), Clock())


def test_from_settings_reads_the_environment(
    fake: VastFake, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("BROKER_VAST__API_KEY", SECRET)
    monkeypatch.setenv("BROKER_VAST__BASE_URL", fake.url)
    cls = get_provider_class("vast")
    assert cls is Vast
    provider = cls.from_settings(Settings(), Clock())
    assert isinstance(provider, Vast)
    provider.sleep = lambda s: None  # the real pacing would wait 6 s
    result = provider.fetch()
    assert list(result.scope_errors) == []
    assert len(result.offers) == 20


# ------------------------------------------------------------------------------ ingest


def ingest(engine: Engine, result: PollResult) -> dict[str, int]:
    with session_scope(engine) as session:
        return dict(ingest_poll(session, result, source="vast").events)


def active_keys(engine: Engine) -> set[str]:
    with Session(engine) as session:
        rows = session.exec(
            select(StoredOffer).where(
                StoredOffer.provider == "vast", col(StoredOffer.active).is_(True)
            )
        ).all()
    return {r.key for r in rows}


def test_degraded_market_keeps_its_offers_then_recovers(engine: Engine, fake: VastFake) -> None:
    clock = Clock()
    vast = adapter(fake.url, clock=clock)
    assert ingest(engine, vast.fetch()) == {"offer_appeared": 20}
    before = active_keys(engine)
    # The interruptible search fails: its offers stay, the provider is degraded.
    clock.tick()
    fake.fail["bid"] = FakeResponse(500, json={"success": False, "msg": "db timeout"})
    assert ingest(engine, vast.fetch()) == {"provider_degraded": 1}
    assert active_keys(engine) == before
    # Next good poll: recovered, nothing withdrawn that was merely not fetched.
    clock.tick()
    del fake.fail["bid"]
    assert ingest(engine, vast.fetch()) == {"provider_recovered": 1}
    assert active_keys(engine) == before


def test_relisted_machine_is_a_price_change_not_withdraw_and_appear(
    engine: Engine, fake: VastFake
) -> None:
    clock = Clock()
    vast = adapter(fake.url, clock=clock)
    fake.on_demand = [listing(111, 41234, "H100 SXM", 8, 15.46, gpu_ram=81559)]
    fake.bid = []
    assert ingest(engine, vast.fetch()) == {"offer_appeared": 1}
    # The host re-lists the machine: new ask id, new price.
    clock.tick()
    fake.on_demand = [listing(222, 41234, "H100 SXM", 8, 14.80, gpu_ram=81559)]
    assert ingest(engine, vast.fetch()) == {"price_changed": 1}
    # The machine is rented out: it leaves the listing, a withdrawal.
    clock.tick()
    fake.on_demand = []
    assert ingest(engine, vast.fetch()) == {"offer_withdrawn": 1}
    key = "vast/SE/8x-H100_SXM-m41234/on_demand"
    with Session(engine) as session:
        events = session.exec(
            select(MarketEvent).where(MarketEvent.offer_key == key).order_by(col(MarketEvent.id))
        ).all()
    assert [e.type for e in events] == ["offer_appeared", "price_changed", "offer_withdrawn"]
    assert events[1].after is not None
    assert events[1].after["price_per_hour"] == "14.800000"
