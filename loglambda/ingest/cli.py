"""``loglambda tail``: the command line of the file front door (see ``ingest.tail``)."""

from __future__ import annotations

import signal
import sys
import threading
from pathlib import Path
from types import FrameType

import click

from loglambda.core.cli import HOME_OPTION
from loglambda.core.config import Settings
from loglambda.ingest.tail import BatchReport, TailError, TailOptions, run_tail


def _err(message: str) -> None:
    click.echo(message, err=True)


@click.command("tail", context_settings={"show_default": True})
@click.argument("files", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--format",
    "fmt",
    default="auto",
    envvar="LOGLAMBDA_TAIL_FORMAT",
    show_envvar=True,
    help="Log format, or auto to detect it per file (see `loglambda formats`).",
)
@HOME_OPTION
@click.option(
    "--poll-interval",
    type=click.FloatRange(min=0.01),
    default=0.25,
    envvar="LOGLAMBDA_TAIL_POLL_INTERVAL",
    show_envvar=True,
    help="Seconds between looks at the files when there is nothing new.",
)
@click.option(
    "--once",
    is_flag=True,
    envvar="LOGLAMBDA_TAIL_ONCE",
    show_envvar=True,
    help="Read every file to its current end, then exit (for cron).",
)
@click.option(
    "--from-beginning/--from-end",
    default=True,
    envvar="LOGLAMBDA_TAIL_FROM_BEGINNING",
    show_envvar=True,
    help="Where to start a file seen for the first time (no checkpoint yet). Files that "
    "appear later, and files after a rotation, are always read from their start.",
)
@click.option(
    "--rotate-grace",
    type=click.FloatRange(min=0),
    default=30.0,
    envvar="LOGLAMBDA_TAIL_ROTATE_GRACE",
    show_envvar=True,
    help="Seconds a rotated-away file must stay unmodified before it is finished (its "
    "last line delivered even without a newline, its descriptor closed).",
)
@click.option(
    "--batch-bytes",
    type=click.IntRange(min=256 << 10),
    default=4 << 20,
    envvar="LOGLAMBDA_TAIL_BATCH_BYTES",
    show_envvar=True,
    help="Most bytes of whole lines delivered as one batch.",
)
@click.option(
    "--stats-interval",
    type=click.FloatRange(min=0),
    default=10.0,
    envvar="LOGLAMBDA_TAIL_STATS_INTERVAL",
    show_envvar=True,
    help="Seconds between throughput lines on stderr (0: after every batch).",
)
@click.option(
    "-v",
    "--verbose",
    is_flag=True,
    envvar="LOGLAMBDA_TAIL_VERBOSE",
    show_envvar=True,
    help="One line per batch on stderr: lines, bytes, read = accepted + quarantined, offsets.",
)
def tail_cmd(
    files: tuple[Path, ...],
    fmt: str,
    home: Path | None,
    poll_interval: float,
    once: bool,
    from_beginning: bool,
    rotate_grace: float,
    batch_bytes: int,
    stats_interval: float,
    verbose: bool,
) -> None:
    """Follow log files into the event log, exactly once (like Filebeat).

    Survives rotation (rename or copytruncate), files that do not exist yet, partial
    lines and restarts; .gz files are read whole, once. Stops cleanly on SIGINT or
    SIGTERM: the batch in hand is finished and checkpointed.
    """
    settings = Settings.load(home)
    try:
        options = TailOptions(
            fmt=fmt,
            poll_interval=poll_interval,
            once=once,
            from_beginning=from_beginning,
            rotate_grace=rotate_grace,
            batch_bytes=batch_bytes,
            stats_interval=stats_interval,
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    stop = threading.Event()

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        if not stop.is_set():
            _err(f"tail: {signal.Signals(signum).name}: finishing the batch in hand, then stopping")
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_batch(batch: BatchReport) -> None:
        if verbose:
            _err(batch.describe())

    try:
        result = run_tail(
            files,
            options,
            settings,
            stop=stop,
            on_note=lambda message: _err(f"tail: {message}"),
            on_batch=on_batch,
            on_stats=_err,
        )
    except (TailError, ValueError) as err:
        raise click.ClickException(str(err)) from err
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    for path, totals in result.per_path:
        if totals.batches:
            _err(f"{path}: {totals.describe()}")
    rate = result.totals.read / result.seconds if result.seconds > 0 else 0.0
    _err(
        f"total: {result.totals.describe()} in {result.seconds:.1f} s "
        f"({rate:,.0f} lines/s, {result.totals.batches:,} batches)"
    )
    if result.failed:
        for path, why in result.failed:
            _err(f"{path}: failed: {why}")
        sys.exit(1)
