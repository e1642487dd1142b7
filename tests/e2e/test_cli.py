"""The `broker` command as a user runs it: a real process, a real database file."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from collections import Counter
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_replay_store import expected_events

OFFER_FIELDS = {
    "key",
    "provider",
    "instance_type",
    "gpu_model",
    "gpu_count",
    "gpu_memory_gb",
    "region",
    "zone",
    "country",
    "jurisdiction",
    "market",
    "price_per_hour",
    "price_per_gpu_hour",
    "availability",
    "last_seen",
    "stale",
}


def run(env: dict[str, str], *args: str, ok: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    if ok:
        assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    e = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    e["BROKER_DATABASE_URL"] = f"sqlite:///{tmp_path / 'cli.db'}"
    e["COLUMNS"] = "200"
    return e


def test_console_script_is_installed() -> None:
    assert shutil.which("broker"), "pip install -e . installs the `broker` command"


def test_replay_then_offers_from_a_fresh_database(
    env: dict[str, str], snapshot_dirs: list[Path]
) -> None:
    d1, d2 = snapshot_dirs[-2], snapshot_dirs[-1]  # 2026-05-08T2152, 2026-05-20
    refused = run(env, "offers", ok=False)
    assert refused.returncode == 2 and "broker db upgrade" in refused.stderr
    run(env, "db", "upgrade")
    summary = json.loads(run(env, "replay", str(d1), str(d2), "--json").stdout)
    want, current = expected_events([d1, d2])
    by_type = Counter(t for t, _ in want.elements())
    assert summary["snapshots"] == 2 and summary["offers"] == current
    assert summary["events"] == {
        "offer_appeared": by_type["offer_appeared"],
        "offer_withdrawn": by_type["offer_withdrawn"],
        "price_changed": by_type["price_changed"],
        "availability_changed": 0,
        "spec_changed": by_type["spec_changed"],
    }

    args = [
        "offers",
        "--gpu",
        "H100",
        "--jurisdiction",
        "EU",
        "--market",
        "spot",
        "--max-price-per-gpu-hour",
        "4",
    ]
    rows: list[dict[str, Any]] = json.loads(run(env, *args, "--format", "json").stdout)
    assert rows
    for r in rows:
        assert r.keys() >= OFFER_FIELDS
        assert r["gpu_model"].startswith("H100") and r["jurisdiction"] == "EU"
        assert r["market"] == "spot" and r["price_per_gpu_hour"] <= 4 and r["stale"] is False
    prices = [Decimal(str(r["price_per_gpu_hour"])) for r in rows]
    assert prices == sorted(prices)

    table = list(csv.DictReader(io.StringIO(run(env, *args, "--format", "csv").stdout)))
    assert [r["key"] for r in table] == [r["key"] for r in rows]
    rendered = run(env, *args, "--format", "table").stdout
    assert "$/GPU-h" in rendered and rows[0]["instance_type"] in rendered

    # --group folds listings: every offer in exactly one group, the group's cheapest is the
    # cheapest of its members (computed here from the ungrouped rows).
    vast = json.loads(run(env, "offers", "--provider", "vast", "--format", "json").stdout)
    groups = json.loads(
        run(env, "offers", "--provider", "vast", "--group", "--format", "json").stdout
    )
    assert vast and sum(g["offers"] for g in groups) == len(vast)
    for g in groups:
        members = [
            r
            for r in vast
            if (r["gpu_model"], r["gpu_count"], r["country"], r["market"])
            == (g["gpu_model"], g["gpu_count"], g["country"], g["market"])
        ]
        assert len(members) == g["offers"]
        assert g["min_price_per_gpu_hour"] == min(r["price_per_gpu_hour"] for r in members)


def test_bad_gpu_name_gets_a_hint(env: dict[str, str]) -> None:
    run(env, "db", "upgrade")
    proc = run(env, "offers", "--gpu", "H10", ok=False)
    assert proc.returncode == 2 and "H100" in proc.stderr
    for args, hint in (
        (("--provider", "lambda"), "Did you mean lambda_cloud"),
        (("--jurisdiction", "XX"), "unknown jurisdiction 'XX'"),
        (("--gpu", "H100:0"), "Bad GPU count"),
    ):
        proc = run(env, "offers", *args, ok=False)
        assert proc.returncode == 2 and hint in proc.stderr, proc.stderr


def test_backtest_stamps_snapshot_times_so_old_data_is_stale(
    env: dict[str, str], snapshot_dirs: list[Path]
) -> None:
    run(env, "db", "upgrade")
    run(env, "replay", str(snapshot_dirs[0]), "--at-snapshot-times")
    assert json.loads(run(env, "offers", "--format", "json").stdout) == []
    hint = run(env, "offers", "--format", "table").stderr
    assert "stale" in hint and "--include-stale" in hint
    rows = json.loads(
        run(env, "offers", "--include-stale", "--format", "json", "--limit", "5").stdout
    )
    assert len(rows) == 5 and all(r["stale"] for r in rows)
    assert all(r["last_seen"].startswith("2022-12-31T00:00:00") for r in rows)


def test_replay_of_a_broken_file_reports_it_and_exits_nonzero(
    env: dict[str, str], tmp_path: Path
) -> None:
    run(env, "db", "upgrade")
    snap = tmp_path / "2026-01-01"
    snap.mkdir()
    (snap / "aws.csv").write_text("")
    proc = run(env, "replay", str(snap), "--json", ok=False)
    assert proc.returncode == 1
    assert json.loads(proc.stdout)["errors"] and "aws.csv: empty file" in proc.stderr


def test_poll_runs_the_replay_provider_over_the_bundled_sample(env: dict[str, str]) -> None:
    env["BROKER_REPLAY__STEP_S"] = str(10**9)  # both polls fall in the same replay step
    run(env, "db", "upgrade")
    first = json.loads(run(env, "poll", "--json").stdout)
    assert first["providers"]["replay"]["status"] == "ok"
    assert first["providers"]["replay"]["offers"] > 1000
    assert first["events"]["offer_appeared"] == first["providers"]["replay"]["offers"]
    again = json.loads(run(env, "poll", "replay", "--json").stdout)
    assert again["events"] == {}  # same time step, same snapshot: nothing changed
    unknown = run(env, "poll", "lamda", ok=False)
    assert unknown.returncode == 2 and "Unknown provider 'lamda'" in unknown.stderr


def test_the_table_fits_the_width_and_wide_shows_every_column(env: dict[str, str]) -> None:
    run(env, "db", "upgrade")
    run(env, "replay")
    narrow = run({**env, "COLUMNS": "80"}, "offers", "--gpu", "H100", "--format", "table")
    lines = narrow.stdout.splitlines()
    assert lines and max(len(line) for line in lines) <= 80, narrow.stdout
    assert "hidden at this width" in narrow.stdout and "provider" in lines[1]
    wide = run({**env, "COLUMNS": "80"}, "offers", "--gpu", "H100", "--format", "table", "--wide")
    assert "seen" in wide.stdout.splitlines()[1] and "hidden" not in wide.stdout
    # JSON keeps the plain price order (cheapest per GPU-hour first, every market).
    rows = json.loads(run(env, "offers", "--gpu", "H100", "--format", "json").stdout)
    prices = [r["price_per_gpu_hour"] for r in rows]
    assert prices == sorted(prices)


def test_version_and_short_help(env: dict[str, str]) -> None:
    from broker import package_version

    assert run(env, "--version").stdout.strip() == f"broker {package_version()}"
    assert "Multi-cloud GPU capacity broker" in run(env, "-h").stdout
    assert "--expires-in" in run(env, "apikey", "create", "-h").stdout


def test_one_config_file_for_every_command_env_over_file_secrets_masked(
    env: dict[str, str], tmp_path: Path
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    env = {**env, "BROKER_DATA_DIR": str(data)}
    (data / "broker.toml").write_text(
        'public_url = "http://10.0.0.5:9000"\n'
        'slack_webhook_extra_hosts = ["hooks.example.org"]\n'
        "[lambda_cloud]\n"
        'api_key = "sk-lambda-not-a-real-key-1234"\n'
    )
    shown = json.loads(run(env, "config", "show", "--json").stdout)
    assert shown["config_file"] == str(data / "broker.toml")
    settings = shown["settings"]
    assert settings["public_url"] == "http://10.0.0.5:9000"
    assert settings["slack_webhook_hosts"] == ["hooks.slack.com", "hooks.example.org"]
    assert "sk-lambda" not in json.dumps(shown)
    with_password = {**env, "BROKER_DATABASE_URL": "postgresql://u:hunter2pw@db:5432/x"}
    assert "hunter2pw" not in run(with_password, "config", "show").stdout
    # The environment wins over the file.
    over = run({**env, "BROKER_PUBLIC_URL": "http://127.0.0.1:8123"}, "config", "show", "--json")
    assert json.loads(over.stdout)["settings"]["public_url"] == "http://127.0.0.1:8123"
    # --config names another file; a missing one is refused.
    other = tmp_path / "other.toml"
    other.write_text('public_url = "http://other:1"\n')
    picked = run(env, "--config", str(other), "config", "show", "--json")
    assert json.loads(picked.stdout)["settings"]["public_url"] == "http://other:1"
    missing = run(env, "--config", str(tmp_path / "nope.toml"), "config", "show", ok=False)
    assert missing.returncode == 2 and "no such config file" in missing.stderr
