"""DDSketch histograms: identical bucket keys in DuckDB, numpy and Spark; exact merges.

The reference throughout is the ``ddsketch`` package itself: keys are
``LogarithmicMapping(0.01).key`` of the value rounded to the microsecond, quantiles are
``DDSketch(0.01).get_quantile_value``.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator, Sequence
from decimal import ROUND_FLOOR, Decimal, localcontext
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ddsketch import DDSketch
from ddsketch.mapping import LogarithmicMapping
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loglambda.core.sketches import (
    HISTOGRAM_TYPE,
    MAX_VALUE,
    ZERO_KEY,
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
from loglambda.core.sketches import quantiles as q_mod

# Not a module-wide pytestmark: the Spark tests at the end start a JVM and are marked
# slow + integration instead of unit.
unit = pytest.mark.unit
MAPPING = LogarithmicMapping(0.01)
KEY_MIN = MAPPING.key(0.001)
KEY_MAX = MAPPING.key(MAX_VALUE)
MULTIPLIER = q_mod.MULTIPLIER


def round_us(x: float) -> float:
    return math.floor(min(max(x, -1.0), MAX_VALUE) * 1000.0 + 0.5) / 1000.0


def reference_key(x: float) -> int:
    r = round_us(x)
    return ZERO_KEY if r <= 0 else int(MAPPING.key(r))


def _grid_near(b: float) -> list[float]:
    n = math.floor(b * 1000)
    return [m / 1000 for m in (n - 1, n, n + 1, n + 2) if m > 0]


def edge_values() -> tuple[np.ndarray[Any, Any], np.ndarray[Any, Any]]:
    """(all test values, the subset on the microsecond grid)."""
    off_grid: list[float] = []
    grid: list[float] = []
    for k in range(KEY_MIN - 1, KEY_MAX + 2):
        for b in (MAPPING.gamma**k, math.pow(MAPPING.gamma, k), 2.0 ** (k / MULTIPLIER)):
            x = b
            for _ in range(4):
                x = math.nextafter(x, 0.0)
            for _ in range(9):
                off_grid.append(x)
                x = math.nextafter(x, math.inf)
            grid.extend(_grid_near(b))
    grid.extend(float(i) for i in range(1, 100_001))
    grid.extend(i / 1000 for i in range(1, 10_001))
    extremes = [0.0, -0.0, -1.0, 4e-4, 5e-4, 1e-300, 5e-324, 9.99e6, 1e7, 1.5e7, 1e300]
    everything = np.array(sorted({*off_grid, *grid, *extremes, math.inf, -math.inf}))
    return everything, np.array(sorted(x for x in set(grid) if x <= MAX_VALUE))


@pytest.fixture(scope="module")
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    register_quantile_functions(connection)
    register_quantile_functions(connection)  # idempotent
    yield connection
    connection.close()


def duckdb_keys(con: duckdb.DuckDBPyConnection, values: Sequence[float | None]) -> list[int | None]:
    table = pa.table({"i": np.arange(len(values)), "x": pa.array(values, pa.float64())})
    con.register("vals", table)
    try:
        column = con.sql(f"SELECT {bucket_key_sql('x')} AS k FROM vals ORDER BY i")
        return [k for (k,) in column.fetchall()]
    finally:
        con.unregister("vals")


@unit
def test_constants_are_ddsketchs() -> None:
    assert MAPPING.gamma == q_mod.GAMMA
    assert MAPPING._multiplier == q_mod.MULTIPLIER
    assert math.log(2) == q_mod.LN2
    assert 2.0 / (1 + MAPPING.gamma) == q_mod.VALUE_FACTOR
    for k in range(KEY_MIN - 5, KEY_MAX + 5):
        assert bucket_value(k) == MAPPING.value(k)
    assert bucket_value(ZERO_KEY) == 0.0


@unit
def test_keys_agree_at_bucket_edges(con: duckdb.DuckDBPyConnection) -> None:
    values, grid = edge_values()
    expected = np.array([reference_key(x) for x in values])
    assert (bucket_keys_numpy(values) == expected).all()
    assert duckdb_keys(con, values.tolist()) == expected.tolist()
    # On the microsecond grid the rounding is a no-op: plain ddsketch keys.
    assert (bucket_keys_numpy(grid) == [MAPPING.key(x) for x in grid]).all()


@unit
def test_no_microsecond_value_is_near_a_bucket_edge() -> None:
    """The proof behind the rounding: a 1-ulp ``ln`` error cannot flip any key.

    For every bucket edge in range, the two microsecond-grid values around it are at
    least 1e-11 (in key units) away from it, computed with 60-digit decimals, while a
    faithful ``ln`` (error < 1 ulp) plus the two roundings after it move the computed key
    by less than the bound below (about 3e-13).
    """
    with localcontext() as ctx:
        ctx.prec = 60
        ln2, mult = Decimal(q_mod.LN2), Decimal(MULTIPLIER)
        closest = math.inf
        for k in range(KEY_MIN, KEY_MAX + 1):
            edge = (Decimal(k) / mult * ln2).exp()
            n = int((edge * 1000).to_integral_value(rounding=ROUND_FLOOR))
            for m in (n, n + 1):
                x = m / 1000
                if m <= 0 or x > MAX_VALUE or x == 1.0:  # ln(1) is exactly 0 everywhere
                    continue
                exact = Decimal(x).ln() / ln2 * mult
                closest = min(closest, abs(float(exact - k)))
    ln_max = math.log(MAX_VALUE)
    error_bound = (
        math.ulp(ln_max) / q_mod.LN2 * MULTIPLIER  # ln off by one ulp
        + 0.5 * math.ulp(ln_max / q_mod.LN2) * MULTIPLIER  # rounding of the division
        + 0.5 * math.ulp(float(KEY_MAX))  # rounding of the product
    )
    assert error_bound < 4e-13
    assert closest > 1e-11 > 25 * error_bound


@unit
@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(st.lists(st.floats(width=64), min_size=1, max_size=40))
def test_keys_agree_on_any_double(con: duckdb.DuckDBPyConnection, values: list[float]) -> None:
    in_sql = duckdb_keys(con, values)
    finite = [x for x in values if not math.isnan(x)]
    assert [k for k in in_sql if k is not None] == bucket_keys_numpy(finite).tolist()
    assert bucket_keys_numpy(finite).tolist() == [reference_key(x) for x in finite]
    assert [k is None for k in in_sql] == [math.isnan(x) for x in values]


@unit
def test_nulls_nan_and_the_zero_bucket(con: duckdb.DuckDBPyConnection) -> None:
    assert duckdb_keys(con, [None, math.nan, 0.0, -3.0, 0.0004, 0.0005]) == [
        None,
        None,
        ZERO_KEY,
        ZERO_KEY,
        ZERO_KEY,
        KEY_MIN,
    ]
    with pytest.raises(ValueError, match="NaN"):
        bucket_keys_numpy([1.0, math.nan])
    assert histogram_from_values([None, math.nan, 0.0, -1.0, 1.0]) == ((ZERO_KEY, 2), (0, 1))
    assert histogram_from_values(pa.array([None, 2.0, 2.0])) == ((MAPPING.key(2.0), 2),)
    assert con.sql("SELECT ddsketch_key(1.0), ddsketch_key(NULL)").fetchall() == [(0, None)]


def _latencies(n: int, seed: int) -> np.ndarray[Any, Any]:
    rng = np.random.default_rng(seed)
    values = np.round(rng.lognormal(np.log(30.0), 1.2, n), 3)
    values[: n // 50] = 0.0
    values[n // 50 : n // 40] = -1.0
    values[n // 40 : n // 30] = 2e7  # clamped to MAX_VALUE
    return values


@unit
@pytest.mark.parametrize("seed", [1, 2, 3])
def test_quantiles_are_ddsketchs(seed: int) -> None:
    values = _latencies(5000, seed)
    hist = histogram_from_values(values)
    reference = DDSketch(0.01)
    for x in values:
        reference.add(max(round_us(float(x)), 0.0))
    assert sum(c for _, c in hist) == len(values)
    for q in [*np.linspace(0, 1, 101).tolist(), 0.999, 0.9999]:
        assert quantile(hist, q) == reference.get_quantile_value(q), q


@unit
def test_quantile_edge_cases() -> None:
    assert quantile((), 0.5) is None
    assert quantile(None, 0.5) is None
    assert quantile(((0, 3),), -0.1) is None
    assert quantile(((0, 3),), 1.1) is None
    assert quantile(((ZERO_KEY, 4),), 0.99) == 0.0
    assert quantile([{"key": 5, "count": 1}], 0.5) == MAPPING.value(5)
    hist = ((ZERO_KEY, 1), (3, 1), (9, 2))
    assert [quantile(hist, q) for q in (0.0, 0.34, 0.67, 1.0)] == [
        0.0,
        MAPPING.value(3),
        MAPPING.value(9),
        MAPPING.value(9),
    ]


@unit
def test_same_values_any_order_same_histogram() -> None:
    values = _latencies(3000, 4)
    shuffled = values.copy()
    np.random.default_rng(0).shuffle(shuffled)
    assert histogram_from_values(values) == histogram_from_values(shuffled.tolist())


@unit
def test_merging_is_exact() -> None:
    values = _latencies(6000, 5)
    parts = [values[:1000], values[1000:1001], values[1001:4000], values[4000:]]
    hists = [histogram_from_values(p) for p in parts]
    whole = histogram_from_values(values)
    assert merge_histograms(hists) == whole
    assert merge_histograms([None, *reversed(hists), ()]) == whole
    as_arrow = histograms_to_arrow(hists).to_pylist()  # [{"key", "count"}, ...] rows
    assert merge_histograms(as_arrow) == whole
    assert merge_histograms([]) == ()


@unit
def test_grouped_histograms(con: duckdb.DuckDBPyConnection) -> None:
    values = _latencies(20_000, 6).astype(object)
    values[::97] = None
    groups = np.random.default_rng(6).integers(0, 9, len(values))
    column = build_histograms_grouped(groups, pa.array(values.tolist(), pa.float64()), 11)
    assert column.type == HISTOGRAM_TYPE
    expected = [histogram_from_values(values[groups == g].tolist()) for g in range(11)]
    assert histograms_from_arrow(column) == expected
    assert expected[9] == expected[10] == ()
    # The same histograms from plain DuckDB SQL, and merged across rows in SQL.
    con.register("ev", pa.table({"g": groups, "x": pa.array(values.tolist(), pa.float64())}))
    by_key = f"SELECT g, {bucket_key_sql('x')} AS k, count(*) AS c FROM ev GROUP BY ALL"
    built = con.sql(
        f"SELECT g, {histogram_agg_sql('k', 'c')} AS h FROM ({by_key})"
        " WHERE k IS NOT NULL GROUP BY g ORDER BY g"
    ).fetchall()
    assert [tuple((e["key"], e["count"]) for e in h) for _, h in built] == expected[:9]
    con.register("parts", pa.table({"day": np.arange(11) % 2, "hist": column}))
    merged = con.sql(f"{merge_histograms_sql('parts', ['day'], 'hist')} ORDER BY day")
    for day, hist in merged.fetchall():
        assert tuple((e["key"], e["count"]) for e in hist) == merge_histograms(expected[day::2])


@unit
def test_sql_quantiles_match_python(con: duckdb.DuckDBPyConnection) -> None:
    rng = random.Random(8)
    hists: list[Any] = [None, (), ((ZERO_KEY, 3),)]
    hists += [histogram_from_values(_latencies(rng.randint(1, 3000), s)) for s in range(40)]
    qs = [rng.choice([0.0, 0.5, 0.9, 0.95, 0.99, 1.0, rng.random(), -0.5, 1.5]) for _ in hists]
    con.register("hq", pa.table({"i": range(len(hists)), "h": histograms_to_arrow(hists), "q": qs}))
    rows = con.sql(
        f"SELECT ddsketch_quantile(h, q), {quantile_sql('h', 'q')},"
        f" ddsketch_quantile(h, 0.95), {quantile_sql('h', 0.95)} FROM hq ORDER BY i"
    ).fetchall()
    for (udf, pure_sql, udf95, sql95), hist, q in zip(rows, hists, qs, strict=True):
        assert udf == pure_sql == quantile(hist, q)
        assert udf95 == sql95 == quantile(hist, 0.95)


@unit
def test_sql_quantile_udf_across_vector_chunks(con: duckdb.DuckDBPyConnection) -> None:
    """More rows than one DuckDB vector (2048): the UDF sees several, sliced, batches."""
    rng = np.random.default_rng(11)
    hists: list[Any] = [
        None if i % 331 == 0 else histogram_from_values(rng.lognormal(3, 1, i % 17))
        for i in range(5000)
    ]
    con.register("many", pa.table({"i": range(len(hists)), "h": histograms_to_arrow(hists)}))
    rows = con.sql("SELECT ddsketch_quantile(h, 0.9) FROM many ORDER BY i").fetchall()
    assert [v for (v,) in rows] == [quantile(h, 0.9) for h in hists]


@unit
def test_engine_bucket_lists_are_normalised(con: duckdb.DuckDBPyConnection) -> None:
    values = [1.0, 1.0, None, math.nan, 0.0, 250.5, 1.0]
    con.register("bl", pa.table({"g": [0, 0, 0, 0, 0, 0, 1], "x": pa.array(values, pa.float64())}))
    by_key = f"SELECT g, {bucket_key_sql('x')} AS b, count(x) AS qn FROM bl GROUP BY ALL"
    lists = con.sql(
        "SELECT list({'bucket': b, 'count': qn} ORDER BY b NULLS FIRST) AS h"
        f" FROM ({by_key}) GROUP BY g ORDER BY g"
    ).to_arrow_table()
    normalised = histograms_from_buckets(lists.column("h"))
    assert normalised.type == HISTOGRAM_TYPE
    assert histograms_from_arrow(normalised) == [
        histogram_from_values([v for v in values[:6] if v is not None and not math.isnan(v)]),
        histogram_from_values([1.0]),
    ]
    raw = pa.array(
        [[{"key": 5, "count": 1}, {"key": 2, "count": 2}, {"key": 5, "count": 3}], None, []],
        pa.list_(pa.struct([("key", pa.int64()), ("count", pa.int64())])),
    )
    assert histograms_from_arrow(histograms_from_buckets(raw)) == [((2, 2), (5, 4)), None, ()]


@unit
def test_arrow_round_trip() -> None:
    hists: list[Any] = [histogram_from_values(_latencies(500, 9)), None, ()]
    column = histograms_to_arrow(hists)
    assert column.type == HISTOGRAM_TYPE
    assert histograms_from_arrow(column) == hists


SPARK_PANDAS_WARNING = pytest.mark.filterwarnings("ignore:PySpark does not yet:FutureWarning")


@pytest.mark.slow
@pytest.mark.integration
@SPARK_PANDAS_WARNING
def test_spark_keys_agree_at_bucket_edges(spark: Any) -> None:
    values, _ = edge_values()
    column = pa.array([*values.tolist(), None, math.nan], pa.float64())
    df = spark.createDataFrame(pa.table({"i": np.arange(len(column)), "x": column}))
    keyed = df.selectExpr("i", f"{bucket_key_sql('x', 'spark')} AS k").orderBy("i").toArrow()
    keys = keyed.column("k").to_pylist()
    assert keys[-2:] == [None, None]
    assert keys[:-2] == bucket_keys_numpy(values).tolist()


@pytest.mark.slow
@pytest.mark.integration
@SPARK_PANDAS_WARNING
def test_spark_writes_the_same_histograms(spark: Any, tmp_path: Path) -> None:
    values = _latencies(30_000, 10).astype(object)
    values[::101] = None
    groups = np.random.default_rng(10).integers(0, 7, len(values))
    table = pa.table({"g": groups, "x": pa.array(values.tolist(), pa.float64())})
    spark.createDataFrame(table).createOrReplaceTempView("ev")
    by_key = f"SELECT g, {bucket_key_sql('x', 'spark')} AS k, count(*) AS c FROM ev GROUP BY 1, 2"
    spark.sql(
        f"SELECT g, g % 2 AS day, {histogram_agg_sql('k', 'c', 'spark')} AS hist"
        f" FROM ({by_key}) WHERE k IS NOT NULL GROUP BY g"
    ).createOrReplaceTempView("parts")
    spark.sql(merge_histograms_sql("parts", ["day"], "hist", "spark")).write.parquet(
        str(tmp_path / "merged")
    )
    spark.table("parts").write.parquet(str(tmp_path / "parts"))

    expected = build_histograms_grouped(groups, table.column("x"))
    parts = pq.read_table(tmp_path / "parts").sort_by("g")
    assert parts.column("g").to_pylist() == list(range(7))
    assert histograms_from_arrow(parts.column("hist")) == histograms_from_arrow(expected)
    merged = pq.read_table(tmp_path / "merged").sort_by("day")
    per_day = [merge_histograms(histograms_from_arrow(expected)[d::2]) for d in (0, 1)]
    assert histograms_from_arrow(merged.column("hist")) == per_day
