"""All benchmarks: `python bench/run.py` prints the figures and writes BENCHMARKS.md.

Sections: ingest (below), scoring (`bench/scoring.py`: recommendations through the API,
rescoring 1,000 requests), alerts (`bench/alerts.py`: matching 1,000 subscriptions,
poll-to-Slack latency embedded and with Celery), load (`bench/load.py`: a sustained request
rate on two API processes over PostgreSQL, quiet and during a full re-poll; PostgreSQL only)
and one per provider adapter (`bench/adapter_*.py`: a full poll against its local fake).
`--only ingest|scoring|alerts|load|adapters` runs one section (the others keep their last
figures out of the file: it is rewritten whole).

Ingest cases, each on SQLite (a temp file) and PostgreSQL (a temp database, when reachable):
- the largest snapshot of `../shared/data/offers` (all its clouds): cold ingest into an empty
  store, then a re-poll of the same market with a few price changes;
- a 100,000-offer market built by scaling real rows of that snapshot (every non-GCP row
  repeated with a suffixed instance type, as many per-zone / per-listing offers as a full
  AWS + Vast market has), cold and re-poll;
- the floor: just reading the same CSV rows with `csv.DictReader`.
Every measurement runs in its own process so peak memory (max RSS) is that case's alone.
Loopback only; bounded; nothing here sleeps.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
DATA = Path(os.environ.get("BROKER_BENCH_DATA_DIR", REPO.parent / "shared" / "data"))
PG_ADMIN = os.environ.get(
    "BROKER_TEST_POSTGRES_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/postgres"
)
TARGET_OFFERS = 100_000
CHANGED = 20  # price changes in the "few changes" re-poll
T0 = datetime(2026, 11, 23, tzinfo=UTC)


def _rows_in(folder: Path) -> int:
    return sum(sum(1 for _ in p.open()) - 1 for p in folder.glob("*.csv"))


def largest_snapshot() -> Path:
    folders = sorted(p for p in (DATA / "offers").iterdir() if p.is_dir())
    return max(folders, key=_rows_in)


def build_scaled(src: Path, dst: Path, target: int) -> int:
    """Copy `src` to `dst`, repeating every non-GCP row k times (instance type suffixed
    `.rN`) so the market reaches about `target` offers. Returns k."""
    from providers.replay import read_snapshot

    offers = read_snapshot(src, T0).offers
    base = len(offers)
    gcp = sum(1 for o in offers if o.provider == "gcp")
    k = max(1, -(-(target - gcp) // max(1, base - gcp)))
    shutil.copytree(src, dst)
    for path in sorted(dst.glob("*.csv")):
        if path.stem == "gcp":
            continue
        with path.open(newline="") as f:
            reader = csv.DictReader(f)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader]
        with path.open("w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=header, extrasaction="ignore")
            writer.writeheader()
            for i in range(k):
                for r in rows:
                    r2 = dict(r)
                    r2["InstanceType"] = f"{r['InstanceType']}.r{i}"
                    writer.writerow(r2)
    return k


# ------------------------------------------------------------------- one measurement


def measure(case: str, folder: Path, db_url: str) -> dict[str, Any]:
    """Runs inside a fresh process: parse floor, or cold ingest + few-change re-poll."""
    if case == "parse_floor":
        t = time.perf_counter()
        n = 0
        for path in sorted(folder.rglob("*.csv")):
            with path.open(newline="") as f:
                for _ in csv.DictReader(f):
                    n += 1
        return {"rows": n, "seconds": time.perf_counter() - t}

    from broker import db
    from broker.db import session_scope
    from broker.offers import ingest_poll
    from providers.replay import read_snapshot

    engine = db.make_engine(url=db_url)
    db.upgrade(engine)
    t = time.perf_counter()
    result = read_snapshot(folder, T0)
    t_parse = time.perf_counter() - t
    t = time.perf_counter()
    with session_scope(engine) as s:
        cold = ingest_poll(s, result, source="bench")
    t_cold = time.perf_counter() - t

    # Second poll, moments later: the same market with CHANGED prices moved.
    offers = list(result.offers)
    step = max(1, len(offers) // CHANGED)
    for i in range(0, step * CHANGED, step):
        o = offers[i]
        offers[i] = replace(o, price_per_hour=o.price_per_hour + Decimal("0.01"))
    second = replace(result, offers=offers, fetched_at=T0 + timedelta(minutes=5))
    t = time.perf_counter()
    with session_scope(engine) as s:
        warm = ingest_poll(s, second, source="bench")
    t_warm = time.perf_counter() - t
    # And a re-read of the files as the real second poll does (parse + ingest).
    third = read_snapshot(folder, T0 + timedelta(minutes=10))
    t = time.perf_counter()
    with session_scope(engine) as s:
        ingest_poll(s, third, source="bench")
    t_warm_ingest_only = time.perf_counter() - t
    engine.dispose()
    return {
        "offers": cold.offers_seen,
        "parse_s": t_parse,
        "cold_ingest_s": t_cold,
        "cold_events": sum(cold.events.values()),
        "repoll_ingest_s": t_warm,
        "repoll_events": sum(warm.events.values()),
        "repoll_parse_plus_ingest_s": t_parse + t_warm_ingest_only,
    }


def run_case(case: str, folder: Path, db_url: str) -> dict[str, Any]:
    proc = subprocess.run(
        [sys.executable, __file__, "--worker", case, str(folder), db_url],
        capture_output=True,
        text=True,
        check=True,
    )
    return json.loads(proc.stdout.strip().splitlines()[-1])  # type: ignore[no-any-return]


def _pg_url() -> str | None:
    from sqlalchemy import create_engine, text

    try:
        admin = create_engine(PG_ADMIN, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text("DROP DATABASE IF EXISTS broker_bench WITH (FORCE)"))
            conn.execute(text("CREATE DATABASE broker_bench"))
        url = admin.url.set(database="broker_bench").render_as_string(hide_password=False)
        admin.dispose()
        return url
    except Exception as exc:
        print(f"PostgreSQL not reachable ({type(exc).__name__}); SQLite only")
        return None


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    mem_gb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (
        f"{cpu}, {os.cpu_count()} cores, {mem_gb:.0f} GiB RAM, {platform.system()} "
        f"{platform.release()}, Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", nargs=3, metavar=("CASE", "FOLDER", "DB_URL"))
    parser.add_argument("--out", default=str(REPO / "BENCHMARKS.md"))
    parser.add_argument("--only", choices=["ingest", "scoring", "alerts", "load", "adapters"])
    args = parser.parse_args()
    if args.worker:
        case, folder, url = args.worker
        out = measure(case, Path(folder), url)
        out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(json.dumps(out))
        return

    snap = largest_snapshot()
    pg = _pg_url()
    results: list[tuple[str, str, dict[str, Any]]] = []
    sections = {args.only} if args.only else {"ingest", "scoring", "alerts", "load", "adapters"}
    scoring: dict[str, Any] | None = None
    alerts: dict[str, Any] | None = None
    load: dict[str, Any] | None = None
    adapters: list[dict[str, Any]] = []
    if "scoring" in sections:
        scoring = run_module("bench.scoring", *([pg] if pg else []))
        print(f"scoring: {json.dumps(scoring)}")
    if "alerts" in sections:
        alerts = run_module("bench.alerts", *([pg] if pg else []))
        print(f"alerts: {json.dumps(alerts)}")
    if "load" in sections and pg:
        load = run_module("bench.load", _pg_url() or pg)
        print(f"load: {json.dumps(load)}")
    if "adapters" in sections:
        for path in sorted((REPO / "bench").glob("adapter_*.py")):
            figures = run_module(f"bench.{path.stem}")
            adapters.append(figures)
            print(f"{path.stem}: {json.dumps(figures)}")
    if "ingest" not in sections:
        write_markdown(Path(args.out), snap, results, scoring, adapters, alerts, load)
        return
    with tempfile.TemporaryDirectory() as tmp:
        scaled = Path(tmp) / snap.name
        k = build_scaled(snap, scaled, TARGET_OFFERS)
        markets = [(f"real snapshot {snap.name}", snap), (f"scaled ×{k} (~100k offers)", scaled)]
        for label, folder in markets:
            floor = run_case("parse_floor", folder, "")
            results.append((label, "csv parse floor", floor))
            print(f"{label}: parse floor {floor['rows']} rows in {floor['seconds']:.3f}s")
            backends = [("SQLite", f"sqlite:///{tmp}/bench-{len(results)}.db")]
            if pg:
                backends.append(("PostgreSQL", pg))
            for name, url in backends:
                if url == pg:
                    _pg_url()  # fresh database per case
                r = run_case("ingest", folder, url)
                r["floor_s"] = floor["seconds"]
                results.append((label, name, r))
                print(
                    f"{label} / {name}: {r['offers']} offers, cold {r['cold_ingest_s']:.3f}s "
                    f"({r['offers'] / r['cold_ingest_s']:.0f} offers/s, "
                    f"{r['cold_events'] / r['cold_ingest_s']:.0f} events/s), re-poll "
                    f"{r['repoll_ingest_s']:.3f}s ({r['repoll_events']} events), parse "
                    f"{r['parse_s']:.3f}s, peak {r['peak_rss_mb']:.0f} MB"
                )
    write_markdown(Path(args.out), snap, results, scoring, adapters, alerts, load)


def run_module(module: str, *argv: str) -> dict[str, Any]:
    """`python -m module argv...` in its own process; its last stdout line is JSON."""
    proc = subprocess.run(
        [sys.executable, "-m", module, *argv],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-5:]
        return {"module": module, "error": " | ".join(tail)}
    out: dict[str, Any] = json.loads(proc.stdout.strip().splitlines()[-1])
    return out


def write_markdown(
    path: Path,
    snap: Path,
    results: list[tuple[str, str, dict[str, Any]]],
    scoring: dict[str, Any] | None = None,
    adapters: list[dict[str, Any]] | None = None,
    alerts: dict[str, Any] | None = None,
    load: dict[str, Any] | None = None,
) -> None:
    lines = [
        "# Benchmarks",
        "",
        f"Measured {datetime.now(UTC):%Y-%m-%d %H:%M} UTC on {machine()}.",
        f"Command: `python bench/run.py`. Input: `../shared/data/offers/{snap.name}` (the",
        "largest snapshot, all its clouds) and the same scaled to ~100k offers by repeating its",
        "non-GCP rows. Each case runs in a fresh process (peak = max RSS of that process).",
        "",
        "Ingest = diff + writes + commit of one poll (the `PollResult` already parsed); parse =",
        "reading the snapshot into `Offer`s (CSV, catalogues, GCP host pairing); floor = only",
        f"`csv.DictReader` over the same files. Re-poll = the same market {CHANGED} prices moved.",
        "",
        "| market | backend | offers | parse floor s | parse s | cold ingest s | offers/s "
        "| events/s | re-poll ingest s | re-poll events | re-poll parse+ingest s "
        "| (parse+re-poll)/floor | peak MB |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for label, backend, r in results:
        if backend == "csv parse floor":
            continue
        ratio = r["repoll_parse_plus_ingest_s"] / r["floor_s"]
        lines.append(
            f"| {label} | {backend} | {r['offers']} | {r['floor_s']:.3f} | {r['parse_s']:.3f} "
            f"| {r['cold_ingest_s']:.3f} | {r['offers'] / r['cold_ingest_s']:,.0f} "
            f"| {r['cold_events'] / r['cold_ingest_s']:,.0f} | {r['repoll_ingest_s']:.3f} "
            f"| {r['repoll_events']} | {r['repoll_parse_plus_ingest_s']:.3f} | {ratio:.1f}× "
            f"| {r['peak_rss_mb']:.0f} |"
        )
    lines += ["", "Against the targets of issue 3 (on SQLite):", ""]
    for label, backend, r in results:
        if backend != "SQLite":
            continue
        limit = 0.2 if label.startswith("real") else 3.0
        verdict = "met" if r["repoll_ingest_s"] < limit else "NOT met"
        within = "met" if r["repoll_ingest_s"] <= 3 * r["floor_s"] else "NOT met"
        lines.append(
            f"- {label}: re-poll ingest {r['repoll_ingest_s']:.3f} s, target < {limit} s: "
            f"{verdict}; re-poll ingest is {r['repoll_ingest_s'] / r['floor_s']:.1f}× the "
            f"parse floor (target 3×: {within})."
        )
    lines += _scoring_lines(scoring) + _alert_lines(alerts) + _load_lines(load)
    lines += _adapter_lines(adapters or [])
    lines.append("")
    path.write_text("\n".join(lines))
    print(f"wrote {path}")


def _scoring_lines(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    lines = ["", "## Scoring (issue 6)", ""]
    if "error" in r:
        return [*lines, f"Failed: {r['error']}"]
    api = r["api_sqlite"]
    lines += [
        "Recommendations for one request (64 × H100 in nodes of 8, EU only, 4 weeks) over the",
        f"real 2026-05-20 market through the API (uvicorn on 127.0.0.1, httpx keep-alive, "
        f"{api['calls']} calls, SQLite): p50 {api['p50_ms']} ms, p99 {api['p99_ms']} ms "
        f"({api['options']} options, {api['excluded_groups']} excluded groups). "
        f"Target p99 < 50 ms: {'met' if api['p99_ms'] < 50 else 'NOT met'}.",
        "",
        "Rescoring after a full re-poll (real 2026-05-08T2152 market, then the real 2026-05-20",
        "snapshot ingested; every open request whose GPU models the events touch is ranked",
        "again and its best option compared):",
        "",
        "| backend | open requests | offers | market events | rescoring s | best changed |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("SQLite", "rescoring_sqlite"), ("PostgreSQL", "rescoring_postgresql")):
        if key in r:
            x = r[key]
            lines.append(
                f"| {name} | {x['requests']} | {x['offers_after']} | {x['market_events']} "
                f"| {x['rescore_s']} | {x['best_option_changed']} |"
            )
    worst = max(r[k]["rescore_s"] for k in r if k.startswith("rescoring_"))
    lines += ["", f"Target: 1,000 requests in < 2 s: {'met' if worst < 2 else 'NOT met'}."]
    return lines


def _alert_lines(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    lines = ["", "## Alerts (issue 7)", ""]
    if "error" in r:
        return [*lines, f"Failed: {r['error']}"]
    lines += [
        "1,000 subscriptions of varied shape (1-2 GPU models, jurisdiction, provider, market,",
        "price cap). `process_events` (rescoring + matching + outbox rows, one transaction)",
        "over the real 2026-05-01 market ingested into an empty store (every offer appears),",
        "then over the real 2026-05-08T1849 snapshot's changes:",
        "",
        "| backend | batch | market events | seconds | events/s | deliveries written |",
        "|---|---|---|---|---|---|",
    ]
    for name, key in (("SQLite", "throughput_sqlite"), ("PostgreSQL", "throughput_postgresql")):
        for batch in ("first", "changes"):
            if key in r:
                x = r[key][batch]
                lines.append(
                    f"| {name} | {x['snapshot']} | {x['events']} | {x['seconds']} "
                    f"| {x['events_per_s']:,} | {x['deliveries']} |"
                )
    lines += [
        "",
        "Poll-to-Slack latency: 40 Lambda polls in which one offer is withdrawn and then",
        "returns (re-entering every match set it was in); latency = the fake Slack (httpx",
        "over 127.0.0.1) accepting a message − the ingest that wrote its event committing.",
        "",
        "| mode | messages | p50 ms | p99 ms | max ms | target p99 |",
        "|---|---|---|---|---|---|",
    ]
    for name, key, target in (
        ("embedded (SQLite, in-process)", "embedded_sqlite", 1000),
        ("Celery (2 worker processes, Redis, PostgreSQL)", "celery_postgresql", 2000),
    ):
        if key in r and r[key].get("messages"):
            x = r[key]
            ok = "met" if x["p99_ms"] < target else "NOT met"
            lines.append(
                f"| {name} | {x['messages']} | {x['p50_ms']} | {x['p99_ms']} | {x['max_ms']} "
                f"| < {target} ms: {ok} |"
            )
    return lines


def _load_lines(r: dict[str, Any] | None) -> list[str]:
    if not r:
        return []
    q, d = r["quiet"], r["during_ingest"]
    lines = [
        "",
        "## Load (issue 9)",
        "",
        "Two `broker serve` processes on PostgreSQL, an open-loop client (asyncio httpx, on the",
        f"same 2 cores) alternating between them at {q['target_rps']} requests/s for "
        f"{q['seconds']} s: 80 % `GET /v1/offers?gpu=H100&limit=50`, 20 % recommendations of",
        "a 64 × H100 EU request; latency counted from each request's scheduled send. Then the",
        "same load while a full re-poll of the real market (2026-05-20 over 2026-05-08T2152) is",
        "ingested.",
        "",
        "| phase | achieved req/s | errors | offers p50 / p99 ms | recommendations p50 / p99 ms |",
        "|---|---|---|---|---|",
    ]
    for name, x in (("quiet", q), (f"during ingest ({d.get('ingest_s')} s)", d)):
        errors = sum(x["errors"].values())
        lines.append(
            f"| {name} | {x['achieved_rps']} | {errors} | {x['offers']['p50_ms']} / "
            f"{x['offers']['p99_ms']} | {x['recommendations']['p50_ms']} / "
            f"{x['recommendations']['p99_ms']} |"
        )
    return lines


def _adapter_lines(rows: list[dict[str, Any]]) -> list[str]:
    if not rows:
        return []
    lines = [
        "",
        "## Provider adapters (issues 4 and 5)",
        "",
        "A full poll of each adapter against its local fake (127.0.0.1) serving a realistic",
        "catalogue for all regions; the fake adds a per-request latency where the adapter fans",
        "out over regions, so the bounded pool can be compared with the slowest region",
        "(target: full poll ≤ ~2× the slowest single region).",
        "",
        "| adapter | regions | offers | API calls | full poll s | slowest region s | ratio |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "error" in r:
            lines.append(f"| {r['module']} | failed: {r['error']} | | | | | |")
            continue
        slow = r.get("slowest_region_s")
        ratio = f"{r['wall_s'] / slow:.2f}×" if slow else "n/a"
        lines.append(
            f"| {r.get('adapter')} | {r.get('regions', '')} | {r.get('offers', '')} "
            f"| {r.get('api_calls', '')} | {r.get('wall_s', '')} | {slow or 'n/a'} | {ratio} |"
        )
    return [*lines, "", *ADAPTER_NOTES]


#: What the ratio column means per adapter (the same words go into BENCHMARKS.md).
ADAPTER_NOTES = [
    "Reading the ratio: azure's cold poll decodes every location's full VM price list (about",
    "160 MB of JSON, CPU-bound on 2 cores); with prices cached (`BROKER_AZURE__PRICES_TTL_S`)",
    "a poll is 1.1-1.5 s, 1.1× its slowest location. runpod polls 30 data centres with 8",
    "workers, so 30/8 rounds of one request make ~2.5× the floor (2.0× at",
    "`BROKER_RUNPOD__MAX_CONCURRENCY=32`). vast's two searches (on demand, interruptible) run",
    "one after the other by design (Vast allows 10 searches a minute; the 6 s pacing is off in",
    "the benchmark); verda's full poll includes the OAuth token request. lambda_cloud is one",
    "request. aws and gcp share project-wide catalogue calls across regions.",
]


if __name__ == "__main__":
    main()
