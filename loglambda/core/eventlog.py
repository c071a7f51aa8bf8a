"""The event log: the ordered, durable, offset-addressed buffer every event passes through.

Why an interface: the batch/speed boundary of the exactness contract is an *offset* in
this log, so every front door (file tail, HTTP ingest, Kafka) appends here and every
consumer (master writer, speed layer) reads here by offset. One machine uses the
embedded :class:`~loglambda.core.eventlog_local.LocalEventLog`; at scale the same
protocol is backed by Kafka. Code above this module never knows which.

Vocabulary (Kafka's, so the Kafka backend is a thin mapping):

* A **partition** is a totally ordered sequence of events of one kind, named
  ``"<kind>/<n>"`` (``"traffic/0"``). Offsets are dense integers per partition,
  starting at 0, assigned at append time and never reused.
* A **consumer** is a named reader ("master", "speed") with one durable position
  per partition.

THE OFF-BY-ONE RULE (read this before calling ``commit``)
--------------------------------------------------------
A committed position is the **next offset to read**, never the last one read. After
making durable the output of the events with offsets ``[a, b)``, a consumer commits
``b`` -- the position just past the last event whose output is durable. So:

* ``committed() == 0`` means nothing is consumed (also the answer for a consumer
  that never committed);
* a restarted consumer resumes with ``read(kind, partition, committed(...), n)``;
* ``lag == end_offset - committed`` counts exactly the events not yet consumed;
* the batch horizon ``H`` of a view version is such a position: it covers the
  events with offset ``< H``.

Commit only *after* the output is durable (DESIGN.md, rules): a crash between the two
replays ``[a, b)`` into output files named from the offsets, overwriting instead of
duplicating.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol, runtime_checkable

import pyarrow as pa

from loglambda.core.schemas import KINDS, Kind

if TYPE_CHECKING:
    from loglambda.core.config import Settings


class OffsetOutOfRange(LookupError):
    """A read asked for offsets that were deleted or have not been written yet."""


@dataclass(frozen=True)
class OffsetRange:
    """Offsets ``[start, end)`` of one partition (end exclusive, so empty when equal)."""

    partition: str
    start: int
    end: int

    def __post_init__(self) -> None:
        if not 0 <= self.start <= self.end:
            raise ValueError(f"invalid offset range [{self.start}, {self.end})")

    def __len__(self) -> int:
        return self.end - self.start


@dataclass(frozen=True)
class LogSlice:
    """Events of ``partition`` with offsets ``[start, end)``, in offset order. ``end`` is
    where the next read continues (and what to commit once the output of these events
    is durable).

    Row ``i`` has offset ``start + i`` whenever offsets are dense: always on the local
    log and on loglambda's own Kafka topics. Kafka can leave offsets without an event
    (a foreign transactional producer's commit markers, compaction), so a slice holds
    *at most* ``end - start`` rows; count events with ``num_rows``, positions with
    ``end``."""

    partition: str
    start: int
    end: int
    events: pa.Table
    # When the oldest and the newest of these events were appended (epoch µs), if the
    # backend records it: the start of the speed layer's freshness clock.
    appended_us: tuple[int, int] | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.events.num_rows <= self.end - self.start:
            raise ValueError(
                f"slice [{self.start}, {self.end}) holds {self.events.num_rows} events"
            )

    @property
    def range(self) -> OffsetRange:
        return OffsetRange(self.partition, self.start, self.end)


@runtime_checkable
class EventLog(Protocol):
    """What every event-log backend provides (local segments, Kafka)."""

    def append(self, kind: Kind, events: pa.Table) -> tuple[OffsetRange, ...]:
        """Durably append ``events`` (in the kind's schema) in order; return the
        offsets they were given, in order, as ranges (``()`` for no events).

        The local backend gives one contiguous range. Kafka may give several: a batch
        can span partitions, and another producer's records can land between two of
        its produce requests. Returning is the acknowledgement: an acknowledged
        append is never lost, and a failed one is never half-visible."""
        ...

    def read(self, kind: Kind, partition: str, start: int, max_records: int) -> LogSlice:
        """At most ``max_records`` events from offset ``start`` on; ``end`` of the
        result is ``<= end_offset``. Empty (``end == start``) when caught up."""
        ...

    def end_offset(self, kind: Kind, partition: str) -> int:
        """The offset the next appended event of ``partition`` will get."""
        ...

    def partitions(self, kind: Kind) -> list[str]:
        """The partitions of a kind, e.g. ``["traffic/0"]``."""
        ...

    def committed(self, consumer: str, partition: str) -> int:
        """The consumer's durable position: the NEXT offset to read (0 if never)."""
        ...

    def commit(self, consumer: str, partition: str, offset: int) -> None:
        """Durably record ``offset`` -- one past the last event whose output is
        durable -- as the consumer's position (see the off-by-one rule above)."""
        ...

    def consumers(self) -> dict[str, dict[str, int]]:
        """Every consumer's committed positions, by partition."""
        ...

    def lag(self, consumer: str, partition: str) -> int:
        """Events appended but not yet consumed: ``end_offset - committed``."""
        ...


def partition_kind(partition: str) -> Kind:
    """The record kind a partition name belongs to (``"logs/0"`` -> ``"logs"``)."""
    kind, sep, number = partition.partition("/")
    if not sep or not number.isdigit() or kind not in KINDS:
        raise ValueError(f"invalid partition name {partition!r}; expected '<kind>/<n>'")
    return kind  # type: ignore[return-value]


def open_event_log(settings: Settings) -> EventLog:
    """The event log the settings name: local segments (default) or Kafka."""
    if settings.log_backend == "local":
        from loglambda.core.eventlog_local import LocalEventLog

        local: EventLog = LocalEventLog(settings.home, fsync=settings.fsync)
        return local
    if settings.log_backend == "kafka":
        from loglambda.core.eventlog_kafka import KafkaEventLog

        kafka: EventLog = KafkaEventLog.from_settings(settings)
        return kafka
    raise ValueError(f"unknown event log backend {settings.log_backend!r}")
