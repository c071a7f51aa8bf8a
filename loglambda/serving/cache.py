"""Merged views kept in memory between queries, keyed by exactly what they cover.

Why: a merged view is the batch version's rows ⊕ the speed partials' rows. Reading and
re-merging both on every query cost seconds at a month of history (8M events: 4.9M
``traffic_minute`` rows, 1.5 s to read and ~10 s to re-sort and merge), while the
inputs hardly change: a batch version's files are immutable, and so is a speed partial
(its files are named from its offset range and listed in ``realtime/STATE`` only once
durable). Only the *set* of inputs changes, and mostly by one partial at a time.

So per (data home, view) the cache keeps one slot:

- the batch table, keyed by the version and its files' identity (path, inode, mtime,
  size: a data home deleted and rebuilt at the same path is a different key);
- the speed part (every partial merged), keyed by the partials' identities
  (partition, offset range, path, commit time);
- the merged table for that (batch key, speed key) pair.

**Never stale.** The keys come from the snapshot the query itself took (``merge.snapshot``
reads ``views/CURRENT`` and ``realtime/STATE`` on every query), so a speed commit or a
batch publish is a different key on the very next query; nothing is invalidated by
time or by guessing, and the freshness a query reports is that snapshot's.

**Cheap updates.** Every table here is sorted by the view's key columns, window first
(the batch engine's and ``merge_partials``' order). A new partial only touches the
windows it holds, so ``splice`` merges the rows of those windows (the cached rows of the
same windows ⊕ the partial) and reuses every other row by zero-copy slices. A new speed
commit costs what its partial holds, not what the view holds. The result equals
``merge_partials`` over all inputs row for row; HLL sketches of keys merged in several
steps are unions of unions, whose bytes may differ from a one-step union's while their
registers, and so every estimate, are equal (``core.partials``, ``core.sketches.hll``).

**Bounded.** Slots are evicted least recently used beyond ``max_bytes`` (approximate:
batch table + twice the speed part, since merged tables share the batch table's
buffers) and beyond ``MAX_SLOTS``; ``LOGLAMBDA_VIEW_CACHE_MB`` sets the budget (default
2048, 0 turns caching off). A slot whose batch table alone exceeds the budget is still
used for the query that built it, then dropped.
"""

from __future__ import annotations

import functools
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa

from loglambda.core.catalog import WINDOW_COLUMN, View, output_schema
from loglambda.core.partials import merge_partials

__all__ = ["MAX_SLOTS", "Part", "ViewCache", "file_identity", "splice", "window_slice"]

MAX_SLOTS: Final = 64
# Splicing leaves the merged table in slices; past this many chunks it is rebuilt in
# one piece from the batch table and the (compacted) speed part.
MAX_CHUNKS: Final = 2048
# A merged table under COMPACT_BYTES in more chunks than this is made one chunk.
SMALL_MAX_CHUNKS: Final = 64
COMPACT_BYTES: Final = 64 * 2**20
# Speed commits kept as deltas before they are folded into the speed part.
MAX_PENDING: Final = 64
Ints = np.ndarray[Any, np.dtype[np.int64]]


def file_identity(path: Path) -> tuple[str, int, int, int]:
    st = path.stat()
    return (str(path), st.st_ino, st.st_mtime_ns, st.st_size)


def _micros(chunk: pa.Array) -> Ints:
    """A timestamp[us] chunk as int64 µs (zero-copy: window starts are never NULL)."""
    return np.asarray(chunk.to_numpy(zero_copy_only=False)).view(np.int64)


def _starts(table: pa.Table) -> Ints:
    """Each row's window start in µs (int64)."""
    chunks = table.column(WINDOW_COLUMN).chunks
    return np.concatenate([_micros(c) for c in chunks]) if chunks else np.empty(0, np.int64)


@dataclass(frozen=True)
class Part:
    """A table sorted by its view's key columns, with its rows' window starts."""

    table: pa.Table
    starts: Ints | None  # None: the view has no window column

    @staticmethod
    def of(view: View, table: pa.Table) -> Part:
        """``table`` as a Part, sorted by key if it is not sorted by window already."""
        if not view.grain:
            return Part(table, None)
        starts = _starts(table)
        if len(starts) > 1 and not bool(np.all(starts[1:] >= starts[:-1])):
            table = merge_partials(view, [table])  # sorts by the key columns
            starts = _starts(table)
        return Part(table, starts)

    @functools.cached_property
    def nbytes(self) -> int:
        return int(self.table.nbytes) + (0 if self.starts is None else int(self.starts.nbytes))


def splice(view: View, base: Part, extra: pa.Table) -> Part:
    """``base ⊕ extra``: rows of the windows ``extra`` holds are merged, the others
    are slices of ``base``. Both must be sorted by key (``extra`` as merge_partials
    leaves it); the result is too."""
    if extra.num_rows == 0:
        return base
    if base.table.num_rows == 0 or base.starts is None:
        return Part.of(view, merge_partials(view, [base.table, extra]))
    wins = np.unique(_starts(extra))
    lo = np.searchsorted(base.starts, wins, side="left")
    hi = np.searchsorted(base.starts, wins, side="right")
    # Slices, not take(): taking rows of a table in many chunks concatenates them all.
    overlap = [
        base.table.slice(a, b - a) for a, b in zip(lo.tolist(), hi.tolist(), strict=True) if b > a
    ]
    merged = merge_partials(view, [*overlap, extra])
    m_starts = _starts(merged)
    m_lo = np.searchsorted(m_starts, wins, side="left")
    m_hi = np.searchsorted(m_starts, wins, side="right")
    tables: list[pa.Table] = []
    starts: list[Ints] = []
    at = 0

    def take(table: pa.Table, rows: Ints, a: int, b: int) -> None:
        if b > a:
            tables.append(table.slice(a, b - a))
            starts.append(rows[a:b])

    for i in range(len(wins)):
        take(base.table, base.starts, at, int(lo[i]))
        take(merged, m_starts, int(m_lo[i]), int(m_hi[i]))
        at = int(hi[i])
    take(base.table, base.starts, at, base.table.num_rows)
    schema = output_schema(view)
    table = pa.concat_tables(tables) if tables else schema.empty_table()
    return Part(table, np.concatenate(starts) if starts else np.empty(0, dtype=np.int64))


def window_slice(table: pa.Table, start_us: int, end_us: int) -> pa.Table:
    """The rows whose window starts in ``[start_us, end_us)``, by binary search: the
    table must be sorted by window start (every merged view is)."""
    col = table.column(WINDOW_COLUMN)
    offset, first, last = 0, None, None
    for chunk in col.chunks:
        values = _micros(chunk)
        if first is None and (len(values) and values[-1] >= start_us):
            first = offset + int(np.searchsorted(values, start_us, side="left"))
        if len(values) and values[-1] >= end_us:
            last = offset + int(np.searchsorted(values, end_us, side="left"))
            break
        offset += len(values)
    first = table.num_rows if first is None else first
    last = table.num_rows if last is None else last
    return table.slice(first, max(0, last - first))


Key = tuple[Any, ...]


@dataclass
class _Slot:
    batch_key: Key | None = None
    batch: Part | None = None
    speed_ids: frozenset[Key] = frozenset()
    speed: Part | None = None
    # Deltas of speed commits not folded into ``speed`` yet: only a rebuild of the
    # merged table needs the speed part, so a commit costs one splice, not two.
    pending: list[pa.Table] = field(default_factory=list)
    merged_key: tuple[Key | None, frozenset[Key]] | None = None
    merged: Part | None = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @property
    def nbytes(self) -> int:
        speed = self.speed.nbytes if self.speed else 0
        speed += sum(int(t.nbytes) for t in self.pending)
        return (self.batch.nbytes if self.batch else 0) + 2 * speed


def _chunks(part: Part) -> int:
    return max((c.num_chunks for c in part.table.columns), default=0)


class ViewCache:
    """Per (home, view): the batch table, the speed part and their merge (module doc)."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._slots: OrderedDict[Key, _Slot] = OrderedDict()
        self._lock = threading.Lock()

    def merged(
        self,
        home: Path,
        view: View,
        batch_key: Key | None,
        load_batch: Callable[[], pa.Table],
        partials: Sequence[tuple[Key, Callable[[], pa.Table]]],
        variant: Any = None,
    ) -> pa.Table:
        """The merged rows: batch (``load_batch`` when ``batch_key`` is not cached;
        ``None`` = no batch rows) ⊕ every partial (each read at most once). ``variant``
        tells apart tables of one view the loaders shape differently (a rollup step)."""
        ids = frozenset(k for k, _ in partials)
        if self.max_bytes <= 0:
            return self._build(view, _Slot(), batch_key, load_batch, partials, ids).table
        slot_key = (str(home), view, variant)
        with self._lock:
            slot = self._slots.get(slot_key) or _Slot()
            self._slots[slot_key] = slot
            self._slots.move_to_end(slot_key)
        with slot.lock:
            if slot.merged is not None and slot.merged_key == (batch_key, ids):
                return slot.merged.table
            merged = self._build(view, slot, batch_key, load_batch, partials, ids)
        self._evict(keep=slot_key)
        return merged.table

    def _build(
        self,
        view: View,
        slot: _Slot,
        batch_key: Key | None,
        load_batch: Callable[[], pa.Table],
        partials: Sequence[tuple[Key, Callable[[], pa.Table]]],
        ids: frozenset[Key],
    ) -> Part:
        if slot.batch is None or slot.batch_key != batch_key:
            table = load_batch() if batch_key is not None else output_schema(view).empty_table()
            slot.batch, slot.batch_key, slot.merged, slot.merged_key = (
                Part.of(view, table),
                batch_key,
                None,
                None,
            )
        batch = slot.batch
        assert batch is not None
        grows = slot.speed is not None and slot.speed_ids <= ids
        new = [read for k, read in partials if not grows or k not in slot.speed_ids]
        delta = merge_partials(view, [read() for read in new]) if new else None
        if not grows:
            empty = output_schema(view).empty_table()
            slot.speed, slot.pending = Part.of(view, delta if delta is not None else empty), []
        elif delta is not None:
            slot.pending.append(delta)
        slot.speed_ids = ids
        # The merged table of the previous speed part grows by the same delta; rebuilt
        # from the batch table when there is none, or it is cut in too many slices.
        previous = slot.merged
        same_batch = slot.merged_key is not None and slot.merged_key[0] == batch_key
        if previous is not None and same_batch and grows and _chunks(previous) < MAX_CHUNKS:
            merged = splice(view, previous, delta) if delta is not None else previous
        else:
            merged = splice(view, batch, self._speed(view, slot).table)
        if _chunks(merged) > SMALL_MAX_CHUNKS and merged.table.nbytes < COMPACT_BYTES:
            # Small (a rolled-up view): one chunk once here, not a copy per query.
            merged = Part(merged.table.combine_chunks(), merged.starts)
        if len(slot.pending) >= MAX_PENDING:
            self._speed(view, slot)
        slot.merged, slot.merged_key = merged, (batch_key, ids)
        return merged

    @staticmethod
    def _speed(view: View, slot: _Slot) -> Part:
        """The speed part with the pending deltas folded in (one merge for all)."""
        assert slot.speed is not None
        if slot.pending:
            table = merge_partials(view, [slot.speed.table, *slot.pending])
            slot.speed, slot.pending = Part.of(view, table), []
        return slot.speed

    def _evict(self, keep: Key) -> None:
        with self._lock:
            total = sum(s.nbytes for s in self._slots.values())
            for key in list(self._slots):
                if total <= self.max_bytes and len(self._slots) <= MAX_SLOTS:
                    break
                if key == keep:
                    continue
                total -= self._slots.pop(key).nbytes
            if total > self.max_bytes:  # the one just used is over the budget alone
                self._slots.pop(keep, None)

    def clear(self) -> None:
        with self._lock:
            self._slots.clear()


def _budget() -> int:
    try:
        return int(float(os.environ.get("LOGLAMBDA_VIEW_CACHE_MB", "2048")) * 2**20)
    except ValueError:
        return 2048 * 2**20


CACHE: Final = ViewCache(_budget())
