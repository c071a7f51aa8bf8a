"""The apache_error and python_logging parsers on real-looking text logs."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parser_helpers import parse_lines, parse_one

from loglambda.core.lines import split_block
from loglambda.core.parsers.base import Parsed, Parser
from loglambda.core.parsers.plainlogs import (
    APACHE_ERROR,
    PYTHON_LOGGING,
    _extract_apache,
    _extract_python,
    _Extraction,
    _RegexLogsParser,
)
from loglambda.core.schemas import LEVELS, LOGS_SCHEMA

pytestmark = pytest.mark.unit

APACHE_22 = (
    "[Sun Dec 04 04:47:44 2005] [error] [client 1.2.3.4] "
    "Directory index forbidden by rule: /home/test/"
)
APACHE_22_NO_CLIENT = (
    "[Sun Dec 04 04:51:08 2005] [notice] jk2_init() Found child 6725 in scoreboard slot 10"
)
APACHE_24 = (
    "[Thu Jun 27 06:58:09.169510 2019] [mpm_event:notice] [pid 8308:tid 140245011961600] "
    "AH00489: Apache/2.4.41 (Ubuntu) configured -- resuming normal operations"
)
APACHE_24_CLIENT = (
    "[Wed Oct 11 14:32:52.123456 2023] [core:error] [pid 35708:tid 4328636416] "
    "[client 72.15.99.187:50716] AH00126: Invalid URI in request GET /%2e%2e/etc/passwd HTTP/1.1"
)
APACHE_24_OS_ERROR = (
    "[Wed Oct 11 14:32:53.000001 2023] [proxy:error] [pid 1234] (111)Connection refused: "
    "AH00957: HTTP: attempt to connect to 127.0.0.1:8080 (localhost) failed"
)
APACHE_PHP = "[Thu Feb 27 06:58:09 2019] [:error] [pid 1] [client 10.0.0.1:5555] PHP Warning: foo"

COOKBOOK = "2024-05-01 12:00:00,123 - myapp.db.pool - WARNING - slow query took 2.3s"
LEVEL_FIRST = "2024-05-01 12:00:01,500 INFO uvicorn.access: 127.0.0.1:5000 - GET / 200"
BRACKETED = "2024-05-01 12:00:02,250 [ERROR] worker: job 17 failed: timeout"
FLASK = "[2024-05-01 12:00:03,001] INFO in app: Serving on http://127.0.0.1:5000"
BASIC_CONFIG = "WARNING:root:disk is almost full"
TRACEBACK = [
    "2024-05-01 12:00:04,000 - myapp - ERROR - request failed",
    "Traceback (most recent call last):",
    '  File "/srv/app.py", line 10, in handler',
    "    1 / 0",
    "ZeroDivisionError: division by zero",
]


def parse(parser: Parser, *lines: str) -> Parsed:
    return parse_lines(parser, *lines)


def one(parser: Parser, line: str) -> dict[str, Any]:
    return parse_one(parser, line)


def rejects(parser: Parser, *lines: str) -> list[tuple[int, str, str]]:
    table = parse(parser, *lines).rejects.to_table(parser.name)
    return [(r["source_line"], r["reason"], r["detail"]) for r in table.to_pylist()]


def test_identity() -> None:
    assert (APACHE_ERROR.name, APACHE_ERROR.kind) == ("apache_error", "logs")
    assert (PYTHON_LOGGING.name, PYTHON_LOGGING.kind) == ("python_logging", "logs")


def test_apache_22() -> None:
    row = one(APACHE_ERROR, APACHE_22)
    assert row["ts"] == datetime(2005, 12, 4, 4, 47, 44, tzinfo=UTC)
    assert row["service"] == "apache"
    assert row["level"] == "error"
    assert row["logger"] is None
    assert row["message"] == "Directory index forbidden by rule: /home/test/"
    assert json.loads(row["attrs"]) == {"client": "1.2.3.4"}
    row = one(APACHE_ERROR, APACHE_22_NO_CLIENT)
    assert row["level"] == "notice"
    assert row["attrs"] == "{}"


def test_apache_24() -> None:
    row = one(APACHE_ERROR, APACHE_24)
    assert row["ts"] == datetime(2019, 6, 27, 6, 58, 9, 169510, tzinfo=UTC)
    assert row["level"] == "notice"
    assert row["logger"] == "mpm_event"
    assert row["message"].startswith("AH00489: Apache/2.4.41")
    assert row["attrs"] == '{"code":"AH00489","pid":8308,"tid":140245011961600}'


def test_apache_24_client_and_os_error_prefix() -> None:
    row = one(APACHE_ERROR, APACHE_24_CLIENT)
    assert row["logger"] == "core"
    assert json.loads(row["attrs"]) == {
        "client": "72.15.99.187:50716",
        "code": "AH00126",
        "pid": 35708,
        "tid": 4328636416,
    }
    row = one(APACHE_ERROR, APACHE_24_OS_ERROR)
    assert row["ts"] == datetime(2023, 10, 11, 14, 32, 53, 1, tzinfo=UTC)
    assert json.loads(row["attrs"]) == {"code": "AH00957", "pid": 1234}
    row = one(APACHE_ERROR, APACHE_PHP)
    assert row["logger"] is None  # "[:error]": no module name
    assert row["message"] == "PHP Warning: foo"


@pytest.mark.parametrize(
    ("word", "level"),
    [
        ("emerg", "fatal"),
        ("alert", "fatal"),
        ("crit", "fatal"),
        ("error", "error"),
        ("warn", "warn"),
        ("notice", "notice"),
        ("info", "info"),
        ("debug", "debug"),
        ("trace1", "trace"),
        ("trace8", "trace"),
    ],
)
def test_apache_levels(word: str, level: str) -> None:
    line = f"[Thu Jun 27 06:58:09 2019] [ssl:{word}] [pid 1] message"
    assert one(APACHE_ERROR, line)["level"] == level


def test_apache_rejects() -> None:
    got = rejects(
        APACHE_ERROR,
        "[Thu Feb 29 06:58:09 2019] [error] not a leap year",
        "[Thu Jun 27 06:58:09 2019] [loud] what level is this",
        "[Thu Foo 27 06:58:09 2019] [error] month",
        "PHP Fatal error:  Uncaught Exception: boom in /var/www/index.php:3",
        "[Thu Jun 27 06:58:09 2019] [error]glued",
    )
    assert [(line, reason) for line, reason, _ in got] == [
        (1, "bad_timestamp"),
        (2, "bad_type"),
        (3, "bad_timestamp"),
        (4, "no_match"),
        (5, "no_match"),
    ]
    assert "'Thu Feb 29 06:58:09 2019'" in got[0][2]
    assert "'loud'" in got[1][2]


def test_python_cookbook_layout() -> None:
    row = one(PYTHON_LOGGING, COOKBOOK)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert row["level"] == "warn"
    assert row["logger"] == "myapp.db.pool"
    assert row["service"] == "myapp"
    assert row["message"] == "slow query took 2.3s"
    assert row["attrs"] == "{}"


def test_python_other_layouts() -> None:
    parsed = parse(PYTHON_LOGGING, LEVEL_FIRST, BRACKETED, FLASK)
    assert len(parsed.rejects) == 0
    rows = parsed.events.to_pylist()
    assert [(r["level"], r["logger"], r["service"]) for r in rows] == [
        ("info", "uvicorn.access", "uvicorn"),
        ("error", "worker", "worker"),
        ("info", "app", "app"),
    ]
    assert rows[0]["message"] == "127.0.0.1:5000 - GET / 200"
    assert rows[1]["message"] == "job 17 failed: timeout"
    assert rows[2]["ts"] == datetime(2024, 5, 1, 12, 0, 3, 1000, tzinfo=UTC)


@pytest.mark.parametrize(
    ("word", "level"),
    [
        ("DEBUG", "debug"),
        ("INFO", "info"),
        ("WARNING", "warn"),
        ("WARN", "warn"),
        ("ERROR", "error"),
        ("CRITICAL", "fatal"),
        ("FATAL", "fatal"),
    ],
)
def test_python_levels(word: str, level: str) -> None:
    assert one(PYTHON_LOGGING, f"2024-05-01 12:00:00,000 - a - {word} - m")["level"] == level


def test_layouts_without_time_are_bad_timestamp() -> None:
    got = rejects(PYTHON_LOGGING, BASIC_CONFIG, "INFO:     Started server process [8123]")
    assert [reason for _, reason, _ in got] == ["bad_timestamp", "bad_timestamp"]
    assert "no timestamp" in got[0][2]


def test_traceback_lines_are_no_match() -> None:
    parsed = parse(PYTHON_LOGGING, *TRACEBACK)
    assert parsed.events.column("source_line").to_pylist() == [1]
    assert parsed.rejects.reasons() == {"no_match": 4}


def test_python_bad_values() -> None:
    got = rejects(
        PYTHON_LOGGING,
        "2024-02-30 12:00:00,000 - a - INFO - m",
        "2024-05-01 25:00:00,000 - a - INFO - m",
        "2024-05-01 12:00:00,000 - a - SUCCESS - m",
    )
    assert [reason for _, reason, _ in got] == ["bad_timestamp", "bad_timestamp", "bad_type"]
    assert "'SUCCESS'" in got[2][2]


def test_positions_and_splitter_rejects_are_kept() -> None:
    parsed = parse(PYTHON_LOGGING, COOKBOOK, "", FLASK)
    assert parsed.events.column("source_line").to_pylist() == [1, 3]
    assert parsed.events.column("source_offset").to_pylist() == [0, len(COOKBOOK) + 2]
    assert parsed.rejects.reasons() == {"blank": 1}


def test_empty_block() -> None:
    for parser in (APACHE_ERROR, PYTHON_LOGGING):
        parsed = parser.parse(split_block(b"", source="t", base_offset=0, base_line=1))
        assert len(parsed.events) == 0
        assert parsed.events.schema == LOGS_SCHEMA


def test_kernel_failure_quarantines_only_the_offending_line() -> None:
    def fragile(lines: pa.Array) -> _Extraction:
        if any("BOOM" in text for text in lines.to_pylist()):
            raise RuntimeError("kernel exploded")
        return _extract_python(lines)

    parser = _RegexLogsParser("python_logging", fragile)
    parsed = parse(parser, COOKBOOK, FLASK, "2024-05-01 12:00:00,000 - a - INFO - BOOM", COOKBOOK)
    assert parsed.events.column("source_line").to_pylist() == [1, 2, 4]
    [row] = parsed.rejects.to_table("python_logging").to_pylist()
    assert (row["source_line"], row["reason"]) == (3, "bad_type")
    assert row["detail"] == "RuntimeError: kernel exploded"


# Lines assembled from plausible and broken pieces, to reach the date and level kernels.
_apache_lines = st.builds(
    "[{} {} {} {}:{}:{}{} {}] [{}{}]{}{} {}".format,
    st.sampled_from(["Sun", "Thu", "Xyz"]),
    st.sampled_from(["Jan", "Feb", "Dec", "Foo"]),
    st.sampled_from(["1", "01", "29", "31", "00", " 4"]),
    st.sampled_from(["00", "23", "24"]),
    st.sampled_from(["00", "59", "60"]),
    st.sampled_from(["00", "59", "60", "61"]),
    st.sampled_from(["", ".1", ".169510", ".1234567"]),
    st.sampled_from(["2005", "0999", "9999", "1900"]),
    st.sampled_from(["", ":", "core:", "mpm_event:", "a b:"]),
    st.sampled_from(["error", "trace3", "loud", "", "WARN"]),
    st.sampled_from(
        ["", " [pid 1:tid 2]", " [pid 0]", " [pid 007]", " [pid 99999999999999999999]"]
    ),
    st.sampled_from(["", " [client 1.2.3.4:5]", ' [client "x"]', " [client ::1]"]),
    st.text(max_size=30),
)
_python_lines = st.builds(
    "{}{} {}:{}:{}{}{}".format,
    st.sampled_from(["", "["]),
    st.sampled_from(["2024-05-01", "2024-02-30", "0000-01-01", "2024-13-01"]),
    st.sampled_from(["12", "24"]),
    st.sampled_from(["00", "60"]),
    st.sampled_from(["00", "60", "61"]),
    st.sampled_from(["", ",123", ".5", ",1234567"]),
    st.sampled_from(
        [" - a.b - INFO - ", " - a - X - ", " WARNING x: ", "] INFO in app: ", " [ERROR] w: "]
    ).flatmap(lambda sep: st.text(max_size=20).map(lambda tail: sep + tail)),
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_apache_lines | _python_lines | st.text(max_size=60), max_size=8))
def test_random_lines_never_raise_and_reconcile(lines: list[str]) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    for parser, extract in ((APACHE_ERROR, _extract_apache), (PYTHON_LOGGING, _extract_python)):
        block = split_block(data, source="t", base_offset=0, base_line=1)
        parsed = parser.parse(block)
        assert block.read == len(parsed.events) + len(parsed.rejects)
        assert parsed.events.schema == LOGS_SCHEMA
        # The kernels must handle every line themselves, without the bisecting net.
        extract(block.lines)
        for row in parsed.events.to_pylist():
            assert row["level"] in LEVELS
            assert isinstance(json.loads(row["attrs"]), dict)
            assert row["ts"].tzinfo is not None
