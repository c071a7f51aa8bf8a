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
``information_schema`` still list them. The names come from DuckDB's own parse tree
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

Lockdown (``serving.sql_guard``): one fresh in-memory DuckDB connection per query,
resource limits, no file access at all (``allowed_directories=[]``,
``enable_external_access=false``), locked configuration; only one read-only statement
is accepted. The data needs no file access from DuckDB: merged views are Arrow tables,
raw events a ``pyarrow.dataset`` over the master's Parquet files (scanned lazily, with
projection and filter pushdown) plus the log tail in memory, all registered from
Python. Allowing the data home instead would let ``read_text`` read any file in it
and ``COPY`` write into it (``allowed_directories`` grants writes too). Results are
streamed and cut at ``max_rows`` (``QueryResult.truncated``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Final

import duckdb
import pyarrow as pa
import pyarrow.dataset as ds

from loglambda.batch.master import MasterDataset
from loglambda.core.catalog import STANDARD_CATALOG, View, output_schema
from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog, OffsetOutOfRange, open_event_log, partition_kind
from loglambda.core.schemas import KINDS, Kind, schema_for
from loglambda.serving.merge import (
    Freshness,
    IncompleteData,
    Snapshot,
    StaleSnapshot,
    merged_view,
    snapshot,
)
from loglambda.serving.sql_guard import (
    ForbiddenQuery,
    Limits,
    QueryError,
    QueryFailed,
    QueryTimeout,
    UnknownTable,
    check_statement,
    execute,
    locked_connection,
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
STALE_RETRIES: Final = 5
_READ_CHUNK: Final = 200_000


class DataUnavailable(QueryError):
    """The answer would miss or double count events (see the module docstring)."""


@dataclass(frozen=True)
class RawCoverage:
    """What the raw tables held: the master as of ``master_seq`` (per partition it holds
    the log offsets below ``master_offsets``) plus the ``tail`` ranges read from the
    log, which ended at ``log_end`` when read."""

    master_seq: int
    master_offsets: dict[str, int]
    tail: dict[str, list[tuple[int, int]]]
    log_end: dict[str, int]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


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
        self, sql: str, *, max_rows: int | None = None, timeout_s: float | None = None
    ) -> QueryResult:
        """Run one read-only statement; raises a ``QueryError`` subclass on refusal."""
        started = time.monotonic()
        rows = self.limits.max_rows if max_rows is None else max_rows
        timeout = self.limits.timeout_s if timeout_s is None else timeout_s
        for _attempt in range(STALE_RETRIES):
            con = locked_connection(self.limits, timeout)
            try:
                statement = check_statement(con, sql)
                wanted = referenced_tables(con, statement, set(self.tables))
                try:
                    snap, raw = self._register(con, wanted)
                except StaleSnapshot:
                    continue
                table, truncated = execute(con, statement, rows, timeout, self._unknown)
            finally:
                con.close()
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
        self, con: duckdb.DuckDBPyConnection, wanted: set[str]
    ) -> tuple[Snapshot, RawCoverage | None]:
        try:
            snap = snapshot(self.settings.home, self.log)
            for name, view in self.catalog.items():
                table = self._view(snap, view) if name in wanted else _empty(view)
                con.register(name, table)
            raw_kinds = [k for k in KINDS if k in wanted]
            raw = _raw_tables(self.settings.home, self.log, raw_kinds) if raw_kinds else None
        except StaleSnapshot:
            raise
        except IncompleteData as err:
            raise DataUnavailable(str(err)) from err
        for kind in KINDS:
            con.register(kind, raw[0][kind] if raw and kind in raw[0] else _empty(kind))
        con.register("views", _views_table(self.catalog))
        con.register("freshness", _freshness_table(snap.freshness))
        return snap, raw[1] if raw else None

    def _view(self, snap: Snapshot, view: View) -> pa.Table:
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
        table: pa.Table = merged_view(snap, view)
        return table

    def _unknown(self, name: str) -> str:
        return f"unknown table {name!r}; the tables are: {', '.join(self.tables)}"


def _empty(what: View | Kind) -> pa.Table:
    """A table not named by the query: registered empty, for SHOW TABLES and DESCRIBE."""
    if isinstance(what, View):
        return output_schema(what).empty_table()
    return schema_for(what).empty_table()


def _raw_tables(
    home: Path, log: EventLog, kinds: list[Kind]
) -> tuple[dict[str, ds.Dataset], RawCoverage]:
    """Raw events per kind: master files (scanned lazily) ∪ the log offsets no manifest
    entry covers, each event exactly once."""
    master = MasterDataset(home).snapshot()
    covered: dict[str, list[tuple[int, int]]] = {}
    for entry in master.entries:
        if entry.origin.get("type") == "log":
            span = (int(entry.origin["from"]), int(entry.origin["to"]))
            covered.setdefault(str(entry.origin["partition"]), []).append(span)
    tables: dict[str, ds.Dataset] = {}
    tail: dict[str, list[tuple[int, int]]] = {}
    log_end: dict[str, int] = {}
    reach: dict[str, int] = {}
    for kind in kinds:
        schema = schema_for(kind)
        parts: list[ds.Dataset] = []
        files = [str(p) for p in master.files(kind)]
        if files:
            parts.append(ds.dataset(files, format="parquet", schema=schema))
        for partition in log.partitions(kind):
            end = log_end[partition] = log.end_offset(kind, partition)
            gaps = _gaps(covered.get(partition, []), end)
            reach[partition] = gaps[0][0] if gaps else end
            tail[partition] = gaps
            for a, b in gaps:
                parts.append(ds.dataset(_read_range(log, kind, partition, a, b).cast(schema)))
        tables[kind] = ds.dataset(parts) if parts else ds.dataset(schema.empty_table())
    return tables, RawCoverage(master.seq, reach, tail, log_end)


def _gaps(spans: list[tuple[int, int]], end: int) -> list[tuple[int, int]]:
    """The parts of ``[0, end)`` no span covers, in order."""
    gaps, at = [], 0
    for a, b in sorted(spans):
        if a > at:
            gaps.append((at, min(a, end)))
        at = max(at, b)
    if at < end:
        gaps.append((at, end))
    return [(a, b) for a, b in gaps if a < b]


def _read_range(log: EventLog, kind: Kind, partition: str, start: int, end: int) -> pa.Table:
    pieces, at = [], start
    while at < end:
        try:
            piece = log.read(kind, partition, at, min(_READ_CHUNK, end - at))
        except OffsetOutOfRange as err:
            raise IncompleteData(
                f"{partition}: events [{at}, {end}) are neither in the master dataset nor "
                f"in the event log any more ({err})"
            ) from err
        if piece.end <= at:
            raise IncompleteData(f"{partition}: the event log ends at {at}, expected {end}")
        pieces.append(piece.events)
        at = piece.end
    return pa.concat_tables(pieces) if pieces else schema_for(kind).empty_table()


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
