"""NDJSON events -> Arrow: the documented rules, and the fast path equal to the row path.

Why the equivalence test matters: the vectorised path is what runs on every clean
request, the row path is what the rules are written against. Hypothesis feeds both the
same bodies (ties in float rounding, nanosecond halves, odd dates, wrong types) and
requires identical events and identical quarantine rows.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loglambda.core.lines import split_block
from loglambda.core.schemas import Kind, schema_for
from loglambda.ingest.envelope import envelope_lines
from loglambda.ingest.events_json import events_from_block, parse_events

pytestmark = pytest.mark.unit

GOOD = {"ts": "2026-11-01T10:00:00.25Z", "client_ip": "10.0.0.1", "status": 200}


def body(*records: Any) -> bytes:
    return b"".join((r if isinstance(r, bytes) else orjson.dumps(r)) + b"\n" for r in records)


def run(kind: Kind, *records: Any) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    parsed, read = parse_events(body(*records), kind, source="http:t")
    assert read == parsed.events.num_rows + len(parsed.rejects)
    assert parsed.events.schema == schema_for(kind)
    rejects = parsed.rejects.to_table("events").to_pylist()
    return parsed.events.to_pylist(), sorted(rejects, key=lambda r: r["source_line"])


def reason(kind: Kind, record: Any) -> str:
    events, rejects = run(kind, record)
    assert not events, events
    return str(rejects[0]["reason"])


def utc(*args: int) -> datetime:
    return datetime(*args, tzinfo=UTC)


def test_traffic_event_with_every_column() -> None:
    record = {
        **GOOD,
        "host": "shop.example.com",
        "method": "GET",
        "path": "/a",
        "query": "q=1",
        "protocol": "HTTP/1.1",
        "bytes": 512,
        "latency_ms": 12.5,
        "referrer": "https://x/",
        "user_agent": "curl/8",
        "unknown": {"ignored": [1, 2]},
    }
    (event,), rejects = run("traffic", record)
    assert not rejects
    assert event["ts"] == utc(2026, 11, 1, 10, 0, 0, 250000)
    assert event["status"] == 200 and event["bytes"] == 512 and event["latency_ms"] == 12.5
    assert (event["source"], event["source_line"], event["source_offset"]) == ("http:t", 1, 0)


def test_defaults_and_integral_floats() -> None:
    (event,), _ = run("traffic", {**GOOD, "status": 404.0, "bytes": None})
    assert event["status"] == 404 and event["bytes"] == 0 and event["latency_ms"] is None


@pytest.mark.parametrize(
    ("ts", "expected"),
    [
        ("2026-11-01T10:00:00+02:00", utc(2026, 11, 1, 8)),
        ("2026-11-01 10:00:00Z", utc(2026, 11, 1, 10)),
        ("2026-11-01T10:00:00", utc(2026, 11, 1, 10)),  # no offset: UTC
        ("2026-11-01T10:00:00.123456789Z", utc(2026, 11, 1, 10, 0, 0, 123456)),
        (1_793_527_200, utc(2026, 11, 1, 10)),  # seconds
        (1_793_527_200_123, utc(2026, 11, 1, 10, 0, 0, 123000)),  # milliseconds
        (1_793_527_200_123_456, utc(2026, 11, 1, 10, 0, 0, 123456)),  # microseconds
        (1_793_527_200_123_456_500, utc(2026, 11, 1, 10, 0, 0, 123456)),  # ns, half-even
        (1_793_527_200.5, utc(2026, 11, 1, 10, 0, 0, 500000)),  # Fluent Bit's double
    ],
)
def test_timestamps(ts: Any, expected: datetime) -> None:
    (event,), _ = run("traffic", {**GOOD, "ts": ts})
    assert event["ts"] == expected


@pytest.mark.parametrize(
    ("record", "code"),
    [
        ({**GOOD, "status": "abc"}, "bad_type"),
        ({**GOOD, "status": "200"}, "bad_type"),
        ({**GOOD, "status": True}, "bad_type"),
        ({**GOOD, "status": 700}, "bad_status"),
        ({"ts": GOOD["ts"], "client_ip": "1.2.3.4"}, "missing_field"),
        ({"ts": GOOD["ts"], "status": 200}, "missing_field"),
        ({**GOOD, "bytes": -1}, "bad_bytes"),
        ({**GOOD, "bytes": 2**63}, "bad_bytes"),
        ({**GOOD, "latency_ms": -0.5}, "bad_latency"),
        ({**GOOD, "latency_ms": "1"}, "bad_type"),
        ({**GOOD, "host": 5}, "bad_type"),
        ({**GOOD, "ts": "yesterday"}, "bad_timestamp"),
        ({**GOOD, "ts": "2026-02-30T00:00:00Z"}, "bad_timestamp"),
        ({"client_ip": "1.2.3.4", "status": 200}, "bad_timestamp"),
        ([1, 2], "bad_json"),
        (b'{"ts": NaN, "client_ip": "a", "status": 200}', "bad_json"),
        (b'{"ts": "2026-11-01T00:00:00Z", "client_ip": "a", "status": 200, "x": -Inf}', "bad_json"),
        (b'{"ts": "2026-11-01T00:00:00Z",', "bad_json"),
    ],
)
def test_bad_records_are_quarantined_with_their_reason(record: Any, code: str) -> None:
    assert reason("traffic", record) == code


def test_one_bad_record_costs_only_itself_and_order_is_kept() -> None:
    records = [{**GOOD, "path": f"/{i}"} for i in range(6)]
    records[2] = {**GOOD, "status": "abc"}
    records[4] = {**GOOD, "ts": 1_793_527_200}  # a different ts type: row path
    events, rejects = run("traffic", *records)
    assert [e["path"] for e in events] == ["/0", "/1", "/3", None, "/5"]
    assert [e["source_line"] for e in events] == [1, 2, 4, 5, 6]
    assert [(r["source_line"], r["reason"]) for r in rejects] == [(3, "bad_type")]


def test_line_level_problems() -> None:
    bad_utf8 = b'{"ts": "\xff"}\n'
    data = body(GOOD) + b"\n" + bad_utf8 + body(GOOD).replace(b"\n", b"\r\n")
    parsed, read = parse_events(data, "traffic", source="s")
    assert read == 4 and parsed.events.num_rows == 2
    assert sorted(parsed.rejects.reasons()) == ["blank", "invalid_utf8"]
    assert parsed.events.column("source_offset").to_pylist() == [
        0,
        len(body(GOOD)) + 1 + len(bad_utf8),
    ]


def test_logs_records() -> None:
    records = [
        {"ts": 1_793_527_200_000, "service": "api", "level": "WARNING", "message": "m"},
        {"ts": 1_793_527_200_000, "attrs": {"b": 1, "a": [2]}, "level": 50},
        {"ts": 1_793_527_200_000, "level": " Error "},
        {"ts": 1_793_527_200_000, "level": "loud"},
    ]
    events, rejects = run("logs", *records)
    assert [e["level"] for e in events] == ["warn", "error", "error"]
    assert events[0]["attrs"] is None and events[1]["attrs"] == '{"a":[2],"b":1}'
    assert [r["reason"] for r in rejects] == ["bad_type"]


def test_logs_level_defaults_to_info() -> None:
    (event,), _ = run("logs", {"ts": "2026-11-01T00:00:00Z", "message": "hi"})
    assert event["level"] == "info"


# -- the fast path equals the row path -------------------------------------------------

_rfc3339 = st.builds(
    lambda y, mo, d, h, mi, s, frac, off: (
        f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{s:02d}{frac}{off}"
    ),
    st.integers(1, 9999),
    st.integers(1, 12),
    st.integers(1, 31),
    st.integers(0, 23),
    st.integers(0, 59),
    st.integers(0, 60),
    st.sampled_from(["", ".5", ".123456", ".1234567", ".000001"]),
    st.sampled_from(["Z", "+00:00", "-05:30", "+23:59", "", "z", "+0100"]),
)
_int_ts = st.one_of(
    st.integers(-(10**11), 10**18 + 10**17),
    st.integers(1_700_000_000, 1_800_000_000).map(lambda s: s * 10**9 + 500),
    st.sampled_from([-(2**63), 2**63 - 1, 0, 10**11 - 1, 10**14, 10**17 - 1]),
)
_float_ts = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.integers(1_700_000_000_000, 1_800_000_000_000).map(lambda ms: ms / 1000),
    st.integers(1_700_000_000_000_000, 1_800_000_000_000_000).map(lambda us: us / 2 / 10**6),
)
# Clean bodies keep JSON types uniform (so pyarrow.json reads them and the fast path
# runs, with only values to judge); dirty ones mix types (the whole body takes the row
# path, which must still give the same answer).
_clean_text = st.one_of(st.none(), st.text(max_size=8))
_dirty_text = st.one_of(_clean_text, st.integers(-(2**63), 2**64 - 1), st.just(["x"]))
_clean_int = st.one_of(st.integers(90, 610), st.integers(-(2**63), 2**63 - 1), st.none())
_dirty_int = st.one_of(_clean_int, st.integers(-5, 2**64 - 1), st.floats(), st.text())
_clean_float = st.one_of(st.floats(-1.0, 1e6), st.none())


@st.composite
def _traffic_record(draw: st.DrawFn, ts: st.SearchStrategy[Any], clean: bool) -> dict[str, Any]:
    text, number = (_clean_text, _clean_int) if clean else (_dirty_text, _dirty_int)
    record = {"ts": draw(ts), "client_ip": draw(st.one_of(st.just("10.1.2.3"), text))}
    record["status"] = draw(st.one_of(st.integers(100, 599), number))
    if draw(st.booleans()):
        record["bytes"] = draw(st.one_of(st.integers(0, 10**6), number))
    if draw(st.booleans()):
        record["latency_ms"] = draw(_clean_float if clean else st.one_of(_clean_float, number))
    for key in ("host", "path", "user_agent", "other"):
        if draw(st.booleans()):
            record[key] = draw(text)
    return record


@st.composite
def _logs_record(draw: st.DrawFn, ts: st.SearchStrategy[Any], clean: bool) -> dict[str, Any]:
    record: dict[str, Any] = {"ts": draw(ts)}
    words = st.sampled_from(["info", "WARN", "Fatal", "err", " debug", "x", "İnfo", "ＩＮＦＯ"])
    if draw(st.booleans()):
        levels = st.one_of(words, st.none())
        record["level"] = draw(levels if clean else st.one_of(levels, st.integers(0, 70)))
    for key in ("service", "message", "attrs"):
        if draw(st.booleans()):
            record[key] = draw(_clean_text if clean else st.one_of(_dirty_text, st.just({"k": 1})))
    return record


def _same(kind: Kind, records: list[dict[str, Any]]) -> None:
    data = b"".join(orjson.dumps(r) + b"\n" for r in records)
    block = split_block(data, source="s", base_offset=0, base_line=1)
    fast = events_from_block(block, kind, fast=True)
    slow = events_from_block(block, kind, fast=False)
    assert fast.events.equals(slow.events), (fast.events.to_pylist(), slow.events.to_pylist())
    key = pa.compute.sort_indices  # type: ignore[attr-defined]
    ft, st_ = fast.rejects.to_table("f"), slow.rejects.to_table("f")
    assert ft.take(key(ft.column("source_line"))).equals(st_.take(key(st_.column("source_line"))))


_TS = st.sampled_from([_rfc3339, _int_ts, _float_ts])
_SETTINGS = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@_SETTINGS
@given(data=st.data())
def test_fast_path_equals_row_path_traffic(data: st.DataObject) -> None:
    ts, clean = data.draw(_TS), data.draw(st.booleans())
    records = data.draw(st.lists(_traffic_record(ts, clean), min_size=1, max_size=12))
    _same("traffic", records)


@_SETTINGS
@given(data=st.data())
def test_fast_path_equals_row_path_logs(data: st.DataObject) -> None:
    ts, clean = data.draw(_TS), data.draw(st.booleans())
    records = data.draw(st.lists(_logs_record(ts, clean), min_size=1, max_size=12))
    _same("logs", records)


def test_fast_path_takes_clean_bodies() -> None:
    """A clean body must not silently fall back to the row path (that is the speed)."""
    from loglambda.ingest.events_json import _fast_path

    records = [{**GOOD, "latency_ms": i / 3} for i in range(50)]
    block = split_block(body(*records), source="s", base_offset=0, base_line=1)
    quick = _fast_path(block.lines, "traffic")
    assert quick is not None and bool(quick[1].all())


# -- shipper envelopes ----------------------------------------------------------------------


def test_envelopes_carry_raw_lines_at_their_record_positions() -> None:
    records: list[Any] = [
        {"message": "a line", "host": "h", "file": "/f", "source_type": "file"},  # Vector
        {"date": 1.5, "log": "docker line\n", "stream": "stdout"},  # Fluent Bit
        {"message": None, "log": "second key"},
        {"log": 5},
        {"other": 1},
        b"[1]",
        b"{broken",
        {"message": "nul\u0000"},
        {"message": "\r\n"},
        {"message": "x" * 70_000},
    ]
    data = body(*records)
    block = envelope_lines(data, source="s")
    assert block.read == 10
    assert block.lines.to_pylist() == ["a line", "docker line", "second key"]
    assert block.line_no.to_pylist() == [1, 2, 3]
    starts = [0, *np_cumsum([len(line) for line in data.splitlines(keepends=True)])]
    assert block.offset.to_pylist() == starts[:3]
    got = sorted((r["source_line"], r["reason"]) for r in block.rejects.to_table("e").to_pylist())
    assert got == [
        (4, "bad_type"),
        (5, "missing_field"),
        (6, "bad_json"),
        (7, "bad_json"),
        (8, "nul_byte"),
        (9, "blank"),
        (10, "line_too_long"),
    ]


def np_cumsum(values: list[int]) -> list[int]:
    out, total = [], 0
    for v in values:
        total += v
        out.append(total)
    return out


def test_envelope_fast_and_row_paths_agree() -> None:
    """One record pyarrow refuses (a number in ``message``) sends the whole body down
    the row path; the carried lines must be the same as on the fast path."""
    good = [{"message": f"line {i}", "n": i} for i in range(5)]
    fast = envelope_lines(body(*good), source="s")
    slow = envelope_lines(body(*good, {"message": 1}), source="s")
    assert fast.lines.to_pylist() == slow.lines.to_pylist()
    assert fast.offset.to_pylist() == slow.offset.to_pylist()
    assert len(fast.rejects) == 0 and len(slow.rejects) == 1
