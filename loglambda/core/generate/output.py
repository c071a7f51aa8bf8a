"""Writing generated lines: chunked, reproducible, atomic, with exact malformed counts.

Both generators hand this module a function that renders a range of lines; it drives
the chunks, splices the planned malformed lines in, streams bytes straight out of the
Arrow buffers (optionally through gzip) and reports what was written. The report's
malformed count is exact because tests reconcile it with what the pipeline quarantines.
"""

from __future__ import annotations

import gzip
import os
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Final

import numpy as np
import pyarrow as pa

from loglambda.core.generate.common import (
    I64,
    STREAM_CHUNK,
    STREAM_MALFORMED,
    STREAM_MALFORMED_TEXT,
    Incident,
    choose,
    from_epoch_us,
    rng_for,
)

# Lines per chunk: large enough that Arrow kernels dominate, small enough that memory
# stays bounded (~100 MB) whatever the total. Part of the output contract: changing it
# changes the bytes produced for a seed.
CHUNK_LINES: Final = 200_000
# Level 6 is what gzip and logrotate default to; mtime=0 and no embedded file name keep
# compressed output byte-identical between runs.
GZIP_LEVEL: Final = 6

# Renders lines [first, stop) with the given random stream: every line ends in a newline;
# returns the lines and their timestamps (epoch µs).
Render = Callable[[np.random.Generator, int, int], tuple[pa.Array, I64]]
# Turns a well-formed line (without newline) into a malformed one of the named kind.
Malform = Callable[[str, str, np.random.Generator], bytes]


@dataclass(frozen=True)
class GenerateReport:
    """What a generator wrote; ``malformed`` is exact, for quarantine reconciliation."""

    kind: str
    fmt: str
    path: Path
    lines: int
    malformed: int
    malformed_by_kind: tuple[tuple[str, int], ...]
    first_ts: datetime | None  # of the well-formed lines, UTC
    last_ts: datetime | None
    bytes_written: int  # uncompressed
    seconds: float
    incidents: tuple[tuple[datetime, datetime], ...] = field(default=())

    def summary(self) -> str:
        span = "no timestamps"
        if self.first_ts is not None and self.last_ts is not None:
            span = f"{self.first_ts:%Y-%m-%dT%H:%M:%SZ} .. {self.last_ts:%Y-%m-%dT%H:%M:%SZ}"
        rate = self.lines / self.seconds if self.seconds > 0 else 0.0
        return (
            f"wrote {self.lines:,} {self.kind} lines ({self.fmt}, {self.malformed:,} malformed) "
            f"to {self.path}: {span}, {self.bytes_written / 1e6:,.1f} MB in "
            f"{self.seconds:.1f} s ({rate:,.0f} lines/s)"
        )


@dataclass(frozen=True)
class MalformedSpec:
    share: float
    kinds: Sequence[str]
    weights: Sequence[float]
    make: Malform


def generate_file(
    *,
    kind: str,
    fmt: str,
    path: Path,
    lines: int,
    seed: int,
    stream: int,
    render: Render,
    malformed: MalformedSpec,
    incidents: Sequence[Incident],
    began: float,
) -> GenerateReport:
    """Render ``lines`` lines chunk by chunk into ``path`` and report on them."""
    count = min(lines, round(lines * malformed.share))
    plan_rng = rng_for(seed, stream, STREAM_MALFORMED)
    bad_pos = np.sort(plan_rng.choice(lines, size=count, replace=False)).astype(np.int64)
    bad_kind = choose(plan_rng, count, malformed.weights)

    def chunks() -> Iterator[tuple[pa.Array, dict[int, bytes], I64]]:
        for index, first in enumerate(range(0, lines, CHUNK_LINES)):
            stop = min(lines, first + CHUNK_LINES)
            text, ts = render(rng_for(seed, stream, STREAM_CHUNK, index), first, stop)
            lo, hi = np.searchsorted(bad_pos, [first, stop])
            rows = (bad_pos[lo:hi] - first).tolist()
            rng = rng_for(seed, stream, STREAM_MALFORMED_TEXT, index)
            replace = {
                row: malformed.make(malformed.kinds[k], text[row].as_py()[:-1], rng)
                for row, k in zip(rows, bad_kind[lo:hi].tolist(), strict=True)
            }
            yield text, replace, np.delete(ts, rows)

    written, lo_us, hi_us = _write(path, chunks())
    counts = np.bincount(bad_kind, minlength=len(malformed.kinds)).tolist()
    return GenerateReport(
        kind=kind,
        fmt=fmt,
        path=path,
        lines=lines,
        malformed=count,
        malformed_by_kind=tuple((k, n) for k, n in zip(malformed.kinds, counts, strict=True) if n),
        first_ts=None if lo_us is None else from_epoch_us(lo_us),
        last_ts=None if hi_us is None else from_epoch_us(hi_us),
        bytes_written=written,
        seconds=time.perf_counter() - began,
        incidents=tuple((from_epoch_us(i.start_us), from_epoch_us(i.end_us)) for i in incidents),
    )


def _write(
    path: Path, chunks: Iterator[tuple[pa.Array, dict[int, bytes], I64]]
) -> tuple[int, int | None, int | None]:
    """Stream chunks to ``path`` (gzip if it ends in .gz) through a .part file renamed at
    the end, so a reader never sees a half-written file under the final name."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".part")
    written, lo, hi = 0, None, None
    try:
        with open(tmp, "wb") as raw:
            out: BinaryIO = raw
            if path.name.endswith(".gz"):
                out = gzip.GzipFile(
                    filename="", mode="wb", fileobj=raw, mtime=0, compresslevel=GZIP_LEVEL
                )  # type: ignore[assignment]
            with out:
                for text, replace, ts in chunks:
                    written += _write_chunk(out, text, replace)
                    if len(ts):
                        lo = int(ts.min()) if lo is None else min(lo, int(ts.min()))
                        hi = int(ts.max()) if hi is None else max(hi, int(ts.max()))
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return written, lo, hi


def _write_chunk(out: BinaryIO, text: pa.Array, replace: dict[int, bytes]) -> int:
    # The lines' bytes are contiguous in the Arrow data buffer: write slices of it
    # directly, stepping over the rows that malformed lines replace.
    offsets = np.frombuffer(
        text.buffers()[1], dtype=np.int32, count=len(text) + 1, offset=text.offset * 4
    )
    data = memoryview(text.buffers()[2])
    written, prev = 0, 0
    for row in sorted(replace):
        written += out.write(data[offsets[prev] : offsets[row]])
        written += out.write(replace[row] + b"\n")
        prev = row + 1
    return written + out.write(data[offsets[prev] : offsets[len(text)]])


# Noise shared by every format ------------------------------------------------------------

_GARBAGE_ALPHABET: Final = np.frombuffer(
    b"abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 .,;:!?#$%&*+-/=<>@^_|~()",
    dtype=np.uint8,
)
# A first letter that starts no JSON value (not t/f/n for true/false/null) and no space.
_GARBAGE_FIRST: Final = np.frombuffer(b"gGhHkKqQxXzZ", dtype=np.uint8)


def garbage_text(rng: np.random.Generator) -> bytes:
    """Printable noise without quotes or braces: matches no log format and is not JSON."""
    body = _GARBAGE_ALPHABET[rng.integers(0, len(_GARBAGE_ALPHABET), int(rng.integers(8, 160)))]
    return bytes([int(rng.choice(_GARBAGE_FIRST))]) + body.tobytes()


def invalid_utf8(rng: np.random.Generator) -> bytes:
    """Random binary holding at least one byte that is never valid UTF-8 (0xff)."""
    body = rng.integers(0, 256, int(rng.integers(4, 120)), dtype=np.uint8)
    body[(body == 0x0A) | (body == 0x0D)] = 0xFF  # stay on one line
    body[int(rng.integers(0, len(body)))] = 0xFF
    return body.tobytes()


def smuggle_latin1(line: str, rng: np.random.Generator) -> bytes:
    """A fine line with one Latin-1 byte inserted: what a misconfigured writer produces."""
    raw = line.encode()
    at = int(rng.integers(1, len(raw)))
    return raw[:at] + b"\xe9" + raw[at:]
