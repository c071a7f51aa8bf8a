"""The serving layer's SQL engine: ad-hoc, read-only SQL over merged views and raw events.

Tables (``QueryEngine.tables``):

- one per catalog view (``traffic_minute``, ``visitors_day``, ...): the batch version
  the speed partials were cut against ⊕ those partials, re-aggregated by key
  (``serving.merge``), in the view's exact schema. Sketch columns merge across rows
  with the helpers of ``serving.sql_functions``.
- ``traffic`` and ``logs``: raw events, the master dataset plus the events of the log
  the master does not hold yet. Which offsets the master holds is read from its
  manifest (the ``{"type": "log", "from": a, "to": b}`` origins), not from the master
  writer's commit, so no event is both in the master and read from the log.
- ``views`` (the catalog) and ``freshness`` (one row per log partition).

Only the tables a query names are built (merging every view for every query would be
slow); the others are registered empty, so ``SHOW TABLES``, ``DESCRIBE`` and
``information_schema`` still list them -- unless the parse tree shows the statement
cannot list tables (``TableRefs.closed``). The names come from DuckDB's own parse tree
(``json_serialize_sql``); statements it cannot serialise (``PIVOT``) fall back to every
identifier token, which over-approximates. ``query_table()``/``query()`` are refused:
they name a table in a string, which the parse tree does not show, and would read an
empty placeholder instead of the data.

Exactness: a result never silently misses data. Every result carries its freshness
(batch version and horizon, speed position, log end and lag per partition; for raw
tables, what the master holds and which log ranges were read). A gap between the
horizon and the speed position, a view missing from the batch version or from a speed
partial, or raw events neither in the master nor in the log raise ``DataUnavailable``
instead of answering short. A speed partial expiring while it is read
(``StaleSnapshot``) is retried with a new snapshot, a few times.

Speed: merged views come from ``serving.cache`` (kept per snapshot, updated by the
partials a speed commit adds), raw master files and the log tail from
``serving.raw``'s caches; each query still takes its own snapshot, so its answer and
freshness are the snapshot's. The dashboard's statements also promise their time
window and grouping (``run``'s ``window`` and ``rollup``), so only the rows they can
read are registered, merged to the grain they group by: the same answer from far
fewer rows.

Lockdown (``serving.sql_guard``): a new DuckDB connection per query, of an in-memory
database locked before any query ran: resource limits, no file access at all
(``allowed_directories=[]``, ``enable_external_access=false``), locked configuration;
only one read-only statement is accepted. The data needs no file access from DuckDB:
merged views are Arrow tables, raw events a ``pyarrow.dataset`` over the master's
Parquet files (scanned lazily, with projection and filter pushdown) or tables in
memory, all registered from Python. Allowing the data home instead would let
``read_text`` read any file in it and ``COPY`` write into it (``allowed_directories``
grants writes too). Results are streamed and cut at ``max_rows``
(``QueryResult.truncated``).
"""

from __future__ import annotations

import datetime as dt
import functools
import time
from dataclasses import dataclass
from typing import Any, Final

import duckdb
import pyarrow as pa

from loglambda.core.catalog import STANDARD_CATALOG, View, output_schema
from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog, open_event_log, partition_kind
from loglambda.core.schemas import KINDS, Kind, schema_for
from loglambda.serving.cache import window_slice
from loglambda.serving.merge import (
    Freshness,
    IncompleteData,
    Rollup,
    Snapshot,
    StaleSnapshot,
    merged_view,
    rolled_up_view,
    snapshot,
)
from loglambda.serving.raw import RawCoverage, raw_tables
from loglambda.serving.sql_guard import (
    Connections,
    ForbiddenQuery,
    Limits,
    QueryError,
    QueryFailed,
    QueryTimeout,
    TableRefs,
    UnknownTable,
    check_statement,
    execute,
    referenced_tables,
)

__all__ = [
    "DataUnavailable",
    "ForbiddenQuery",
    "Limits",
    "QueryEngine",
    "QueryError",
    "QueryFailed",
    "QueryResult",
    "QueryTimeout",
    "RawCoverage",
    "UnknownTable",
]

META_TABLES: Final = ("freshness", "views")
# [start, end) in µs since the epoch (see QueryEngine.run's ``window``).
Micros = tuple[int, int]
STALE_RETRIES: Final = 5


class DataUnavailable(QueryError):
    """The answer would miss or double count events (see the module docstring)."""


@dataclass(frozen=True)
class QueryResult:
    """Rows (cut at ``max_rows`` when ``truncated``) and what they cover."""

    table: pa.Table
    freshness: Freshness
    raw: RawCoverage | None
    truncated: bool
    elapsed_ms: float
    tables: tuple[str, ...] = ()

    def freshness_json(self) -> dict[str, Any]:
        return {**self.freshness.to_json(), "raw": self.raw.to_json() if self.raw else None}

    def freshness_text(self) -> str:
        """Freshness in a few human lines (``loglambda query``'s table output)."""
        f = self.freshness
        fmt = ", ".join
        h = fmt(f"{p} < {o}" for p, o in sorted(f.horizon.items())) or "no log offsets"
        if f.master_seq is not None:
            h = f"master seq {f.master_seq}, {h}"
        pos = fmt(f"{p} < {o}" for p, o in sorted(f.positions.items())) or "none"
        lag = fmt(f"{p} {n:,}" for p, n in sorted(f.lag.items())) or "unknown"
        version = (
            "no batch version" if f.batch_version is None else f"batch version {f.batch_version}"
        )
        lines = [f"freshness: {version} (horizon {h}); speed covers {pos}; lag {lag}"]
        if self.raw is not None:
            tail = fmt(f"{p} [{a}, {b})" for p, rs in sorted(self.raw.tail.items()) for a, b in rs)
            lines.append(
                f"raw events: master seq {self.raw.master_seq} + log tail {tail or 'none'}"
            )
        lines.extend(f"note: {n}" for n in f.notes)
        return "\n".join(lines)


class QueryEngine:
    """Runs read-only SQL over the serving tables of one data home.

    Holds no connection: each ``run`` opens, locks and closes its own, so one engine
    can serve several threads (the HTTP API) and a failed query leaves nothing behind.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        limits: Limits | None = None,
        catalog: dict[str, View] | None = None,
        log: EventLog | None = None,
    ) -> None:
        if not settings.home.is_dir():
            raise QueryError(f"no data home at {settings.home} (set --home or LOGLAMBDA_HOME)")
        self.settings = settings
        self.limits = limits or Limits()
        self.catalog = dict(STANDARD_CATALOG if catalog is None else catalog)
        self.log = log if log is not None else open_event_log(settings)
        self._connections = Connections(self.limits)
        clash = set(self.catalog) & {*KINDS, *META_TABLES}
        if clash:
            raise QueryError(f"view names clash with built-in tables: {sorted(clash)}")

    @property
    def tables(self) -> list[str]:
        return sorted([*self.catalog, *KINDS, *META_TABLES])

    def schema(self, name: str) -> pa.Schema:
        """The columns of a table (raises UnknownTable)."""
        key = name.lower()
        if key in self.catalog:
            return output_schema(self.catalog[key])
        for kind in KINDS:
            if key == kind:
                return schema_for(kind)
        if key == "views":
            return _views_table(self.catalog).schema
        if key == "freshness":
            return _freshness_table(Freshness(None, {}, {})).schema
        raise UnknownTable(self._unknown(name))

    def describe(self, name: str) -> str:
        """A table's description (views: the catalog's words)."""
        key = name.lower()
        if key in self.catalog:
            return self.catalog[key].description
        return {
            "traffic": "raw access-log events: the master dataset plus the log's tail",
            "logs": "raw application-log events: the master dataset plus the log's tail",
            "views": "the view catalog: kind, grain, dimensions, measures",
            "freshness": "per log partition: batch horizon, speed position, log end, lag",
        }.get(key, "")

    def run(
        self,
        sql: str,
        *,
        max_rows: int | None = None,
        timeout_s: float | None = None,
        window: tuple[dt.datetime, dt.datetime] | None = None,
        rollup: Rollup | None = None,
        dashboard: bool = False,
    ) -> QueryResult:
        """Run one read-only statement; raises a ``QueryError`` subclass on refusal.

        ``window`` (start, end) is the caller's promise that the statement reads only
        view rows whose ``window_start``, and raw events whose ``ts``, lie in
        ``[start, end)`` -- it filters on exactly that. The engine then registers only
        those rows (a binary search in the sorted merged views, master files pruned by
        their time range), which gives the same answer faster. For the dashboard's own
        statements; user SQL never carries it.

        ``rollup`` is the caller's promise that the statement groups views only by
        their window (or ``rollup.step_s`` buckets, its window aligned to them) and the
        dimensions ``rollup.keep``, and aggregates each measure with its own merge;
        views are then registered merged to that (``merge.rolled_up_view``: the same
        answer from a fraction of the rows).

        ``dashboard``: one of the dashboard's own statements, run on a database apart
        from ad-hoc SQL (``sql_guard.Connections``).
        """
        started = time.monotonic()
        rows = self.limits.max_rows if max_rows is None else max_rows
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        micros = None if window is None else (_micros(window[0]), _micros(window[1]))
        for _attempt in range(STALE_RETRIES):
            lane = "dashboard" if dashboard else "sql"
            with self._connections.connection(timeout, lane) as con:
                statement = check_statement(con, sql)
                refs = referenced_tables(con, statement, set(self.tables))
                wanted = refs.names
                try:
                    snap, raw = self._register(con, refs, micros, rollup)
                except StaleSnapshot:
                    continue
                table, truncated = execute(con, statement, rows, timeout, self._unknown)
            elapsed = round((time.monotonic() - started) * 1000, 1)
            return QueryResult(
                table, snap.freshness, raw, truncated, elapsed, tuple(sorted(wanted))
            )
        raise DataUnavailable(
            f"the speed layer kept expiring partials while they were read "
            f"({STALE_RETRIES} attempts); try again"
        )

    # -- building the tables --------------------------------------------------------

    def _register(
        self,
        con: duckdb.DuckDBPyConnection,
        refs: TableRefs,
        window: Micros | None,
        rollup: Rollup | None,
    ) -> tuple[Snapshot, RawCoverage | None]:
        # Tables the statement does not name are registered empty so that SHOW TABLES,
        # DESCRIBE and information_schema list them -- unless it cannot list any
        # (``refs.closed``): ~0.5 ms per table saved, most of a small query's work.
        wanted, placeholders = refs.names, not refs.closed
        try:
            snap = snapshot(self.settings.home, self.log)
            for name, view in self.catalog.items():
                if name in wanted:
                    table = self._view(snap, view, rollup)
                    if window is not None and view.grain:
                        table = window_slice(table, *window)
                    con.register(name, _compact(table))
                elif placeholders:
                    con.register(name, _empty(view))
            raw_kinds = [k for k in KINDS if k in wanted]
            home = self.settings.home
            raw = raw_tables(home, self.log, raw_kinds, window) if raw_kinds else None
        except StaleSnapshot:
            raise
        except IncompleteData as err:
            raise DataUnavailable(str(err)) from err
        for kind in KINDS:
            if raw and kind in raw[0]:
                con.register(kind, raw[0][kind])
            elif placeholders:
                con.register(kind, _empty(kind))
        if placeholders or "views" in wanted:
            con.register("views", _views_table(self.catalog))
        if placeholders or "freshness" in wanted:
            con.register("freshness", _freshness_table(snap.freshness))
        return snap, raw[1] if raw else None

    def _view(self, snap: Snapshot, view: View, rollup: Rollup | None) -> pa.Table:
        # merged_view skips what is absent; absent here means events nobody counted.
        if snap.record is not None and view.name not in snap.record.views:
            raise IncompleteData(
                f"view {view.name!r} is not in batch version {snap.record.version}; "
                "run `loglambda batch run` to compute it"
            )
        for part in snap.state.partials:
            if partition_kind(part.partition) == view.kind and view.name not in part.views:
                raise IncompleteData(
                    f"view {view.name!r} is missing from the speed partial "
                    f"[{part.start}, {part.end}) of {part.partition}"
                )
        if rollup is not None:
            return rolled_up_view(snap, view, rollup)
        table: pa.Table = merged_view(snap, view)
        return table

    def _unknown(self, name: str) -> str:
        return f"unknown table {name!r}; the tables are: {', '.join(self.tables)}"


def _compact(table: pa.Table) -> pa.Table:
    """A cached view is spliced from many slices; DuckDB pays per Arrow chunk it scans
    (~0.1 ms each), so a small table is made one chunk first (a copy of < 64 MB)."""
    if table.column(0).num_chunks > 8 and table.nbytes < 64 * 2**20:
        return table.combine_chunks()
    return table


@functools.cache
def _empty(what: View | Kind) -> pa.Table:
    """A table not named by the query: registered empty, for SHOW TABLES and DESCRIBE."""
    if isinstance(what, View):
        return output_schema(what).empty_table()
    return schema_for(what).empty_table()


def _micros(value: dt.datetime) -> int:
    moment = value.replace(tzinfo=dt.UTC) if value.tzinfo is None else value
    return (moment - dt.datetime(1970, 1, 1, tzinfo=dt.UTC)) // dt.timedelta(microseconds=1)


def _views_table(catalog: dict[str, View]) -> pa.Table:
    views = sorted(catalog.values(), key=lambda v: v.name)
    return pa.table(
        {
            "name": [v.name for v in views],
            "kind": [v.kind for v in views],
            "grain": [v.grain for v in views],
            "key_columns": [list(v.key_columns) for v in views],
            "measures": [[f"{m.name}: {m.agg}" for m in v.measures] for v in views],
            "description": [v.description for v in views],
        }
    )


def _freshness_table(f: Freshness) -> pa.Table:
    parts = sorted({*f.horizon, *f.positions, *f.log_end})
    return pa.table(
        {
            "partition": pa.array(parts, pa.string()),
            "batch_version": pa.array([f.batch_version] * len(parts), pa.int64()),
            "horizon": pa.array([f.horizon.get(p, 0) for p in parts], pa.int64()),
            "speed_position": pa.array([f.positions.get(p, 0) for p in parts], pa.int64()),
            "log_end": pa.array([f.log_end.get(p) for p in parts], pa.int64()),
            "lag": pa.array([f.lag.get(p) for p in parts], pa.int64()),
        }
    )
