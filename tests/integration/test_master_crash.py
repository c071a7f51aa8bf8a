"""``kill -9`` the master writer while events stream in: the master still holds every
event exactly once.

Why: the writer's steps (stage, fsync, link manifest entry, move files, commit the log
position) each leave a different state behind when the process dies between them;
restart must finish or discard that state so that no event is lost or doubled. A
producer process appends events with unique provenance the whole time; the writer
(the real ``loglambda master`` command, tiny batches so kills land mid-write) is killed
at random moments and restarted; at the end the master dataset is compared with the
event log, event by event.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from loglambda.batch.master import MasterDataset
from loglambda.core.eventlog_local import LocalEventLog
from tests.integration.test_master_writer import master_provenance

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILLS = 6
TIMEOUT = 60.0
REPO = Path(__file__).resolve().parents[2]

PRODUCER = r"""
import random, sys
from pathlib import Path
sys.path.insert(0, sys.argv[2])
from loglambda.core.eventlog_local import LocalEventLog
from tests.event_factory import traffic_events, log_events

log = LocalEventLog(Path(sys.argv[1]))
rng = random.Random(7)
line = 0
while True:
    n = rng.randint(1, 300)
    log.append("traffic", traffic_events(n, first=line, source="crash"))
    if rng.random() < 0.2:
        log.append("logs", log_events(rng.randint(1, 20), first=line, source="crash"))
    line += n
"""


def wait_for(condition: Callable[[], bool], what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.01)


def master_cmd(home: Path, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "loglambda", "master", "--home", str(home),
        "--max-events", "250", "--min-events", "1", "--max-wait", "0", "--poll", "0.02",
        *extra,
    ]  # fmt: skip


def test_crash_kill_master_writer_repeatedly_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    home = tmp_path / "home"
    LocalEventLog(home)  # create the log before two processes race to
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    producer = subprocess.Popen([sys.executable, "-c", PRODUCER, str(home), str(REPO)], env=env)
    master = MasterDataset(home)
    rng = random.Random(2026)
    try:
        for _ in range(KILLS):
            before = len(master.entries())
            writer = subprocess.Popen(
                master_cmd(home), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
            )
            try:
                wait_for(lambda b=before: len(master.entries()) > b, "a master batch")  # type: ignore[misc]
                time.sleep(rng.uniform(0, 0.3))  # a random point, not a sync: any is fine
            finally:
                writer.send_signal(signal.SIGKILL)
                writer.wait(timeout=TIMEOUT)
    finally:
        producer.send_signal(signal.SIGKILL)
        producer.wait(timeout=TIMEOUT)
    # Drain what is left with a clean run, then compare against the log itself.
    done = subprocess.run(master_cmd(home, "--once"), env=env, capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    log = LocalEventLog(home)
    for kind in ("traffic", "logs"):
        end = log.end_offset(kind, f"{kind}/0")  # type: ignore[arg-type]
        events = log.read(kind, f"{kind}/0", 0, end).events  # type: ignore[arg-type]
        expected = sorted(
            zip(
                events.column("source").to_pylist(),
                events.column("source_line").to_pylist(),
                strict=True,
            )
        )
        got = master_provenance(home, kind)
        assert len(got) == len(set(got)), f"{kind}: duplicated events in the master"
        assert got == expected, f"{kind}: master differs from the log"
        assert log.committed("master", f"{kind}/0") == end
    assert end > 0 and len(master.entries()) > KILLS
