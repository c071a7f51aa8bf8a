"""HLL unique-count sketches: determinism, hashing parity with Spark, unions, DuckDB UDFs."""

from __future__ import annotations

import itertools
import random
from collections.abc import Iterator
from typing import Any

import datasketches as ds
import duckdb
import numpy as np
import pyarrow as pa
import pytest

from loglambda.core.sketches import (
    build_hll,
    build_hll_grouped,
    hll_estimate,
    hll_union,
    register_hll_functions,
)

# Not a module-wide pytestmark: the Spark tests at the end start a JVM and are marked
# slow + integration instead of unit.
unit = pytest.mark.unit

# Sizes straddling the mode changes at lg_k 12, HLL_8: LIST up to 7 items, SET from 8, HLL from 385.
SIZES = (0, 1, 7, 8, 200, 384, 385, 800, 3000, 20_000)


def _strings(n: int, prefix: str = "c") -> list[str]:
    return [f"{prefix}{i}" for i in range(n)]


def _unordered_sketch(items: list[Any]) -> bytes:
    """A sketch built the way an engine would: input order, duplicates and all."""
    sketch = ds.hll_sketch(12, ds.tgt_hll_type.HLL_8)
    for item in items:
        sketch.update(item)
    return bytes(sketch.serialize_compact())


@unit
def test_parameters_match_spark_hll_sketch_agg() -> None:
    for n in (10, 5000):
        blob = build_hll(_strings(n))
        sketch = ds.hll_sketch.deserialize(blob)
        assert sketch.lg_config_k == 12
        assert sketch.tgt_type == ds.tgt_hll_type.HLL_8
        assert blob == bytes(sketch.serialize_compact())


@unit
@pytest.mark.parametrize("n", SIZES)
def test_same_set_gives_identical_bytes_whatever_the_order(n: int) -> None:
    items = _strings(n)
    shuffled = [*items, *items[: n // 2]]
    random.Random(n).shuffle(shuffled)
    expected = build_hll(items)
    assert build_hll(shuffled) == expected
    assert build_hll(pa.array(shuffled)) == expected
    assert build_hll(pa.chunked_array([shuffled[: n // 3], shuffled[n // 3 :]], pa.string())) == (
        expected
    )
    assert build_hll(pa.array(shuffled, pa.large_string())) == expected
    assert build_hll(pa.array(shuffled).dictionary_encode()) == expected


@unit
def test_nulls_are_ignored_and_empty_is_an_empty_sketch() -> None:
    empty = build_hll([])
    assert ds.hll_sketch.deserialize(empty).is_empty()
    assert build_hll([None, None]) == empty
    assert build_hll(pa.array([None], pa.string())) == empty
    assert build_hll(["a", None, "b"]) == build_hll(["b", "a"])
    # The sketch itself ignores empty strings, as Spark's hll_sketch_agg does.
    assert build_hll(["a", ""]) == build_hll(["a"])
    assert hll_estimate(empty) == 0.0
    assert hll_estimate(None) == 0.0


@unit
def test_integers_hash_as_int64_whatever_their_arrow_width() -> None:
    values = [0, 1, 7, 120]
    expected = _unordered_sketch(values)
    for t in (pa.int8(), pa.int16(), pa.int32(), pa.int64(), pa.uint8(), pa.uint64()):
        assert build_hll(pa.array(values, t)) == expected, t
    assert build_hll([2**63 - 1, -(2**63)]) == _unordered_sketch([-(2**63), 2**63 - 1])


@unit
def test_items_that_would_hash_differently_from_spark_are_refused() -> None:
    # Beyond int64 the binding would silently fall back to hashing a float.
    with pytest.raises(pa.ArrowInvalid):
        build_hll(pa.array([2**64 - 1], pa.uint64()))
    with pytest.raises(TypeError):
        build_hll([1.5, 2.5])
    with pytest.raises(TypeError):
        build_hll(pa.array([b"\x00"], pa.binary()))


@unit
@pytest.mark.parametrize("n", [10, 5_000, 100_000])
def test_estimate_is_within_the_sketch_error(n: int) -> None:
    estimate = hll_estimate(build_hll(_strings(n)))
    # lg_k 12: RSE 1.6 %; 3 sigma.
    assert abs(estimate - n) <= 0.05 * n


@unit
@pytest.mark.parametrize("n", [50, 3000, 50_000])
def test_estimate_does_not_depend_on_insertion_order(n: int) -> None:
    items = _strings(n)
    shuffled = items[:]
    random.Random(1).shuffle(shuffled)
    ours = build_hll(items)
    engine_built = _unordered_sketch(shuffled + items[: n // 4])
    assert hll_estimate(engine_built) == hll_estimate(ours)


@unit
def test_grouped_equals_one_sketch_per_group() -> None:
    rng = np.random.default_rng(5)
    n = 30_000
    groups = rng.integers(0, 6, n)
    items = pa.array([f"ip{v}" if v % 97 else None for v in rng.integers(0, 5000, n)])
    sketches = build_hll_grouped(groups, items, num_groups=8)
    assert len(sketches) == 8
    pylist = items.to_pylist()
    for g in range(8):
        mine = [pylist[i] for i in np.flatnonzero(groups == g)]
        assert sketches[g] == build_hll(mine), g
    assert sketches[6] == sketches[7] == build_hll([])


@unit
def test_grouped_with_integer_items_and_inferred_group_count() -> None:
    groups = np.array([2, 0, 2, 2])
    sketches = build_hll_grouped(groups, pa.array([5, 6, 5, None]))
    assert sketches == [build_hll([6]), build_hll([]), build_hll([5])]


@unit
def test_grouped_rejects_bad_group_ids() -> None:
    with pytest.raises(ValueError, match="shape"):
        build_hll_grouped(np.array([0, 1]), pa.array(["a"]))
    with pytest.raises(ValueError, match=">= 0"):
        build_hll_grouped(np.array([-1]), pa.array(["a"]))
    with pytest.raises(ValueError, match="num_groups"):
        build_hll_grouped(np.array([3]), pa.array(["a"]), num_groups=2)


def _splits(items: list[str], parts: int, seed: int) -> list[list[str]]:
    rng = random.Random(seed)
    shuffled = items[:]
    rng.shuffle(shuffled)
    chunks = [shuffled[i::parts] for i in range(parts)]
    chunks[0] += shuffled[: len(items) // 3]  # overlapping parts, like late duplicates
    return chunks


@unit
@pytest.mark.parametrize("n", SIZES)
def test_union_bytes_do_not_depend_on_input_order(n: int) -> None:
    sketches = [build_hll(c) for c in _splits(_strings(n), 4, n)]
    results = {hll_union(p) for p in itertools.islice(itertools.permutations(sketches), 24)}
    assert len(results) == 1


@unit
@pytest.mark.parametrize("n", SIZES)
def test_union_of_parts_reads_exactly_as_the_whole(n: int) -> None:
    whole = build_hll(_strings(n))
    merged = hll_union([None, *(build_hll(c) for c in _splits(_strings(n), 3, n)), None])
    assert hll_estimate(merged) == hll_estimate(whole)
    parsed = ds.hll_sketch.deserialize(merged)
    assert (parsed.lg_config_k, parsed.tgt_type) == (12, ds.tgt_hll_type.HLL_8)


@unit
def test_union_of_nothing_is_the_empty_sketch() -> None:
    assert hll_union([]) == build_hll([])
    assert hll_union([None]) == build_hll([])
    assert hll_union([build_hll(["x"])]) == build_hll(["x"])


@pytest.fixture
def con() -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect()
    register_hll_functions(connection)
    register_hll_functions(connection)  # idempotent
    yield connection
    connection.close()


@unit
def test_duckdb_functions_merge_across_rows(con: duckdb.DuckDBPyConnection) -> None:
    rng = np.random.default_rng(9)
    groups = rng.integers(0, 40, 20_000)
    items = pa.array([f"u{v}" for v in rng.integers(0, 8000, 20_000)])
    sketches = build_hll_grouped(groups, items)
    table = pa.table(
        {"i": np.arange(40), "day": np.arange(40) % 3, "s": pa.array(sketches, pa.binary())}
    )
    con.register("partials", table)
    rows = con.sql(
        "SELECT day, hll_union_list(list(s)) AS u, hll_estimate(hll_union_list(list(s))) AS e"
        " FROM partials GROUP BY day ORDER BY day"
    ).fetchall()
    pylist = items.to_pylist()
    for day, merged, estimate in rows:
        members = [pylist[i] for i in np.flatnonzero(np.isin(groups, np.arange(day, 40, 3)))]
        assert merged == hll_union(s for i, s in enumerate(sketches) if i % 3 == day)
        assert estimate == hll_estimate(build_hll(members))
    single = con.sql("SELECT hll_estimate(s) FROM partials ORDER BY i").fetchall()
    assert [e for (e,) in single] == [hll_estimate(s) for s in sketches]


@unit
def test_duckdb_functions_handle_nulls(con: duckdb.DuckDBPyConnection) -> None:
    s = build_hll(["a", "b"])
    row = con.execute(
        "SELECT hll_estimate(NULL::BLOB), hll_union_list(NULL::BLOB[]),"
        " hll_estimate(hll_union_list([NULL::BLOB, ?, NULL])),"
        " hll_estimate(hll_union_list([]::BLOB[]))",
        [s],
    ).fetchone()
    assert row == (None, None, hll_estimate(s), 0.0)


# pyspark warns about pandas 3 on every createDataFrame; no pandas is involved here.
SPARK_PANDAS_WARNING = pytest.mark.filterwarnings("ignore:PySpark does not yet:FutureWarning")


def _spark_sketch(spark: Any, column: pa.Array, partitions: int = 1) -> bytes:
    df = spark.createDataFrame(pa.table({"x": column}))
    if partitions > 1:
        df = df.repartition(partitions)
    return bytes(df.selectExpr("hll_sketch_agg(x, 12) AS s").collect()[0]["s"])


UNICODE = ["é", "日本語", "emoji-😀", "ascii", "ß", "x" * 300]
ITEM_SETS = {
    "strings": (pa.string(), sorted(_strings(5000, "10.0.") + UNICODE)),
    "int64": (pa.int64(), [-(2**63), -5, 0, 1, 42, *range(10_000, 15_000), 2**63 - 1]),
    "int32": (pa.int32(), [-(2**31), -1, 0, 7, *range(100, 2000), 2**31 - 1]),
    "small": (pa.string(), ["a", "b", "c"]),
}


@pytest.mark.slow
@pytest.mark.integration
@SPARK_PANDAS_WARNING
@pytest.mark.parametrize("name", sorted(ITEM_SETS))
def test_spark_builds_the_same_sketch(spark: Any, name: str) -> None:
    arrow_type, items = ITEM_SETS[name]
    ours = build_hll(items)
    # Sorted distinct items in one partition: Spark performs the very same updates.
    spark_bytes = _spark_sketch(spark, pa.array(items, arrow_type))
    spark_sketch = ds.hll_sketch.deserialize(spark_bytes)
    assert spark_sketch.get_estimate() == ds.hll_sketch.deserialize(ours).get_estimate()
    assert bytes(spark_sketch.serialize_compact()) == ours
    # Any order and partitioning: the registers agree, so the read-out agrees exactly.
    shuffled = items[:]
    random.Random(3).shuffle(shuffled)
    spark_any = _spark_sketch(spark, pa.array(shuffled + shuffled[:100], arrow_type), 3)
    assert hll_estimate(spark_any) == hll_estimate(ours)
    # Unions across engines: same set stays the same, disjoint sets add up.
    assert hll_estimate(hll_union([spark_any, ours])) == hll_estimate(ours)
    other = build_hll([f"other-{i}" for i in range(len(items))])
    both = hll_estimate(hll_union([spark_bytes, other]))
    assert abs(both - 2 * len(items)) <= 0.05 * 2 * len(items)


@pytest.mark.slow
@pytest.mark.integration
@SPARK_PANDAS_WARNING
def test_spark_reads_our_sketches(spark: Any) -> None:
    ours = build_hll(_strings(4000))
    rows = spark.createDataFrame(pa.table({"s": pa.array([ours], pa.binary())})).selectExpr(
        "hll_sketch_estimate(s) AS e", "hll_sketch_estimate(hll_union(s, s)) AS u"
    )
    row = rows.collect()[0]
    assert row["e"] == round(ds.hll_sketch.deserialize(ours).get_estimate())
    assert row["u"] == round(hll_estimate(ours))
