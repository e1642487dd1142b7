"""The `broker` command: wires settings, store, providers and output together.

The only module of `broker/` that imports `providers/`: commands build adapters from the
registry and hand their results to the plain functions of `broker.polling` and
`broker.offers`.
"""

from __future__ import annotations

import csv
import json
import os
import sys
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import nullcontext
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table
from sqlalchemy import Engine
from sqlmodel import Session

from broker import auth, db, gpus, vocab
from broker.config import CONFIG_ENV, Settings, config_file, get_settings
from broker.domain import Clock, Market, PollResult, ProviderStatus, utcnow
from broker.logs import configure_logging
from broker.offers import (
    GROUP_FIELDS,
    OUTPUT_FIELDS,
    IngestResult,
    OfferQuery,
    count_offers,
    gpu_filters,
    group_offers,
    list_offers,
)
from broker.pipeline import after_ingest
from broker.polling import poll_source, replay_results
from providers import base as provider_base
from providers import replay as replay_provider
from providers._recording import RecordingError, maybe_recording

app = typer.Typer(
    help="Multi-cloud GPU capacity broker.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)
db_app = typer.Typer(help="Database schema (Alembic migrations).", no_args_is_help=True)
app.add_typer(db_app, name="db")

err = Console(stderr=True)


class CliState:
    def __init__(self, settings: Settings, clock: Clock) -> None:
        self.settings, self.clock = settings, clock
        self._engine: Engine | None = None

    @property
    def engine(self) -> Engine:
        if self._engine is None:
            self._engine = db.make_engine(self.settings)
        return self._engine


def _state(ctx: typer.Context) -> CliState:
    obj = ctx.find_root().obj
    if not isinstance(obj, CliState):
        try:
            settings = get_settings()
        except (FileNotFoundError, ValueError) as exc:  # a bad config file or setting
            raise fail(f"settings: {exc}") from None
        obj = CliState(settings, utcnow)
        ctx.find_root().obj = obj
    return obj


def fail(message: str, code: int = 2) -> typer.Exit:
    err.print(f"[bold red]error:[/] {message}", highlight=False)
    return typer.Exit(code)


def _ready_engine(state: CliState) -> Engine:
    engine = state.engine
    if db.current_revision(engine) is None:
        raise fail(
            f"database {engine.url.render_as_string(hide_password=True)} is not "
            "initialised: run `broker db upgrade` first"
        )
    return engine


def _version(value: bool) -> None:
    if value:
        from broker import package_version

        typer.echo(f"broker {package_version()}")
        raise typer.Exit()


@app.callback()
def _main(
    ctx: typer.Context,
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
    config: Annotated[
        Path | None,
        typer.Option(
            "--config",
            help="Settings file (TOML); default: $BROKER_CONFIG, else broker.toml in the data dir.",
            show_default=False,
        ),
    ] = None,
) -> None:
    if config is not None:  # read by this process's settings and inherited by its children
        os.environ[CONFIG_ENV] = str(config)
    state = _state(ctx)
    configure_logging(state.settings.log_level, state.settings.log_format)


# ------------------------------------------------------------------------------ db


@db_app.command("upgrade")
def db_upgrade(
    ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "head"
) -> None:
    """Create or migrate the schema (SQLite file by default; BROKER_DATABASE_URL else)."""
    state = _state(ctx)
    db.upgrade(state.engine, revision)
    typer.echo(
        f"{state.engine.url.render_as_string(hide_password=True)}: schema at "
        f"{db.current_revision(state.engine)}"
    )


@db_app.command("downgrade")
def db_downgrade(
    ctx: typer.Context, revision: Annotated[str, typer.Argument(help="Target revision.")] = "base"
) -> None:
    """Revert the schema to REVISION (default: base, i.e. drop every table)."""
    state = _state(ctx)
    db.downgrade(state.engine, revision)
    typer.echo(
        f"{state.engine.url.render_as_string(hide_password=True)}: schema at "
        f"{db.current_revision(state.engine) or 'base'}"
    )


@db_app.command("current")
def db_current(ctx: typer.Context) -> None:
    """Print the database URL (password hidden) and its schema revision."""
    state = _state(ctx)
    typer.echo(
        f"{state.engine.url.render_as_string(hide_password=True)}: schema at "
        f"{db.current_revision(state.engine) or 'none (run broker db upgrade)'}"
    )


# -------------------------------------------------------------------------- replay


def _pipeline(state: CliState, engine: Engine) -> Callable[[IngestResult], object]:
    """What a producer (`poll`, `replay`) does with the events it wrote. Embedded mode:
    rescore, match alerts and deliver now, before the command exits. Production mode
    (`BROKER_REDIS_URL`): enqueue `broker.process_events` for the workers; if Redis is
    unreachable the batch stays unprocessed and the scheduler's sweep picks it up."""
    if not state.settings.redis_url:
        return lambda outcome: after_ingest(engine, outcome, state.settings, state.clock)
    from workers.tasks import process

    def enqueue(outcome: IngestResult) -> None:
        if outcome.first_event_id is None or outcome.last_event_id is None:
            return
        try:
            process.delay(outcome.first_event_id, outcome.last_event_id)
        except Exception as exc:  # kombu/redis errors: the sweep re-queues it
            err.print(
                f"could not enqueue the events ({type(exc).__name__}); the scheduler's "
                "sweep will process them",
                highlight=False,
            )

    return enqueue


def _snapshot_results(
    folders: Sequence[Path], clock: Clock, at_snapshot_times: bool
) -> Iterator[tuple[str, PollResult]]:
    for folder in folders:
        at = replay_provider.snapshot_time(folder) if at_snapshot_times else clock()
        yield folder.name, replay_provider.read_snapshot(folder, fetched_at=at)


@app.command()
def replay(
    ctx: typer.Context,
    paths: Annotated[
        list[Path] | None,
        typer.Argument(
            help="Snapshot folders, played in the order given (a folder of dated snapshot "
            "folders plays them all, oldest first). Default: the bundled sample market.",
            show_default=False,
        ),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help="Print the summary as one JSON object.")
    ] = False,
    at_snapshot_times: Annotated[
        bool,
        typer.Option(
            "--at-snapshot-times",
            help="Stamp each snapshot with its commit time (snapshots.csv beside the "
            "folders) or its folder's date, instead of now; folders must be oldest first.",
        ),
    ] = False,
) -> None:
    """Ingest recorded market snapshots in order, as if they were successive polls."""
    state = _state(ctx)
    engine = _ready_engine(state)
    folders: list[Path] = []
    try:
        for p in paths or [replay_provider.bundled_sample()]:
            folders += replay_provider.list_snapshots(p)
        if at_snapshot_times:
            replay_provider.check_chronological(folders)
    except (FileNotFoundError, ValueError, replay_provider.SnapshotFileError) as exc:
        raise fail(str(exc)) from None
    summary = replay_results(
        engine,
        _snapshot_results(folders, state.clock, at_snapshot_times),
        clock=state.clock,
        after=_pipeline(state, engine),
    )
    out = summary.as_dict()
    if as_json:
        typer.echo(json.dumps(out))
    else:
        ev = ", ".join(f"{k} {v}" for k, v in out["events"].items())
        typer.echo(
            f"replayed {out['snapshots']} snapshot(s): {out['offers']} current offers; events: {ev}"
        )
        if summary.skipped:
            typer.echo("skipped rows: " + ", ".join(f"{k} {v}" for k, v in out["skipped"].items()))
        _print_unrecognised(summary.unrecognised)
        for note in summary.notes[:10]:
            err.print(f"  {note}", highlight=False)
    for e in summary.errors:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
    if summary.errors:
        raise typer.Exit(1)


# ---------------------------------------------------------------------------- poll


def _replay_enabled(settings: Settings, others_enabled: bool) -> bool:
    return settings.replay.enabled if settings.replay.enabled is not None else not others_enabled


@app.command()
def poll(
    ctx: typer.Context,
    names: Annotated[
        list[str] | None,
        typer.Argument(help="Providers to poll (default: every enabled one).", show_default=False),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
    record: Annotated[
        Path | None,
        typer.Option(
            "--record",
            metavar="DIR",
            file_okay=False,
            help="Also write each provider's raw HTTP exchanges, credentials removed, to "
            "DIR/<provider>.jsonl; BROKER_<PROVIDER>__REPLAY_DIR=DIR replays them "
            "(docs/recording.md).",
        ),
    ] = None,
) -> None:
    """Poll providers once and ingest what they return."""
    state = _state(ctx)
    engine = _ready_engine(state)
    built, disabled = _build_sources(state, names)
    report: dict[str, dict[str, Any]] = {}
    events: Counter[str] = Counter()
    for name, reason in disabled.items():
        report[name] = {
            "status": str(ProviderStatus.DISABLED),
            "offers": 0,
            "scope_errors": [],
            "reason": reason,
        }
        if not as_json:
            err.print(f"{name}: disabled — {reason}", highlight=False)
    for name, source in built.items():
        spinner = err.status(f"polling {name}…", spinner="dots") if err.is_terminal else None
        with spinner or nullcontext(), maybe_recording(record) as recorded:
            outcome = poll_source(engine, source, clock=state.clock)
        _pipeline(state, engine)(outcome)
        events.update(outcome.events)
        report[name] = _poll_report(outcome)
        for path, exchanges in recorded.files.values() if recorded else ():
            report[name]["recording"] = str(path)
            if not as_json:
                err.print(f"{name}: recorded {exchanges} exchanges to {path}", highlight=False)
        if not as_json:
            ev = ", ".join(f"{k} {v}" for k, v in sorted(outcome.events.items())) or "no change"
            typer.echo(f"{name}: {outcome.status}, {outcome.offers_seen} offers; {ev}")
            for e in outcome.scope_errors:
                err.print(f"  {e['scope']}: {e['code']}: {e['message']}", highlight=False)
            _print_unrecognised(outcome.unrecognised)
    if as_json:
        typer.echo(json.dumps({"providers": report, "events": dict(sorted(events.items()))}))
    if any(r["status"] == ProviderStatus.DEGRADED for r in report.values()):
        raise typer.Exit(1)


def _poll_report(outcome: IngestResult) -> dict[str, Any]:
    return {
        "status": str(outcome.status),
        "offers": outcome.offers_seen,
        "poll_id": outcome.poll_run_id,
        "scope_errors": outcome.scope_errors,
        "skipped": dict(sorted(outcome.skipped.items())),
        "unrecognised": outcome.unrecognised,
    }


def _build_sources(
    state: CliState, names: list[str] | None
) -> tuple[dict[str, Any], dict[str, str]]:
    """The adapters to poll (by name) and the disabled ones with the reason."""
    try:
        wanted = names or provider_base.provider_names()
        classes = {n: provider_base.get_provider_class(n) for n in wanted}
    except provider_base.UnknownProvider as exc:
        raise fail(str(exc)) from None
    built: dict[str, Any] = {}
    disabled: dict[str, str] = {}
    for name, cls in classes.items():
        if name == "replay":
            continue
        try:
            built[name] = cls.from_settings(state.settings, state.clock)
        except provider_base.ProviderDisabled as exc:
            disabled[name] = str(exc)
        except (FileNotFoundError, RecordingError) as exc:  # BROKER_<NAME>__REPLAY_DIR
            raise fail(f"{name}: {exc}") from None
    if "replay" in classes:
        if names or _replay_enabled(state.settings, bool(built)):
            try:
                built["replay"] = classes["replay"].from_settings(state.settings, state.clock)
            except FileNotFoundError as exc:
                raise fail(str(exc)) from None
        else:
            disabled["replay"] = (
                "disabled because a cloud adapter is configured "
                "(set BROKER_REPLAY__ENABLED=true to poll it too)"
            )
    return built, disabled


# -------------------------------------------------------------------------- offers


class OutputFormat(StrEnum):
    TABLE = "table"
    JSON = "json"
    CSV = "csv"


def _print_unrecognised(unrecognised: dict[str, Any]) -> None:
    """One line per provider naming the regions and GPU names the tables do not know."""
    for provider, parts in sorted(unrecognised.items()):
        for what, names in sorted(parts.items()):
            if names:
                listed = ", ".join(f"{n} ({c})" for n, c in names.items())
                err.print(
                    f"  {provider}: unrecognised {what.replace('_', ' ')} (offers kept, with "
                    f"a null {'location' if what == 'regions' else 'model'}): {listed}",
                    highlight=False,
                )


def _jsonable(value: Any) -> Any:
    if isinstance(value, Decimal):
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, datetime):
        return value.astimezone(UTC).isoformat().replace("+00:00", "Z")
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    return value


def _csv_cell(value: Any) -> Any:
    """A CSV cell: empty for None, nested values (anomalies, source) as compact JSON."""
    if value is None:
        return ""
    out = _jsonable(value)
    return json.dumps(out, separators=(",", ":")) if isinstance(out, dict | list) else out


def _fmt_num(value: Decimal | None, places: int = 2) -> str:
    if value is None:
        return "—"
    if value == value.to_integral_value():
        return str(int(value))
    return f"{value:.{places}f}".rstrip("0").rstrip(".") if places > 2 else f"{value:.{places}f}"


def _age(then: datetime, now: datetime) -> str:
    s = max(0, int((now - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= size:
            return f"{s // size}{unit} ago"
    return f"{s}s ago"


_MARKET_SHORT: dict[str, str] = {"on_demand": "on-dem.", "capacity_block": "block"}
#: Table rows by market: what can be bought now at list price first.
_MARKET_ORDER: dict[str, int] = {"on_demand": 0, "capacity_block": 1, "reserved": 2, "spot": 3}
#: Table columns in the order they are dropped last-to-first when the terminal is narrow:
#: (title, justify, cell of a row). `--wide` shows them all.
_COLUMNS: tuple[tuple[str, str, Callable[[dict[str, Any], datetime], str]], ...] = (
    ("provider", "left", lambda r, now: r["provider"]),
    ("gpu", "left", lambda r, now: r["gpu_model"] or f"? {r['gpu_name_raw']}"),
    ("×", "right", lambda r, now: _fmt_num(r["gpu_count"], 3)),
    (
        "$/GPU-h",
        "right",
        lambda r, now: _fmt_num(r["price_per_gpu_hour"]) + (" !" if r["anomalies"] else ""),
    ),
    ("market", "left", lambda r, now: _MARKET_SHORT.get(r["market"], r["market"])),
    ("region", "left", lambda r, now: r["region"]),
    ("juris.", "left", lambda r, now: r["jurisdiction"] or "?"),
    ("avail.", "left", lambda r, now: r["availability"]),
    ("$/h", "right", lambda r, now: _fmt_num(r["price_per_hour"])),
    ("instance", "left", lambda r, now: r["instance_type"]),
    ("mem GB", "right", lambda r, now: _fmt_num(r["gpu_memory_gb"], 0)),
    ("zone", "left", lambda r, now: r["zone"] or ""),
    ("seen", "left", lambda r, now: _age(r["last_seen"], now) + (" stale" if r["stale"] else "")),
)


def _column_widths(cells: list[list[str]]) -> list[int]:
    """Each column's widest cell (title included)."""
    return [max([len(t), *(len(row[i]) for row in cells)]) for i, (t, _, _) in enumerate(_COLUMNS)]


def _fit_columns(cells: list[list[str]], width: int) -> list[int]:
    """Indexes of the columns that fit `width` (each column costs its widest cell plus 3 for
    borders and padding), in priority order: the first four always stay."""
    widths = _column_widths(cells)
    keep: list[int] = []
    used = 1
    for i, w in enumerate(widths):
        if i < 4 or used + w + 3 <= width:
            keep.append(i)
            used += w + 3
    return keep


def _render_table(rows: list[dict[str, Any]], total: int, now: datetime, wide: bool) -> None:
    """Offers as a table that fits the terminal: the least useful columns go first when it
    is narrow (`--wide` keeps all); rows by market (on-demand first), then price."""
    # A terminal's own width; piped, COLUMNS if set (e.g. `COLUMNS=80 broker offers | less`).
    piped = int(os.environ["COLUMNS"]) if os.environ.get("COLUMNS", "").isdigit() else 220
    console = Console() if sys.stdout.isatty() else Console(width=piped)
    cells = [[cell(r, now) for _, _, cell in _COLUMNS] for r in rows]
    keep = list(range(len(_COLUMNS))) if wide else _fit_columns(cells, console.width)
    if wide:  # every column at its full width, however wide the terminal
        widths = _column_widths(cells)
        console = Console(width=max(console.width, sum(widths) + 3 * len(widths) + 1))
    table = Table(show_lines=False, header_style="bold")
    for i in keep:
        title, justify, _ = _COLUMNS[i]
        table.add_column(title, justify=justify, no_wrap=True)  # type: ignore[arg-type]
    for row in cells:
        table.add_row(*(row[i] for i in keep))
    console.print(table)
    if len(keep) < len(_COLUMNS):
        hidden = ", ".join(_COLUMNS[i][0] for i in range(len(_COLUMNS)) if i not in keep)
        console.print(f"hidden at this width: {hidden} (--wide)", highlight=False)
    if total > len(rows):
        console.print(
            f"showing {len(rows)} of {total} offers, on-demand first, cheapest first "
            "(--limit 0 shows all)",
            highlight=False,
        )
    if any(r["anomalies"] for r in rows):
        console.print(
            "! price flagged by a sanity rule (docs/anomalies.md; --format json shows "
            "why, --exclude-anomalies hides them)"
        )


def _print_groups(groups: list[dict[str, Any]], fmt: OutputFormat, limit: int) -> None:
    shown = groups[:limit] if limit else groups
    if fmt == OutputFormat.JSON:
        typer.echo(json.dumps([{f: _jsonable(g[f]) for f in GROUP_FIELDS} for g in shown]))
        return
    if fmt == OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(GROUP_FIELDS)
        for g in shown:
            writer.writerow(
                [
                    " ".join(g[f]) if f == "regions" else "" if g[f] is None else _jsonable(g[f])
                    for f in GROUP_FIELDS
                ]
            )
        return
    console = Console() if sys.stdout.isatty() else Console(width=220)
    table = Table(header_style="bold")
    for title, justify in (
        ("provider", "left"),
        ("gpu", "left"),
        ("×", "right"),
        ("country", "left"),
        ("market", "left"),
        ("offers", "right"),
        ("available", "right"),
        ("min $/GPU-h", "right"),
        ("median $/GPU-h", "right"),
    ):
        table.add_column(title, justify=justify)  # type: ignore[arg-type]
    for g in shown:
        table.add_row(
            g["provider"],
            g["gpu_model"],
            _fmt_num(g["gpu_count"], 3),
            g["country"] or "?",
            g["market"],
            str(g["offers"]),
            str(g["available"]),
            _fmt_num(g["min_price_per_gpu_hour"]),
            _fmt_num(g["median_price_per_gpu_hour"]),
        )
    console.print(table)
    if len(groups) > len(shown):
        console.print(f"showing {len(shown)} of {len(groups)} groups (--limit 0 shows all)")


@app.command()
def offers(
    ctx: typer.Context,
    gpu: Annotated[
        list[str] | None,
        typer.Option(
            help="GPU model or family (H100, H100-SXM, 'H100 80GB', A100-80GB, TPU-v5p...); "
            "MODEL:COUNT = at least COUNT per instance (H100:8); repeatable.",
            show_default=False,
        ),
    ] = None,
    min_gpus: Annotated[
        float | None, typer.Option(help="Minimum accelerators per instance.", min=0)
    ] = None,
    provider: Annotated[
        list[str] | None, typer.Option(help="Provider id; repeatable.", show_default=False)
    ] = None,
    region: Annotated[
        list[str] | None, typer.Option(help="Provider region; repeatable.", show_default=False)
    ] = None,
    country: Annotated[
        list[str] | None, typer.Option(help="ISO country code; repeatable.", show_default=False)
    ] = None,
    jurisdiction: Annotated[
        list[str] | None,
        typer.Option(help="EU (EU/EEA) or an ISO country code; repeatable.", show_default=False),
    ] = None,
    market: Annotated[
        list[Market] | None, typer.Option(help="Market; repeatable.", show_default=False)
    ] = None,
    max_price_per_gpu_hour: Annotated[
        float | None, typer.Option(help="Maximum USD per GPU-hour.", min=0)
    ] = None,
    include_stale: Annotated[
        bool, typer.Option(help="Also show offers whose data is older than the stale TTL.")
    ] = False,
    exclude_anomalies: Annotated[
        bool,
        typer.Option(help="Hide offers whose price a sanity rule flagged (docs/anomalies.md)."),
    ] = False,
    output_format: Annotated[
        OutputFormat | None,
        typer.Option(
            "--format",
            help="table (default on a terminal), json (default otherwise) or csv.",
            show_default=False,
        ),
    ] = None,
    limit: Annotated[
        int | None,
        typer.Option(
            help="At most N offers (default: 50 in a table, all otherwise; 0 = all).", min=0
        ),
    ] = None,
    wide: Annotated[
        bool, typer.Option("--wide", help="Every column in the table, whatever the width.")
    ] = False,
    group: Annotated[
        bool,
        typer.Option(
            "--group",
            help="One row per provider, GPU model, GPUs per instance, country and market "
            "(count, available, cheapest and median $/GPU-h): folds marketplace listings.",
        ),
    ] = False,
) -> None:
    """List current offers, cheapest per GPU-hour first."""
    state = _state(ctx)
    engine = _ready_engine(state)
    try:
        models, minimums = gpu_filters(gpu or ())
        for kind, values in (
            ("provider", provider),
            ("region", region),
            ("country", country),
            ("jurisdiction", jurisdiction),
        ):
            vocab.check(kind, values or ())
    except (gpus.GpuFilterError, vocab.UnknownName) as exc:
        raise fail(str(exc)) from None
    fmt = output_format or (OutputFormat.TABLE if sys.stdout.isatty() else OutputFormat.JSON)
    if limit is None:
        limit = 50 if fmt == OutputFormat.TABLE else 0
    query = OfferQuery(
        gpu_models=models,
        gpu_minimums=minimums,
        min_gpus=Decimal(str(min_gpus)) if min_gpus is not None else None,
        providers=tuple(provider or ()),
        regions=tuple(region or ()),
        countries=tuple(country or ()),
        jurisdictions=tuple(jurisdiction or ()),
        markets=tuple(market or ()),
        max_price_per_gpu_hour=(
            Decimal(str(max_price_per_gpu_hour)) if max_price_per_gpu_hour is not None else None
        ),
        include_stale=include_stale,
        exclude_anomalies=exclude_anomalies,
    )
    now = state.clock()
    stale_after = timedelta(minutes=state.settings.stale_after_minutes)
    with Session(engine) as session:
        rows = list_offers(session, query, now=now, stale_after=stale_after)
        hidden_stale = (
            0
            if include_stale
            else count_offers(session, now=now, stale_after=stale_after, stale=True)
        )
    if group:
        _print_groups(group_offers(rows), fmt, limit)
        return
    total = len(rows)
    if fmt == OutputFormat.TABLE:  # JSON and CSV keep the plain price order
        rows = sorted(
            rows, key=lambda r: (_MARKET_ORDER.get(r["market"], 9), r["price_per_gpu_hour"])
        )
    shown = rows[:limit] if limit else rows
    if fmt == OutputFormat.JSON:
        typer.echo(json.dumps([{f: _jsonable(r[f]) for f in OUTPUT_FIELDS} for r in shown]))
    elif fmt == OutputFormat.CSV:
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(OUTPUT_FIELDS)
        for r in shown:
            writer.writerow([_csv_cell(r[f]) for f in OUTPUT_FIELDS])
    else:
        _render_table(shown, total, now, wide)
        if not rows and hidden_stale:
            err.print(
                f"no fresh offer matches; {hidden_stale} stale offer(s) in the store are "
                "hidden (--include-stale shows them)",
                highlight=False,
            )


# --------------------------------------------------------------------------- serve


def _check_port_free(host: str, port: int) -> None:
    """Fail before anything polls when another process (a second `broker serve`) holds the
    address: it would otherwise poll and ingest, then die on bind."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except OSError as exc:
        raise fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as exc:
            raise fail(
                f"{host}:{port} is in use ({exc.strerror or exc}): another broker serve? "
                "Choose another port with --port"
            ) from None


@app.command()
def serve(
    ctx: typer.Context,
    host: Annotated[str, typer.Option(help="Address to listen on.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.", min=1, max=65535)] = 8000,
    no_scheduler: Annotated[
        bool,
        typer.Option(
            "--no-scheduler",
            "--no-embedded-workers",
            help="Serve the API only: no polling or event processing in this process (the "
            "production shape, where `broker scheduler` and `broker worker` do it).",
        ),
    ] = False,
) -> None:
    """Serve the REST API (docs at /docs) and poll every enabled provider in-process."""
    import uvicorn

    from broker.api.app import create_app
    from workers.embedded import EmbeddedPoller

    state = _state(ctx)
    if no_scheduler or state.settings.redis_url:
        _require_secret_key(state.settings)
    engine = _ready_engine(state)
    _check_port_free(host, port)
    api = create_app(state.settings, engine, state.clock)
    poller = None
    if not no_scheduler:
        poller = EmbeddedPoller(engine, state.settings, state.clock)
        poller.start()
        polled = (
            ", ".join(f"{p} every {state.settings.poll_interval_for(p)}s" for p in poller.providers)
            or "none enabled"
        )
        err.print(f"polling {polled}", highlight=False)
    err.print(f"serving http://{host}:{port} (API docs at /docs)", highlight=False)
    try:
        uvicorn.run(
            api,
            host=host,
            port=port,
            log_level=state.settings.log_level.lower(),
            # uvicorn's loggers propagate to the root handler of `configure_logging`:
            # one format, and access lines (raw URLs, query strings) redacted.
            log_config=None,
            server_header=False,
        )
    finally:
        if poller is not None:
            poller.shutdown()


# -------------------------------------------------------------------------- apikey

config_app = typer.Typer(help="The effective settings (environment over config file).")
app.add_typer(config_app, name="config", no_args_is_help=True)


@config_app.command("show")
def config_show(
    ctx: typer.Context,
    as_json: Annotated[bool, typer.Option("--json", help="Print one JSON object.")] = False,
) -> None:
    """Print every effective setting, secrets masked, and which config file was read."""
    from sqlalchemy.engine import make_url

    state = _state(ctx)
    values = state.settings.model_dump(mode="json")  # SecretStr dumps as '**********'
    if values.get("database_url"):  # a password in the URL is a secret too
        values["database_url"] = make_url(values["database_url"]).render_as_string(
            hide_password=True
        )
    source = str(config_file() or "none")
    if as_json:
        typer.echo(json.dumps({"config_file": source, "settings": values}))
        return
    typer.echo(f"# config file: {source}")
    for key, value in sorted(values.items()):
        typer.echo(f"{key} = {json.dumps(value)}")


apikey_app = typer.Typer(help="API keys of the REST API (shown once, stored hashed).")
app.add_typer(apikey_app, name="apikey", no_args_is_help=True)


@apikey_app.command("create")
def apikey_create(
    ctx: typer.Context,
    team: Annotated[str, typer.Option(help="Team the key acts for (created if missing).")],
    role: Annotated[
        auth.Role, typer.Option(help="viewer: read; member: read and write; admin: all.")
    ] = auth.Role.MEMBER,
    name: Annotated[
        str | None, typer.Option(help="A label to recognise the key by.", show_default=False)
    ] = None,
    expires_in: Annotated[
        str | None,
        typer.Option(help="Refuse the key after this long: 90d, 12h, 30m.", show_default=False),
    ] = None,
    as_json: Annotated[
        bool, typer.Option("--json", help='Print {"key", "team", "role"} as JSON.')
    ] = False,
) -> None:
    """Create an API key and print it once (only its hash is stored)."""
    state = _state(ctx)
    engine = _ready_engine(state)
    try:
        ttl = auth.parse_duration(expires_in) if expires_in is not None else None
        with db.session_scope(engine) as session:
            created = auth.create_api_key(
                session, team, role, name=name, clock=state.clock, expires_in=ttl
            )
    except auth.AuthError as exc:
        raise fail(str(exc)) from None
    if as_json:
        typer.echo(
            json.dumps({"key": created.key, "team": created.team, "role": created.role.value})
        )
        return
    typer.echo(created.key)
    err.print(
        f"API key {created.prefix}… for team {created.team!r} (role {created.role.value}). "
        "It is shown only this once: store it now.",
        highlight=False,
    )


@apikey_app.command("list")
def apikey_list(
    ctx: typer.Context,
    team: Annotated[
        str | None, typer.Option(help="Only this team's keys.", show_default=False)
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array.")] = False,
) -> None:
    """List API keys by prefix (never the keys themselves)."""
    state = _state(ctx)
    engine = _ready_engine(state)
    with Session(engine) as session:
        rows = auth.list_api_keys(session, team)
    if as_json:
        typer.echo(json.dumps([{k: _jsonable(v) for k, v in r.items()} for r in rows]))
        return
    now = state.clock()
    console = Console() if sys.stdout.isatty() else Console(width=200)
    table = Table(header_style="bold")
    for title in ("prefix", "team", "role", "name", "created", "last used", "expires", "revoked"):
        table.add_column(title)
    for r in rows:
        table.add_row(
            r["prefix"],
            r["team"],
            r["role"],
            r["name"] or "",
            _age(r["created_at"], now),
            _age(r["last_used_at"], now) if r["last_used_at"] else "never",
            _jsonable(r["expires_at"]) if r["expires_at"] else "never",
            _age(r["revoked_at"], now) if r["revoked_at"] else "",
        )
    console.print(table)


@apikey_app.command("revoke")
def apikey_revoke(
    ctx: typer.Context,
    prefix: Annotated[str, typer.Argument(help="The key's prefix, as `broker apikey list` shows.")],
) -> None:
    """Revoke an API key: requests with it get 401 from now on."""
    state = _state(ctx)
    engine = _ready_engine(state)
    try:
        with db.session_scope(engine) as session:
            row, now_revoked = auth.revoke_api_key(session, prefix, clock=state.clock)
    except auth.AuthError as exc:
        raise fail(str(exc)) from None
    if now_revoked:
        typer.echo(f"revoked {row.prefix}")
    else:
        typer.echo(f"{row.prefix} was already revoked")


# ------------------------------------------------------------- worker / scheduler


def _production(state: Any) -> str:
    url: str | None = state.settings.redis_url
    if not url:
        raise fail(
            "production mode needs BROKER_REDIS_URL (e.g. redis://127.0.0.1:6379/0); "
            "without it `broker serve` runs everything in one process"
        )
    _require_secret_key(state.settings)
    return url


def _require_secret_key(settings: Settings) -> None:
    """Production mode refuses to start without a secret key of its own."""
    from broker.secrets import SecretKeyRequired, check_production_key

    try:
        check_production_key(settings)
    except SecretKeyRequired as exc:
        raise fail(str(exc)) from None


def _serve_metrics(settings: Settings, port: int | None, *, multiprocess: bool) -> None:
    """Serve this process's metrics on `port` (`--metrics-port`, else
    `BROKER_METRICS_PORT`), if set. A prefork worker's pool processes write to a shared
    directory (prometheus-client's multiprocess mode, `PROMETHEUS_MULTIPROC_DIR`, a fresh
    temporary one when unset) that the parent serves; the mode must be chosen before
    prometheus-client is first imported, which nothing on the way here does."""
    port = port if port is not None else settings.metrics_port
    if port is None:
        return
    import os

    if multiprocess and "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        import atexit
        import shutil
        import tempfile

        if "prometheus_client" in sys.modules:
            err.print(
                "prometheus-client was imported before PROMETHEUS_MULTIPROC_DIR was set: "
                "the pool processes' metrics will be missing (set it in the environment)",
                highlight=False,
            )
        path = tempfile.mkdtemp(prefix="broker-prom-")
        os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
        atexit.register(shutil.rmtree, path, ignore_errors=True)
    from prometheus_client import REGISTRY, CollectorRegistry, start_http_server

    registry = REGISTRY
    if multiprocess:
        from prometheus_client import multiprocess as mp

        registry = CollectorRegistry()
        mp.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    start_http_server(port, addr=settings.metrics_host, registry=registry)
    err.print(f"metrics on http://{settings.metrics_host}:{port}/metrics", highlight=False)


_MetricsPort = Annotated[
    int | None,
    typer.Option(
        "--metrics-port",
        min=1,
        max=65535,
        help="Serve this process's Prometheus metrics on this port (default: "
        "BROKER_METRICS_PORT; host BROKER_METRICS_HOST, 127.0.0.1 unless set).",
        show_default=False,
    ),
]


@app.command(
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def worker(ctx: typer.Context, metrics_port: _MetricsPort = None) -> None:
    """Run a Celery worker of the event pipeline (production mode; any number of them).

    Extra arguments go to `celery worker` (e.g. `--concurrency 4 --loglevel INFO`). With
    `BROKER_METRICS_PORT` its Prometheus metrics (poll duration, deliveries, event → Slack
    latency; all pool processes together) are served on that port."""
    state = _state(ctx)
    url = _production(state)
    _ready_engine(state)
    _serve_metrics(state.settings, metrics_port, multiprocess=True)
    from workers.celery_app import make_app

    make_app(url).worker_main(["worker", *ctx.args])


@app.command()
def scheduler(
    ctx: typer.Context,
    lock_ttl_s: Annotated[
        float, typer.Option(help="Leader lock TTL: a standby takes over this long after.")
    ] = 15.0,
    metrics_port: _MetricsPort = None,
) -> None:
    """Schedule polls (production mode). Run two for failover: one leads, one waits."""
    import signal

    state = _state(ctx)
    _production(state)
    _ready_engine(state)
    _serve_metrics(state.settings, metrics_port, multiprocess=False)
    from workers.scheduler import LeaderScheduler, identity
    from workers.tasks import poll as poll_task
    from workers.tasks import sweep as sweep_task

    def announce(role: str) -> None:
        err.print(f"scheduler {identity()}: {role}", highlight=False)

    runner = LeaderScheduler(
        state.settings,
        lambda name, fence: poll_task.delay(name, fence=fence),
        lock_ttl_s=lock_ttl_s,
        on_change=announce,
        housekeeping=lambda: sweep_task.delay(),
    )
    signal.signal(signal.SIGTERM, lambda *_: runner.stop())
    signal.signal(signal.SIGINT, lambda *_: runner.stop())
    runner.run()


# -------------------------------------------------------------------------- report

report_app = typer.Typer(help="Reports over the reservation ledger.", no_args_is_help=True)
app.add_typer(report_app, name="report")


@report_app.command("commitments")
def report_commitments(
    ctx: typer.Context,
    fmt: Annotated[
        str, typer.Option("--format", "-f", help="json, csv or html.", show_default=True)
    ] = "json",
    output: Annotated[
        Path | None, typer.Option("--output", "-o", help="Write here (default: stdout).")
    ] = None,
    as_of: Annotated[
        str | None,
        typer.Option(help="A date (2026-06-01, midnight UTC) or ISO 8601 time; default now."),
    ] = None,
    team: Annotated[
        str | None, typer.Option(help="Only this team's reservations (default: every team).")
    ] = None,
) -> None:
    """What is committed, with whom, until when, for how much, and the risk: concentration,
    expiry cliffs, utilisation, stale data, mark-to-market (see `GET /v1/reports/commitments`).
    Reservations whose end has passed are expired first."""
    from broker import reports

    state = _state(ctx)
    try:
        report_format = reports.ReportFormat(fmt.strip().lower())
    except ValueError:
        raise fail(f"unknown --format {fmt!r}; use json, csv or html") from None
    try:
        when = reports.parse_as_of(as_of) if as_of is not None else None
    except ValueError as exc:
        raise fail(f"--as-of: {exc}") from None
    engine = _ready_engine(state)
    with db.session_scope(engine) as session:
        team_id = None
        if team is not None:
            row = auth.get_team(session, team)
            if row is None:
                raise fail(f"no team {team!r} (`broker apikey list` shows the teams)")
            team_id = row.id
        rep = reports.build_report(
            session,
            settings=state.settings,
            now=state.clock(),
            as_of=when,
            team_id=team_id,
            team=team.strip() if team is not None else None,
        )
    text = reports.render(rep, report_format)
    if output is None or str(output) == "-":
        sys.stdout.write(text)
        return
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(text, encoding="utf-8", newline="")
    flags = len(rep.risk.flags)
    err.print(
        f"{output}: {rep.risk.totals.reservations} reservations, {flags} flag"
        f"{'s' if flags != 1 else ''} ({report_format.value})",
        highlight=False,
    )


def main() -> None:
    app()


if __name__ == "__main__":
    main()
