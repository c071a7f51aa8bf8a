"""A user ships logs with ``loglambda tail``, through the installed console script only.

generate an access log and an app log -> ``tail --once`` both (cron style) -> the
counts reconcile and match the event log and the quarantine -> the files grow -> the
next ``--once`` run takes only the new lines -> a long-running ``tail`` follows a
third file until SIGINT stops it cleanly.
"""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.schemas import Kind

pytestmark = pytest.mark.e2e

LOGLAMBDA = str(Path(sys.executable).with_name("loglambda"))
COUNTS = re.compile(r"read ([\d,]+) = accepted ([\d,]+) \+ quarantined ([\d,]+)")


def cli(*args: str | Path) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOGLAMBDA_")}
    return subprocess.run(
        [LOGLAMBDA, *map(str, args)],
        check=True,
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )


def counts(text: str, prefix: str) -> tuple[int, int, int]:
    """``(read, accepted, quarantined)`` from the stderr line starting with ``prefix``."""
    for row in text.splitlines():
        if row.startswith(prefix) and (m := COUNTS.search(row)):
            read, accepted, quarantined = (int(g.replace(",", "")) for g in m.groups())
            return read, accepted, quarantined
    raise AssertionError(f"no counts for {prefix!r} in:\n{text}")


def log_size(home: Path, kind: Kind) -> int:
    return LocalEventLog(home).end_offset(kind, f"{kind}/0")


def quarantined(home: Path) -> int:
    return sum(pq.read_metadata(f).num_rows for f in (home / "quarantine").glob("*.parquet"))


def wait_for(condition: Callable[[], bool], timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_tail_once_then_follow(tmp_path: Path) -> None:
    home = tmp_path / "home"
    access, app = tmp_path / "access.log", tmp_path / "app.log"
    cli("generate", access, "--lines", "40000", "--malformed-share", "0.01")
    cli("generate", app, "--kind", "logs", "--lines", "5000")

    # First cron run: both files from their start, formats detected.
    first = cli("tail", "--once", "--home", home, access, app).stderr
    assert "detected format: combined" in first and "detected format: json" in first
    read, accepted, rejected = counts(first, "total:")
    assert read == 45_000 == accepted + rejected
    a_read, a_accepted, a_rejected = counts(first, str(access))
    assert (a_read, a_accepted + a_rejected) == (40_000, 40_000)
    assert a_rejected >= 400  # 1 % of the access log was written malformed
    assert log_size(home, "traffic") == a_accepted
    assert log_size(home, "logs") == accepted - a_accepted
    assert quarantined(home) == rejected

    # The quarantine names the file generation, line and reason of every rejected line.
    shown = cli("quarantine", "--home", home, "--limit", "5").stdout
    assert re.search(rf"{re.escape(str(access))}#g1-i\d+:\d+: \w+", shown), shown

    # The access log grows (another day of traffic); the next run takes only that.
    more = tmp_path / "more.log"
    cli("generate", more, "--lines", "7000", "--seed", "7", "--start", "2026-11-02T00:00:00Z")
    with open(access, "ab") as fh:
        fh.write(more.read_bytes())
    second = cli("tail", "--once", "--home", home, access, app).stderr
    read2, accepted2, rejected2 = counts(second, "total:")
    assert read2 == 7_000 == accepted2 + rejected2
    assert log_size(home, "traffic") == a_accepted + accepted2
    assert quarantined(home) == rejected + rejected2
    assert counts(cli("tail", "--once", "--home", home, access, app).stderr, "total:")[0] == 0

    # A long-running tail: lines appended while it runs arrive; SIGINT stops it cleanly.
    live = tmp_path / "live.log"
    err_path = tmp_path / "live.err"
    before = log_size(home, "traffic")
    with open(err_path, "wb") as err:
        proc = subprocess.Popen(
            [LOGLAMBDA, "tail", "--home", str(home), "--poll-interval", "0.05", str(live)],
            stderr=err,
        )
    try:
        wait_for(lambda: "does not exist yet" in err_path.read_text())
        live.write_bytes(more.read_bytes()[: more.read_bytes().rfind(b"\n", 0, 200_000) + 1])
        expected = live.read_bytes().count(b"\n")
        wait_for(lambda: log_size(home, "traffic") + quarantined(home) - rejected - rejected2
                 >= before + expected)  # fmt: skip
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
    out = err_path.read_text()
    assert "SIGINT: finishing the batch in hand" in out
    live_read, live_accepted, live_rejected = counts(out, "total:")
    assert live_read == expected == live_accepted + live_rejected
    assert log_size(home, "traffic") == before + live_accepted
