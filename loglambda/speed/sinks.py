"""Idempotent upsert sinks for the panes of the streaming speed layer.

A pane is the whole current value of one view's window on one shard (panes accumulate),
so a sink keyed by (view, window_start, shard) replaces the previous pane: replays and
retries write the same value again, and a pane with a lower index than the stored one
(a retried, older write arriving late) is ignored. Readers merge a view's stored panes
with ``core.partials.merge_partials`` (shards of one window overlap in dimensions).

Two implementations: ``MemorySink`` (tests; process-local, found by name so that a
pickled DoFn writes where the test reads) and ``DirectorySink`` (one Parquet file per
key on a filesystem every worker shares, replaced atomically).
"""

# Beam's public API ships type hints but many of its functions are unannotated; calling
# them is the point of this module, so only that check is relaxed (defs stay strict).
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import threading
import zlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final, Protocol, runtime_checkable

import apache_beam as beam
import orjson
import pyarrow as pa
import pyarrow.parquet as pq
from apache_beam.pvalue import PCollection

from loglambda.core.catalog import View
from loglambda.core.durable import write_atomic
from loglambda.core.partials import merge_partials, partial_schema

PANE_INDEX_KEY: Final = b"loglambda.pane_index"


@dataclass(frozen=True)
class Pane:
    """One fired pane: a view's rows for one window (and shard), in ``output_schema``."""

    view: str
    window_start: int  # epoch µs
    shard: int
    index: int  # 0, 1, 2... per (view, window, shard): later panes replace earlier ones
    timing: str  # EARLY, ON_TIME, LATE (Beam's pane timing)
    is_last: bool
    rows: pa.Table

    @property
    def key(self) -> tuple[str, int, int]:
        return self.view, self.window_start, self.shard


@runtime_checkable
class PartialSink(Protocol):
    """Where the streaming form writes: upserts of panes, and rejected events."""

    def upsert(self, pane: Pane) -> None:
        """Store ``pane`` under its key unless a pane with a higher index is stored."""
        ...

    def reject(self, reason: str, event: Mapping[str, Any]) -> None:
        """Keep an event the views could not take (too late, malformed), with why."""
        ...


_MEMORY: dict[str, MemoryStore] = {}
_MEMORY_LOCK = threading.Lock()


@dataclass
class MemoryStore:
    panes: dict[tuple[str, int, int], Pane]
    history: list[Pane]  # every upsert in arrival order, stale ones included
    rejected: list[tuple[str, dict[str, Any]]]


class MemorySink:
    """A process-local sink, shared by every copy with the same ``name`` (tests)."""

    def __init__(self, name: str) -> None:
        self.name = name
        with _MEMORY_LOCK:
            _MEMORY.setdefault(name, MemoryStore({}, [], []))

    @property
    def store(self) -> MemoryStore:
        return _MEMORY[self.name]

    def upsert(self, pane: Pane) -> None:
        with _MEMORY_LOCK:
            store = self.store
            store.history.append(pane)
            stored = store.panes.get(pane.key)
            if stored is None or stored.index <= pane.index:
                store.panes[pane.key] = pane

    def reject(self, reason: str, event: Mapping[str, Any]) -> None:
        with _MEMORY_LOCK:
            self.store.rejected.append((reason, dict(event)))

    def table(self, view: View) -> pa.Table:
        """The view's rows: every stored pane of it, merged."""
        return merge_partials(
            view, [p.rows for k, p in self.store.panes.items() if k[0] == view.name]
        )

    def clear(self) -> None:
        with _MEMORY_LOCK:
            _MEMORY[self.name] = MemoryStore({}, [], [])


class DirectorySink:
    """Panes as ``<root>/<view>/<window_start>-<shard>.parquet`` (pane index in the file's
    metadata), replaced atomically; rejected events as one JSON file each under
    ``<root>/_rejected/<reason>/``, named by a hash of the event (a replay overwrites)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, key: tuple[str, int, int]) -> Path:
        view, start, shard = key
        stamp = datetime.fromtimestamp(start / 1e6, UTC).strftime("%Y%m%dT%H%M%SZ")
        return self.root / view / f"{stamp}-{shard}.parquet"

    def upsert(self, pane: Pane) -> None:
        path = self.path(pane.key)
        if path.exists():
            stored = pq.read_schema(path).metadata or {}
            if int(stored.get(PANE_INDEX_KEY, b"-1")) > pane.index:
                return
        meta = {**(pane.rows.schema.metadata or {}), PANE_INDEX_KEY: str(pane.index).encode()}
        sink = pa.BufferOutputStream()
        pq.write_table(pane.rows.replace_schema_metadata(meta), sink, compression="zstd")
        write_atomic(path, sink.getvalue().to_pybytes(), overwrite=True)

    def reject(self, reason: str, event: Mapping[str, Any]) -> None:
        data = orjson.dumps(dict(event), option=orjson.OPT_SORT_KEYS, default=str)
        name = f"{zlib.crc32(data):08x}-{len(data)}.json"
        write_atomic(self.root / "_rejected" / reason / name, data, overwrite=True)

    def table(self, view: View) -> pa.Table:
        files = sorted((self.root / view.name).glob("*.parquet"))
        schema = partial_schema(view)
        tables = [pq.read_table(f).replace_schema_metadata(None).cast(schema) for f in files]
        return merge_partials(view, tables)


class _Upsert(beam.DoFn):
    def __init__(self, sink: PartialSink) -> None:
        self.sink = sink

    def process(self, pane: Pane) -> None:
        self.sink.upsert(pane)


class _Reject(beam.DoFn):
    def __init__(self, sink: PartialSink, reason: str) -> None:
        self.sink, self.reason = sink, reason

    def process(self, element: tuple[tuple[str, int], Mapping[str, Any]]) -> None:
        (group, _), event = element
        self.sink.reject(f"{self.reason}-{group.replace('/', '-')}", event)


class WriteToSink(beam.PTransform[Any, Any]):
    """Write the ``StreamingViews`` outputs: panes upserted, too-late events rejected."""

    def __init__(self, sink: PartialSink) -> None:
        super().__init__()
        self.sink = sink

    def expand(self, outputs: Mapping[str, PCollection[Any]]) -> Any:
        upserts = outputs["panes"] | "Upsert panes" >> beam.ParDo(_Upsert(self.sink))
        rejects = outputs["too_late"] | "Reject too late" >> beam.ParDo(
            _Reject(self.sink, "too_late")
        )
        return upserts, rejects


def stored_views(sink: MemorySink | DirectorySink, views: Iterable[View]) -> dict[str, pa.Table]:
    """Every view's rows as the sink holds them now."""
    return {v.name: sink.table(v) for v in views}
