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
  the sketches module (DuckDB has no DataSketches aggregate). An item derived from
  wide columns (the visitor: IP, date, agent) travels as a 64-bit hash of its inputs,
  computed once per load as an events column; an item dictionary built once per load
  maps hashes back to the sorted items, so the sketches hash the very same strings.

``compute_arrow`` does the same over in-memory events (the speed layer's slices);
``items=True`` gives unique counts as sorted item lists (``core.partials``' items form).
A slice is small next to the fixed cost of a query (~4-7 ms each), so there a view that
differs from another only by a coarser grain is merged from that view's rows
(``rollup``) instead of running its SQL, and the slice's tables are dropped as soon as
its views are out. Turning result columns into sketches is ``duckdb_columns``.

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

from loglambda.batch.duckdb_columns import (
    ItemDictionary,
    hashed_sketch_column,
    histogram_column,
    sketch_column,
)
from loglambda.batch.duckdb_sql import CompiledView, SideTable, compile_view
from loglambda.batch.rollup import exact_rollup, roll_up, rollup_sources
from loglambda.core.catalog import STANDARD_CATALOG, CatalogError, View
from loglambda.core.derived import LOOKUPS, DerivedSettings
from loglambda.core.partials import items_lists, partial_schema
from loglambda.core.schemas import TS_TYPE, Kind, schema_for

_FileKey = tuple[tuple[str, int, int], ...]
EVENTS: Final = "ev_{kind}"


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
        # Every result is ordered explicitly (ORDER BY every key, sketches from sorted
        # items, histograms sorted by key, integer sums only), so row order inside
        # DuckDB carries no meaning; not preserving it lets scans and CTAS run unordered.
        self._con.execute("SET preserve_insertion_order = false")
        if memory_limit:
            self._con.execute("SET memory_limit = $limit", {"limit": memory_limit})
        # Per kind: the files and columns its events table holds now.
        self._loaded: dict[Kind, tuple[_FileKey, frozenset[str]]] = {}
        self._tables: dict[str, _FileKey] = {}  # side table -> events it was built from
        # Item dictionaries read into Python, per side table (see ``ItemDictionary``);
        # None when two items' inputs hash alike (then views list the items themselves).
        self._items: dict[str, ItemDictionary | None] = {}
        self._computed: dict[Kind, dict[str, str]] = {}  # computed columns loaded
        self._arrow_loads = 0  # in-memory loads so far (their cache key)
        self._compiled: dict[View, CompiledView] = {}

    def close(self) -> None:
        self._con.close()

    def __enter__(self) -> DuckDBEngine:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def compile(self, view: View) -> CompiledView:
        """The SQL of a view, over the ``ev_<kind>`` relation and its side tables."""
        # Cached: compiling is pure, and every load compiles the whole standard catalog
        # (~6 ms), which the speed layer would otherwise pay on every small slice.
        found = self._compiled.get(view)
        if found is None:
            found = compile_view(view, self.settings, EVENTS.format(kind=view.kind))
            self._compiled[view] = found
        return found

    def compute(self, view: View, files: Sequence[Path]) -> pa.Table:
        """The rows of ``view`` over the events in ``files`` (``output_schema(view)``)."""
        return self.compute_all([view], {view.kind: files})[view.name]

    def compute_all(
        self,
        views: Iterable[View] | Mapping[str, View],
        files_by_kind: Mapping[Kind, Sequence[Path]],
        *,
        items: bool = False,
    ) -> dict[str, pa.Table]:
        """Every view, loading each kind's events and side tables once for all of them.

        ``items``: distinct measures as sorted lists of their distinct items (the items
        form of ``loglambda.core.partials``) instead of HLL sketches.
        """
        return self._compute(views, files_by_kind, items)

    def compute_arrow(
        self,
        views: Iterable[View] | Mapping[str, View],
        events_by_kind: Mapping[Kind, pa.Table],
        *,
        items: bool = False,
    ) -> dict[str, pa.Table]:
        """``compute_all`` over in-memory events (a slice of the event log) instead of
        Parquet files: the speed layer computes its partials with this very compiler,
        so no view logic exists twice. Each call loads the tables afresh."""
        try:
            return self._compute(views, events_by_kind, items, rollups=True)
        finally:
            # A slice's tables are never read again: dropped now, so that their memory
            # is free before the next slice loads (CREATE OR REPLACE holds both).
            self._release(events_by_kind)

    def _release(self, kinds: Iterable[Kind]) -> None:
        """Drop the events table of ``kinds`` and the side tables built from it."""
        for kind in kinds:
            loaded = self._loaded.pop(kind, None)
            if loaded is None:
                continue
            built = [name for name, key in self._tables.items() if key == loaded[0]]
            for name in [EVENTS.format(kind=kind), *built]:
                self._con.execute(f"DROP TABLE IF EXISTS {name}")
                self._tables.pop(name, None)
                self._items.pop(name, None)
            self._computed.pop(kind, None)

    def _compute(
        self,
        views: Iterable[View] | Mapping[str, View],
        sources: Mapping[Kind, Sequence[Path] | pa.Table],
        items: bool,
        *,
        rollups: bool = False,
    ) -> dict[str, pa.Table]:
        chosen = list(views.values()) if isinstance(views, Mapping) else list(views)
        compiled = [self.compile(v) for v in chosen]
        for kind in dict.fromkeys(v.kind for v in chosen):
            if kind not in sources:
                raise CatalogError(f"no files given for {kind!r} events, which views read")
            mine = [c for c in compiled if c.view.kind == kind]
            computed = {k: v for c in mine for k, v in c.computed.items()}
            columns = set().union(*(c.columns for c in mine))
            self._load(kind, sources[kind], columns, computed)
        for i, c in enumerate(compiled):
            for table in c.tables:
                self._side_table(c.view.kind, table)
            if any(self._items.get(t) is None for t in c.hashed.values()):
                # A hash collision between different items (never seen; 64-bit hashes
                # of a few million inputs): this view lists the items themselves.
                c = compiled[i] = compile_view(
                    c.view, self.settings, EVENTS.format(kind=c.view.kind), hash_items=False
                )
                for table in c.tables:
                    self._side_table(c.view.kind, table)
        # Views differing from another only by a coarser grain are merged from its rows
        # (``rollup``), the rest run their SQL; the result keeps the order asked for.
        sources_of = rollup_sources([c.view for c in compiled]) if rollups else {}
        out = {c.view.name: self._run(c, items) for c in compiled if c.view.name not in sources_of}
        for c in compiled:
            fine = out.get(sources_of.get(c.view.name, ""))
            if fine is not None:
                exact = exact_rollup(fine, c.view)
                out[c.view.name] = roll_up(fine, c.view) if exact else self._run(c, items)
        return {c.view.name: out[c.view.name] for c in compiled}

    def _load(
        self,
        kind: Kind,
        files: Sequence[Path] | pa.Table,
        columns: set[str],
        computed: dict[str, str],
    ) -> None:
        if isinstance(files, pa.Table):
            # In-memory events have no identity to cache by: every call loads them.
            self._arrow_loads += 1
            key: _FileKey = (("<arrow>", self._arrow_loads, files.num_rows),)
        else:
            key = _file_key(files)
        loaded = self._loaded.get(kind)
        needed = columns | computed.keys()
        if loaded is not None and loaded[0] == key and needed <= loaded[1]:
            return
        # Load what every standard view of this kind reads too, so that the next view
        # of a batch run, computed by its own ``compute`` call, finds the table ready.
        wanted = set(columns)
        extra = dict(computed)
        for view in STANDARD_CATALOG.values():
            if view.kind == kind:
                standard = self.compile(view)
                wanted |= standard.columns
                extra.update(standard.computed)
        if loaded is not None and loaded[0] == key:
            wanted |= loaded[1]
            extra.update(self._computed.get(kind, {}))
        schema = schema_for(kind)
        cols = [n for n in schema.names if n in wanted]
        select = ", ".join(
            f'CAST("{c}" AS TIMESTAMP) AS "{c}"' if schema.field(c).type == TS_TYPE else f'"{c}"'
            for c in cols
        )
        if extra and select:
            # Over the cast columns, so computed values match SQL over the events table.
            outer = ", ".join(f"{sql} AS {_quote(n)}" for n, sql in sorted(extra.items()))
            select = f"* , {outer} FROM (SELECT {select}"
        table = EVENTS.format(kind=kind)
        params: dict[str, Any] = {}
        if isinstance(files, pa.Table):
            self._con.register("_events_in", _conform_events(kind, files))
            source = "_events_in"
        elif files:
            source = "read_parquet($files, hive_partitioning = false)"
            params = {"files": [str(p) for p in files]}
        else:
            self._con.register("_events_in", schema.empty_table())
            source = "_events_in"
        close = ")" if extra and cols else ""
        self._con.execute(
            f"CREATE OR REPLACE TEMP TABLE {table} AS SELECT {select or '1 AS _none'} "
            f"FROM {source}{close}",
            params,
        )
        if isinstance(files, pa.Table) or not files:
            self._con.unregister("_events_in")
        if not cols:
            extra = {}
        self._computed[kind] = extra
        self._loaded[kind] = (key, frozenset(cols) | extra.keys())

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
        if table.items:
            self._items[table.name] = self._item_dictionary(table.name)
        self._tables[table.name] = key

    def _item_dictionary(self, table: str) -> ItemDictionary | None:
        """The item dictionary of a side table; None if two items share a hash."""
        clashes = self._con.execute(f"SELECT count(*) - count(DISTINCT h) FROM {table}").fetchall()
        if clashes[0][0]:
            return None
        rows = self._con.sql(
            f"SELECT h, item FROM {table} WHERE item IS NOT NULL ORDER BY item"
        ).to_arrow_table()
        hashes = np.asarray(rows.column("h").combine_chunks(), dtype=np.uint64)
        items = rows.column("item").combine_chunks()
        if len(items) > 1 and not pc.all(pc.less_equal(items[:-1], items[1:])).as_py():
            # DuckDB's VARCHAR order is byte order, as Arrow's; sort again if it ever
            # differs, since the sketches' bytes depend on Arrow's order.
            order = pc.sort_indices(items)
            hashes, items = hashes[np.asarray(order)], items.take(order)
        # Different inputs may give the same item (agents differing only in blanks).
        new = np.ones(len(items), dtype=bool)
        if len(items) > 1:
            new[1:] = np.asarray(pc.not_equal(items[1:], items[:-1]), dtype=bool)
        ranks = np.cumsum(new) - 1
        order = np.argsort(hashes, kind="stable")
        values = items.filter(pa.array(new))
        return ItemDictionary(hashes[order], ranks[order], values, values.to_pylist())

    def _run(self, compiled: CompiledView, items: bool = False) -> pa.Table:
        view = compiled.view
        schema = partial_schema(view, items=items)
        try:
            result = self._con.sql(compiled.sql).to_arrow_table()
        except duckdb.Error as err:
            raise CatalogError(f"view {view.name!r}: DuckDB failed: {err}") from err
        columns: list[pa.Array] = []
        for field in schema:
            col = result.column(field.name).combine_chunks()
            if field.name in compiled.hashed:
                found = self._items[compiled.hashed[field.name]]
                assert found is not None  # compute_all recompiled the view otherwise
                col = hashed_sketch_column(col, found, items)
            elif field.name in compiled.sketches and items:
                col = items_lists(col, field.type.value_type)
            elif field.name in compiled.sketches:
                col = sketch_column(col)
            elif field.name in compiled.histograms:
                col = histogram_column(col)
            columns.append(col.cast(field.type))
        return pa.Table.from_arrays(columns, schema=schema)


def _conform_events(kind: Kind, events: pa.Table) -> pa.Table:
    """In-memory events in their kind's exact schema (column order and types), except
    that dictionary-encoded strings stay so (the speed driver holds its slices so to
    save memory; DuckDB scans them as VARCHAR, so the loaded table is the same)."""
    schema = schema_for(kind)
    if events.schema.equals(schema):
        return events
    for i, f in enumerate(schema):
        found = events.schema.field(f.name) if f.name in events.schema.names else None
        if found is not None and found.type == pa.dictionary(pa.int32(), f.type):
            schema = schema.set(i, f.with_type(found.type))
    try:
        return events.select(schema.names).cast(schema)
    except (KeyError, ValueError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        raise CatalogError(f"{kind} events do not fit the {kind} schema: {err}") from err


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _file_key(files: Sequence[Path]) -> _FileKey:
    """Identity of a file set: master files are immutable, so path, size and mtime."""
    out = []
    for path in files:
        st = os.stat(path)
        out.append((str(path), st.st_size, st.st_mtime_ns))
    return tuple(out)
