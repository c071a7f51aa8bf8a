"""Acceptance check for the sketch measures on a million synthetic events.

Unique clients (HLL) within 2 % of the exact count; p50/p95/p99 (DDSketch histograms)
within 1 % of the exact quantiles; both sketch kinds survive Parquet unchanged; and the
merge of per-group sketches equals the sketch of the whole, which is what the
batch ⊕ realtime merge relies on.

The exact quantile is ``numpy.quantile(..., method="lower")``: ddsketch's rank is
``q * (n - 1)`` and its walk stops at the first bucket whose running count exceeds the
rank, i.e. the bucket of the sorted item at index ``floor(q * (n - 1))``, which is what
numpy's "lower" method returns.

Note on the 2 % bound: lg_k 12 gives a relative standard error of 1.6 % for the
order-independent estimate we report (``hll_estimate``), so 2 % is about 1.25 sigma: the
data is fixed by its seed, and the sketch's own 3-sigma bounds are checked as well.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import datasketches as ds
import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglambda.core.sketches import (
    build_histograms_grouped,
    build_hll,
    build_hll_grouped,
    histogram_from_values,
    histograms_from_arrow,
    hll_estimate,
    hll_union,
    merge_histograms,
    merge_histograms_sql,
    quantile,
    register_sketch_functions,
)

pytestmark = pytest.mark.integration

N_EVENTS = 1_000_000
N_CLIENTS = 270_000  # about 208k of them show up under the Zipf skew below
N_GROUPS = 24  # e.g. hours: the partial views that get merged
QUANTILES = (0.5, 0.95, 0.99)


@pytest.fixture(scope="module")
def events() -> pa.Table:
    rng = np.random.default_rng(20240601)
    weights = 1.0 / np.arange(1, N_CLIENTS + 1) ** 0.8
    client = rng.permutation(N_CLIENTS)[rng.choice(N_CLIENTS, N_EVENTS, p=weights / weights.sum())]
    pool = pa.array([f"10.{i >> 16 & 255}.{i >> 8 & 255}.{i & 255}" for i in range(N_CLIENTS)])
    latency = rng.lognormal(np.log(40.0), 0.5, N_EVENTS)
    slow = rng.random(N_EVENTS) < 0.03  # the slow tail: p99 lands in it
    latency[slow] = rng.lognormal(np.log(1500.0), 0.8, int(slow.sum()))
    return pa.table(
        {
            "group": rng.integers(0, N_GROUPS, N_EVENTS),
            "client_id": client,
            "client_ip": pool.take(pa.array(client)),
            "latency_ms": np.round(latency, 3),  # microsecond precision, as logs give it
        }
    )


def test_unique_clients_within_two_percent(events: pa.Table) -> None:
    exact = len(np.unique(events.column("client_id").to_numpy()))
    sketch = build_hll(events.column("client_ip"))
    estimate = hll_estimate(sketch)
    assert abs(estimate - exact) <= 0.02 * exact, (estimate, exact)
    parsed = ds.hll_sketch.deserialize(sketch)
    assert parsed.get_lower_bound(3) <= exact <= parsed.get_upper_bound(3)


def test_quantiles_within_one_percent(events: pa.Table) -> None:
    latency = events.column("latency_ms").to_numpy()
    hist = histogram_from_values(latency)
    for q in QUANTILES:
        exact = float(np.quantile(latency, q, method="lower"))
        estimate = quantile(hist, q)
        assert estimate is not None
        # alpha is 1 %, and a bucket's edge is exactly alpha away: allow rounding.
        assert abs(estimate - exact) <= 0.01 * exact * (1 + 1e-12), (q, estimate, exact)


def test_merged_groups_equal_the_whole(events: pa.Table) -> None:
    groups = events.column("group").to_numpy()
    whole_hist = histogram_from_values(events.column("latency_ms"))
    parts = histograms_from_arrow(build_histograms_grouped(groups, events.column("latency_ms")))
    assert merge_histograms(parts) == whole_hist  # identical buckets, exactly

    whole = build_hll(events.column("client_ip"))
    partials = build_hll_grouped(groups, events.column("client_ip"))
    merged = hll_union(partials)
    # Registers of a union equal those of the whole set, and hll_estimate reads only the
    # registers: equal exactly. The bytes differ (the union is flagged out-of-order).
    assert hll_estimate(merged) == hll_estimate(whole)
    assert merged != whole


def test_parquet_round_trip_and_sql_merge(events: pa.Table, tmp_path: Path) -> None:
    groups = events.column("group").to_numpy()
    sketches = build_hll_grouped(groups, events.column("client_ip"))
    hists = build_histograms_grouped(groups, events.column("latency_ms"))
    view = pa.table(
        {
            "group": pa.array(range(N_GROUPS), pa.int32()),
            "visitors": pa.array(sketches, pa.binary()),
            "latency": hists,
        }
    )
    path = tmp_path / "view.parquet"
    pq.write_table(view, path)
    back = pq.read_table(path)
    assert back.column("visitors").to_pylist() == sketches
    assert back.column("latency").type == hists.type
    assert histograms_from_arrow(back.column("latency")) == histograms_from_arrow(hists)

    con = duckdb.connect()
    register_sketch_functions(con)
    visitors = con.sql(
        f"SELECT hll_estimate(hll_union_list(list(visitors))) FROM '{path}'"
    ).fetchall()
    assert visitors == [(hll_estimate(build_hll(events.column("client_ip"))),)]
    merged: Any = con.sql(
        f"SELECT ddsketch_quantile(latency, 0.99), latency"
        f" FROM ({merge_histograms_sql(repr(str(path)), [], 'latency')})"
    ).fetchall()
    ((p99, latency),) = merged
    whole = histogram_from_values(events.column("latency_ms"))
    assert tuple((e["key"], e["count"]) for e in latency) == whole
    assert p99 == quantile(whole, 0.99)
