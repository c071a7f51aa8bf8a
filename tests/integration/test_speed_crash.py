"""``kill -9`` the speed driver mid-slice: its partials lose and duplicate nothing.

Why: a slice's partial files are written, renamed into place, then listed by one
atomic STATE replace together with the new position. A kill between any two of
those steps must leave either the old state (the slice is recomputed under the same
name) or the new one, never a listed partial twice or a gap. A producer process
appends the whole time; the real ``loglambda speed`` (Beam engine, small slices so
kills land mid-slice) is killed at random moments and restarted; at the end the
merged views equal the batch engine's recompute over every event in the log.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.core.catalog import STANDARD_CATALOG
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.serving.merge import merged_view, snapshot
from loglambda.speed.store import RealtimeStore
from tests.integration.test_master_crash import PRODUCER, REPO, wait_for
from tests.integration.test_speed_exact import assert_same_view

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 5
TIMEOUT = 120.0


def speed_cmd(home: Path, *extra: str, max_events: int = 400) -> list[str]:
    return [
        sys.executable, "-m", "loglambda", "speed", "--home", str(home),
        "--max-events", str(max_events), "--poll", "0.01", *extra,
    ]  # fmt: skip


def test_crash_kill_speed_driver_mid_slice_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    LocalEventLog(home)
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(home), str(REPO)], env=env)
    store = RealtimeStore(home)
    rng = random.Random(11)
    try:
        for _ in range(KILLS):
            before = store.state().generation
            driver = subprocess.Popen(
                speed_cmd(home), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_for(
                    lambda b=before: store.state().generation > b + 1,  # type: ignore[misc]
                    "two speed commits",
                    TIMEOUT,
                )
                time.sleep(rng.uniform(0, 0.4))  # a random kill point, not a sync
            finally:
                driver.send_signal(signal.SIGKILL)
                driver.wait(timeout=TIMEOUT)
    finally:
        producer.send_signal(signal.SIGKILL)
        producer.wait(timeout=TIMEOUT)
    # The backlog the producer left is drained in large slices (the restart logic is
    # what is under test, not small-slice throughput).
    final = speed_cmd(home, "--once", max_events=200_000)
    done = subprocess.run(final, env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr

    log = LocalEventLog(home)
    snap = snapshot(home, log)
    assert snap.freshness.lag == {"traffic/0": 0, "logs/0": 0}
    state = store.state()
    state.check()  # contiguous, no overlaps
    listed = {p.path for p in state.partials}
    on_disk = {
        f"parts/{d.name}/{s.name}"
        for d in (home / "realtime" / "parts").iterdir()
        if not d.name.startswith(".")
        for s in d.iterdir()
    }
    assert on_disk == listed, "unlisted partial directories were left behind"
    with DuckDBEngine(threads=1) as engine:
        for name in ("traffic_minute", "status_codes", "log_records_minute"):
            view = STANDARD_CATALOG[name]
            partition = f"{view.kind}/0"
            end = log.end_offset(view.kind, partition)
            events = log.read(view.kind, partition, 0, end).events
            expected = engine.compute_arrow([view], {view.kind: events})[name]
            assert_same_view(view, merged_view(snap, view), expected)
