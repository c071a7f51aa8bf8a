"""The master writer: log slices become master batches, exactly once.

Why: the master dataset is the system of record and the batch horizon is read from
it. A slice written twice is a double count in every view; a slice skipped is a gap
``horizon_of`` refuses. These tests drive the failure points between the steps of a
write in-process; ``test_master_crash`` kills a real process.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest

from loglambda.batch.master import MasterDataset
from loglambda.batch.master_writer import MasterWriter, WriterBusy
from loglambda.batch.recompute import horizon_of, run_batch
from loglambda.core.eventlog_local import LocalEventLog
from tests.event_factory import log_events, traffic_events

pytestmark = pytest.mark.integration


def master_provenance(home: Path, kind: str = "traffic") -> list[tuple[str, int]]:
    files = [str(p) for p in MasterDataset(home).snapshot().files(kind)]  # type: ignore[arg-type]
    if not files:
        return []
    rows = duckdb.sql(
        f"SELECT source, source_line FROM read_parquet({files!r}) ORDER BY ALL"
    ).fetchall()
    return [(str(s), int(n)) for s, n in rows]


def test_drain_writes_every_event_once_and_names_batches_from_offsets(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    for k in range(3):
        log.append("traffic", traffic_events(400, first=k * 400))
    log.append("logs", log_events(50))
    writer = MasterWriter(tmp_path, log, max_events=500)
    with writer.session():
        assert writer.drain() == 1250
        assert writer.drain() == 0  # caught up: nothing more
    entries = MasterDataset(tmp_path).entries()
    origins = [(e.batch_id, e.origin["from"], e.origin["to"]) for e in entries]
    assert origins == [
        ("log-traffic-0-00000000000000000000-00000000000000000500", 0, 500),
        ("log-traffic-0-00000000000000000500-00000000000000001000", 500, 1000),
        ("log-traffic-0-00000000000000001000-00000000000000001200", 1000, 1200),
        ("log-logs-0-00000000000000000000-00000000000000000050", 0, 50),
    ]
    assert master_provenance(tmp_path) == [("test", i) for i in range(1200)]
    assert len(master_provenance(tmp_path, "logs")) == 50
    assert log.committed("master", "traffic/0") == 1200
    assert log.lag("master", "logs/0") == 0
    # Events spread over hours land in their event-time partitions.
    snapshot = MasterDataset(tmp_path).snapshot()
    hours = {p.parent.name for p in snapshot.files("traffic")}
    assert len(hours) >= 2
    assert horizon_of(snapshot).offsets == {"traffic/0": 1200, "logs/0": 50}


def test_lost_commit_after_durable_batch_is_not_written_twice(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(300))

    class CrashOnCommit(Exception):
        pass

    def crash(*_: object) -> None:
        raise CrashOnCommit

    writer = MasterWriter(tmp_path, log, max_events=200)
    with pytest.raises(CrashOnCommit), writer.session():
        writer.log.commit = crash  # type: ignore[method-assign]
        writer.drain()
    # The manifest has [0, 200) but the log position still says 0.
    fresh = LocalEventLog(tmp_path)
    assert fresh.committed("master", "traffic/0") == 0
    with MasterWriter(tmp_path, fresh, max_events=200).session() as again:
        assert again.positions["traffic/0"] == 200  # resumed from the manifest
        assert fresh.committed("master", "traffic/0") == 200  # and the hint repaired
        assert again.drain() == 100
    assert master_provenance(tmp_path) == [("test", i) for i in range(300)]


def test_crash_before_manifest_discards_staged_files_and_replays(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(300))
    master = MasterDataset(tmp_path)
    staged = master.stage("log-traffic-0-00000000000000000000-00000000000000000300")
    staged.write("traffic", traffic_events(300))
    # The process "dies" here: the staged batch never got a manifest entry. Its lock
    # dies with the process; release ours the way the OS would.
    import os

    os.close(staged._lock)
    with MasterWriter(tmp_path, LocalEventLog(tmp_path)).session() as writer:
        assert writer.drain() == 300
    assert master_provenance(tmp_path) == [("test", i) for i in range(300)]
    assert not any((tmp_path / "master" / "_staging").glob("log-*/"))


def test_second_writer_on_the_same_home_fails_fast(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    with (
        MasterWriter(tmp_path, log).session(),
        pytest.raises(WriterBusy, match="another master writer"),
        MasterWriter(tmp_path, log).session(),
    ):
        pass


def test_batch_run_horizon_covers_what_the_writer_wrote(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(700))
    log.append("logs", log_events(30))
    with MasterWriter(tmp_path, log, max_events=300).session() as writer:
        writer.drain()
    record = run_batch(tmp_path, views=None)
    assert record.horizon.offsets == {"traffic/0": 700, "logs/0": 30}
    log.append("traffic", traffic_events(10, first=700))
    with MasterWriter(tmp_path, log).session() as writer:
        writer.drain()
    assert run_batch(tmp_path).horizon.offsets["traffic/0"] == 710
