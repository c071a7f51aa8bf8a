"""``loglambda speed``: run the local speed driver (Beam on one reused FnApiRunner)."""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Iterable
from pathlib import Path

import click
import pyarrow as pa

from loglambda.core.cli_options import HOME_OPTION, env_option, stop_on_signals
from loglambda.core.config import Settings
from loglambda.core.eventlog import open_event_log
from loglambda.core.metrics import ProcessStats
from loglambda.core.schemas import Kind
from loglambda.speed.driver import DEFAULT_MAX_EVENTS, DriverBusy, PartialEngine, SliceDone

# DuckDB threads per slice. One: a slice of a few thousand events gains nothing from a
# second thread (measured slower when the machine is busy), and when catching up the
# driver decodes the next slice on another thread meanwhile, which keeps the second
# core busy. More pays off on machines with more cores than that.
DEFAULT_THREADS = 1


class DuckDBSliceEngine:
    """Partials computed by the batch engine directly, without Beam: the floor the
    speed benchmark compares Beam against, and a fallback where Beam is unwanted."""

    def __init__(self, threads: int = 1) -> None:
        from loglambda.batch.engine_duckdb import DuckDBEngine
        from loglambda.core.catalog import STANDARD_CATALOG

        self.engine = DuckDBEngine(threads=threads)
        self.views = STANDARD_CATALOG

    def compute(self, kind: Kind, events: pa.Table) -> dict[str, pa.Table]:
        views = [v for v in self.views.values() if v.kind == kind]
        return self.engine.compute_arrow(views, {kind: events})


def make_engine(
    name: str, threads: int | None = None, max_events: int = DEFAULT_MAX_EVENTS
) -> PartialEngine:
    """The partial engine called ``name`` (Beam is imported only when chosen)."""
    if name == "beam":
        from loglambda.core.catalog import STANDARD_CATALOG

        # Importing Beam warns "apitools not found" through the root logger; it is
        # about GCP clients we never use, so keep it off the user's terminal.
        root = logging.getLogger()
        level = root.level
        root.setLevel(logging.ERROR)
        try:
            from loglambda.speed.transform import DEFAULT_CHUNK_ROWS, BeamSliceEngine
        finally:
            root.setLevel(level)

        # A slice in one chunk skips the merge (half the cost of a 250k-event slice).
        chunk_rows = max(max_events, DEFAULT_CHUNK_ROWS)
        beam_engine: PartialEngine = BeamSliceEngine(
            STANDARD_CATALOG, threads=threads or DEFAULT_THREADS, chunk_rows=chunk_rows
        )
        return beam_engine
    if name == "duckdb":
        return DuckDBSliceEngine(threads or DEFAULT_THREADS)
    raise click.BadParameter(f"unknown speed engine {name!r}; use beam or duckdb")


def _p50_p99(values: Iterable[float]) -> tuple[float, float]:
    """Nearest-rank (rounded up) percentiles, so the p99 of two values is the larger."""
    ordered = sorted(values)
    return ordered[(len(ordered) - 1) // 2], ordered[-(-99 * len(ordered) // 100) - 1]


@click.command("speed")
@env_option("--once", "SPEED_ONCE", is_flag=True, help="Process what is appended now, then exit.")
@env_option("--engine", "SPEED_ENGINE", type=click.Choice(["beam", "duckdb"]), default="beam")
@env_option(
    "--max-events",
    "SPEED_MAX_EVENTS",
    type=click.IntRange(min=1),
    default=DEFAULT_MAX_EVENTS,
    help="Largest slice (slices are whatever arrived since the last one, up to this).",
)
@env_option("--poll", "SPEED_POLL", type=click.FloatRange(min=0.005), default=0.05, help="Seconds.")
@env_option(
    "--threads",
    "SPEED_THREADS",
    type=click.IntRange(min=1),
    default=DEFAULT_THREADS,
    help="DuckDB threads per slice (the log is decoded on one more while catching up).",
)
@HOME_OPTION
def speed_cmd(
    once: bool, engine: str, max_events: int, poll: float, threads: int, home: Path | None
) -> None:
    """Keep the views' realtime partials for events the batch has not covered yet.

    Each slice of the event log becomes partial views tagged with its offset range,
    committed together with the new position; when a batch version is published the
    partials below its horizon expire (a straddling slice is re-cut). Serving merges
    batch and partials. Stop with Ctrl-C or SIGTERM.
    """
    from loglambda.speed.driver import SpeedDriver

    settings = Settings.load(home)
    log = open_event_log(settings)
    chosen = make_engine(engine, threads, max_events)
    driver = SpeedDriver(settings.home, log, chosen, max_events=max_events)
    stats = ProcessStats(settings.home, "speed")
    recent: deque[float] = deque(maxlen=200)
    fresh: deque[float] = deque(maxlen=200)

    def on_slice(done: SliceDone) -> None:
        recent.append(done.seconds)
        if done.freshness_s is not None:
            # The slice's oldest event: its worst-case append -> durable time.
            fresh.append(done.freshness_s[0])
            p50, p99 = _p50_p99(fresh)
            stats.set("freshness_s_p50", round(p50, 3))
            stats.set("freshness_s_p99", round(p99, 3))
        stats.add("events", done.events)
        stats.add("slices")
        p50, p99 = _p50_p99(recent)
        stats.set("slice_ms_p50", round(1000 * p50, 1))
        stats.set("slice_ms_p99", round(1000 * p99, 1))
        stats.set("lag", {done.partition: done.lag})
        stats.set("positions", driver.state.positions)
        stats.flush()
        if once:
            click.echo(
                f"{done.partition} [{done.start:,}, {done.end:,}): {done.events:,} events "
                f"in {done.seconds * 1000:.0f} ms",
                err=True,
            )

    try:
        with driver.session(), stop_on_signals() as should_stop:
            stats.flush(force=True)
            t0 = time.monotonic()
            if once:
                total = driver.drain(on_slice)
                click.echo(f"speed layer: {total:,} events in {time.monotonic() - t0:.1f} s")
            else:
                click.echo(f"speed driver ({engine}) following {settings.home}", err=True)
                driver.run(
                    poll_s=poll,
                    should_stop=should_stop,
                    on_slice=on_slice,
                    on_idle=stats.flush,
                )
    except DriverBusy as err:
        raise click.ClickException(str(err)) from err
    finally:
        stats.flush(force=True, state="stopped")
