"""Untrusted SQL against the query engine: refused with a clear error, nothing changed.

Why: ``loglambda query`` and the HTTP API run SQL a user typed. DuckDB can read and
write files, open databases, install extensions and change its own limits; every one
of those must fail, say what was refused, and leave the disk as it was: the data home
byte for byte, and no file created outside it (including DuckDB's default ``.tmp``).
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterator
from pathlib import Path

import pyarrow as pa
import pytest

from loglambda.core.config import Settings
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.serving.sql import (
    ForbiddenQuery,
    Limits,
    QueryEngine,
    QueryError,
    QueryFailed,
    QueryTimeout,
    UnknownTable,
)
from tests.served_home import VIEWS, build_served_home

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("sqlsec") / "home"
    build_served_home(path)
    return path


@pytest.fixture(scope="module")
def engine(home: Path) -> QueryEngine:
    return QueryEngine(Settings.load(home), catalog=VIEWS, log=LocalEventLog(home))


@pytest.fixture
def outside(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """An empty directory outside the home, also the working directory (where DuckDB's
    default temp directory ``.tmp`` would be); it must stay empty."""
    path = tmp_path / "outside"
    path.mkdir()
    monkeypatch.chdir(path)
    yield path
    assert list(path.iterdir()) == []


def listing(root: Path) -> dict[str, tuple[int, int]]:
    """Every file under ``root`` with its size and modification time (ns)."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for name in dirs + files:
            p = Path(dirpath) / name
            st = p.lstat()
            out[str(p.relative_to(root))] = (st.st_size, st.st_mtime_ns)
    return out


FORBIDDEN: list[tuple[str, str]] = [
    # (sql, words the error must contain); {home} and {out} are filled in.
    ("SELECT * FROM read_csv('/etc/passwd', sep = ':')", "reading or writing files"),
    ("SELECT * FROM read_text('{home}/views/CURRENT')", "reading or writing files"),
    ("SELECT * FROM read_parquet('{home}/master/**/*.parquet')", "reading or writing files"),
    ("SELECT * FROM read_blob('{home}/log/traffic/0/*')", "reading or writing files"),
    ("SELECT * FROM glob('{home}/*')", "reading or writing files"),
    ("SELECT * FROM '{home}/views/CURRENT'", "reading or writing files"),
    ("SELECT * FROM '{home}/master/traffic/x.parquet'", "reading or writing files"),
    ("SELECT * FROM 'https://example.com/data.csv'", "reading or writing files"),
    (
        "WITH x AS (SELECT * FROM read_csv('/etc/passwd')) SELECT * FROM x",
        "reading or writing files",
    ),
    ("SELECT * FROM sniff_csv('/etc/passwd')", "reading or writing files"),
    ("COPY (SELECT * FROM traffic) TO '{out}/stolen.csv'", "COPY"),
    ("COPY traffic_minute FROM '{out}/evil.csv'", "COPY"),
    ("COPY (SELECT 1) TO '{home}/master/evil.parquet' (FORMAT parquet)", "COPY"),
    ("EXPLAIN ANALYZE COPY (SELECT 1) TO '{out}/x.csv'", "COPY"),
    ("EXPORT DATABASE '{out}/dump'", "EXPORT"),
    ("ATTACH '{out}/other.duckdb' AS other", "ATTACH"),
    ("INSTALL httpfs", "INSTALL/LOAD"),
    ("LOAD httpfs", "INSTALL/LOAD"),
    ("SET enable_external_access = true", "SET"),
    ("SET allowed_directories = ['/']", "SET"),
    ("RESET lock_configuration", "SET"),
    ("SET max_execution_time = 0", "SET"),
    ("PRAGMA enable_profiling", "PRAGMA"),
    ("CREATE SECRET s (TYPE s3, KEY_ID 'a', SECRET 'b')", "CREATE"),
    ("CREATE TABLE t AS SELECT 1", "CREATE"),
    ("CREATE MACRO getenv2(x) AS x", "CREATE"),
    ("INSERT INTO traffic_minute SELECT * FROM traffic_minute", "read-only"),
    ("DELETE FROM traffic", "read-only"),
    ("UPDATE traffic SET host = 'x'", "read-only"),
    ("DROP VIEW traffic_minute", "read-only"),
    ("SELECT 1; COPY (SELECT 1) TO '{out}/x.csv'", "one statement"),
    ("SELECT * FROM query_table('traffic')", "query_table"),
    ("CALL pragma_version()", "CALL"),
]


@pytest.mark.parametrize(("sql", "says"), FORBIDDEN, ids=[s for s, _ in FORBIDDEN])
def test_forbidden_sql_is_refused_and_changes_nothing(
    engine: QueryEngine, home: Path, outside: Path, sql: str, says: str
) -> None:
    before = listing(home)
    with pytest.raises(ForbiddenQuery) as refused:
        engine.run(sql.format(home=home, out=outside))
    assert says in str(refused.value)
    assert listing(home) == before


def test_getenv_does_not_exist(engine: QueryEngine, outside: Path) -> None:
    with pytest.raises(QueryFailed, match="getenv does not exist"):
        engine.run("SELECT getenv('HOME')")


def test_python_variables_are_not_tables(engine: QueryEngine) -> None:
    secret_frame = pa.table({"password": ["hunter2"]})  # noqa: F841 - the bait
    with pytest.raises(UnknownTable, match="'secret_frame'"):
        engine.run("SELECT * FROM secret_frame")


def test_the_lockdown_is_in_force_and_locked(engine: QueryEngine) -> None:
    [settings] = engine.run(
        "SELECT current_setting('enable_external_access') AS external, "
        "current_setting('lock_configuration') AS locked, "
        "current_setting('allowed_directories') AS dirs, "
        "current_setting('allowed_paths') AS paths, "
        "current_setting('temp_directory') AS temp, "
        "current_setting('autoinstall_known_extensions') AS autoinstall"
    ).table.to_pylist()
    assert settings == {
        "external": False,
        "locked": True,
        "dirs": [],
        "paths": [],
        "temp": "",
        "autoinstall": False,
    }


@pytest.mark.parametrize(
    "sql",
    [
        "SELECT sum(a.range * b.range) FROM range(1000000) a, range(1000000) b",
        "WITH RECURSIVE t(n) AS (SELECT 1 UNION ALL SELECT n + 1 FROM t) SELECT count(*) FROM t",
        "SELECT count(*) FROM traffic a, traffic b, traffic c",
    ],
    ids=["cross-join", "endless-recursion", "raw-cross-join"],
)
def test_a_query_that_runs_forever_is_stopped(
    engine: QueryEngine, home: Path, outside: Path, sql: str
) -> None:
    before = listing(home)
    started = time.monotonic()
    with pytest.raises(QueryTimeout, match=r"time limit of 0\.5 s"):
        engine.run(sql, timeout_s=0.5)
    assert time.monotonic() - started < 10
    assert listing(home) == before
    # The engine is fine afterwards: each query has its own connection.
    assert engine.run("SELECT 1 AS one").table.to_pylist() == [{"one": 1}]


def test_a_query_over_the_memory_limit_fails_without_spilling(home: Path, outside: Path) -> None:
    small = QueryEngine(
        Settings.load(home),
        catalog=VIEWS,
        log=LocalEventLog(home),
        limits=Limits(memory_limit="32MB", threads=1),
    )
    with pytest.raises(QueryError, match="memory"):
        small.run("SELECT list(range) FROM range(20000000)")
