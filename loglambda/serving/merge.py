"""The serving layer's merge: batch view ⊕ speed partials, with the answer's freshness.

Which batch version: the one the speed layer's partials were cut against
(``SpeedState.batch_version``), not blindly ``CURRENT``. Right after a batch publish
the speed driver needs one loop to expire and re-cut its partials; until then the
previous version plus the old partials is the exact answer, while the new version plus
the old partials would count ``[old horizon, new horizon)`` twice. With no speed state
(the speed layer never ran) ``CURRENT`` alone is served and the freshness says how many
appended events it does not cover.

A result never silently misses data: the partials must be contiguous from the horizon
to the speed position (``SpeedState.check``), and the freshness reports, per log
partition, the horizon, the speed position, the log end and the events not yet
covered (``lag``). An incomplete store raises ``IncompleteData`` instead of answering short.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loglambda.batch.versions import VersionRecord, VersionStore
from loglambda.core.catalog import View, output_schema
from loglambda.core.eventlog import EventLog, partition_kind
from loglambda.speed.store import RealtimeStore, SpeedState, StoreError


class IncompleteData(RuntimeError):
    """The merged answer would miss or double count events; the message says which."""


class StaleSnapshot(IncompleteData):
    """The speed layer moved on while a snapshot was read: take a new one."""


@dataclass(frozen=True)
class Freshness:
    """What a merged answer covers. Per partition: batch horizon, speed position (the
    answer covers offsets below it), log end, and lag = events appended not covered."""

    batch_version: int | None
    horizon: dict[str, int]  # per log partition: the batch covers offsets below it
    positions: dict[str, int]
    log_end: dict[str, int] = field(default_factory=dict)
    lag: dict[str, int] = field(default_factory=dict)
    speed_generation: int = 0
    speed_updated_at: float | None = None
    as_of: float = 0.0
    notes: tuple[str, ...] = ()
    # The batch version's master manifest sequence (imports have no log offsets).
    master_seq: int | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class Snapshot:
    """One consistent read of batch + speed state, shared by every view of a query."""

    home: Path
    record: VersionRecord | None
    state: SpeedState
    freshness: Freshness


def snapshot(home: Path, log: EventLog | None = None) -> Snapshot:
    """Pick the batch version and speed state to serve, consistently."""
    versions = VersionStore(home)
    state = RealtimeStore(home).state()
    notes: list[str] = []
    try:
        state.check()
    except StoreError as err:
        raise IncompleteData(f"speed partials are not contiguous: {err}") from err
    current = versions.current()
    record = current
    if state.generation > 0 and state.batch_version != (current.version if current else None):
        kept = {r.version: r for r in versions.list()}
        if state.batch_version is None:
            record = None
        elif state.batch_version in kept:
            record = kept[state.batch_version]
        else:
            raise IncompleteData(
                f"the speed layer's partials were cut against batch version "
                f"{state.batch_version}, which is no longer kept; wait for `loglambda speed`"
            )
        notes.append(
            f"batch version {current.version if current else None} is published; the speed "
            f"layer has not applied it yet, serving version {state.batch_version}"
        )
    horizon = dict(record.horizon.offsets) if record else {}
    positions = {p: max(pos, horizon.get(p, 0)) for p, pos in state.positions.items()}
    for p, h in horizon.items():
        positions.setdefault(p, h)
    log_end: dict[str, int] = {}
    lag: dict[str, int] = {}
    if log is not None:
        for kind in ("traffic", "logs"):
            for partition in log.partitions(kind):  # type: ignore[arg-type]
                end = log.end_offset(partition_kind(partition), partition)
                log_end[partition] = end
                lag[partition] = end - positions.get(partition, 0)
    fresh = Freshness(
        batch_version=record.version if record else None,
        horizon=horizon,
        positions=positions,
        log_end=log_end,
        lag=lag,
        speed_generation=state.generation,
        speed_updated_at=state.updated_at or None,
        as_of=time.time(),
        notes=tuple(notes),
        master_seq=record.horizon.master_seq if record else None,
    )
    return Snapshot(home, record, state, fresh)


def merged_view(snap: Snapshot, view: View) -> pa.Table:
    """The rows of ``view`` over every event the snapshot covers, each once."""
    from loglambda.core.partials import merge_partials

    tables: list[pa.Table] = []
    if snap.record is not None and view.name in snap.record.views:
        paths = VersionStore(snap.home).paths(snap.record, view.name)
        # partitioning=None: the "v=<n>" directory is a version, not a column.
        tables += [
            pq.read_table(path, partitioning=None).cast(output_schema(view)) for path in paths
        ]
    store = RealtimeStore(snap.home)
    for partial in snap.state.partials:
        if partition_kind(partial.partition) != view.kind or view.name not in partial.views:
            continue
        try:
            tables.append(store.read(partial, view.name).cast(output_schema(view)))
        except FileNotFoundError as err:
            # The driver expired this partial after our snapshot was taken: the files
            # of that snapshot are gone, so the caller takes a new one and retries.
            raise StaleSnapshot(f"partial {partial.path} expired while reading") from err
    if not tables:
        return output_schema(view).empty_table()
    merged: pa.Table = merge_partials(view, tables)
    return merged
