"""The merge of partial view rows, derived from the catalog: batch ⊕ speed, bundle ⊕ bundle.

Why here, in core: the speed layer merges the partials of the chunks of a slice, the
serving layer merges a batch version with the speed partials above its horizon, and
both must merge exactly alike. Every measure of the catalog is a monoid, so the merge
is one rule per aggregation, read off the declaration: counts and sums add, min and
max keep the extreme, HLL sketches union, histograms add bucket counts. Nothing is
written per view.

Two forms of a partial table:

- the **sketch form** is the view's own rows, ``catalog.output_schema(view)``: what
  engines publish and what the speed layer stores. Merging unions the HLL sketches;
  a union reads exactly like a recomputed sketch (``hll_estimate`` depends only on the
  registers) but its bytes differ from the sketch built from all items at once.
- the **items form** (``partial_schema(view, items=True)``) carries each distinct
  measure as the sorted list of its distinct items instead. Merging unions the lists,
  and ``sketch_items`` builds the sketches at the end from sorted items, so a slice
  computed in chunks gives byte-identical sketches to the slice computed whole. The
  speed layer uses it inside one slice; it is not meant for storage (unbounded).

Nulls as the catalog defines them: the sum, min or max of nothing is NULL, a count of
nothing is 0, a sketch or histogram of nothing is empty, never NULL.

Output is deterministic like the batch engine's: rows sorted by the key columns
(ascending, NULLs first), one chunk per column, exactly the form's schema.
"""

from __future__ import annotations

import functools
import itertools
from collections.abc import Iterable
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.catalog import CatalogError, Measure, View, output_schema, source_type
from loglambda.core.sketches.hll import build_hll_grouped, hll_union
from loglambda.core.sketches.quantiles import HISTOGRAM_TYPE

__all__ = [
    "items_from_ranks",
    "items_lists",
    "merge_partials",
    "partial_schema",
    "sketch_items",
]

Ints = np.ndarray[Any, Any]
_ARROW_AGG = {"count": "sum", "sum": "sum", "min": "min", "max": "max"}


@functools.cache
def partial_schema(view: View, *, items: bool = False) -> pa.Schema:
    """The schema of a partial table: ``output_schema(view)``, or with ``items`` each
    distinct measure as a non-null list of its item type (sorted, distinct, no NULLs).
    Cached (views are frozen): the speed layer asks for it per table it merges."""
    schema = output_schema(view)
    if not items:
        return schema
    for m in view.measures:
        if m.agg == "distinct":
            item = source_type(view.kind, m.column or "")
            assert item is not None  # output_schema checked the view
            at = schema.get_field_index(m.name)
            schema = schema.set(at, pa.field(m.name, pa.list_(item), nullable=False))
    return schema


def merge_partials(view: View, tables: Iterable[pa.Table], *, items: bool = False) -> pa.Table:
    """Re-aggregate partial tables of ``view`` by its key columns into one partial table.

    Associative and commutative up to the HLL union's bytes (which depend only on the
    multiset of input sketches, see ``hll_union``): merging any grouping of the same
    partials gives the same rows. Keys that occur once are passed through untouched.
    """
    schema = partial_schema(view, items=items)
    given = [_conform(view, schema, t) for t in tables]
    present = [t for t in given if t.num_rows]
    if not present:
        return schema.empty_table()
    table = pa.concat_tables(present)
    keys = view.key_columns
    if keys:
        order = pc.sort_indices(table, sort_keys=[(k, "ascending", "at_start") for k in keys])
        table = table.take(order)
    table = table.combine_chunks()
    rows = table.num_rows
    new = np.ones(rows, dtype=bool)
    if keys:
        new[1:] = _key_changes(table, keys)
    else:
        new[1:] = False
    starts = np.flatnonzero(new)
    if len(starts) == rows:
        return _single_chunks(table, schema)
    gids = np.cumsum(new) - 1
    groups = len(starts)
    # Taking the group's first row keeps every value of a key seen once as it was.
    columns = {k: table.column(k).take(pa.array(starts)) for k in keys}
    exact = [m for m in view.measures if m.agg in _ARROW_AGG]
    if exact:
        columns.update(_exact(table, gids, exact))
    sizes = np.diff(np.append(starts, rows))
    for m in view.measures:
        col = table.column(m.name).combine_chunks()
        if m.agg == "quantiles":
            columns[m.name] = _merge_histograms(col, gids, groups)
        elif m.agg == "distinct" and items:
            lengths = _lengths(col)
            flat = col.flatten()
            columns[m.name] = _grouped_items(np.repeat(gids, lengths), flat, groups)
        elif m.agg == "distinct":
            columns[m.name] = _union_sketches(col, gids, starts, sizes)
    arrays = [columns[f.name].cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def sketch_items(view: View, table: pa.Table) -> pa.Table:
    """An items-form table as the view's rows: each item list becomes its HLL sketch,
    built from the sorted items exactly as the batch engine builds it."""
    table = _conform(view, partial_schema(view, items=True), table).combine_chunks()
    schema = partial_schema(view)
    arrays = []
    for f in schema:
        col = table.column(f.name).combine_chunks()
        if f.type == pa.binary() and pa.types.is_list(col.type):
            lengths = _lengths(col)
            gids = np.repeat(np.arange(len(col), dtype=np.int64), lengths)
            col = pa.array(build_hll_grouped(gids, col.flatten(), len(col)), pa.binary())
        arrays.append(col.cast(f.type))
    return pa.Table.from_arrays(arrays, schema=schema)


def items_from_ranks(
    group_ids: np.ndarray[Any, Any], ranks: np.ndarray[Any, Any], values: pa.Array, groups: int
) -> pa.ListArray:
    """One list per group ``0..groups-1``: its distinct items, in the order of ``values``
    (which must be sorted and distinct); ``ranks[i]`` indexes item ``i`` in ``values``."""
    gids = np.asarray(group_ids, dtype=np.int64)
    codes = np.asarray(ranks, dtype=np.int64)
    width = max(len(values), 1)
    pairs = np.sort(gids * width + codes)
    if len(pairs):
        keep = np.empty(len(pairs), dtype=bool)
        keep[0] = True
        np.not_equal(pairs[1:], pairs[:-1], out=keep[1:])
        pairs = pairs[keep]
    offsets = np.searchsorted(pairs // width, np.arange(groups + 1)).astype(np.int32)
    picked = values.take(pa.array(pairs % width, pa.int64()))
    return pa.ListArray.from_arrays(pa.array(offsets, pa.int32()), picked)


def items_lists(lists: pa.Array | pa.ChunkedArray, item_type: pa.DataType) -> pa.ListArray:
    """Per row of a list column (NULL meaning none): its distinct non-null items, sorted."""
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    gids = np.repeat(np.arange(len(arr), dtype=np.int64), _lengths(arr))
    return _grouped_items(gids, arr.flatten().cast(item_type), len(arr))


# -- helpers -------------------------------------------------------------------------


def _conform(view: View, schema: pa.Schema, table: pa.Table) -> pa.Table:
    if table.schema.equals(schema):
        return table
    if table.column_names != schema.names:
        raise CatalogError(
            f"view {view.name!r}: a partial has columns {table.column_names}, "
            f"expected {schema.names}"
        )
    try:
        return table.cast(schema)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as err:
        raise CatalogError(f"view {view.name!r}: a partial does not fit {schema}: {err}") from err


def _single_chunks(table: pa.Table, schema: pa.Schema) -> pa.Table:
    arrays = [table.column(f.name).combine_chunks().cast(f.type) for f in schema]
    return pa.Table.from_arrays(arrays, schema=schema)


def _lengths(lists: pa.Array) -> np.ndarray[Any, Any]:
    return np.asarray(pc.list_value_length(lists).fill_null(0), dtype=np.int64)


def _key_changes(table: pa.Table, keys: tuple[str, ...]) -> np.ndarray[Any, Any]:
    """For rows 1..n-1 of a key-sorted table: whether the key differs from the row
    before. Two NULLs are the same key (as GROUP BY treats them)."""
    rows = table.num_rows
    changed = np.zeros(max(rows - 1, 0), dtype=bool)
    for k in keys:
        col = table.column(k).combine_chunks()
        now, before = col.slice(1), col.slice(0, rows - 1)
        equal = pc.fill_null(pc.equal(now, before), False)
        both_null = pc.and_(now.is_null(), before.is_null())
        changed |= ~np.asarray(pc.or_(equal, both_null), dtype=bool)
    return changed


def _exact(
    table: pa.Table, gids: np.ndarray[Any, Any], measures: list[Measure]
) -> dict[str, pa.Array]:
    """Counts and sums added, min and max kept, per group, by Arrow's hash aggregation.

    ``sum`` skips NULLs and gives NULL when a group has none (min_count 1), which is the
    catalog's "sum of nothing is NULL"; counts are never NULL, so their sum is not.
    """
    data = {f"m{i}": table.column(m.name) for i, m in enumerate(measures)}
    data["g"] = pa.array(gids, pa.int64())
    grouped = (
        pa.table(data)
        .group_by("g", use_threads=False)
        .aggregate([(f"m{i}", _ARROW_AGG[m.agg]) for i, m in enumerate(measures)])
        .sort_by("g")  # group order is first appearance; sort to be explicit
    )
    return {
        m.name: grouped.column(f"m{i}_{_ARROW_AGG[m.agg]}").combine_chunks()
        for i, m in enumerate(measures)
    }


def _merge_histograms(col: pa.Array, gids: np.ndarray[Any, Any], groups: int) -> pa.Array:
    """Bucket counts added per group and key, entries sorted by key (vectorised)."""
    rows = np.repeat(gids, _lengths(col))
    flat = col.flatten()
    keys = np.asarray(flat.field("key"), dtype=np.int64)
    counts = np.asarray(flat.field("count"), dtype=np.int64)
    order = np.lexsort((keys, rows))
    rows, keys, counts = rows[order], keys[order], counts[order]
    new = np.ones(len(rows), dtype=bool)
    new[1:] = (rows[1:] != rows[:-1]) | (keys[1:] != keys[:-1])
    starts = np.flatnonzero(new)
    sums = np.add.reduceat(counts, starts) if len(starts) else counts
    offsets = np.searchsorted(rows[starts], np.arange(groups + 1)).astype(np.int32)
    entries = pa.StructArray.from_arrays(
        [pa.array(keys[starts], pa.int32()), pa.array(sums, pa.int64())], names=["key", "count"]
    )
    return pa.ListArray.from_arrays(pa.array(offsets), entries, type=HISTOGRAM_TYPE)


def _union_sketches(col: pa.Array, gids: Ints, starts: Ints, sizes: Ints) -> pa.Array:
    """A group's sketch: its only one as is, or the union of its several (the only
    per-row Python work of a merge, so it is confined to keys seen more than once)."""
    repeated = np.flatnonzero(sizes > 1)
    pick = starts.copy()
    if len(repeated):
        members = np.flatnonzero(sizes[gids] > 1)  # rows of repeated keys, by group
        blobs = col.take(pa.array(members, pa.int64())).to_pylist()
        bounds = np.cumsum(np.append(0, sizes[repeated])).tolist()
        unions = [hll_union(blobs[a:b]) for a, b in itertools.pairwise(bounds)]
        pick[repeated] = len(col) + np.arange(len(repeated))
        col = pa.concat_arrays([col, pa.array(unions, pa.binary())])
    return col.take(pa.array(pick, pa.int64()))


def _grouped_items(gids: np.ndarray[Any, Any], flat: pa.Array, groups: int) -> pa.ListArray:
    """Distinct non-null items of ``flat`` per group id, sorted, as a list per group."""
    encoded = pc.dictionary_encode(flat)
    dictionary = encoded.dictionary
    order = np.asarray(pc.sort_indices(dictionary), dtype=np.int64)
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    valid = np.asarray(encoded.indices.is_valid(), dtype=bool)
    indices = np.asarray(encoded.indices.fill_null(0), dtype=np.int64)[valid]
    ranks = rank[indices] if len(order) else indices
    values = dictionary.take(pa.array(order, pa.int64()))
    return items_from_ranks(np.asarray(gids)[valid], ranks, values, groups)
