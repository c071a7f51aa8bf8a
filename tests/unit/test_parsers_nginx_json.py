"""The nginx_json parser: real escape=json lines in, TRAFFIC_SCHEMA rows or quarantine out."""

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
from loglambda.core.parsers.nginx_json import NGINX_JSON, parse_nginx_json
from loglambda.core.schemas import TRAFFIC_SCHEMA

pytestmark = pytest.mark.unit

# The widely copied `log_format json_combined escape=json` layout: every value quoted,
# including status, and the referrer key misspelt "http_referrer".
COMBINED = (
    '{"time_local":"17/May/2015:08:05:32 +0000","remote_addr":"93.180.71.3",'
    '"remote_user":"","request":"GET /downloads/product_1 HTTP/1.1","status": "304",'
    '"body_bytes_sent":"0","request_time":"0.000","http_referrer":"",'
    '"http_user_agent":"Debian APT-HTTP/1.3 (0.8.16~exp12ubuntu10.21)"}'
)
# Separate request fields, unquoted numbers, a zone offset and an IPv6 client.
SPLIT_FIELDS = (
    '{"@timestamp":"2024-05-01T12:00:00+02:00","client_ip":"2001:db8::1",'
    '"request_method":"POST","request_uri":"/api/v1/orders?id=42&ref=a%3Fb",'
    '"server_protocol":"HTTP/2.0","status":201,"bytes_sent":512,"request_time":0.034,'
    '"upstream_response_time":"0.030","http_referer":"https://shop.example.com/cart",'
    '"http_user_agent":"Mozilla/5.0 (X11; Linux x86_64; rv:125.0) Gecko/20100101 Firefox/125.0",'
    '"host":"shop.example.com"}'
)
# $msec for time, $uri + $args, and only upstream times (two upstreams tried).
MSEC = (
    '{"msec":"1714564800.123","remote_addr":"10.0.0.5","request_method":"GET",'
    '"uri":"/health","args":"","status":"200","body_bytes_sent":"2",'
    '"upstream_response_time":"0.002, 0.001","http_host":"api.example.com:8443"}'
)


def parse(*lines: str) -> Parsed:
    return parse_lines(NGINX_JSON, *lines)


def one(line: str) -> dict[str, Any]:
    return parse_one(NGINX_JSON, line)


def rejected(line: str) -> tuple[str, str]:
    return parse_rejected(NGINX_JSON, line)


def test_identity() -> None:
    assert NGINX_JSON.name == "nginx_json"
    assert NGINX_JSON.kind == "traffic"


def test_combined_json_layout() -> None:
    row = one(COMBINED)
    assert row["ts"] == datetime(2015, 5, 17, 8, 5, 32, tzinfo=UTC)
    assert row["client_ip"] == "93.180.71.3"
    assert (row["method"], row["path"], row["query"], row["protocol"]) == (
        "GET",
        "/downloads/product_1",
        None,
        "HTTP/1.1",
    )
    assert row["status"] == 304
    assert row["bytes"] == 0
    assert row["latency_ms"] == 0.0
    assert row["referrer"] is None
    assert row["user_agent"].startswith("Debian APT-HTTP/1.3")
    assert row["host"] is None
    assert (row["source"], row["source_line"], row["source_offset"]) == ("t", 1, 0)


def test_separate_request_fields_and_offset_time() -> None:
    row = one(SPLIT_FIELDS)
    assert row["ts"] == datetime(2024, 5, 1, 10, 0, 0, tzinfo=UTC)
    assert row["client_ip"] == "2001:db8::1"
    assert row["method"] == "POST"
    # Split at the first '?' only: the encoded one in the value stays in the query.
    assert row["path"] == "/api/v1/orders"
    assert row["query"] == "id=42&ref=a%3Fb"
    assert row["protocol"] == "HTTP/2.0"
    assert row["status"] == 201
    assert row["bytes"] == 512
    # request_time wins over upstream_response_time.
    assert row["latency_ms"] == 34.0
    assert row["referrer"] == "https://shop.example.com/cart"
    assert row["host"] == "shop.example.com"


def test_msec_uri_args_and_upstream_fallback() -> None:
    row = one(MSEC)
    assert row["ts"] == datetime(2024, 5, 1, 12, 0, 0, 123000, tzinfo=UTC)
    assert (row["path"], row["query"]) == ("/health", None)
    assert row["latency_ms"] == 3.0  # the two upstream attempts summed
    assert row["host"] == "api.example.com:8443"


def test_upstream_times_without_any_answer_mean_no_latency() -> None:
    assert one(MSEC.replace('"0.002, 0.001"', '"-, -"'))["latency_ms"] is None


def test_msec_preferred_over_whole_second_times() -> None:
    line = COMBINED.replace('"remote_addr"', '"msec":"1431849932.250","remote_addr"')
    assert one(line)["ts"] == datetime(2015, 5, 17, 8, 5, 32, 250000, tzinfo=UTC)


def test_forwarded_for_first_address_when_no_remote_addr() -> None:
    line = (
        '{"time_iso8601":"2024-05-01T12:00:00+00:00","remote_addr":"",'
        '"http_x_forwarded_for":"203.0.113.7, 10.0.0.1","request":"GET /?a=1&b=2 HTTP/1.1",'
        '"status":"200","body_bytes_sent":"-","request_time":"1.5"}'
    )
    row = one(line)
    assert row["client_ip"] == "203.0.113.7"
    assert (row["path"], row["query"]) == ("/", "a=1&b=2")
    assert row["bytes"] == 0
    assert row["latency_ms"] == 1500.0


def test_naive_iso_time_is_utc() -> None:
    line = COMBINED.replace(
        '"time_local":"17/May/2015:08:05:32 +0000"', '"time":"2015-05-17 08:05:32"'
    )
    assert one(line)["ts"] == datetime(2015, 5, 17, 8, 5, 32, tzinfo=UTC)


def test_time_local_with_offset_converted_to_utc() -> None:
    line = COMBINED.replace("17/May/2015:08:05:32 +0000", "17/May/2015:10:05:32 +0200")
    assert one(line)["ts"] == datetime(2015, 5, 17, 8, 5, 32, tzinfo=UTC)


def test_tls_handshake_on_plain_port_is_kept_without_request_parts() -> None:
    line = (
        '{"time_iso8601":"2024-05-01T12:00:00+00:00","remote_addr":"198.51.100.9",'
        '"request":"\\u0016\\u0003\\u0001\\u0002\\u0000\\u0001\\u0000\\u0001\\u00fc\\u0003\\u0003",'
        '"status":"400","body_bytes_sent":"157","request_time":"0.001"}'
    )
    row = one(line)
    assert row["status"] == 400
    assert (row["method"], row["path"], row["protocol"]) == (None, None, None)


@pytest.mark.parametrize(
    ("change", "reason", "detail_part"),
    [
        (
            ('"status": "304"', '"status": "abc"'),
            "bad_status",
            "'status' is 'abc', expected an integer",
        ),
        (('"status": "304"', '"status": "700"'), "bad_status", "outside 100-599"),
        (('"status": "304"', '"status": [1]'), "bad_status", "[1]"),
        (('"status": "304"', '"status": true'), "bad_status", "true"),
        (('"status": "304",', ""), "missing_field", "status"),
        (('"body_bytes_sent":"0"', '"body_bytes_sent":"-5"'), "bad_bytes", "outside"),
        (('"body_bytes_sent":"0"', '"body_bytes_sent":"lots"'), "bad_bytes", "'lots'"),
        (('"request_time":"0.000"', '"request_time":"-0.5"'), "bad_latency", "negative"),
        (('"request_time":"0.000"', '"request_time":"nan"'), "bad_latency", "'nan'"),
        (('"17/May/2015:08:05:32 +0000"', '"yesterday"'), "bad_timestamp", "'time_local'"),
        (('"17/May/2015:08:05:32 +0000"', "true"), "bad_timestamp", "true"),
        (
            ('"17/May/2015:08:05:32 +0000"', '"31/Feb/2015:08:05:32 +0000"'),
            "bad_timestamp",
            "31/Feb",
        ),
        (('"time_local":"17/May/2015:08:05:32 +0000",', ""), "bad_timestamp", "no time field"),
        (('"remote_addr":"93.180.71.3"', '"remote_addr":"-"'), "missing_field", "client address"),
        (('"remote_addr":"93.180.71.3"', '"remote_addr":{"ip":1}'), "bad_type", "remote_addr"),
    ],
)
def test_bad_fields_are_quarantined(change: tuple[str, str], reason: str, detail_part: str) -> None:
    old, new = change
    assert old in COMBINED
    got_reason, detail = rejected(COMBINED.replace(old, new))
    assert got_reason == reason
    assert detail_part in detail


@pytest.mark.parametrize(
    "line", ["not json", "[1, 2]", '"a string"', "{'single': 1}", '{"a": NaN}']
)
def test_non_objects_are_bad_json(line: str) -> None:
    assert rejected(line)[0] == "bad_json"


def test_block_keeps_order_positions_and_splitter_rejects() -> None:
    parsed = parse(COMBINED, "", "garbage", SPLIT_FIELDS)
    assert parsed.events.schema == TRAFFIC_SCHEMA
    assert parsed.events.column("source_line").to_pylist() == [1, 4]
    offsets = parsed.events.column("source_offset").to_pylist()
    assert offsets == [0, len(COMBINED) + 1 + 1 + len("garbage") + 1]
    assert sorted(parsed.rejects.reasons().items()) == [("bad_json", 1), ("blank", 1)]


def test_empty_block() -> None:
    parsed = NGINX_JSON.parse(split_block(b"", source="t", base_offset=0, base_line=1))
    assert len(parsed.events) == 0
    assert parsed.events.schema == TRAFFIC_SCHEMA


_KEYS = [
    "time_iso8601",
    "time_local",
    "msec",
    "time",
    "remote_addr",
    "http_x_forwarded_for",
    "request",
    "request_uri",
    "uri",
    "args",
    "status",
    "body_bytes_sent",
    "request_time",
    "upstream_response_time",
    "http_referer",
    "host",
]
_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats()  # NaN and Infinity come out as invalid JSON literals
    | st.text(max_size=20)
    | st.sampled_from(["-", "", "200", "0.001, -", "17/May/2015:08:05:32 +0000", "1e999", "9" * 40])
)
_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=4), inner, max_size=3)
    ),
    max_leaves=6,
)
_objects = st.dictionaries(st.sampled_from(_KEYS) | st.text(max_size=6), _values, max_size=10).map(
    json.dumps
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(_objects | st.text(max_size=60), max_size=8))
def test_random_lines_never_raise_and_reconcile(lines: list[str]) -> None:
    data = "\n".join(lines).encode("utf-8", "surrogatepass")
    block = split_block(data, source="t", base_offset=0, base_line=1)
    parsed = NGINX_JSON.parse(block)
    assert block.read == len(parsed.events) + len(parsed.rejects)
    assert parsed.events.schema == TRAFFIC_SCHEMA
    # Bad input must be rejected on purpose, not by parse_rows' safety net for bugs.
    for line in block.lines.to_pylist():
        with contextlib.suppress(Reject):
            parse_nginx_json(line)
    for row in parsed.events.to_pylist():
        assert 100 <= row["status"] <= 599
        assert row["bytes"] >= 0
        assert row["latency_ms"] is None or row["latency_ms"] >= 0
        assert row["ts"].tzinfo is not None
