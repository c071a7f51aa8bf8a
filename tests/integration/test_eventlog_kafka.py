"""KafkaEventLog beyond the shared protocol checks (test_eventlog_conformance.py).

Why these: Kafka is where the mapping can go wrong without the protocol noticing --
events spread over partitions (each source must stay in one, in order), topics that
exist already, several producers at once, events written by a producer that is not
loglambda (plain JSON, as documented), records that are not events, and offsets with
gaps (a transactional producer's commit markers). Positions must be real Kafka
consumer-group offsets, so Kafka's own tools show them.
"""

from __future__ import annotations

import itertools
import json
import threading
import uuid
from collections.abc import Iterator
from typing import Any

import pyarrow as pa
import pytest
from test_eventlog_conformance import traffic

from loglambda.core.eventlog import OffsetRange
from loglambda.core.schemas import TRAFFIC_SCHEMA

pytestmark = pytest.mark.integration

kafka = pytest.importorskip("confluent_kafka")
pytest.importorskip("confluent_kafka.admin")
from loglambda.core.eventlog_kafka import KafkaEventLog  # noqa: E402


@pytest.fixture
def prefix() -> str:
    return f"kt{uuid.uuid4().hex[:8]}."


@pytest.fixture
def log(kafka_broker: str, prefix: str) -> Iterator[KafkaEventLog]:
    with KafkaEventLog(kafka_broker, topic_prefix=prefix, partitions=3, timeout_s=20) as opened:
        yield opened


def produce(bootstrap: str, topic: str, values: list[bytes], **config: Any) -> None:
    producer = kafka.Producer({"bootstrap.servers": bootstrap, **config})
    for value in values:
        producer.produce(topic, value=value, partition=0)
    assert producer.flush(20) == 0


def read_all(log: KafkaEventLog, partition: str) -> pa.Table:
    return log.read("traffic", partition, 0, 10**6).events


def test_three_partitions_keep_each_source_whole_and_in_order(log: KafkaEventLog) -> None:
    assert log.partitions("traffic") == ["traffic/0", "traffic/1", "traffic/2"]
    sources = [f"access-{k}.log" for k in range(8)]
    # Interleaved sources in one append: the batch spreads over partitions.
    batch = pa.concat_tables([traffic(3, source=s, first=k * 3) for k in range(4) for s in sources])
    ranges = log.append("traffic", batch)
    assert sum(len(r) for r in ranges) == batch.num_rows
    assert len({r.partition for r in ranges}) > 1, "8 sources should not all hash alike"
    second = log.append("traffic", traffic(5, source=sources[0], first=12))
    (only,) = second
    total = 0
    where: dict[str, str] = {}
    for partition in log.partitions("traffic"):
        events = read_all(log, partition)
        total += events.num_rows
        assert log.end_offset("traffic", partition) == events.num_rows
        got = [r for r in ranges if r.partition == partition]
        assert sum(len(r) for r in got) + (len(only) if only.partition == partition else 0) == (
            events.num_rows
        )
        for source in set(events["source"].to_pylist()):
            assert where.setdefault(source, partition) == partition  # one partition per source
            lines = [
                line
                for s, line in zip(
                    events["source"].to_pylist(), events["source_line"].to_pylist(), strict=True
                )
                if s == source
            ]
            assert lines == sorted(lines)  # and in the order appended
    assert total == batch.num_rows + 5
    assert where[sources[0]] == only.partition
    # Positions are per partition.
    log.commit("master", only.partition, only.end)
    assert log.lag("master", only.partition) == 0
    assert log.consumers() == {"master": {only.partition: only.end}}


def test_existing_topic_keeps_its_partition_count(
    kafka_broker: str, log: KafkaEventLog, prefix: str
) -> None:
    log.append("traffic", traffic(4))
    with KafkaEventLog(kafka_broker, topic_prefix=prefix, partitions=1) as other:
        assert other.partitions("traffic") == ["traffic/0", "traffic/1", "traffic/2"]
        assert other.partitions("logs") == ["logs/0"]  # created by `other`, with 1


def test_concurrent_producers_get_disjoint_offsets(kafka_broker: str, prefix: str) -> None:
    results: dict[str, list[OffsetRange]] = {}

    def appender(name: str) -> None:
        with KafkaEventLog(kafka_broker, topic_prefix=prefix, timeout_s=20) as own:
            got: list[OffsetRange] = []
            for k in range(15):
                got += own.append("traffic", traffic(1 + k % 4, source=name, first=k * 10))
            results[name] = got

    KafkaEventLog(kafka_broker, topic_prefix=prefix).partitions("traffic")  # create once
    threads = [threading.Thread(target=appender, args=(f"p{i}",)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    ranges = sorted((r.start, r.end) for got in results.values() for r in got)
    assert ranges[0][0] == 0
    for (_, a_end), (b_start, _) in itertools.pairwise(ranges):
        assert a_end == b_start
    with KafkaEventLog(kafka_broker, topic_prefix=prefix) as reader:
        events = read_all(reader, "traffic/0")
        for name, got in results.items():
            mine = pa.concat_tables(
                [events.slice(r.start, len(r)) for r in got]
            )  # each append's ranges hold exactly its events
            expected = pa.concat_tables(
                [traffic(1 + k % 4, source=name, first=k * 10) for k in range(15)]
            )
            assert mine.equals(expected)


def test_foreign_producer_writes_plain_json_events(kafka_broker: str, log: KafkaEventLog) -> None:
    log.partitions("traffic")  # the topic with 3 partitions; the producer writes to 0
    expected = traffic(3, source="vector")
    rows = expected.to_pylist()
    values = []
    for i, row in enumerate(rows):
        row["ts"] = int(row["ts"].timestamp() * 1_000_000)
        if i == 1:  # nullable fields may be left out
            row = {k: v for k, v in row.items() if v is not None}
        # Pretty-printed, or with a trailing newline: still one event per record.
        text = json.dumps(row, indent=2) if i == 2 else json.dumps(row) + "\n"
        values.append(text.encode())
    produce(kafka_broker, log.topic("traffic"), values)
    got = read_all(log, "traffic/0")
    assert got.schema == TRAFFIC_SCHEMA
    assert got.equals(expected)


def test_records_that_are_not_events_stop_the_read_loudly(
    kafka_broker: str, log: KafkaEventLog
) -> None:
    log.append("traffic", traffic(2, source="a"))
    partition = log.append("traffic", traffic(1, source="a", first=2))[0].partition
    number = int(partition.split("/")[1])
    producer = kafka.Producer({"bootstrap.servers": kafka_broker})
    producer.produce(log.topic("traffic"), value=b"GET / HTTP/1.1 raw line", partition=number)
    producer.produce(log.topic("traffic"), value=b'{"ts": 1}', partition=number)
    assert producer.flush(20) == 0
    assert log.read("traffic", partition, 0, 3).events.num_rows == 3  # before: fine
    with pytest.raises(ValueError, match=f"{partition} offset 3: not a traffic event"):
        log.read("traffic", partition, 3, 1)
    with pytest.raises(
        ValueError, match=f"{partition} offset 4: not a traffic event.*required field"
    ):
        log.read("traffic", partition, 4, 1)


def test_transaction_markers_leave_gaps_that_reads_skip(
    kafka_broker: str, log: KafkaEventLog
) -> None:
    topic = log.topic("traffic")
    log.partitions("traffic")
    rows = traffic(5, source="tx").to_pylist()
    for row in rows:
        row["ts"] = int(row["ts"].timestamp() * 1_000_000)
    producer = kafka.Producer({"bootstrap.servers": kafka_broker, "transactional.id": topic})
    producer.init_transactions(20)
    for chunk in (rows[:2], rows[2:]):
        producer.begin_transaction()
        for row in chunk:
            producer.produce(topic, value=json.dumps(row).encode(), partition=0)
        producer.commit_transaction(20)
    end = log.end_offset("traffic", "traffic/0")
    assert end > 5  # each commit left a marker offset
    whole = log.read("traffic", "traffic/0", 0, 10**6)
    assert (whole.start, whole.end) == (0, end)
    assert whole.events.equals(traffic(5, source="tx"))
    # Slices that straddle markers still add up to every event once, in order.
    pieces, position = [], 0
    while position < end:
        piece = log.read("traffic", "traffic/0", position, 2)
        assert piece.events.num_rows <= piece.end - piece.start
        pieces.append(piece.events)
        position = piece.end
    assert pa.concat_tables(pieces).equals(whole.events)


def test_positions_are_kafka_consumer_group_offsets(kafka_broker: str, log: KafkaEventLog) -> None:
    (r,) = log.append("traffic", traffic(6, source="one"))
    log.commit("master", r.partition, 4)
    group = f"{log.topic_prefix}consumer.master"
    admin = kafka.admin.AdminClient({"bootstrap.servers": kafka_broker})
    request = [kafka.ConsumerGroupTopicPartitions(group)]
    got = admin.list_consumer_group_offsets(request)[group].result().topic_partitions
    number = int(r.partition.split("/")[1])
    assert [(tp.topic, tp.partition, tp.offset) for tp in got] == [
        (log.topic("traffic"), number, 4)
    ]
    # ... and a Kafka consumer of that group resumes at the next event to read.
    consumer = kafka.Consumer({"bootstrap.servers": kafka_broker, "group.id": group})
    try:
        (tp,) = consumer.committed([kafka.TopicPartition(log.topic("traffic"), number)], 20)
        assert tp.offset == 4
    finally:
        consumer.close()
