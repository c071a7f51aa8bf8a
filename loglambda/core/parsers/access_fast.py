"""The native access-log scanner's Python side: buffers in, Arrow columns out.

``_accessscan.scan`` (C, ``_accessscan.c``) splits a ``RawBlock`` into lines and parses
every well-formed line straight into column buffers allocated here, with the GIL
released. Lines it does not fully accept (malformed, escaped quotes, non-ASCII, over
the size limit, ...) come back as positions. ``AccessLogParser.parse_raw`` hands those
to the reference parser, so the native code only ever has to be right about
well-formed lines. The differential tests (tests/unit/test_access_fast.py) check
that the two together give exactly what the reference gives alone.

The extension is optional: without a C compiler at install time it is simply absent
and every block takes the reference path. ``LOGLAMBDA_NO_NATIVE=1`` turns it off.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from dataclasses import dataclass
from types import ModuleType
from typing import Final

import numpy as np
import pyarrow as pa

from loglambda.core.lines import LineBlock, RawBlock, split_block
from loglambda.core.schemas import TRAFFIC_SCHEMA, TS_TYPE

_native: ModuleType | None
try:
    from loglambda.core.parsers import _accessscan

    _native = _accessscan
except ImportError:  # built without a C compiler: the reference path does it all
    _native = None

# Bytes the C side may write past a field (COPY_SLACK in _accessscan.c).
COPY_SLACK: Final = 32
FORMAT_CODES: Final[dict[str, int]] = {"combined": 0, "common": 1, "vcombined": 2}
# The C side's string columns, in its order (the S_* enum in _accessscan.c).
STRING_COLUMNS: Final = (
    "host",
    "client_ip",
    "method",
    "path",
    "query",
    "protocol",
    "referrer",
    "user_agent",
)


def native_available() -> bool:
    """Whether the C scanner is built and not switched off."""
    return _native is not None and os.environ.get("LOGLAMBDA_NO_NATIVE", "") in ("", "0")


def native_count() -> Callable[[bytes | memoryview, int], int] | None:
    """The C byte counter (``count(data, byte)``), or None where the scanner is not."""
    if _native is None or not native_available():
        return None
    count: Callable[[bytes | memoryview, int], int] | None = getattr(_native, "count", None)
    return count


@dataclass(frozen=True)
class Scanned:
    """A block after the native scan: parsed events, and the lines it left alone."""

    events: pa.Table  # TRAFFIC_SCHEMA, in input order
    slow: LineBlock  # the other lines, split as split_block does, positions absolute


def scan(raw: RawBlock, fmt: str) -> Scanned | None:
    """Scan ``raw`` natively; None when the native scanner is unavailable for it."""
    code = FORMAT_CODES.get(fmt)
    if code is None or _native is None or not native_available() or raw.read == 0:
        return None
    layout = (getattr(_native, "N_STR", None), getattr(_native, "COPY_SLACK", None))
    if layout != (len(STRING_COLUMNS), COPY_SLACK):
        raise RuntimeError("_accessscan was built from another version: reinstall loglambda")
    cap, size = raw.read, len(raw.data)
    n_str = len(STRING_COLUMNS)
    rows = _empty(cap, np.int64)
    starts = _empty(cap, np.int64)
    ts = _empty(cap, np.int64)
    status = _empty(cap, np.int16)
    nbytes = _empty(cap, np.int64)
    latency = _empty(cap, np.float64)
    lat_valid = _empty(cap, np.uint8)
    offsets = _empty(n_str * (cap + 1), np.int32).reshape(n_str, cap + 1)
    valid = _empty(n_str * cap, np.uint8).reshape(n_str, cap)
    # All columns' text together is a subset of the block's bytes; each column's
    # region is followed by room for the C side's block copies.
    strdata = _empty(size + n_str * COPY_SLACK, np.uint8)
    spans = _scratch(n_str * cap)
    slow = _empty(cap * 3, np.int64).reshape(cap, 3)
    lines, n, n_slow = _native.scan(
        raw.data,
        code,
        raw.max_line_bytes,
        cap,
        rows,
        starts,
        ts,
        status,
        nbytes,
        latency,
        lat_valid,
        offsets,
        valid,
        strdata,
        spans,
        slow,
    )
    if lines != raw.read:
        raise ValueError(f"{raw.source}: block claims {raw.read} lines, scan found {lines}")

    # Column k's text starts COPY_SLACK after column k-1's ends (the C side's layout).
    sizes = offsets[:, n].astype(np.int64)
    begins = np.concatenate(([0], np.cumsum(sizes + COPY_SLACK)[:-1]))

    def validity(mask: np.ndarray) -> tuple[pa.Buffer | None, int]:
        nulls = n - int(np.count_nonzero(mask[:n]))
        if nulls == 0:
            return None, 0
        return pa.py_buffer(np.packbits(mask[:n], bitorder="little")), nulls

    def strings(k: int) -> pa.Array:
        text = strdata[int(begins[k]) : int(begins[k] + sizes[k])]
        return pa.StringArray.from_buffers(
            n, pa.py_buffer(offsets[k, : n + 1]), pa.py_buffer(text), *validity(valid[k])
        )

    def fixed(dtype: pa.DataType, values: np.ndarray, mask: np.ndarray | None = None) -> pa.Array:
        bitmap, nulls = validity(mask) if mask is not None else (None, 0)
        return pa.Array.from_buffers(dtype, n, [bitmap, pa.py_buffer(values[:n])], nulls)

    text = {name: strings(k) for k, name in enumerate(STRING_COLUMNS)}
    source = pa.array([raw.source], pa.string()).take(pa.array(np.zeros(n, np.int32)))
    events = pa.Table.from_arrays(
        [
            fixed(TS_TYPE, ts),
            text["host"],
            text["client_ip"],
            text["method"],
            text["path"],
            text["query"],
            text["protocol"],
            fixed(pa.int16(), status),
            fixed(pa.int64(), nbytes),
            fixed(pa.float64(), latency, lat_valid),
            text["referrer"],
            text["user_agent"],
            source,
            pa.array(raw.base_line + rows[:n]),
            pa.array(raw.base_offset + starts[:n]),
        ],
        schema=TRAFFIC_SCHEMA,
    )
    return Scanned(events, _slow_block(raw, slow[:n_slow]))


def _empty(n: int, dtype: type[np.generic]) -> np.ndarray:
    """An uninitialised array in Arrow's memory pool.

    Not ``np.empty``: numpy asks the kernel for huge pages on big arrays, and
    faulting those in (with compaction) cost more system time than the whole scan.
    The pool also reuses memory the previous blocks freed.
    """
    return np.frombuffer(pa.allocate_buffer(n * np.dtype(dtype).itemsize), dtype)


_thread_scratch = threading.local()


def _scratch(n: int) -> np.ndarray:
    """Field positions for the C side's second pass: per thread, reused every block."""
    buf: np.ndarray | None = getattr(_thread_scratch, "spans", None)
    if buf is None or len(buf) < n:
        buf = _thread_scratch.spans = np.empty(n, np.int32)
    return buf[:n]


def _slow_block(raw: RawBlock, slow: np.ndarray) -> LineBlock:
    """The lines the scanner left, gathered and split by the reference splitter.

    Each keeps its own bytes (a trailing CR included) and absolute position, so the
    splitter rejects it or passes it on exactly as it would have in place.
    """
    index, begin, end = slow[:, 0], slow[:, 1], slow[:, 2]
    data = raw.data
    # Every line gets its newline: an empty last line must still be a line.
    lines = [data[a:b] for a, b in zip(begin.tolist(), end.tolist(), strict=True)]
    joined = b"\n".join(lines) + b"\n" if lines else b""
    return split_block(
        joined,
        source=raw.source,
        base_offset=raw.base_offset,
        base_line=raw.base_line,
        max_line_bytes=raw.max_line_bytes,
        positions=(raw.base_line + index, raw.base_offset + begin),
    )
