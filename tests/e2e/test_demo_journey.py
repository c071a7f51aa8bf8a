"""A new user's first session, through the installed console script only.

generate -> import -> batch run -> summary, as `make demo` does it, with the
reconciliation and the published views checked against the raw events.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

pytestmark = pytest.mark.e2e

LOGLAMBDA = str(Path(sys.executable).with_name("loglambda"))


def cli(*args: str | Path) -> str:
    done = subprocess.run(
        [LOGLAMBDA, *map(str, args)], check=True, capture_output=True, text=True, timeout=300
    )
    return done.stdout


def test_generate_import_batch_summary(tmp_path: Path) -> None:
    home = tmp_path / "home"
    access, app = tmp_path / "access.log.gz", tmp_path / "app.log"
    cli("generate", access, "--lines", "30000", "--days", "2", "--malformed-share", "0.01")
    cli("generate", app, "--kind", "logs", "--lines", "5000")

    out = cli("import", "--home", home, access, app)
    totals = re.search(r"total: read ([\d,]+) = imported ([\d,]+) \+ quarantined ([\d,]+)", out)
    assert totals is not None, out
    read, imported, quarantined = (int(g.replace(",", "")) for g in totals.groups())
    assert read == 35_000
    assert read == imported + quarantined
    assert quarantined >= 300  # 1 % of the access log was written malformed

    published = cli("batch", "run", "--home", home)
    assert "published version 1" in published
    status = json.loads(cli("batch", "status", "--home", home, "--json"))
    assert status, "batch status lists the published version"

    summary = json.loads(cli("summary", "--home", home, "--json"))
    con = duckdb.connect()
    events = con.execute(
        f"SELECT count(*), sum(bytes) FROM read_parquet('{home}/master/traffic/*/*/*.parquet')"
    ).fetchone()
    assert events == (summary["requests"], summary["bytes"])
    day_requests = con.execute(
        f"SELECT sum(requests) FROM read_parquet('{home}/views/traffic_day/*/*.parquet')"
    ).fetchone()
    assert day_requests == (summary["requests"],)

    # The same files again: deduplicated, nothing doubles.
    again = cli("import", "--home", home, access, app)
    assert again.count("already imported") == 2
    assert json.loads(cli("summary", "--home", home, "--json")) == summary
