"""The Kafka front door: raw lines from a topic into the event log, exactly once.

Why: the source commits its Kafka position after the append, so a crash in between
must be repaired from the event log (the truth), and rejected lines must reach the
quarantine exactly once too. Each test produces lines to a real broker (tansu), runs
the source, and checks every record is either one event or one quarantine row, keyed
by (partition, offset), and that read = accepted + quarantined.
"""

from __future__ import annotations

import json
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from loglambda.core.eventlog import EventLog, OffsetRange
from loglambda.core.eventlog_local import LocalEventLog

pytestmark = pytest.mark.integration

kafka = pytest.importorskip("confluent_kafka")
pytest.importorskip("confluent_kafka.admin")
from loglambda.core.eventlog_kafka import KafkaEventLog  # noqa: E402
from loglambda.ingest.kafka_source import KafkaSource, kafka_source_cmd  # noqa: E402

GOOD = '10.0.0.{i} - - [27/Nov/2026:12:{m:02d}:00 +0000] "GET /p/{i} HTTP/1.1" 200 {i} "-" "ua"'
BAD: list[bytes | None] = [b"garbage", b"", b"\xff\xfe bad utf8", b"two\nlines", None]


class Crash(Exception):
    """Stands for kill -9 at a chosen point of a batch."""


def records(n: int, seed: int = 0) -> list[bytes | None]:
    """n records, every 7th one bad in one of several ways."""
    out: list[bytes | None] = []
    for i in range(n):
        if i % 7 == 3:
            out.append(BAD[(i // 7 + seed) % len(BAD)])
        else:
            out.append(GOOD.format(i=(i + seed) % 250, m=i % 60).encode())
    return out


@pytest.fixture
def topic(kafka_broker: str) -> str:
    name = f"raw-{uuid.uuid4().hex[:8]}"
    admin = kafka.admin.AdminClient({"bootstrap.servers": kafka_broker})
    admin.create_topics([kafka.admin.NewTopic(name, num_partitions=2)])[name].result(20)
    return name


def produce(
    bootstrap: str, topic: str, values: Sequence[bytes | None]
) -> dict[tuple[int, int], Any]:
    """Produce alternately to partitions 0 and 1; return each record by (partition, offset)."""
    producer = kafka.Producer({"bootstrap.servers": bootstrap})
    placed: dict[tuple[int, int], Any] = {}

    def report(err: Any, msg: Any) -> None:
        assert err is None
        placed[(msg.partition(), msg.offset())] = msg.value()

    for i, value in enumerate(values):
        producer.produce(topic, value=value, partition=i % 2, on_delivery=report)
    assert producer.flush(20) == 0
    return placed


def quarantine(home: Path, topic: str) -> pa.Table:
    files = sorted((home / "quarantine").glob(f"kafka-{topic}-*.parquet"))
    tables = [pq.read_table(f) for f in files]
    return pa.concat_tables(tables) if tables else pa.table({"source": [], "source_line": []})


def events_of(log: EventLog) -> pa.Table:
    return pa.concat_tables(
        [log.read("traffic", p, 0, 10**6).events for p in log.partitions("traffic")]
    )


def check_exactly_once(log: EventLog, home: Path, topic: str, placed: dict[Any, Any]) -> None:
    events = events_of(log)
    rejected = quarantine(home, topic)
    keys = Counter(
        (src, line)
        for t in (events, rejected)
        for src, line in zip(t["source"].to_pylist(), t["source_line"].to_pylist(), strict=True)
    )
    assert max(keys.values()) == 1, [k for k, n in keys.items() if n > 1][:5]
    assert set(keys) == {(f"kafka:{topic}/{p}", o) for p, o in placed}
    for src, line, path in zip(
        events["source"].to_pylist(),
        events["source_line"].to_pylist(),
        events["path"].to_pylist(),
        strict=True,
    ):
        value = placed[(int(src.rsplit("/", 1)[1]), line)]
        assert value.startswith(b"10.0.0.") and f" {path} ".encode() in value
    bad = sum(1 for v in placed.values() if v is None or not v.startswith(b"10.0.0."))
    assert rejected.num_rows == bad


@pytest.fixture(params=["local", "kafka"])
def log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[EventLog]:
    if request.param == "local":
        yield LocalEventLog(tmp_path / "home")
        return
    bootstrap = request.getfixturevalue("kafka_broker")
    prefix = f"src{uuid.uuid4().hex[:8]}."
    with KafkaEventLog(bootstrap, topic_prefix=prefix, partitions=2) as opened:
        yield opened


def source(log: EventLog, home: Path, bootstrap: str, topic: str, **kw: Any) -> KafkaSource:
    return KafkaSource(log, home, bootstrap=bootstrap, topic=topic, fmt="combined", **kw)


def test_every_line_once_bad_ones_quarantined(
    kafka_broker: str, topic: str, log: EventLog, tmp_path: Path
) -> None:
    home = tmp_path / "home"
    placed = produce(kafka_broker, topic, records(300))
    src = source(log, home, kafka_broker, topic, batch_size=40)
    head = src.run(max_messages=100)
    rest = src.run(until_idle=True)
    assert (head.read, rest.read, src.run(until_idle=True).read) == (100, 200, 0)
    accepted, quarantined = events_of(log).num_rows, quarantine(home, topic).num_rows
    assert accepted == head.accepted + rest.accepted
    assert quarantined == head.quarantined + rest.quarantined == 300 // 7 + (300 % 7 > 3)
    assert accepted + quarantined == 300
    assert set(rest.reasons) == {"no_match", "blank", "invalid_utf8"}
    check_exactly_once(log, home, topic, placed)
    # More lines later: a new run (a restart) reads only those.
    placed |= produce(kafka_broker, topic, records(30, seed=1))
    src.close()
    again = source(log, home, kafka_broker, topic, batch_size=40).run(until_idle=True)
    assert again.read == 30
    check_exactly_once(log, home, topic, placed)


class CrashingLog:
    """An event log that crashes once, at batch ``at``, before/after/halfway an append."""

    def __init__(self, log: EventLog, at: int, when: str) -> None:
        self.log, self.at, self.when, self.calls = log, at, when, 0

    def append(self, kind: Any, events: pa.Table) -> tuple[OffsetRange, ...]:
        self.calls += 1
        if self.calls != self.at:
            return self.log.append(kind, events)
        if self.when == "after":
            self.log.append(kind, events)
        elif self.when == "halfway":  # Kafka failed the rest: a prefix is visible
            self.log.append(kind, events.slice(0, events.num_rows // 2))
        raise Crash(self.when)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.log, name)


@pytest.mark.parametrize("when", ["before", "after", "halfway"])
def test_crash_around_the_append_recovers_exactly_once(
    kafka_broker: str, topic: str, log: EventLog, tmp_path: Path, when: str
) -> None:
    home = tmp_path / "home"
    placed = produce(kafka_broker, topic, records(200))
    for crash_at in (2, 3):  # two crashes, then a clean run
        crashing = CrashingLog(log, crash_at, when)
        src = source(crashing, home, kafka_broker, topic, batch_size=25)
        with pytest.raises(Crash):
            src.run(until_idle=True)
        src.close()
    placed |= produce(kafka_broker, topic, records(20, seed=3))
    final = source(log, home, kafka_broker, topic, batch_size=25)
    final.run(until_idle=True)
    check_exactly_once(log, home, topic, placed)
    # The group's committed offsets are the ends of both partitions.
    consumer = kafka.Consumer({"bootstrap.servers": kafka_broker, "group.id": final.group})
    tps = [kafka.TopicPartition(topic, p) for p in (0, 1)]
    assert [tp.offset for tp in consumer.committed(tps, 20)] == [110, 110]
    consumer.close()


def test_json_envelope(kafka_broker: str, topic: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = LocalEventLog(home)
    line = GOOD.format(i=7, m=1)
    values = [
        json.dumps({"message": line, "source_type": "file"}).encode(),
        b"not json",
        b'{"log": "wrong field"}',
        b'{"message": 42}',
    ]
    produce(kafka_broker, topic, values)
    totals = source(log, home, kafka_broker, topic, value="json").run(until_idle=True)
    assert (totals.read, totals.accepted, totals.quarantined) == (4, 1, 3)
    assert totals.reasons == {"bad_json": 1, "missing_field": 1, "bad_type": 1}
    assert log.read("traffic", "traffic/0", 0, 10).events["path"].to_pylist() == ["/p/7"]


def test_cli_runs_until_idle(kafka_broker: str, topic: str, tmp_path: Path) -> None:
    home = tmp_path / "home"
    produce(kafka_broker, topic, records(14))
    result = CliRunner().invoke(
        kafka_source_cmd,
        ["--topic", topic, "--format", "combined", "--until-idle", "--home", str(home)],
        env={"LOGLAMBDA_KAFKA_BOOTSTRAP": kafka_broker, "LOGLAMBDA_LOG": "local"},
    )
    assert result.exit_code == 0, result.output
    assert "read 14 = accepted 12 + quarantined 2" in result.output
    assert "LOGLAMBDA_KAFKA_SOURCE_TOPIC" in CliRunner().invoke(kafka_source_cmd, ["--help"]).output


@pytest.mark.parametrize("when", ["after", "halfway"])
def test_crash_with_rejects_at_the_batch_tail(
    kafka_broker: str, topic: str, log: EventLog, tmp_path: Path, when: str
) -> None:
    """Every batch of 5 ends with a reject, so after the crash the quarantine holds a
    line past the last appended event: recovery must skip it (after) or cut it out of
    the file and read it again (halfway), never quarantine it twice."""
    home = tmp_path / "home"
    values = [GOOD.format(i=i, m=0).encode() if i % 5 != 4 else b"bad" for i in range(40)]
    producer = kafka.Producer({"bootstrap.servers": kafka_broker})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(20) == 0
    placed = {(0, i): v for i, v in enumerate(values)}
    crashing = CrashingLog(log, 2, when)
    src = source(crashing, home, kafka_broker, topic, batch_size=5, partitions=[0])
    with pytest.raises(Crash):
        src.run(until_idle=True)
    src.close()
    source(log, home, kafka_broker, topic, batch_size=5, partitions=[0]).run(until_idle=True)
    check_exactly_once(log, home, topic, placed)
