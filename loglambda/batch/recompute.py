"""Recompute batch views from the master dataset and publish them as a new version.

This is the batch layer's whole job, and what makes human faults repairable: every
view is rebuilt from scratch from the immutable master dataset (no incremental state
to corrupt), written beside the served version, and published by one atomic pointer
swap (see ``versions``). A bad version is undone with ``rollback``.

The horizon is fixed by one manifest snapshot taken at the start: imports or log
slices committed while the run computes are not in this version (the next run, or
the speed layer, covers them). A run limited to some views (``views=[...]``) is a
repair, not a refresh: it recomputes those views at the *current version's* horizon
and carries the others over by reference, so every view of a version covers exactly
the same events. Advancing the horizon always recomputes every view.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Protocol

import pyarrow as pa

from loglambda.batch.master import MasterDataset, Snapshot
from loglambda.batch.versions import (
    Horizon,
    VersionError,
    VersionRecord,
    VersionStore,
    ViewVersion,
    check_view_name,
)
from loglambda.core.schemas import KINDS, Kind

ENGINES: Final[tuple[str, ...]] = ("duckdb",)


class ViewSpec(Protocol):
    """What recompute needs of a catalog view (``loglambda.core.catalog.View``)."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...


class ViewEngine(Protocol):
    """A batch engine: computes a view's rows from master Parquet files, from scratch,
    deterministically (same files in, same rows in the same order out). ``run_batch``
    calls ``compute`` once per view: progress per view, one view's rows in memory."""

    def compute(self, view: Any, files: list[Path]) -> pa.Table: ...

    def compute_all(
        self, views: Sequence[Any], files_by_kind: dict[Kind, list[Path]]
    ) -> dict[str, pa.Table]: ...


@dataclass(frozen=True)
class ViewProgress:
    """One view done: computed (``carried_from`` None) or carried over from a version."""

    name: str
    rows: int
    seconds: float
    carried_from: int | None = None


def make_engine(name: str) -> ViewEngine:
    """The engine called ``name`` (imported only when chosen)."""
    if name == "duckdb":
        from loglambda.batch.engine_duckdb import DuckDBEngine

        engine: ViewEngine = DuckDBEngine()
        return engine
    raise VersionError(f"unknown engine {name!r}; available: {', '.join(ENGINES)}")


def standard_catalog() -> Mapping[str, ViewSpec]:
    from loglambda.core.catalog import STANDARD_CATALOG

    catalog: Mapping[str, ViewSpec] = STANDARD_CATALOG
    return catalog


def run_batch(
    home: Path,
    engine: str | ViewEngine = "duckdb",
    views: Sequence[str] | None = None,
    keep: int = 5,
    *,
    on_progress: Callable[[ViewProgress], None] | None = None,
    on_note: Callable[[str], None] | None = None,
    catalog: Mapping[str, ViewSpec] | None = None,
) -> VersionRecord:
    """Recompute views over the master dataset, publish a new version, prune old ones.

    ``views`` limits the run to those views (a repair at the current horizon; see the
    module docstring); with no published version yet every view is computed.
    """
    progress = on_progress or (lambda _: None)
    note = on_note or (lambda _: None)
    catalog = standard_catalog() if catalog is None else catalog
    if keep < 1:
        raise VersionError(f"keep must be at least 1, got {keep}")
    for name in catalog:
        check_view_name(name)
    chosen = _check_names(views, catalog)
    runner = make_engine(engine) if isinstance(engine, str) else engine
    engine_name = engine if isinstance(engine, str) else _engine_name(engine)
    try:
        return _run(home, runner, engine_name, chosen, keep, catalog, progress, note)
    finally:
        close = getattr(runner, "close", None)
        if isinstance(engine, str) and callable(close):
            close()  # an engine we created (a DuckDB connection) ends with the run


def _run(
    home: Path,
    runner: ViewEngine,
    engine_name: str,
    chosen: set[str] | None,
    keep: int,
    catalog: Mapping[str, ViewSpec],
    progress: Callable[[ViewProgress], None],
    note: Callable[[str], None],
) -> VersionRecord:
    master = MasterDataset(home)
    store = VersionStore(home)
    started = time.monotonic()
    # Step 1: one run at a time changes the store (a second one fails fast).
    with store.lock():
        # Step 2: finish or discard interrupted imports, then fix the horizon.
        for message in master.recover():
            note(message)
        snapshot = master.snapshot()
        previous = store.current()
        carried: dict[str, ViewVersion] = {}
        if chosen is not None and previous is not None:
            snapshot = _pin(snapshot, previous)
            carried = {
                n: previous.views[n] for n in catalog if n not in chosen and n in previous.views
            }
            for name in catalog:
                if name not in chosen and name not in carried:
                    note(f"{name}: not in version {previous.version}, computing it too")
        elif chosen is not None:
            note("no published version yet: computing every view")
        horizon = horizon_of(snapshot)
        files_by_kind: dict[Kind, list[Path]] = {k: snapshot.files(k) for k in KINDS}
        # Step 3: a new number and a clean temp directory (a crashed run's leftovers go).
        pending = store.begin()
        for message in pending.cleaned:
            note(message)
        # Step 4: compute each view from scratch and write it, fsynced, under _tmp. If
        # anything fails, CURRENT is untouched and the next run removes the partial
        # output (keeping it until then means its version number is never reused).
        for name, view in catalog.items():
            if name in carried:
                continue
            t0 = time.monotonic()
            table = runner.compute(view, files_by_kind[_kind(view)])
            seconds = time.monotonic() - t0
            entry = pending.write_view(name, table, round(seconds, 3))
            progress(ViewProgress(name, entry.rows, seconds))
        # Step 5: unchanged views are referenced, not copied or recomputed.
        for name, entry in carried.items():
            pending.carry_over(name, entry)
            progress(ViewProgress(name, entry.rows, 0.0, carried_from=entry.built_in))
        pending.views = {n: pending.views[n] for n in catalog if n in pending.views}
        # Step 6: publish: move into place, write the record, swap CURRENT.
        record = store.publish(
            pending,
            horizon=horizon,
            engine=engine_name,
            duration_s=time.monotonic() - started,
        )
        # Step 7: retention; never the version just published (it is CURRENT).
        for number in store.prune(keep):
            note(f"pruned version {number} (keeping the newest {keep})")
    return record


def horizon_of(snapshot: Snapshot) -> Horizon:
    """The horizon of a master snapshot.

    Imports carry no event-log position; only ``master_seq`` says what they cover.
    Batches written by the streaming master writer must record their slice of the
    event log in the manifest entry's origin, with this shape::

        {"type": "log", "partition": "traffic/0", "from": a, "to": b}

    meaning the batch holds exactly the events with ``a <= offset < b`` of that
    partition ("to" is exclusive, like the horizon). Per partition the horizon is the
    end of the contiguous run of ranges from the first one; re-committed (overlapping)
    ranges are fine. A gap cannot be expressed as "offset < H", so it is an error.
    """
    ranges: dict[str, list[tuple[int, int]]] = {}
    for entry in snapshot.entries:
        origin = entry.origin
        if origin.get("type") != "log":
            continue
        start, end = int(origin["from"]), int(origin["to"])
        ranges.setdefault(str(origin["partition"]), []).append((start, end))
    offsets: dict[str, int] = {}
    for partition, spans in ranges.items():
        spans.sort()
        reach = spans[0][1]
        for start, end in spans[1:]:
            if start > reach:
                raise VersionError(
                    f"master dataset has a gap in log partition {partition}: offsets "
                    f"[{reach}, {start}) are missing; the horizon cannot be expressed"
                )
            reach = max(reach, end)
        offsets[partition] = reach
    return Horizon(snapshot.seq, offsets)


def _check_names(views: Sequence[str] | None, catalog: Mapping[str, ViewSpec]) -> set[str] | None:
    if views is None:
        return None
    chosen = {v.strip() for v in views if v.strip()}
    unknown = sorted(chosen - set(catalog))
    if unknown:
        raise VersionError(
            f"unknown view(s) {', '.join(unknown)}; the catalog has: {', '.join(catalog)}"
        )
    return chosen or None


def _pin(snapshot: Snapshot, previous: VersionRecord) -> Snapshot:
    """The master as of the previous version's horizon (the master is append-only)."""
    seq = previous.horizon.master_seq
    if seq > snapshot.seq:
        raise VersionError(
            f"version {previous.version} covers master seq {seq} but the master dataset "
            f"ends at seq {snapshot.seq}"
        )
    return Snapshot(snapshot.root, seq, tuple(e for e in snapshot.entries if e.seq <= seq))


def _kind(view: ViewSpec) -> Kind:
    kind = view.kind
    if kind not in KINDS:
        raise VersionError(f"view {view.name!r} reads unknown record kind {kind!r}")
    return kind


def _engine_name(engine: ViewEngine) -> str:
    name = getattr(engine, "name", None)
    return name if isinstance(name, str) else type(engine).__name__
