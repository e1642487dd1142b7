"""`broker serve` as a user runs it: a real process on a real port, called over HTTP."""

from __future__ import annotations

import json
import os
import socket
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx
import pytest

BROKER = [sys.executable, "-m", "broker.cli"]


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([*BROKER, *args], env=env, capture_output=True, text=True, timeout=300)
    return proc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    e["BROKER_DATA_DIR"] = str(tmp_path / "data")
    e["BROKER_LOG_LEVEL"] = "INFO"  # the most a server logs in practice
    e["BROKER_SECRET_KEY"] = "test-secret-key-of-the-serve-tests"  # --no-scheduler needs one
    return e


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@contextmanager
def serving(env: dict[str, str], *args: str) -> Iterator[tuple[str, subprocess.Popen[str]]]:
    """`broker serve` on a free port until the block ends; yields its base URL."""
    port = free_port()
    proc = subprocess.Popen(
        [*BROKER, "serve", "--port", str(port), *args],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "broker serve did not come up in 60 s"
            time.sleep(0.2)
        yield base, proc
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def test_serve_refuses_an_uninitialised_database(env: dict[str, str]) -> None:
    proc = run(env, "serve", "--no-scheduler", "--port", str(free_port()))
    assert proc.returncode == 2 and "broker db upgrade" in proc.stderr


def test_serve_answers_over_http(env: dict[str, str]) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    assert run(env, "replay").returncode == 0
    created = run(env, "apikey", "create", "--team", "ml", "--role", "viewer", "--json")
    assert created.returncode == 0, created.stderr
    out = json.loads(created.stdout)
    assert set(out) == {"key", "team", "role"} and out["team"] == "ml" and out["role"] == "viewer"
    key = out["key"]
    listed = run(env, "apikey", "list", "--json")
    assert key not in listed.stdout and json.loads(listed.stdout)[0]["prefix"] == key[:12]

    with serving(env, "--no-scheduler") as (base, proc):
        assert httpx.get(f"{base}/healthz").json() == {"status": "ok"}
        ready = httpx.get(f"{base}/readyz")
        assert ready.status_code == 200 and ready.json()["status"] == "ready"
        unauth = httpx.get(f"{base}/v1/offers")
        assert unauth.status_code == 401 and unauth.headers["www-authenticate"] == "Bearer"
        h = {"Authorization": f"Bearer {key}"}
        resp = httpx.get(f"{base}/v1/offers", params={"gpu": "H100", "limit": 5}, headers=h)
        assert resp.status_code == 200, resp.text
        body = resp.json()
        assert len(body["data"]) == 5 and body["next_cursor"]
        assert all(r["gpu_model"].startswith("H100") for r in body["data"])
        assert httpx.get(f"{base}/openapi.json").json()["paths"]["/v1/offers"]
        # A viewer may read providers but not poll them.
        # The first /v1/providers builds every adapter (credential lookups): allow for it.
        assert httpx.get(f"{base}/v1/providers", headers=h, timeout=60).status_code == 200
        assert (
            httpx.post(f"{base}/v1/providers/replay/poll", headers=h, timeout=60).status_code == 403
        )
    _, logs = proc.communicate()
    assert key not in logs

    revoked = run(env, "apikey", "revoke", key[:12])
    assert revoked.returncode == 0 and key not in revoked.stdout


def test_serve_polls_the_sample_market_at_once(env: dict[str, str]) -> None:
    env["BROKER_REPLAY__ENABLED"] = "true"  # whatever cloud credentials this machine has
    assert run(env, "db", "upgrade").returncode == 0
    key = json.loads(run(env, "apikey", "create", "--team", "ops", "--json").stdout)["key"]
    h = {"Authorization": f"Bearer {key}"}
    with serving(env) as (base, _):
        deadline = time.monotonic() + 60
        while True:
            replay = next(
                p
                for p in httpx.get(f"{base}/v1/providers", headers=h, timeout=60).json()["data"]
                if p["name"] == "replay"
            )
            if replay["status"] == "ok":
                break
            assert time.monotonic() < deadline, replay
            time.sleep(0.3)
        assert replay["offers"] > 1000
        assert httpx.get(f"{base}/v1/offers", headers=h).json()["data"]


def test_a_second_serve_on_a_busy_port_fails_before_it_polls(env: dict[str, str]) -> None:
    assert run(env, "db", "upgrade").returncode == 0
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = run(env, "serve", "--port", str(port))
    assert proc.returncode == 2 and "is in use" in proc.stderr, proc.stderr
    assert "polling" not in proc.stderr
    # Nothing was polled by the refused serve.
    db = Path(env["BROKER_DATA_DIR"]) / "broker.db"
    with sqlite3.connect(db) as conn:
        assert conn.execute("SELECT count(*) FROM poll_runs").fetchone() == (0,)
