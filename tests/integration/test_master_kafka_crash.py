"""The master writer on the Kafka event log under ``kill -9``: every event exactly once.

Why: the master writer's exactly-once rests on the event log's positions (a Kafka
consumer group here) being a hint and the manifest the truth, and on slices read back
by offset being the same events every time. A producer appends events with unique
provenance to Kafka (two partitions) while ``loglambda master`` follows the log; the
test SIGKILLs the writer at random points (mid-batch too) and restarts it, then
drains with ``--once`` and checks that the Parquet files of the master snapshot hold
every acknowledged event exactly once.
"""

from __future__ import annotations

import os
import queue
import random
import signal
import subprocess
import sys
import threading
import uuid
from collections import Counter
from pathlib import Path
from typing import IO

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from test_eventlog_conformance import traffic

from loglambda.batch.master import MasterDataset

pytestmark = [pytest.mark.integration, pytest.mark.slow]

pytest.importorskip("confluent_kafka")
from loglambda.core.eventlog_kafka import KafkaEventLog  # noqa: E402

KILLS = 8
TIMEOUT = 60.0


def _pump(stream: IO[str], lines: queue.Queue[str | None]) -> None:
    for line in stream:
        lines.put(line.rstrip())
    lines.put(None)


class Producer(threading.Thread):
    """Appends batches of events with unique (source, source_line) until stopped."""

    def __init__(self, bootstrap: str, prefix: str) -> None:
        super().__init__(daemon=True)
        self.log = KafkaEventLog(bootstrap, topic_prefix=prefix, timeout_s=20)
        self.stop = threading.Event()
        self.acked: list[tuple[str, int]] = []
        self.error: BaseException | None = None

    def run(self) -> None:
        rng = random.Random(7)
        line = 0
        try:
            while not self.stop.is_set():
                n = rng.randint(1, 60)
                source = f"producer-{line % 5}"  # five sources: both partitions get events
                self.log.append("traffic", traffic(n, source=source, first=line))
                self.acked += [(source, i) for i in range(line, line + n)]
                line += n
                # Pacing (not synchronisation): the writer should keep up and write many
                # small batches, so kills land inside them rather than in one big drain.
                self.stop.wait(0.02)
        except BaseException as exc:  # surfaced by the test, not lost in the thread
            self.error = exc
        finally:
            self.log.close()


def _master(home: Path, env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "loglambda", "master", "--home", str(home), *args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )


def test_crash_kill_9_master_on_kafka_writes_every_event_once(
    kafka_broker: str, tmp_path: Path
) -> None:
    rng = random.Random(20261128)
    prefix = f"mk{uuid.uuid4().hex[:8]}."
    home = tmp_path / "home"
    env = {
        **os.environ,
        "PYTHONPATH": str(Path(__file__).resolve().parents[2]),
        "LOGLAMBDA_LOG": "kafka",
        "LOGLAMBDA_KAFKA_BOOTSTRAP": kafka_broker,
        "LOGLAMBDA_KAFKA_TOPIC_PREFIX": prefix,
        "LOGLAMBDA_KAFKA_PARTITIONS": "2",
    }
    with KafkaEventLog(kafka_broker, topic_prefix=prefix, partitions=2) as log:
        for kind in ("traffic", "logs"):  # both topics with 2 partitions up front
            assert len(log.partitions(kind)) == 2
    producer = Producer(kafka_broker, prefix)
    producer.start()
    written_before_kill = 0
    try:
        for _ in range(KILLS):
            proc = _master(
                home,
                env,
                *("--min-events", "1", "--max-wait", "0", "--poll", "0.02"),
                *("--max-events", str(rng.randint(10, 120))),
            )
            assert proc.stderr is not None
            lines: queue.Queue[str | None] = queue.Queue()
            pump = threading.Thread(target=_pump, args=(proc.stderr, lines), daemon=True)
            pump.start()
            try:
                # Kill after a random number of written batches (0: right after start).
                wanted, seen = rng.randint(0, 8), -1
                while seen < wanted:
                    line = lines.get(timeout=TIMEOUT)
                    assert line is not None, "master writer exited on its own"
                    if "following the event log" in line or "manifest seq" in line:
                        seen += 1
                written_before_kill += seen
            finally:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=TIMEOUT)
                pump.join(timeout=TIMEOUT)
    finally:
        producer.stop.set()
        producer.join(timeout=TIMEOUT)
    assert producer.error is None, producer.error
    assert written_before_kill > 0 and len(producer.acked) > 0

    # Drain what is left, then compare the master dataset with every acknowledged event.
    drain = _master(home, env, "--once", "--max-events", "500")
    _, err = drain.communicate(timeout=TIMEOUT)
    assert drain.returncode == 0, err
    files = MasterDataset(home).snapshot().files("traffic")
    table = pa.concat_tables([pq.read_table(f, columns=["source", "source_line"]) for f in files])
    counts = Counter(
        zip(table["source"].to_pylist(), table["source_line"].to_pylist(), strict=True)
    )
    duplicated = [key for key, n in counts.items() if n > 1]
    assert not duplicated, f"{len(duplicated)} events twice, e.g. {duplicated[:3]}"
    assert set(counts) == set(producer.acked), "events lost or invented"
    with KafkaEventLog(kafka_broker, topic_prefix=prefix) as log:
        for partition in log.partitions("traffic"):
            assert log.lag("master", partition) == 0
    entries = MasterDataset(home).entries()
    print(
        f"{KILLS} kills, {len(producer.acked)} events, {len(entries)} master batches over "
        f"{len({e.origin.get('partition') for e in entries})} partitions"
    )
