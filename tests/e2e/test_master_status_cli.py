"""A user's journey: events in the log, ``loglambda master --once``, ``loglambda status``.

Why: ``status`` is how an operator finds out whether consumers keep up; its numbers
must be the log's and the master's, and the master command must reconcile.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from click.testing import CliRunner

from loglambda.core.cli import main
from loglambda.core.eventlog_local import LocalEventLog
from tests.event_factory import log_events, traffic_events

pytestmark = pytest.mark.e2e


def test_master_once_then_status_reports_positions_lag_and_horizon(home: Path) -> None:
    log = LocalEventLog(home)
    log.append("traffic", traffic_events(1000))
    log.append("logs", log_events(40))
    runner = CliRunner()
    before = json.loads(runner.invoke(main, ["status", "--json"]).output)
    traffic = before["partitions"][0]
    assert traffic["partition"] == "traffic/0" and traffic["end_offset"] == 1000
    assert traffic["consumers"] == {}  # nobody has consumed yet

    done = runner.invoke(main, ["master", "--once", "--max-events", "400"])
    assert done.exit_code == 0, done.output
    assert "wrote 1,040 events to the master dataset" in done.output

    log.append("traffic", traffic_events(5, first=1000))
    assert runner.invoke(main, ["batch", "run"]).exit_code == 0
    status = json.loads(runner.invoke(main, ["status", "--json"]).output)
    traffic, logs = status["partitions"]
    assert traffic["consumers"]["master"] == {"committed": 1000, "lag": 5}
    assert traffic["batch_horizon"] == 1000 and traffic["above_horizon"] == 5
    assert logs["consumers"]["master"] == {"committed": 40, "lag": 0}
    assert status["master"]["rows"] == {"traffic": 1000, "logs": 40}
    assert status["batch"]["version"] == 1
    [proc] = status["processes"]
    assert proc["name"] == "master" and proc["state"] == "stopped"
    assert proc["counters"]["events"] == 1040

    assert status["speed"]["generation"] == 0
    text = runner.invoke(main, ["status"]).output
    assert "traffic/0" in text and "master" in text and "version 1" in text
    assert "speed layer: never ran" in text

    # The speed layer covers what is above the horizon; status shows its position.
    assert runner.invoke(main, ["speed", "--once", "--engine", "duckdb"]).exit_code == 0
    status = json.loads(runner.invoke(main, ["status", "--json"]).output)
    assert status["speed"]["positions"] == {"traffic/0": 1005, "logs/0": 40}
    assert status["speed"]["lag"] == {"traffic/0": 0, "logs/0": 0}
    assert status["speed"]["batch_version"] == 1 and status["speed"]["partials"] == 1
    assert status["speed"]["slice_ms_p50"] is not None
    # Freshness is measured from the append: the events waited since the start.
    assert 0 < status["speed"]["freshness_s_p50"] < 120
    assert "speed layer: 1 partials over batch version 1" in runner.invoke(main, ["status"]).output


def test_second_master_writer_is_refused_with_a_clear_error(home: Path) -> None:
    from loglambda.batch.master_writer import MasterWriter

    log = LocalEventLog(home)
    with MasterWriter(home, log).session():
        result = CliRunner().invoke(main, ["master", "--once"])
    assert result.exit_code != 0
    assert "another master writer is running" in result.output


def test_summary_counts_streamed_events_once_before_and_after_the_master_writer(
    home: Path,
) -> None:
    log = LocalEventLog(home)
    log.append("traffic", traffic_events(300))
    log.append("logs", log_events(7))
    runner = CliRunner()

    def summary() -> dict[str, object]:
        result = runner.invoke(main, ["summary", "--json"])
        assert result.exit_code == 0, result.output
        loaded: dict[str, object] = json.loads(result.output)
        return loaded

    before = summary()  # all still in the event log only
    assert before["requests"] == 300 and before["log_records"] == 7
    assert runner.invoke(main, ["master", "--once", "--max-events", "120"]).exit_code == 0
    log.append("traffic", traffic_events(20, first=300))
    after = summary()  # 300 in the master, 20 in the log: each counted once
    assert after["requests"] == 320
    assert after["status_classes"] == {"2xx": 128, "3xx": 64, "4xx": 64, "5xx": 64}
