"""The dashboard in a real browser (Debian's headless ``chromium``, driven by Playwright).

The journey: the sample access log imported and published as batch version 1, app log
records and more traffic sent to the real ``loglambda serve`` through ``POST /v1/ingest``
and taken in by the speed layer; the dashboard opened with a read token in the address.
It must draw every chart with data, agree with the raw events, pick up new events by
itself (auto-refresh), and show no browser error (a CSP violation would be one). A
screenshot is saved to ``test-artifacts/dashboard.png``.

The sample log is from May 2015, so "last 24 hours" (the default range) finds nothing
recent and shows the last 24 h *of data*: that fallback is part of what is tested.

Needs ``chromium`` (``apt-get install chromium``) and the ``playwright`` package (dev
extra; its own browser download is not used). In CI (``CI=true``) a missing one fails
the test; elsewhere it skips.
"""

from __future__ import annotations

import http.client
import os
import shutil
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from loglambda.batch.importer import import_file
from loglambda.batch.master import MasterDataset
from loglambda.batch.recompute import run_batch
from loglambda.core.config import Settings
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.serving.sql import QueryEngine
from loglambda.speed.cli import DuckDBSliceEngine
from loglambda.speed.driver import SpeedDriver

pytestmark = pytest.mark.e2e  # ~10 s: not slow

READ, WRITE = "dash-read-token", "dash-write-token"
TIMEOUT_S = 60.0
ARTIFACTS = Path(__file__).resolve().parents[2] / "test-artifacts"
CHARTS = ("traffic", "latency", "routes", "status", "visitors", "levels")
# Inside the sample's last 24 h (it ends 2015-05-20 21:05 UTC).
LIVE_DAY = "2015-05-20"


def _missing(what: str) -> None:
    if os.environ.get("CI") == "true":
        pytest.fail(f"{what}; CI must install it (see .ci/run)", pytrace=False)
    pytest.skip(what)


@pytest.fixture(scope="module")
def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    if path is None:
        _missing("chromium is not installed (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        _missing("playwright is not installed (pip install -e '.[dev]')")
    assert path is not None
    return path


def _send(url: str, path: str, body: bytes, token: str) -> dict[str, Any]:
    host, port = url.removeprefix("http://").split(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=TIMEOUT_S)
    headers = {"Content-Type": "application/x-ndjson", "Authorization": f"Bearer {token}"}
    conn.request("POST", path, body=body, headers=headers)
    response = conn.getresponse()
    doc: dict[str, Any] = orjson.loads(response.read())
    conn.close()
    assert response.status == 200, doc
    return doc


def _ndjson(records: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(r) + b"\n" for r in records)


def _traffic(n: int, hour: int) -> list[dict[str, Any]]:
    return [
        {
            "ts": f"{LIVE_DAY}T{hour:02d}:{i % 60:02d}:00Z",
            "client_ip": f"192.0.2.{i % 200}",
            "method": "GET",
            "path": f"/live/{i % 5}",
            "status": (200, 200, 404, 503)[i % 4],
            "bytes": 1000 + i,
            "latency_ms": 5.0 + i,
            "user_agent": "e2e-browser",
        }
        for i in range(n)
    ]


def _logs(n: int) -> list[dict[str, Any]]:
    levels = ("info", "info", "warn", "error")
    return [
        {
            "ts": f"{LIVE_DAY}T18:{i % 60:02d}:00Z",
            "service": ("api", "worker", "billing")[i % 3],
            "level": levels[i % 4],
            "message": f"e2e record {i}",
        }
        for i in range(n)
    ]


def _speed(home: Path) -> None:
    """The speed layer takes in everything appended so far."""
    with SpeedDriver(home, LocalEventLog(home), DuckDBSliceEngine()).session() as driver:
        driver.drain()


def _banner(proc: subprocess.Popen[str]) -> str:
    """The first stdout line of ``serve`` (read in a thread: readline has no timeout)."""
    lines: list[str] = []
    reader = threading.Thread(
        target=lambda: lines.append(proc.stdout.readline() if proc.stdout else "")
    )
    reader.start()
    reader.join(TIMEOUT_S)
    assert lines and lines[0], f"serve printed nothing; exit code {proc.poll()}"
    return lines[0]


@pytest.fixture
def served(home: Path, sample_log: Path) -> Iterator[str]:
    """``loglambda serve`` over the imported sample (batch version 1); its URL."""
    import_file(MasterDataset(home), sample_log)
    run_batch(home)
    loglambda = str(Path(sys.executable).with_name("loglambda"))
    env = {**os.environ, "LOGLAMBDA_TOKENS": f"{READ}:read,{WRITE}:write"}
    cmd = [loglambda, "serve", "--home", str(home), "--port", "0"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, text=True)
    try:
        banner = _banner(proc)
        yield "http://127.0.0.1:" + banner.split("http://127.0.0.1:")[1].split()[0]
    finally:
        proc.terminate()
        proc.wait(TIMEOUT_S)


def _raw_count(home: Path, start: str, end: str) -> int:
    """Requests in ``[start, end)`` counted from the raw events, not from the views."""
    engine = QueryEngine(Settings.load(home))
    result = engine.run(
        f"SELECT count(*) AS n FROM traffic WHERE ts >= TIMESTAMPTZ '{start}' "
        f"AND ts < TIMESTAMPTZ '{end}'"
    )
    n: int = result.table.to_pylist()[0]["n"]
    return n


def test_dashboard_draws_the_sample_and_follows_new_events(
    home: Path, served: str, chromium: str
) -> None:
    from playwright.sync_api import sync_playwright

    _send(served, "/v1/ingest?kind=logs", _ndjson(_logs(120)), WRITE)
    _send(served, "/v1/ingest?kind=traffic", _ndjson(_traffic(40, hour=19)), WRITE)
    _speed(home)
    problems: list[str] = []
    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1300})
            page.on("pageerror", lambda err: problems.append(f"page error: {err}"))
            page.on(
                "console",
                lambda msg: (
                    problems.append(f"console {msg.type}: {msg.text}")
                    if msg.type == "error"
                    else None
                ),
            )
            page.goto(f"{served}/dashboard/?token={READ}&refresh=1")
            # Every chart has plotted points (counted by the page, from Plotly's data).
            page.wait_for_function(
                f"""() => {{
                    const s = window.loglambda;
                    return s && s.refreshes >= 1 &&
                        {list(CHARTS)!r}.every((c) => (s.points["chart-" + c] || 0) > 0);
                }}""",
                timeout=TIMEOUT_S * 1000,
            )
            state = page.evaluate("window.loglambda")
            assert state["lastError"] is None
            assert "token" not in page.url  # the token left the address bar
            # Plotly drew SVG for each chart, not only holds data.
            for chart in CHARTS:
                marks = page.evaluate(
                    f"document.querySelectorAll('#chart-{chart} .scatterlayer .trace, "
                    f"#chart-{chart} .barlayer .point').length"
                )
                assert marks > 0, chart
            # Nothing in the last 24 h of wall time: the last 24 h of data, said so.
            assert "last 24 hours of data" in page.inner_text("#notice")
            win = state["window"]
            assert win["to"] == "2015-05-20T22:00:00.000Z"
            before = state["totals"]["requests"]
            assert before == _raw_count(home, win["from"], win["to"]) > 40
            badge = page.inner_text("#freshness")
            assert badge.startswith("batch v1") and "lag 0" in badge

            # New events arrive: the page shows them by itself, without a reload.
            _send(served, "/v1/ingest?kind=traffic", _ndjson(_traffic(25, hour=20)), WRITE)
            _speed(home)
            page.wait_for_function(
                f"() => window.loglambda.totals.requests === {before + 25}",
                timeout=TIMEOUT_S * 1000,
            )
            tile = page.inner_text("#tile-requests")
            assert tile == f"{before + 25:,}"
            ARTIFACTS.mkdir(exist_ok=True)
            page.screenshot(path=str(ARTIFACTS / "dashboard.png"), full_page=True)

            # "all data" spans the data's own range: the whole sample plus the live events.
            page.select_option("#range", "all")
            page.wait_for_function(
                f"() => window.loglambda.totals.requests === {10_000 + 40 + 25}",
                timeout=TIMEOUT_S * 1000,
            )
            assert page.is_hidden("#notice")
            # A custom range (UTC inputs) answers for exactly that range.
            page.select_option("#range", "custom")  # shows the inputs, filled with "all"
            page.fill("#from", "2015-05-18T00:00")
            page.fill("#to", "2015-05-19T00:00")
            expected = _raw_count(home, "2015-05-18T00:00:00Z", "2015-05-19T00:00:00Z")
            page.wait_for_function(
                f"() => window.loglambda.window.from.startsWith('2015-05-18T00:00') && "
                f"window.loglambda.totals.requests === {expected}",
                timeout=TIMEOUT_S * 1000,
            )
            assert "range=custom" in page.url and "from=2015-05-18T00%3A00" in page.url
        finally:
            browser.close()
    assert problems == []


def test_the_dashboard_asks_for_a_token_and_refuses_a_wrong_one(served: str, chromium: str) -> None:
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        args = ["--no-sandbox"] if os.geteuid() == 0 else []
        browser = pw.chromium.launch(executable_path=chromium, headless=True, args=args)
        try:
            page = browser.new_page()
            page.goto(f"{served}/dashboard/")
            page.wait_for_selector("#login:not([hidden])", timeout=TIMEOUT_S * 1000)
            assert "missing or unknown" in page.inner_text("#login-reason")
            page.fill("#token", WRITE)  # a real token, without the read scope
            page.click("#login button[type=submit]")
            page.wait_for_function(
                "() => (window.loglambda.lastError || '').includes('read scope')",
                timeout=TIMEOUT_S * 1000,
            )
            page.fill("#token", READ)
            page.click("#login button[type=submit]")
            page.wait_for_function(
                "() => window.loglambda.refreshes >= 1", timeout=TIMEOUT_S * 1000
            )
            assert page.is_hidden("#login")
        finally:
            browser.close()
