"""DuckDB result columns to the catalog's storage forms (the DuckDB engine's helpers).

Why a separate module: the engine runs SQL; what a list of items, of item hashes or of
{key, count} entries becomes (an HLL sketch, the items form, a histogram) is done here,
vectorised, with the sketches module doing the per-sketch work.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.partials import items_from_ranks


def _hll_sketches(group_ids: np.ndarray[Any, Any], items: pa.Array, groups: int) -> list[bytes]:
    """Adapter to the sketches module: one compact HLL sketch per group."""
    from loglambda.core.sketches.hll import build_hll_grouped

    return build_hll_grouped(group_ids, items, groups)


def histogram_column(lists: pa.Array) -> pa.Array:
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


def sketch_column(lists: pa.Array) -> pa.Array:
    """Distinct items per row (a list array, NULL = none) to one HLL sketch per row."""
    rows = len(lists)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    group_ids = np.repeat(np.arange(rows, dtype=np.int64), lengths)
    return pa.array(_hll_sketches(group_ids, lists.flatten(), rows), pa.binary())


@dataclass(frozen=True)
class ItemDictionary:
    """Every distinct item of a load, sorted, and the hashes of inputs that derive them.

    ``hashes`` is sorted and ``ranks[i]`` is the position in ``values`` (sorted,
    distinct, non-null) of the item of ``hashes[i]``; a hash whose item is NULL is
    absent, so its events count no item, as a NULL item would not.
    """

    hashes: np.ndarray[Any, Any]
    ranks: np.ndarray[Any, Any]
    values: pa.Array
    # ``values`` as Python strings, converted once per load for every view's sketches.
    strings: list[Any]


def hashed_sketch_column(
    lists: pa.Array, items: ItemDictionary, as_items: bool = False
) -> pa.Array:
    """Hashes of item inputs per row (a list array, NULL = none) to one sketch per row
    (``as_items``: to the sorted list of the row's distinct items)."""
    from loglambda.core.sketches.hll import build_hll_grouped_ranked

    rows = len(lists)
    lengths = pc.list_value_length(lists).fill_null(0).to_numpy(zero_copy_only=False)
    group_ids = np.repeat(np.arange(rows, dtype=np.int64), lengths)
    flat = lists.flatten()
    hashes = np.asarray(flat.fill_null(0), dtype=np.uint64)
    at = np.searchsorted(items.hashes, hashes)
    at[at == len(items.hashes)] = 0
    known = np.asarray(flat.is_valid(), dtype=bool)
    if len(items.hashes):
        known &= items.hashes[at] == hashes
    else:
        known[:] = False
    if as_items:
        return items_from_ranks(group_ids[known], items.ranks[at[known]], items.values, rows)
    sketches = build_hll_grouped_ranked(
        group_ids[known], items.ranks[at[known]], items.strings, rows
    )
    return pa.array(sketches, pa.binary())
