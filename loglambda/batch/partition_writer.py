"""Writing events into hourly Parquet partitions, on one thread or several.

A ``StagedBatch`` routes events to ``<kind>/date=…/hour=…`` files through a
``PartitionWriter``. With ``threads=1`` every write happens on the caller's thread,
in call order, one file per partition part. With more threads, Parquet encoding
(which releases the GIL) runs on that many writer threads. Each thread owns its own
files, so a partition may get one file per thread. A piece goes to the thread with
the least queued work, because a time-ordered log fills one hour at a time and
pinning hours to threads would leave all but one idle. Small pieces (an earlier
hour's late lines) are held and written together when the writer closes.
"""

from __future__ import annotations

import contextlib
import functools
import time
from collections import OrderedDict, deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from loglambda.core.schemas import Kind, schema_for

US_PER_HOUR: Final = 3_600_000_000
MAX_OPEN_WRITERS: Final = 64  # per writer thread
# Runs of one hour in a table beyond which split_by_hour copies rather than slices.
MAX_RUNS: Final = 512
# Pieces queued per writer thread before write() waits: bounds memory to a few blocks.
QUEUE_PER_THREAD: Final = 3
# A piece smaller than this (late lines of an hour already written) is held back and
# written with the hour's other stragglers: one row group instead of one per block.
# A row group costs ~0.7 ms to encode however few rows it has, and every reader pays
# for its metadata. Held rows are copied out of their block, so a straggler does not
# pin the block's buffers; HELD_ROWS_MAX bounds what is held in all.
SMALL_PIECE_ROWS: Final = 4096
HELD_ROWS_MAX: Final = 1 << 20

PARQUET_OPTIONS: Final[dict[str, Any]] = {
    "compression": "zstd",
    "compression_level": 1,
    # Readers of other engines (Spark, DuckDB) read INT64 micros with UTC; never INT96.
    "use_deprecated_int96_timestamps": False,
    "coerce_timestamps": "us",
}

# Master files are written once and scanned by every batch run, so their encodings are
# picked per column (bench/import_bench.py measured 1.7x faster writes and 1.5x
# smaller files than the defaults). Dictionaries only pay where values repeat (not
# for sizes, latencies, timestamps, positions). Provenance and time grow steadily and
# delta-encode to a few bits. Min/max statistics are kept where a reader can prune on
# them; min/max of free text (paths, agents, messages) prunes nothing.
_MASTER_ENCODING: Final[dict[Kind, dict[str, Any]]] = {
    "traffic": {
        "use_dictionary": [
            "host",
            "client_ip",
            "method",
            "path",
            "query",
            "protocol",
            "status",
            "referrer",
            "user_agent",
            "source",
        ],
        "write_statistics": ["ts", "host", "status", "bytes", "latency_ms"],
    },
    "logs": {
        "use_dictionary": ["service", "level", "logger", "message", "source"],
        "write_statistics": ["ts", "service", "level", "logger"],
    },
}
_DELTA: Final = ("ts", "source_line", "source_offset")


def master_parquet_options(kind: Kind) -> dict[str, Any]:
    """Parquet writer options for a master file of ``kind``."""
    enc = _MASTER_ENCODING[kind]
    return {
        **PARQUET_OPTIONS,
        **enc,
        "write_statistics": [*enc["write_statistics"], "source_line", "source_offset"],
        "column_encoding": dict.fromkeys(_DELTA, "DELTA_BINARY_PACKED"),
    }


@dataclass(frozen=True)
class HourPiece:
    """The events of one table that fall in one UTC hour."""

    hour: int  # hours since the epoch
    table: pa.Table
    min_ts: int  # microseconds
    max_ts: int


def split_by_hour(table: pa.Table) -> list[HourPiece]:
    """Split events by the hour of ``ts``, keeping input order within each hour.

    A block of a real log is a few long runs of one hour, with the odd late line
    between them. Each hour's piece is therefore made of zero-copy slices of its runs.
    Only events that are scattered (more than ``MAX_RUNS`` runs) are gathered with a
    copying ``take``.
    """
    if table.num_rows == 0:
        return []
    ts = table.column("ts").combine_chunks().cast(pa.int64()).to_numpy()
    hours = ts // US_PER_HOUR
    starts = np.concatenate(([0], np.flatnonzero(np.diff(hours)) + 1))
    if len(starts) == 1:  # the usual case for a block of a time-ordered log
        return [HourPiece(int(hours[0]), table, int(ts.min()), int(ts.max()))]
    if len(starts) > MAX_RUNS:
        return _gather_by_hour(table, ts, hours)
    ends = np.append(starts[1:], len(ts))
    run_min = np.minimum.reduceat(ts, starts)
    run_max = np.maximum.reduceat(ts, starts)
    pieces = []
    for hour in np.unique(hours[starts]):
        runs = np.flatnonzero(hours[starts] == hour)
        slices = [table.slice(int(starts[r]), int(ends[r] - starts[r])) for r in runs]
        pieces.append(
            HourPiece(
                int(hour),
                slices[0] if len(slices) == 1 else pa.concat_tables(slices),
                int(run_min[runs].min()),
                int(run_max[runs].max()),
            )
        )
    return pieces


def _gather_by_hour(table: pa.Table, ts: np.ndarray, hours: np.ndarray) -> list[HourPiece]:
    order = np.argsort(hours, kind="stable")
    bounds = np.flatnonzero(np.diff(hours[order])) + 1
    pieces = []
    for idx in np.split(order, bounds):
        piece_ts = ts[idx]
        pieces.append(
            HourPiece(
                int(hours[idx[0]]),
                table.take(pa.array(idx)),
                int(piece_ts.min()),
                int(piece_ts.max()),
            )
        )
    return pieces


@dataclass
class PartFile:
    """One Parquet file of a partition; opened on its writer thread at first write."""

    kind: Kind
    rel: str  # relative to the staging dir's master/
    path: Path
    writer: pq.ParquetWriter | None = None
    rows: int = 0
    min_ts: int = 2**63 - 1
    max_ts: int = -(2**63)

    def append(self, piece: HourPiece) -> None:
        if self.writer is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.writer = pq.ParquetWriter(
                self.path, schema_for(self.kind), **master_parquet_options(self.kind)
            )
        self.writer.write_table(piece.table)
        self.rows += piece.table.num_rows
        self.min_ts = min(self.min_ts, piece.min_ts)
        self.max_ts = max(self.max_ts, piece.max_ts)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


class PartitionWriter:
    """Hourly part files under ``root``, named ``<name>-<n>.parquet`` per partition."""

    def __init__(self, root: Path, name: str, *, threads: int = 1) -> None:
        self.root = root
        self.name = name
        self.threads = max(1, threads)
        self._open: list[OrderedDict[tuple[Kind, int], PartFile]] = [
            OrderedDict() for _ in range(self.threads)
        ]
        self.done: list[PartFile] = []
        self._count: dict[tuple[Kind, int], int] = {}
        self._pool = (
            [ThreadPoolExecutor(1, thread_name_prefix=f"write{i}") for i in range(self.threads)]
            if self.threads > 1
            else []
        )
        self._queued: list[deque[Future[None]]] = [deque() for _ in range(self.threads)]
        self._held: dict[tuple[Kind, int], list[HourPiece]] = {}
        self._held_rows = 0

    def write(self, kind: Kind, pieces: list[HourPiece]) -> None:
        """Queue ``pieces`` for writing; errors surface here or in ``close``."""
        for piece in pieces:
            if piece.table.num_rows < SMALL_PIECE_ROWS:
                self._hold(kind, piece)
            else:
                self._write(kind, piece)
        if self._held_rows > HELD_ROWS_MAX:
            self._write_held()

    def close(self) -> list[PartFile]:
        """Finish every file (footers written) and return all of them."""
        self._write_held()
        for lane in range(self.threads):
            for part in self._open[lane].values():
                self._run(lane, part.close)
            self.done.extend(self._open[lane].values())
            self._open[lane].clear()
        self._drain(0)
        for pool in self._pool:
            pool.shutdown()
        return self.done

    def abort(self) -> None:
        """Stop without caring about errors; the files are garbage afterwards."""
        self._held.clear()
        for pool in self._pool:
            pool.shutdown(cancel_futures=True)
        for lanes in self._open:
            for part in lanes.values():
                with contextlib.suppress(Exception):  # the files are discarded anyway
                    part.close()

    def _write(self, kind: Kind, piece: HourPiece) -> None:
        lane = self._pick_lane()
        part = self._part(lane, kind, piece.hour)
        self._run(lane, functools.partial(part.append, piece))

    def _hold(self, kind: Kind, piece: HourPiece) -> None:
        n = piece.table.num_rows
        own = piece.table.take(np.arange(n))  # a copy: the block's buffers go free
        self._held.setdefault((kind, piece.hour), []).append(
            HourPiece(piece.hour, own, piece.min_ts, piece.max_ts)
        )
        self._held_rows += n

    def _write_held(self) -> None:
        """Write each partition's held pieces as one piece, in the order they came."""
        held, self._held, self._held_rows = self._held, {}, 0
        for (kind, hour), pieces in held.items():
            self._write(
                kind,
                HourPiece(
                    hour,
                    pa.concat_tables([p.table for p in pieces]),
                    min(p.min_ts for p in pieces),
                    max(p.max_ts for p in pieces),
                ),
            )

    def _pick_lane(self) -> int:
        if self.threads == 1:
            return 0
        self._drain(QUEUE_PER_THREAD * self.threads)
        return min(range(self.threads), key=lambda i: len(self._queued[i]))

    def _part(self, lane: int, kind: Kind, hour: int) -> PartFile:
        parts = self._open[lane]
        key = (kind, hour)
        part = parts.get(key)
        if part is not None:
            parts.move_to_end(key)
            return part
        if len(parts) >= MAX_OPEN_WRITERS:
            _, evicted = parts.popitem(last=False)
            self._run(lane, evicted.close)
            self.done.append(evicted)
        n = self._count.get(key, 0)
        self._count[key] = n + 1
        stamp = time.gmtime(hour * 3600)
        rel = (
            f"{kind}/date={time.strftime('%Y-%m-%d', stamp)}/hour={stamp.tm_hour:02d}/"
            f"{self.name}-{n:04d}.parquet"
        )
        part = PartFile(kind, rel, self.root / rel)
        parts[key] = part
        return part

    def _run(self, lane: int, task: Callable[[], None]) -> None:
        if not self._pool:
            task()
            return
        self._queued[lane].append(self._pool[lane].submit(task))
        self._drain(QUEUE_PER_THREAD * self.threads)

    def _drain(self, limit: int) -> None:
        """Wait until at most ``limit`` tasks are queued; re-raise any that failed."""
        while True:
            for q in self._queued:  # a lane runs its tasks in order
                while q and q[0].done():
                    q.popleft().result()
            pending = [f for q in self._queued for f in q]
            if len(pending) <= limit:
                return
            wait(pending, return_when=FIRST_COMPLETED)
