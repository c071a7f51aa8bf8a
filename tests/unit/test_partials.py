"""The merge of partial view rows (``core.partials``) against computing over the whole.

Events are split into interleaved parts (so nearly every key has rows in several parts),
each part is written to Parquet and computed by the DuckDB engine, and the merge of the
parts must be the computation over all events: exactly, sketches included, in the items
form; in the sketch form exactly but for HLL bytes, which must read the same estimate.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.batch.importer import import_file
from loglambda.batch.master import MasterDataset
from loglambda.core.catalog import STANDARD_CATALOG, CatalogError, View, output_schema
from loglambda.core.generate import main_generate
from loglambda.core.partials import merge_partials, partial_schema, sketch_items
from loglambda.core.schemas import Kind
from loglambda.core.sketches import hll_estimate

pytestmark = pytest.mark.unit

Tables = dict[str, pa.Table]


@pytest.fixture(scope="module")
def events(tmp_path_factory: pytest.TempPathFactory) -> dict[Kind, pa.Table]:
    tmp = tmp_path_factory.mktemp("partials")
    traffic, logs = tmp / "access.log", tmp / "app.log"
    main_generate("traffic", 4_000, traffic, 11, "combined", 2, None, 0.0, 0.0)
    main_generate("logs", 1_500, logs, 11, "json", 2, None, 0.0, 0.0)
    master = MasterDataset(tmp / "home")
    for path in (traffic, logs):
        import_file(master, path)
    snapshot = master.snapshot()
    return {
        kind: pq.ParquetDataset([str(p) for p in snapshot.files(kind)], partitioning=None).read()
        for kind in ("traffic", "logs")
    }


def _parts(events: dict[Kind, pa.Table], n: int) -> list[dict[Kind, pa.Table]]:
    """``n`` interleaved parts: row i goes to part i mod n."""
    out: list[dict[Kind, pa.Table]] = [{} for _ in range(n)]
    for kind, table in events.items():
        for i in range(n):
            out[i][kind] = table.take(pa.array(range(i, table.num_rows, n)))
    return out


def _compute(tmp: Path, name: str, events: dict[Kind, pa.Table], items: bool) -> Tables:
    files = {}
    for kind, table in events.items():
        path = tmp / f"{name}-{kind}.parquet"
        pq.write_table(table, path)
        files[kind] = [path]
    with DuckDBEngine() as engine:
        return engine.compute_all(STANDARD_CATALOG, files, items=items)


@pytest.fixture(scope="module")
def computed(
    events: dict[Kind, pa.Table], tmp_path_factory: pytest.TempPathFactory
) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("computed")
    parts = _parts(events, 3)
    return {
        "whole": _compute(tmp, "whole", events, items=False),
        "sketches": [_compute(tmp, f"p{i}", p, items=False) for i, p in enumerate(parts)],
        "items": [_compute(tmp, f"i{i}", p, items=True) for i, p in enumerate(parts)],
    }


def _same_estimates(view: View, got: pa.Table, want: pa.Table) -> None:
    """Equal tables, but HLL columns compared by the estimate they read."""
    assert got.schema == want.schema
    for field in want.schema:
        a, b = got.column(field.name), want.column(field.name)
        if field.type == pa.binary():
            assert [hll_estimate(x) for x in a.to_pylist()] == [
                hll_estimate(x) for x in b.to_pylist()
            ], (view.name, field.name)
        else:
            assert a.equals(b), (view.name, field.name)


@pytest.mark.parametrize("name", list(STANDARD_CATALOG))
def test_merged_items_are_the_whole_byte_for_byte(name: str, computed: dict[str, Any]) -> None:
    view = STANDARD_CATALOG[name]
    parts = [p[name] for p in computed["items"]]
    assert all(p.schema == partial_schema(view, items=True) for p in parts)
    merged = sketch_items(view, merge_partials(view, parts, items=True))
    want = computed["whole"][name]
    assert merged.equals(want)
    assert merged.schema == output_schema(view)
    assert all(col.num_chunks == 1 for col in merged.columns)


@pytest.mark.parametrize("name", list(STANDARD_CATALOG))
def test_merged_sketches_read_as_the_whole(name: str, computed: dict[str, Any]) -> None:
    view = STANDARD_CATALOG[name]
    parts = [p[name] for p in computed["sketches"]]
    merged = merge_partials(view, parts)
    _same_estimates(view, merged, computed["whole"][name])
    # Partials of disjoint events share keys: the merge really re-aggregated.
    assert merged.num_rows < sum(p.num_rows for p in parts)


@pytest.mark.parametrize("name", ["traffic_minute", "visitors_day", "requests"])
def test_merge_is_associative_and_commutative(name: str, computed: dict[str, Any]) -> None:
    view = STANDARD_CATALOG[name]
    a, b, c = (p[name] for p in computed["items"])
    flat = merge_partials(view, [a, b, c], items=True)
    left = merge_partials(view, [merge_partials(view, [a, b], items=True), c], items=True)
    right = merge_partials(view, [a, merge_partials(view, [c, b], items=True)], items=True)
    assert flat.equals(left) and flat.equals(right)
    # Sketch form: unions of different groupings read alike; reordering is byte-exact.
    a, b, c = (p[name] for p in computed["sketches"])
    flat = merge_partials(view, [a, b, c])
    _same_estimates(view, merge_partials(view, [merge_partials(view, [a, b]), c]), flat)
    _same_estimates(view, merge_partials(view, [a, merge_partials(view, [b, c])]), flat)
    assert merge_partials(view, [c, a, b]).equals(flat)


def test_empty_inputs(computed: dict[str, Any]) -> None:
    for name, view in STANDARD_CATALOG.items():
        for items in (False, True):
            schema = partial_schema(view, items=items)
            empty = merge_partials(view, [], items=items)
            assert empty.num_rows == 0 and empty.schema == schema
            assert merge_partials(view, [schema.empty_table()] * 2, items=items).num_rows == 0
        one = computed["sketches"][0][name]
        assert merge_partials(view, [one.slice(0, 0), one]).equals(one)
        assert merge_partials(view, [one]).equals(one)


def _traffic(rows: list[dict[str, Any]]) -> pa.Table:
    from loglambda.core.schemas import TRAFFIC_SCHEMA

    base = {
        "host": "a.example", "client_ip": "10.0.0.1", "method": "GET", "path": "/x",
        "query": None, "protocol": "HTTP/1.1", "status": 200, "bytes": 10,
        "latency_ms": None, "referrer": None, "user_agent": "curl/8",
        "source": "t", "source_line": 1, "source_offset": 0,
    }  # fmt: skip
    return pa.Table.from_pylist([{**base, **r} for r in rows], schema=TRAFFIC_SCHEMA)


def test_nulls_as_the_catalog_defines_them() -> None:
    """Sum/min/max of nothing stay NULL through a merge, counts 0, histograms empty."""
    view = STANDARD_CATALOG["traffic_minute"]
    ts = pa.scalar(1_700_000_000_000_000, pa.timestamp("us", tz="UTC")).as_py()
    with DuckDBEngine() as engine:
        none = engine.compute_arrow([view], {"traffic": _traffic([{"ts": ts}])})[view.name]
        some = engine.compute_arrow([view], {"traffic": _traffic([{"ts": ts, "latency_ms": 2.5}])})[
            view.name
        ]
    row = merge_partials(view, [none, none]).to_pylist()[0]
    assert row["requests"] == 2 and row["latency_count"] == 0
    assert row["latency_sum_us"] is None and row["latency_min"] is None
    assert row["latency_max"] is None and row["latency"] == []
    row = merge_partials(view, [none, some]).to_pylist()[0]
    assert row["requests"] == 2 and row["latency_count"] == 1
    assert (row["latency_sum_us"], row["latency_min"], row["latency_max"]) == (2500, 2.5, 2.5)
    assert sum(e["count"] for e in row["latency"]) == 1


def test_a_partial_of_the_wrong_shape_names_the_view(computed: dict[str, Any]) -> None:
    view = STANDARD_CATALOG["hosts"]
    wrong = computed["sketches"][0]["browsers"]
    with pytest.raises(CatalogError, match="view 'hosts'"):
        merge_partials(view, [wrong])
