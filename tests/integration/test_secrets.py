"""No secret leaks: a whole embedded scenario (API keys, a Slack webhook and a bot token,
a neocloud API key, polls, alerts, Slack refusing, a provider failing, reports, metrics) run
with DEBUG logs in JSON; then no API key, webhook path, Slack token or cloud credential
appears in the logs, in any answer, in the events, metrics or reports, or in the database
(where API keys are hashes and Slack channels ciphertext). The lines that carry the webhook
URL (the HTTP client's request lines) do reach the handler: redaction alone must mask
them, as the test checks."""

from __future__ import annotations

import hashlib
import logging
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import Engine, inspect, text

from broker.api.app import create_app
from broker.auth import Role, create_api_key
from broker.config import LambdaCloudSettings, ReplaySettings, Settings
from broker.db import session_scope
from broker.logs import configure_logging
from tests.api.test_reservations import COMMITMENT
from tests.fakes.http import closed_port
from tests.fakes.slack import FakeSlack, slack, text_response

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    from starlette.testclient import TestClient

LAMBDA_KEY = "secret_lambda-key-0123456789abcdefLEAK"


@pytest.fixture
def fake_slack() -> Iterator[FakeSlack]:
    yield from slack()


@pytest.fixture
def root() -> Iterator[None]:
    logger = logging.getLogger()
    handlers, level = list(logger.handlers), logger.level
    yield
    logger.handlers[:] = handlers
    logger.setLevel(level)


def test_no_secret_anywhere(
    engine: Engine,
    tmp_path: Path,
    fake_slack: FakeSlack,
    root: None,
    capsys: pytest.CaptureFixture[str],
) -> None:
    configure_logging("DEBUG", "json")
    settings = Settings(
        data_dir=tmp_path,
        replay=ReplaySettings(enabled=True, step_s=10**9),
        slack_webhook_hosts=[fake_slack.host],
        slack_api_url=fake_slack.api_url,
        lambda_cloud=LambdaCloudSettings(
            api_key=LAMBDA_KEY,
            base_url=f"http://127.0.0.1:{closed_port()}",
            max_attempts=1,
            timeout_s=1,
        ),
    )
    with session_scope(engine) as session:
        admin = create_api_key(session, "alpha", Role.ADMIN).key
    webhook = fake_slack.webhook()
    token = fake_slack.bot_token()
    secrets = {
        "api key": admin,
        "api key body": admin.split("_", 1)[1][8:],
        "webhook path": webhook.rsplit("/", 1)[1],
        "bot token": token,
        "bot token body": token.split("-", 2)[2],
        "lambda key": LAMBDA_KEY,
    }
    seen: list[str] = []
    h = {"Authorization": f"Bearer {admin}"}
    with TestClient(create_app(settings, engine)) as client:

        def call(method: str, url: str, **kw: Any) -> Any:
            r = client.request(method, url, headers=h, **kw)
            seen.append(f"{method} {url} -> {r.status_code} {dict(r.headers)} {r.text}")
            return r

        filt = {"gpu_models": ["H100"], "jurisdictions": ["EU"]}
        hook = {"type": "slack_webhook", "url": webhook}
        bot = {"type": "slack_bot", "token": token, "channel": "#gpu-alerts"}
        assert (
            call(
                "POST", "/v1/subscriptions", json={"name": "w", "filter": filt, "channel": hook}
            ).status_code
            == 201
        )
        assert (
            call(
                "POST", "/v1/subscriptions", json={"name": "b", "filter": filt, "channel": bot}
            ).status_code
            == 201
        )
        # A bad webhook and a bad token are refused without being echoed.
        call(
            "POST",
            "/v1/subscriptions",
            json={
                "name": "x",
                "filter": filt,
                "channel": {
                    "type": "slack_webhook",
                    "url": webhook.replace("127.0.0.1", "10.0.0.1"),
                },
            },
        )
        call(
            "POST",
            "/v1/subscriptions",
            json={
                "name": "x",
                "filter": filt,
                "channel": {"type": "slack_bot", "token": token + "\n", "channel": "#a"},
            },
        )
        assert call("POST", "/v1/providers/replay/poll").status_code == 200  # alerts sent
        assert len(fake_slack.messages) == 2
        call("POST", "/v1/providers/lambda_cloud/poll")  # the cloud is unreachable
        fake_slack.channels.clear()
        path = webhook.split(str(fake_slack.server.port), 1)[1]
        fake_slack.server.fail("POST", path, text_response(404, "no_service"))
        call("POST", "/v1/subscriptions/1/test")
        call("POST", "/v1/subscriptions/2/test")
        call("POST", "/v1/requests", json={"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24})
        call("POST", "/v1/reservations", json=COMMITMENT)
        for url in (
            "/v1/subscriptions",
            "/v1/subscriptions/1",
            "/v1/subscriptions/2",
            "/v1/subscriptions/1/deliveries",
            "/v1/subscriptions/2/deliveries",
            "/v1/events?after=0&limit=500",
            "/v1/providers",
            "/v1/requests/1/events",
            "/v1/reports/commitments",
            "/v1/reports/commitments?format=csv",
            "/v1/reports/commitments?format=html",
            "/metrics",
            "/openapi.json",
        ):
            assert call("GET", url).status_code == 200, url
        assert call("GET", "/v1/subscriptions/1").json()["state"] == "disabled"
    logs = capsys.readouterr().err
    assert '"level": "DEBUG"' in logs and "lambda_cloud" in logs  # the logs were captured
    # ... including the lines of the posts to the webhook, which carry its URL (httpx logs
    # every request line at INFO): only redaction keeps its secret path out.
    assert f"POST {webhook.split('/services/')[0]}/services/" in logs
    with engine.connect() as conn:
        tables = inspect(conn).get_table_names()
        database = [str(row) for t in tables for row in conn.execute(text(f"SELECT * FROM {t}"))]
        stored_hash = conn.execute(text("SELECT key_hash FROM api_keys")).scalar_one()
    assert stored_hash == hashlib.sha256(admin.encode()).hexdigest()
    for place, texts in (("logs", [logs]), ("answers", seen), ("database", database)):
        blob = "\n".join(texts)
        for name, secret in secrets.items():
            assert secret not in blob, f"{name} leaked into the {place}"
