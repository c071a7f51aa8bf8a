"""The master writer: the event log's "master" consumer, turning slices into history.

Each step takes the next slice ``[a, b)`` of one log partition, writes its events into
the event-time partitions of the master dataset as one batch, and commits. The batch
is named from what it covers (``log-<kind>-<n>-<a>-<b>``) and its manifest origin says
``{"type": "log", "partition": ..., "from": a, "to": b}``, which is what the batch
layer turns into its horizon (``recompute.horizon_of``).

Where to resume (the off-by-one rule of ``core/eventlog.py`` applies): the position
is the *next offset to write*. The manifest is the truth and the consumer commit in
the event log is a hint: a crash after the manifest entry was linked but before the
log commit must not write ``[a, b)`` twice, so on start the writer resumes at
``max(committed, highest "to" in the manifest)`` and re-commits that to the log. A
crash before the manifest entry leaves only a staged batch, which ``recover()``
discards; the replay then writes the same names (or, if more events arrived, a batch
covering a longer range), never a second copy of an event.

One writer per home: a second one fails fast on a lock instead of racing the first.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from loglambda.batch.master import MasterDataset
from loglambda.core.eventlog import EventLog, LogSlice, partition_kind
from loglambda.core.schemas import KINDS, Kind

CONSUMER: Final = "master"
DEFAULT_MAX_EVENTS: Final = 500_000


class WriterBusy(RuntimeError):
    """Another master writer holds this home's lock."""


@dataclass(frozen=True)
class WrittenSlice:
    """One committed master batch made from a log slice."""

    partition: str
    start: int
    end: int
    events: int  # can be < end - start: Kafka offsets have gaps (transaction markers)
    seq: int
    files: int
    seconds: float


@dataclass(frozen=True)
class Flush:
    """When a partition's pending events are worth a batch: at least ``min_events``
    of them, or any once ``max_wait_s`` passed since the last batch (so a trickle
    still reaches the master, in fewer, larger files than one per poll)."""

    min_events: int = 100_000
    max_wait_s: float = 10.0


class MasterWriter:
    """Consumes the event log into the master dataset; ``step``/``drain``/``run``."""

    def __init__(
        self,
        home: Path,
        log: EventLog,
        *,
        consumer: str = CONSUMER,
        max_events: int = DEFAULT_MAX_EVENTS,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.home = Path(home)
        self.log = log
        self.consumer = consumer
        self.max_events = max_events
        self.master = MasterDataset(self.home)
        self.written_events = 0
        self._positions: dict[str, int] | None = None

    @property
    def positions(self) -> dict[str, int]:
        """The next offset to write, per partition (only inside ``session``)."""
        if self._positions is None:
            raise RuntimeError("use the writer inside `with writer.session():`")
        return self._positions

    @contextlib.contextmanager
    def session(self) -> Iterator[MasterWriter]:
        """Hold the writer lock, repair the master, and rebuild the resume position
        per partition from disk (never carried over from an earlier session)."""
        lock_path = self.master.root / "_writer.lock"
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise WriterBusy(
                    f"another master writer is running on {self.home} (lock {lock_path})"
                ) from None
            self.master.recover()
            self._positions = self._resume_positions()
            yield self
        finally:
            self._positions = None
            os.close(fd)

    def _resume_positions(self) -> dict[str, int]:
        reach: dict[str, int] = {}
        for entry in self.master.entries():
            origin = entry.origin
            if origin.get("type") == "log":
                p = str(origin["partition"])
                reach[p] = max(reach.get(p, 0), int(origin["to"]))
        positions: dict[str, int] = {}
        for kind in KINDS:
            for partition in self.log.partitions(kind):
                committed = self.log.committed(self.consumer, partition)
                positions[partition] = max(committed, reach.get(partition, 0))
                if positions[partition] != committed:
                    # The batch is durable but its commit was lost: repair the hint.
                    self.log.commit(self.consumer, partition, positions[partition])
        return positions

    def step(self, partition: str) -> WrittenSlice | None:
        """Write the next slice of ``partition`` (up to ``max_events``); None if none."""
        kind = partition_kind(partition)
        t0 = time.monotonic()
        # Step 1: read from the resume position; nothing new means nothing to do.
        positions = self.positions
        start = positions.get(partition, 0)
        piece = self.log.read(kind, partition, start, self.max_events)
        if piece.end == piece.start:
            return None
        # Step 2-3: stage, write and link the manifest entry (``_write``); from here
        # the events are durable history even if we die before Step 4.
        seq, files = self._write(kind, piece)
        # Step 4: only now move the consumer position (the hint) past the slice.
        self.log.commit(self.consumer, partition, piece.end)
        positions[partition] = piece.end
        rows = piece.events.num_rows
        self.written_events += rows
        return WrittenSlice(
            partition, piece.start, piece.end, rows, seq, files, time.monotonic() - t0
        )

    def _write(self, kind: Kind, piece: LogSlice) -> tuple[int, int]:
        number = piece.partition.split("/", 1)[1]
        batch_id = f"log-{kind}-{number}-{piece.start:020d}-{piece.end:020d}"
        staged = self.master.stage(batch_id)
        try:
            staged.write(kind, piece.events)
            entry = staged.commit(
                {
                    "type": "log",
                    "partition": piece.partition,
                    "from": piece.start,
                    "to": piece.end,
                },
                read=piece.events.num_rows,
            )
        except BaseException:
            staged.abort()
            raise
        return entry.seq, len(entry.files)

    def drain(
        self,
        on_slice: Callable[[WrittenSlice], None] | None = None,
    ) -> int:
        """Write everything appended so far, in slices; return the events written."""
        total = 0
        for kind in KINDS:
            for partition in self.log.partitions(kind):
                while (done := self.step(partition)) is not None:
                    total += done.events
                    if on_slice is not None:
                        on_slice(done)
        return total

    def run(
        self,
        *,
        flush: Flush = Flush(),
        poll_s: float = 0.5,
        should_stop: Callable[[], bool] = lambda: False,
        on_slice: Callable[[WrittenSlice], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """Follow the log until ``should_stop()``; batches follow the ``flush`` rule."""
        positions = self.positions
        last_write: dict[str, float] = {}
        while not should_stop():
            wrote = False
            for kind in KINDS:
                for partition in self.log.partitions(kind):
                    pending = self.log.end_offset(kind, partition) - positions.get(partition, 0)
                    waited = time.monotonic() - last_write.setdefault(partition, time.monotonic())
                    if pending <= 0 or (pending < flush.min_events and waited < flush.max_wait_s):
                        continue
                    done = self.step(partition)
                    if done is not None:
                        wrote = True
                        last_write[partition] = time.monotonic()
                        if on_slice is not None:
                            on_slice(done)
            if on_idle is not None:
                on_idle()
            if not wrote:
                _wait(poll_s, should_stop)


def _wait(seconds: float, should_stop: Callable[[], bool]) -> None:
    """Sleep up to ``seconds`` between polls, waking early to stop."""
    deadline = time.monotonic() + seconds
    while not should_stop() and time.monotonic() < deadline:
        time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))
