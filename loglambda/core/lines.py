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
from collections.abc import Callable, Iterator
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


@dataclass(frozen=True)
class RawBlock:
    """Complete lines of one source region, not yet split.

    Parsers with a native scanner (``AccessLogParser.parse_raw``) take these whole,
    so splitting and parsing happen in one pass on a worker thread; everyone else
    calls ``split()``.
    """

    source: str
    # Complete lines; only the last block of a source may lack a newline. A
    # memoryview when the block is a window on a memory-mapped file.
    data: bytes | memoryview
    base_offset: int
    base_line: int
    read: int  # lines in ``data``, as ``split()`` counts them
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES

    def split(self) -> LineBlock:
        return split_block(
            bytes(self.data),
            source=self.source,
            base_offset=self.base_offset,
            base_line=self.base_line,
            max_line_bytes=self.max_line_bytes,
        )


def count_lines(data: bytes | memoryview) -> int:
    """Lines in ``data`` as ``split_block`` counts them (a final line needs no newline)."""
    if not data:
        return 0
    if isinstance(data, bytes):
        newlines = data.count(b"\n")
    elif (native := _native_count()) is not None:
        newlines = native(data, 10)  # SIMD, one pass: numpy's took 6x the instructions
    else:
        # In slices: numpy asks for huge pages for temporaries of 4 MiB and more, and
        # faulting those in costs more than the count.
        raw = np.frombuffer(data, dtype=np.uint8)
        newlines = sum(
            int(np.count_nonzero(raw[i : i + _COUNT_SLICE] == 10))
            for i in range(0, len(raw), _COUNT_SLICE)
        )
    return newlines + (0 if data[-1] == 10 else 1)


_COUNT_SLICE: Final = 1 << 20


def _native_count() -> Callable[[bytes | memoryview, int], int] | None:
    # Imported here, not at the top: the parsers package imports this module.
    from loglambda.core.parsers.access_fast import native_count

    return native_count()


def split_block(
    data: bytes,
    *,
    source: str,
    base_offset: int,
    base_line: int,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    positions: tuple[np.ndarray, np.ndarray] | None = None,
) -> LineBlock:
    """Split ``data`` (complete lines; the last may lack its newline) into a LineBlock.

    ``positions`` (line numbers, byte offsets), one pair per line of ``data``, places
    lines that were gathered from elsewhere in a source; then ``base_offset`` and
    ``base_line`` are ignored.
    """
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
    if positions is None:
        line_nos, line_offsets = base_line + line_index, base_offset + starts
    else:
        line_nos, line_offsets = positions
        if len(line_nos) != n or len(line_offsets) != n:
            raise ValueError(f"positions for {len(line_nos)} lines, data has {n}")

    def reject(rows: np.ndarray, reason: str, detail: str) -> None:
        for i in rows.tolist():
            if bad[i]:
                continue
            bad[i] = True
            rejects.add(
                line=int(line_nos[i]),
                offset=int(line_offsets[i]),
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
        line_no=pa.array(line_nos[keep], pa.int64()),
        offset=pa.array(line_offsets[keep], pa.int64()),
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
    for block, end in iter_raw_blocks(
        stream,
        source=source,
        block_bytes=block_bytes,
        max_line_bytes=max_line_bytes,
        start_offset=start_offset,
        start_line=start_line,
        final_partial=final_partial,
    ):
        yield (block.split() if isinstance(block, RawBlock) else block), end


def iter_raw_blocks(
    stream: ByteSource,
    *,
    source: str,
    block_bytes: int = DEFAULT_BLOCK_BYTES,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
    start_offset: int = 0,
    start_line: int = 1,
    final_partial: bool = True,
    buffers: BlockBuffers | None = None,
) -> Iterator[tuple[RawBlock | LineBlock, int]]:
    """``iter_blocks`` without the split: lines arrive as ``RawBlock``s.

    A line longer than a whole block never reaches a parser: it arrives already
    quarantined, as a ``LineBlock`` holding only that reject. With ``buffers``, blocks
    are read into buffers the caller hands back (``BlockBuffers.give``) once parsed.
    """
    offset, line = start_offset, start_line
    carry = b""
    # A line longer than any block is skipped to its newline and quarantined whole.
    oversize: tuple[int, int, bytes] | None = None  # (offset, length, head)
    while True:
        data = _read_after(stream, carry, block_bytes, buffers)
        eof = len(data) == len(carry)
        if oversize is not None and not eof:
            nl = bytes(data).find(b"\n")  # carry is empty while skipping: data is new
            if nl < 0:
                oversize = (oversize[0], oversize[1] + len(data), oversize[2])
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
            oversize, data = None, data[nl + 1 :]
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
                raw = RawBlock(source, data, offset, line, count_lines(data), max_line_bytes)
                yield raw, offset + len(data)
            return
        cut = _rfind_newline(data) + 1
        if cut == 0:
            # +1: a CRLF line's \r is not part of its length.
            if len(data) > max(max_line_bytes, block_bytes) + 1:
                oversize, carry = (offset, len(data), bytes(data[:4096])), b""
            else:
                carry = bytes(data)
            continue
        raw = RawBlock(source, data[:cut], offset, line, count_lines(data[:cut]), max_line_bytes)
        offset += cut
        line += raw.read
        carry = bytes(data[cut:])
        yield raw, offset


class BlockBuffers:
    """Read buffers reused once their block is parsed.

    Fresh memory costs a page fault and a zeroed page per 4 KiB; reusing a handful of
    block buffers saves an import a fifth of its system time. Only the thread that
    reads blocks may take or give.
    """

    def __init__(self) -> None:
        self._free: list[pa.Buffer] = []

    def take(self, size: int) -> memoryview:
        while self._free:
            buf = self._free.pop()
            if buf.size >= size:
                return memoryview(buf).cast("B")[:size]
        # Headroom for the partial line carried over from the previous block.
        return memoryview(pa.allocate_buffer(size + (64 << 10))).cast("B")[:size]

    def give(self, block: RawBlock | LineBlock) -> None:
        """Hand back a block's buffer: nothing may read ``block.data`` afterwards.

        Parsers copy what they keep (tests/unit/test_lines.py), so this is safe as
        soon as the block's parse has returned.
        """
        if isinstance(block, RawBlock) and isinstance(block.data, memoryview):
            owner = block.data.obj
            if isinstance(owner, pa.Buffer):
                self._free.append(owner)


def _read_after(
    stream: ByteSource, carry: bytes, n: int, buffers: BlockBuffers | None = None
) -> bytes | memoryview:
    """``carry`` followed by up to ``n`` more bytes of ``stream``, in one buffer.

    A stream with ``readinto`` (files, gzip) reads straight into a buffer from Arrow's
    memory pool, which reuses what earlier blocks freed. Then there is no concatenation
    copy and no fresh pages to fault in; both together cost more than the read.
    Only end of file returns nothing new.
    """
    readinto = getattr(stream, "readinto", None)
    if readinto is None:
        return carry + stream.read(n)
    size = len(carry) + n
    view = buffers.take(size) if buffers else memoryview(pa.allocate_buffer(size)).cast("B")
    view[: len(carry)] = carry
    got = len(carry)
    while got < len(view):
        k = readinto(view[got:])
        if not k:
            break
        got += k
    return view[:got]


def _rfind_newline(data: bytes | memoryview) -> int:
    if isinstance(data, bytes):
        return data.rfind(b"\n")
    # A block's last newline is almost always within its last line or two.
    tail = max(0, len(data) - (64 << 10))
    i = bytes(data[tail:]).rfind(b"\n")
    if i >= 0 or tail == 0:
        return tail + i if i >= 0 else -1
    hits = np.flatnonzero(np.frombuffer(data[:tail], dtype=np.uint8) == 10)
    return int(hits[-1]) if len(hits) else -1
