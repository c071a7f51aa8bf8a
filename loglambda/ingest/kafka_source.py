"""A Kafka topic of raw log lines as a front door, exactly once across restarts.

What a record is: with ``value="raw"`` (default) the value is one log line, as Vector's
kafka sink writes with ``encoding.codec = "text"``; with ``value="json"`` it is a JSON
object whose ``message_field`` holds the line (Vector's ``json`` codec: ``message``;
Fluent Bit: ``log``). Lines are parsed with a named format through ``frontdoor.deliver``
(quarantine first, then append to the event log). Provenance: ``source`` is
``"kafka:<topic>/<partition>"``, and ``source_line`` and ``source_offset`` are the
record's Kafka offset (a topic has no bytes to count).

Each batch of one topic partition, records ``[a, b)``: Step 1 parse; Step 2 quarantine
the rejects as ``kafka-<topic>-<partition>-<a>.parquet`` (a replay from ``a`` overwrites
it); Step 3 append the events; Step 4 write the state file, then commit ``b`` to the
consumer group (so Kafka's tools show the lag).

THE RECOVERY RULE (the event log is the truth, the commit a hint). On start the next
record of a partition is found as follows. ``C`` = the larger of the group's committed
offset and the state file's. ``L`` = the highest ``source_line`` of this source in the
event log, scanning from the state's mark (log offsets taken before any later append).
If ``L < C`` nothing after the commit was appended: resume at ``C`` and delete a
quarantine file of an attempt at ``C`` (it is replayed). Otherwise a batch from ``C`` was
appended but not committed: resume at the first offset after ``L`` that its quarantine
file does not hold, and cut that file to the records before it. An append that Kafka
failed halfway leaves a prefix (one source, one log partition, in order), and this rule
resumes right after it. One source process per topic and home (a lock says so).

The state file (``$LOGLAMBDA_HOME/sources/kafka-<topic>.json``: next offsets and the
mark) exists because tansu drops OffsetCommit metadata, where Kafka could carry the
mark; without it (a new home) the scan starts at offset 0.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import click
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from loglambda.core.cli_options import HOME_OPTION, env_option, stop_on_signals
from loglambda.core.durable import write_atomic
from loglambda.core.eventlog import EventLog
from loglambda.core.kafka_codec import kafka_module
from loglambda.core.parsers import get_parser
from loglambda.ingest.frontdoor import IngestReport, deliver, quarantine_name, write_quarantine
from loglambda.ingest.kafka_records import (
    Batch,
    SourceReport,
    ValueMode,
    batches,
    parse_batch,
)

SCAN_CHUNK: Final = 100_000
MARK_REFRESH_S: Final = 30.0


class KafkaSource:
    """Consumes ``topic`` into ``log``; ``recover()`` then ``run()`` (run recovers too)."""

    def __init__(
        self,
        log: EventLog,
        home: Path,
        *,
        bootstrap: str,
        topic: str,
        fmt: str,
        value: ValueMode = "raw",
        message_field: str = "message",
        group: str | None = None,
        partitions: Sequence[int] | None = None,
        batch_size: int = 10_000,
        config: Mapping[str, Any] | None = None,
        timeout_s: float = 30.0,
    ) -> None:
        if value not in ("raw", "json"):
            raise ValueError(f"value must be 'raw' or 'json', not {value!r}")
        self.log, self.home, self.topic = log, Path(home), topic
        self.parser = get_parser(fmt)
        self.value, self.message_field = value, message_field
        self.group = group or f"loglambda.source.{topic}"
        self.only = list(partitions) if partitions is not None else None
        self.batch_size, self.timeout_s = batch_size, timeout_s
        self._config = {"bootstrap.servers": bootstrap, **(config or {})}
        self.state_path = self.home / "sources" / quarantine_name("kafka", topic)
        self.state_path = self.state_path.with_suffix(".json")
        self._consumer: Any = None
        self._mark: dict[str, int] = {}
        self._next: dict[int, int] = {}
        self._mark_time = 0.0

    def source(self, partition: int) -> str:
        return f"kafka:{self.topic}/{partition}"

    # -- the recovery rule -------------------------------------------------------

    def recover(self) -> dict[int, int]:
        """The next record to read per partition (module docstring); repairs the
        quarantine, writes the state and commits the group to match."""
        kafka = kafka_module()
        consumer = self._client()
        parts = self._partitions()
        state = _load(self.state_path)
        hints = {int(k): int(v) for k, v in state.get("next", {}).items()}
        tps = [kafka.TopicPartition(self.topic, p) for p in parts]
        committed = {tp.partition: max(tp.offset, 0) for tp in consumer.committed(tps, 30)}
        resume = {p: max(committed[p], hints.get(p, 0)) for p in parts}
        fresh = not state and not any(resume.values())
        mark = {str(k): int(v) for k, v in state.get("mark", {}).items()}
        # Step 1: the highest line of each of our sources in the log after the mark.
        found = {} if fresh else self._highest_lines(mark, {self.source(p) for p in parts})
        for p in parts:
            start = resume[p]
            qfile = self.home / "quarantine" / quarantine_name("kafka", self.topic, p, start)
            last = found.get(self.source(p), -1)
            if last < start:
                # Step 2a: nothing of the batch at `start` was appended: it is replayed.
                qfile.unlink(missing_ok=True)
                continue
            # Step 2b: appended, not committed: skip what the log and quarantine hold.
            held = _quarantined(qfile)
            lines = set(held.column("source_line").to_pylist())
            position = last + 1
            while position in lines:
                position += 1
            kept = held.filter(pc.less(held.column("source_line"), position))
            if kept.num_rows == 0:
                qfile.unlink(missing_ok=True)
            elif kept.num_rows < held.num_rows:
                write_quarantine(self.home, qfile.name, kept)
            resume[p] = position
        # Step 3: record the result (state, then the group) before reading anything.
        self._next = dict(resume)
        self._mark = self._log_ends()
        self._save()
        tps = [kafka.TopicPartition(self.topic, p, o) for p, o in resume.items()]
        consumer.commit(offsets=tps, asynchronous=False)
        return resume

    def _highest_lines(self, mark: dict[str, int], sources: set[str]) -> dict[str, int]:
        kind = self.parser.kind
        wanted = pa.array(sorted(sources), pa.string())
        best: dict[str, int] = {}
        for partition in self.log.partitions(kind):
            position = mark.get(partition, 0)
            while True:
                piece = self.log.read(kind, partition, position, SCAN_CHUNK)
                if piece.end == piece.start:
                    break
                ours = piece.events.filter(pc.is_in(piece.events.column("source"), wanted))
                if ours.num_rows:
                    top = ours.group_by("source").aggregate([("source_line", "max")])
                    for src, line in zip(*(c.to_pylist() for c in top.columns), strict=True):
                        best[src] = max(best.get(src, -1), int(line))
                position = piece.end
        return best

    # -- running -----------------------------------------------------------------

    def run(
        self,
        *,
        max_messages: int | None = None,
        until_idle: bool = False,
        poll_s: float = 0.2,
        should_stop: Callable[[], bool] = lambda: False,
        on_batch: Callable[[Batch, IngestReport], None] | None = None,
    ) -> SourceReport:
        """Consume until ``max_messages`` records were read, or (``until_idle``) every
        partition is at its end, or ``should_stop()``."""
        kafka = kafka_module()
        totals = SourceReport()
        with self._locked():
            positions = self.recover()
            consumer = self._client()
            consumer.assign([kafka.TopicPartition(self.topic, p, o) for p, o in positions.items()])
            at_end: set[int] = set()
            try:
                while not should_stop():
                    left = self.batch_size if max_messages is None else max_messages - totals.read
                    if left <= 0 or (until_idle and at_end >= set(positions)):
                        break
                    msgs = consumer.consume(min(left, self.batch_size), timeout=poll_s)
                    for batch, eof in batches(msgs):
                        if eof:
                            at_end.add(batch.partition)
                            continue
                        at_end.discard(batch.partition)
                        report = self.deliver(batch)
                        totals.add(batch.partition, batch.end, report)
                        if on_batch is not None:
                            on_batch(batch, report)
            finally:
                consumer.unassign()
        return totals

    def deliver(self, batch: Batch) -> IngestReport:
        """Steps 1-4 of the module docstring for one batch."""
        kafka = kafka_module()
        source = self.source(batch.partition)
        mode, message_field = self.value, self.message_field
        parsed, rejects = parse_batch(batch, self.parser, source, mode, message_field)
        # Named by the position the batch was read from (records may start later, past
        # a gap): that is the name recovery looks for at the committed position.
        position = self._next.get(batch.partition, batch.start)
        name = quarantine_name("kafka", self.topic, batch.partition, position)
        report = deliver(
            self.log,
            self.home,
            self.parser.kind,
            parsed,
            rejects,
            fmt=self.parser.name,
            read=len(batch.values),
            quarantine_as=name,
        )
        # Step 4: the hints, only once the events are acknowledged.
        for r in report.ranges:
            self._mark[r.partition] = max(self._mark.get(r.partition, 0), r.end)
        if time.monotonic() - self._mark_time > MARK_REFRESH_S:
            self._mark = self._log_ends()
        self._next[batch.partition] = batch.end
        self._save()
        tp = kafka.TopicPartition(self.topic, batch.partition, batch.end)
        self._client().commit(offsets=[tp], asynchronous=False)
        return report

    # -- plumbing ----------------------------------------------------------------

    def _client(self) -> Any:
        if self._consumer is None:
            self._consumer = kafka_module().Consumer(
                {
                    **self._config,
                    "group.id": self.group,
                    "enable.auto.commit": False,  # we commit after the log acknowledged
                    "enable.partition.eof": True,
                    "auto.offset.reset": "earliest",
                    "allow.auto.create.topics": False,
                    "fetch.wait.max.ms": 100,
                }
            )
        return self._consumer

    def _partitions(self) -> list[int]:
        admin = kafka_module().admin.AdminClient(dict(self._config))
        # The full listing: a Metadata request naming a missing topic may create it.
        topics = admin.list_topics(timeout=self.timeout_s).topics
        if self.topic not in topics:
            raise LookupError(f"Kafka topic {self.topic!r} does not exist")
        every = sorted(topics[self.topic].partitions)
        return every if self.only is None else [p for p in every if p in self.only]

    def _log_ends(self) -> dict[str, int]:
        self._mark_time = time.monotonic()
        kind = self.parser.kind
        return {p: self.log.end_offset(kind, p) for p in self.log.partitions(kind)}

    def _save(self) -> None:
        state = {"topic": self.topic, "group": self.group, "next": self._next, "mark": self._mark}
        write_atomic(
            self.state_path, orjson.dumps(state, option=orjson.OPT_NON_STR_KEYS), overwrite=True
        )

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.state_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.state_path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                msg = f"another source is consuming {self.topic} into {self.home}"
                raise RuntimeError(msg) from None
            yield
        finally:
            os.close(fd)

    def close(self) -> None:
        if self._consumer is not None:
            self._consumer.close()
            self._consumer = None


def _quarantined(path: Path) -> pa.Table:
    try:
        return pq.read_table(path)
    except FileNotFoundError:
        return pa.table({"source_line": pa.array([], pa.int64())})


def _load(path: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = orjson.loads(path.read_bytes())
    except FileNotFoundError:
        return {}
    return data


# -- the command ---------------------------------------------------------------------


@click.command("kafka-source")
@env_option("--topic", "KAFKA_SOURCE_TOPIC", required=True, help="Topic of raw log lines.")
@env_option("--format", "KAFKA_SOURCE_FORMAT", "fmt", required=True, help="Format of the lines.")
@env_option(
    "--bootstrap",
    "KAFKA_SOURCE_BOOTSTRAP",
    default=None,
    help="Brokers of the topic (default: the event log's, LOGLAMBDA_KAFKA_BOOTSTRAP).",
)
@env_option(
    "--value",
    "KAFKA_SOURCE_VALUE",
    type=click.Choice(["raw", "json"]),
    default="raw",
    help="raw: the value is the line; json: an object holding it in --message-field.",
)
@env_option("--message-field", "KAFKA_SOURCE_MESSAGE_FIELD", default="message", help="See --value.")
@env_option("--group", "KAFKA_SOURCE_GROUP", default=None, help="Consumer group of the positions.")
@env_option("--batch", "KAFKA_SOURCE_BATCH", type=click.IntRange(min=1), default=10_000)
@env_option("--max-messages", "KAFKA_SOURCE_MAX_MESSAGES", type=click.IntRange(min=1), default=None)
@env_option("--until-idle", "KAFKA_SOURCE_UNTIL_IDLE", is_flag=True, help="Stop once caught up.")
@HOME_OPTION
def kafka_source_cmd(
    topic: str,
    fmt: str,
    bootstrap: str | None,
    value: ValueMode,
    message_field: str,
    group: str | None,
    batch: int,
    max_messages: int | None,
    until_idle: bool,
    home: Path | None,
) -> None:
    """Consume a Kafka topic of raw log lines into the event log, exactly once.

    Rejected lines go to quarantine with their Kafka offset; a crash at any point
    neither loses nor duplicates a line. Stop with Ctrl-C or SIGTERM.
    """
    from loglambda.core.config import Settings
    from loglambda.core.eventlog import open_event_log

    settings = Settings.load(home)
    source = KafkaSource(
        open_event_log(settings),
        settings.home,
        bootstrap=bootstrap or settings.kafka_bootstrap,
        topic=topic,
        fmt=fmt,
        value=value,
        message_field=message_field,
        group=group,
        batch_size=batch,
    )

    def progress(b: Batch, report: IngestReport) -> None:
        click.echo(
            f"{source.source(b.partition)} [{b.start:,}, {b.end:,}): "
            f"{report.accepted:,} accepted, {report.quarantined:,} quarantined",
            err=True,
        )

    try:
        with stop_on_signals() as should_stop:
            totals = source.run(
                max_messages=max_messages,
                until_idle=until_idle,
                should_stop=should_stop,
                on_batch=progress,
            )
    except (LookupError, RuntimeError) as err:
        raise click.ClickException(str(err)) from err
    finally:
        source.close()
    click.echo(
        f"read {totals.read:,} = accepted {totals.accepted:,} + quarantined {totals.quarantined:,}"
    )
