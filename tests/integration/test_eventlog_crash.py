"""LocalEventLog under ``kill -9``: acknowledged appends survive, nothing is ever partial.

Why: ``loglambda tail`` and ``serve`` append from long-lived processes that may die at
any instant. A child appends in a loop and prints each returned OffsetRange (only after
``append`` returned, flushed); the test SIGKILLs it at a random moment, reopens the log
and checks that (a) every acknowledged range reads back exactly, and (b) the log is a
sequence of whole batches -- an unacknowledged batch may be present or absent, but
never cut or corrupt.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
from pathlib import Path
from typing import IO

import pytest

from loglambda.core.eventlog_local import LocalEventLog, read_index

pytestmark = pytest.mark.integration

KILLS = 8
TIMEOUT = 60.0

CHILD = r"""
import random, sys
from pathlib import Path
import pyarrow as pa
from loglambda.core.eventlog_local import LocalEventLog, read_index
from loglambda.core.schemas import TRAFFIC_SCHEMA

home, run = sys.argv[1], sys.argv[2]
log = LocalEventLog(Path(home), segment_bytes=64 * 1024)
rng = random.Random(run)
print("ready", flush=True)
batch = 0
while True:
    n = rng.randint(1, 40)
    # Long lines make a batch take long enough to write that kills land inside it.
    pad = "x" * rng.randint(0, 3000)
    events = pa.table(
        {
            "ts": pa.array([batch * 1_000_000 + i for i in range(n)], pa.int64()),
            "host": [f"h{i}" for i in range(n)],
            "client_ip": ["10.0.0.1"] * n,
            "method": ["GET"] * n,
            "path": ["/" + pad + chr(10) + chr(34) + str(i) + chr(34) for i in range(n)],
            "query": [None] * n,
            "protocol": ["HTTP/1.1"] * n,
            "status": pa.array([200] * n, pa.int16()),
            "bytes": pa.array([n] * n, pa.int64()),
            "latency_ms": [float(i) for i in range(n)],
            "referrer": [None] * n,
            "user_agent": ["ua"] * n,
            "source": [run] * n,
            "source_line": pa.array(range(n), pa.int64()),
            "source_offset": pa.array([batch] * n, pa.int64()),
        }
    )
    events = events.cast(TRAFFIC_SCHEMA)
    (r,) = log.append("traffic", events)
    print(r.start, r.end, batch, n, flush=True)
    batch += 1
"""


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.strip())
    lines.put(None)


def _uncommitted_bytes(home: Path) -> bool:
    """True while the active segment holds data its index does not cover yet: the
    appender is between its data write and its index entry."""
    directory = home / "log" / "traffic" / "0"
    segments = sorted(directory.glob("*.ndjson"))
    if not segments:
        return False
    entries = read_index(segments[-1].with_suffix(".idx"))
    committed = int(entries[-1, 1]) if len(entries) else 0
    return segments[-1].stat().st_size > committed


def _run_and_kill(
    home: Path, run: str, acks_before_kill: int, mid_write: bool
) -> list[tuple[int, int, int, int]]:
    """Start an appender, SIGKILL it after some acknowledgements (and, if ``mid_write``,
    once it is caught between writing data and committing it); return every ack."""
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[2])}
    proc = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(home), run],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert proc.stdout is not None
    lines: queue.Queue[str | None] = queue.Queue()
    pump = threading.Thread(target=_pump, args=(proc.stdout, lines), daemon=True)
    pump.start()
    acks: list[tuple[int, int, int, int]] = []
    try:
        assert lines.get(timeout=TIMEOUT) == "ready"
        while len(acks) < acks_before_kill:
            line = lines.get(timeout=TIMEOUT)
            assert line is not None, "appender died on its own"
            start, end, batch, n = map(int, line.split())
            acks.append((start, end, batch, n))
        # Spin on the condition (no sleep): the window is short, so give up quietly
        # after a bounded number of looks and kill wherever the child is.
        for _ in range(200_000 if mid_write else 0):
            if _uncommitted_bytes(home):
                break
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=TIMEOUT)
        pump.join(timeout=TIMEOUT)
    # Acknowledgements printed before the kill but not consumed yet count too.
    while (line := lines.get_nowait()) is not None:
        start, end, batch, n = map(int, line.split())
        acks.append((start, end, batch, n))
    return acks


def test_crash_kill_9_keeps_acknowledged_appends_whole(tmp_path: Path) -> None:
    rng = random.Random(20261127)
    acked: dict[tuple[str, int], tuple[int, int, int]] = {}
    torn_tails = 0
    for k in range(KILLS):
        run = f"run{k}"
        for start, end, batch, n in _run_and_kill(tmp_path, run, rng.randint(0, 25), k % 2 == 1):
            acked[(run, batch)] = (start, end, n)
        segment_dir = tmp_path / "log" / "traffic" / "0"
        before = sum(p.stat().st_size for p in segment_dir.glob("*.ndjson"))

        # Reopening repairs the tail; then the whole log must be whole batches.
        log = LocalEventLog(tmp_path)
        torn_tails += before != sum(p.stat().st_size for p in segment_dir.glob("*.ndjson"))
        end_offset = log.end_offset("traffic", "traffic/0")
        events = log.read("traffic", "traffic/0", 0, 10**9).events
        assert events.num_rows == end_offset
        source = events["source"].to_pylist()
        batch_no = events["source_offset"].to_pylist()
        index = events["source_line"].to_pylist()
        size = events["bytes"].to_pylist()
        position = 0
        while position < end_offset:
            run_id, b, n = source[position], batch_no[position], size[position]
            assert index[position : position + n] == list(range(n)), f"partial batch at {position}"
            assert source[position : position + n] == [run_id] * n
            assert batch_no[position : position + n] == [b] * n
            ack = acked.get((run_id, b))
            if ack is not None:
                assert ack == (position, position + n, n)
            position += n
        assert position == end_offset

        # Every acknowledged range (of this run and all before) reads back exactly.
        for (run_id, b), (start, end, n) in acked.items():
            got = log.read("traffic", "traffic/0", start, end - start).events
            assert got["source"].to_pylist() == [run_id] * n
            assert got["source_offset"].to_pylist() == [b] * n
            assert got["source_line"].to_pylist() == list(range(n))
    assert acked, "no append was ever acknowledged"
    print(f"{KILLS} kills, {len(acked)} acknowledged batches, {torn_tails} tails repaired")
