"""The event log on Kafka: the same protocol as the local segments, one topic per kind.

Mapping (thin on purpose, so Kafka's own tools show loglambda's positions):

* kind ``traffic`` -> topic ``<prefix>traffic`` (``logs`` likewise), created on first
  use with ``partitions`` partitions; partition ``"traffic/3"`` is partition 3 of that
  topic and its offsets are Kafka's own offsets.
* An event is one record whose value is the same JSON object as a line of the local
  log (every schema column, ``ts`` in epoch microseconds), so any producer can write
  events. Its key is the event's ``source``: with the Java-compatible ``murmur2``
  partitioner every event of one source lands in one partition, in order, whoever
  produced it. That is what a front door recovering its position needs (it scans the
  log for its own source), and what keeps a file's or a topic-partition's lines in order.
* A consumer ``name`` is the Kafka consumer group ``<prefix>consumer.<name>``; its
  committed offset is Kafka's committed offset. THE OFF-BY-ONE RULE is the same here:
  Kafka's committed offset is also the *next* offset to read, so ``committed()``,
  ``commit()`` and ``lag`` mean exactly what they mean for the local log. Groups never
  join (nobody subscribes); positions are written with OffsetCommit from the admin
  client, which Kafka accepts for groups without members.

Durability: appends use ``acks=all`` and the idempotent producer and return only after
every delivery report (the ``fsync`` setting of the local log does not apply: Kafka's
durability is replication). One append is not a transaction: if the broker fails it
(after ``delivery.timeout.ms``), a prefix of each partition's events may be visible.
Offsets are dense in our topics; a foreign *transactional* producer leaves control
records between offsets, so a slice may hold fewer rows than ``end - start``.

Brokers: besides Apache Kafka this runs against tansu 0.6 (``infra/kafka``), which needs
three workarounds, all harmless on Kafka:

* ListOffsets(latest) answers the last *batch*'s base offset + 1, not the end offset.
  ``end_offset`` therefore fetches from that answer and takes the high watermark of the
  fetch response (one extra, usually empty, fetch on Kafka).
* A Metadata request naming a missing topic creates it with the broker's default
  partition count (4). We look topics up in the full listing before creating them.
* A fetch past the end answers nothing (Kafka: OFFSET_OUT_OF_RANGE), so ``read`` checks
  the bounds before fetching instead of waiting for an error.

Nothing but the clients (created lazily) and the names of topics already created is
cached: offsets, partitions and positions are asked of the broker on every call, since
other processes append and commit all the time.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Final

import pyarrow as pa

from loglambda.core.eventlog import LogSlice, OffsetOutOfRange, OffsetRange, partition_kind
from loglambda.core.eventlog_local import encode_events
from loglambda.core.kafka_codec import decode_values, delivery_ranges, fetch_failure, kafka_module
from loglambda.core.schemas import KINDS, Kind, schema_for

if TYPE_CHECKING:
    from confluent_kafka import Consumer, KafkaError, Producer
    from confluent_kafka.admin import AdminClient

    from loglambda.core.config import Settings

_CONSUMER_NAME: Final = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_TOPIC_PREFIX: Final = re.compile(r"^[A-Za-z0-9._-]{0,200}$")
_MAX_CONSUME: Final = 50_000


class KafkaAppendError(RuntimeError):
    """The broker refused or timed out some events of an append."""


class KafkaEventLog:
    """The event log on a Kafka (or Kafka-compatible) cluster; see the module docstring."""

    def __init__(
        self,
        bootstrap: str,
        *,
        topic_prefix: str = "loglambda.",
        partitions: int = 1,
        timeout_s: float = 30.0,
        config: Mapping[str, Any] | None = None,
    ) -> None:
        kafka_module()  # fail at construction, not at the first append
        if partitions < 1:
            raise ValueError("partitions must be at least 1")
        if not _TOPIC_PREFIX.match(topic_prefix):
            raise ValueError(f"invalid topic prefix {topic_prefix!r}")
        self.bootstrap = bootstrap
        self.topic_prefix = topic_prefix
        self.num_partitions = partitions
        self.timeout_s = timeout_s
        # Extra client settings (security.protocol, sasl.*) go to every client.
        self._base: dict[str, Any] = {"bootstrap.servers": bootstrap, **(config or {})}
        self._admin: AdminClient | None = None
        self._producer: Producer | None = None
        self._reader: Consumer | None = None
        self._created: set[str] = set()

    @classmethod
    def from_settings(cls, settings: Settings) -> KafkaEventLog:
        return cls(
            settings.kafka_bootstrap,
            topic_prefix=settings.kafka_topic_prefix,
            partitions=settings.kafka_partitions,
        )

    def topic(self, kind: Kind) -> str:
        schema_for(kind)  # rejects unknown kinds
        return f"{self.topic_prefix}{kind}"

    def group(self, consumer: str) -> str:
        if not _CONSUMER_NAME.match(consumer):
            raise ValueError(f"invalid consumer name {consumer!r}")
        return f"{self.topic_prefix}consumer.{consumer}"

    # -- reading -----------------------------------------------------------------

    def partitions(self, kind: Kind) -> list[str]:
        _, count = self._ensure_topic(kind)
        return [f"{kind}/{n}" for n in range(count)]

    def end_offset(self, kind: Kind, partition: str) -> int:
        topic, number = self._locate(kind, partition)
        return self._watermarks(topic, number)[1]

    def read(self, kind: Kind, partition: str, start: int, max_records: int) -> LogSlice:
        if max_records < 0:
            raise ValueError("max_records must be >= 0")
        topic, number = self._locate(kind, partition)
        # Step 1: bounds first: a fetch past the end is an error on Kafka but silence
        # on tansu, and we want OffsetOutOfRange on both without waiting for a timeout.
        low, high = self._watermarks(topic, number)
        if not low <= start <= high:
            raise OffsetOutOfRange(f"{partition}: offset {start} not in [{low}, {high}]")
        end = min(high, start + max_records)
        if end == start:
            return LogSlice(partition, start, end, schema_for(kind).empty_table())
        # Step 2: fetch the values of [start, end); Step 3: parse them in one call.
        values, offsets, stamps = self._fetch(topic, number, partition, start, end)
        events = decode_values(kind, partition, values, offsets)
        # Record timestamps (CreateTime, or LogAppendTime on topics configured so) are
        # the freshness clock's start, like the local log's append time.
        appended = (min(stamps) * 1000, max(stamps) * 1000) if stamps else None
        return LogSlice(partition, start, end, events, appended_us=appended)

    def _fetch(
        self, topic: str, number: int, partition: str, start: int, end: int
    ) -> tuple[list[bytes], list[int], list[int]]:
        kafka = kafka_module()
        reader = self._reader_client()
        reader.assign([kafka.TopicPartition(topic, number, start)])
        values: list[bytes] = []
        offsets: list[int] = []
        stamps: list[int] = []  # record timestamps, ms
        deadline = time.monotonic() + self.timeout_s
        try:
            position = start
            while position < end:
                # Asking for exactly what is left returns as soon as it arrived; with
                # gaps (control records) the batch stays short and the timeout ends it.
                batch = reader.consume(min(end - position, _MAX_CONSUME), timeout=0.05)
                if not batch and time.monotonic() > deadline:
                    raise TimeoutError(f"{partition}: reading [{position}, {end}) timed out")
                for msg in batch:
                    err = msg.error()
                    offset = msg.offset() or 0
                    if err is not None:
                        if err.code() != kafka.KafkaError._PARTITION_EOF:
                            raise fetch_failure(partition, err)
                        if offset < end:  # the end moved back: the log was truncated
                            raise OffsetOutOfRange(f"{partition}: end fell to {offset}")
                        position = end
                        break
                    if offset >= end:
                        position = end
                        break
                    value = msg.value()
                    if value is None:
                        raise ValueError(f"{partition}: offset {offset} has no value")
                    values.append(value)
                    offsets.append(offset)
                    kind_of_stamp, stamp = msg.timestamp()
                    if kind_of_stamp != kafka.TIMESTAMP_NOT_AVAILABLE:
                        stamps.append(int(stamp))
                    position = offset + 1
        finally:
            reader.unassign()  # an idle assignment would keep fetching in the background
        return values, offsets, stamps

    def _watermarks(self, topic: str, number: int) -> tuple[int, int]:
        """``(first offset, end offset)`` of a partition, the end from a fetch response
        (see the tansu note in the module docstring)."""
        kafka = kafka_module()
        reader = self._reader_client()
        tp = kafka.TopicPartition(topic, number)
        low, reported = reader.get_watermark_offsets(tp, timeout=self.timeout_s, cached=False)
        reader.assign([kafka.TopicPartition(topic, number, max(int(reported), 0))])
        deadline = time.monotonic() + self.timeout_s
        try:
            while True:
                msg = reader.poll(timeout=0.05)
                if msg is None:
                    if time.monotonic() > deadline:
                        raise TimeoutError(f"{topic}[{number}]: no fetch response")
                    continue
                err = msg.error()
                if err is not None and err.code() != kafka.KafkaError._PARTITION_EOF:
                    raise fetch_failure(f"{topic}[{number}]", err)
                high = int(reader.get_watermark_offsets(tp, cached=True)[1])
                if err is not None:  # the EOF event carries the end it reached
                    high = max(high, int(msg.offset() or 0))
                return max(int(low), 0), high
        finally:
            reader.unassign()

    # -- appending ---------------------------------------------------------------

    def append(self, kind: Kind, events: pa.Table) -> tuple[OffsetRange, ...]:
        # Step 1: validate and serialise exactly like the local log (same JSON lines).
        payload, count = encode_events(kind, events)
        # Step 2: make sure the topic exists with our partition count before the
        # producer asks for its metadata (which would auto-create it otherwise).
        topic, _ = self._ensure_topic(kind)
        if count == 0:
            return ()
        values = payload.split(b"\n")[:-1]  # orjson escapes newlines inside strings
        keys = [s.encode() for s in events.column("source").to_pylist()]
        producer = self._producer_client()
        delivered: list[tuple[int, int]] = []
        failed: list[Any] = []

        def on_delivery(err: KafkaError | None, msg: Any) -> None:
            if err is not None:
                failed.append(err)
            else:
                delivered.append((msg.partition(), msg.offset()))

        # Step 3: produce every event; a full local queue is drained, never dropped.
        for value, key in zip(values, keys, strict=True):
            while True:
                try:
                    producer.produce(topic, value=value, key=key, on_delivery=on_delivery)
                    break
                except BufferError:
                    producer.poll(0.05)
        # Step 4: wait for every delivery report; only then is the append acknowledged.
        if producer.flush(self.timeout_s + 5.0) > 0:
            raise KafkaAppendError(f"{topic}: delivery of {count} events timed out")
        if failed or len(delivered) != count:
            raise KafkaAppendError(
                f"{topic}: {len(failed)} of {count} events failed ({failed[:1]}); "
                "a prefix of some partitions may be visible"
            )
        return delivery_ranges(kind, delivered)

    # -- consumers ---------------------------------------------------------------

    def committed(self, consumer: str, partition: str) -> int:
        kafka = kafka_module()
        kind = partition_kind(partition)
        group = self.group(consumer)
        tp = kafka.TopicPartition(self.topic(kind), int(partition.split("/")[1]))
        request = [kafka.ConsumerGroupTopicPartitions(group, [tp])]
        future = self._admin_client().list_consumer_group_offsets(
            request, request_timeout=self.timeout_s
        )[group]
        for got in future.result().topic_partitions:
            if got.error is not None:
                raise kafka.KafkaException(got.error)
            return max(int(got.offset), 0)  # OFFSET_INVALID (-1001): never committed
        return 0

    def commit(self, consumer: str, partition: str, offset: int) -> None:
        kafka = kafka_module()
        kind = partition_kind(partition)
        group = self.group(consumer)
        topic, number = self._locate(kind, partition)
        end = self._watermarks(topic, number)[1]
        if not 0 <= offset <= end:
            raise ValueError(f"{partition}: cannot commit {offset}, end offset is {end}")
        tp = kafka.TopicPartition(topic, number, offset)
        request = [kafka.ConsumerGroupTopicPartitions(group, [tp])]
        # Synchronous: returning means the group coordinator stored the offset.
        future = self._admin_client().alter_consumer_group_offsets(
            request, request_timeout=self.timeout_s
        )[group]
        for got in future.result().topic_partitions:
            if got.error is not None:
                raise kafka.KafkaException(got.error)

    def consumers(self) -> dict[str, dict[str, int]]:
        kafka = kafka_module()
        admin = self._admin_client()
        prefix = f"{self.topic_prefix}consumer."
        listing = admin.list_consumer_groups(request_timeout=self.timeout_s).result()
        groups = sorted(g.group_id for g in listing.valid if g.group_id.startswith(prefix))
        kinds = {self.topic(kind): kind for kind in KINDS}
        out: dict[str, dict[str, int]] = {}
        for group in groups:
            request = [kafka.ConsumerGroupTopicPartitions(group)]
            future = admin.list_consumer_group_offsets(request, request_timeout=self.timeout_s)
            positions = {
                f"{kinds[tp.topic]}/{tp.partition}": int(tp.offset)
                for tp in future[group].result().topic_partitions
                if tp.topic in kinds and tp.offset >= 0
            }
            if positions:
                out[group[len(prefix) :]] = positions
        return out

    def lag(self, consumer: str, partition: str) -> int:
        kind = partition_kind(partition)
        return self.end_offset(kind, partition) - self.committed(consumer, partition)

    # -- clients and topics ----------------------------------------------------------

    def close(self) -> None:
        """Flush and close the clients (they are created again if used later)."""
        if self._producer is not None:
            self._producer.flush(self.timeout_s)
            self._producer = None
        if self._reader is not None:
            self._reader.close()
            self._reader = None
        self._admin = None

    def __enter__(self) -> KafkaEventLog:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _admin_client(self) -> AdminClient:
        if self._admin is None:
            self._admin = kafka_module().admin.AdminClient(dict(self._base))
        return self._admin

    def _producer_client(self) -> Producer:
        if self._producer is None:
            self._producer = kafka_module().Producer(
                {
                    **self._base,
                    "acks": "all",
                    "enable.idempotence": True,
                    # Java's partitioner: Vector, Fluent Bit (librdkafka set the same
                    # way) and Java producers keyed by source agree on the partition.
                    "partitioner": "murmur2_random",
                    "linger.ms": 5,
                    # Fail an append within our timeout instead of the default 5 min.
                    "delivery.timeout.ms": int(self.timeout_s * 1000),
                }
            )
        return self._producer

    def _reader_client(self) -> Consumer:
        if self._reader is None:
            self._reader = kafka_module().Consumer(
                {
                    **self._base,
                    # Never commits or joins: reads are assign + seek, positions go
                    # through the admin client under the consumer's own group.
                    "group.id": f"{self.topic_prefix}reader",
                    "enable.auto.commit": False,
                    "enable.auto.offset.store": False,
                    "enable.partition.eof": True,
                    "auto.offset.reset": "error",
                    "allow.auto.create.topics": False,
                    "isolation.level": "read_committed",
                    # Reads are request/response: a long-poll wait would add to each.
                    "fetch.wait.max.ms": 10,
                    "max.partition.fetch.bytes": 8 << 20,
                    "queued.max.messages.kbytes": 64 << 10,
                }
            )
        return self._reader

    def _ensure_topic(self, kind: Kind) -> tuple[str, int]:
        """The kind's topic and its partition count, creating the topic if missing."""
        kafka = kafka_module()
        topic = self.topic(kind)
        admin = self._admin_client()
        if topic not in self._created:
            # The full listing: naming a missing topic would auto-create it.
            if topic not in admin.list_topics(timeout=self.timeout_s).topics:
                new = kafka.admin.NewTopic(topic, num_partitions=self.num_partitions)
                try:
                    admin.create_topics([new], operation_timeout=self.timeout_s)[topic].result()
                except kafka.KafkaException as exc:
                    if exc.args[0].code() != kafka.KafkaError.TOPIC_ALREADY_EXISTS:
                        raise  # (another process creating it at the same time is fine)
            self._created.add(topic)
        deadline = time.monotonic() + self.timeout_s
        while True:  # a new topic's metadata can lag its creation
            meta = admin.list_topics(topic=topic, timeout=self.timeout_s).topics.get(topic)
            if meta is not None and meta.error is None and meta.partitions:
                return topic, len(meta.partitions)
            if time.monotonic() > deadline:
                raise TimeoutError(f"topic {topic} has no partitions in the metadata")
            time.sleep(0.02)  # poll interval of the condition above

    def _locate(self, kind: Kind, partition: str) -> tuple[str, int]:
        if partition_kind(partition) != kind:
            raise ValueError(f"unknown partition {partition!r} of kind {kind!r}")
        number = int(partition.split("/")[1])
        topic, count = self._ensure_topic(kind)
        if number >= count:
            raise ValueError(f"unknown partition {partition!r}: {topic} has {count}")
        return topic, number
