"""Coarser-grained views rolled up from a finer one the same engine call computed.

Why: ``traffic_hour`` and ``traffic_day`` are ``traffic_minute`` with a coarser
window, and every one of their measures is a monoid (counts and sums add, min and max
keep the extreme, histograms add bucket counts). Re-keying the minute rows to the hour
and merging them with ``core.partials.merge_partials`` (the merge serving and the speed
layer already use, held byte-identical to the engine by the conformance tests) costs a
sort of a few thousand rows; the SQL re-scans every event and joins the route table
again. On a 250k-event slice that was ~2 x 70-110 ms of the ~0.9 s a slice costs.

Only exact when nothing differs but the grain, and only used on in-memory slices (the
speed layer): a batch run computes one view per call, and its minute table can be as
large as its events.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.catalog import WINDOW_COLUMN, Measure, View, measure_type
from loglambda.core.partials import merge_partials

# UTC-aligned grains, finest first: each window of one lies inside one window of the next.
_ORDER: Final = ("minute", "hour", "day")
_MERGEABLE: Final = frozenset({"count", "sum", "min", "max", "quantiles"})


def rollup_sources(views: Sequence[View]) -> dict[str, str]:
    """For each view that can be rolled up from another of ``views``: the name of its
    finest such source (which is itself computed, never rolled up)."""
    out: dict[str, str] = {}
    for view in views:
        if view.grain not in _ORDER or not all(_exact_merge(view, m) for m in view.measures):
            continue
        finer = [
            v
            for v in views
            if v.grain in _ORDER
            and _ORDER.index(v.grain) < _ORDER.index(view.grain)
            and (v.kind, v.dimensions, v.measures, v.where)
            == (view.kind, view.dimensions, view.measures, view.where)
        ]
        if finer:
            out[view.name] = min(finer, key=lambda v: _ORDER.index(v.grain or "")).name
    return out


def _exact_merge(view: View, m: Measure) -> bool:
    """Whether merging partial values of ``m`` gives the bytes computing it whole does:
    not for sketches (a union's bytes differ), nor for floating-point sums (addition
    order changes the last bit)."""
    if m.agg == "sum":
        return not pa.types.is_floating(measure_type(view, m))
    return m.agg in _MERGEABLE


def exact_rollup(fine: pa.Table, view: View) -> bool:
    """Whether merging ``fine`` is exact: DuckDB orders NaN above every number, Arrow's
    min/max skip it, so a NaN extreme is left to the SQL."""
    for m in view.measures:
        col = fine.column(m.name)
        floating = m.agg in ("min", "max") and pa.types.is_floating(col.type)
        if floating and pc.any(pc.is_nan(col)).as_py():
            return False
    return True


def roll_up(fine: pa.Table, view: View) -> pa.Table:
    """``view``'s rows from the rows of a finer view with the same dimensions and
    measures: windows truncated to ``view.grain``, rows of one key merged."""
    assert view.grain is not None
    window = pc.floor_temporal(fine.column(WINDOW_COLUMN), unit=view.grain)
    index = fine.schema.get_field_index(WINDOW_COLUMN)
    rekeyed = fine.set_column(index, fine.schema.field(index), window)
    return merge_partials(view, [rekeyed])
