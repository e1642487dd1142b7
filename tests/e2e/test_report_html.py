"""The commitment report as a user gets it: `broker report commitments` (a real process, a
real database file with the bundled sample market and a book of commitments) writes HTML,
JSON and CSV; the HTML page is opened in a real headless Chromium (Debian's `chromium`): the
DOM it builds holds the four SVG charts, a screenshot shows them (the bars' colours are in
the pixels), and the colour the browser computes for each "versus market" figure follows
its sign in the JSON (positive = paying more than the market = red, negative = green).

Without Chromium the browser tests skip, except under CI (CI=true), where they fail:
`.ci/run` must install it (`apt-get install -y chromium`)."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import struct
import subprocess
import sys
import zlib
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from broker import db, ledger
from broker.auth import Role, create_api_key
from broker.polling import replay_results
from broker.reports import CSV_COLUMNS
from providers import replay

#: Debian's package; the name other distributions use as a fallback.
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
CHARTS = ("chart-spend-provider", "chart-spend-jurisdiction", "chart-expiry", "chart-utilisation")
#: The template's colours of a flagged expiry week / low utilisation (red) and spend bars.
RED = (0xDC, 0x26, 0x26)
BLUE = (0x25, 0x63, 0xEB)
#: The template's red (paying more than the market), green (paying less) and ink (at it).
CSS_RED, CSS_GREEN, CSS_INK = "rgb(220, 38, 38)", "rgb(22, 163, 74)", "rgb(29, 36, 48)"
#: Appended to a copy of the page (the report itself runs no script): writes the colour the
#: browser computed for every "versus market" figure and legend entry into the DOM.
PROBE = """<script>
const probe = [...document.querySelectorAll("[data-mtm], #mtm-legend .mtm")].map((e) => ({
  id: e.id, mtm: e.dataset.mtm ?? null, cls: e.className, text: e.textContent.trim(),
  colour: getComputedStyle(e).color,
}));
const pre = document.createElement("pre");
pre.id = "probe";
pre.textContent = JSON.stringify(probe);
document.body.appendChild(pre);
</script>"""


def need_chromium() -> str:
    if CHROMIUM is None:
        msg = "chromium is not installed (Debian: apt-get install -y chromium)"
        if os.environ.get("CI"):
            pytest.fail(msg + "; CI must install it")
        pytest.skip(msg)
    return CHROMIUM


def run(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(
        [sys.executable, "-m", "broker.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return proc


def commitment(now: datetime, **kw: Any) -> ledger.CommitmentIn:
    base: dict[str, Any] = {
        "provider": "lambda_cloud",
        "gpu_model": "H100-SXM",
        "gpus": 16,
        "region": "europe-central-1",
        "starts_at": now - timedelta(days=30),
        "ends_at": now + timedelta(days=60),
        "rate_per_gpu_hour": "3.50",
        "kind": "contract",
    }
    return ledger.CommitmentIn.model_validate({**base, **kw})


@pytest.fixture(scope="module")
def store(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A SQLite file with the bundled sample market polled now and team alpha's book."""
    tmp = tmp_path_factory.mktemp("report")
    url = f"sqlite:///{tmp / 'broker.db'}"
    engine = db.make_engine(url=url)
    db.upgrade(engine)
    now = datetime.now(UTC).replace(microsecond=0)
    folders = replay.list_snapshots(replay.bundled_sample())
    replay_results(
        engine,
        ((f.name, replay.read_snapshot(f, fetched_at=now)) for f in folders),
        clock=lambda: now,
    )
    d = timedelta(days=1)
    book = [
        # Above the EU H100-SXM market (red); the GCP contract below is under it (green).
        commitment(now, counterparty="Lambda <EU>", rate_per_gpu_hour="4.50"),
        commitment(
            now,
            provider="gcp",
            gpu_model="H100",
            gpus=64,
            region="europe-west4",
            starts_at=now - 20 * d,
            ends_at=now + 10 * d,
            rate_per_gpu_hour="2.40",
        ),
        commitment(
            now,
            provider="azure",
            gpu_model="A100-80GB",
            gpus=8,
            region="eastus",
            starts_at=now - 65 * d,
            ends_at=now + 300 * d,
            rate_per_gpu_hour="2.10",
            upfront_fee_usd="5000",
            kind="reserved_1y",
        ),
        commitment(
            now,
            provider="other",
            country="CH",
            region="Zurich colo",
            gpu_model="L4",
            gpus=8,
            starts_at=now + 7 * d,
            ends_at=now + 97 * d,
            rate_per_gpu_hour="0.90",
            counterparty="Zurich Colo AG",
        ),
    ]
    with db.session_scope(engine) as session:
        team = create_api_key(session, "alpha", Role.MEMBER, clock=lambda: now).team_id
        create_api_key(session, "beta", Role.MEMBER, clock=lambda: now)
        rows = [ledger.record_commitment(session, team, b, actor="test", now=now) for b in book]
        ledger.record_usage(
            session,
            rows[0],
            ledger.UsageIn(
                period_start=now - 8 * d, period_end=now - d, gpu_hours=Decimal(16 * 168 * 0.3)
            ),
            actor="test",
            now=now,
        )
    engine.dispose()
    env = {k: v for k, v in os.environ.items() if not k.startswith("BROKER_")}
    env["BROKER_DATABASE_URL"] = url
    return {"env": env, "tmp": tmp, "reservations": len(book)}


def test_cli_writes_json_csv_and_html(store: dict[str, Any]) -> None:
    env, tmp = store["env"], store["tmp"]
    out = run(env, "report", "commitments", "--team", "alpha", "--format", "json")
    body = json.loads(out.stdout)
    assert body["team"] == "alpha" and body["totals"]["reservations"] == store["reservations"]
    assert {f["kind"] for f in body["flags"]} >= {"expiry_cliff", "low_utilisation", "overpaying"}
    csv_path = tmp / "book.csv"
    proc = run(
        env, "report", "commitments", "--team", "alpha", "--format", "csv", "-o", str(csv_path)
    )
    assert f"{csv_path}: 4 reservations" in proc.stderr
    rows = list(csv.DictReader(io.StringIO(csv_path.read_text(encoding="utf-8-sig"))))
    assert len(rows) == 4 and tuple(rows[0]) == CSV_COLUMNS
    # Every team (no --team) and another team; a future date drops what ends before it.
    everyone = json.loads(run(env, "report", "commitments").stdout)
    assert everyone["team"] is None and len(everyone["reservations"]) == 4
    assert all(r["team"] == "alpha" for r in everyone["reservations"])
    beta = json.loads(run(env, "report", "commitments", "--team", "beta").stdout)
    assert beta["reservations"] == []
    later = (datetime.now(UTC) + timedelta(days=30)).strftime("%Y-%m-%d")
    future = json.loads(run(env, "report", "commitments", "--as-of", later).stdout)
    assert len(future["reservations"]) == 3  # the GCP contract has ended by then
    # Bad options: exit 2 with the reason.
    for args, words in [
        (("--format", "pdf"), "unknown --format"),
        (("--as-of", "soon"), "--as-of"),
        (("--team", "nobody"), "no team 'nobody'"),
    ]:
        bad = subprocess.run(
            [sys.executable, "-m", "broker.cli", "report", "commitments", *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert bad.returncode == 2 and words in bad.stderr, bad.stderr


def png_pixels(path: Path) -> tuple[int, int, set[tuple[int, int, int]]]:
    """(width, height, the set of RGB colours) of an 8-bit RGB/RGBA PNG, decoded with the
    standard library (zlib + the five PNG row filters)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n", "not a PNG"
    pos, idat = 8, b""
    width = height = 0
    channels = 0
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind = data[pos + 4 : pos + 8]
        chunk = data[pos + 8 : pos + 8 + length]
        pos += 12 + length
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", chunk[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += chunk
        elif kind == b"IEND":
            break
    raw = zlib.decompress(idat)
    stride = width * channels
    prev = bytearray(stride)
    colours: set[tuple[int, int, int]] = set()
    i = 0
    for _ in range(height):
        ftype = raw[i]
        line = bytearray(raw[i + 1 : i + 1 + stride])
        i += 1 + stride
        for x in range(stride):
            a = line[x - channels] if x >= channels else 0
            b = prev[x]
            c = prev[x - channels] if x >= channels else 0
            if ftype == 1:
                line[x] = (line[x] + a) & 0xFF
            elif ftype == 2:
                line[x] = (line[x] + b) & 0xFF
            elif ftype == 3:
                line[x] = (line[x] + (a + b) // 2) & 0xFF
            elif ftype == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                pred = a if pa <= pb and pa <= pc else b if pb <= pc else c
                line[x] = (line[x] + pred) & 0xFF
        for x in range(0, stride, channels * 2):  # every other pixel is plenty
            colours.add((line[x], line[x + 1], line[x + 2]))
        prev = line
    return width, height, colours


def chromium(browser: str, profile: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            browser,
            "--headless",
            "--no-sandbox",  # tests may run as root (CI containers)
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--hide-scrollbars",
            f"--user-data-dir={profile}",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=180,
    )


def test_html_report_renders_in_headless_chromium(store: dict[str, Any]) -> None:
    browser = need_chromium()
    env, tmp = store["env"], store["tmp"]
    page = tmp / "commitments.html"
    run(env, "report", "commitments", "--team", "alpha", "--format", "html", "-o", str(page))
    html = page.read_text(encoding="utf-8")
    assert (
        "<script" not in html
        and "<link" not in html
        and "http://" not in html.replace('xmlns="http://www.w3.org/2000/svg"', "")
    )
    url = page.resolve().as_uri()

    dom = chromium(browser, tmp / "profile-dom", "--dump-dom", url)
    assert dom.returncode == 0, dom.stderr
    for chart in CHARTS:
        assert f'id="{chart}"' in dom.stdout, chart
    assert dom.stdout.count("<rect") >= 26 and "GPU commitments of alpha" in dom.stdout
    assert "Lambda &lt;EU&gt;" in dom.stdout  # escaped, not markup

    shot = tmp / "commitments.png"
    proc = chromium(
        browser, tmp / "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url
    )
    assert proc.returncode == 0, proc.stderr
    assert shot.is_file() and shot.stat().st_size > 20_000, "screenshot missing or trivial"
    width, height, colours = png_pixels(shot)
    assert (width, height) == (1280, 2000)
    assert len(colours) > 50, f"the page looks blank: {len(colours)} colours"
    assert RED in colours, "no red bar (flagged expiry week, low utilisation) was painted"
    assert BLUE in colours, "no spend bar was painted"


def test_versus_market_colour_follows_its_sign_in_headless_chromium(store: dict[str, Any]) -> None:
    browser = need_chromium()
    env, tmp = store["env"], store["tmp"]
    body = json.loads(run(env, "report", "commitments", "--team", "alpha").stdout)
    deltas = [Decimal(r["mtm_monthly"]) for r in body["reservations"] if r["mtm_monthly"]]
    assert any(d > 0 for d in deltas) and any(d < 0 for d in deltas)  # both signs shown
    page = tmp / "mtm.html"
    run(env, "report", "commitments", "--team", "alpha", "--format", "html", "-o", str(page))
    html = page.read_text(encoding="utf-8")
    assert "Zurich Colo AG" in html and ", other)" not in html  # the colo is named
    probe = tmp / "mtm-probe.html"
    probe.write_text(html.replace("</body>", PROBE + "</body>"), encoding="utf-8")
    dom = chromium(browser, tmp / "profile-mtm", "--dump-dom", probe.resolve().as_uri())
    assert dom.returncode == 0, dom.stderr
    start = dom.stdout.index('<pre id="probe">') + len('<pre id="probe">')
    seen = json.loads(dom.stdout[start : dom.stdout.index("</pre>", start)])
    figures = [x for x in seen if x["mtm"] is not None]
    # The table's figures are the JSON's, one per reservation with a comparable, plus the
    # headline card (the month's total).
    assert sorted(Decimal(x["mtm"]) for x in figures if x["id"] != "mtm-total") == sorted(deltas)
    (card,) = [x for x in figures if x["id"] == "mtm-total"]
    assert Decimal(card["mtm"]) == Decimal(body["totals"]["monthly_mark_to_market"])
    for x in figures:
        d = Decimal(x["mtm"])
        want = CSS_RED if d > 0 else CSS_GREEN if d < 0 else CSS_INK
        assert x["colour"] == want, x
        assert x["text"].startswith("+$" if d > 0 else "-$" if d < 0 else "$"), x
    # The legend says the same in the same colours.
    legend = {x["text"].split(":")[0]: x["colour"] for x in seen if x["mtm"] is None}
    assert legend == {"+ red": CSS_RED, "− green": CSS_GREEN}
