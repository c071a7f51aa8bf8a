"""Byte-level line splitting: the first defence against hostile input.

Every front door (import, tail, HTTP raw lines) turns bytes into ``LineBlock``s here.
A block holds only lines that are valid UTF-8, free of NUL bytes and within the size
limit; every other line is already a quarantine row. Parsers therefore never see a
byte sequence that could make them raise.

Position rule (the off-by-one everyone gets wrong): ``source_offset`` is the byte
offset of the *first* byte of a line within the decompressed source, and
``source_line`` is 1-based. A reader resuming at offset ``o`` re-reads the line that
starts at ``o``; so a checkpoint stores the offset just *past* the last newline
consumed, never the offset of the last line.
"""

from __future__ import annotations

import codecs
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Final, Protocol

import numpy as np
import pyarrow as pa

from loglambda.core.quarantine import RejectBuilder

DEFAULT_BLOCK_BYTES: Final = 8 << 20
DEFAULT_MAX_LINE_BYTES: Final = 64 << 10


class ByteSource(Protocol):
    """Anything with ``read(n) -> bytes``: a file, a gzip stream, a hashing wrapper."""

    def read(self, n: int = -1, /) -> bytes: ...


@dataclass(frozen=True)
class LineBlock:
    """Clean lines of one source region, with their positions, plus what was rejected."""

    source: str
    lines: pa.StringArray
    line_no: pa.Int64Array
    offset: pa.Int64Array
    rejects: RejectBuilder
    # Total lines read in this block (clean + rejected), for reconciliation.
    read: int

    def __len__(self) -> int:
        return len(self.lines)


def split_block(
    data: bytes,
    *,
    source: str,
    base_offset: int,
    base_line: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> LineBlock:
    """Split ``data`` (complete lines; the last may lack its newline) into a LineBlock."""
    rejects = RejectBuilder(source)
    if not data:
        empty_i64 = pa.array([], pa.int64())
        return LineBlock(source, pa.array([], pa.string()), empty_i64, empty_i64, rejects, 0)
    raw = np.frombuffer(data, dtype=np.uint8)
    newlines = np.flatnonzero(raw == 10)
    starts = np.empty(len(newlines) + 1, dtype=np.int64)
    starts[0] = 0
    starts[1:] = newlines + 1
    ends = np.empty_like(starts)
    ends[:-1] = newlines
    ends[-1] = len(data)
    if starts[-1] == len(data):  # data ended with a newline: no trailing partial line
        starts, ends = starts[:-1], ends[:-1]
    # Strip the \r of CRLF endings so Windows-written logs parse like any other.
    has_cr = ends > starts
    has_cr[has_cr] = raw[ends[has_cr] - 1] == 13
    ends = ends - has_cr
    n = len(starts)

    bad = np.zeros(n, dtype=bool)
    lengths = ends - starts
    line_index = np.arange(n, dtype=np.int64)

    def reject(rows: np.ndarray, reason: str, detail: str) -> None:
        for i in rows.tolist():
            if bad[i]:
                continue
            bad[i] = True
            rejects.add(
                line=base_line + i,
                offset=base_offset + int(starts[i]),
                reason=reason,
                detail=detail,
                raw=data[starts[i] : ends[i]],
            )

    reject(
        np.flatnonzero(lengths > max_line_bytes), "line_too_long", f"over {max_line_bytes} bytes"
    )
    nul_pos = np.flatnonzero(raw == 0)
    if len(nul_pos):
        reject(
            np.unique(np.searchsorted(starts, nul_pos, side="right") - 1), "nul_byte", "NUL byte"
        )
    for pos in _invalid_utf8_positions(data):
        row = int(np.searchsorted(starts, pos, side="right") - 1)
        reject(np.array([row]), "invalid_utf8", f"invalid UTF-8 at byte {pos - starts[row]}")
    reject(np.flatnonzero(lengths == 0), "blank", "empty line")

    keep = line_index[~bad]
    # Arrow string offsets point straight into the block's bytes. Lines are not
    # contiguous (newlines sit between them), so the offsets [s0, e0, s1, e1, ...] make
    # an array whose even elements are the lines; one ``take`` copies just those out.
    # Rejected lines are never touched, so they cannot fail UTF-8 handling downstream.
    bounds = np.empty(2 * n, dtype=np.int32)
    bounds[0::2] = starts
    bounds[1::2] = ends
    interleaved = pa.StringArray.from_buffers(2 * n - 1, pa.py_buffer(bounds), pa.py_buffer(data))
    lines = interleaved.take(pa.array(2 * keep))
    return LineBlock(
        source=source,
        lines=lines,
        line_no=pa.array(base_line + keep, pa.int64()),
        offset=pa.array(base_offset + starts[keep], pa.int64()),
        rejects=rejects,
        read=n,
    )


def _invalid_utf8_positions(data: bytes, segment: int = 64 << 10) -> Iterator[int]:
    """Byte positions of invalid UTF-8, one per offending line.

    Decodes in segments cut at newlines, so each bad line costs one segment's decode
    rather than a decode of the rest of the block.
    """
    view = memoryview(data)
    start = 0
    while start < len(data):
        end = data.find(b"\n", min(start + segment, len(data) - 1))
        end = len(data) if end < 0 else end + 1
        pos = start
        while pos < end:
            try:
                codecs.utf_8_decode(view[pos:end], "strict", True)
                break
            except UnicodeDecodeError as err:
                bad_at = pos + err.start
                yield bad_at
                nxt = data.find(b"\n", bad_at, end)
                pos = end if nxt < 0 else nxt + 1
        start = end


def iter_blocks(
    stream: ByteSource,
    *,
    source: str,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    start_offset: int = 0,
    start_line: int = 1,
    final_partial: bool = True,
) -> Iterator[tuple[LineBlock, int]]:
    """Yield ``(block, end_offset)`` for a byte stream positioned at ``start_offset``.

    ``end_offset`` is the position just past the last byte consumed: the resume point.
    With ``final_partial=False`` (tailing a growing file) a last line without its newline
    is left unread, to be picked up once the writer finishes it.
    """
    offset, line = start_offset, start_line
    carry = b""
    # A line longer than any block is skipped to its newline and quarantined whole.
    oversize: tuple[int, int, bytes] | None = None  # (offset, length, head)
    while True:
        chunk = stream.read(block_bytes)
        eof = not chunk
        if oversize is not None and chunk:
            nl = chunk.find(b"\n")
            if nl < 0:
                oversize = (oversize[0], oversize[1] + len(chunk), oversize[2])
                continue
            rejects = RejectBuilder(source)
            total = oversize[1] + nl
            rejects.add(
                line=line,
                offset=oversize[0],
                reason="line_too_long",
                detail=f"over {max_line_bytes} bytes ({total} bytes)",
                raw=oversize[2],
                raw_length=total,
            )
            empty = pa.array([], pa.int64())
            offset = oversize[0] + total + 1
            line += 1
            yield LineBlock(source, pa.array([], pa.string()), empty, empty, rejects, 1), offset
            oversize, chunk = None, chunk[nl + 1 :]
        data = carry + chunk
        if eof:
            if oversize is not None and final_partial:
                rejects = RejectBuilder(source)
                rejects.add(
                    line=line,
                    offset=oversize[0],
                    reason="line_too_long",
                    detail=f"over {max_line_bytes} bytes ({oversize[1]} bytes, no newline)",
                    raw=oversize[2],
                    raw_length=oversize[1],
                )
                empty = pa.array([], pa.int64())
                yield (
                    LineBlock(source, pa.array([], pa.string()), empty, empty, rejects, 1),
                    oversize[0] + oversize[1],
                )
            elif data and final_partial:
                block = split_block(
                    data,
                    source=source,
                    base_offset=offset,
                    base_line=line,
                    max_line_bytes=max_line_bytes,
                )
                yield block, offset + len(data)
            return
        cut = data.rfind(b"\n") + 1
        if cut == 0:
            # +1: a CRLF line's \r is not part of its length.
            if len(data) > max(max_line_bytes, block_bytes) + 1:
                oversize, carry = (offset, len(data), data[:4096]), b""
            else:
                carry = data
            continue
        block = split_block(
            data[:cut],
            source=source,
            base_offset=offset,
            base_line=line,
            max_line_bytes=max_line_bytes,
        )
        offset += cut
        line += block.read
        carry = data[cut:]
        yield block, offset
