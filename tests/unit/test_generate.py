"""Tests of ``loglambda generate``: reproducible, exact counts, realistic shape.

Malformed lines are counted with checks written here, independently of the generator
and of the project's parsers: a strict regex for combined lines and strict JSON checks
for the JSON formats. Their count must equal the report's, since pipeline tests
reconcile quarantine sizes against it.
"""

from __future__ import annotations

import gzip
import json
import re
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from loglambda.core.generate import (
    AppLogSpec,
    GenerateReport,
    TrafficSpec,
    main_generate,
    write_applogs,
    write_traffic,
)
from loglambda.core.generate import output as generate_output

pytestmark = pytest.mark.unit

MONTHS = "Jan|Feb|Mar|Apr|May|Jun|Jul|Aug|Sep|Oct|Nov|Dec"
COMBINED = re.compile(
    r"(?P<ip>[0-9a-f.:]+) - (?P<user>\S+) "
    rf"\[(?P<time>\d{{2}}/(?:{MONTHS})/\d{{4}}:\d{{2}}:\d{{2}}:\d{{2}} [+-]\d{{4}})\] "
    r'"(?P<method>[A-Z]+) (?P<target>/\S*) (?P<proto>HTTP/\d\.\d)" '
    r'(?P<status>[1-5]\d\d) (?P<bytes>\d+) "(?P<ref>[^"]*)" "(?P<ua>[^"]*)"'
    r"(?: (?P<latency>\d+\.\d{3}))?"
)
NGINX_FIELDS = {
    "time_iso8601", "remote_addr", "request", "status", "body_bytes_sent", "request_time",
    "http_referer", "http_user_agent", "host",
}  # fmt: skip


def parse_combined(raw: bytes) -> dict[str, Any] | None:
    """The fields of a well-formed combined line, or None."""
    try:
        m = COMBINED.fullmatch(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None
    if m is None:
        return None
    fields: dict[str, Any] = m.groupdict()
    fields["ts"] = datetime.strptime(m["time"], "%d/%b/%Y:%H:%M:%S %z").astimezone(UTC)
    fields["status"] = int(m["status"])
    return fields


def parse_nginx_json(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
        ok = isinstance(obj, dict) and set(obj) == NGINX_FIELDS
        ok = ok and all(isinstance(v, str) for v in obj.values())
        ok = ok and obj["body_bytes_sent"].isdigit() and 100 <= int(obj["status"]) <= 599
        ok = ok and re.fullmatch(r"\d+\.\d{3}", obj["request_time"]) is not None
        obj["ts"] = datetime.fromisoformat(obj["time_iso8601"]).astimezone(UTC)
    except (ValueError, KeyError):
        return None
    return obj if ok else None


def parse_applog(raw: bytes) -> dict[str, Any] | None:
    try:
        obj = json.loads(raw.decode("utf-8"))
        if not isinstance(obj, dict):
            return None
        if "time" in obj:
            obj["ts"] = datetime.fromtimestamp(obj["time"] / 1000, UTC)
        else:
            obj["ts"] = datetime.fromisoformat(obj["timestamp"])
    except (ValueError, KeyError, TypeError):
        return None
    return obj


def read_lines(path: Path) -> list[bytes]:
    data = gzip.decompress(path.read_bytes()) if path.suffix == ".gz" else path.read_bytes()
    assert data.endswith(b"\n")
    return data[:-1].split(b"\n")


@pytest.fixture(scope="module")
def combined(tmp_path_factory: pytest.TempPathFactory) -> tuple[GenerateReport, list[bytes]]:
    path = tmp_path_factory.mktemp("gen") / "access.log"
    spec = TrafficSpec(lines=30_000, seed=3, malformed_share=0.005, late_share=0.005)
    report = write_traffic(spec, path)
    return report, read_lines(path)


@pytest.fixture(scope="module")
def parsed(combined: tuple[GenerateReport, list[bytes]]) -> list[dict[str, Any]]:
    return [f for f in map(parse_combined, combined[1]) if f is not None]


def test_same_seed_same_bytes_and_other_seed_differs(tmp_path: Path) -> None:
    for fmt in ("combined", "nginx_json"):
        a, b, c = (tmp_path / f"{fmt}{i}.log" for i in range(3))
        write_traffic(TrafficSpec(lines=3000, seed=11, fmt=fmt), a)
        write_traffic(TrafficSpec(lines=3000, seed=11, fmt=fmt), b)
        write_traffic(TrafficSpec(lines=3000, seed=12, fmt=fmt), c)
        assert a.read_bytes() == b.read_bytes()
        assert a.read_bytes() != c.read_bytes()
    a, b, c = (tmp_path / f"app{i}.log" for i in range(3))
    write_applogs(AppLogSpec(lines=3000, seed=11), a)
    write_applogs(AppLogSpec(lines=3000, seed=11), b)
    write_applogs(AppLogSpec(lines=3000, seed=12), c)
    assert a.read_bytes() == b.read_bytes() != c.read_bytes()


def test_line_count_and_malformed_count_are_exact(
    combined: tuple[GenerateReport, list[bytes]], parsed: list[dict[str, Any]]
) -> None:
    report, lines = combined
    assert len(lines) == report.lines == 30_000
    assert report.malformed == 150
    assert len(lines) - len(parsed) == report.malformed
    assert sum(n for _, n in report.malformed_by_kind) == report.malformed
    assert {k for k, _ in report.malformed_by_kind} >= {"truncated", "invalid_utf8", "blank"}


def test_chunk_boundaries_keep_counts_and_order(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(generate_output, "CHUNK_LINES", 700)
    path = tmp_path / "chunked.log"
    spec = TrafficSpec(lines=2500, malformed_share=0.01, jitter_share=0.0, late_share=0.0)
    report = write_traffic(spec, path)
    lines = read_lines(path)
    good = [f for f in map(parse_combined, lines) if f is not None]
    assert len(lines) == 2500
    assert len(lines) - len(good) == report.malformed == 25
    stamps = [f["ts"] for f in good]
    assert stamps == sorted(stamps)  # without jitter, chunks join in time order


def test_report_time_range_matches_lines(
    combined: tuple[GenerateReport, list[bytes]], parsed: list[dict[str, Any]]
) -> None:
    report = combined[0]
    stamps = [f["ts"] for f in parsed]
    assert report.first_ts is not None and report.last_ts is not None
    assert report.first_ts.replace(microsecond=0) == min(stamps)
    assert report.last_ts.replace(microsecond=0) == max(stamps)
    assert datetime(2026, 11, 1, tzinfo=UTC) <= min(stamps) < max(stamps)
    assert max(stamps) < datetime(2026, 11, 2, tzinfo=UTC)
    assert "30,000 traffic lines" in report.summary()


def test_diurnal_shape(parsed: list[dict[str, Any]]) -> None:
    per_hour = Counter(f["ts"].hour for f in parsed)
    assert len(per_hour) == 24
    assert max(per_hour.values()) > 2.5 * min(per_hour.values())
    assert per_hour[19] > per_hour[4]  # evening peak, small-hours trough


def test_out_of_order_and_late_lines(parsed: list[dict[str, Any]]) -> None:
    behind = []
    latest = parsed[0]["ts"]
    for f in parsed:
        behind.append((latest - f["ts"]).total_seconds())
        latest = max(latest, f["ts"])
    out_of_order = sum(1 for b in behind if b > 0) / len(behind)
    assert 0.005 < out_of_order < 0.1
    assert sum(1 for b in behind if b >= 120) > 50  # late lines: minutes to hours behind


def test_clients_bots_and_time_zones(parsed: list[dict[str, Any]]) -> None:
    googlebot = [f for f in parsed if "Googlebot" in f["ua"]]
    assert len(googlebot) > 0.03 * len(parsed)
    assert len({f["target"] for f in googlebot}) > 100  # crawlers walk many pages
    assert any("bingbot" in f["ua"] for f in parsed)
    assert any(f["ua"].startswith("curl/") or "python-requests" in f["ua"] for f in parsed)
    assert any(":" in f["ip"] for f in parsed)  # some IPv6
    assert 1000 < len({f["ip"] for f in parsed}) < 5000
    offsets = Counter(f["time"][-5:] for f in parsed)
    assert offsets.most_common(1)[0][0] == "+0000"
    assert 0.005 < 1 - offsets["+0000"] / len(parsed) < 0.05
    assert all(f["latency"] is not None for f in parsed)


def test_status_mix(parsed: list[dict[str, Any]]) -> None:
    status = Counter(f["status"] for f in parsed)
    n = len(parsed)
    assert status[200] > 0.5 * n
    assert 0.03 * n < status[304] < 0.2 * n
    assert {301, 302, 401, 403, 404} <= set(status)
    fivexx = sum(v for k, v in status.items() if k >= 500)
    assert 0 < fivexx < 0.1 * n
    probes = [f for f in parsed if f["target"] in ("/wp-login.php", "/.env")]
    assert probes and sum(f["status"] == 404 for f in probes) > 0.7 * len(probes)
    assert all(f["bytes"] == "0" for f in parsed if f["status"] in (204, 304))
    assert {f["method"] for f in parsed} >= {"GET", "POST", "PUT", "DELETE", "HEAD"}


def test_5xx_bursts_inside_incidents(
    combined: tuple[GenerateReport, list[bytes]], parsed: list[dict[str, Any]]
) -> None:
    windows = combined[0].incidents
    assert windows

    def inside(ts: datetime) -> bool:
        return any(a <= ts <= b for a, b in windows)

    def share(rows: list[dict[str, Any]]) -> float:
        return sum(bool(f["status"] >= 500) for f in rows) / max(1, len(rows))

    during = [f for f in parsed if inside(f["ts"])]
    outside = [f for f in parsed if not inside(f["ts"])]
    assert share(during) > 5 * share(outside)


def test_nginx_json_lines(tmp_path: Path) -> None:
    path = tmp_path / "access.json"
    spec = TrafficSpec(lines=5000, fmt="nginx_json", hosts=("a.example.com", "b.example.com"))
    report = write_traffic(spec, path)
    lines = read_lines(path)
    good = [o for o in map(parse_nginx_json, lines) if o is not None]
    assert len(lines) - len(good) == report.malformed == 5
    assert {o["host"] for o in good} == {"a.example.com", "b.example.com"}
    assert any(o["http_referer"] == "" for o in good)  # nginx writes absent values as ""
    assert re.fullmatch(r"[A-Z]+ /\S* HTTP/\d\.\d", good[0]["request"])


def test_app_logs_styles_and_malformed(tmp_path: Path) -> None:
    path = tmp_path / "app.log"
    report = write_applogs(AppLogSpec(lines=8000, malformed_share=0.005), path)
    lines = read_lines(path)
    good = [o for o in map(parse_applog, lines) if o is not None]
    assert len(lines) == 8000
    assert len(lines) - len(good) == report.malformed == 40
    winston = [o for o in good if "message" in o and isinstance(o["level"], str)]
    pino = [o for o in good if isinstance(o.get("level"), int) and "msg" in o]
    structlog = [o for o in good if "event" in o and "logger" in o]
    assert winston and pino and structlog
    assert len(winston) + len(pino) + len(structlog) == len(good)
    assert {o["service"] for o in winston} == {"api", "search"}
    assert {o["name"] for o in pino} == {"auth", "worker"}
    levels = Counter(str(o["level"]) for o in good)
    assert levels.most_common(1)[0][0] in ("info", "30")
    assert levels["error"] + levels["50"] > 0
    assert 0.2 < sum("trace_id" in o for o in good) / len(good) < 0.8
    assert any(re.search(r"user \d+ logged in from \S+", o.get("msg", "")) for o in pino)


def test_app_log_errors_line_up_with_traffic_incidents(tmp_path: Path) -> None:
    spec = AppLogSpec(lines=20_000, seed=5, malformed_share=0.0)
    report = write_applogs(spec, tmp_path / "app.log")
    traffic = write_traffic(TrafficSpec(lines=0, seed=5), tmp_path / "empty.log")
    assert report.incidents == traffic.incidents  # one world: same seed, same outages
    counts = {True: [0, 0], False: [0, 0]}
    for o in map(parse_applog, read_lines(tmp_path / "app.log")):
        assert o is not None
        inside = any(a <= o["ts"] <= b for a, b in report.incidents)
        counts[inside][0] += o["level"] in ("error", "critical", 50, 60)
        counts[inside][1] += 1
    share = {k: errors / max(1, n) for k, (errors, n) in counts.items()}
    assert share[True] > 2 * share[False] > 0


def test_gzip_output(tmp_path: Path) -> None:
    plain, packed, again = tmp_path / "a.log", tmp_path / "a.log.gz", tmp_path / "b.log.gz"
    spec = TrafficSpec(lines=2000)
    report = write_traffic(spec, packed)
    write_traffic(spec, plain)
    write_traffic(spec, again)
    with gzip.open(packed, "rb") as fh:
        assert fh.read() == plain.read_bytes()
    assert packed.read_bytes() == again.read_bytes()
    assert report.bytes_written == plain.stat().st_size
    assert not list(tmp_path.glob("*.part"))


def test_main_generate_and_validation(tmp_path: Path) -> None:
    report = main_generate(
        "logs", 500, tmp_path / "x.log", 1, "json", 0.5, "2026-03-01T06:00Z", 0.0, 0.0
    )
    assert report.malformed == 0 and report.first_ts is not None
    assert report.first_ts >= datetime(2026, 3, 1, 6, tzinfo=UTC)
    assert report.last_ts is not None and report.last_ts < datetime(2026, 3, 1, 18, tzinfo=UTC)
    empty = main_generate("traffic", 0, tmp_path / "e.log", 1, "combined", 1.0, None, 0.01, 0.0)
    assert empty.first_ts is None and (tmp_path / "e.log").read_bytes() == b""
    with pytest.raises(ValueError, match="kind"):
        main_generate("metrics", 10, tmp_path / "y.log", 1, "json", 1.0, None, 0.0, 0.0)
    with pytest.raises(ValueError, match="format"):
        main_generate("traffic", 10, tmp_path / "y.log", 1, "json", 1.0, None, 0.0, 0.0)
    with pytest.raises(ValueError, match="start"):
        main_generate("traffic", 10, tmp_path / "y.log", 1, "combined", 1.0, "soon", 0.0, 0.0)
    with pytest.raises(ValueError):
        TrafficSpec(lines=10, days=0)
    with pytest.raises(ValueError):
        AppLogSpec(lines=10, styles=("log4j",))  # type: ignore[arg-type]
