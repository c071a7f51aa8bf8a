"""The DuckDB batch engine: computes catalog views from master Parquet files.

Why an engine that compiles: a view is data (``loglambda.core.catalog``), and
``duckdb_sql`` turns any declaration into one SQL query, so adding a view never
touches this module. What is left here is running it well:

- Events are scanned from Parquet once per file set into a temp table, and reused
  by every view of a run, whether the caller uses ``compute_all`` or one ``compute``
  call per view (as ``batch.recompute`` does). Timestamps are stored as naive UTC
  there: DuckDB truncates ``TIMESTAMP WITH TIME ZONE`` through ICU, ~10x slower.
- Side tables (a derived value per distinct input, such as ``route`` per ``path``,
  and the user-agent lookup that runs ua-parser once per distinct agent) are built
  once per loaded events and shared by every view that joins them.
- Unique counts leave DuckDB as lists of items per row and become HLL sketches in
  the sketches module (DuckDB has no DataSketches aggregate).

Output is deterministic: rows sorted by every key column, sketches built from sorted
items, one Arrow chunk per column, types exactly ``catalog.output_schema(view)``.
Floating-point sums are the one exception DuckDB's parallel aggregation can make
differ in the last bit; the standard catalog sums integers only (latency in µs).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, Final

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.batch.duckdb_sql import CompiledView, SideTable, compile_view
from loglambda.core.catalog import STANDARD_CATALOG, CatalogError, View, output_schema
from loglambda.core.derived import LOOKUPS, DerivedSettings
from loglambda.core.schemas import TS_TYPE, Kind, schema_for

_FileKey = tuple[tuple[str, int, int], ...]
EVENTS: Final = "ev_{kind}"


def _hll_sketches(group_ids: np.ndarray[Any, Any], items: pa.Array, groups: int) -> list[bytes]:
    """Adapter to the sketches module: one compact HLL sketch per group."""
    from loglambda.core.sketches.hll import build_hll_grouped

    return build_hll_grouped(group_ids, items, groups)


def _histograms(lists: pa.Array) -> pa.Array:
    """Adapter to the sketches module's storage form (``HISTOGRAM_TYPE``).

    The SQL gives each row its {key, count} entries sorted by key, where a key repeats
    when two phase-1 groups (two paths of one route) fall in one row: summing runs of
    equal keys is one vectorised pass (the sketches module's general normaliser sorts
    every entry: measured ~1.7 s more on 10M events). NULL keys (NaN values) are
    dropped; a row without values is an empty histogram (as Spark's collect_list
    gives), never NULL.
    """
    from loglambda.core.sketches.quantiles import HISTOGRAM_TYPE

    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    flat = lists.flatten()
    keep = np.asarray(flat.field("key").is_valid(), dtype=bool)
    rows = np.repeat(np.arange(len(lists), dtype=np.int64), lengths)[keep]
    keys = np.asarray(flat.field("key").fill_null(0), dtype=np.int32)[keep]
    counts = np.asarray(flat.field("count").fill_null(0), dtype=np.int64)[keep]
    new = np.ones(len(keys), dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]) | (keys[1:] != keys[:-1])
    starts = np.flatnonzero(new)
    sums = np.add.reduceat(counts, starts) if len(starts) else counts
    offsets = np.zeros(len(lists) + 1, dtype=np.int32)
    np.cumsum(np.bincount(rows[starts], minlength=len(lists)), out=offsets[1:])
    items = pa.StructArray.from_arrays(
        [pa.array(keys[starts], pa.int32()), pa.array(sums, pa.int64())], names=["key", "count"]
    )
    return pa.ListArray.from_arrays(pa.array(offsets), items, type=HISTOGRAM_TYPE)


class DuckDBEngine:
    """Computes catalog views with an in-process DuckDB. Not thread-safe: one per thread."""

    name: Final = "duckdb"

    def __init__(
        self,
        settings: DerivedSettings | None = None,
        *,
        threads: int | None = None,
        memory_limit: str | None = None,
    ) -> None:
        self.settings = settings or DerivedSettings()
        self._con = duckdb.connect(":memory:")
        self._con.execute("SET TimeZone = 'UTC'")
        self._con.execute(f"SET threads = {int(threads or os.cpu_count() or 1)}")
        if memory_limit:
            self._con.execute("SET memory_limit = $limit", {"limit": memory_limit})
        # Per kind: the files and columns its events table holds now.
        self._loaded: dict[Kind, tuple[_FileKey, frozenset[str]]] = {}
        self._tables: dict[str, _FileKey] = {}  # side table -> events it was built from

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> DuckDBEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compile(self, view: View) -> CompiledView:
        """The SQL of a view, over the ``ev_<kind>`` relation and its side tables."""
        return compile_view(view, self.settings, EVENTS.format(kind=view.kind))

    def compute(self, view: View, files: Sequence[Path]) -> pa.Table:
        """The rows of ``view`` over the events in ``files`` (``output_schema(view)``)."""
        return self.compute_all([view], {view.kind: files})[view.name]

    def compute_all(
        self,
        views: Iterable[View] | Mapping[str, View],
        files_by_kind: Mapping[Kind, Sequence[Path]],
    ) -> dict[str, pa.Table]:
        """Every view, loading each kind's events and side tables once for all of them."""
        chosen = list(views.values()) if isinstance(views, Mapping) else list(views)
        compiled = [self.compile(v) for v in chosen]
        for kind in dict.fromkeys(v.kind for v in chosen):
            if kind not in files_by_kind:
                raise CatalogError(f"no files given for {kind!r} events, which views read")
            mine = [c for c in compiled if c.view.kind == kind]
            self._load(kind, files_by_kind[kind], set().union(*(c.columns for c in mine)))
        for c in compiled:
            for table in c.tables:
                self._side_table(c.view.kind, table)
        return {c.view.name: self._run(c) for c in compiled}

    def _load(self, kind: Kind, files: Sequence[Path], columns: set[str]) -> None:
        key = _file_key(files)
        loaded = self._loaded.get(kind)
        if loaded is not None and loaded[0] == key and columns <= loaded[1]:
            return
        # Load what every standard view of this kind reads too, so that the next view
        # of a batch run, computed by its own ``compute`` call, finds the table ready.
        wanted = set(columns)
        for view in STANDARD_CATALOG.values():
            if view.kind == kind:
                wanted |= self.compile(view).columns
        if loaded is not None and loaded[0] == key:
            wanted |= loaded[1]
        schema = schema_for(kind)
        cols = [n for n in schema.names if n in wanted]
        select = ", ".join(
            f'CAST("{c}" AS TIMESTAMP) AS "{c}"' if schema.field(c).type == TS_TYPE else f'"{c}"'
            for c in cols
        )
        table = EVENTS.format(kind=kind)
        if files:
            source = "read_parquet($files, hive_partitioning = false)"
            params: dict[str, Any] = {"files": [str(p) for p in files]}
        else:
            self._con.register("_no_events", schema.empty_table())
            source, params = "_no_events", {}
        self._con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {select or '1 AS _none'} "
            f"FROM {source}",
            params,
        )
        if not files:
            self._con.unregister("_no_events")
        self._loaded[kind] = (key, frozenset(cols))

    def _side_table(self, kind: Kind, table: SideTable) -> None:
        key = self._loaded[kind][0]
        if self._tables.get(table.name) == key:
            return
        if table.lookup is not None:
            schema, build = LOOKUPS[table.lookup]
            events = EVENTS.format(kind=kind)
            agents = self._con.sql(
                f'SELECT DISTINCT "{table.keys[0]}" FROM {events}'
            ).to_arrow_table()
            self._con.register("_lookup", build(agents.column(0)).cast(schema))
            self._con.execute(f"CREATE OR REPLACE TEMP TABLE {table.name} AS FROM _lookup")
            self._con.unregister("_lookup")
        else:
            assert table.sql is not None
            self._con.execute(f"CREATE OR REPLACE TEMP TABLE {table.name} AS {table.sql}")
        self._tables[table.name] = key

    def _run(self, compiled: CompiledView) -> pa.Table:
        view = compiled.view
        schema = output_schema(view)
        try:
            result = self._con.sql(compiled.sql).to_arrow_table()
        except duckdb.Error as err:
            raise CatalogError(f"view {view.name!r}: DuckDB failed: {err}") from err
        columns: list[pa.Array] = []
        for field in schema:
            col = result.column(field.name).combine_chunks()
            if field.name in compiled.sketches:
                col = _sketch_column(col)
            elif field.name in compiled.histograms:
                col = _histograms(col)
            columns.append(col.cast(field.type))
        return pa.Table.from_arrays(columns, schema=schema)


def _sketch_column(lists: pa.Array) -> pa.Array:
    """Distinct items per row (a list array, NULL = none) to one HLL sketch per row."""
    rows = len(lists)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    group_ids = np.repeat(np.arange(rows, dtype=np.int64), lengths)
    return pa.array(_hll_sketches(group_ids, lists.flatten(), rows), pa.binary())


def _file_key(files: Sequence[Path]) -> _FileKey:
    """Identity of a file set: master files are immutable, so path, size and mtime."""
    out = []
    for path in files:
        st = os.stat(path)
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)
