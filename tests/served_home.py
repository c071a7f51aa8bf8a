"""A data home built the real way (log -> master -> batch -> speed), for serving tests.

The home: 3,000 traffic events (and 300 log records) written to the master and
published as batch version 1 (horizon 3,000); 1,000 more written to the master but not
in a batch; 500 more only in the log. The speed layer processed everything, in slices
of at most ``slice_events`` (so a partition has several partials). Only ``VIEWS`` are
computed, by batch and speed alike, which keeps building it to a few seconds.
"""

from __future__ import annotations

from pathlib import Path
from typing import Final

from loglambda.batch.master_writer import MasterWriter
from loglambda.batch.recompute import run_batch
from loglambda.core.catalog import STANDARD_CATALOG, View
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.speed.cli import DuckDBSliceEngine
from loglambda.speed.driver import SpeedDriver
from tests.event_factory import log_events, traffic_events

VIEWS: Final[dict[str, View]] = {
    n: STANDARD_CATALOG[n]
    for n in (
        "traffic_minute",
        "traffic_hour",
        "visitors_day",
        "visitors_hour",
        "log_records_minute",
    )
}
TRAFFIC: Final = 4_500  # traffic events appended
LOGS: Final = 450  # log records appended


def build_served_home(home: Path, *, slice_events: int = 400) -> LocalEventLog:
    """Events through every layer, as described in the module docstring."""
    log = LocalEventLog(home)
    log.append("traffic", traffic_events(3_000))
    log.append("logs", log_events(300))
    with MasterWriter(home, log).session() as writer:
        writer.drain()
    run_batch(home, catalog=VIEWS)
    log.append("traffic", traffic_events(1_000, first=3_000))
    log.append("logs", log_events(100, first=300))
    with MasterWriter(home, log).session() as writer:
        writer.drain()
    log.append("traffic", traffic_events(500, first=4_000))
    log.append("logs", log_events(50, first=400))
    speed_once(home, log, slice_events)
    return log


def speed_once(home: Path, log: LocalEventLog, slice_events: int = 400) -> None:
    """Let the speed layer process everything appended so far."""
    engine = DuckDBSliceEngine()
    engine.views = VIEWS  # only the views the batch computed, as a configured speed layer
    with SpeedDriver(home, log, engine, max_events=slice_events).session() as driver:
        driver.drain()
