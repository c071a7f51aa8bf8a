"""The EventLog protocol, checked identically on every backend: local segments and Kafka.

Why: code above ``core/eventlog.py`` never knows which backend it runs on, so the two
must agree on everything the exactness contract rests on: dense offsets from 0, exact
round trips of every value and type, reads from any offset, the off-by-one rule of
committed positions, and positions that survive a new instance (a restart). The Kafka
cases run against a real broker (tansu, see the ``kafka_broker`` fixture).
"""

from __future__ import annotations

import itertools
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loglambda.core.eventlog import EventLog, OffsetOutOfRange, OffsetRange
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.schemas import TRAFFIC_SCHEMA
from tests.event_factory import awkward_logs as logs
from tests.event_factory import awkward_traffic as traffic

pytestmark = pytest.mark.integration

Opener = Callable[[], EventLog]


@pytest.fixture(params=["local", "kafka"])
def open_log(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Opener]:
    """Opens a new instance on the same storage each call (a "restart")."""
    opened: list[Any] = []
    if request.param == "local":

        def opener() -> EventLog:
            return LocalEventLog(tmp_path)

    else:
        from loglambda.core.eventlog_kafka import KafkaEventLog

        bootstrap = request.getfixturevalue("kafka_broker")
        prefix = f"conf{uuid.uuid4().hex[:8]}."

        def opener() -> EventLog:
            log = KafkaEventLog(bootstrap, topic_prefix=prefix, timeout_s=20)
            opened.append(log)
            return log

    yield opener
    for log in opened:
        log.close()


def test_fresh_log_is_empty(open_log: Opener) -> None:
    log = open_log()
    assert isinstance(log, EventLog)
    assert log.partitions("traffic") == ["traffic/0"]
    assert log.partitions("logs") == ["logs/0"]
    assert log.end_offset("traffic", "traffic/0") == 0
    empty = log.read("traffic", "traffic/0", 0, 100)
    assert (empty.start, empty.end, empty.events.num_rows) == (0, 0, 0)
    assert empty.events.schema == TRAFFIC_SCHEMA
    assert log.committed("master", "traffic/0") == 0
    assert log.lag("master", "traffic/0") == 0
    assert log.consumers() == {}
    with pytest.raises(ValueError):
        log.end_offset("traffic", "logs/0")
    with pytest.raises(ValueError):
        log.end_offset("traffic", "traffic/1")


def test_round_trip_preserves_every_value_and_type(open_log: Opener) -> None:
    log = open_log()
    t, lg = traffic(40), logs(7)
    assert log.append("traffic", t) == (OffsetRange("traffic/0", 0, 40),)
    assert log.append("logs", lg) == (OffsetRange("logs/0", 0, 7),)
    got = log.read("traffic", "traffic/0", 0, 1000)
    assert got.events.schema == TRAFFIC_SCHEMA
    assert got.events.equals(t)
    assert got.events.to_pylist() == t.to_pylist()
    assert (got.start, got.end) == (0, 40)
    assert open_log().read("logs", "logs/0", 0, 1000).events.equals(lg)


def test_offsets_contiguous_and_every_window_reads_back(open_log: Opener) -> None:
    log = open_log()
    sizes = [1, 3, 7, 2, 5, 5, 5, 5, 5, 5, 5, 5, 5, 5]
    tables = [traffic(n, first=k * 10) for k, n in enumerate(sizes)]
    ranges = [log.append("traffic", table)[0] for table in tables]
    assert ranges[0].start == 0
    for a, b in itertools.pairwise(ranges):
        assert a.end == b.start
    assert log.end_offset("traffic", "traffic/0") == ranges[-1].end == 63
    expected = pa.concat_tables(tables)
    assert log.read("traffic", "traffic/0", 0, 1000).events.equals(expected)
    for start in range(0, 64, 9):
        for count in (1, 13, 100):
            got = log.read("traffic", "traffic/0", start, count)
            assert (got.start, got.end) == (start, min(63, start + count))
            assert got.events.equals(expected.slice(start, got.end - start))


def test_read_of_zero_records_anywhere(open_log: Opener) -> None:
    log = open_log()
    for k in range(4):  # batch boundaries at 1, 3, 6
        log.append("traffic", traffic(k + 1, first=k * 10))
    for start in range(11):
        got = log.read("traffic", "traffic/0", start, 0)
        assert (got.start, got.end, got.events.num_rows) == (start, start, 0)


def test_read_middle_caught_up_and_out_of_range(open_log: Opener) -> None:
    log = open_log()
    t = traffic(100)
    log.append("traffic", t)
    got = log.read("traffic", "traffic/0", 37, 10)
    assert (got.start, got.end) == (37, 47)
    assert got.events.equals(t.slice(37, 10))
    caught_up = log.read("traffic", "traffic/0", 100, 10)
    assert caught_up.events.num_rows == 0 and caught_up.end == 100
    with pytest.raises(OffsetOutOfRange):
        log.read("traffic", "traffic/0", 101, 10)
    with pytest.raises(ValueError):
        log.read("traffic", "traffic/0", 0, -1)


def test_append_validates_input(open_log: Opener) -> None:
    log = open_log()
    assert log.append("traffic", TRAFFIC_SCHEMA.empty_table()) == ()
    with pytest.raises(ValueError, match="columns"):
        log.append("traffic", logs(1))
    bad = traffic(2).set_column(2, "client_ip", pa.array([None, "x"], pa.string()))
    with pytest.raises(ValueError, match="client_ip"):
        log.append("traffic", bad)
    assert log.end_offset("traffic", "traffic/0") == 0


def test_positions_survive_a_new_instance_and_lag(open_log: Opener) -> None:
    log = open_log()
    log.append("traffic", traffic(10))
    log.append("logs", logs(4))
    assert log.committed("master", "traffic/0") == 0
    assert log.lag("master", "traffic/0") == 10
    log.commit("master", "traffic/0", 6)
    log.commit("master", "logs/0", 4)
    log.commit("speed", "traffic/0", 10)
    with pytest.raises(ValueError):
        log.commit("speed", "traffic/0", 11)
    with pytest.raises(ValueError):
        log.commit("speed", "traffic/0", -1)
    reopened = open_log()
    assert reopened.committed("master", "traffic/0") == 6
    assert reopened.lag("master", "traffic/0") == 4
    assert reopened.lag("master", "logs/0") == 0
    assert reopened.lag("speed", "logs/0") == 4
    assert reopened.consumers() == {
        "master": {"traffic/0": 6, "logs/0": 4},
        "speed": {"traffic/0": 10},
    }
    # A restarted consumer resumes at its committed position: the next offset to read.
    resumed = reopened.read("traffic", "traffic/0", reopened.committed("master", "traffic/0"), 99)
    assert resumed.events.equals(traffic(10).slice(6))
    reopened.commit("master", "traffic/0", 0)  # moving back is allowed (a replay)
    assert open_log().committed("master", "traffic/0") == 0
    with pytest.raises(ValueError):
        reopened.committed("../evil", "traffic/0")


def test_reads_report_when_events_were_appended(open_log: Opener) -> None:
    # Both backends start the speed layer's freshness clock at the append.
    import time

    log = open_log()
    before = time.time_ns() // 1000 - 1_000_000  # Kafka stamps are ms; allow clock slack
    log.append("traffic", traffic(5))
    after = time.time_ns() // 1000 + 1_000_000
    got = log.read("traffic", "traffic/0", 0, 5).appended_us
    assert got is not None and before <= got[0] <= got[1] <= after
