"""Mergeable, deterministic sketch measures shared by the batch, speed and serving layers.

Unique counts are Apache DataSketches HLL sketches, built exactly as Spark 4's
``hll_sketch_agg(col, 12)`` builds them (:mod:`.hll`); latency quantiles are DDSketch
log-bucketed histograms whose bucket key every engine computes in plain SQL or numpy with
identical results (:mod:`.quantiles`). Both add up across partial views, which is what the
batch ⊕ realtime merge of the exactness contract needs.
"""

from __future__ import annotations

import duckdb

from loglambda.core.sketches.hll import (
    LG_K,
    TGT_TYPE,
    build_hll,
    build_hll_grouped,
    hll_estimate,
    hll_union,
    register_hll_functions,
)
from loglambda.core.sketches.quantiles import (
    ALPHA,
    DUCKDB_HISTOGRAM_TYPE,
    HISTOGRAM_TYPE,
    MAX_VALUE,
    RESOLUTION,
    SPARK_HISTOGRAM_TYPE,
    ZERO_KEY,
    Histogram,
    HistogramLike,
    bucket_key_sql,
    bucket_keys_numpy,
    bucket_value,
    build_histograms_grouped,
    histogram_agg_sql,
    histogram_from_values,
    histograms_from_arrow,
    histograms_from_buckets,
    histograms_to_arrow,
    merge_histograms,
    merge_histograms_sql,
    quantile,
    quantile_sql,
    register_quantile_functions,
)

__all__ = [
    "ALPHA",
    "DUCKDB_HISTOGRAM_TYPE",
    "HISTOGRAM_TYPE",
    "LG_K",
    "MAX_VALUE",
    "RESOLUTION",
    "SPARK_HISTOGRAM_TYPE",
    "TGT_TYPE",
    "ZERO_KEY",
    "Histogram",
    "HistogramLike",
    "bucket_key_sql",
    "bucket_keys_numpy",
    "bucket_value",
    "build_histograms_grouped",
    "build_hll",
    "build_hll_grouped",
    "histogram_agg_sql",
    "histogram_from_values",
    "histograms_from_arrow",
    "histograms_from_buckets",
    "histograms_to_arrow",
    "hll_estimate",
    "hll_union",
    "merge_histograms",
    "merge_histograms_sql",
    "quantile",
    "quantile_sql",
    "register_hll_functions",
    "register_quantile_functions",
    "register_sketch_functions",
]


def register_sketch_functions(con: duckdb.DuckDBPyConnection) -> None:
    """Register every sketch SQL function (HLL and quantiles) on a DuckDB connection."""
    register_hll_functions(con)
    register_quantile_functions(con)
