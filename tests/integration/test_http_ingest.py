"""``POST /v1/ingest`` end to end: bodies in, events in the local event log out.

Every test checks what the log holds afterwards, not only the response: an accepted
request's events are in the log exactly once, a refused request changed nothing, and
read = accepted + quarantined. One test runs the real ``loglambda serve`` process.
"""

from __future__ import annotations

import gzip
import http.client
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from fastapi.testclient import TestClient

from loglambda.core.config import Settings
from loglambda.core.eventlog import OffsetRange
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.parsers import get_parser
from loglambda.core.schemas import Kind
from loglambda.ingest.frontdoor import parse_lines
from loglambda.ingest.http import BadBody, BodyTooLarge, IngestLimits, gunzip
from loglambda.serving.app import create_app
from loglambda.serving.auth import TokenStore

pytestmark = pytest.mark.integration

WRITE, READ = "w-token-123", "r-token-456"
TOKENS = TokenStore.parse(f"{WRITE}:write,{READ}:read")
NDJSON = "application/x-ndjson"
TIMEOUT = 30.0


def client_for(home: Path, **kwargs: Any) -> TestClient:
    kwargs.setdefault("tokens", TOKENS)
    return TestClient(create_app(Settings.load(home), **kwargs))


@pytest.fixture
def client(home: Path) -> Iterator[TestClient]:
    with client_for(home) as c:
        yield c


def post(
    client: TestClient,
    body: bytes,
    *,
    content_type: str = NDJSON,
    token: str | None = WRITE,
    headers: dict[str, str] | None = None,
    **params: str,
) -> Any:
    sent = {"Content-Type": content_type, **(headers or {})}
    if token is not None:
        sent["Authorization"] = f"Bearer {token}"
    return client.post("/v1/ingest", params=params, content=body, headers=sent)


def ndjson(*records: dict[str, Any]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def in_log(home: Path, kind: Kind) -> pa.Table:
    log = LocalEventLog(home)
    return log.read(kind, f"{kind}/0", 0, 10**9).events


def ends(home: Path) -> tuple[int, int]:
    log = LocalEventLog(home)
    return log.end_offset("traffic", "traffic/0"), log.end_offset("logs", "logs/0")


def quarantined(home: Path) -> pa.Table:
    files = sorted((home / "quarantine").glob("*.parquet"))
    return pa.concat_tables([pq.read_table(f) for f in files]) if files else pa.table({})


def check_report(report: dict[str, Any]) -> None:
    assert report["read"] == report["accepted"] + report["quarantined"]
    assert report["quarantined"] == sum(report["reasons"].values())


def traffic(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "ts": f"2026-11-01T10:00:{i % 60:02d}.5Z",
        "client_ip": f"10.0.0.{i % 250}",
        "method": "GET",
        "path": f"/p/{i}",
        "status": 200,
        "bytes": i,
        "latency_ms": i / 4,
        **extra,
    }


# -- bodies ------------------------------------------------------------------------------


def test_ndjson_traffic_events_land_in_the_log_with_provenance(
    client: TestClient, home: Path
) -> None:
    records = [traffic(i) for i in range(5)]
    records[3]["ts"] = 1_793_527_200_250  # epoch ms beside RFC 3339 strings
    body = ndjson(*records)
    response = post(client, body, kind="traffic")
    assert response.status_code == 200, response.text
    report = response.json()
    check_report(report)
    assert (report["read"], report["accepted"], report["quarantined"]) == (5, 5, 0)
    assert report["offsets"] == [{"partition": "traffic/0", "from": 0, "to": 5}]
    assert response.headers["X-Request-Id"] == report["request_id"]
    rows = in_log(home, "traffic").to_pylist()
    assert [r["path"] for r in rows] == [f"/p/{i}" for i in range(5)]
    assert rows[0]["ts"] == datetime(2026, 11, 1, 10, 0, 0, 500000, tzinfo=UTC)
    assert rows[3]["ts"] == datetime(2026, 11, 1, 10, 0, 0, 250000, tzinfo=UTC)
    assert [r["latency_ms"] for r in rows] == [i / 4 for i in range(5)]
    assert {r["source"] for r in rows} == {f"http:{report['request_id']}"}
    starts = [0]
    for line in body.splitlines(keepends=True)[:-1]:
        starts.append(starts[-1] + len(line))
    assert [r["source_line"] for r in rows] == [1, 2, 3, 4, 5]
    assert [r["source_offset"] for r in rows] == starts


def test_ndjson_logs_events(client: TestClient, home: Path) -> None:
    records = [
        {"ts": "2026-11-01T10:00:00Z", "service": "api", "level": "error", "message": "boom"},
        {"ts": 1_793_527_200, "level": "WARNING", "attrs": {"user": 7}, "trace_id": "ab"},
    ]
    report = post(client, ndjson(*records), content_type="application/json", kind="logs").json()
    assert (report["kind"], report["accepted"]) == ("logs", 2)
    rows = in_log(home, "logs").to_pylist()
    assert [(r["service"], r["level"], r["attrs"]) for r in rows] == [
        ("api", "error", None),
        (None, "warn", '{"user":7}'),
    ]


def test_raw_combined_lines_equal_a_direct_parse(
    client: TestClient, home: Path, sample_log: Path
) -> None:
    data = b"".join(sample_log.read_bytes().splitlines(keepends=True)[:500])
    report = post(client, data, content_type="text/plain", format="combined").json()
    check_report(report)
    assert report["read"] == 500 and report["accepted"] > 490
    expected, _ = parse_lines(data, get_parser("combined"), source="x")
    got = in_log(home, "traffic")
    drop = ["source"]
    assert got.drop_columns(drop).equals(expected.events.drop_columns(drop))


def test_gzip_body_gives_the_same_events(home: Path, sample_log: Path) -> None:
    data = b"".join(sample_log.read_bytes().splitlines(keepends=True)[:300])
    with client_for(home) as client:
        plain = post(client, data, content_type="text/plain", format="combined").json()
        zipped = post(
            client,
            gzip.compress(data),
            content_type="text/plain",
            headers={"Content-Encoding": "gzip"},
            format="combined",
        ).json()
    assert zipped["accepted"] == plain["accepted"] == 300
    table = in_log(home, "traffic").drop_columns(["source"])
    assert table.slice(0, 300).equals(table.slice(300, 300))


LINES = [
    '203.0.113.7 - - [01/Nov/2026:10:00:00 +0000] "GET /a HTTP/1.1" 200 512 "-" "curl/8.5"',
    '203.0.113.8 - - [01/Nov/2026:10:00:01 +0000] "POST /b?x=1 HTTP/2.0" 404 0 '
    '"https://r.example/" "Mozilla/5.0"',
    "this is not an access log line",
]


def test_vector_http_sink_payload(client: TestClient, home: Path) -> None:
    """Vector ``http`` sink, ``encoding.codec = "json"``, ``framing.method =
    "newline_delimited"``, reading a file source: one event object per line."""
    body = b"".join(
        orjson.dumps(
            {
                "file": "/var/log/nginx/access.log",
                "host": "web-1",
                "message": line,
                "source_type": "file",
                "timestamp": "2026-11-01T10:00:02.123456789Z",
            }
        )
        + b"\n"
        for line in LINES
    )
    response = post(client, body, content_type="application/x-ndjson", format="combined")
    report = response.json()
    check_report(report)
    assert (report["accepted"], report["reasons"]) == (2, {"no_match": 1})
    assert report["rejected"][0]["line"] == 3
    rows = in_log(home, "traffic").to_pylist()
    assert [(r["client_ip"], r["path"], r["status"]) for r in rows] == [
        ("203.0.113.7", "/a", 200),
        ("203.0.113.8", "/b", 404),
    ]
    assert [r["source_line"] for r in rows] == [1, 2]
    # Without framing Vector's json codec sends one JSON array per batch.
    array = b"[" + b",".join(orjson.dumps({"message": line}) for line in LINES[:2]) + b"]"
    report = post(client, array, content_type="application/json", format="combined").json()
    assert report["accepted"] == 2


def test_fluent_bit_json_lines_payload(client: TestClient, home: Path) -> None:
    """Fluent Bit ``http`` output, ``Format json_lines`` (date key ``date``, epoch
    double), tail input: the line is in ``log``; Docker's keeps its newline."""
    body = (
        b"".join(
            orjson.dumps({"date": 1793527200.123456 + i, "log": line}) + b"\n"
            for i, line in enumerate(LINES[:2])
        )
        + orjson.dumps(
            {"date": 1793527203.0, "log": LINES[0] + "\n", "stream": "stdout", "time": "x"}
        )
        + b"\n"
    )
    report = post(client, body, content_type="application/json", format="combined").json()
    check_report(report)
    assert (report["read"], report["accepted"]) == (3, 3)
    rows = in_log(home, "traffic").to_pylist()
    assert [r["user_agent"] for r in rows] == ["curl/8.5", "Mozilla/5.0", "curl/8.5"]


def test_malformed_json_and_wrong_types_are_quarantined(client: TestClient, home: Path) -> None:
    body = (
        ndjson(traffic(1))
        + b'{"ts": "2026-11-01T10:00:00Z", "client_ip": \n'
        + ndjson(traffic(2, status="abc"), traffic(3))
        + b"\xff\xfe not utf-8\n"
    )
    response = post(client, body, kind="traffic")
    assert response.status_code == 200
    report = response.json()
    check_report(report)
    assert report["accepted"] == 2
    assert report["reasons"] == {"bad_json": 1, "bad_type": 1, "invalid_utf8": 1}
    assert [(r["line"], r["reason"]) for r in report["rejected"]] == [
        (2, "bad_json"),
        (3, "bad_type"),
        (5, "invalid_utf8"),
    ]
    assert [r["path"] for r in in_log(home, "traffic").to_pylist()] == ["/p/1", "/p/3"]
    q = quarantined(home)
    assert sorted(q.column("source_line").to_pylist()) == [2, 3, 5]
    assert set(q.column("source").to_pylist()) == {f"http:{report['request_id']}"}
    assert report["quarantine_file"].startswith("quarantine/http-")


# -- refusals change nothing ---------------------------------------------------------------


def test_huge_body_is_413_and_nothing_is_appended(home: Path) -> None:
    body = ndjson(*(traffic(i) for i in range(200)))
    with client_for(home, limits=IngestLimits(max_body=4096)) as client:
        assert post(client, body[:4000], kind="traffic").status_code == 200
        before = ends(home)
        assert post(client, body, kind="traffic").status_code == 413

        def chunks() -> Iterator[bytes]:  # no Content-Length: caught while streaming
            for i in range(0, len(body), 1000):
                yield body[i : i + 1000]

        headers = {"Content-Type": NDJSON, "Authorization": f"Bearer {WRITE}"}
        streamed = client.post(
            "/v1/ingest", params={"kind": "traffic"}, content=chunks(), headers=headers
        )
        assert streamed.status_code == 413
    assert ends(home) == before


def test_gzip_bomb_is_413(home: Path) -> None:
    bomb = gzip.compress(b"\n" * (64 << 20), compresslevel=9)
    assert len(bomb) < 100_000
    with client_for(home, limits=IngestLimits(max_body=1 << 20)) as client:
        response = post(
            client,
            bomb,
            headers={"Content-Encoding": "gzip"},
            content_type="text/plain",
            format="combined",
        )
        assert response.status_code == 413
        broken = post(client, b"not gzip", headers={"Content-Encoding": "gzip"}, kind="traffic")
        assert broken.status_code == 400
    assert ends(home) == (0, 0)


def test_auth(client: TestClient, home: Path) -> None:
    body = ndjson(traffic(1))
    missing = post(client, body, token=None, kind="traffic")
    assert missing.status_code == 401
    assert missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert post(client, body, token="nope", kind="traffic").status_code == 401
    assert post(client, body, token=WRITE + "x", kind="traffic").status_code == 401
    basic = post(client, body, token=None, headers={"Authorization": "Basic dTpw"}, kind="traffic")
    assert basic.status_code == 401
    read_only = post(client, body, token=READ, kind="traffic")
    assert read_only.status_code == 403
    assert 'error="insufficient_scope"' in read_only.headers["WWW-Authenticate"]
    assert client.get("/healthz").status_code == 200  # no token needed
    assert ends(home) == (0, 0)


def test_content_type_encoding_and_parameters(client: TestClient, home: Path) -> None:
    body = ndjson(traffic(1))
    assert post(client, body, content_type="text/html", kind="traffic").status_code == 415
    assert post(client, body, content_type="text/plain", kind="traffic").status_code == 415
    assert post(client, body, content_type="text/csv", format="combined").status_code == 415
    brotli = post(client, body, headers={"Content-Encoding": "br"}, kind="traffic")
    assert brotli.status_code == 415
    unknown_kind = post(client, body, kind="metrics")
    assert unknown_kind.status_code == 400 and "traffic, logs" in unknown_kind.text
    unknown_format = post(client, body, content_type="text/plain", format="w3c")
    assert unknown_format.status_code == 400 and "combined" in unknown_format.text
    assert post(client, body).status_code == 400
    assert (
        post(client, body, content_type="text/plain", format="json", kind="traffic").status_code
        == 400
    )
    not_array = post(client, b"[{", kind="traffic")
    assert not_array.status_code == 400
    assert ends(home) == (0, 0)


class SlowLog(LocalEventLog):
    """A local log whose appends wait until the test lets them through."""

    def __init__(self, home: Path) -> None:
        super().__init__(home)
        self.entered = threading.Event()
        self.release = threading.Event()

    def append(self, kind: Kind, events: pa.Table) -> tuple[OffsetRange, ...]:
        self.entered.set()
        assert self.release.wait(TIMEOUT), "test never released the append"
        return super().append(kind, events)


@pytest.mark.parametrize("queued", [0, 1])
def test_429_when_the_log_does_not_keep_up(home: Path, queued: int) -> None:
    """One request holds the only turn; the next is refused at admission (no queue)
    or after waiting its queue timeout (queue of one) -- and appends nothing."""
    slow = SlowLog(home)
    limits = IngestLimits(max_in_flight=1, max_queued=queued, queue_timeout_s=0.2)
    with client_for(home, limits=limits, event_log=slow) as client:
        first: list[Any] = []
        holder = threading.Thread(
            target=lambda: first.append(post(client, ndjson(traffic(1)), kind="traffic"))
        )
        holder.start()
        try:
            assert slow.entered.wait(TIMEOUT)
            refused = post(client, ndjson(traffic(2)), kind="traffic")
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) >= 1
        finally:
            slow.release.set()
            holder.join(TIMEOUT)
        assert first[0].status_code == 200
        assert post(client, ndjson(traffic(3)), kind="traffic").status_code == 200
    assert [r["path"] for r in in_log(home, "traffic").to_pylist()] == ["/p/1", "/p/3"]


def test_log_holds_exactly_what_was_accepted(client: TestClient, home: Path) -> None:
    """Several requests of every shape: the log holds each accepted record once, in
    request order, and read = accepted + quarantined over all of them."""
    sent: list[tuple[int, dict[str, Any]]] = []
    totals = [0, 0, 0]
    for n in range(6):
        records = [traffic(100 * n + i) for i in range(20)]
        records[n] = traffic(100 * n + n, status=99)  # one bad per request
        body = ndjson(*records)
        kwargs: dict[str, Any] = {}
        if n % 2:
            body, kwargs = gzip.compress(body), {"headers": {"Content-Encoding": "gzip"}}
        report = post(client, body, kind="traffic", **kwargs).json()
        check_report(report)
        for key, i in zip(("read", "accepted", "quarantined"), range(3), strict=True):
            totals[i] += report[key]
        sent.extend((n, r) for i, r in enumerate(records) if i != n)
    rows = in_log(home, "traffic").to_pylist()
    assert [r["path"] for r in rows] == [r["path"] for _, r in sent]
    assert [r["bytes"] for r in rows] == [r["bytes"] for _, r in sent]
    assert totals == [120, len(rows), quarantined(home).num_rows]


# -- pieces: tokens, gzip -------------------------------------------------------------------


def test_token_store_parsing_and_scopes() -> None:
    store = TokenStore.parse("# shippers\nabc:write, def:read+write\n\nghi:read  # dashboards\n")
    assert store.scopes_of("abc") == {"write"}
    assert store.scopes_of("def") == {"read", "write"}
    assert store.scopes_of("ghi") == {"read"}
    assert store.scopes_of("abcd") is None and store.scopes_of("") is None
    assert not TokenStore().enabled
    for bad in ("abc", "abc:admin", ":write", "a b:write", "abc:"):
        with pytest.raises(ValueError):
            TokenStore.parse(bad)


def test_gunzip_caps_members_and_truncation() -> None:
    two = gzip.compress(b"a\n") + gzip.compress(b"b\n")
    assert gunzip(two, 100) == b"a\nb\n"
    assert gunzip(gzip.compress(b"x" * 100), 100) == b"x" * 100
    with pytest.raises(BodyTooLarge):
        gunzip(gzip.compress(b"x" * 101), 100)
    with pytest.raises(BadBody):
        gunzip(gzip.compress(b"x" * 1000)[:-12], 10_000)
    with pytest.raises(BadBody):
        gunzip(b"plain", 100)


# -- the real server -------------------------------------------------------------------------


def _banner(proc: subprocess.Popen[str]) -> str:
    """The first stdout line of ``serve`` (read in a thread: readline has no timeout)."""
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(proc.stdout.readline() if proc.stdout else "")
    )
    reader.start()
    reader.join(TIMEOUT)
    assert lines and lines[0], f"serve printed nothing; exit code {proc.poll()}"
    return lines[0]


def test_serve_subprocess_over_a_socket(home: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text(f"# shippers\n{WRITE}:write\n")
    loglambda = str(Path(sys.executable).with_name("loglambda"))
    cmd = [loglambda, "serve", "--home", str(home), "--port", "0"]
    env = {**os.environ, "LOGLAMBDA_TOKENS_FILE": str(tokens)}
    refused = subprocess.run(
        [*cmd, "--host", "0.0.0.0"],
        env={k: v for k, v in os.environ.items() if not k.startswith("LOGLAMBDA_TOKENS")},
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
    )
    assert refused.returncode != 0 and "--insecure" in refused.stderr
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        banner = _banner(proc)
        port = int(banner.split("http://127.0.0.1:")[1].split()[0])
        # The socket listens before the banner is printed, so this connects at once and
        # waits (at most TIMEOUT) for the app to answer: no retry loop, no sleep.
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        conn.request("GET", "/healthz")
        assert conn.getresponse().status == 200
        conn.close()
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=TIMEOUT)
        headers = {"Content-Type": NDJSON, "Authorization": f"Bearer {WRITE}"}
        for batch in range(3):  # one keep-alive connection, several requests
            body = ndjson(*(traffic(10 * batch + i) for i in range(10)))
            conn.request("POST", "/v1/ingest?kind=traffic", body=body, headers=headers)
            response = conn.getresponse()
            report = orjson.loads(response.read())
            assert response.status == 200 and report["accepted"] == 10
        conn.close()
    finally:
        proc.terminate()
        proc.wait(TIMEOUT)
    assert [r["path"] for r in in_log(home, "traffic").to_pylist()] == [
        f"/p/{i}" for i in range(30)
    ]
