"""Compile a catalog ``View`` to one DuckDB SQL query (the DuckDB engine's compiler).

Why a separate module: compiling is pure (view and settings in, SQL text out), so it
is read and tested on its own, and ``DuckDBEngine.compile`` shows the SQL it runs.

The query is one CTE per part, joined on the view's key columns::

    e    exact measures    phase 1: GROUP BY window + inputs of the dimensions, with
                           mergeable partials; phase 2: derive the dimensions once per
                           group and merge. The first histogram rides along: its bucket
                           is one more phase-1 key.
    q_i  more histograms   bucket counts per group, as a sorted list of {key, count}
    d_i  distinct measures DISTINCT (keys, item inputs) -> derive -> list of items

Phase 2 exists only when something is derived per distinct value (``per_distinct``);
the rest is computed per event, where it is cheapest. A value derived from plain columns
(``route`` of ``path``) comes from a side table built once per distinct input, a lookup
(the user-agent parse) from a table built in Python. Phase-2 predicates become aggregate
FILTERs and a HAVING, never a WHERE, which DuckDB would push below the grouping.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa

from loglambda.core.catalog import (
    WINDOW_COLUMN,
    CatalogError,
    Measure,
    View,
    check_view,
    measure_type,
)
from loglambda.core.derived import DERIVED, Derived, DerivedSettings, derived
from loglambda.core.schemas import Kind, schema_for

DIALECT: Final = "duckdb"
_COMBINE = {"count": "sum", "sum": "sum", "min": "min", "max": "max"}


def q(name: str) -> str:
    """A quoted identifier."""
    return '"' + name.replace('"', '""') + '"'


def _and(conds: list[str]) -> str:
    return " AND ".join(conds) or "true"


def _filter(conds: list[str]) -> str:
    return f" FILTER (WHERE {_and(conds)})" if conds else ""


@dataclass(frozen=True)
class SideTable:
    """Derived values per distinct input, joined in phase 2; the engine builds it once
    per loaded events from ``sql``, or in Python by ``derived.LOOKUPS[lookup]``."""

    name: str
    keys: tuple[str, ...]
    sql: str | None = None
    lookup: str | None = None
    # An item dictionary (``h``, ``item``): the hash of a distinct item's inputs and the
    # item. The engine reads it into a sorted dictionary for the HLL sketches.
    items: bool = False


@dataclass(frozen=True)
class CompiledView:
    """A view's SQL and what running it needs."""

    view: View
    sql: str
    columns: frozenset[str]  # event columns read
    tables: tuple[SideTable, ...]  # side tables joined
    sketches: frozenset[str]  # measures whose SQL column is a list of items (-> HLL)
    histograms: frozenset[str]  # measures whose SQL column is a {key, count} list
    # Sketch measures whose list holds hashes of the item's inputs, not the items: the
    # measure name -> the item dictionary (a side table with ``items``) to map them by.
    hashed: dict[str, str] = field(default_factory=dict)
    # Columns the engine adds to the events relation when loading it: name -> SQL over
    # event columns. Why: a view's hash of item inputs is then read, not recomputed
    # (nor its wide inputs scanned) by every view.
    computed: dict[str, str] = field(default_factory=dict)


@dataclass
class _Part:
    """Name resolution for one part: per-event SQL, phase-1 keys, phase-2 SQL."""

    comp: _Compiler
    keys: dict[str, str] = field(default_factory=dict)  # phase-1 alias -> per-event SQL
    joins: dict[str, str] = field(default_factory=dict)  # side table -> JOIN clause

    @property
    def view(self) -> View:
        return self.comp.view

    def entry(self, name: str) -> Derived | None:
        found = derived(self.view.kind, name)
        if found is None and name not in schema_for(self.view.kind).names:
            raise CatalogError(f"view {self.view.name!r}: unknown column or derived {name!r}")
        return found

    def sql_of(self, entry: Derived, ref: Callable[[str], str]) -> str:
        fn = entry.sql.get(DIALECT)
        if fn is None:
            raise CatalogError(
                f"view {self.view.name!r}: derived {entry.name!r} has no {DIALECT} SQL"
            )
        return "(" + fn(ref, self.comp.settings) + ")"

    def deferred(self, name: str) -> bool:
        """Whether ``name`` (or anything it reads) is derived per distinct value."""
        entry = self.entry(name)
        if entry is None:
            return False
        return entry.per_distinct or any(self.deferred(i) for i in entry.inputs)

    def event(self, name: str) -> str:
        """SQL computing ``name`` per event, over the events relation."""
        entry = self.entry(name)
        if entry is None:
            self.comp.columns.add(name)
            return q(name)
        if entry.lookup is not None:
            raise CatalogError(
                f"view {self.view.name!r}: {name!r} comes from the {entry.lookup!r} lookup "
                "and can only be a dimension or a distinct item, not part of a predicate"
            )
        return self.sql_of(entry, self.event)

    def key(self, alias: str, sql: str) -> str:
        self.keys.setdefault(alias, sql)
        return f"p1.{q(alias)}"

    def merged(self, name: str) -> str:
        """SQL computing ``name`` in phase 2 (over phase-1 rows ``p1`` and side tables)."""
        if not self.deferred(name):
            return self.key(f"k_{name}", self.event(name))
        entry = self.entry(name)
        assert entry is not None
        leaves = self.leaves(entry)
        if entry.lookup is None and (not entry.per_distinct or leaves is None):
            return self.sql_of(entry, self.merged)
        table = self.comp.side_table(entry, leaves or entry.inputs)
        on = [f"{q(table.name)}.{q(k)} IS NOT DISTINCT FROM {self.merged(k)}" for k in table.keys]
        self.joins[table.name] = f"LEFT JOIN {table.name} ON {_and(on)}"
        return f"{q(table.name)}.{q(name)}"

    def leaves(self, entry: Derived) -> tuple[str, ...] | None:
        """The event columns a per-distinct value is a function of, if only of columns
        and other such values (then a side table keyed by them can hold it)."""
        out: dict[str, None] = {}
        for name in entry.inputs:
            sub = self.entry(name)
            if sub is None:
                out[name] = None
                continue
            below = self.leaves(sub) if sub.per_distinct and sub.lookup is None else None
            if below is None:
                return None
            out.update(dict.fromkeys(below))
        return tuple(out)

    def outputs(self) -> list[tuple[str, str]]:
        """(output name, phase-2 SQL) of every key column of the view."""
        out = []
        if self.view.grain is not None:
            window = f"date_trunc('{self.view.grain}', {self.event('ts')})"
            out.append((WINDOW_COLUMN, self.key("k__window", window)))
        return out + [(d.name, self.merged(d.source)) for d in self.view.dimensions]

    def phase1(self, where: list[str], aggs: list[str], distinct: bool = False) -> str:
        cols = [f"{sql} AS {q(alias)}" for alias, sql in self.keys.items()] + aggs
        select = ", ".join(cols) or "1 AS _one"
        events = self.comp.events
        if distinct:
            return f"SELECT DISTINCT {select} FROM {events} WHERE {_and(where)}"
        group = " GROUP BY ALL" if self.keys else ""
        return f"SELECT {select} FROM {events} WHERE {_and(where)}{group}"

    def source(self, phase1: str) -> str:
        return f"({phase1}) AS p1" + "".join(" " + self.joins[k] for k in sorted(self.joins))

    def conditions(self, *predicates: str | None) -> tuple[list[str], list[str]]:
        """Per-event conditions, and phase-2 ones (predicates on derived-per-value)."""
        early, late = [], []
        for p in predicates:
            if p is None:
                continue
            if self.deferred(p):
                late.append(self.merged(p))
            else:
                early.append(self.event(p))
        return early, late


class _Compiler:
    def __init__(
        self, view: View, settings: DerivedSettings, events: str, hash_items: bool = True
    ) -> None:
        self.view = view
        self.settings = settings
        self.events = events
        self.hash_items = hash_items
        self.computed: dict[str, str] = {}
        self.columns: set[str] = set()
        self.tables: dict[str, SideTable] = {}

    def side_table(self, entry: Derived, keys: tuple[str, ...]) -> SideTable:
        if entry.lookup is not None:
            table = SideTable(f"{self.events}_lookup_{entry.lookup}", keys, lookup=entry.lookup)
        else:
            # One table per key set, holding every value derived from exactly those
            # columns (``request`` and ``is_static`` both from path and query): one join.
            keys = tuple(sorted(keys))
            part = _Part(self)
            values = [
                f"{part.event(d.name)} AS {q(d.name)}"
                for (kind, _), d in sorted(DERIVED.items())
                if kind == self.view.kind and d.per_distinct and d.lookup is None
                and tuple(sorted(part.leaves(d) or ())) == keys
            ]  # fmt: skip
            cols = ", ".join(q(k) for k in keys)
            sql = (
                f"SELECT {cols}, {', '.join(values)} "
                f"FROM (SELECT DISTINCT {cols} FROM {self.events})"
            )
            table = SideTable(f"{self.events}_by_{'_'.join(keys)}", keys, sql=sql)
        self.tables[table.name] = table
        return table

    def typed(self, m: Measure, agg: str) -> str:
        # DuckDB sums integers into HUGEINT; every engine stores BIGINT (or DOUBLE).
        if m.agg == "count":
            return f"CAST(coalesce({agg}, 0) AS BIGINT)"
        if m.agg == "sum":
            floating = measure_type(self.view, m) == pa.float64()
            return f"CAST({agg} AS {'DOUBLE' if floating else 'BIGINT'})"
        return agg

    def bucket(self, m: Measure, value: str) -> str:
        """Adapter to the sketches module: SQL for the histogram bucket of ``value``."""
        try:
            from loglambda.core.sketches.quantiles import bucket_key_sql

            return bucket_key_sql(value, dialect=DIALECT)
        except ImportError as err:
            raise CatalogError(
                f"view {self.view.name!r}, measure {m.name!r}: quantiles need the "
                f"histogram sketches (loglambda.core.sketches.quantiles): {err}"
            ) from err

    def exact(self, measures: list[Measure], folded: Measure | None) -> str:
        """The exact measures, plus the histogram of ``folded`` in the same pass."""
        part = _Part(self)
        predicates = [self.view.where, *(m.filter for m in measures)]
        if (
            folded is None
            and not any(part.deferred(d.source) for d in self.view.dimensions)
            and not any(p is not None and part.deferred(p) for p in predicates)
        ):
            return self.exact_direct(part, measures)
        outputs = part.outputs()
        where, late_where = part.conditions(self.view.where)
        aggs, combined = [], []
        for i, m in enumerate(measures):
            early, late = part.conditions(m.filter)
            arg = "*" if m.column is None else part.event(m.column)
            aggs.append(f"{m.agg}({arg}){_filter(early)} AS p{i}")
            combined.append(f"{_COMBINE[m.agg]}(p1.p{i}){_filter([*late_where, *late])}")
        if folded is not None:
            assert folded.column is not None
            value = part.event(folded.column)
            early, _ = part.conditions(folded.filter)
            part.key("k__bucket", self.bucket(folded, value))
            aggs.append(f"count({value}){_filter(early)} AS qn")
        cols = [f"{sql} AS {q(n)}" for n, sql in outputs]
        final = [
            f"{self.typed(m, c)} AS {q(m.name)}" for m, c in zip(measures, combined, strict=True)
        ]
        if folded is not None:
            # One level: phase-1 rows of a group may repeat a bucket (two paths of one
            # route); the engine sums repeats, cheaper than one more aggregation.
            late = [*late_where, *part.conditions(folded.filter)[1], "p1.qn > 0"]
            entry = "{'key': p1.k__bucket, 'count': CAST(p1.qn AS BIGINT)}"
            final.append(f"list_sort(list({entry}){_filter(late)}) AS {q(folded.name)}")
        source = part.source(part.phase1(where, aggs))
        group = " GROUP BY ALL" if outputs else ""
        having = f" HAVING bool_or({_and(late_where)})" if late_where else ""
        return f"SELECT {', '.join(cols + final)} FROM {source}{group}{having}"

    def exact_direct(self, part: _Part, measures: list[Measure]) -> str:
        """Nothing derived per value: one aggregation straight to the output."""
        cols = []
        if self.view.grain is not None:
            window = f"date_trunc('{self.view.grain}', {part.event('ts')})"
            cols.append(f"{window} AS {q(WINDOW_COLUMN)}")
        cols += [f"{part.event(d.source)} AS {q(d.name)}" for d in self.view.dimensions]
        group = " GROUP BY ALL" if cols else ""
        if not cols and not measures:  # only sketches, one group: any row will do
            cols.append("count(*) AS _rows")
        where, _ = part.conditions(self.view.where)
        for m in measures:
            early, _ = part.conditions(m.filter)
            arg = "*" if m.column is None else part.event(m.column)
            cols.append(f"{self.typed(m, f'{m.agg}({arg}){_filter(early)}')} AS {q(m.name)}")
        return f"SELECT {', '.join(cols)} FROM {self.events} WHERE {_and(where)}{group}"

    def quantiles(self, m: Measure) -> str:
        """A histogram on its own (a view's second and later quantiles measures)."""
        part = _Part(self)
        assert m.column is not None
        outputs = part.outputs()
        value = part.event(m.column)
        where, late = part.conditions(self.view.where, m.filter)
        bucket = self.bucket(m, value)
        p1 = part.phase1([*where, f"{value} IS NOT NULL"], [f"{bucket} AS b", "count(*) AS n"])
        keys = "".join(f"{sql} AS {q(n)}, " for n, sql in outputs)
        inner = (
            f"SELECT {keys}p1.b AS b, CAST(sum(p1.n){_filter(late)} AS BIGINT) AS n "
            f"FROM {part.source(p1)} GROUP BY ALL"
        )
        names = "".join(f"{q(n)}, " for n, _ in outputs)
        hist = "list_sort(list({'key': b, 'count': n}) FILTER (WHERE n > 0))"
        group = " GROUP BY ALL" if outputs else ""
        return f"SELECT {names}{hist} AS {q(m.name)} FROM ({inner}){group}"

    def hashed_inputs(self, m: Measure) -> tuple[str, ...] | None:
        """The per-event SQL of the inputs of a distinct item worth hashing, or None.

        Why: an item derived per distinct value from several wide columns (the visitor,
        from client IP, date and user agent) makes every view's DISTINCT group by all
        of them. One 64-bit hash of the inputs per event is a narrow key instead; the
        items themselves are derived once per load, in the item dictionary.
        """
        part = _Part(self)
        assert m.column is not None
        entry = part.entry(m.column)
        if entry is None or entry.lookup is not None or not part.deferred(m.column):
            return None
        if any(part.deferred(i) for i in entry.inputs) or DIALECT not in entry.sql:
            return None
        return tuple(part.event(i) for i in entry.inputs)

    def item_table(self, m: Measure) -> SideTable:
        """The item dictionary of ``m``: (hash of inputs, item) per distinct input."""
        assert m.column is not None
        entry = derived(self.view.kind, m.column)
        assert entry is not None
        part = _Part(self)
        inputs = [part.event(i) for i in entry.inputs]
        aliases = {name: f"i{n}" for n, name in enumerate(entry.inputs)}
        item = part.sql_of(entry, lambda name: q(aliases[name]))
        pairs = zip(entry.inputs, inputs, strict=True)
        cols = ", ".join(f"{sql} AS {q(aliases[name])}" for name, sql in pairs)
        hashed = f"hash({', '.join(q(aliases[name]) for name in entry.inputs)})"
        sql = (
            f"SELECT DISTINCT {hashed} AS h, {item} AS item "
            f"FROM (SELECT DISTINCT {cols} FROM {self.events})"
        )
        table = SideTable(f"{self.events}_items_{m.column}", (), sql=sql, items=True)
        self.tables[table.name] = table
        return table

    def distinct(self, m: Measure) -> str:
        """The items per group (unsorted, maybe repeated: the sketch builder sorts and
        dedupes them), or the hashes of their inputs (see ``hashed_inputs``)."""
        part = _Part(self)
        assert m.column is not None
        outputs = part.outputs()
        hashed = self.hashed_inputs(m) if self.hash_items else None
        if hashed is not None:
            self.item_table(m)
            where, late = part.conditions(self.view.where, m.filter)
            column = f"_hash_{m.column}"
            self.computed[column] = f"hash({', '.join(hashed)})"
            part.key("k__item", q(column))
            p1 = part.phase1(where, [], distinct=True)
            keys = "".join(f"{sql} AS {q(n)}, " for n, sql in outputs)
            inner = f"SELECT {keys}p1.k__item AS item, {_and(late)} AS ok FROM {part.source(p1)}"
            names = "".join(f"{q(n)}, " for n, _ in outputs)
            group = " GROUP BY ALL" if outputs else ""
            return (
                f"SELECT {names}list(item) FILTER (WHERE ok) AS {q(m.name)} FROM ({inner}){group}"
            )
        item = part.merged(m.column)
        where, late = part.conditions(self.view.where, m.filter)
        p1 = part.phase1(where, [], distinct=True)
        keys = "".join(f"{sql} AS {q(n)}, " for n, sql in outputs)
        # No second DISTINCT: two phase-1 rows may derive the same item, but the sketch
        # builder dedupes pairs anyway, more cheaply than another hash aggregation.
        inner = f"SELECT {keys}{item} AS item, {_and(late)} AS ok FROM {part.source(p1)}"
        names = "".join(f"{q(n)}, " for n, _ in outputs)
        items = "list(item) FILTER (WHERE ok AND item IS NOT NULL)"
        group = " GROUP BY ALL" if outputs else ""
        return f"SELECT {names}{items} AS {q(m.name)} FROM ({inner}){group}"


def compile_view(
    view: View, settings: DerivedSettings, events: str, *, hash_items: bool = True
) -> CompiledView:
    """Compile ``view`` over the relation ``events`` (side tables are named after it).

    ``hash_items=False`` lists the items themselves for every distinct measure (the
    engine's fallback should two items' inputs ever hash alike).
    """
    check_view(view)
    comp = _Compiler(view, settings, events, hash_items)
    exact = [m for m in view.measures if m.agg in ("count", "sum", "min", "max")]
    quantiles = [m for m in view.measures if m.agg == "quantiles"]
    folded = quantiles[0] if quantiles else None
    ctes = [("e", comp.exact(exact, folded))]
    source = {m.name: "e" for m in [*exact, *quantiles[:1]]}
    for i, m in enumerate(view.measures):
        if m.agg == "distinct":
            ctes.append((f"d{i}", comp.distinct(m)))
        elif m.agg == "quantiles" and m is not folded:
            ctes.append((f"q{i}", comp.quantiles(m)))
        else:
            continue
        source[m.name] = ctes[-1][0]
    keys = view.key_columns
    select = [f"e.{q(k)}" for k in keys] + [f"{source[m.name]}.{q(m.name)}" for m in view.measures]
    joins = "".join(
        f" LEFT JOIN {alias} ON "
        + _and([f"e.{q(k)} IS NOT DISTINCT FROM {alias}.{q(k)}" for k in keys])
        for alias, _ in ctes[1:]
    )
    order = ", ".join(f"e.{q(k)} ASC NULLS FIRST" for k in keys)
    sql = (
        "WITH " + ", ".join(f"{alias} AS ({body})" for alias, body in ctes)
        + f" SELECT {', '.join(select)} FROM e{joins}"
        + (f" ORDER BY {order}" if order else "")
    )  # fmt: skip
    return CompiledView(
        view,
        sql,
        frozenset(comp.columns),
        tuple(comp.tables[k] for k in sorted(comp.tables)),
        frozenset(m.name for m in view.measures if m.agg == "distinct"),
        frozenset(m.name for m in quantiles),
        {
            m.name: f"{events}_items_{m.column}"
            for m in view.measures
            if m.agg == "distinct" and f"{events}_items_{m.column}" in comp.tables
        },
        comp.computed,
    )


def derived_sql(kind: Kind, name: str, settings: DerivedSettings | None = None) -> str:
    """DuckDB SQL of a column or derived value per event (ad-hoc SQL, tests; no lookups)."""
    probe = View(f"derived_sql:{name}", kind, None, (), (Measure("n", "count"),))
    return _Part(_Compiler(probe, settings or DerivedSettings(), "events")).event(name)
