"""Record a poll against each provider's wire fake, shut the fake down, replay the recording:
the same offers, scopes, errors and skips (issue 15, "Record and replay real responses").

Everything is real: the adapters, httpx, boto3, azure-core and google-cloud-compute talk to
`tests/fakes/*` over loopback sockets while recording; the replay runs after the fake's port
is closed, so a request the recording cannot answer fails instead of reaching a server.
The SDK adapters are tapped here exactly as the one-line hooks in their constructors tap
them (docs/recording.md, "Hooks").
"""

from __future__ import annotations

import inspect
import json
import os
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import boto3
import botocore.session
import pytest
from azure.mgmt.compute import ComputeManagementClient

from broker import cli
from broker.config import (
    AwsSettings,
    AzureSettings,
    ClientSettings,
    GcpSettings,
    LambdaCloudSettings,
    RunpodSettings,
    Settings,
    VastSettings,
    VerdaSettings,
)
from broker.domain import PollResult
from providers._record_botocore import placeholder_credentials, tap_botocore
from providers._record_requests import (
    PlaceholderCredential,
    azure_transport,
    placeholder_google_credentials,
    tap_google_clients,
)
from providers._recording import (
    FORMAT,
    REQUEST_HEADERS,
    NotRecorded,
    RecordingError,
    RecordingNotFound,
    Redactor,
    Tap,
    match_key,
    recording,
    replaying,
)
from providers.aws import Aws, tune_session
from providers.azure import Azure
from providers.base import get_provider_class
from providers.gcp import COMPUTE_PAGE_SIZE, Gcp
from providers.lambda_cloud import LambdaCloud
from providers.runpod import Runpod
from providers.vast import Vast
from providers.verda import Verda
from tests.fakes.aws_fake import AwsFake
from tests.fakes.aws_fixtures import small_market
from tests.fakes.azure_fake import SUBSCRIPTION, AzureFake
from tests.fakes.azure_fake import sample_catalogue as azure_catalogue
from tests.fakes.gcp_fake import GcpFake
from tests.fakes.gcp_fake import sample_catalogue as gcp_catalogue
from tests.fakes.http import FakeHttpServer, FakeResponse
from tests.fakes.lambda_cloud_api import LambdaFake, error_body
from tests.fakes.runpod_api import RunpodFake
from tests.fakes.vast_api import VastFake
from tests.fakes.verda_api import VerdaFake
from tests.integration.test_lambda_cloud import small_market as lambda_market
from tests.integration.test_runpod import COUNTRIES, DCS, stock
from tests.integration.test_runpod import gpus as runpod_gpus
from tests.integration.test_vast import sample_listings
from tests.integration.test_verda import available as verda_available
from tests.integration.test_verda import market as verda_market

T0 = datetime(2026, 5, 1, 12, tzinfo=UTC)
LAMBDA_KEY = "secret_lambda-record-0123456789abcdef"
RUNPOD_KEY = "rp_live_record_0123456789abcdef"
VAST_KEY = "vast-record-0123456789abcdef0123456789"
VERDA_ID = "verda-client-id-record"
VERDA_SECRET = "vsecret_record_0123456789abcdef"
AWS_KEY_ID = "AKIAQ3EGRQ4RECORD777"
AWS_SECRET = "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"
GCP_PROJECT = "broker-test"
GCP_API_KEY = "AIzaSyRecord-billing-key-0123456789abcd"
AZURE_TOKEN = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9.record-arm-token.0123456789abcdef"


class Clock:
    def __init__(self, now: datetime = T0) -> None:
        self.now = now

    def __call__(self) -> datetime:
        return self.now


def poll_facts(result: PollResult) -> dict[str, Any]:
    """Everything a poll says, in a comparable form (`raw` is not part of Offer equality,
    so it is compared on its own)."""
    offers = sorted(result.offers, key=lambda o: o.key)
    return {
        "offers": offers,
        "raw": [dict(o.raw) for o in offers],
        "scopes_ok": sorted(map(str, result.scopes_ok)),
        "scope_errors": sorted((str(e.scope), e.code, e.message) for e in result.scope_errors),
        "skipped": dict(result.skipped),
        "notes": sorted(result.notes),
        "presence": sorted(result.capacity_by_presence),
        "quotas": sorted(map(repr, result.quotas)),
    }


def exchanges(path: Path) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    header, *rest = (json.loads(line) for line in path.read_text("utf-8").splitlines())
    return header, rest


def assert_no_secret(directory: Path, *secrets: str) -> None:
    for path in directory.iterdir():
        text = path.read_text("utf-8")
        for secret in secrets:
            assert secret not in text, f"{secret[:6]}… written to {path.name}"


def assert_trimmed(path: Path) -> None:
    _, lines = exchanges(path)
    for line in lines:
        assert set(line["request"]["headers"]) <= REQUEST_HEADERS
        assert "authorization" not in json.dumps(line).lower()


# ------------------------------------------------------------ redaction and matching


@pytest.mark.parametrize(
    ("sent", "written"),
    [
        (f"https://h/v1/skus?key={GCP_API_KEY}&pageToken=p2", "https://h/v1/skus?pageToken=p2"),
        ("https://u:pw@h/x?api_key=k-0123456789&a=1", "https://h/x?a=1"),
        ("https://h/x?X-Amz-Signature=abc&X-Amz-Credential=AKIA", "https://h/x"),
        # Nothing to drop: the query stays as sent.
        ("https://h/x?api-version=1&%24skiptoken=4", "https://h/x?api-version=1&%24skiptoken=4"),
    ],
)
def test_credential_parameters_never_reach_the_file(sent: str, written: str) -> None:
    assert Redactor().url(sent) == written


def test_credential_fields_are_starred_and_their_values_redacted_everywhere() -> None:
    r = Redactor(["known-secret-value"])
    form = r.body(b"grant_type=x&client_secret=s3cr3t-form-value", "x-www-form-urlencoded")
    assert form == b"grant_type=x&client_secret=***"
    doc = b'{"access_token": "tok-0123456789", "echo": "tok-0123456789 known-secret-value"}'
    assert json.loads(r.body(doc, "application/json")) == {
        "access_token": "***",
        "echo": "*** ***",
    }
    assert r.text("later: s3cr3t-form-value") == "later: ***"


def test_requests_match_on_what_they_ask_not_on_time_order_or_credentials() -> None:
    form = "application/x-www-form-urlencoded"

    def key(url: str, body: str, signed_for: str = "eu-west-1/ec2") -> str:
        headers = {"Content-Type": form, "X-Broker-Signed-For": signed_for}
        return match_key("POST", url, headers, body.encode())

    spot = "Action=DescribeSpotPriceHistory&StartTime=2026-05-01T12%3A00%3A00Z&InstanceType.1=p5"
    later = "InstanceType.1=p5&Action=DescribeSpotPriceHistory&StartTime=2026-05-01T13%3A05%3A00Z"
    assert key("https://h/?b=1&a=2", spot) == key("https://h/?a=2&b=1&key=k", later)
    assert key("https://h/", spot) != key("https://h/", spot, signed_for="us-east-1/ec2")
    assert key("https://h/", spot) != key("https://h/", spot.replace("p5", "p4d"))


# ----------------------------------------------------------------- the httpx adapters


@dataclass(frozen=True)
class HttpCase:
    """A neocloud: its fake on a server, its adapter at a URL, the secrets it holds."""

    name: str
    serve: Callable[[FakeHttpServer], object]
    adapter: Callable[[str], Any]
    secrets: tuple[str, ...]


def lambda_adapter(url: str, **opts: Any) -> LambdaCloud:
    fields: dict[str, Any] = {"base_url": url, "timeout_s": 0.5, "max_attempts": 1, **opts}
    settings = LambdaCloudSettings(**fields)
    return LambdaCloud(LAMBDA_KEY, settings, clock=Clock(), sleep=lambda s: None)


HTTP_CASES = [
    HttpCase(
        "lambda_cloud",
        lambda server: LambdaFake(server, lambda_market(), api_key=LAMBDA_KEY),
        lambda_adapter,
        (LAMBDA_KEY,),
    ),
    HttpCase(
        "runpod",
        lambda server: RunpodFake(
            server, runpod_gpus(), DCS, stock(), api_key=RUNPOD_KEY, country_codes=COUNTRIES
        ),
        lambda url: Runpod(
            RUNPOD_KEY,
            RunpodSettings(base_url=url, timeout_s=1.0, max_attempts=1),
            clock=Clock(),
        ),
        (RUNPOD_KEY,),
    ),
    HttpCase(
        "vast",
        lambda server: VastFake(
            server, VAST_KEY, on_demand=sample_listings(), bid=sample_listings()
        ),
        lambda url: Vast(
            VAST_KEY,
            VastSettings(base_url=url, timeout_s=1.0, max_attempts=1),
            clock=Clock(),
            sleep=lambda s: None,
            min_interval_s=0,
        ),
        (VAST_KEY,),
    ),
    HttpCase(
        "verda",
        lambda server: VerdaFake(
            server,
            verda_market(),
            verda_available(),
            client_id=VERDA_ID,
            client_secret=VERDA_SECRET,
        ),
        lambda url: Verda(
            VERDA_ID,
            VERDA_SECRET,
            VerdaSettings(base_url=url, timeout_s=1.0, max_attempts=1),
            clock=Clock(),
        ),
        (VERDA_ID, VERDA_SECRET),
    ),
]


def record_http(case: HttpCase, directory: Path) -> tuple[str, PollResult, int]:
    """Poll `case`'s fake once while recording; the fake is shut down on return."""
    with FakeHttpServer() as server:
        case.serve(server)
        with recording(directory, clock=Clock()) as session:
            result = case.adapter(server.url).fetch()
        assert session.files[case.name][1] == len(server.requests)
        return server.url, result, len(server.requests)


@pytest.mark.parametrize("case", HTTP_CASES, ids=[c.name for c in HTTP_CASES])
def test_a_recorded_poll_replays_with_the_same_offers(case: HttpCase, tmp_path: Path) -> None:
    url, recorded, sent = record_http(case, tmp_path)
    assert recorded.offers and not recorded.scope_errors

    with replaying(tmp_path, case.name):
        replayed = case.adapter(url).fetch()  # the fake is down: only the file answers

    assert poll_facts(replayed) == poll_facts(recorded)
    header, lines = exchanges(tmp_path / f"{case.name}.jsonl")
    assert (header["format"], header["provider"], len(lines)) == (FORMAT, case.name, sent)
    assert header["recorded_at"] == T0.isoformat()
    assert header["broker_version"] and "httpx" in header["libraries"]
    assert header["settings"]["base_url"] == url
    assert_no_secret(tmp_path, *case.secrets)
    assert_trimmed(tmp_path / f"{case.name}.jsonl")


def test_oauth_secrets_and_issued_tokens_are_redacted(tmp_path: Path) -> None:
    (verda,) = [c for c in HTTP_CASES if c.name == "verda"]
    with FakeHttpServer() as server:
        fake = VerdaFake(
            server,
            verda_market(),
            verda_available(),
            client_id=VERDA_ID,
            client_secret=VERDA_SECRET,
        )
        with recording(tmp_path):
            verda.adapter(server.url).fetch()
        issued = sorted(fake.valid_access | fake.valid_refresh)
    assert issued
    assert_no_secret(tmp_path, VERDA_SECRET, VERDA_ID, *issued)
    _, lines = exchanges(tmp_path / "verda.jsonl")
    grant = json.loads(lines[0]["request"]["body"])
    assert grant["client_secret"] == "***" and grant["client_id"] == "***"
    assert json.loads(lines[0]["response"]["body"])["access_token"] == "***"


def test_a_secret_the_api_echoes_is_redacted(tmp_path: Path) -> None:
    with FakeHttpServer() as server:
        server.route(
            "GET",
            "/instance-types",
            FakeResponse(401, json=error_body("global/invalid-api-key", f"bad key {LAMBDA_KEY}")),
        )
        with recording(tmp_path):
            result = lambda_adapter(server.url).fetch()
    assert [e.code for e in result.scope_errors] == ["auth_failed"]
    assert_no_secret(tmp_path, LAMBDA_KEY)
    _, (line,) = exchanges(tmp_path / "lambda_cloud.jsonl")
    assert line["response"]["status"] == 401 and "bad key ***" in line["response"]["body"]


def test_retries_and_failures_replay_in_recorded_order_every_poll(tmp_path: Path) -> None:
    waits: list[float] = []

    def adapter(url: str) -> LambdaCloud:
        settings = LambdaCloudSettings(
            base_url=url, timeout_s=0.3, max_attempts=3, max_retry_after_s=5
        )
        return LambdaCloud(LAMBDA_KEY, settings, clock=Clock(), sleep=waits.append)

    with FakeHttpServer() as server:
        LambdaFake(server, lambda_market(), api_key=LAMBDA_KEY)
        server.fail(
            "GET",
            "/instance-types",
            FakeResponse(429, json=error_body("global/rate-limited"), headers={"Retry-After": "2"}),
            FakeResponse(200, drop=True),
        )
        with recording(tmp_path):
            recorded = adapter(server.url).fetch()
    assert not recorded.scope_errors and waits == [2.0, 1.0]
    _, lines = exchanges(tmp_path / "lambda_cloud.jsonl")
    assert [ln.get("response", {}).get("status") or ln["failure"]["kind"] for ln in lines] == [
        429,
        "connection",
        200,
    ]

    replayer = adapter(server.url)
    with replaying(tmp_path):
        for _ in range(2):  # a second poll replays the recording from its start again
            waits.clear()
            assert poll_facts(replayer.fetch()) == poll_facts(recorded)
            assert waits == [2.0, 1.0]


def test_a_timeout_replays_as_a_timeout(tmp_path: Path) -> None:
    with FakeHttpServer() as server:
        LambdaFake(server, lambda_market(), api_key=LAMBDA_KEY)
        server.fail("GET", "/instance-types", FakeResponse(delay_s=1.0))
        with recording(tmp_path):
            recorded = lambda_adapter(server.url, timeout_s=0.2).fetch()
    assert [e.code for e in recorded.scope_errors] == ["timeout"]
    with replaying(tmp_path):
        replayed = lambda_adapter(server.url, timeout_s=0.2).fetch()
    assert poll_facts(replayed) == poll_facts(recorded)


def test_a_request_the_recording_lacks_fails_its_scope_and_names_the_nearest(
    tmp_path: Path,
) -> None:
    url, _, _ = record_http(HTTP_CASES[0], tmp_path)
    with replaying(tmp_path):
        result = lambda_adapter(url + "/v2").fetch()
    ((code, message),) = [(e.code, e.message) for e in result.scope_errors]
    assert code == NotRecorded.code == "rejected"
    assert "not in the recording lambda_cloud.jsonl (1 exchanges)" in message
    assert f"nearest recorded: GET {url}/instance-types" in message
    assert "settings differ from the recording's: base_url" in message
    assert not result.offers


def test_a_replay_recorded_again_is_the_same_recording(tmp_path: Path) -> None:
    first, second = tmp_path / "first", tmp_path / "second"
    url, _, _ = record_http(HTTP_CASES[1], first)
    with replaying(first), recording(second):
        HTTP_CASES[1].adapter(url).fetch()

    def key(line: dict[str, Any]) -> str:
        return json.dumps({"request": line["request"], "response": line.get("response")})

    assert sorted(map(key, exchanges(second / "runpod.jsonl")[1])) == sorted(
        map(key, exchanges(first / "runpod.jsonl")[1])
    )


def test_unreadable_recordings_are_refused(tmp_path: Path) -> None:
    with (
        pytest.raises(RecordingNotFound, match="no recording of vast"),
        replaying(tmp_path, "vast"),
    ):
        pass
    (tmp_path / "vast.jsonl").write_text('{"format": "other"}\n')
    not_ours = pytest.raises(RecordingError, match="line 1 is not a broker-recording header")
    with not_ours, replaying(tmp_path, "vast"):
        pass
    (tmp_path / "lambda_cloud.jsonl").write_text(
        json.dumps({"format": FORMAT, "version": 1, "provider": "vast"}) + "\n"
    )
    other = pytest.raises(RecordingError, match="a recording of 'vast', not 'lambda_cloud'")
    with other, replaying(tmp_path, "lambda_cloud"):
        pass


# ------------------------------------------------------------------------------ AWS


AWS_FIELDS: dict[str, Any] = {
    "timeout_s": 3.0,
    "max_attempts": 1,
    "regions": ["eu-west-1", "us-east-1"],
}


def aws_adapter(url: str, *, replay: bool, clock: Clock) -> Aws:
    """The adapter with a tapped session: a fresh botocore session (handlers registered on
    a session reach every client it creates), tuned as `Aws.from_settings` tunes its own."""
    core = botocore.session.get_session()
    tune_session(core)
    if replay:
        placeholder_credentials(core)
        session = boto3.session.Session(region_name="us-east-1", botocore_session=core)
    else:
        session = boto3.session.Session(
            aws_access_key_id=AWS_KEY_ID,
            aws_secret_access_key=AWS_SECRET,
            region_name="us-east-1",
            botocore_session=core,
        )
    settings = AwsSettings(**AWS_FIELDS)
    tap_botocore(session.events, Tap("aws", settings=settings))
    return Aws(settings, session, clock=clock, endpoint_url=url)


def test_aws_poll_replays_with_the_same_offers(tmp_path: Path) -> None:
    with FakeHttpServer() as server:
        small_market(AwsFake(server))
        with recording(tmp_path):
            recorded = aws_adapter(server.url, replay=False, clock=Clock()).fetch()
        sent = len(server.requests)
    assert recorded.offers and not recorded.scope_errors
    assert {o.region for o in recorded.offers} == {"eu-west-1", "us-east-1"}

    # An hour later, with placeholder credentials: the spot query's StartTime=now differs.
    later = Clock(T0 + timedelta(hours=1))
    with replaying(tmp_path, "aws"):
        replayed = aws_adapter(server.url, replay=True, clock=later).fetch()

    assert poll_facts(replayed) == poll_facts(recorded)
    _, lines = exchanges(tmp_path / "aws.jsonl")
    assert len(lines) == sent
    assert {ln["request"]["signed_for"] for ln in lines} >= {"eu-west-1/ec2", "us-east-1/ec2"}
    assert_no_secret(tmp_path, AWS_KEY_ID, AWS_SECRET)
    assert_trimmed(tmp_path / "aws.jsonl")


# ------------------------------------------------------------------------------ Azure


def azure_fields(fake_url: str, prices_url: str) -> dict[str, Any]:
    return {
        "subscription_id": SUBSCRIPTION,
        "base_url": fake_url,
        "retail_prices_url": prices_url,
        "timeout_s": 1.0,
        "max_attempts": 1,
        "prices_ttl_s": 0,
    }


def azure_adapter(fake_url: str, prices_url: str, credential: Any) -> Azure:
    settings = AzureSettings(**azure_fields(fake_url, prices_url))
    adapter = Azure(settings, subscription_id=SUBSCRIPTION, credential=credential, clock=Clock())
    # What the one-line hook in `Azure.__init__` does: the ARM client on a tapped transport
    # (the retail prices client is `JsonApi`, tapped already).
    adapter.compute = ComputeManagementClient(
        adapter.credential,
        SUBSCRIPTION,
        base_url=fake_url,
        retry_total=0,
        transport=azure_transport(Tap("azure", settings=settings)),
    )
    return adapter


class StaticCredential(PlaceholderCredential):
    """A credential handing out a token that looks real (it must not be written)."""

    def get_token(self, *scopes: str, **kwargs: Any) -> Any:
        from azure.core.credentials import AccessToken

        return AccessToken(AZURE_TOKEN, int(T0.timestamp()) + 10**9)


def test_azure_poll_replays_with_the_same_offers(tmp_path: Path) -> None:
    with FakeHttpServer() as server:
        fake = AzureFake(server, azure_catalogue())
        with recording(tmp_path):
            recorded = azure_adapter(fake.url, fake.prices_url, StaticCredential()).fetch()
        sent = len(server.requests)
    assert recorded.offers and not recorded.scope_errors

    with replaying(tmp_path, "azure"):
        replayed = azure_adapter(fake.url, fake.prices_url, PlaceholderCredential()).fetch()

    assert poll_facts(replayed) == poll_facts(recorded)
    _, lines = exchanges(tmp_path / "azure.jsonl")
    assert len(lines) == sent
    assert_no_secret(tmp_path, AZURE_TOKEN)
    assert_trimmed(tmp_path / "azure.jsonl")


# -------------------------------------------------------------------------------- GCP


def gcp_fields(url: str) -> dict[str, Any]:
    return {
        "project": GCP_PROJECT,
        "api_endpoint": url,
        "billing_endpoint": url,
        "billing_api_key": GCP_API_KEY,
        "timeout_s": 1.0,
        "max_attempts": 1,
        "attachable_gpus": True,
    }


def gcp_adapter(url: str, page_size: int = 4) -> Gcp:
    settings = GcpSettings(**gcp_fields(url))
    credentials = placeholder_google_credentials()
    adapter = Gcp(settings, project=GCP_PROJECT, credentials=credentials, page_size=page_size)
    # What the one-line hook in `Gcp.__init__` does (billing is `JsonApi`, tapped already).
    tap_google_clients(
        Tap("gcp", settings=settings),
        adapter.accelerator_types_client,
        adapter.machine_types_client,
        adapter.regions_client,
    )
    return adapter


def test_gcp_poll_replays_with_the_same_offers(tmp_path: Path) -> None:
    with FakeHttpServer() as server:
        fake = GcpFake(server, gcp_catalogue(GCP_PROJECT))
        with recording(tmp_path):
            recorded = gcp_adapter(fake.url).fetch()
        sent = len(server.requests)
    assert recorded.offers and not recorded.scope_errors

    with replaying(tmp_path, "gcp"):
        replayed = gcp_adapter(fake.url).fetch()

    assert poll_facts(replayed) == poll_facts(recorded)
    _, lines = exchanges(tmp_path / "gcp.jsonl")
    assert len(lines) == sent
    assert {ln["request"]["url"].split("?")[0].rsplit("/", 1)[-1] for ln in lines} >= {
        "acceleratorTypes",
        "machineTypes",
        "skus",
    }
    assert_no_secret(tmp_path, GCP_API_KEY)
    assert_trimmed(tmp_path / "gcp.jsonl")


# ------------------------------------------- BROKER_<NAME>__REPLAY_DIR and --record

needs_replay_dir = pytest.mark.skipif(
    "replay_dir" not in ClientSettings.model_fields,
    reason="needs `replay_dir` on broker.config.ClientSettings (BROKER_<NAME>__REPLAY_DIR)",
)
needs_record_option = pytest.mark.skipif(
    "record" not in inspect.signature(cli.poll).parameters,
    reason="needs `broker poll --record DIR` (broker/cli.py)",
)


def set_env(monkeypatch: pytest.MonkeyPatch, provider: str, **fields: Any) -> None:
    """`BROKER_<PROVIDER>__<FIELD>` for each field (lists comma-joined)."""
    for name, value in fields.items():
        text = ",".join(value) if isinstance(value, list) else str(value)
        monkeypatch.setenv(f"BROKER_{provider.upper()}__{name.upper()}", text)


def from_settings(provider: str) -> Any:
    return get_provider_class(provider).from_settings(Settings(), Clock())


@needs_replay_dir
def test_replay_dir_setting_serves_an_httpx_adapter(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url, recorded, _ = record_http(HTTP_CASES[0], tmp_path)
    set_env(monkeypatch, "lambda_cloud", replay_dir=tmp_path, api_key="placeholder", base_url=url)
    set_env(monkeypatch, "lambda_cloud", timeout_s=0.5, max_attempts=1)
    assert poll_facts(from_settings("lambda_cloud").fetch()) == poll_facts(recorded)


@needs_replay_dir
def test_replay_dir_setting_serves_aws_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeHttpServer() as server:
        small_market(AwsFake(server))
        with recording(tmp_path):
            recorded = aws_adapter(server.url, replay=False, clock=Clock()).fetch()
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "none"))
    monkeypatch.setenv("AWS_ENDPOINT_URL", server.url)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    set_env(monkeypatch, "aws", replay_dir=tmp_path, **AWS_FIELDS)
    assert poll_facts(from_settings("aws").fetch()) == poll_facts(recorded)


@needs_replay_dir
def test_replay_dir_setting_serves_azure_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeHttpServer() as server:
        fake = AzureFake(server, azure_catalogue())
        with recording(tmp_path):
            recorded = azure_adapter(fake.url, fake.prices_url, StaticCredential()).fetch()
    for name in ("AZURE_CLIENT_ID", "AZURE_TENANT_ID", "AZURE_CLIENT_SECRET"):
        monkeypatch.delenv(name, raising=False)
    set_env(monkeypatch, "azure", replay_dir=tmp_path, **azure_fields(fake.url, fake.prices_url))
    assert poll_facts(from_settings("azure").fetch()) == poll_facts(recorded)


@needs_replay_dir
def test_replay_dir_setting_serves_gcp_without_credentials(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with FakeHttpServer() as server:
        fake = GcpFake(server, gcp_catalogue(GCP_PROJECT))
        with recording(tmp_path):
            recorded = gcp_adapter(fake.url, page_size=COMPUTE_PAGE_SIZE).fetch()
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "none.json"))
    set_env(monkeypatch, "gcp", replay_dir=tmp_path, **gcp_fields(fake.url))
    assert poll_facts(from_settings("gcp").fetch()) == poll_facts(recorded)


@needs_replay_dir
@needs_record_option
def test_broker_poll_records_and_the_setting_replays_it(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    rec = tmp_path / "rec"

    def broker(*args: str) -> dict[str, Any]:
        proc = subprocess.run(
            [sys.executable, "-m", "broker.cli", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert proc.returncode == 0, proc.stderr
        return json.loads(proc.stdout) if "--json" in args else {}

    broker("db", "upgrade")
    with FakeHttpServer() as server:
        LambdaFake(server, lambda_market(), api_key=LAMBDA_KEY)
        env["BROKER_LAMBDA_CLOUD__API_KEY"] = LAMBDA_KEY
        env["BROKER_LAMBDA_CLOUD__BASE_URL"] = server.url
        first = broker("poll", "lambda_cloud", "--record", str(rec), "--json")
    env["BROKER_LAMBDA_CLOUD__API_KEY"] = "placeholder"
    env["BROKER_LAMBDA_CLOUD__REPLAY_DIR"] = str(rec)
    again = broker("poll", "lambda_cloud", "--json")

    polled = first["providers"]["lambda_cloud"]
    assert polled["recording"] == str(rec / "lambda_cloud.jsonl") and polled["offers"] > 0
    assert again["providers"]["lambda_cloud"]["offers"] == polled["offers"]
    assert again["events"] == {}  # the same market again: nothing appeared, changed or went
    assert_no_secret(rec, LAMBDA_KEY)
