"""The native access-log scanner must never change what a block becomes.

Contract: for every ``RawBlock`` ``raw`` and each of ``COMBINED``, ``COMMON`` and
``VCOMBINED``, ``parser.parse_raw(raw)`` equals ``parser.parse(raw.split())``: the same
``kind``, ``events`` tables equal (schema, row order, values, nulls, even the sign of a
zero latency) and ``rejects.to_table(fmt)`` equal (same rows, same order). Lines the
native scanner does not fully accept go to the reference path, so the scanner may
decline anything, but what it accepts it must accept exactly as the reference would.
"""

from __future__ import annotations

import importlib
import os
import random
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from loglambda.core.generate.traffic import TrafficSpec, write_traffic
from loglambda.core.lines import DEFAULT_MAX_LINE_BYTES, RawBlock, count_lines, iter_raw_blocks
from loglambda.core.parsers.access import COMBINED, COMMON, VCOMBINED, AccessLogParser
from loglambda.core.parsers.base import Parsed

pytestmark = pytest.mark.unit

PARSERS = [COMBINED, COMMON, VCOMBINED]
SHARED_DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"


def raw_block(
    data: bytes,
    *,
    base_offset: int = 0,
    base_line: int = 1,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> RawBlock:
    return RawBlock("t.log", data, base_offset, base_line, count_lines(data), max_line_bytes)


def _first_diff(got: list[dict[str, Any]], want: list[dict[str, Any]]) -> str:
    if len(got) != len(want):
        lines = [(r.get("source_line"), r.get("reason")) for r in got]
        ref = [(r.get("source_line"), r.get("reason")) for r in want]
        return f"{len(got)} rows, reference {len(want)}:\n  got  {lines}\n  want {ref}"
    for i, (g, w) in enumerate(zip(got, want, strict=True)):
        if g != w:
            cols = {k: (g[k], w.get(k)) for k in g if g[k] != w.get(k)}
            return f"row {i} differs (column: (parse_raw, reference)): {cols}\n  want {w}"
    return "rows compare equal as Python values (type or chunk metadata differs)"


def assert_same(parser: AccessLogParser, raw: RawBlock) -> Parsed:
    """``parse_raw(raw)`` is ``parse(raw.split())``; returns the native result."""
    want = parser.parse(raw.split())
    got = parser.parse_raw(raw)
    where = f"{parser.name} parser, data={raw.data!r}"
    assert got.kind == want.kind, where
    assert got.events.schema == want.events.schema, f"{where}\n{got.events.schema}"
    if not got.events.equals(want.events):
        diff = _first_diff(got.events.to_pylist(), want.events.to_pylist())
        pytest.fail(f"events differ ({where}):\n{diff}")
    # Table.equals says -0.0 == 0.0; the contract is the same values, sign included.
    signs = [repr(v) for v in got.events.column("latency_ms").to_pylist()]
    assert signs == [repr(v) for v in want.events.column("latency_ms").to_pylist()], where
    got_rej, want_rej = got.rejects.to_table(parser.name), want.rejects.to_table(parser.name)
    if not got_rej.equals(want_rej):
        pytest.fail(
            f"rejects differ ({where}):\n{_first_diff(got_rej.to_pylist(), want_rej.to_pylist())}"
        )
    return got


# --- the grammar: fields of near-valid lines, each with good and odd values ---------

# fmt: off
FIELDS: dict[str, tuple[tuple[str, ...], tuple[str, ...]]] = {
    "host": (("example.com", "example.com:443", "www.example.com:80", "-"),
             ("a:b:80", ":80", "host:", "host:port", "h:1:2", "日本.jp", '"q"')),
    "ip": (("127.0.0.1", "2001:db8::1", "192.0.2.10", "::1", "-"),
           ('1.2.3.4"', "[::1]", "a[b", '"', "[", "]", "é")),
    "ident": (("-", "frank", "user@example.com"), ("", "a]b", "[x", '"')),
    "time": (
        ("10/Oct/2000:13:55:36 -0700", "29/Feb/2024:00:00:00 +0000", "01/Jan/1970:00:00:00 +0000",
         "31/Dec/1969:23:59:59 +1400", "19/Jan/2038:03:14:08 -1200", "17/May/2015:10:05:03 +2359",
         "31/Dec/9999:23:59:59 +0000"),
        ("29/Feb/2023:12:00:00 +0000", "29/Feb/1900:12:00:00 +0000", "29/Feb/2000:12:00:00 +0000",
         "31/Apr/2024:12:00:00 +0000", "00/Jan/2024:12:00:00 +0000", "01/Jan/2024:24:00:00 +0000",
         "01/Jan/2024:23:60:00 +0000", "01/Jan/2024:23:59:60 +0000", "10/oct/2000:13:55:36 -0700",
         "10/OCT/2000:13:55:36 -0700", "10/October/2000:13:55:36 -0700",
         "01/Jan/0999:00:00:00 +0000", "01/Jan/2024:00:00:00 +9999", "01/Jan/2024:00:00:00",
         "1/Jan/2024:0:0:0 +0000", "01/Jan/2024:00:00:00  +0000", "01/Jan/2024 00:00:00 +0000",
         "", "-", "not-a-date"),
    ),
    "request": (
        ("GET /a?b=c HTTP/1.1", "POST /login HTTP/1.0", "get /x HTTP/2.0", "GET /a",
         "GET /a? HTTP/1.1", "GET /?x?y HTTP/1.1", "CONNECT host:443 HTTP/1.1"),
        ("", "-", "garbage with spaces", "GET  /a HTTP/1.1", "GET /a HTTP/1", "GET /a HTTPS/1.1x",
         "GET /café HTTP/1.1", "\\x16\\x03\\x01", " GET /a HTTP/1.1", "GET /a HTTP/1.1 ", "GET"),
    ),
    "status": (("200", "100", "304", "599"), ("099", "600", "20", "2000", "abc", "-", "")),
    "bytes": (("0", "-", "123", "007", "123456789012345678"),
              ("1234567890123456789", "-5", "1.5", "", "+5")),
    "referrer": (("-", "", "http://x/y?z", "https://example.com/"), ("a b c", "é", "\\\\")),
    "agent": (
        ("Mozilla/5.0 (X11; Linux x86_64) Firefox/125.0", "curl/8.5.0", "", "-", "A [en] (B; C)"),
        ('say \\"hi\\"', "(", " leading", "trailing ", "日本 UA", "back\\\\slash"),
    ),
    # "" means no request-time field at all.
    "rt": (("", "0.123", "123", "0", "0.000", "123456"),
           ("-1", "1.", ".5", "1e3", "-", "12345678901234567", "3.14159265358979323846", "-0",
            "-0.0", "123456789012345", "1234567890123456", "NaN", "inf", "1,5")),
}

# day, month, year, hour, minute, second, zone: combined freely into odd timestamps.
_TIME_PARTS: tuple[tuple[str, ...], ...] = (
    ("01", "1", "00", "28", "29", "30", "31", "32"),
    ("Jan", "Feb", "Apr", "Oct", "oct", "OCT", "October", "Xyz", "Sept"),
    ("1969", "1970", "2000", "2023", "2024", "2038", "9999", "0999", "999", "10000"),
    ("00", "07", "23", "24"),
    ("00", "59", "60"),
    ("00", "59", "60", "61"),
    ("+0000", "-0700", "+1400", "-1200", "+2359", "+9999", "+0060", "-0000", "0000", "+00:00",
     "Z", "+000", "+00000", ""),
)
# fmt: on


@st.composite
def built_times(draw: st.DrawFn) -> str:
    d, mon, y, h, m, s, tz = (draw(st.sampled_from(p)) for p in _TIME_PARTS)
    return f"{d}/{mon}/{y}:{h}:{m}:{s} {tz}".rstrip()


SHAPES = ("combined", "common", "vcombined")


@st.composite
def access_lines(draw: st.DrawFn, block_shape: str | None = None) -> bytes:
    """One line: usually of the block's shape, so its parser's scanner gets to work."""
    if block_shape is None or draw(st.integers(0, 9)) == 0:
        block_shape = draw(st.sampled_from(SHAPES))
    shape = block_shape
    mode = draw(st.sampled_from(("clean", "clean", "one_odd", "wild")))
    odd_field = draw(st.sampled_from(sorted(FIELDS)))

    def pick(name: str) -> str:
        good, odd = FIELDS[name]
        if mode == "clean" or (mode == "one_odd" and name != odd_field):
            return draw(st.sampled_from(good))
        if name == "time" and draw(st.booleans()):
            return draw(built_times())
        return draw(st.sampled_from(odd if mode == "one_odd" else good + odd))

    parts = [pick("host")] if shape == "vcombined" else []
    parts += [pick("ip"), pick("ident"), pick("ident"), f"[{pick('time')}]"]
    parts += [f'"{pick("request")}"', pick("status"), pick("bytes")]
    if shape != "common":
        parts += [f'"{pick("referrer")}"', f'"{pick("agent")}"']
    rt = pick("rt")
    line = " ".join([*parts, rt] if rt else parts).encode()
    # Mostly unmutated, so that many lines are ones the native scanner takes.
    k = draw(st.integers(0, 9))
    n_mutations = 0 if k < 6 else 1 if k < 9 else 2
    for _ in range(n_mutations):
        line = mutate(draw, line, draw(st.sampled_from(MUTATIONS)))
    return line


# fmt: off
MUTATIONS = ("escaped_quote", "tab", "nul", "e_acute", "nihon", "invalid_byte", "double_space",
             "leading_space", "trailing_space", "truncate", "random_bytes", "cr", "backslash",
             "drop_last_quote")
# fmt: on


def mutate(draw: st.DrawFn, line: bytes, kind: str) -> bytes:
    pos = draw(st.integers(0, len(line)))
    quotes = [i for i, c in enumerate(line) if c == ord('"')]
    spaces = [i for i, c in enumerate(line) if c == ord(" ")]
    insert = {"nul": b"\x00", "e_acute": "é".encode(), "nihon": "日本".encode()}
    insert |= {"invalid_byte": b"\xff", "cr": b"\r", "backslash": b"\\"}
    if kind in insert:
        return line[:pos] + insert[kind] + line[pos:]
    if kind == "escaped_quote":  # just inside a quoted field when there is one
        at = draw(st.sampled_from(quotes)) + 1 if quotes else pos
        return line[:at] + b'\\"' + line[at:]
    if kind in ("tab", "double_space") and spaces:
        at = draw(st.sampled_from(spaces))
        return line[:at] + (b"\t" if kind == "tab" else b"  ") + line[at + 1 :]
    if kind == "leading_space":
        return b" " + line
    if kind == "trailing_space":
        return line + draw(st.sampled_from((b" ", b"  ", b"\t")))
    if kind == "truncate":
        return line[:pos]
    if kind == "random_bytes":
        return line[:pos] + draw(st.binary(min_size=1, max_size=4)) + line[pos:]
    if kind == "drop_last_quote" and quotes:
        return line[: quotes[-1]] + line[quotes[-1] + 1 :]
    return line


@st.composite
def block_lines(draw: st.DrawFn, shape: str) -> bytes:
    if draw(st.integers(0, 9)) == 0:
        return draw(st.sampled_from((b"", b" ", b"\t", b"\r")))
    return draw(access_lines(shape))


@st.composite
def max_line_bytes(draw: st.DrawFn) -> int:
    """Usually the default; sometimes below a typical line's ~130 bytes."""
    k = draw(st.integers(0, 9))
    return DEFAULT_MAX_LINE_BYTES if k < 7 else 80 if k == 7 else draw(st.integers(1, 400))


@st.composite
def raw_blocks(draw: st.DrawFn) -> RawBlock:
    shape = draw(st.sampled_from(SHAPES))
    lines = draw(st.lists(block_lines(shape), min_size=1, max_size=10))
    endings = draw(st.sampled_from(((b"\n",), (b"\r\n",), (b"\n", b"\r\n"))))
    data = b"".join(line + draw(st.sampled_from(endings)) for line in lines)
    if draw(st.booleans()):  # the last line of a source may lack its newline
        data = data.removesuffix(b"\n").removesuffix(b"\r")
    return raw_block(
        data,
        base_offset=draw(st.integers(0, 1 << 40)),
        base_line=draw(st.integers(1, 1 << 40)),
        max_line_bytes=draw(max_line_bytes()),
    )


VALID = (
    b'127.0.0.1 - frank [10/Oct/2000:13:55:36 -0700] "GET /a?b=c HTTP/1.1" 200 2326 '
    b'"http://x/y?z" "Mozilla/5.0 (X11; Linux x86_64)"'
)
VALID_V = b"example.com:443 " + VALID + b" 0.004"


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@settings(
    max_examples=250,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(raw=raw_blocks())
@example(raw=raw_block(VALID + b"\n" + VALID_V + b"\n"))
@example(raw=raw_block(VALID.replace(b"10/Oct/2000", b"29/Feb/2024") + b"\n"))
@example(raw=raw_block(VALID.replace(b"10/Oct/2000", b"29/Feb/2023") + b"\n"))
def test_parse_raw_matches_reference(parser: AccessLogParser, raw: RawBlock) -> None:
    assert_same(parser, raw)


# --- readable examples ---------------------------------------------------------------

LINE = '203.0.113.9 - - [01/May/2024:12:00:00 +0000] "GET /slow HTTP/1.1" 200 15 "-" "Wget/1.21"'


def only_event(parser: AccessLogParser, data: bytes) -> dict[str, Any]:
    parsed = assert_same(parser, raw_block(data))
    assert len(parsed.rejects) == 0, parsed.rejects.to_table(parser.name).to_pylist()
    [row] = parsed.events.to_pylist()
    return row


def test_nginx_request_time_in_seconds() -> None:
    assert only_event(COMBINED, f"{LINE} 0.123\n".encode())["latency_ms"] == 123.0


def test_apache_request_time_in_microseconds() -> None:
    assert only_event(COMBINED, f"{LINE} 123456\n".encode())["latency_ms"] == 123.456


def test_escaped_quote_in_user_agent() -> None:
    line = LINE.replace("Wget/1.21", 'Wget \\"quoted\\" (x)')
    assert only_event(COMBINED, line.encode() + b"\n")["user_agent"] == 'Wget \\"quoted\\" (x)'


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_crlf_line_endings(parser: AccessLogParser) -> None:
    data = f"{LINE}\r\n{LINE} 0.5\r\nexample.com {LINE}\r\n".encode()
    assert_same(parser, raw_block(data, base_offset=10, base_line=3))


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_last_line_without_newline(parser: AccessLogParser) -> None:
    assert_same(parser, raw_block(f"{LINE}\n{LINE} 0.2".encode()))
    assert_same(parser, raw_block(f"{LINE}\r\n{LINE}\r".encode()))


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
def test_empty_block(parser: AccessLogParser) -> None:
    assert assert_same(parser, raw_block(b"")).events.num_rows == 0


def test_blank_lines_rejected_at_absolute_positions() -> None:
    line = LINE.encode()
    data = line + b"\n\n" + line + b"\r\n\r\n" + line + b"\n"
    parsed = assert_same(COMBINED, raw_block(data, base_offset=5000, base_line=100))
    rows = parsed.rejects.to_table("combined").to_pylist()
    blanks = [(r["reason"], r["source_line"], r["source_offset"]) for r in rows]
    second = 5000 + 2 * len(line) + 2
    assert blanks == [("blank", 101, 5000 + len(line) + 1), ("blank", 103, second + 2)]
    assert parsed.events.column("source_line").to_pylist() == [100, 102, 104]


def test_line_over_max_line_bytes() -> None:
    line = LINE.encode()
    limit = len(line)
    data = line + b"\r\n" + line + b"x\n" + line + b"\n"  # the \r of CRLF is not counted
    parsed = assert_same(COMBINED, raw_block(data, base_line=7, max_line_bytes=limit))
    rows = parsed.rejects.to_table("combined").to_pylist()
    assert [(r["reason"], r["source_line"]) for r in rows] == [("line_too_long", 8)]
    assert parsed.events.column("source_line").to_pylist() == [7, 9]


@pytest.mark.parametrize(
    ("bad", "reason"),
    [(b"\xff", "invalid_utf8"), (b"\xc3", "invalid_utf8"), (b"\x00", "nul_byte")],
)
def test_bytes_no_parser_sees(bad: bytes, reason: str) -> None:
    line = LINE.encode()
    data = line + b"\n" + line.replace(b"Wget", b"Wg" + bad) + b"\n" + line + b"\n"
    parsed = assert_same(COMBINED, raw_block(data, base_offset=3, base_line=2))
    rows = parsed.rejects.to_table("combined").to_pylist()
    assert [(r["reason"], r["source_line"], r["source_offset"]) for r in rows] == [
        (reason, 3, 3 + len(line) + 1)
    ]


def test_fast_and_reference_lines_keep_input_order() -> None:
    """Lines the scanner takes and lines it hands back interleave in input order."""
    odd = [
        LINE.replace("Wget/1.21", 'x \\"y\\"'),  # escaped quote
        LINE.replace("/slow", "/café"),  # non-ASCII
        LINE.replace("+0000", "+0530"),  # another time zone
        LINE.replace("GET /slow HTTP/1.1", "\\x16\\x03"),  # scanner bytes
        LINE.replace('"-" "Wget/1.21"', '"-" "Wget/1.21'),  # unterminated user agent
        LINE.replace("200", "999"),  # rejected
    ]
    lines = [line for o in odd for line in (LINE, o)] + [LINE]
    data = "".join(line + "\n" for line in lines).encode()
    parsed = assert_same(COMBINED, raw_block(data, base_line=1))
    got = parsed.events.column("source_line").to_pylist()
    assert got == sorted(got) and len(set(got)) == len(got)
    assert parsed.events.num_rows + len(parsed.rejects) == len(lines)


CASES: dict[str, str] = {
    "leap_day": LINE.replace("01/May/2024", "29/Feb/2024"),
    "not_leap_day": LINE.replace("01/May/2024", "29/Feb/2023"),
    "april_31": LINE.replace("01/May/2024", "31/Apr/2024"),
    "day_00": LINE.replace("01/May/2024", "00/May/2024"),
    "hour_24": LINE.replace("12:00:00", "24:00:00"),
    "second_60": LINE.replace("12:00:00", "23:59:60"),
    "month_lower": LINE.replace("May", "may"),
    "month_upper": LINE.replace("May", "MAY"),
    "month_long": LINE.replace("May", "October"),
    "tz_plus_1400": LINE.replace("+0000", "+1400"),
    "tz_plus_9999": LINE.replace("+0000", "+9999"),
    "tz_colon": LINE.replace("+0000", "+00:00"),
    "year_1969": LINE.replace("2024", "1969"),
    "year_0999": LINE.replace("2024", "0999"),
    "status_099": LINE.replace(" 200 ", " 099 "),
    "status_600": LINE.replace(" 200 ", " 600 "),
    "bytes_19_digits": LINE.replace(" 15 ", " 1234567890123456789 "),
    "bytes_negative": LINE.replace(" 15 ", " -5 "),
    "rt_17_digits": LINE + " 12345678901234567",
    "rt_many_decimals": LINE + " 3.14159265358979323846",
    "rt_negative_zero": LINE + " -0.0",
    "rt_exponent": LINE + " 1e3",
    "request_double_space": LINE.replace("GET /slow", "GET  /slow"),
    "request_empty": LINE.replace("GET /slow HTTP/1.1", ""),
    "request_no_protocol": LINE.replace("GET /slow HTTP/1.1", "GET /slow"),
    "request_query_twice": LINE.replace("/slow", "/?x?y"),
    "tab_separator": LINE.replace(" 200 ", "\t200 "),
    "trailing_spaces": LINE + "   ",
    "vhost_port": "example.com:443 " + LINE,
    "vhost_two_colons": "a:b:80 " + LINE,
    "vhost_empty_name": ":80 " + LINE,
    "common_shape": LINE.removesuffix(' "-" "Wget/1.21"'),
}


@pytest.mark.parametrize("parser", PARSERS, ids=lambda p: p.name)
@pytest.mark.parametrize("line", CASES.values(), ids=CASES.keys())
def test_edge_line(parser: AccessLogParser, line: str) -> None:
    assert_same(parser, raw_block(line.encode() + b"\n", base_offset=77, base_line=9))


# --- real and generated files --------------------------------------------------------


def assert_file_same(parser: AccessLogParser, path: Path) -> int:
    """Every block of ``path`` parses the same both ways; returns the events seen."""
    events = 0
    with path.open("rb") as stream:
        for block, _end in iter_raw_blocks(stream, source=path.name, block_bytes=256 << 10):
            if isinstance(block, RawBlock):
                events += assert_same(parser, block).events.num_rows
    return events


def test_shared_sample_log() -> None:
    path = SHARED_DATA / "apache_combined_10k.log"
    if not path.is_file():
        pytest.skip(f"shared sample log not found at {path}")
    assert assert_file_same(COMBINED, path) > 9_000


def test_generated_log_with_malformed_lines(tmp_path: Path) -> None:
    path = tmp_path / "gen.log"
    report = write_traffic(TrafficSpec(lines=20_000, seed=7, malformed_share=0.01), path)
    assert report.malformed > 0
    assert assert_file_same(COMBINED, path) == 20_000 - report.malformed


# --- the extension itself ------------------------------------------------------------


def test_native_extension_is_built() -> None:
    if os.environ.get("LOGLAMBDA_NO_NATIVE"):
        pytest.skip("LOGLAMBDA_NO_NATIVE is set: the native scanner is disabled on purpose")
    access_fast = importlib.import_module("loglambda.core.parsers.access_fast")
    assert access_fast.native_available()


def test_without_native_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """With the switch the lead provides (LOGLAMBDA_NO_NATIVE) every block takes the
    reference path, and still gives the same result."""
    access_fast = importlib.import_module("loglambda.core.parsers.access_fast")
    monkeypatch.setenv("LOGLAMBDA_NO_NATIVE", "1")
    data = f"{LINE} 0.1\n\n{LINE.replace('200', '999')}\r\n{LINE}".encode()
    raw = raw_block(data, base_offset=9, base_line=4)
    assert not access_fast.native_available()
    assert access_fast.scan(raw, "combined") is None
    for parser in PARSERS:
        assert_same(parser, raw)


def test_request_times_round_exactly_as_the_reference() -> None:
    """The scanner converts short decimals itself (Clinger's fast path) and long ones
    with strtod; both must give the reference's double, bit for bit."""
    rng = random.Random(20261128)
    times = [
        f"{rng.randrange(10**i)}.{rng.randrange(10**j):0{j}d}"
        for i in range(1, 9)
        for j in range(1, 17)
        for _ in range(6)
    ]
    times += [str(rng.randrange(10**k)) for k in range(1, 16) for _ in range(20)]
    times += ["0.1", "0.3", "2.675", "0.000", "900719925474099", "123456789012.345"]
    lines = [VALID + b" " + t.encode() for t in times]
    got = assert_same(COMBINED, raw_block(b"\n".join(lines) + b"\n"))
    assert got.events.num_rows == len(times)
    for t, ms in zip(times, got.events.column("latency_ms").to_pylist(), strict=True):
        want = float(t) * 1000.0 if "." in t else int(t) / 1000.0
        assert ms == want, t


def test_an_extension_from_another_version_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """A stale build would write past the buffers this module allocates: refuse it."""
    access_fast = importlib.import_module("loglambda.core.parsers.access_fast")
    if not access_fast.native_available():
        pytest.skip("native scanner not built")

    class Stale:
        N_STR = 7
        COPY_SLACK = 32
        scan = staticmethod(lambda *args: (0, 0, 0))

    monkeypatch.setattr(access_fast, "_native", Stale())
    with pytest.raises(RuntimeError, match="reinstall loglambda"):
        access_fast.scan(raw_block(VALID + b"\n"), "combined")


@pytest.mark.parametrize("byte", [b"\x01", b"\x1f", b"\x7f", b"\x80", b"\xe9", b"\\", b"\t"])
def test_an_odd_byte_anywhere_in_a_line_goes_to_the_reference(byte: bytes) -> None:
    """The printable-ASCII check runs 16 bytes at a time: every position of a line,
    the 16-byte rounds and the tail after them, must see the byte."""
    line = VALID
    data = b"".join(line[:i] + byte + line[i:] + b"\n" for i in range(len(line) + 1))
    assert_same(COMBINED, raw_block(data))
    # Multi-byte UTF-8 too: é is two bytes at every position.
    accented = b"".join(line[:i] + "é".encode() + line[i:] + b"\n" for i in range(len(line)))
    assert_same(COMBINED, raw_block(accented))
