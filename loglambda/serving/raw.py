"""The raw tables ``traffic`` and ``logs``: the master dataset plus the log's tail.

Which offsets the master holds is read from its manifest (the ``{"type": "log",
"from": a, "to": b}`` origins), not from the master writer's commit, so no event is both
in the master and read from the log; what neither holds any more is an error
(``IncompleteData``), never a short answer.

Two caches make a repeated question cheap without changing what it reads:

- the log tail (the offsets no manifest entry covers) is decoded once and then only
  extended by what was appended since: offsets are immutable, so the events of
  ``[a, b)`` never change; a new master write moves ``a`` and starts over;
- with a time window (``QueryEngine.run``'s promise that the statement reads only
  events inside it), the master files whose time range meets the window are read whole
  into memory once, keyed by their identity (path, inode, mtime, size; master files
  are immutable), up to ``LOGLAMBDA_RAW_CACHE_MB`` (default 512, least recently used
  evicted). A window whose files do not fit is scanned lazily from disk as before.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
import pyarrow.parquet as pq

from loglambda.batch.master import MasterDataset
from loglambda.core.eventlog import EventLog, OffsetOutOfRange
from loglambda.core.schemas import Kind, schema_for
from loglambda.serving.merge import IncompleteData

__all__ = ["RawCoverage", "raw_tables"]

_READ_CHUNK: Final = 200_000
_TAIL_MAX_ROWS: Final = 2_000_000  # a longer tail is read per query, not kept
_TAIL_SLOTS: Final = 16
# [start, end) in µs since the epoch.
Micros = tuple[int, int]
FileKey = tuple[str, int, int, int]


@dataclass(frozen=True)
class RawCoverage:
    """What the raw tables held: the master as of ``master_seq`` (per partition it holds
    the log offsets below ``master_offsets``) plus the ``tail`` ranges read from the
    log, which ended at ``log_end`` when read."""

    master_seq: int
    master_offsets: dict[str, int]
    tail: dict[str, list[tuple[int, int]]]
    log_end: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def raw_tables(
    home: Path, log: EventLog, kinds: list[Kind], window: Micros | None = None
) -> tuple[dict[str, ds.Dataset | pa.Table], RawCoverage]:
    """Raw events per kind: master files ∪ the log offsets no manifest entry covers,
    each event exactly once. With a ``window``, only master files whose time range
    meets it and tail events inside it."""
    master = MasterDataset(home).snapshot()
    covered: dict[str, list[tuple[int, int]]] = {}
    for entry in master.entries:
        if entry.origin.get("type") == "log":
            span = (int(entry.origin["from"]), int(entry.origin["to"]))
            covered.setdefault(str(entry.origin["partition"]), []).append(span)
    tables: dict[str, ds.Dataset | pa.Table] = {}
    tail: dict[str, list[tuple[int, int]]] = {}
    log_end: dict[str, int] = {}
    reach: dict[str, int] = {}
    for kind in kinds:
        schema = schema_for(kind)
        # In memory (cached files, the tail) they stay a table: DuckDB scans a table
        # ~5x faster than the same rows as an in-memory pyarrow dataset.
        memory: list[pa.Table] = []
        lazy: ds.Dataset | None = None
        files = [
            (master.root / f.path, f.rows)
            for entry in master.entries
            for f in entry.files
            if f.kind == kind
            and (window is None or (f.max_ts_us >= window[0] and f.min_ts_us < window[1]))
        ]
        cached = FILES.tables(files, schema) if window is not None and files else None
        if cached is not None:
            memory.append(cached)
        elif files:
            lazy = ds.dataset([str(p) for p, _ in files], format="parquet", schema=schema)
        for partition in log.partitions(kind):
            end = log_end[partition] = log.end_offset(kind, partition)
            gaps = _gaps(covered.get(partition, []), end)
            reach[partition] = gaps[0][0] if gaps else end
            tail[partition] = gaps
            for a, b in gaps:
                events = TAIL.read(home, log, kind, partition, a, b).cast(schema)
                if window is not None:
                    micros = pc.cast(events.column("ts"), pa.int64())
                    inside = pc.and_(
                        pc.greater_equal(micros, window[0]), pc.less(micros, window[1])
                    )
                    events = events.filter(inside)
                memory.append(events)
        if lazy is None:
            tables[kind] = pa.concat_tables(memory) if memory else schema.empty_table()
        else:
            tables[kind] = ds.dataset([lazy, *(ds.dataset(t) for t in memory)])
    return tables, RawCoverage(master.seq, reach, tail, log_end)


def _gaps(spans: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """The parts of ``[0, end)`` no span covers, in order."""
    gaps, at = [], 0
    for a, b in sorted(spans):
        if a > at:
            gaps.append((at, min(a, end)))
        at = max(at, b)
    if at < end:
        gaps.append((at, end))
    return [(a, b) for a, b in gaps if a < b]


def _read_range(log: EventLog, kind: Kind, partition: str, start: int, end: int) -> pa.Table:
    pieces, at = [], start
    while at < end:
        try:
            piece = log.read(kind, partition, at, min(_READ_CHUNK, end - at))
        except OffsetOutOfRange as err:
            raise IncompleteData(
                f"{partition}: events [{at}, {end}) are neither in the master dataset nor "
                f"in the event log any more ({err})"
            ) from err
        if piece.end <= at:
            raise IncompleteData(f"{partition}: the event log ends at {at}, expected {end}")
        pieces.append(piece.events)
        at = piece.end
    return pa.concat_tables(pieces) if pieces else schema_for(kind).empty_table()


class _TailCache:
    """Per (home, partition): the decoded events of the last tail range read."""

    def __init__(self) -> None:
        self._slots: OrderedDict[tuple[str, str], tuple[int, int, pa.Table]] = OrderedDict()
        self._lock = threading.Lock()

    def read(
        self, home: Path, log: EventLog, kind: Kind, partition: str, a: int, b: int
    ) -> pa.Table:
        key = (str(home), partition)
        with self._lock:
            slot = self._slots.get(key)
        if slot is not None and slot[0] == a and slot[1] <= b:
            table = slot[2]
            if slot[1] < b:
                table = pa.concat_tables([table, _read_range(log, kind, partition, slot[1], b)])
        else:
            table = _read_range(log, kind, partition, a, b)
        with self._lock:
            if table.num_rows <= _TAIL_MAX_ROWS:
                self._slots[key] = (a, b, table)
                self._slots.move_to_end(key)
                while len(self._slots) > _TAIL_SLOTS:
                    self._slots.popitem(last=False)
            else:
                self._slots.pop(key, None)
        return table


class _FileCache:
    """Master files read whole, kept by identity, least recently used evicted."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._tables: OrderedDict[FileKey, pa.Table] = OrderedDict()
        self._bytes = 0
        self._row_bytes = 512.0  # learnt from the files read, to guess before reading
        self._lock = threading.Lock()

    def tables(self, files: list[tuple[Path, int]], schema: pa.Schema) -> pa.Table | None:
        """The files' rows in memory, or None when they would not fit."""
        if sum(rows for _, rows in files) * self._row_bytes > self.max_bytes / 2:
            return None
        out = []
        for path, _ in files:
            st = path.stat()
            key = (str(path), st.st_ino, st.st_mtime_ns, st.st_size)
            with self._lock:
                table = self._tables.get(key)
                if table is not None:
                    self._tables.move_to_end(key)
            if table is None:
                table = pq.read_table(path, schema=schema, partitioning=None)
                self._keep(key, table)
            out.append(table)
        return pa.concat_tables(out)

    def _keep(self, key: FileKey, table: pa.Table) -> None:
        with self._lock:
            if key not in self._tables:
                self._tables[key] = table
                self._bytes += table.nbytes
                if table.num_rows:
                    self._row_bytes = 0.9 * self._row_bytes + 0.1 * table.nbytes / table.num_rows
            while self._bytes > self.max_bytes and len(self._tables) > 1:
                _, old = self._tables.popitem(last=False)
                self._bytes -= old.nbytes


def _budget() -> int:
    try:
        return int(float(os.environ.get("LOGLAMBDA_RAW_CACHE_MB", "512")) * 2**20)
    except ValueError:
        return 512 * 2**20


TAIL: Final = _TailCache()
FILES: Final = _FileCache(_budget())
