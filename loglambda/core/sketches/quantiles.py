"""Latency quantiles as DDSketch-style log-bucketed histograms that every engine builds alike.

Why this shape: a histogram of bucket counts is a monoid (counts add), so batch ⊕
realtime merges are exact, and the bucket key is one arithmetic expression that DuckDB
SQL, Spark SQL and numpy (Beam) can all evaluate. The mapping is ddsketch's
``LogarithmicMapping(0.01)``: ``key(x) = ceil(log2(x) * multiplier)`` where
``log2(x)`` is computed as ``ln(x) / ln(2)`` (CPython's ``math.log(x, 2)``) and
``multiplier = ln(2) / log1p(2*alpha/(1-alpha))``; a bucket's representative value is
``2**(key / multiplier) * 2/(1+gamma)``, so any value in the bucket is within 1 % of it.

Why values are rounded to the microsecond first (the one deviation from ddsketch): ``ln``
is not correctly rounded, and engines disagree in the last bit. Measured on 161k values
at and around bucket edges (gamma**k, 2**(k/multiplier) and their +-4 ulp neighbours):
Spark's ``ln`` (StrictMath/fdlibm) gave a different key than CPython/glibc for 116 of
them; on random inputs Spark's ``ln`` differs from glibc on 0.4 % of values and numpy's
AVX-512 ``log`` on 0.015 % (DuckDB calls glibc, as CPython does). The fix: every engine
first clamps the value (milliseconds) to [-1, MAX_VALUE] and rounds it to whole
microseconds, ``floor(x * 1000 + 0.5) / 1000`` (exact IEEE operations, no tie-rounding
mode involved), then applies ddsketch's formula. On that grid no value lies within
3.8e-11 (in key units) of a bucket edge for x <= MAX_VALUE (checked exhaustively with
60-digit decimals in the tests), while a 1-ulp ``ln`` error moves the computed key by at
most 3e-13: all engines get the same key, equal to ``LogarithmicMapping(0.01).key`` of the
rounded value. Latencies arrive with at most microsecond precision, so the rounding
changes no real input. Above MAX_VALUE (1e7 ms, 2.8 h) the grid becomes too fine for
that margin (1e8 ms would leave only 8e-13), so larger values are clamped to it: counted
in the top bucket, never dropped.

Storage form: ``list<struct<key: int32, count: int64>>`` sorted by key, one column per
measure. The zero bucket (values that round to 0 µs: zero, negatives, < 0.5 µs) is the
entry with key ZERO_KEY = -2**31, which sorts first, exactly where ddsketch's zero count
sits in its rank walk. One column merges in SQL with unnest + SUM GROUP BY key, is
written by Spark as ``array<struct<key:int,count:bigint>>`` and round-trips through
Parquet. NULL and NaN values have a NULL key and are not counted.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterable, Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from duckdb.func import ARROW, SPECIAL

Dialect: TypeAlias = Literal["duckdb", "spark"]
#: ((key, count), ...) sorted by key, counts > 0.
Histogram: TypeAlias = tuple[tuple[int, int], ...]
#: Also accepted: the Arrow ``to_pylist()`` form, [{"key": k, "count": c}, ...].
HistogramLike: TypeAlias = Sequence[tuple[int, int]] | Sequence[Mapping[str, Any]]

ALPHA: Final = 0.01
# ddsketch's constants for alpha=0.01, frozen as literals so that every machine and
# every SQL engine uses the very same doubles (a test checks them against ddsketch).
GAMMA: Final = 1.02020202020202
MULTIPLIER: Final = 34.65620375188817
LN2: Final = 0.6931471805599453
VALUE_FACTOR: Final = 2.0 / (1.0 + GAMMA)
#: Values are rounded to this step (1 µs for milliseconds) before keying.
RESOLUTION: Final = 0.001
#: Values above are clamped (see the module docstring for why).
MAX_VALUE: Final = 1e7
ZERO_KEY: Final = -(2**31)

HISTOGRAM_TYPE: Final = pa.list_(pa.struct([("key", pa.int32()), ("count", pa.int64())]))
DUCKDB_HISTOGRAM_TYPE: Final = 'STRUCT("key" INTEGER, "count" BIGINT)[]'
SPARK_HISTOGRAM_TYPE: Final = "ARRAY<STRUCT<key: INT, count: BIGINT>>"


def _lit(value: float) -> str:
    # A string cast is parsed correctly rounded by both engines, whereas a bare decimal
    # literal is DECIMAL in DuckDB and Spark.
    return f"CAST('{value!r}' AS DOUBLE)"


def bucket_key_sql(col: str, dialect: Dialect = "duckdb") -> str:
    """SQL for the bucket key (INT) of ``col`` (milliseconds): NULL for NULL/NaN,
    ZERO_KEY below 0.5 µs, values above MAX_VALUE clamped to it.

    Identical text for both dialects today; the parameter keeps call sites explicit.
    """
    if dialect not in ("duckdb", "spark"):
        raise ValueError(f"unknown dialect {dialect!r}")
    x = f"CAST(({col}) AS DOUBLE)"
    # Clamped on both sides so the microsecond count always fits an integer type (Spark's
    # floor returns BIGINT); every value <= 0 lands in the zero bucket either way.
    clamped = f"greatest(least({x}, {_lit(MAX_VALUE)}), {_lit(-1.0)})"
    micros = f"floor({clamped} * {_lit(1000.0)} + {_lit(0.5)})"
    key = f"ceil(ln({micros} / {_lit(1000.0)}) / {_lit(LN2)} * {_lit(MULTIPLIER)})"
    return (
        f"(CASE WHEN {x} IS NULL OR isnan({x}) THEN CAST(NULL AS INT)"
        f" WHEN {micros} <= 0 THEN CAST({ZERO_KEY} AS INT)"
        f" ELSE CAST({key} AS INT) END)"
    )


def bucket_keys_numpy(values: np.ndarray[Any, Any] | Sequence[float]) -> np.ndarray[Any, Any]:
    """The same keys as :func:`bucket_key_sql`, as int32. NaN (an Arrow null) is refused."""
    x = np.asarray(values, dtype=np.float64)
    if np.isnan(x).any():
        raise ValueError("NaN values have no bucket key: drop nulls/NaN first")
    # Same operations in the same order as the SQL. All but ln are correctly rounded IEEE
    # operations; the microsecond grid makes ln's last-bit differences harmless.
    micros = np.floor(np.clip(x, -1.0, MAX_VALUE) * 1000.0 + 0.5)
    keys = np.full(x.shape, ZERO_KEY, dtype=np.int32)
    pos = micros > 0
    keys[pos] = np.ceil(np.log(micros[pos] / 1000.0) / LN2 * MULTIPLIER).astype(np.int32)
    return keys


def bucket_value(key: int) -> float:
    """The representative value of a bucket, exactly as ddsketch's ``mapping.value``."""
    if key == ZERO_KEY:
        return 0.0
    return math.pow(2.0, key / MULTIPLIER) * VALUE_FACTOR


_KEY_MIN: Final = int(bucket_keys_numpy([RESOLUTION])[0])
_KEY_MAX: Final = int(bucket_keys_numpy([MAX_VALUE])[0])


def _finite_values(values: np.ndarray[Any, Any] | pa.Array | Sequence[float | None]) -> Any:
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = pc.fill_null(values.cast(pa.float64()), math.nan).to_numpy()
    x = np.asarray(values, dtype=np.float64)  # None becomes NaN
    return x[~np.isnan(x)]


def histogram_from_values(
    values: np.ndarray[Any, Any] | pa.Array | Sequence[float | None],
) -> Histogram:
    """The histogram of the non-null, non-NaN values."""
    keys = bucket_keys_numpy(_finite_values(values))
    zeros = int(np.count_nonzero(keys == ZERO_KEY))
    counts = np.bincount(keys[keys != ZERO_KEY] - _KEY_MIN, minlength=0)
    nz = np.flatnonzero(counts)
    pairs = tuple(zip((nz + _KEY_MIN).tolist(), counts[nz].tolist(), strict=True))
    return ((ZERO_KEY, zeros), *pairs) if zeros else pairs


def build_histograms_grouped(
    group_ids: np.ndarray[Any, Any],
    values: np.ndarray[Any, Any] | pa.Array | Sequence[float | None],
    num_groups: int | None = None,
) -> pa.ListArray:
    """One histogram per group id ``0..G-1``, as an Arrow column of HISTOGRAM_TYPE.

    Vectorised for the Beam path: a sort of (group, bucket slot) codes and run lengths.
    """
    if isinstance(values, pa.ChunkedArray | pa.Array):
        values = pc.fill_null(values.cast(pa.float64()), math.nan).to_numpy()
    x = np.asarray(values, dtype=np.float64)
    gids = np.asarray(group_ids, dtype=np.int64)
    if gids.shape != x.shape:
        raise ValueError(f"group_ids has shape {gids.shape}, values has shape {x.shape}")
    if num_groups is None:
        num_groups = int(gids.max()) + 1 if len(gids) else 0
    ok = ~np.isnan(x)
    keys = bucket_keys_numpy(x[ok]).astype(np.int64)
    # Slot 0 is the zero bucket, so slots sort in key order.
    slots = np.where(keys == ZERO_KEY, 0, keys - _KEY_MIN + 1)
    width = _KEY_MAX - _KEY_MIN + 2
    codes = np.sort(gids[ok] * width + slots)
    starts = np.flatnonzero(np.r_[True, codes[1:] != codes[:-1]]) if len(codes) else codes
    uniq = codes[starts]
    counts = np.diff(np.r_[starts, len(codes)])
    slot = uniq % width
    bucket = np.where(slot == 0, ZERO_KEY, slot + _KEY_MIN - 1)
    offsets = np.searchsorted(uniq // width, np.arange(num_groups + 1)).astype(np.int32)
    items = pa.StructArray.from_arrays(
        [pa.array(bucket, pa.int32()), pa.array(counts, pa.int64())], names=["key", "count"]
    )
    return pa.ListArray.from_arrays(pa.array(offsets), items, type=HISTOGRAM_TYPE)


def histograms_from_buckets(lists: pa.Array | pa.ChunkedArray) -> pa.ListArray:
    """Normalise per-row (bucket, count) lists computed by an engine to HISTOGRAM_TYPE.

    Accepts ``list<struct<key|bucket, count>>`` in any order; entries with a NULL key
    (NULL/NaN values) or a count <= 0 are dropped, repeated keys are summed, each row is
    sorted by key, NULL rows stay NULL. Engines that can should build the storage form
    directly with :func:`histogram_agg_sql` instead.
    """
    arr = lists.combine_chunks() if isinstance(lists, pa.ChunkedArray) else lists
    names = [f.name for f in arr.type.value_type]
    key_name = "key" if "key" in names else "bucket"
    flat = arr.flatten()
    lengths = np.asarray(pc.list_value_length(arr).fill_null(0), dtype=np.int64)
    rows = np.repeat(np.arange(len(arr), dtype=np.int64), lengths)
    keys_arr, counts_arr = flat.field(key_name), flat.field("count")
    keep = np.asarray(pc.and_(keys_arr.is_valid(), counts_arr.is_valid()), dtype=bool)
    keys = np.asarray(keys_arr.fill_null(0), dtype=np.int64)
    counts = np.asarray(counts_arr.fill_null(0), dtype=np.int64)
    keep &= counts > 0
    rows, keys, counts = rows[keep], keys[keep], counts[keep]
    order = np.lexsort((keys, rows))
    rows, keys, counts = rows[order], keys[order], counts[order]
    new = np.r_[True, (rows[1:] != rows[:-1]) | (keys[1:] != keys[:-1])] if len(rows) else rows
    starts = np.flatnonzero(new)
    items = pa.StructArray.from_arrays(
        [pa.array(keys[starts], pa.int32()), pa.array(np.add.reduceat(counts, starts), pa.int64())]
        if len(starts)
        else [pa.array([], pa.int32()), pa.array([], pa.int64())],
        names=["key", "count"],
    )
    offsets = np.searchsorted(rows[starts], np.arange(len(arr) + 1)).astype(np.int32)
    return pa.ListArray.from_arrays(
        pa.array(offsets), items, type=HISTOGRAM_TYPE, mask=pc.invert(arr.is_valid())
    )


def _pairs(hist: HistogramLike) -> list[tuple[int, int]]:
    return [
        (int(e["key"]), int(e["count"])) if isinstance(e, Mapping) else (int(e[0]), int(e[1]))
        for e in hist
    ]


def merge_histograms(hists: Iterable[HistogramLike | None]) -> Histogram:
    """The exact sum of the histograms (``None`` entries are skipped)."""
    total: dict[int, int] = {}
    for hist in hists:
        if hist is not None:
            for key, count in _pairs(hist):
                total[key] = total.get(key, 0) + count
    return tuple((k, c) for k, c in sorted(total.items()) if c)


def quantile(hist: HistogramLike | None, q: float) -> float | None:
    """ddsketch's quantile: the bucket of the item at rank ``q * (count - 1)``.

    Walks the buckets in key order (zero bucket first) to the first whose running count
    exceeds the rank and returns its representative value. ``None`` for an empty
    histogram or q outside [0, 1], as ddsketch's ``get_quantile_value``.
    """
    pairs = _pairs(hist) if hist is not None else []
    count = sum(c for _, c in pairs)
    if count == 0 or not 0.0 <= q <= 1.0:
        return None
    rank = q * (count - 1)
    running = 0
    for key, c in pairs:
        running += c
        if running > rank:
            return bucket_value(key)
    return bucket_value(pairs[-1][0])  # unreachable for valid counts


def histograms_to_arrow(hists: Sequence[HistogramLike | None]) -> pa.ListArray:
    """An Arrow column (HISTOGRAM_TYPE) from Python histograms; ``None`` becomes null."""
    rows = [None if h is None else [{"key": k, "count": c} for k, c in _pairs(h)] for h in hists]
    return pa.array(rows, type=HISTOGRAM_TYPE)


def histograms_from_arrow(column: pa.Array | pa.ChunkedArray) -> list[Histogram | None]:
    """Python histograms from an Arrow list<struct<key, count>> column (any list flavour)."""
    return [None if h is None else tuple(_pairs(h)) for h in column.to_pylist()]


def histogram_agg_sql(key_col: str, count_col: str, dialect: Dialect = "duckdb") -> str:
    """Aggregate SQL collecting (key, count) rows of a group into the storage form."""
    if dialect == "duckdb":
        return (
            f'list(struct_pack("key" := CAST(({key_col}) AS INTEGER), '
            f'"count" := CAST(({count_col}) AS BIGINT)) ORDER BY ({key_col}))'
        )
    if dialect == "spark":
        # sort_array orders structs by their first field, the key.
        return (
            f"sort_array(collect_list(named_struct('key', CAST(({key_col}) AS INT), "
            f"'count', CAST(({count_col}) AS BIGINT))))"
        )
    raise ValueError(f"unknown dialect {dialect!r}")


def merge_histograms_sql(
    relation: str, group_cols: Sequence[str], hist_col: str, dialect: Dialect = "duckdb"
) -> str:
    """A SELECT merging ``hist_col`` over the rows of ``relation`` per ``group_cols``.

    The result column keeps the name ``hist_col``. SUM over BIGINT is HUGEINT in DuckDB,
    hence the cast back inside :func:`histogram_agg_sql`.
    """
    unnest = "unnest" if dialect == "duckdb" else "explode"
    gsel = "".join(f"{g}, " for g in group_cols)
    gby = ", ".join([*group_cols, "e.key"])
    outer_gby = f" GROUP BY {', '.join(group_cols)}" if group_cols else ""
    return (
        f"SELECT {gsel}{histogram_agg_sql('k', 'c', dialect)} AS {hist_col} FROM ("
        f"SELECT {gsel}e.key AS k, sum(e.count) AS c FROM ("
        f"SELECT {gsel}{unnest}({hist_col}) AS e FROM {relation}) AS u GROUP BY {gby}"
        f") AS m{outer_gby}"
    )


def quantile_sql(list_col: str, q: str | float) -> str:
    """DuckDB SQL (a scalar subquery) for :func:`quantile` of a histogram column.

    Same walk as ddsketch, in SQL: running counts by key, first bucket whose running
    count exceeds ``q * (count - 1)``. NULL when empty or q is outside [0, 1].
    """
    qx = f"CAST(({q}) AS DOUBLE)"
    value = (
        f"CASE WHEN h.key = {ZERO_KEY} THEN {_lit(0.0)} "
        f"ELSE pow({_lit(2.0)}, h.key / {_lit(MULTIPLIER)}) * {_lit(VALUE_FACTOR)} END"
    )
    return (
        f"(SELECT {value} FROM ("
        f"SELECT e.key AS key, sum(e.count) OVER (ORDER BY e.key) AS running, "
        f"sum(e.count) OVER () AS total FROM (SELECT unnest({list_col}) AS e) AS u) AS h "
        f"WHERE {qx} BETWEEN 0 AND 1 AND h.running > {qx} * (h.total - 1) "
        f"ORDER BY h.key LIMIT 1)"
    )


def _udf_quantile(hists: pa.ChunkedArray, qs: pa.ChunkedArray) -> pa.Array:
    """Vectorised :func:`quantile` over a column: one searchsorted on global running sums."""
    h = hists.combine_chunks() if isinstance(hists, pa.ChunkedArray) else hists
    q = pc.fill_null(qs.cast(pa.float64()), math.nan).to_numpy(zero_copy_only=False)
    lengths = np.asarray(pc.list_value_length(h).fill_null(0), dtype=np.int64)
    flat = h.flatten()
    keys = np.asarray(flat.field("key").fill_null(0), dtype=np.int64)
    running = np.cumsum(np.asarray(flat.field("count").fill_null(0), dtype=np.int64))
    ends = np.cumsum(lengths)
    starts = ends - lengths
    base = np.where(starts > 0, running[np.maximum(starts - 1, 0)], 0) if len(running) else 0
    total = (running[np.maximum(ends - 1, 0)] if len(running) else 0) - base
    total = np.where(lengths > 0, total, 0)
    ok = np.asarray(h.is_valid(), dtype=bool) & (total > 0) & (q >= 0.0) & (q <= 1.0)
    # Running counts are integers: "running > rank" is "running > floor(rank)", and the
    # running sums are globally non-decreasing, so one searchsorted finds every row's
    # bucket.
    rank = np.floor(np.where(ok, q, 0.0) * (total - 1).astype(np.float64)).astype(np.int64)
    idx = np.searchsorted(running, base + rank, side="right")
    out: list[float | None] = [None] * len(h)
    for row in np.flatnonzero(ok).tolist():
        out[row] = bucket_value(int(keys[idx[row]]))
    return pa.array(out, pa.float64())


def register_quantile_functions(con: duckdb.DuckDBPyConnection) -> None:
    """Register ``ddsketch_quantile(hist, q) -> DOUBLE`` and the ``ddsketch_key(x)`` macro."""
    with contextlib.suppress(duckdb.InvalidInputException):
        con.remove_function("ddsketch_quantile")
    con.create_function(
        "ddsketch_quantile",
        _udf_quantile,
        [DUCKDB_HISTOGRAM_TYPE, "DOUBLE"],
        "DOUBLE",
        type=ARROW,
        # It returns NULL for empty histograms and q outside [0, 1], which DEFAULT forbids.
        null_handling=SPECIAL,
    )
    con.execute(f"CREATE OR REPLACE TEMP MACRO ddsketch_key(x) AS {bucket_key_sql('x')}")
