"""The ``loglambda`` command line. Every flag is also an env var (shown in --help)."""

from __future__ import annotations

import importlib
import importlib.util
import json
import sys
from pathlib import Path
from typing import Any

import click

from loglambda.core.cli_options import HOME_OPTION
from loglambda.core.config import Settings

__all__ = ["HOME_OPTION", "main"]


# Commands that live beside the layer they drive, imported only when invoked (so
# `loglambda import` never pays for Beam or FastAPI). name -> "module:attribute".
LAZY_COMMANDS: dict[str, str] = {
    "tail": "loglambda.ingest.cli:tail_cmd",
    "serve": "loglambda.serving.cli:serve_cmd",
    "master": "loglambda.batch.cli:master_cmd",
    "status": "loglambda.core.status:status_cmd",
    "speed": "loglambda.speed.cli:speed_cmd",
    "kafka-source": "loglambda.ingest.kafka_source:kafka_source_cmd",
    "query": "loglambda.serving.query_cli:query_cmd",
    "sql": "loglambda.serving.query_cli:sql_cmd",
}


class _LazyGroup(click.Group):
    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted([*super().list_commands(ctx), *self._available()])

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name in LAZY_COMMANDS and cmd_name not in self.commands:
            module, attr = LAZY_COMMANDS[cmd_name].split(":")
            command: click.Command = getattr(importlib.import_module(module), attr)
            return command
        return super().get_command(ctx, cmd_name)

    @staticmethod
    def _available() -> list[str]:
        # A command whose module is not written yet is not offered.
        available = []
        for name, target in LAZY_COMMANDS.items():
            try:
                found = importlib.util.find_spec(target.split(":")[0]) is not None
            except ModuleNotFoundError:  # its package does not exist yet
                found = False
            if found:
                available.append(name)
        return available


@click.group(
    cls=_LazyGroup,
    context_settings={"help_option_names": ["-h", "--help"], "show_default": True},
)
def main() -> None:
    """loglambda: web traffic and log analytics, batch + speed + serving."""


@main.command("generate")
@click.argument("out", type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--kind",
    type=click.Choice(["traffic", "logs"]),
    default="traffic",
    envvar="LOGLAMBDA_GENERATE_KIND",
    show_envvar=True,
)
@click.option(
    "--lines",
    type=click.IntRange(min=0),
    default=100_000,
    envvar="LOGLAMBDA_GENERATE_LINES",
    show_envvar=True,
)
@click.option(
    "--format",
    "fmt",
    default=None,
    envvar="LOGLAMBDA_GENERATE_FORMAT",
    show_envvar=True,
    help="combined | nginx_json (traffic); json (logs).",
)
@click.option("--seed", type=int, default=42, envvar="LOGLAMBDA_GENERATE_SEED", show_envvar=True)
@click.option("--days", type=float, default=1.0, envvar="LOGLAMBDA_GENERATE_DAYS", show_envvar=True)
@click.option(
    "--start",
    default=None,
    envvar="LOGLAMBDA_GENERATE_START",
    show_envvar=True,
    help="ISO-8601 start instant (default 2026-11-01T00:00Z).",
)
@click.option(
    "--malformed-share",
    type=click.FloatRange(0, 1),
    default=0.001,
    envvar="LOGLAMBDA_GENERATE_MALFORMED_SHARE",
    show_envvar=True,
)
@click.option(
    "--late-share",
    type=click.FloatRange(0, 1),
    default=0.001,
    envvar="LOGLAMBDA_GENERATE_LATE_SHARE",
    show_envvar=True,
)
def generate_cmd(
    out: Path,
    kind: str,
    lines: int,
    fmt: str | None,
    seed: int,
    days: float,
    start: str | None,
    malformed_share: float,
    late_share: float,
) -> None:
    """Write a realistic, seeded sample log to OUT (.gz compresses)."""
    from loglambda.core.generate import main_generate

    chosen = fmt or ("combined" if kind == "traffic" else "json")
    try:
        report = main_generate(
            kind, lines, out, seed, chosen, days, start, malformed_share, late_share
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    click.echo(report.summary())


@main.command("import")
@click.argument(
    "files", nargs=-1, required=True, type=click.Path(exists=True, dir_okay=False, path_type=Path)
)
@click.option(
    "--format",
    "fmt",
    default="auto",
    envvar="LOGLAMBDA_FORMAT",
    show_envvar=True,
    help="Log format, or auto to detect it (see `loglambda formats`).",
)
@HOME_OPTION
def import_cmd(files: tuple[Path, ...], fmt: str, home: Path | None) -> None:
    """Bulk-import log files (plain or .gz) into the master dataset."""
    from loglambda.batch import import_tuning

    import_tuning.before_libraries_load()
    from loglambda.batch.importer import import_file, progress_wanted
    from loglambda.batch.master import MasterDataset

    import_tuning.after_libraries_load()

    settings = Settings.load(home)
    master = MasterDataset(settings.home)
    for note in master.recover():
        click.echo(note, err=True)
    totals = [0, 0, 0]
    for path in files:
        bar = _Bar(path) if progress_wanted(path) else None
        try:
            result = import_file(master, path, fmt, on_progress=bar.update_to if bar else None)
        except ValueError as err:
            raise click.ClickException(str(err)) from err
        finally:
            if bar is not None:
                bar.close()
        if result.detected:
            click.echo(f"{path}: {result.detected}", err=True)
        click.echo(result.summary())
        totals[0] += result.read
        totals[1] += result.accepted
        totals[2] += result.quarantined
    if len(files) > 1:
        click.echo(
            f"total: read {totals[0]:,} = imported {totals[1]:,} + quarantined {totals[2]:,}"
        )


class _Bar:
    def __init__(self, path: Path) -> None:
        from tqdm import tqdm

        self._bar = tqdm(
            total=path.stat().st_size,
            unit="B",
            unit_scale=True,
            desc=path.name,
            file=sys.stderr,
            disable=None,
            leave=False,
        )

    def update_to(self, pos: int) -> None:
        self._bar.update(pos - self._bar.n)

    def close(self) -> None:
        self._bar.close()


@main.command("summary")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="LOGLAMBDA_JSON",
    show_envvar=True,
    help="Print one JSON object instead of a table.",
)
@click.option(
    "--top", type=click.IntRange(min=1), default=10, envvar="LOGLAMBDA_TOP", show_envvar=True
)
@click.option(
    "--count-4xx-visitors",
    is_flag=True,
    envvar="LOGLAMBDA_COUNT_4XX_VISITORS",
    show_envvar=True,
    help="Let 4xx requests create unique visitors (GoAccess's --4xx-to-unique-count).",
)
@HOME_OPTION
def summary_cmd(as_json: bool, top: int, count_4xx_visitors: bool, home: Path | None) -> None:
    """Totals, status classes, bandwidth, unique visitors and top paths, over every
    event ingested (imported history and streamed events not yet in the master)."""
    from loglambda.serving.sql import QueryEngine
    from loglambda.serving.summary import summarize

    settings = Settings.load(home)
    summary = summarize(QueryEngine(settings), top=top, count_4xx_visitors=count_4xx_visitors)
    if as_json:
        click.echo(json.dumps(summary.to_json()))
    else:
        click.echo(summary.render())


@main.command("formats")
def formats_cmd() -> None:
    """List the log formats `--format` accepts."""
    from loglambda.core.parsers import PARSERS

    for name, parser in PARSERS.items():
        click.echo(f"{name:16} {parser.kind}")


@main.command("quarantine")
@click.option(
    "--reason",
    default=None,
    envvar="LOGLAMBDA_REASON",
    show_envvar=True,
    help="Only this reason code.",
)
@click.option(
    "--limit", type=click.IntRange(min=1), default=20, envvar="LOGLAMBDA_LIMIT", show_envvar=True
)
@click.option("--counts", is_flag=True, help="Counts per source and reason instead of records.")
@HOME_OPTION
def quarantine_cmd(reason: str | None, limit: int, counts: bool, home: Path | None) -> None:
    """Show quarantined records: source, line, reason and the raw text."""
    import duckdb

    settings = Settings.load(home)
    qdir = settings.home / "quarantine"
    files = sorted(str(p) for p in qdir.glob("*.parquet")) if qdir.is_dir() else []
    if not files:
        click.echo("quarantine is empty")
        return
    con = duckdb.connect()
    where = "WHERE reason = $reason" if reason else ""
    params: dict[str, Any] = {"files": files, "limit": limit}
    if reason:
        params["reason"] = reason
    if counts:
        rows = con.execute(
            f"SELECT source, reason, count(*) FROM read_parquet($files) {where} "
            "GROUP BY ALL ORDER BY 3 DESC LIMIT $limit",
            params,
        ).fetchall()
        for source, why, n in rows:
            click.echo(f"{n:>10,}  {why:14} {source}")
        return
    rows = con.execute(
        "SELECT source, source_line, reason, detail, raw FROM read_parquet($files) "
        f"{where} ORDER BY source, source_line LIMIT $limit",
        params,
    ).fetchall()
    for source, line, why, detail, raw in rows:
        click.echo(f"{source}:{line}: {why}: {detail}\n    {raw[:200]}")


@main.group("batch")
def batch_group() -> None:
    """Recompute batch views from the master dataset; list and roll back versions."""


@batch_group.command("run")
@click.option(
    "--engine",
    default="duckdb",
    envvar="LOGLAMBDA_ENGINE",
    show_envvar=True,
    help="Batch engine that computes the views: duckdb.",
)
@click.option(
    "--views",
    default=None,
    envvar="LOGLAMBDA_VIEWS",
    show_envvar=True,
    help="Comma-separated views to repair: recomputed at the current version's horizon, "
    "the others carried over. Default: every view, at a new horizon.",
)
@click.option(
    "--keep",
    type=click.IntRange(min=1),
    default=5,
    envvar="LOGLAMBDA_KEEP_VERSIONS",
    show_envvar=True,
    help="Versions to keep; older ones are deleted (never the current one).",
)
@HOME_OPTION
def batch_run_cmd(engine: str, views: str | None, keep: int, home: Path | None) -> None:
    """Recompute the views and publish them as a new version."""
    from loglambda.batch.recompute import ViewProgress, run_batch
    from loglambda.batch.versions import VersionError, VersionStore

    settings = Settings.load(home)

    def show(p: ViewProgress) -> None:
        if p.carried_from is None:
            click.echo(f"  {p.name:<28} {p.rows:>12,} rows {p.seconds:8.2f} s")
        else:
            click.echo(
                f"  {p.name:<28} {p.rows:>12,} rows  carried over from version {p.carried_from}"
            )

    chosen = [v.strip() for v in views.split(",") if v.strip()] if views else None
    try:
        record = run_batch(
            settings.home,
            engine,
            chosen,
            keep,
            on_progress=show,
            on_note=lambda message: click.echo(message, err=True),
        )
    except VersionError as err:
        raise click.ClickException(str(err)) from err
    except Exception:
        current = VersionStore(settings.home).current()
        served = f"version {current.version}" if current else "no version"
        click.echo(
            f"batch run failed: CURRENT unchanged ({served}); the next run removes the "
            "partial output",
            err=True,
        )
        raise
    click.echo(
        f"published version {record.version}: horizon {record.horizon.describe()}, "
        f"{len(record.views)} views, {record.rows:,} rows in {record.duration_s:.1f} s"
    )


@batch_group.command("status")
@click.option(
    "--json",
    "as_json",
    is_flag=True,
    envvar="LOGLAMBDA_JSON",
    show_envvar=True,
    help="Print one JSON object instead of text.",
)
@HOME_OPTION
def batch_status_cmd(as_json: bool, home: Path | None) -> None:
    """List kept versions: horizon, rows, duration, which is current."""
    from loglambda.batch.master import MasterDataset
    from loglambda.batch.versions import VersionStore

    settings = Settings.load(home)
    store = VersionStore(settings.home)
    current = store.current()
    number = current.version if current else None
    kept = store.list()
    master_seq = MasterDataset(settings.home).snapshot().seq
    if as_json:
        out = [{**r.to_json(), "current": r.version == number} for r in kept]
        click.echo(json.dumps({"current": number, "master_seq": master_seq, "versions": out}))
        return
    if current is None:
        click.echo(f"no batch views published; master dataset at seq {master_seq}")
        click.echo("run `loglambda batch run` to publish the first version")
        return
    for r in reversed(kept):
        mark = "* " if r.version == number else "  "
        click.echo(
            f"{mark}version {r.version}{' (current)' if r.version == number else ''}: "
            f"horizon {r.horizon.describe()}, {len(r.views)} views, {r.rows:,} rows, "
            f"{r.duration_s:.1f} s with {r.engine}, created {r.created_at}"
        )
        for name, v in r.views.items():
            origin = f"  (from version {v.built_in})" if v.built_in != r.version else ""
            click.echo(f"      {name:<28} {v.rows:>12,} rows{origin}")
    behind = master_seq - current.horizon.master_seq
    if behind:
        click.echo(
            f"master dataset at seq {master_seq}: the current version is {behind} batch(es) "
            "behind; `loglambda batch run` catches up"
        )
    else:
        click.echo(f"master dataset at seq {master_seq}: the current version covers all of it")


@batch_group.command("rollback")
@HOME_OPTION
def batch_rollback_cmd(home: Path | None) -> None:
    """Make the previous kept version current again.

    Later versions stay kept; the next run still takes a new, higher number.
    """
    from loglambda.batch.versions import VersionError, VersionStore

    store = VersionStore(Settings.load(home).home)
    before = store.current()
    try:
        record = store.rollback()
    except VersionError as err:
        raise click.ClickException(str(err)) from err
    was = f" (was {before.version})" if before else ""
    click.echo(
        f"current version is now {record.version}{was}: horizon {record.horizon.describe()}, "
        f"{len(record.views)} views, {record.rows:,} rows"
    )
