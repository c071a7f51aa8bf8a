"""The json logs parser against what Winston, pino, bunyan and structlog really write."""

from __future__ import annotations

import contextlib
import json
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from parser_helpers import parse_lines, parse_one, parse_rejected

from loglambda.core.lines import split_block
from loglambda.core.parsers.base import Parsed, Reject
from loglambda.core.parsers.jsonlogs import (
    JSON_LOGS,
    level_from_number,
    parse_json_log,
    parse_time,
)
from loglambda.core.schemas import LEVELS, LOGS_SCHEMA

pytestmark = pytest.mark.unit

WINSTON = (
    '{"level":"info","message":"Server listening on port 3000",'
    '"service":"user-service","timestamp":"2024-05-01T12:00:00.123Z"}'
)
WINSTON_ERROR = (
    '{"level":"error","message":"connect ECONNREFUSED 127.0.0.1:5432","service":"user-service",'
    '"stack":"Error: connect ECONNREFUSED 127.0.0.1:5432\\n    at TCPConnectWrap.afterConnect '
    '[as oncomplete] (node:net:1555:16)","timestamp":"2024-05-01T12:00:01.000Z"}'
)
PINO = (
    '{"level":30,"time":1714564800123,"pid":4242,"hostname":"web-1","name":"api",'
    '"req":{"id":1,"method":"GET","url":"/orders"},"res":{"statusCode":200},'
    '"responseTime":12,"msg":"request completed"}'
)
BUNYAN = (
    '{"name":"myapp","hostname":"web-2","pid":31337,"level":40,"msg":"disk almost full",'
    '"time":"2024-05-01T12:00:00.456Z","v":0}'
)
STRUCTLOG = (
    '{"event": "user logged in", "user_id": 42, "level": "warning", '
    '"logger": "myapp.auth", "timestamp": "2024-05-01T12:00:00.123456Z"}'
)
# structlog's TimeStamper() default: epoch seconds as a float.
STRUCTLOG_EPOCH = (
    '{"event": "cache miss", "key": "user:1", "level": "info", "timestamp": 1714564800.5}'
)
ECS = (
    '{"@timestamp":"2024-05-01T12:00:00.000+02:00","log.level":"WARN","message":"slow",'
    '"service":{"name":"checkout","version":"1.2.0"},"trace":{"id":"4bf92f3577b34da6"}}'
)


def parse(*lines: str) -> Parsed:
    return parse_lines(JSON_LOGS, *lines, source="app.log")


def one(line: str) -> dict[str, Any]:
    return parse_one(JSON_LOGS, line)


def rejected(line: str) -> tuple[str, str]:
    return parse_rejected(JSON_LOGS, line)


def test_identity() -> None:
    assert JSON_LOGS.name == "json"
    assert JSON_LOGS.kind == "logs"


def test_winston() -> None:
    row = one(WINSTON)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert row["level"] == "info"
    assert row["message"] == "Server listening on port 3000"
    assert row["service"] == "user-service"
    assert row["logger"] is None
    assert row["trace_id"] is None
    assert row["attrs"] == "{}"


def test_winston_error_keeps_stack_in_attrs() -> None:
    row = one(WINSTON_ERROR)
    assert row["level"] == "error"
    assert json.loads(row["attrs"])["stack"].startswith("Error: connect ECONNREFUSED")


def test_pino() -> None:
    row = one(PINO)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert row["level"] == "info"
    assert row["message"] == "request completed"
    assert row["service"] == "api"
    attrs = json.loads(row["attrs"])
    assert attrs == {
        "hostname": "web-1",
        "pid": 4242,
        "req": {"id": 1, "method": "GET", "url": "/orders"},
        "res": {"statusCode": 200},
        "responseTime": 12,
    }
    assert list(attrs) == sorted(attrs)  # sorted keys, so equal records compare equal


def test_bunyan() -> None:
    row = one(BUNYAN)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 456000, tzinfo=UTC)
    assert row["level"] == "warn"
    assert row["service"] == "myapp"
    assert row["message"] == "disk almost full"
    assert json.loads(row["attrs"]) == {"hostname": "web-2", "pid": 31337, "v": 0}


def test_structlog() -> None:
    row = one(STRUCTLOG)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert row["level"] == "warn"
    assert row["message"] == "user logged in"
    assert row["logger"] == "myapp.auth"
    assert json.loads(row["attrs"]) == {"user_id": 42}


def test_structlog_epoch_seconds() -> None:
    row = one(STRUCTLOG_EPOCH)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 500000, tzinfo=UTC)
    assert row["message"] == "cache miss"


def test_nested_service_and_trace_are_consumed_leaf_by_leaf() -> None:
    row = one(ECS)
    assert row["ts"] == datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    assert row["level"] == "warn"
    assert row["service"] == "checkout"
    assert row["trace_id"] == "4bf92f3577b34da6"
    assert json.loads(row["attrs"]) == {"service": {"version": "1.2.0"}}


def test_datadog_trace_id_and_naive_time_as_utc() -> None:
    line = (
        '{"timestamp":"2024-05-01 12:00:00","level":"info","message":"charged",'
        '"dd":{"trace_id":1234567890123,"span_id":"987"}}'
    )
    row = one(line)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, tzinfo=UTC)
    assert row["trace_id"] == "1234567890123"
    assert json.loads(row["attrs"]) == {"dd": {"span_id": "987"}}


def test_only_the_used_message_field_is_consumed() -> None:
    row = one('{"time":"2024-05-01T12:00:00Z","message":"a","msg":"b"}')
    assert row["message"] == "a"
    assert json.loads(row["attrs"]) == {"msg": "b"}


def test_non_string_message_stays_in_attrs() -> None:
    row = one('{"time":"2024-05-01T12:00:00Z","message":{"text":"x"},"msg":"y"}')
    assert row["message"] == "y"
    assert json.loads(row["attrs"]) == {"message": {"text": "x"}}


def test_missing_level_means_info() -> None:
    assert one('{"time":"2024-05-01T12:00:00Z","msg":"hello"}')["level"] == "info"


@pytest.mark.parametrize(
    ("level", "expected"),
    [
        ('"silly"', "trace"),
        ('"verbose"', "debug"),
        ('"debug"', "debug"),
        ('"http"', "info"),
        ('"INFO"', "info"),
        ('"notice"', "notice"),
        ('"warning"', "warn"),
        ('"err"', "error"),
        ('"exception"', "error"),
        ('"critical"', "fatal"),
        ('"emerg"', "fatal"),
        ('"alert"', "fatal"),
        ("10", "trace"),
        ("20", "debug"),
        ("30", "info"),
        ("35", "info"),  # a custom pino level falls into the band below
        ("40", "warn"),
        ("50", "error"),
        ("60", "fatal"),
        ('"50"', "error"),
    ],
)
def test_level_mapping(level: str, expected: str) -> None:
    row = one(f'{{"time":"2024-05-01T12:00:00Z","level":{level},"msg":"m"}}')
    assert row["level"] == expected
    assert row["level"] in LEVELS


@pytest.mark.parametrize(
    ("line", "reason", "detail_part"),
    [
        ('{"level":"info","message":"no time"}', "bad_timestamp", "no time field"),
        ('{"time":"soon","msg":"m"}', "bad_timestamp", "'soon'"),
        ('{"time":true,"msg":"m"}', "bad_timestamp", "true"),
        ('{"time":[1714564800],"msg":"m"}', "bad_timestamp", "[1714564800]"),
        ('{"time":1e300,"msg":"m"}', "bad_timestamp", "out of range"),
        ('{"timestamp":"2024-02-30T00:00:00Z","msg":"m"}', "bad_timestamp", "2024-02-30"),
        ('{"time":"2024-05-01T12:00:00Z","level":"loud","msg":"m"}', "bad_type", "'loud'"),
        ('{"time":"2024-05-01T12:00:00Z","level":true,"msg":"m"}', "bad_type", "level"),
        ('{"time":"2024-05-01T12:00:00Z","level":30.5,"msg":"m"}', "bad_type", "30.5"),
        ("[1,2,3]", "bad_json", "got list"),
        ("INFO plain text", "bad_json", "not valid JSON"),
        ('{"time": NaN}', "bad_json", "not valid JSON"),
    ],
)
def test_unusable_records_are_quarantined(line: str, reason: str, detail_part: str) -> None:
    got_reason, detail = rejected(line)
    assert got_reason == reason
    assert detail_part in detail


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (1714564800, datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        (1714564800123, datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)),
        (1714564800123456, datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        (1714564800123456789, datetime(2024, 5, 1, 12, 0, 0, 123457, tzinfo=UTC)),
        ("1714564800.25", datetime(2024, 5, 1, 12, 0, 0, 250000, tzinfo=UTC)),
        ("2024-05-01T12:00:00.123456789Z", datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)),
        ("2024-05-01T14:00:00+0200", datetime(2024, 5, 1, 12, 0, tzinfo=UTC)),
        ("17/May/2015:10:05:03 -0130", datetime(2015, 5, 17, 11, 35, 3, tzinfo=UTC)),
    ],
)
def test_parse_time_units_and_zones(value: object, expected: datetime) -> None:
    assert parse_time(value) == expected


def test_level_bands() -> None:
    assert [level_from_number(n) for n in (0, 10, 25, 30, 45, 50, 99)] == [
        "trace",
        "trace",
        "debug",
        "info",
        "warn",
        "error",
        "fatal",
    ]


def test_mixed_block_positions() -> None:
    parsed = parse(WINSTON, "", "oops", PINO)
    assert parsed.events.schema == LOGS_SCHEMA
    assert parsed.events.column("source").to_pylist() == ["app.log", "app.log"]
    assert parsed.events.column("source_line").to_pylist() == [1, 4]
    assert sorted(parsed.rejects.reasons().items()) == [("bad_json", 1), ("blank", 1)]


_KEYS = [
    "timestamp",
    "time",
    "ts",
    "@timestamp",
    "level",
    "message",
    "msg",
    "event",
    "service",
    "name",
    "trace_id",
    "dd",
    "service.name",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN/Infinity make invalid JSON, huge values overflow datetime
    | st.text(max_size=20)
    | st.sampled_from(["info", "WARNING", "30", "2024-05-01T12:00:00Z", "1714564800123", "-"])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(["name", "trace_id", "id", "x"]), inner, max_size=3)
    ),
    max_leaves=6,
)
_objects = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), _values, max_size=8).map(
    json.dumps
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_objects | st.text(max_size=60), max_size=8))
def test_random_lines_never_raise_and_reconcile(lines: list[str]) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    block = split_block(data, source="t", base_offset=0, base_line=1)
    parsed = JSON_LOGS.parse(block)
    assert block.read == len(parsed.events) + len(parsed.rejects)
    assert parsed.events.schema == LOGS_SCHEMA
    # Bad input must be rejected on purpose, not by parse_rows' safety net for bugs.
    for line in block.lines.to_pylist():
        with contextlib.suppress(Reject):
            parse_json_log(line)
    for row in parsed.events.to_pylist():
        assert row["level"] in LEVELS
        assert isinstance(json.loads(row["attrs"]), dict)
