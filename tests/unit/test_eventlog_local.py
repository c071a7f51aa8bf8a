"""LocalEventLog: round trips, offsets, consumers, retention, torn writes, two appenders.

Why these: the exactness contract rests on offsets being dense, stable and durable,
and on every event being read back bit-for-bit; a wrong offset or a lossy type is a
silent double count or gap downstream.
"""

from __future__ import annotations

import itertools
import multiprocessing
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loglambda.core.eventlog import EventLog, OffsetOutOfRange, OffsetRange
from loglambda.core.eventlog_local import LocalEventLog, read_index
from loglambda.core.schemas import TRAFFIC_SCHEMA
from tests.event_factory import awkward_logs as logs
from tests.event_factory import awkward_traffic as traffic

pytestmark = pytest.mark.unit


def test_round_trip_preserves_every_value_and_type(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    assert isinstance(log, EventLog)
    t, lg = traffic(40), logs(7)
    assert log.append("traffic", t) == (OffsetRange("traffic/0", 0, 40),)
    assert log.append("logs", lg) == (OffsetRange("logs/0", 0, 7),)
    got = log.read("traffic", "traffic/0", 0, 1000)
    assert got.events.schema == TRAFFIC_SCHEMA
    assert got.events.equals(t)
    assert got.events.to_pylist() == t.to_pylist()
    assert log.read("logs", "logs/0", 0, 1000).events.equals(lg)
    assert (got.start, got.end) == (0, 40)


def test_offsets_contiguous_across_appends_and_segment_roll(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path, segment_bytes=2000)
    ranges = [
        log.append("traffic", traffic(n, first=k * 10))[0] for k, n in enumerate([1, 3, 7, 2])
    ]
    ranges += [log.append("traffic", traffic(5, first=100 + k))[0] for k in range(10)]
    assert ranges[0].start == 0
    for a, b in itertools.pairwise(ranges):
        assert a.end == b.start
    assert len(log._bases("traffic")) > 3
    assert log.end_offset("traffic", "traffic/0") == ranges[-1].end == 63
    everything = log.read("traffic", "traffic/0", 0, 1000).events
    expected = pa.concat_tables(
        [traffic(n, first=k * 10) for k, n in enumerate([1, 3, 7, 2])]
        + [traffic(5, first=100 + k) for k in range(10)]
    )
    assert everything.equals(expected)
    # Every window, across batch and segment boundaries, is the matching slice.
    for start in range(0, 64, 5):
        for count in (0, 1, 4, 13, 100):
            got = log.read("traffic", "traffic/0", start, count)
            assert got.end == min(63, start + count)
            assert got.events.equals(expected.slice(start, got.end - start))


def test_read_middle_of_batch_and_max_records(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    t = traffic(100)
    log.append("traffic", t)
    got = log.read("traffic", "traffic/0", 37, 10)
    assert (got.start, got.end) == (37, 47)
    assert got.events.equals(t.slice(37, 10))
    caught_up = log.read("traffic", "traffic/0", 100, 10)
    assert caught_up.events.num_rows == 0 and caught_up.end == 100
    with pytest.raises(OffsetOutOfRange):
        log.read("traffic", "traffic/0", 101, 10)


def test_append_validates_input(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    assert log.append("traffic", TRAFFIC_SCHEMA.empty_table()) == ()
    with pytest.raises(ValueError, match="columns"):
        log.append("traffic", logs(1))
    bad = traffic(2).set_column(2, "client_ip", pa.array([None, "x"], pa.string()))
    with pytest.raises(ValueError, match="client_ip"):
        log.append("traffic", bad)
    assert log.end_offset("traffic", "traffic/0") == 0


def test_consumers_commit_survive_restart_and_lag(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic(10))
    log.append("logs", logs(4))
    assert log.committed("master", "traffic/0") == 0
    assert log.lag("master", "traffic/0") == 10
    log.commit("master", "traffic/0", 6)
    log.commit("master", "logs/0", 4)
    log.commit("speed", "traffic/0", 10)
    with pytest.raises(ValueError):
        log.commit("speed", "traffic/0", 11)
    reopened = LocalEventLog(tmp_path)
    assert reopened.committed("master", "traffic/0") == 6
    assert reopened.lag("master", "traffic/0") == 4
    assert reopened.lag("master", "logs/0") == 0
    assert reopened.lag("speed", "logs/0") == 4
    assert reopened.consumers() == {
        "master": {"traffic/0": 6, "logs/0": 4},
        "speed": {"traffic/0": 10},
    }
    with pytest.raises(ValueError):
        reopened.committed("../evil", "traffic/0")


def test_delete_consumed_keeps_unconsumed_segments(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path, segment_bytes=1500)
    for k in range(12):
        log.append("traffic", traffic(3, first=k * 3))
    bases = log._bases("traffic")
    assert len(bases) >= 4
    assert log.delete_consumed() == 0  # no consumers: keep everything
    log.commit("master", "traffic/0", bases[2])
    log.commit("speed", "traffic/0", bases[2] + 1)
    removed = log.delete_consumed()
    assert removed == 2
    assert log._bases("traffic") == bases[2:]
    got = log.read("traffic", "traffic/0", bases[2], 1000)
    assert got.events.equals(traffic(36).slice(bases[2]))
    with pytest.raises(OffsetOutOfRange):
        log.read("traffic", "traffic/0", 0, 10)
    # Consuming everything never removes the active segment.
    log.commit("master", "traffic/0", 36)
    log.commit("speed", "traffic/0", 36)
    log.delete_consumed()
    assert log._bases("traffic") == bases[-1:]
    assert log.append("traffic", traffic(1))[0].start == 36


def test_torn_write_is_cut_away(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic(5))
    segment = tmp_path / "log" / "traffic" / "0" / f"{0:020d}.ndjson"
    index = segment.with_suffix(".idx")
    with open(segment, "ab") as fh:  # a whole line plus half a line, never indexed
        fh.write(b'{"ts": 1, "host": "x"}\n{"ts": 2, "ho')
    with open(index, "ab") as fh:  # half an index entry
        fh.write(b"\x07\x00\x00")
    # Readers ignore the garbage even before any repair.
    reader = log.read("traffic", "traffic/0", 0, 100)
    assert reader.end == 5 and reader.events.equals(traffic(5))
    reopened = LocalEventLog(tmp_path)
    assert reopened.end_offset("traffic", "traffic/0") == 5
    assert reopened.append("traffic", traffic(2, first=5)) == (OffsetRange("traffic/0", 5, 7),)
    assert reopened.read("traffic", "traffic/0", 0, 100).events.equals(traffic(7))


def test_index_entry_past_data_is_dropped(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path, fsync="never")
    log.append("traffic", traffic(3))
    log.append("traffic", traffic(4, first=3))
    segment = tmp_path / "log" / "traffic" / "0" / f"{0:020d}.ndjson"
    # The data of the second batch is lost (power loss), its index entry survived.
    first_size = int(read_index(segment.with_suffix(".idx"))[0, 1])
    with open(segment, "r+b") as fh:
        fh.truncate(first_size + 10)
    assert log.end_offset("traffic", "traffic/0") == 3
    assert log.append("traffic", traffic(1, first=3)) == (OffsetRange("traffic/0", 3, 4),)
    assert log.read("traffic", "traffic/0", 0, 100).events.equals(traffic(4))


def _appender(home: str, name: str, batches: int, out: Any, start: Any) -> None:
    log = LocalEventLog(Path(home), segment_bytes=20_000)
    got = []
    start.wait(timeout=60)  # both appenders race from the same instant
    for k in range(batches):
        (r,) = log.append("traffic", traffic(1 + k % 4, source=name, first=k * 10))
        got.append((r.start, r.end))
    out.put((name, got))


def test_two_processes_append_concurrently(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    out, start = ctx.Queue(), ctx.Barrier(2)
    procs = [
        ctx.Process(target=_appender, args=(str(tmp_path), f"p{i}", 60, out, start))
        for i in range(2)
    ]
    for p in procs:
        p.start()
    results = dict(out.get(timeout=120) for _ in procs)
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    ranges = sorted(r for got in results.values() for r in got)
    assert ranges[0][0] == 0
    for (_, a_end), (b_start, _) in itertools.pairwise(ranges):
        assert a_end == b_start
    log = LocalEventLog(tmp_path)
    total = ranges[-1][1]
    events = log.read("traffic", "traffic/0", 0, 10**6).events
    assert events.num_rows == total == 2 * sum(1 + k % 4 for k in range(60))
    keys = list(zip(events["source"].to_pylist(), events["source_line"].to_pylist(), strict=True))
    assert len(set(keys)) == total
    for name, got in results.items():
        for k, (start, end) in enumerate(got):
            assert events.slice(start, end - start).equals(
                traffic(1 + k % 4, source=name, first=k * 10)
            )


def test_non_finite_floats_are_stored_as_null(tmp_path: Path) -> None:
    # JSON has no NaN or infinity; an event carrying one keeps every other value.
    log = LocalEventLog(tmp_path)
    t = traffic(4)
    latency = pa.array([float("nan"), float("inf"), -float("inf"), 1.5], pa.float64())
    t = t.set_column(t.schema.get_field_index("latency_ms"), "latency_ms", latency)
    log.append("traffic", t)
    back = log.read("traffic", "traffic/0", 0, 4).events
    assert back.column("latency_ms").to_pylist() == [None, None, None, 1.5]
    assert back.drop_columns(["latency_ms"]).equals(t.drop_columns(["latency_ms"]))


def test_slices_say_when_their_events_were_appended(tmp_path: Path) -> None:
    # The speed layer's freshness clock starts at the append, so reads report it.
    import time

    log = LocalEventLog(tmp_path, fsync="never")
    before = time.time_ns() // 1000
    log.append("traffic", traffic(3))
    middle = time.time_ns() // 1000
    log.append("traffic", traffic(2, first=3))
    after = time.time_ns() // 1000
    both = log.read("traffic", "traffic/0", 0, 10).appended_us
    assert both is not None and before <= both[0] <= middle <= both[1] <= after
    second = log.read("traffic", "traffic/0", 4, 10).appended_us
    assert second is not None and middle <= second[0] == second[1] <= after
    assert log.read("traffic", "traffic/0", 5, 10).appended_us is None  # nothing read
