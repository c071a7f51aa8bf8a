"""Byte-level line splitting: positions, CRLF, partial lines, and what gets quarantined."""

from __future__ import annotations

import io

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loglambda.core.lines import (
    BlockBuffers,
    LineBlock,
    RawBlock,
    count_lines,
    iter_blocks,
    iter_raw_blocks,
    split_block,
)
from loglambda.core.parsers.access_fast import native_count
from loglambda.core.quarantine import RAW_LIMIT

pytestmark = pytest.mark.unit


def _split(data: bytes, **kw: int) -> LineBlock:
    return split_block(data, source="src.log", base_offset=0, base_line=1, **kw)


def _rejects(block: LineBlock) -> list[dict[str, object]]:
    return block.rejects.to_table("test").to_pylist()


def _blocks(data: bytes, **kw: object) -> list[tuple[LineBlock, int]]:
    return list(iter_blocks(io.BytesIO(data), source="src.log", **kw))  # type: ignore[arg-type]


def _all_lines(blocks: list[tuple[LineBlock, int]]) -> list[tuple[int, int, str]]:
    return [line for block, _ in blocks for line in _block_lines(block)]


def _all_rejects(blocks: list[tuple[LineBlock, int]]) -> list[dict[str, object]]:
    return [r for block, _ in blocks for r in _rejects(block)]


# --- line endings --------------------------------------------------------------------


def test_crlf_is_stripped_and_offsets_count_the_cr() -> None:
    block = _split(b"GET /a\r\nGET /b\r\nGET /c\n")
    assert block.lines.to_pylist() == ["GET /a", "GET /b", "GET /c"]
    assert block.line_no.to_pylist() == [1, 2, 3]
    assert block.offset.to_pylist() == [0, 8, 16]
    assert block.read == 3
    assert len(block.rejects) == 0


def test_lone_cr_inside_a_line_is_kept() -> None:
    block = _split(b"a\rb\n")
    assert block.lines.to_pylist() == ["a\rb"]


def test_line_of_only_cr_is_blank() -> None:
    block = _split(b"x\n\r\ny\n")
    assert block.lines.to_pylist() == ["x", "y"]
    [rej] = _rejects(block)
    assert (rej["reason"], rej["source_line"], rej["source_offset"]) == ("blank", 2, 2)


def test_trailing_partial_line_without_newline_is_a_line_in_split_block() -> None:
    block = _split(b"one\ntwo")
    assert block.lines.to_pylist() == ["one", "two"]
    assert block.offset.to_pylist() == [0, 4]
    assert block.read == 2


def test_empty_data_is_an_empty_block() -> None:
    block = _split(b"")
    assert len(block) == 0
    assert block.read == 0
    assert len(block.rejects) == 0


def test_base_line_and_base_offset_shift_positions() -> None:
    block = split_block(b"a\n\nb\n", source="s", base_offset=1000, base_line=41)
    assert block.line_no.to_pylist() == [41, 43]
    assert block.offset.to_pylist() == [1000, 1003]
    [rej] = _rejects(block)
    assert (rej["source_line"], rej["source_offset"]) == (42, 1002)


# --- partial last line and the resume offset -------------------------------------------


def test_final_partial_true_reads_the_unterminated_last_line() -> None:
    data = b"one\ntwo\nthr"
    blocks = _blocks(data, final_partial=True)
    assert _all_lines(blocks) == [(1, 0, "one"), (2, 4, "two"), (3, 8, "thr")]
    assert blocks[-1][1] == len(data)  # everything consumed
    assert sum(b.read for b, _ in blocks) == 3


def test_final_partial_false_leaves_the_unterminated_line_and_resumes_at_its_start() -> None:
    data = b"one\ntwo\nthr"
    blocks = _blocks(data, final_partial=False)
    assert _all_lines(blocks) == [(1, 0, "one"), (2, 4, "two")]
    # The checkpoint is the offset just past the last newline consumed (8), which is
    # the *first byte* of the unfinished line, not the offset of the last line read (4).
    resume = blocks[-1][1]
    assert resume == 8
    # The writer finishes the line; a reader resuming at the checkpoint re-reads it whole.
    grown = data + b"ee\nfour\n"
    stream = io.BytesIO(grown)
    stream.seek(resume)
    more = list(iter_blocks(stream, source="src.log", start_offset=resume, start_line=3))
    assert _all_lines(more) == [(3, 8, "three"), (4, 14, "four")]
    assert more[-1][1] == len(grown)


def test_final_partial_false_with_no_newline_at_all_yields_nothing() -> None:
    assert _blocks(b"no newline yet", final_partial=False) == []


def test_resume_offset_with_small_blocks_is_always_just_past_a_newline() -> None:
    data = b"".join(f"line number {i}\n".encode() for i in range(50))
    blocks = _blocks(data, block_bytes=32)
    ends = [end for _, end in blocks]
    assert ends == sorted(ends)
    assert ends[-1] == len(data)
    for end in ends:
        assert data[end - 1 : end] == b"\n"
    assert [n for n, _, _ in _all_lines(blocks)] == list(range(1, 51))


# --- quarantine reasons, positions and raw text -----------------------------------------


def test_bad_lines_are_quarantined_with_reason_line_and_offset() -> None:
    data = b"".join(
        [
            b"good one\n",  # 1 @0
            b"\n",  # 2 @9 blank
            b"has \x00 nul\n",  # 3 @10 nul
            b"caf\xe9 latin1\n",  # 4 @20 invalid utf-8 at byte 3
            b"x" * 20 + b"\n",  # 5 @32 too long (max 16)
            b"good two \xc3\xa9\n",  # 6 @53 valid UTF-8
        ]
    )
    block = _split(data, max_line_bytes=16)
    assert block.lines.to_pylist() == ["good one", "good two é"]
    assert block.line_no.to_pylist() == [1, 6]
    assert block.offset.to_pylist() == [0, 53]
    got = {r["source_line"]: r for r in _rejects(block)}
    assert {n: (r["reason"], r["source_offset"]) for n, r in got.items()} == {
        2: ("blank", 9),
        3: ("nul_byte", 10),
        4: ("invalid_utf8", 20),
        5: ("line_too_long", 32),
    }
    assert "byte 3" in got[4]["detail"]
    assert got[4]["raw"] == "caf\\xe9 latin1"  # invalid bytes shown as escapes
    assert got[3]["raw"] == "has \\x00 nul"  # NUL shown escaped, never stored raw
    assert "16" in got[5]["detail"]
    assert got[5]["raw_length"] == 20
    assert block.read == 6 == len(block) + len(block.rejects)


def test_a_line_with_several_defects_is_quarantined_once() -> None:
    block = _split(b"\x00\xff" + b"z" * 40 + b"\n", max_line_bytes=16)
    assert [r["reason"] for r in _rejects(block)] == ["line_too_long"]
    assert block.read == 1


def test_truncated_multibyte_sequence_at_end_of_line_is_invalid_utf8() -> None:
    block = _split(b"ok\nab\xe2\x82\r\nok\n")
    [rej] = _rejects(block)
    assert (rej["reason"], rej["source_line"], rej["source_offset"]) == ("invalid_utf8", 2, 3)
    assert "byte 2" in rej["detail"]
    assert block.lines.to_pylist() == ["ok", "ok"]


def test_too_long_line_inside_a_block_has_raw_cut_at_the_limit() -> None:
    long = b"y" * (RAW_LIMIT + 500)
    block = _split(b"a\n" + long + b"\nb\n", max_line_bytes=100)
    [rej] = _rejects(block)
    assert rej["reason"] == "line_too_long"
    assert rej["raw"] == "y" * RAW_LIMIT
    assert rej["raw_length"] == len(long)
    assert block.line_no.to_pylist() == [1, 3]
    assert block.offset.to_pylist() == [0, 2 + len(long) + 1]


def test_line_longer_than_the_block_is_quarantined_once_and_positions_stay_right() -> None:
    long = b"L" * 10_000
    data = b"first\n" + long + b"\nafter\nlast\n"
    blocks = _blocks(data, block_bytes=256, max_line_bytes=128)
    rejects = _all_rejects(blocks)
    assert len(rejects) == 1
    [rej] = rejects
    assert rej["reason"] == "line_too_long"
    assert (rej["source_line"], rej["source_offset"]) == (2, 6)
    assert rej["raw_length"] == 10_000
    # The raw text is a head of the line, cut: never 10,000 characters.
    assert 0 < len(rej["raw"]) <= RAW_LIMIT
    assert rej["raw"] == "L" * len(rej["raw"])
    assert _all_lines(blocks) == [(1, 0, "first"), (3, 10_007, "after"), (4, 10_013, "last")]
    assert sum(b.read for b, _ in blocks) == 4
    assert blocks[-1][1] == len(data)


def test_oversize_last_line_without_newline() -> None:
    data = b"first\n" + b"M" * 5_000
    blocks = _blocks(data, block_bytes=256, max_line_bytes=128, final_partial=True)
    [rej] = _all_rejects(blocks)
    assert (rej["reason"], rej["source_line"], rej["source_offset"]) == ("line_too_long", 2, 6)
    assert rej["raw_length"] == 5_000
    assert blocks[-1][1] == len(data)
    assert sum(b.read for b, _ in blocks) == 2

    tail = _blocks(data, block_bytes=256, max_line_bytes=128, final_partial=False)
    assert _all_rejects(tail) == []
    assert _all_lines(tail) == [(1, 0, "first")]
    assert tail[-1][1] == 6  # resume at the start of the unfinished line


# --- reconciliation: every line is read exactly once --------------------------------------

_PIECES = st.sampled_from(
    [
        *(b"a", b"GET / 200", b" ", b"\n", b"\n", b"\r", b"\r\n", b'"', b"["),
        *(b"\x00", b"\xff", b"\xc3\xa9", b"\xc3", b"\xe2\x82\xac", b"x" * 7),
    ]
)
_DATA = st.lists(_PIECES, max_size=80).map(b"".join)


def _positions(data: bytes) -> list[tuple[int, int]]:
    """(line number, offset of the line's first byte) of every line in ``data``."""
    starts = [0] + [i + 1 for i, byte in enumerate(data) if byte == 10]
    if starts[-1] == len(data):  # ends with a newline (or is empty): no partial line
        starts.pop()
    return list(enumerate(starts, start=1))


def _expected(data: bytes, max_line_bytes: int) -> tuple[list[tuple[int, int, str]], list[int]]:
    """A plain-Python model of the splitting rules: (clean lines, rejected line numbers)."""
    clean, rejected = [], []
    for (n, start), raw in zip(_positions(data), data.split(b"\n"), strict=False):
        text = raw[:-1] if raw.endswith(b"\r") else raw
        try:
            decoded = text.decode("utf-8")
        except UnicodeDecodeError:
            decoded = ""
        if decoded and b"\x00" not in text and len(text) <= max_line_bytes:
            clean.append((n, start, decoded))
        else:
            rejected.append(n)
    return clean, rejected


def _block_lines(block: LineBlock) -> list[tuple[int, int, str]]:
    return list(
        zip(
            block.line_no.to_pylist(),
            block.offset.to_pylist(),
            block.lines.to_pylist(),
            strict=True,
        )
    )


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_DATA, block_bytes=st.integers(1, 64), max_line_bytes=st.integers(1, 48))
def test_reconciliation_every_line_read_once(
    data: bytes, block_bytes: int, max_line_bytes: int
) -> None:
    """Whatever the read and line sizes: sum(read) == lines, each line once, right place."""
    blocks = _blocks(data, block_bytes=block_bytes, max_line_bytes=max_line_bytes)
    n_lines = data.count(b"\n") + (1 if data and not data.endswith(b"\n") else 0)
    assert sum(b.read for b, _ in blocks) == n_lines
    for block, _ in blocks:
        assert block.read == len(block) + len(block.rejects)
    seen = [(n, o) for n, o, _ in _all_lines(blocks)]
    seen += [(r["source_line"], r["source_offset"]) for r in _all_rejects(blocks)]
    assert sorted(seen) == _positions(data)
    if blocks:
        assert blocks[-1][1] == len(data)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_DATA, max_line_bytes=st.integers(1, 48), extra=st.integers(1, 32))
def test_iter_blocks_matches_the_model(data: bytes, max_line_bytes: int, extra: int) -> None:
    """With reads larger than the line limit (as the defaults are), which lines are kept
    and what they contain follows the model exactly."""
    blocks = _blocks(data, block_bytes=max_line_bytes + extra, max_line_bytes=max_line_bytes)
    clean, rejected = _expected(data, max_line_bytes)
    assert _all_lines(blocks) == clean
    assert sorted(r["source_line"] for r in _all_rejects(blocks)) == rejected


@settings(max_examples=200, deadline=None)
@given(data=_DATA, max_line_bytes=st.integers(1, 48))
def test_split_block_matches_the_model(data: bytes, max_line_bytes: int) -> None:
    block = _split(data, max_line_bytes=max_line_bytes)
    clean, rejected = _expected(data, max_line_bytes)
    assert _block_lines(block) == clean
    assert sorted(r["source_line"] for r in _rejects(block)) == rejected
    assert block.read == len(clean) + len(rejected)


@pytest.mark.parametrize("block_bytes", [3, 4, 64])
def test_crlf_line_at_the_size_limit_does_not_depend_on_read_size(block_bytes: int) -> None:
    """The limit applies to the line without its CR (as in split_block), however the
    stream happens to be cut into reads."""
    data = b"x" * 8 + b"\r\nok\n"
    blocks = _blocks(data, block_bytes=block_bytes, max_line_bytes=8)
    assert _all_rejects(blocks) == []
    assert _all_lines(blocks) == [(1, 0, "x" * 8), (2, 10, "ok")]


# --- raw blocks: the importer's zero-copy reads ---------------------------------------


class _ReadOnly:
    """A stream without ``readinto``: iter_raw_blocks falls back to read + concatenate."""

    def __init__(self, data: bytes) -> None:
        self._io = io.BytesIO(data)

    def read(self, n: int = -1) -> bytes:
        return self._io.read(n)


def _raw_lines(stream: object, **kw: int) -> list[tuple[object, ...]]:
    out: list[tuple[object, ...]] = []
    for block, end in iter_raw_blocks(stream, source="src.log", **kw):  # type: ignore[arg-type]
        lb = block.split() if isinstance(block, RawBlock) else block
        out.append((end, block.read, tuple(_block_lines(lb)), tuple(map(str, _rejects(lb)))))
    return out


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_DATA, block_bytes=st.integers(1, 64), max_line_bytes=st.integers(1, 48))
def test_readinto_and_read_streams_give_the_same_blocks(
    data: bytes, block_bytes: int, max_line_bytes: int
) -> None:
    """Files (readinto into pooled buffers) and plain read() streams cut the same blocks."""
    kw = {"block_bytes": block_bytes, "max_line_bytes": max_line_bytes}
    assert _raw_lines(io.BytesIO(data), **kw) == _raw_lines(_ReadOnly(data), **kw)


@given(data=_DATA)
def test_count_lines_agrees_with_split_for_bytes_and_views(data: bytes) -> None:
    n = _split(data).read
    assert count_lines(data) == n
    assert count_lines(memoryview(data)) == n


@pytest.mark.parametrize("native", ["1", "0"], ids=["numpy", "native"])
def test_count_lines_on_a_view_larger_than_one_counting_slice(
    native: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("LOGLAMBDA_NO_NATIVE", native)
    data = b"x" * ((1 << 20) - 1) + b"\n" + b"y\n" * 1000 + b"tail"
    assert count_lines(memoryview(data)) == 1002 == count_lines(data)
    # Every alignment and tail length of the SIMD loop, and runs past 255 rounds.
    for start in range(17):
        for end in (start, start + 15, start + 16, start + 17, 4096 + 7, 70_001):
            view = memoryview(data)[(1 << 20) - 40 + start : (1 << 20) - 40 + end]
            assert count_lines(view) == count_lines(bytes(view))


def test_native_byte_count_is_the_scanners_own() -> None:
    native = native_count()
    if native is None:
        pytest.skip("native scanner not built")
    assert native(b"\n\n\n", 10) == 3 and native(b"", 10) == 0
    with pytest.raises(ValueError, match=r"0\.\.255"):
        native(b"x", 256)


def test_split_block_places_gathered_lines_at_their_own_positions() -> None:
    gathered = b"GET /a\n\nbad\xff\n"
    block = split_block(
        gathered,
        source="src.log",
        base_offset=0,
        base_line=1,
        positions=(np.array([7, 9, 12]), np.array([700, 900, 1200])),
    )
    assert block.line_no.to_pylist() == [7]
    assert block.offset.to_pylist() == [700]
    assert [(r["source_line"], r["source_offset"], r["reason"]) for r in _rejects(block)] == [
        (12, 1200, "invalid_utf8"),
        (9, 900, "blank"),
    ]


def test_split_block_refuses_positions_for_the_wrong_number_of_lines() -> None:
    with pytest.raises(ValueError, match="positions for 1 lines"):
        split_block(
            b"a\nb\n",
            source="s",
            base_offset=0,
            base_line=1,
            positions=(np.array([1]), np.array([0])),
        )


@settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=_DATA, block_bytes=st.integers(1, 64), max_line_bytes=st.integers(1, 48))
def test_reused_block_buffers_give_the_same_lines(
    data: bytes, block_bytes: int, max_line_bytes: int
) -> None:
    """Handing each buffer back as soon as its block is split (the importer's order)
    never changes a line: the reader copies the partial line out before yielding."""
    kw = {"block_bytes": block_bytes, "max_line_bytes": max_line_bytes}
    pool = BlockBuffers()
    reused = []
    for block, end in iter_raw_blocks(io.BytesIO(data), source="src.log", buffers=pool, **kw):
        lb = block.split() if isinstance(block, RawBlock) else block
        reused.append((end, block.read, tuple(_block_lines(lb)), tuple(map(str, _rejects(lb)))))
        pool.give(block)
    assert reused == _raw_lines(io.BytesIO(data), **kw)
