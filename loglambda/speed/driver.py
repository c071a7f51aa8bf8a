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
position "speed" is a hint for ``status`` and retention, committed after ``STATE``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final, Protocol

import pyarrow as pa

from loglambda.batch.versions import VersionStore
from loglambda.core.eventlog import EventLog, partition_kind
from loglambda.core.schemas import KINDS, Kind
from loglambda.speed.store import Partial, RealtimeStore, SpeedState

CONSUMER: Final = "speed"
DEFAULT_MAX_EVENTS: Final = 250_000


class PartialEngine(Protocol):
    """Computes every view's partial rows over one slice of events of a kind."""

    def compute(self, kind: Kind, events: pa.Table) -> dict[str, pa.Table]: ...


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
        self._state: SpeedState | None = None

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
            yield self
        finally:
            self._state = None
            os.close(fd)

    def _partitions(self) -> list[str]:
        return [p for kind in KINDS for p in self.log.partitions(kind)]

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
        piece = self.log.read(kind, partition, start, end - start)
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
        piece = self.log.read(kind, partition, start, self.max_events)
        if piece.end == piece.start:
            return None
        # Step 2: compute and write the partials (durable, not yet listed).
        tables = self.engine.compute(kind, piece.events)
        part = self.store.write_partial(partition, piece.start, piece.end, tables)
        # Step 3: list them and move the position in one atomic commit.
        positions = {**state.positions, partition: piece.end}
        self._state = self.store.commit(
            replace(state, positions=positions, partials=(*state.partials, part))
        )
        # Step 4: the log-side hint, for status and retention.
        self.log.commit(self.consumer, partition, piece.end)
        lag = self.log.end_offset(kind, partition) - piece.end
        return SliceDone(partition, piece.start, piece.end, time.monotonic() - t0, lag)

    def drain(self, on_slice: Callable[[SliceDone], None] | None = None) -> int:
        """Apply the horizon, then process everything appended so far."""
        self.apply_horizon()
        total = 0
        for partition in self._partitions():
            while (done := self.step(partition)) is not None:
                total += done.events
                if on_slice is not None:
                    on_slice(done)
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
                time.sleep(poll_s)  # polling interval while caught up
