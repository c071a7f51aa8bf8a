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

import dataclasses
import functools
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loglambda.batch.versions import VersionRecord, VersionStore
from loglambda.core.catalog import WINDOW_COLUMN, View, output_schema
from loglambda.core.eventlog import EventLog, partition_kind
from loglambda.core.partials import merge_partials
from loglambda.serving.cache import CACHE, file_identity
from loglambda.speed.store import Partial, RealtimeStore, SpeedState, StoreError


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
    """The rows of ``view`` over every event the snapshot covers, each once, sorted by
    the view's key columns (window first).

    Served from ``serving.cache``: the batch table and the partials are read once per
    process and merged incrementally; the cache keys are this snapshot's own files and
    partials, so the answer is exactly the snapshot's (see that module)."""
    return _merged(snap, view, view)


@dataclass(frozen=True)
class Rollup:
    """What a statement groups a view's rows by (see ``rolled_up_view``): the window, or
    buckets of ``step_s`` seconds counted from the epoch, and the dimensions ``keep``."""

    keep: tuple[str, ...] = ()
    step_s: int | None = None


_GRAIN_S: Final = {"minute": 60, "hour": 3600, "day": 86_400}


def rolled_up_view(snap: Snapshot, view: View, rollup: Rollup) -> pa.Table:
    """``merged_view`` merged over every dimension not in ``rollup.keep`` and, with a
    ``step_s`` coarser than the view's grain, over the windows of each step (the
    window start becomes the step's start): one row per step and kept dimensions, the
    other dimensions NULL, in the view's schema.

    Why: a dashboard series over a month of ``traffic_hour`` merges 3.4M histogram
    entries of 632k rows per question (~1 s here), while its answer needs one row per
    point. Every measure is a monoid, so a statement that groups only by those steps
    (its time range aligned to them) and the kept dimensions, and aggregates each
    measure with its own merge (``sum`` of counts and sums, ``min``/``max``,
    ``merged_quantile``/``histogram_merge``, ``unique_count``/``hll_merge``), answers
    exactly alike from these rows. Anything else (``count(*)``, ``avg(requests)``, a
    filter on another dimension) would not, so only callers that know their statement
    use it (``QueryEngine.run``'s ``rollup``). Cached like the view itself, per
    snapshot and rollup."""
    kept = tuple(d for d in view.dimensions if d.name in rollup.keep)
    grain_s = _GRAIN_S.get(view.grain or "", 0)
    step = rollup.step_s if rollup.step_s and grain_s and rollup.step_s > grain_s else None
    if step is not None and step % grain_s:
        raise ValueError(f"a step of {step} s does not tile {view.name}'s {view.grain}s")
    if len(kept) == len(view.dimensions) and step is None:
        return merged_view(snap, view)
    table = _merged(snap, view, dataclasses.replace(view, dimensions=kept), step)
    schema = output_schema(view)
    columns = [
        table.column(f.name) if f.name in table.column_names else pa.nulls(len(table), f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _merged(snap: Snapshot, source: View, view: View, step_s: int | None = None) -> pa.Table:
    """``view``'s rows from the files and partials of ``source`` (the same view, or
    ``source`` with fewer dimensions and/or windows of ``step_s``, whose rows are
    merged to fit)."""
    batch_key: tuple[Any, ...] | None = None
    paths: list[Path] = []
    if snap.record is not None and source.name in snap.record.views:
        paths = VersionStore(snap.home).paths(snap.record, source.name)
        batch_key = (snap.record.version, snap.record.created_at)
        batch_key += tuple(file_identity(p) for p in paths)
    schema = output_schema(view)
    fit = functools.partial(_fit, view, schema, step_s, view != source or bool(step_s))

    def load_batch() -> pa.Table:
        # partitioning=None: the "v=<n>" directory is a version, not a column.
        tables = [pq.read_table(p, columns=schema.names, partitioning=None) for p in paths]
        return fit(pa.concat_tables(tables) if tables else schema.empty_table())

    store = RealtimeStore(snap.home)
    partials = [
        (_partial_key(p), functools.partial(_read_partial, store, p, source.name, fit))
        for p in sorted(snap.state.partials, key=lambda p: (p.partition, p.start))
        if partition_kind(p.partition) == source.kind and source.name in p.views
    ]
    return CACHE.merged(snap.home, view, batch_key, load_batch, partials, variant=step_s)


def _fit(
    view: View, schema: pa.Schema, step_s: int | None, merge: bool, table: pa.Table
) -> pa.Table:
    """Rows of the source view as ``view``'s: its columns, window starts moved to the
    start of their step, and (``merge``) rows of equal keys merged."""
    table = table.select(schema.names).cast(schema)
    if not merge:
        return table
    if step_s:
        micros = np.asarray(table.column(WINDOW_COLUMN).combine_chunks().to_numpy(False))
        micros = micros.view(np.int64)
        start = micros - micros % (step_s * 1_000_000)  # floors, also before 1970
        window = pa.array(start, pa.int64()).cast(schema.field(WINDOW_COLUMN).type)
        table = table.set_column(0, schema.field(WINDOW_COLUMN), window)
    merged: pa.Table = merge_partials(view, [table])
    return merged


def _partial_key(partial: Partial) -> tuple[Any, ...]:
    # The files of a listed partial never change: its directory is named from its range
    # and replaced only before it is listed; durable_at tells a rewrite apart anyway.
    return (partial.partition, partial.start, partial.end, partial.path, partial.durable_at)


def _read_partial(
    store: RealtimeStore, partial: Partial, name: str, fit: Callable[[pa.Table], pa.Table]
) -> pa.Table:
    try:
        table = store.read(partial, name)
    except FileNotFoundError as err:
        # The driver expired this partial after our snapshot was taken: the files
        # of that snapshot are gone, so the caller takes a new one and retries.
        raise StaleSnapshot(f"partial {partial.path} expired while reading") from err
    return fit(table)
