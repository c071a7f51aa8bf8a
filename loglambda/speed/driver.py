"""The local speed driver: each new slice of the event log becomes offset-tagged partials.

Loop (``run``): apply the batch horizon if a new version was published, then per
partition read everything appended since the speed position (up to ``max_events``:
slices are small when caught up, large when behind), compute every view's partial
rows for that slice with the ``PartialEngine`` (Beam on one reused ``FnApiRunner`` by
default), and commit partials and position in one ``RealtimeStore`` transaction.

Expiry at the horizon (DESIGN.md's contract): the batch covers offsets ``< H``. When
a version with horizon ``H`` is published, partials ending at or below ``H`` are
dropped, and a slice that straddles ``H`` is *re-cut*: its part ``[H, end)`` is
recomputed from the log and replaces it, in the same commit. (We re-cut instead of
asking the batch to snapshot at a slice boundary because the batch horizon comes from
the master writer's batches, which the speed layer cannot predict.) A rollback moves
``H`` down; the same rule recomputes ``[H, first partial)``. Serving reads only the
batch version the store says its partials were cut against, so it never mixes a new
horizon with old partials.

Restart: the position is rebuilt from ``STATE`` (the truth); the log consumer
position "speed" is a hint for ``status`` and retention, committed after ``STATE``, at
most once a second (two fsyncs each) and whenever the driver is caught up or stops.

Catching up (a slice came back full, so more is waiting), the next slice is read and
decoded on a background thread while this one is computed: on a 250k-event slice the
log's JSON decoding is ~0.7 s next to ~0.8 s of views, and the two use separate cores.
At most one read is in flight, and every other call to the log waits for it (a Kafka
consumer serves one call at a time). When caught up nothing is read ahead: a slice is
whatever arrived since the last one, so reading early would only cut it shorter.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Protocol

import pyarrow as pa
import pyarrow.compute as pc

from loglambda.batch.versions import VersionStore
from loglambda.core.eventlog import EventLog, LogSlice, partition_kind
from loglambda.core.schemas import KINDS, Kind
from loglambda.speed.store import Partial, RealtimeStore, SpeedState

CONSUMER: Final = "speed"
DEFAULT_MAX_EVENTS: Final = 250_000
HINT_EVERY_S: Final = 1.0  # the log-side position hint is committed at most this often
# A slice is read from the log in pieces of at most this many events: the JSON text of a
# piece (~8 MB) and its parser's buffers are freed before the next piece is read, and
# each piece is compacted before the next (measured catching up: peak RSS ~500 MB with
# 20k pieces, ~560 with 50k, ~670 reading 250k at once; same throughput).
READ_PIECE: Final = 20_000


class PartialEngine(Protocol):
    """Computes every view's partial rows over one slice of events of a kind (in the
    kind's schema, string columns dictionary-encoded: see ``compact``)."""

    def compute(self, kind: Kind, events: pa.Table) -> dict[str, pa.Table]: ...


def compact(events: pa.Table) -> pa.Table:
    """The events with every string column dictionary-encoded (int32 indices).

    Why: catching up, the driver holds two slices (one computing, one read ahead), and
    a 250k-event slice decoded from the log is ~64 MB, 27 of them user agents that
    repeat; encoded, its strings take a fraction of that (~20 MB for the whole slice on
    generated traffic; ~8 ms per 20k events). Every string column, always, so that the
    pieces of a slice concatenate.
    """
    columns = [
        pc.dictionary_encode(col) if pa.types.is_string(col.type) else col for col in events.columns
    ]
    schema = pa.schema(
        [f.with_type(c.type) for f, c in zip(events.schema, columns, strict=True)],
        metadata=events.schema.metadata,
    )
    return pa.Table.from_arrays(columns, schema=schema)


class DriverBusy(RuntimeError):
    """Another speed driver holds this home's lock."""


@dataclass(frozen=True)
class SliceDone:
    """One committed slice: what it covered and how long the commit took."""

    partition: str
    start: int
    end: int
    seconds: float  # read -> partials durable and listed
    lag: int  # events still waiting in the partition after this slice
    # Freshness (append -> partial durable) of the slice's oldest and newest event,
    # when the log records append times; the oldest one is the slice's worst case.
    freshness_s: tuple[float, float] | None = None

    @property
    def events(self) -> int:
        return self.end - self.start


class SpeedDriver:
    """Consumes the log into realtime partials; use inside ``with driver.session()``."""

    def __init__(
        self,
        home: Path,
        log: EventLog,
        engine: PartialEngine,
        *,
        consumer: str = CONSUMER,
        max_events: int = DEFAULT_MAX_EVENTS,
        read_ahead: bool = True,
    ) -> None:
        if max_events < 1:
            raise ValueError("max_events must be at least 1")
        self.home = Path(home)
        self.log = log
        self.engine = engine
        self.consumer = consumer
        self.max_events = max_events
        self.store = RealtimeStore(self.home)
        self.versions = VersionStore(self.home)
        self.read_ahead = read_ahead
        self._state: SpeedState | None = None
        self._reader: ThreadPoolExecutor | None = None
        self._ahead: tuple[str, int, Future[LogSlice]] | None = None  # partition, start
        self._hints: dict[str, int] = {}  # consumer positions not yet committed to the log
        self._hinted = 0.0

    @property
    def state(self) -> SpeedState:
        if self._state is None:
            raise RuntimeError("use the driver inside `with driver.session():`")
        return self._state

    @contextlib.contextmanager
    def session(self) -> Iterator[SpeedDriver]:
        """Hold the driver lock; rebuild the state from the store (nothing carried
        over from an earlier session), drop a crashed attempt's files."""
        self.store.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.store.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise DriverBusy(f"another speed driver is running on {self.home}") from None
            self._state = self.store.state()
            self.store.collect_garbage(self._state.partials)
            if self.read_ahead:
                self._reader = ThreadPoolExecutor(1, thread_name_prefix="speed-read-ahead")
            yield self
            self._commit_hints()
        finally:
            if self._reader is not None:
                self._reader.shutdown(wait=True, cancel_futures=True)
            self._reader, self._ahead, self._hints = None, None, {}
            self._state = None
            os.close(fd)

    def _partitions(self) -> list[str]:
        self._settle()
        return [p for kind in KINDS for p in self.log.partitions(kind)]

    def _settle(self) -> None:
        """Wait until no read ahead is in flight (it stays available to ``_read``)."""
        if self._ahead is not None:
            concurrent.futures.wait([self._ahead[2]])

    def _read(self, partition: str, start: int) -> LogSlice:
        """The slice from ``start``: the one read ahead if it starts there, else now
        (a read ahead of another partition is kept for its turn)."""
        self._settle()
        if self._ahead is not None and self._ahead[0] == partition:
            ahead, self._ahead = self._ahead, None
            if ahead[1] == start:
                return ahead[2].result()
            # Otherwise stale (the horizon moved past it): dropped.
        return self._read_log(partition, start, self.max_events)

    def _read_log(self, partition: str, start: int, count: int) -> LogSlice:
        """Up to ``count`` events from ``start``, read in pieces of ``READ_PIECE``."""
        kind = partition_kind(partition)
        pieces: list[LogSlice] = []
        at = start
        while at < start + count:
            piece = self.log.read(kind, partition, at, min(start + count - at, READ_PIECE))
            pieces.append(replace(piece, events=compact(piece.events)))
            if piece.end - piece.start < READ_PIECE:
                break  # the end of the log
            at = piece.end
        if len(pieces) == 1:
            return pieces[0]
        times = [p.appended_us for p in pieces]
        appended = None
        if all(t is not None for t in times):
            appended = (min(t[0] for t in times if t), max(t[1] for t in times if t))
        events = pa.concat_tables([p.events for p in pieces])
        return LogSlice(partition, start, pieces[-1].end, events, appended_us=appended)

    def _hint(self, partition: str, offset: int) -> None:
        self._hints[partition] = offset
        self._commit_hints(force=False)

    def _commit_hints(self, *, force: bool = True) -> None:
        """Commit the log-side positions (a hint: ``STATE`` already holds them); unless
        ``force``, only if the last commit is ``HINT_EVERY_S`` old."""
        if not force and time.monotonic() - self._hinted < HINT_EVERY_S:
            return
        if self._hints:
            self._settle()
            for partition, offset in sorted(self._hints.items()):
                self.log.commit(self.consumer, partition, offset)
            self._hints.clear()
        self._hinted = time.monotonic()

    def apply_horizon(self) -> bool:
        """Cut the partials against the current batch version; True if it changed."""
        state = self.state
        current = self.versions.current()
        version = current.version if current else None
        horizon = dict(current.horizon.offsets) if current else {}
        if version == state.batch_version and horizon == state.horizon:
            return False
        partials: list[Partial] = []
        positions = dict(state.positions)
        for partition in sorted(set(self._partitions()) | set(positions)):
            h = horizon.get(partition, 0)
            pos = positions.get(partition, 0)
            kept = [p for p in state.of(partition) if p.start >= h]
            if pos <= h:  # the batch covers everything we had: start above it
                positions[partition] = h
                continue
            first = kept[0].start if kept else pos
            # Straddling slice (or a rollback below our first partial): recompute the
            # events between the new horizon and the first partial we can keep.
            a = h
            while a < first:
                b = min(first, a + self.max_events)
                partials.append(self._compute(partition, a, b))
                a = b
            partials.extend(kept)
        new = replace(
            state,
            positions=positions,
            horizon=horizon,
            batch_version=version,
            partials=tuple(partials),
        )
        self._state = self.store.commit(new)
        return True

    def _compute(self, partition: str, start: int, end: int) -> Partial:
        kind = partition_kind(partition)
        self._settle()
        piece = self._read_log(partition, start, end - start)
        if piece.end != end:
            raise RuntimeError(f"{partition}: log ends at {piece.end}, needed [{start}, {end})")
        tables = self.engine.compute(kind, piece.events)
        return self.store.write_partial(partition, start, end, tables)

    def step(self, partition: str) -> SliceDone | None:
        """Process the next slice of ``partition``; None when caught up."""
        t0 = time.monotonic()
        kind = partition_kind(partition)
        state = self.state
        # Step 1: read from the committed position (never below the horizon).
        start = max(state.positions.get(partition, 0), state.horizon.get(partition, 0))
        piece = self._read(partition, start)
        if piece.end == piece.start:
            return None
        if self._reader is not None and piece.end - piece.start >= self.max_events:
            # A full slice: more is waiting. Decode the next one while this one computes.
            read = self._reader.submit(self._read_log, partition, piece.end, self.max_events)
            self._ahead = (partition, piece.end, read)
        # Step 2: compute and write the partials (durable, not yet listed).
        tables = self.engine.compute(kind, piece.events)
        part = self.store.write_partial(partition, piece.start, piece.end, tables)
        # Step 3: list them and move the position in one atomic commit.
        positions = {**state.positions, partition: piece.end}
        self._state = self.store.commit(
            replace(state, positions=positions, partials=(*state.partials, part))
        )
        # Step 4: the log-side hint, for status and retention.
        self._hint(partition, piece.end)
        self._settle()
        lag = self.log.end_offset(kind, partition) - piece.end
        fresh = None
        if piece.appended_us is not None:
            now_us = time.time_ns() // 1000
            fresh = ((now_us - piece.appended_us[0]) / 1e6, (now_us - piece.appended_us[1]) / 1e6)
        return SliceDone(partition, piece.start, piece.end, time.monotonic() - t0, lag, fresh)

    def drain(self, on_slice: Callable[[SliceDone], None] | None = None) -> int:
        """Apply the horizon, then process everything appended so far."""
        self.apply_horizon()
        total = 0
        for partition in self._partitions():
            while (done := self.step(partition)) is not None:
                total += done.events
                if on_slice is not None:
                    on_slice(done)
        self._commit_hints()
        return total

    def run(
        self,
        *,
        poll_s: float = 0.05,
        should_stop: Callable[[], bool] = lambda: False,
        on_slice: Callable[[SliceDone], None] | None = None,
        on_idle: Callable[[], None] | None = None,
    ) -> None:
        """Follow the log until ``should_stop()``."""
        while not should_stop():
            self.apply_horizon()
            busy = False
            for partition in self._partitions():
                done = self.step(partition)
                if done is not None:
                    busy = True
                    if on_slice is not None:
                        on_slice(done)
            if on_idle is not None:
                on_idle()
            if not busy:
                self._commit_hints(force=False)  # so that it is never a second stale
                time.sleep(poll_s)  # polling interval while caught up
        self._commit_hints()
