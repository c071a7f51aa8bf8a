"""Hourly Parquet partitions, written on one thread or several."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglambda.batch.partition_writer import (
    US_PER_HOUR,
    PartFile,
    PartitionWriter,
    master_parquet_options,
    split_by_hour,
)
from loglambda.core.schemas import TRAFFIC_SCHEMA
from tests.event_factory import traffic_events

pytestmark = pytest.mark.unit

BASE = 1_785_456_000 * 1_000_000  # 2026-07-31T00:00:00Z, on an hour boundary


def _events(hours: list[int]) -> pa.Table:
    """One event per entry, at minute i of the given hour offset."""
    table = traffic_events(len(hours))
    ts = [BASE + h * US_PER_HOUR + i * 60_000_000 for i, h in enumerate(hours)]
    ts_col = pa.array(ts, pa.timestamp("us", tz="UTC"))
    return table.set_column(0, "ts", ts_col).cast(TRAFFIC_SCHEMA)


def test_split_by_hour_keeps_input_order_within_each_hour() -> None:
    table = _events([0, 1, 0, 2, 1, 0])
    pieces = split_by_hour(table)
    assert [p.hour - BASE // US_PER_HOUR for p in pieces] == [0, 1, 2]
    lines = table.column("source_line").to_pylist()
    assert [p.table.column("source_line").to_pylist() for p in pieces] == [
        [lines[0], lines[2], lines[5]],
        [lines[1], lines[4]],
        [lines[3]],
    ]
    for p in pieces:
        ts = p.table.column("ts").cast(pa.int64()).to_pylist()
        assert (p.min_ts, p.max_ts) == (min(ts), max(ts))


def test_split_by_hour_of_one_hour_is_the_table_itself() -> None:
    table = _events([3, 3, 3])
    (piece,) = split_by_hour(table)
    assert piece.table is table
    assert split_by_hour(table.slice(0, 0)) == []


def _read_all(root: Path) -> dict[str, list[int]]:
    """source_line values per partition directory, sorted."""
    out: dict[str, list[int]] = {}
    for f in sorted(root.rglob("*.parquet")):
        key = str(f.parent.relative_to(root))
        out.setdefault(key, []).extend(pq.read_table(f).column("source_line").to_pylist())
    return {k: sorted(v) for k, v in out.items()}


@pytest.mark.parametrize("threads", [1, 2, 3])
def test_threads_write_the_same_rows_to_the_same_partitions(tmp_path: Path, threads: int) -> None:
    blocks = [_events([h % 5, (h + 1) % 5, h % 5] * 40) for h in range(12)]
    writer = PartitionWriter(tmp_path / str(threads), "batch", threads=threads)
    for block in blocks:
        writer.write("traffic", split_by_hour(block))
    parts = writer.close()
    assert sum(p.rows for p in parts) == sum(b.num_rows for b in blocks)
    assert all(p.path.is_file() and p.path.name.startswith("batch-") for p in parts)
    assert len({p.rel for p in parts}) == len(parts)
    single = PartitionWriter(tmp_path / "ref", "batch", threads=1)
    for block in blocks:
        single.write("traffic", split_by_hour(block))
    single.close()
    assert _read_all(tmp_path / str(threads)) == _read_all(tmp_path / "ref")
    # One file per partition per writer thread at most.
    per_dir: dict[Path, int] = {}
    for p in parts:
        per_dir[p.path.parent] = per_dir.get(p.path.parent, 0) + 1
    assert max(per_dir.values()) <= threads


def test_a_failing_write_surfaces_on_the_callers_thread(tmp_path: Path) -> None:
    writer = PartitionWriter(tmp_path, "batch", threads=2)
    bad = _events([0, 0]).drop_columns(["client_ip"])  # not the traffic schema
    with pytest.raises((ValueError, pa.ArrowException)):
        writer.write("traffic", split_by_hour(bad))
        writer.close()


def test_master_files_read_back_the_same_in_duckdb(tmp_path: Path) -> None:
    table = _events(list(range(3)) * 100)
    path = tmp_path / "t.parquet"
    pq.write_table(table, path, **master_parquet_options("traffic"))
    meta = pq.ParquetFile(path).metadata.row_group(0)
    cols = {meta.column(i).path_in_schema: meta.column(i) for i in range(meta.num_columns)}
    assert "DELTA_BINARY_PACKED" in cols["source_offset"].encodings
    assert cols["ts"].statistics is not None and cols["user_agent"].statistics is None
    events = table  # noqa: F841 - queried by name below
    back = duckdb.sql(
        f"SELECT count(*), sum(bytes), min(ts), max(source_line) FROM '{path}'"
    ).fetchall()
    want = duckdb.sql(
        "SELECT count(*), sum(bytes), min(ts), max(source_line) FROM events"
    ).fetchall()
    assert back == want
    assert pq.read_table(path).cast(TRAFFIC_SCHEMA).equals(table)


def test_scattered_hours_are_gathered_like_runs_are_sliced(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    table = _events([0, 0, 1, 0, 2, 2, 1, 0] * 30)
    sliced = split_by_hour(table)
    monkeypatch.setattr("loglambda.batch.partition_writer.MAX_RUNS", 1)
    gathered = split_by_hour(table)
    assert [(p.hour, p.min_ts, p.max_ts) for p in sliced] == [
        (p.hour, p.min_ts, p.max_ts) for p in gathered
    ]
    for a, b in zip(sliced, gathered, strict=True):
        assert a.table.combine_chunks().equals(b.table.combine_chunks())


def _row_groups(parts: list[PartFile]) -> dict[str, list[int]]:
    """Rows per row group, per partition directory."""
    out: dict[str, list[int]] = {}
    for p in parts:
        meta = pq.ParquetFile(p.path).metadata
        key = str(Path(p.rel).parent)
        out.setdefault(key, []).extend(
            meta.row_group(i).num_rows for i in range(meta.num_row_groups)
        )
    return out


def test_late_lines_of_an_hour_share_one_row_group(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loglambda.batch.partition_writer.SMALL_PIECE_ROWS", 10)
    # Each block: a long run of hour 1, then two stragglers from hour 0.
    blocks = [_events([1] * 40 + [0, 0]) for _ in range(5)]
    writer = PartitionWriter(tmp_path, "batch", threads=2)
    for block in blocks:
        writer.write("traffic", split_by_hour(block))
    groups = _row_groups(writer.close())
    hour0, hour1 = sorted(groups)
    assert groups[hour0] == [10]  # ten stragglers, one row group, not five
    assert sorted(groups[hour1]) == [40] * 5  # big pieces are written as they come
    assert _read_all(tmp_path) == {
        hour0: sorted(b.column("source_line")[i].as_py() for b in blocks for i in (40, 41)),
        hour1: sorted(v for b in blocks for v in b.column("source_line").to_pylist()[:40]),
    }


def test_held_rows_are_written_once_over_the_cap(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("loglambda.batch.partition_writer.HELD_ROWS_MAX", 7)
    writer = PartitionWriter(tmp_path, "batch", threads=1)
    writer.write("traffic", split_by_hour(_events([0, 1, 2])))
    assert not list(tmp_path.rglob("*.parquet"))  # held: under the cap
    writer.write("traffic", split_by_hour(_events([0, 1, 2, 3, 4])))
    assert len(list(tmp_path.rglob("*.parquet"))) == 5  # over it: every hour written
    parts = writer.close()
    assert sum(p.rows for p in parts) == 8


def test_a_held_straggler_does_not_keep_its_block_alive(tmp_path: Path) -> None:
    block = _events([1] * 50 + [0])
    pool = pa.default_memory_pool()
    writer = PartitionWriter(tmp_path, "batch", threads=1)
    writer.write("traffic", split_by_hour(block))
    before = pool.bytes_allocated()
    del block
    assert pool.bytes_allocated() < before  # the block's buffers went free
    assert sum(p.rows for p in writer.close()) == 51
