"""Schema fuzzing with schemathesis: every operation of the live `/openapi.json` of the API
(uvicorn on 127.0.0.1 over a store holding the sample market, one request, reservation
and subscription), called with an admin key on generated inputs. Zero 5xx; every 4xx in
the one error shape; every answer that the schema describes conforms to it.

`BROKER_FUZZ_EXAMPLES` sets the examples per operation (CI default 60; raise it for a
longer local run)."""

from __future__ import annotations

import os
import threading
import time
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import uvicorn
from hypothesis import HealthCheck, given, settings

from broker import db
from broker.api.app import create_app
from broker.auth import Role, create_api_key
from broker.config import ReplaySettings, Settings
from broker.polling import replay_results
from providers import replay
from tests.api.test_reservations import COMMITMENT

with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    import schemathesis
    from schemathesis.checks import not_a_server_error
    from schemathesis.core.result import Ok
    from schemathesis.specs.openapi.checks import response_schema_conformance

EXAMPLES = int(os.environ.get("BROKER_FUZZ_EXAMPLES", "60"))


class Live:
    url: str = ""
    key: str = ""


LIVE = Live()


@pytest.fixture(scope="module")
def live_api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Live]:
    tmp: Path = tmp_path_factory.mktemp("fuzz")
    settings_ = Settings(
        data_dir=tmp,
        replay=ReplaySettings(enabled=True, step_s=10**9),
        rate_limit_per_minute=0,
    )
    engine = db.make_engine(url=f"sqlite:///{tmp}/fuzz.db")
    db.upgrade(engine)
    folders = replay.list_snapshots(replay.bundled_sample())
    replay_results(engine, ((f.name, replay.read_snapshot(f, fetched_at=_now())) for f in folders))
    with db.session_scope(engine) as session:
        LIVE.key = create_api_key(session, "fuzz", Role.ADMIN).key
    app = create_app(settings_, engine)
    server = uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=0, log_level="warning", lifespan="off")
    )
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    LIVE.url = f"http://127.0.0.1:{server.servers[0].sockets[0].getsockname()[1]}"
    h = {"Authorization": f"Bearer {LIVE.key}"}
    with httpx.Client(base_url=LIVE.url, headers=h) as c:  # an object of each kind: id 1
        c.post("/v1/requests", json={"gpu_models": ["H100"], "gpus": 8, "duration_hours": 24})
        c.post("/v1/reservations", json=COMMITMENT)
        c.post(
            "/v1/subscriptions",
            json={
                "name": "fuzz",
                "filter": {"gpu_models": ["H100"]},
                "channel": {
                    "type": "slack_webhook",
                    "url": "https://hooks.slack.com/services/T0/B0/x",
                },
            },
        )
    yield LIVE
    server.should_exit = True
    thread.join(timeout=20)
    engine.dispose()


def _now() -> Any:
    from datetime import UTC, datetime

    return datetime.now(UTC)


def error_shape(ctx: Any, response: Any, case: Any) -> bool | None:
    """Every 4xx/5xx answer is `{"error": {"code", "message", "details"}}`."""
    if response.status_code < 400:
        return None
    body = response.json()
    assert set(body) == {"error"}, body
    assert isinstance(body["error"]["code"], str) and body["error"]["code"], body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body
    return True


#: Not fuzzed here: it would post to the real hooks.slack.com (tested against a fake Slack).
SKIP = {"POST /v1/subscriptions/{subscription_id}/test"}


def test_every_operation(live_api: Live) -> None:
    """Hypothesis over each operation's generated cases (driven directly, not through
    schemathesis' pytest plugin, whose subtests follow pytest's internals too closely)."""
    api = schemathesis.openapi.from_url(f"{live_api.url}/openapi.json")
    headers = {"Authorization": f"Bearer {live_api.key}"}
    failures: dict[str, str] = {}
    operations = []
    for result in api.get_all_operations():
        assert isinstance(result, Ok), f"an operation the fuzzer cannot read: {result}"
        operations.append(result.ok())
    assert len(operations) >= 30
    for operation in operations:
        if operation.label in SKIP:
            continue

        @given(case=operation.as_strategy())
        @settings(
            max_examples=EXAMPLES,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def run(case: Any) -> None:
            case.call_and_validate(
                base_url=live_api.url,
                headers=headers,
                checks=[not_a_server_error, response_schema_conformance, error_shape],
                timeout=30,
            )

        try:
            run()
        except Exception as exc:  # one operation's failure must not hide the others'
            failures[operation.label] = f"{type(exc).__name__}: {exc}"[:2000]
    assert failures == {}, "\n\n".join(f"{k}:\n{v}" for k, v in failures.items())
