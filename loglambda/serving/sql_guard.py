"""The lockdown of untrusted SQL: a locked DuckDB connection, a statement check, limits.

Why three layers: DuckDB's own settings are the wall (no file access, no extensions,
locked configuration), but a message like "Permission Error: Cannot access file" does
not tell a user that COPY is refused on purpose, and a future DuckDB default (or a hole
like the auto-allowed ``.tmp`` temp directory, see ``locked_connection``) must not be
the only thing between a query and the disk. So the statement is checked before DuckDB
runs it (one statement, read-only types only), DuckDB runs it locked down, and its
errors are translated into ``QueryError``s that name the problem.

Order matters in ``locked_connection``: ``allowed_directories`` must be set before
``enable_external_access=false`` (afterwards it can only shrink), and
``lock_configuration=true`` comes last, after our own settings, macros and UDFs.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
from collections import OrderedDict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Final

import duckdb
import pyarrow as pa

from loglambda.serving.sql_functions import register_sql_functions

ALLOWED_SQL: Final = "SELECT, WITH, VALUES, DESCRIBE, SHOW, SUMMARIZE, EXPLAIN"
_WATCHDOG_GRACE_S: Final = 2.0
_BATCH_ROWS: Final = 8192
_FORBIDDEN: Final = {
    "COPY": "COPY reads and writes files",
    "ATTACH": "ATTACH opens other databases",
    "DETACH": "DETACH closes databases",
    "LOAD": "INSTALL/LOAD add extensions",
    "SET": "SET/RESET/USE change settings",
    "VARIABLE_SET": "SET VARIABLE changes session state",
    "PRAGMA": "PRAGMA reads or changes settings",
    "CREATE": "CREATE (tables, views, macros, secrets) changes the database",
    "EXPORT": "EXPORT DATABASE writes files",
    "CALL": "CALL runs procedures",
    "TRANSACTION": "transactions are not needed for read-only queries",
    # DuckDB plans a PIVOT without an IN list as a query for the values, then a
    # statement built from them (type MULTI); with the values listed it is a SELECT.
    "MULTI": "PIVOT needs its values listed: PIVOT t ON col IN ('a', 'b') USING ...",
}
# Table functions that take a table's name as a string: the parse tree does not show
# it, so the table would not be built and the query would read an empty placeholder.
_INDIRECT: Final = frozenset({"query", "query_table"})
_INDIRECT_CALL: Final = re.compile(r"\bquery(?:_table)?\s*\(", re.IGNORECASE)
_INDIRECT_MESSAGE: Final = "query()/query_table() are not supported: name the table in FROM"
_WORD: Final = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_EXPLAIN: Final = re.compile(r"^\s*explain\s+(?:analyze\s+)?", re.IGNORECASE)
_NO_FILES: Final = (
    "not allowed: reading or writing files, URLs or extensions; query the loglambda "
    "tables instead (`.tables`)"
)
_NO_TABLE: Final = re.compile(r"Table with name (\S+) does not exist", re.IGNORECASE)


class QueryError(Exception):
    """A query that cannot be answered; the message is meant for the user."""


class ForbiddenQuery(QueryError):
    """The SQL tries something the serving layer does not allow (files, settings...)."""


class UnknownTable(QueryError):
    """The SQL names a table that does not exist; the message lists those that do."""


class QueryTimeout(QueryError):
    """The query ran longer than its time limit and was stopped."""


class QueryFailed(QueryError):
    """DuckDB refused or failed the query (syntax, types, memory): its message."""


@dataclass(frozen=True)
class Limits:
    """Per-query resource limits."""

    max_rows: int = 10_000
    timeout_s: float = 30.0
    memory_limit: str = "1GB"
    threads: int = 2


def locked_connection(limits: Limits, timeout_s: float) -> duckdb.DuckDBPyConnection:
    """A fresh in-memory database with the SQL helpers, locked down. Every setting is
    global and the helpers are in its catalog, so each connection made from it
    (``cursor()``, see ``Connections``) is locked down and equipped alike."""
    config: dict[str, Any] = {
        "threads": limits.threads,
        "memory_limit": limits.memory_limit,
        # No spilling: nothing of a query reaches the disk. And the default temp
        # directory (.tmp in the working directory) is silently added to
        # allowed_directories, where COPY could write.
        "temp_directory": "",
        # Otherwise `FROM name` scans any Python variable of that name in our frames.
        "python_enable_replacements": False,
        "autoinstall_known_extensions": False,
        "autoload_known_extensions": False,
        "allow_community_extensions": False,
    }
    con = duckdb.connect(":memory:", config=config)
    try:
        # Views' windows are UTC instants: date_trunc('day', ...) must cut UTC days.
        con.execute("SET GLOBAL TimeZone = 'UTC'")
        register_sql_functions(con, temporary=False)
        con.execute(f"SET GLOBAL max_execution_time = {max(1, round(timeout_s * 1000))}")
        # The data arrives as registered Arrow objects: DuckDB needs no directory, and
        # allowing one would allow writes into it too.
        con.execute("SET allowed_directories = []")
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
    except BaseException:
        con.close()
        raise
    return con


class Connections:
    """Each query's own DuckDB connection, locked down.

    Why not a new database per query: opening an in-memory DuckDB database costs 11-25
    ms here (DuckDB 2.0: built-in extensions, buffer manager, thread pool) plus ~4 ms to
    close, half a dashboard answer's budget. A connection (``cursor()``) of one locked
    database costs ~0.01 ms and is isolated where it matters: the tables registered on
    it are its own (TEMP), and every setting it could see or use -- no external access,
    no directories, locked configuration, the time limit -- is the database's, set
    before the lock. The database's own connection never runs a user statement, and
    statements that could change its catalog (CREATE, DROP...; its only objects are
    the helper macros) are refused by ``check_statement`` before DuckDB sees them.

    What the queries of one database share: its memory limit and worker threads, one
    budget for the queries running at a time. So each ``lane`` has its own database:
    the dashboard's fixed questions never wait for memory a user's ad-hoc SQL holds. A
    time limit other than the default gets a database of its own, closed after its
    one query.
    """

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self._dbs: dict[str, duckdb.DuckDBPyConnection] = {}
        self._lock = threading.Lock()

    @contextlib.contextmanager
    def connection(
        self, timeout_s: float, lane: str = "sql"
    ) -> Iterator[duckdb.DuckDBPyConnection]:
        db: duckdb.DuckDBPyConnection | None = None
        if timeout_s != self.limits.timeout_s:
            con = locked_connection(self.limits, timeout_s)
        else:
            with self._lock:
                db = self._dbs.get(lane)
                if db is None:
                    db = self._dbs[lane] = locked_connection(self.limits, timeout_s)
            con = db.cursor()
        try:
            yield con
        except BaseException as err:
            # DuckDB invalidates a database after a fatal or internal error: the next
            # query of this lane gets a new one instead of the same error.
            cause = err if isinstance(err, duckdb.Error) else err.__cause__
            if db is not None and isinstance(
                cause, duckdb.FatalException | duckdb.InternalException
            ):
                with self._lock:
                    if self._dbs.get(lane) is db:
                        del self._dbs[lane]
            raise
        finally:
            con.close()


def check_statement(con: duckdb.DuckDBPyConnection, sql: str) -> str:
    """The one read-only statement of ``sql`` (parsed, not bound), or ForbiddenQuery."""
    try:
        statements = con.extract_statements(sql)
    except duckdb.Error as err:
        raise QueryFailed(str(err)) from err
    if not statements:
        raise QueryFailed("no SQL statement given")
    if len(statements) > 1:
        raise ForbiddenQuery(f"one statement per query, got {len(statements)}")
    kind = statements[0].type.name
    if kind == "EXPLAIN":
        inner = _EXPLAIN.sub("", sql, count=1)
        if inner == sql:  # a comment before EXPLAIN: not worth parsing around
            raise ForbiddenQuery("EXPLAIN is allowed only at the start, before a SELECT")
        check_statement(con, inner)  # EXPLAIN ANALYZE runs it: the same rules apply
        return sql.strip().rstrip(";")
    if kind != "SELECT":
        what = _FORBIDDEN.get(kind, f"{kind} would write, and the tables are read-only")
        raise ForbiddenQuery(f"not allowed: {what}. Only read-only queries run ({ALLOWED_SQL}).")
    return sql.strip().rstrip(";")


@dataclass(frozen=True)
class TableRefs:
    """The known tables a statement names (lower case), and whether they are all it can
    see: ``closed`` when the parse tree has no catalog view (``information_schema``,
    ``duckdb_tables``...), table function, SHOW or DESCRIBE, so the tables it does not
    name may be left unregistered without the answer changing."""

    names: set[str]
    closed: bool


_REFS: OrderedDict[tuple[str, frozenset[str]], TableRefs] = OrderedDict()
_REFS_KEPT: Final = 256
_REFS_LOCK: Final = threading.Lock()


def referenced_tables(con: duckdb.DuckDBPyConnection, sql: str, known: set[str]) -> TableRefs:
    """Which of ``known`` the statement names, from DuckDB's parse tree.

    Remembered per statement text (a parse depends on the text alone; ~3 ms saved on
    each repeated dashboard question)."""
    key = (sql, frozenset(known))
    with _REFS_LOCK:
        found = _REFS.get(key)
    if found is None:
        found = _referenced_tables(con, sql, known)
        with _REFS_LOCK:
            _REFS[key] = found
            while len(_REFS) > _REFS_KEPT:
                _REFS.popitem(last=False)
    return TableRefs(set(found.names), found.closed)


def _referenced_tables(con: duckdb.DuckDBPyConnection, sql: str, known: set[str]) -> TableRefs:
    try:
        [(tree,)] = con.execute("SELECT json_serialize_sql(?)", [sql]).fetchall()
        parsed = json.loads(tree)
    except duckdb.Error:
        parsed = {"error": True}
    if parsed.get("error", True):
        # Not serialisable (PIVOT, EXPLAIN): every word of the text that names a table
        # counts. Over-approximating only builds a table too many.
        if _INDIRECT_CALL.search(sql):
            raise ForbiddenQuery(_INDIRECT_MESSAGE)
        return TableRefs({w.lower() for w in _WORD.findall(sql)} & known, closed=False)
    names: set[str] = set()
    ctes: set[str] = set()
    opaque = _walk(parsed, names, ctes)
    closed = not opaque and names <= known | ctes
    return TableRefs(names & known, closed)


def _walk(node: Any, names: set[str], ctes: set[str]) -> bool:
    """Collects BASE_TABLE names and CTE names; True when the tree holds something
    that can list tables the statement does not name."""
    opaque = False
    if isinstance(node, dict):
        kind = node.get("type")
        if kind == "BASE_TABLE":
            schema = node.get("schema_name")
            opaque |= schema not in ("", "main", "temp") or node.get("catalog_name") != ""
            names.add(str(node.get("table_name", "")).lower())
        elif kind == "SHOW_REF":
            opaque = True
        elif kind == "TABLE_FUNCTION":
            opaque = True
            function = node.get("function") or {}
            if str(function.get("function_name", "")).lower() in _INDIRECT:
                raise ForbiddenQuery(_INDIRECT_MESSAGE)
        for entry in (node.get("cte_map") or {}).get("map") or []:
            ctes.add(str(entry.get("key", "")).lower())
        for value in node.values():
            opaque |= _walk(value, names, ctes)
    elif isinstance(node, list):
        for value in node:
            opaque |= _walk(value, names, ctes)
    return opaque


def execute(
    con: duckdb.DuckDBPyConnection,
    sql: str,
    max_rows: int,
    timeout_s: float,
    unknown: Callable[[str], str],
) -> tuple[pa.Table, bool]:
    """Run ``sql`` and stream its rows, keeping at most ``max_rows``; (table, truncated).

    ``unknown(name)`` words the error for a table that does not exist.
    """
    # max_execution_time is checked between DuckDB's own steps; a long Python UDF call
    # can delay that, so a timer interrupts the connection as a second line.
    watchdog = threading.Timer(timeout_s + _WATCHDOG_GRACE_S, con.interrupt)
    watchdog.daemon = True
    watchdog.start()
    try:
        reader = con.sql(sql).to_arrow_reader(min(max(max_rows, 1) + 1, _BATCH_ROWS))
        batches, rows = [], 0
        for batch in reader:
            batches.append(batch)
            rows += batch.num_rows
            if rows > max_rows:
                break
        table = pa.Table.from_batches(batches, schema=reader.schema)
    except (duckdb.Error, OSError, pa.ArrowException) as err:
        raise _translate(err, timeout_s, unknown) from err
    finally:
        watchdog.cancel()
    return table.slice(0, max_rows), rows > max_rows


def _translate(err: Exception, timeout_s: float, unknown: Callable[[str], str]) -> QueryError:
    """A DuckDB error as the QueryError that names the problem for a user."""
    text = str(err)
    if isinstance(err, duckdb.InterruptException) or "INTERRUPT Error" in text:
        return QueryTimeout(
            f"query stopped after the time limit of {timeout_s:g} s (raise it with --timeout)"
        )
    if isinstance(err, duckdb.PermissionException) or "Permission Error" in text:
        return ForbiddenQuery(f"{_NO_FILES}. DuckDB said: {text.splitlines()[0]}")
    if isinstance(err, duckdb.OutOfMemoryException) or "Out of Memory" in text:
        return QueryFailed(f"query needs more memory than its limit (--memory-limit): {text}")
    missing = _NO_TABLE.search(text)
    if isinstance(err, duckdb.CatalogException) and missing:
        name = missing.group(1).strip("\"'!")
        if "/" in name or "\\" in name:  # FROM 'some/file': a path, never a table
            return ForbiddenQuery(f"{_NO_FILES} ({name!r} is a path)")
        return UnknownTable(unknown(name))
    return QueryFailed(text)
