"""The batch-view version store and the recompute loop, with a fake engine.

What must hold: readers only ever see a whole version (CURRENT is swapped atomically,
even while another thread publishes), version numbers never repeat, retention never
deletes the served version or files a kept version still references, and a crashed
run changes nothing readers see and is cleaned up by the next one.
"""

from __future__ import annotations

import json
import os
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglambda.batch import versions
from loglambda.batch.master import DataFile, ManifestEntry, MasterDataset, Snapshot
from loglambda.batch.recompute import ViewProgress, horizon_of, run_batch
from loglambda.batch.versions import (
    Horizon,
    StoreBusyError,
    VersionError,
    VersionRecord,
    VersionStore,
    open_view,
)

pytestmark = pytest.mark.unit

TS = pa.timestamp("us", tz="UTC")


def _table(n: int, value: int = 0) -> pa.Table:
    return pa.table(
        {
            "ts": pa.array([1_700_000_000_000_000 + i for i in range(n)], TS),
            "value": pa.array([value] * n, pa.int64()),
        }
    )


def _publish(store: VersionStore, rows: dict[str, int], seq: int = 1) -> VersionRecord:
    pending = store.begin()
    for name, n in rows.items():
        pending.write_view(name, _table(n, pending.number))
    return store.publish(pending, horizon=Horizon(seq), engine="test", duration_s=0.5)


def test_publish_then_current_and_list(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    assert store.current() is None and store.list() == []
    record = _publish(store, {"hits": 3, "visitors": 0})
    assert record.version == 1 and record.rows == 3
    assert store.current() == record and store.list() == [record]
    root = tmp_path / "views"
    assert (root / "hits" / "v=1" / "part-0.parquet").is_file()
    assert (root / "CURRENT").read_bytes() == (root / "versions" / "1.json").read_bytes()
    saved = json.loads((root / "CURRENT").read_text())
    assert saved["horizon"] == {"master_seq": 1, "offsets": {}} and saved["master_seq"] == 1
    assert saved["views"]["hits"]["files"] == ["hits/v=1/part-0.parquet"]
    assert open_view(tmp_path, "hits") == [root / "hits" / "v=1" / "part-0.parquet"]
    assert pq.read_table(open_view(tmp_path, "visitors")[0]).num_rows == 0
    assert not any((root / "_tmp").iterdir())


def test_parquet_is_int64_micros_utc_and_zstd(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    pending = store.begin()
    nanos = pa.table({"ts": pa.array([1_700_000_000_000_000_000], pa.timestamp("ns", tz="UTC"))})
    pending.write_view("hits", nanos)
    store.publish(pending, horizon=Horizon(0), engine="test", duration_s=0)
    meta = pq.ParquetFile(open_view(tmp_path, "hits")[0]).metadata
    column = meta.row_group(0).column(0)
    assert column.physical_type == "INT64" and column.compression == "ZSTD"
    assert "isAdjustedToUTC=true" in str(meta.schema.column(0).logical_type)
    assert "MICROS" in str(meta.schema.column(0).logical_type).upper()


def test_reader_errors_are_clear(tmp_path: Path) -> None:
    with pytest.raises(VersionError, match="batch run"):
        open_view(tmp_path, "hits")
    _publish(VersionStore(tmp_path), {"hits": 1})
    with pytest.raises(VersionError, match=r"no view 'nope'.*\['hits'\]"):
        open_view(tmp_path, "nope")
    with pytest.raises(VersionError, match="invalid view name"):
        VersionStore(tmp_path).begin().write_view("versions", _table(1))


def test_rollback_walks_back_and_stops_at_the_oldest(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    for seq in (1, 2, 3):
        _publish(store, {"hits": seq}, seq=seq)
    assert store.rollback().version == 2
    assert store.current() is not None and store.current().version == 2  # type: ignore[union-attr]
    assert store.rollback().version == 1
    with pytest.raises(VersionError, match=r"version 1 is the oldest kept version \(kept: 1, 2, 3"):
        store.rollback()
    assert store.current().version == 1  # type: ignore[union-attr]
    with pytest.raises(VersionError, match="no published version"):
        VersionStore(tmp_path / "empty").rollback()


def test_numbers_are_never_reused_after_rollback(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    _publish(store, {"hits": 1})
    _publish(store, {"hits": 2})
    store.rollback()
    again = _publish(store, {"hits": 3})
    assert again.version == 3
    assert [r.version for r in store.list()] == [1, 2, 3]


def test_prune_keeps_the_newest(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    for _ in range(5):
        _publish(store, {"hits": 1})
    assert store.prune(2) == [1, 2, 3]
    assert [r.version for r in store.list()] == [4, 5]
    assert sorted(p.name for p in (tmp_path / "views" / "hits").iterdir()) == ["v=4", "v=5"]
    assert store.prune(2) == []
    with pytest.raises(VersionError, match="at least 1"):
        store.prune(0)


def test_prune_never_deletes_current(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    for _ in range(4):
        _publish(store, {"hits": 1})
    store.rollback()
    store.rollback()  # CURRENT is version 2
    assert store.prune(1) == [1, 3]
    assert [r.version for r in store.list()] == [2, 4]
    assert store.current().version == 2  # type: ignore[union-attr]
    assert open_view(tmp_path, "hits")[0].is_file()
    assert _publish(store, {"hits": 1}).version == 5


def test_prune_keeps_files_a_kept_version_carries_over(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    first = _publish(store, {"hits": 2, "visitors": 3})
    pending = store.begin()
    pending.write_view("hits", _table(4))
    pending.carry_over("visitors", first.views["visitors"])
    second = store.publish(pending, horizon=Horizon(1), engine="test", duration_s=0)
    assert second.views["visitors"].files == ("visitors/v=1/part-0.parquet",)
    assert second.views["visitors"].built_in == 1
    assert store.prune(1) == [1]
    root = tmp_path / "views"
    assert not (root / "hits" / "v=1").exists()
    assert pq.read_table(open_view(tmp_path, "visitors")[0]).num_rows == 3


def test_crashed_runs_leave_current_alone_and_are_cleaned(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = VersionStore(tmp_path)
    published = _publish(store, {"hits": 1})
    root = tmp_path / "views"
    # Crash 1: views moved into place, but the process died before writing the record.
    monkeypatch.setattr(versions, "_write_atomic", _boom)
    with pytest.raises(RuntimeError, match="power cut"):
        _publish(VersionStore(tmp_path), {"hits": 9})
    monkeypatch.undo()
    assert (root / "hits" / "v=2").is_dir()
    assert store.current() == published and store.list() == [published]
    # Crash 2: the next run cleans crash 1, then dies while its output is under _tmp.
    crashed = VersionStore(tmp_path).begin()
    assert crashed.number == 3
    assert crashed.cleaned == [
        f"removed temp output of an unfinished run: 2-{os.getpid()}",
        "removed unreferenced view files hits/v=2",
    ]
    crashed.write_view("hits", _table(7))
    assert open_view(tmp_path, "hits")[0].parent.name == "v=1"

    fresh = VersionStore(tmp_path).begin()
    assert fresh.number == 4  # above every crashed number too
    assert fresh.cleaned == [f"removed temp output of an unfinished run: {crashed.tmp.name}"]
    assert [p.name for p in (root / "_tmp").iterdir()] == [fresh.tmp.name]
    assert sorted(p.name for p in (root / "hits").iterdir()) == ["v=1"]
    assert store.current() == published


def _boom(*_: Any, **__: Any) -> None:
    raise RuntimeError("power cut")


def test_one_writer_at_a_time(tmp_path: Path) -> None:
    holder = VersionStore(tmp_path)
    with holder.lock():
        _publish(holder, {"hits": 1})  # re-entrant for the holder
        with pytest.raises(StoreBusyError, match="locked"):
            VersionStore(tmp_path).prune(1)
    assert VersionStore(tmp_path).prune(1) == []


def test_readers_see_whole_versions_while_publishing(tmp_path: Path) -> None:
    store = VersionStore(tmp_path)
    names = ("hits", "bytes", "visitors")
    _publish(store, dict.fromkeys(names, 1))
    done = threading.Event()
    errors: list[BaseException] = []

    def publisher() -> None:
        try:
            for _ in range(40):
                number = max(r.version for r in store.list()) + 1
                _publish(store, dict.fromkeys(names, number))
        except BaseException as err:
            errors.append(err)
        finally:
            done.set()

    seen: list[int] = []

    def read_once() -> None:
        record = VersionStore(tmp_path).current()
        assert record is not None
        for name in names:
            (path,) = VersionStore(tmp_path).paths(record, name)
            values = pq.read_table(path).column("value").to_pylist()
            # Every file of the record belongs to the record's version, and is whole.
            assert values == [record.version] * record.version == [record.version] * len(values)
        seen.append(record.version)

    thread = threading.Thread(target=publisher)
    thread.start()
    while not done.is_set() and len(seen) < 100_000:
        read_once()
    thread.join()
    read_once()
    assert not errors
    assert seen == sorted(seen) and seen[-1] == 41


@dataclass(frozen=True)
class FakeView:
    name: str
    kind: str = "traffic"


@dataclass
class FakeEngine:
    """Rows = number of master files it was given; can fail after N views."""

    fail_after: int | None = None
    calls: list[tuple[str, int]] = field(default_factory=list)
    name: str = "fake"

    def compute(self, view: Any, files: list[Path]) -> pa.Table:
        if self.fail_after is not None and len(self.calls) >= self.fail_after:
            raise RuntimeError("engine crashed")
        self.calls.append((view.name, len(files)))
        return _table(len(files))

    def compute_all(self, views: Any, files_by_kind: Any) -> dict[str, pa.Table]:
        return {v.name: self.compute(v, files_by_kind[v.kind]) for v in views}


CATALOG = {n: FakeView(n) for n in ("hits", "visitors", "levels")} | {
    "levels": FakeView("levels", "logs")
}


def _commit(home: Path, seq: int, origin: dict[str, Any] | None = None) -> None:
    f = DataFile(f"traffic/date=2026-11-01/hour=00/b{seq}.parquet", "traffic", 1, 0, 0)
    entry = ManifestEntry(seq, f"b{seq}", 0.0, origin or {"type": "import"}, (f,), 1, 1, 0, None)
    manifest = MasterDataset(home).manifest_dir
    manifest.mkdir(parents=True, exist_ok=True)
    (manifest / f"{seq:010d}.json").write_text(json.dumps(entry.to_json()))


def test_run_batch_full_then_repair_then_refresh(tmp_path: Path) -> None:
    _commit(tmp_path, 1)
    progress: list[ViewProgress] = []
    engine = FakeEngine()
    first = run_batch(tmp_path, engine, catalog=CATALOG, on_progress=progress.append)
    assert (first.version, first.horizon, first.engine) == (1, Horizon(1), "fake")
    assert list(first.views) == ["hits", "visitors", "levels"]
    assert [(p.name, p.rows) for p in progress] == [("hits", 1), ("visitors", 1), ("levels", 0)]

    _commit(tmp_path, 2)
    engine.calls.clear()
    repair = run_batch(tmp_path, engine, views=["visitors"], catalog=CATALOG)
    # A repair recomputes at the served horizon and references the other views.
    assert repair.version == 2 and repair.horizon == Horizon(1)
    assert engine.calls == [("visitors", 1)]
    assert repair.views["hits"] == first.views["hits"]
    assert repair.views["visitors"].built_in == 2
    assert list(repair.views) == list(CATALOG)

    refresh = run_batch(tmp_path, engine, keep=2, catalog=CATALOG)
    assert refresh.horizon == Horizon(2) and refresh.views["hits"].rows == 2
    assert [r.version for r in VersionStore(tmp_path).list()] == [2, 3]


def test_run_batch_rejects_unknown_views_and_bad_keep(tmp_path: Path) -> None:
    with pytest.raises(VersionError, match=r"unknown view.*nope.*hits, visitors, levels"):
        run_batch(tmp_path, FakeEngine(), views=["hits", "nope"], catalog=CATALOG)
    with pytest.raises(VersionError, match="unknown engine 'spork'"):
        run_batch(tmp_path, "spork", catalog=CATALOG)
    with pytest.raises(VersionError, match="at least 1"):
        run_batch(tmp_path, FakeEngine(), keep=0, catalog=CATALOG)


def test_run_batch_subset_without_a_version_computes_everything(tmp_path: Path) -> None:
    notes: list[str] = []
    record = run_batch(
        tmp_path, FakeEngine(), views=["hits"], catalog=CATALOG, on_note=notes.append
    )
    assert list(record.views) == list(CATALOG) and record.horizon == Horizon(0)
    assert notes == ["no published version yet: computing every view"]


def test_failing_engine_leaves_current_unchanged(tmp_path: Path) -> None:
    _commit(tmp_path, 1)
    first = run_batch(tmp_path, FakeEngine(), catalog=CATALOG)
    _commit(tmp_path, 2)
    with pytest.raises(RuntimeError, match="engine crashed"):
        run_batch(tmp_path, FakeEngine(fail_after=1), catalog=CATALOG)
    store = VersionStore(tmp_path)
    assert store.current() == first and store.list() == [first]
    (left,) = (tmp_path / "views" / "_tmp").iterdir()  # kept for the next run to clean
    assert left.name.startswith("2-") and (left / "hits" / "part-0.parquet").is_file()
    notes: list[str] = []
    assert run_batch(tmp_path, FakeEngine(), catalog=CATALOG, on_note=notes.append).version == 3
    assert notes == [f"removed temp output of an unfinished run: {left.name}"]
    assert not any((tmp_path / "views" / "_tmp").iterdir())


def _snapshot(*origins: dict[str, Any]) -> Snapshot:
    entries = tuple(
        ManifestEntry(i + 1, f"b{i}", 0.0, o, (), 0, 0, 0, None) for i, o in enumerate(origins)
    )
    return Snapshot(Path("/nowhere"), len(entries), entries)


def _log(partition: str, start: int, end: int) -> dict[str, Any]:
    return {"type": "log", "partition": partition, "from": start, "to": end}


def test_horizon_from_manifest_origins() -> None:
    assert horizon_of(_snapshot({"type": "import"})) == Horizon(1, {})
    snap = _snapshot(
        {"type": "import"},
        _log("traffic/0", 0, 100),
        _log("traffic/1", 0, 7),
        _log("traffic/0", 100, 250),
        _log("traffic/0", 50, 100),  # a replayed slice overlaps: fine
    )
    assert horizon_of(snap) == Horizon(5, {"traffic/0": 250, "traffic/1": 7})
    with pytest.raises(VersionError, match=r"gap in log partition traffic/0.*\[100, 120\)"):
        horizon_of(_snapshot(_log("traffic/0", 0, 100), _log("traffic/0", 120, 130)))
