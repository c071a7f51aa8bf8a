"""The standard catalog on the DuckDB engine against a hand-written SQL floor.

    python bench/batch_bench.py [--lines 10000000] [--keep DIR]

Generates ``--lines`` events over 2 days with the project's generator and imports them
(kept in ``--keep`` for reruns), then, in the same run:

- **catalog**: ``DuckDBEngine().compute_all`` over every view of the standard
  catalog (exact measures, HLL sketches, latency histograms, UA lookups);
- **floor**: hand-written DuckDB SQL grouping the same keys with only the exact
  measures (count, sum, min, max) — the least work any engine must do.

Prints both times and the ratio. Target: catalog <= 1.5x the floor.
"""

from __future__ import annotations

import argparse
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import duckdb

TARGET = 1.5

# The floor: same groupings as the standard catalog, exact measures only. Written
# by hand on purpose: it must not share the compiler it is measuring.
ROUTE = (
    "regexp_replace(regexp_replace(regexp_replace(path, "
    "'/[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}(/|$)', "
    "'/:uuid\\1', 'g'), '/[0-9]+(/|$)', '/:id\\1', 'g'), "
    "'/[0-9a-fA-F]{16,}(/|$)', '/:hash\\1', 'g')"
)
LOAD = f"""
CREATE OR REPLACE TEMP TABLE t AS
SELECT ts, host, {ROUTE} AS route, method, (status // 100) || 'xx' AS status_class, status,
       bytes, latency_ms, client_ip, user_agent, referrer,
       CASE WHEN query IS NULL THEN path ELSE path || '?' || query END AS request, protocol
FROM read_parquet($files)
"""
WINDOW = """
SELECT date_trunc('{g}', ts) AS w, host, route, method, status_class, count(*) AS requests,
       sum(bytes), count(*) FILTER (WHERE status >= 500), count(latency_ms), sum(latency_ms),
       min(latency_ms), max(latency_ms)
FROM t GROUP BY ALL
"""
PANEL = (
    "SELECT date_trunc('day', ts) AS d, {dims}, count(*), sum(bytes) FROM t {where} GROUP BY ALL"
)
FLOOR = [
    WINDOW.format(g="minute"),
    WINDOW.format(g="hour"),
    WINDOW.format(g="day"),
    "SELECT date_trunc('day', ts), count(*), sum(bytes) FROM t GROUP BY ALL",
    "SELECT date_trunc('hour', ts), count(*), sum(bytes) FROM t GROUP BY ALL",
    PANEL.format(dims="status, status_class", where=""),
    PANEL.format(dims="request, method, protocol", where="WHERE status <> 404"),
    PANEL.format(dims="request, method, protocol", where="WHERE status = 404"),
    PANEL.format(dims="client_ip", where=""),
    PANEL.format(dims="user_agent", where=""),
    PANEL.format(dims="hour(ts)", where=""),
    PANEL.format(
        dims="regexp_extract(referrer, '//([^/]*)', 1)", where="WHERE referrer IS NOT NULL"
    ),
    PANEL.format(dims="referrer", where="WHERE referrer IS NOT NULL"),
]


def run_floor(files: list[str]) -> float:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    start = time.perf_counter()
    con.execute(LOAD, {"files": files})
    for sql in FLOOR:
        con.sql(sql).to_arrow_table()
    return time.perf_counter() - start


def run_catalog(files: list[str]) -> tuple[float, int]:
    from loglambda.batch.engine_duckdb import DuckDBEngine
    from loglambda.core.catalog import STANDARD_CATALOG

    traffic = {name: v for name, v in STANDARD_CATALOG.items() if v.kind == "traffic"}
    start = time.perf_counter()
    out = DuckDBEngine().compute_all(list(traffic.values()), {"traffic": [Path(f) for f in files]})
    return time.perf_counter() - start, sum(t.num_rows for t in out.values())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--lines", type=int, default=10_000_000)
    ap.add_argument("--repeat", type=int, default=2)
    ap.add_argument("--keep", type=Path, default=None)
    args = ap.parse_args()

    from loglambda.batch.master import MasterDataset

    loglambda = str(Path(sys.executable).with_name("loglambda"))
    work = args.keep or Path(tempfile.mkdtemp(prefix="batch-bench-"))
    home = work / "home"
    if not (home / "master" / "_manifest").is_dir():
        log = work / "access.log"
        gen = [loglambda, "generate", str(log), "--lines", str(args.lines), "--days", "2"]
        subprocess.run(gen, check=True)
        subprocess.run([loglambda, "import", "--home", str(home), str(log)], check=True)
        log.unlink()
    snapshot = MasterDataset(home).snapshot()
    files = [str(p) for p in snapshot.files("traffic")]
    print(f"master: {snapshot.rows('traffic'):,} events in {len(files)} files")

    floors, catalogs = [], []
    for i in range(args.repeat):
        floors.append(run_floor(files))
        seconds, rows = run_catalog(files)
        catalogs.append(seconds)
        print(f"run {i}: floor {floors[-1]:.2f} s, catalog {catalogs[-1]:.2f} s ({rows:,} rows)")
    ratio = min(catalogs) / min(floors)
    print(f"floor (hand-written SQL, exact measures): {min(floors):.2f} s")
    print(f"standard catalog on DuckDBEngine:         {min(catalogs):.2f} s")
    print(f"ratio: {ratio:.2f}x")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"RESULT batch_catalog_vs_floor {ratio:.2f} x target <= {TARGET:g} {verdict}")
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
