"""``loglambda master``: run the master writer (the event log's "master" consumer)."""

from __future__ import annotations

import signal
import sys
from collections.abc import Callable
from pathlib import Path
from types import FrameType
from typing import Any

import click

from loglambda.batch.master_writer import DEFAULT_MAX_EVENTS, Flush, MasterWriter, WriterBusy
from loglambda.core.config import Settings
from loglambda.core.eventlog import open_event_log
from loglambda.core.metrics import ProcessStats


def _opt(name: str, env: str, **kw: Any) -> Callable[[Any], Any]:
    """A flag backed by the env var ``LOGLAMBDA_<env>``."""
    return click.option(name, envvar=f"LOGLAMBDA_{env}", show_envvar=True, **kw)


@click.command("master")
@_opt("--once", "MASTER_ONCE", is_flag=True, help="Write everything appended so far, then exit.")
@_opt(
    "--max-events",
    "MASTER_MAX_EVENTS",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_EVENTS,
    help="Most events per master batch (memory bound).",
)
@_opt(
    "--min-events",
    "MASTER_MIN_EVENTS",
    type=click.IntRange(min=1),
    default=Flush.min_events,
    help="Write a batch once this many events wait ...",
)
@_opt(
    "--max-wait",
    "MASTER_MAX_WAIT",
    type=click.FloatRange(min=0),
    default=Flush.max_wait_s,
    help="... or once any event waited this many seconds.",
)
@_opt("--poll", "MASTER_POLL", type=click.FloatRange(min=0.01), default=0.5, help="Seconds.")
@click.option(
    "--home",
    envvar="LOGLAMBDA_HOME",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (default ./loglambda-data).",
)
def master_cmd(
    once: bool, max_events: int, min_events: int, max_wait: float, poll: float, home: Path | None
) -> None:
    """Consume the event log into the master dataset, exactly once.

    Each batch is one slice of the log, named from its offsets and committed to the
    manifest before the consumer position moves, so a crash at any point neither
    loses nor duplicates events. Stop with Ctrl-C or SIGTERM (finishes the batch in hand).
    """
    settings = Settings.load(home)
    log = open_event_log(settings)
    writer = MasterWriter(settings.home, log, max_events=max_events)
    stats = ProcessStats(settings.home, "master")
    stopping: list[int] = []

    def stop(signum: int, _frame: FrameType | None) -> None:
        stopping.append(signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)

    def on_slice(done: object) -> None:
        from loglambda.batch.master_writer import WrittenSlice

        assert isinstance(done, WrittenSlice)
        stats.add("events", done.events)
        stats.add("batches")
        stats.set("positions", writer.positions)
        stats.flush()
        click.echo(
            f"{done.partition} [{done.start:,}, {done.end:,}): {done.events:,} events -> "
            f"manifest seq {done.seq} ({done.files} files, {done.seconds:.2f} s)",
            err=True,
        )

    try:
        with writer.session():
            stats.set("positions", writer.positions)
            stats.flush(force=True)
            if once:
                total = writer.drain(on_slice)
                click.echo(f"wrote {total:,} events to the master dataset")
            else:
                click.echo(f"master writer following the event log in {settings.home}", err=True)
                writer.run(
                    flush=Flush(min_events, max_wait),
                    poll_s=poll,
                    should_stop=lambda: bool(stopping),
                    on_slice=on_slice,
                    on_idle=stats.flush,
                )
                click.echo(f"stopped; wrote {writer.written_events:,} events", err=True)
    except WriterBusy as err:
        raise click.ClickException(str(err)) from err
    finally:
        stats.flush(force=True, state="stopped")
    sys.stdout.flush()
