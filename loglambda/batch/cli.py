"""``loglambda master``: run the master writer (the event log's "master" consumer)."""

from __future__ import annotations

import sys
from pathlib import Path

import click

from loglambda.batch.master_writer import DEFAULT_MAX_EVENTS, Flush, MasterWriter, WriterBusy
from loglambda.core.cli_options import HOME_OPTION, env_option, stop_on_signals
from loglambda.core.config import Settings
from loglambda.core.eventlog import open_event_log
from loglambda.core.metrics import ProcessStats


@click.command("master")
@env_option(
    "--once", "MASTER_ONCE", is_flag=True, help="Write everything appended so far, then exit."
)
@env_option(
    "--max-events",
    "MASTER_MAX_EVENTS",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_EVENTS,
    help="Most events per master batch (memory bound).",
)
@env_option(
    "--min-events",
    "MASTER_MIN_EVENTS",
    type=click.IntRange(min=1),
    default=Flush.min_events,
    help="Write a batch once this many events wait ...",
)
@env_option(
    "--max-wait",
    "MASTER_MAX_WAIT",
    type=click.FloatRange(min=0),
    default=Flush.max_wait_s,
    help="... or once any event waited this many seconds.",
)
@env_option("--poll", "MASTER_POLL", type=click.FloatRange(min=0.01), default=0.5, help="Seconds.")
@HOME_OPTION
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
        with writer.session(), stop_on_signals() as should_stop:
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
                    should_stop=should_stop,
                    on_slice=on_slice,
                    on_idle=stats.flush,
                )
                click.echo(f"stopped; wrote {writer.written_events:,} events", err=True)
    except WriterBusy as err:
        raise click.ClickException(str(err)) from err
    finally:
        stats.flush(force=True, state="stopped")
    sys.stdout.flush()
