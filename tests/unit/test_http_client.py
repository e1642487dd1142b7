"""providers._http.JsonApi against a real local HTTP server: retries, faults, redaction."""

from __future__ import annotations

import logging

import pytest

from broker.config import ClientSettings
from providers._http import JsonApi, parse_retry_after
from providers.base import (
    AuthFailed,
    MalformedResponse,
    ProviderTimeout,
    ProviderUnavailable,
    RateLimited,
    RequestRejected,
    redact,
)
from tests.fakes.http import FakeHttpServer, FakeResponse, closed_port

SECRET = "sk-live-0123456789abcdef"


def api(url: str, waits: list[float], **overrides: float) -> JsonApi:
    settings = ClientSettings(
        timeout_s=overrides.get("timeout_s", 2.0),
        max_attempts=int(overrides.get("max_attempts", 3)),
        max_retry_after_s=overrides.get("max_retry_after_s", 30.0),
    )
    return JsonApi(
        "test",
        url,
        settings,
        headers={"Authorization": f"Bearer {SECRET}"},
        secrets=[SECRET],
        sleep=waits.append,
        backoff_base_s=0.25,
    )


def test_ok_json_and_auth_header(fake_http: FakeHttpServer) -> None:
    fake_http.route("GET", "/things", {"data": [1, 2]})
    assert api(fake_http.url, []).request("GET", "/things", params={"a": "b"}) == {"data": [1, 2]}
    (req,) = fake_http.requests
    assert req.headers["authorization"] == f"Bearer {SECRET}"
    assert req.param("a") == "b"


def test_429_retry_after_is_honoured_then_succeeds(fake_http: FakeHttpServer) -> None:
    fake_http.route("GET", "/x", {"ok": True})
    fake_http.fail("GET", "/x", FakeResponse(429, json={}, headers={"Retry-After": "7"}))
    waits: list[float] = []
    assert api(fake_http.url, waits).request("GET", "/x") == {"ok": True}
    assert waits == [7.0]
    assert len(fake_http.requests) == 2


def test_429_with_retry_after_beyond_bound_fails_at_once(fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", "/x", FakeResponse(429, json={}, headers={"Retry-After": "120"}))
    waits: list[float] = []
    with pytest.raises(RateLimited) as info:
        api(fake_http.url, waits, max_retry_after_s=30).request("GET", "/x")
    assert info.value.retry_after_s == 120.0
    assert waits == []
    assert len(fake_http.requests) == 1


def test_429_without_retry_after_backs_off_exponentially(fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", "/x", *[FakeResponse(429, body=b"API requests too frequent")] * 3)
    waits: list[float] = []
    with pytest.raises(RateLimited):
        api(fake_http.url, waits).request("GET", "/x")
    assert waits == [0.25, 0.5]
    assert len(fake_http.requests) == 3


def test_5xx_retried_then_gives_up(fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", "/x", *[FakeResponse(503, json={"error": {"code": "busy"}})] * 3)
    with pytest.raises(ProviderUnavailable, match="HTTP 503: busy"):
        api(fake_http.url, []).request("GET", "/x")


def test_timeout(fake_http: FakeHttpServer) -> None:
    fake_http.fail("GET", "/slow", FakeResponse(delay_s=1.0, json={}))
    with pytest.raises(ProviderTimeout, match=r"within 0\.2s"):
        api(fake_http.url, [], timeout_s=0.2, max_attempts=1).request("GET", "/slow")


def test_connection_refused() -> None:
    with pytest.raises(ProviderUnavailable, match="connection failed"):
        api(f"http://127.0.0.1:{closed_port()}", [], max_attempts=1).request("GET", "/x")


@pytest.mark.parametrize(
    "response",
    [
        FakeResponse(body=b'{"data": [1, 2'),
        FakeResponse(body=b"<html>gateway</html>"),
        FakeResponse(json={"data": [1, 2, 3, 4, 5, 6]}, truncate=True),
    ],
    ids=["truncated-json", "html", "short-body"],
)
def test_malformed_or_truncated(fake_http: FakeHttpServer, response: FakeResponse) -> None:
    fake_http.fail("GET", "/x", response)
    with pytest.raises((MalformedResponse, ProviderUnavailable)):
        api(fake_http.url, [], max_attempts=1).request("GET", "/x")


def test_auth_and_4xx_are_not_retried_and_never_echo_the_key(
    fake_http: FakeHttpServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    fake_http.fail("GET", "/x", FakeResponse(401, json={"error": {"message": f"bad key {SECRET}"}}))
    with pytest.raises(AuthFailed) as info:
        api(fake_http.url, []).request("GET", "/x", params={"api_key": SECRET})
    assert SECRET not in str(info.value)
    fake_http.fail("GET", "/y", FakeResponse(400, json={"msg": "invalid_args"}))
    with pytest.raises(RequestRejected, match="invalid_args"):
        api(fake_http.url, []).request("GET", "/y")
    assert len(fake_http.requests) == 2
    assert SECRET not in caplog.text


def test_redact_patterns() -> None:
    text = (
        "Authorization: Bearer abc.def-ghi key=AIzaSy123456 token: 'tok_999' "
        "AKIAABCDEFGHIJKLMNOP sig=xyz&other=1"
    )
    out = redact(text, ["nothing-here"])
    for leaked in ("abc.def-ghi", "AIzaSy123456", "tok_999", "AKIAABCDEFGHIJKLMNOP", "xyz"):
        assert leaked not in out
    assert "other=1" in out


def test_parse_retry_after_forms() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after("") is None
    assert parse_retry_after("soon") is None
    assert parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0
