"""The speed layer's Beam transform against the batch engine, view by view.

``run_slice`` (a bounded Beam run on one reused FnApiRunner, events cut into chunks and
merged per view and window) must give exactly what ``DuckDBEngine`` gives over the same
events: same rows, same bytes, HLL sketches included, for every standard view. And the
partials of consecutive slices of the event log, merged as serving merges them, must
read like the whole.
"""

from __future__ import annotations

import io
import logging
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.batch.importer import import_file
from loglambda.batch.master import MasterDataset
from loglambda.core.catalog import STANDARD_CATALOG, CatalogError, Measure, View
from loglambda.core.generate import main_generate
from loglambda.core.partials import merge_partials
from loglambda.core.schemas import Kind
from loglambda.core.sketches import hll_estimate

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def master(tmp_path_factory: pytest.TempPathFactory) -> dict[Kind, list[Path]]:
    """Generated traffic and app logs over two days, imported into a master dataset."""
    tmp = tmp_path_factory.mktemp("speed")
    traffic, logs = tmp / "access.log", tmp / "app.log"
    main_generate("traffic", 5_000, traffic, 21, "nginx_json", 2, None, 0.0, 0.0)
    main_generate("logs", 2_000, logs, 21, "json", 2, None, 0.0, 0.0)
    store = MasterDataset(tmp / "home")
    for path in (traffic, logs):
        import_file(store, path)
    snapshot = store.snapshot()
    return {"traffic": snapshot.files("traffic"), "logs": snapshot.files("logs")}


@pytest.fixture(scope="module")
def events(master: dict[Kind, list[Path]]) -> dict[Kind, pa.Table]:
    return {
        kind: pq.ParquetDataset([str(p) for p in files], partitioning=None).read()
        for kind, files in master.items()
    }


@pytest.fixture(scope="module")
def batch(master: dict[Kind, list[Path]]) -> dict[str, pa.Table]:
    with DuckDBEngine() as engine:
        return engine.compute_all(STANDARD_CATALOG, master)


@pytest.fixture(scope="module")
def runner() -> Any:
    """One FnApiRunner for the module, reused by every run as the local driver does."""
    logging.basicConfig(force=True)  # importing Beam logs a warning on the root logger
    from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

    return FnApiRunner()


def _bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_compute_arrow_is_compute_over_files(
    events: dict[Kind, pa.Table], batch: dict[str, pa.Table]
) -> None:
    with DuckDBEngine() as engine:
        arrow = engine.compute_arrow(STANDARD_CATALOG, events)
    for name, table in batch.items():
        assert _bytes(arrow[name]) == _bytes(table), name


@pytest.mark.parametrize("chunk_rows", [700, 250_000], ids=["8-chunks", "1-chunk"])
def test_run_slice_is_the_batch_engine_byte_for_byte(
    runner: Any, events: dict[Kind, pa.Table], batch: dict[str, pa.Table], chunk_rows: int
) -> None:
    from loglambda.speed.transform import run_slice

    # 5,000 traffic events in chunks of 700: eight chunks, merged in the Beam combine
    # (items carried, sketches built at the end); in one chunk, the engine's sketches.
    # Shuffled (a fixed permutation), so that nearly every key has rows in every chunk.
    shuffled = {
        kind: table.take(pa.array([i * 7_919 % table.num_rows for i in range(table.num_rows)]))
        for kind, table in events.items()
    }
    got = run_slice(runner, STANDARD_CATALOG, shuffled, chunk_rows=chunk_rows)
    assert set(got) == set(STANDARD_CATALOG)
    for name, want in batch.items():
        assert want.num_rows > 0
        assert got[name].schema == want.schema, name
        assert got[name].equals(want), name
        assert _bytes(got[name]) == _bytes(want), name
        assert all(col.num_chunks == 1 for col in got[name].columns), name


def test_partials_of_consecutive_slices_merge_to_the_whole(
    runner: Any, events: dict[Kind, pa.Table], batch: dict[str, pa.Table]
) -> None:
    """What the driver stores per offset range and serving merges: exact but for HLL
    bytes (a union), which must read the same estimate."""
    from loglambda.speed.transform import BeamSliceEngine

    engine = BeamSliceEngine(STANDARD_CATALOG, runner=runner, chunk_rows=1_500)
    parts: dict[str, list[pa.Table]] = {name: [] for name in STANDARD_CATALOG}
    for kind, table in events.items():
        for start, end in ((0, 1), (1, 1_234), (1_234, table.num_rows)):
            for name, rows in engine.compute(kind, table.slice(start, end - start)).items():
                assert STANDARD_CATALOG[name].kind == kind
                parts[name].append(rows)
    for name, want in batch.items():
        merged = merge_partials(STANDARD_CATALOG[name], parts[name])
        assert merged.schema == want.schema
        for field in want.schema:
            a, b = merged.column(field.name), want.column(field.name)
            if field.type == pa.binary():
                assert [hll_estimate(x) for x in a.to_pylist()] == [
                    hll_estimate(x) for x in b.to_pylist()
                ], (name, field.name)
            else:
                assert a.equals(b), (name, field.name)


def test_an_empty_slice_gives_empty_views_of_its_kind(runner: Any) -> None:
    from loglambda.core.schemas import LOGS_SCHEMA
    from loglambda.speed.transform import run_slice

    got = run_slice(runner, STANDARD_CATALOG, LOGS_SCHEMA.empty_table())
    assert list(got) == ["log_records_minute"]
    assert got["log_records_minute"].num_rows == 0


def test_events_of_no_known_kind_are_refused(runner: Any) -> None:
    from loglambda.speed.transform import run_slice

    with pytest.raises(CatalogError, match="no known kind"):
        run_slice(runner, STANDARD_CATALOG, pa.table({"ts": [1], "what": ["?"]}))


def test_an_unsupported_view_fails_loudly_naming_view_and_measure() -> None:
    from loglambda.speed.transform import ViewPartials

    bad = View("probe", "traffic", "day", (), (Measure("p", "median", "latency_ms"),))  # type: ignore[arg-type]
    with pytest.raises(CatalogError, match=r"view 'probe', measure 'p'.*'median'"):
        ViewPartials([bad])


def test_view_partials_in_a_pipeline_of_record_batches(
    runner: Any, events: dict[Kind, pa.Table], batch: dict[str, pa.Table]
) -> None:
    """The PTransform on its own: record batches in, one element per view and day out."""
    import apache_beam as beam
    from apache_beam.testing.util import assert_that

    from loglambda.speed.transform import ViewPartials

    views = [STANDARD_CATALOG[n] for n in ("hosts", "traffic_hour", "log_records_minute")]
    batches = [b for table in events.values() for b in table.to_batches(max_chunksize=1_800)]
    assert len(batches) > 2

    def check(elements: list[tuple[tuple[str, int | None], pa.Table]]) -> None:
        for view in views:
            mine = sorted((key[1], t) for key, t in elements if key[0] == view.name)
            days = [day for day, _ in mine]
            assert len(set(days)) == len(days) >= 2, (view.name, days)  # two days of events
            got = pa.concat_tables([t for _, t in mine]).combine_chunks()
            assert got.equals(batch[view.name]), view.name

    with beam.Pipeline(runner=runner) as pipeline:
        out = pipeline | beam.Create(batches) | ViewPartials(views)
        assert_that(out, check)
