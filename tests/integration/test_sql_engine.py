"""The SQL engine over a home built the real way: log -> master -> batch -> speed.

Why: ``loglambda query`` is where the exactness contract meets users. Its tables must
hold every event the speed layer processed, each once (merged views) or every event
appended, each once (raw tables); the merge-across-rows helpers must turn a finer view
into a coarser one exactly; and every answer must say what it covers, or refuse when
it would miss data.

The home is ``tests/served_home.py``'s: a batch version at horizon 3,000, the master
up to 4,000, the log up to 4,500, the speed layer caught up in several partials.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.core.catalog import STANDARD_CATALOG, View
from loglambda.core.config import Settings
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.sketches import hll_estimate
from loglambda.serving import sql as sql_module
from loglambda.serving.merge import StaleSnapshot, merged_view
from loglambda.serving.sql import (
    DataUnavailable,
    Limits,
    QueryEngine,
    QueryFailed,
    UnknownTable,
)
from loglambda.serving.sql_functions import HELPERS
from tests.event_factory import traffic_events
from tests.served_home import LOGS, TRAFFIC, VIEWS, build_served_home, speed_once

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LocalEventLog]:
    home = tmp_path_factory.mktemp("sql") / "home"
    return home, build_served_home(home)


@pytest.fixture(scope="module")
def engine(served: tuple[Path, LocalEventLog]) -> QueryEngine:
    home, log = served
    return QueryEngine(Settings.load(home), catalog=VIEWS, log=log)


def rows(engine: QueryEngine, sql: str) -> list[dict[str, Any]]:
    result: list[dict[str, Any]] = engine.run(sql).table.to_pylist()
    return result


def test_merged_view_counts_every_event_the_speed_layer_processed(engine: QueryEngine) -> None:
    result = engine.run("SELECT sum(requests) AS n FROM traffic_minute")
    assert result.table.to_pylist() == [{"n": TRAFFIC}]
    f = result.freshness
    assert f.positions["traffic/0"] == TRAFFIC  # what the answer covers
    assert result.tables == ("traffic_minute",)  # only the named view was built
    [logs] = rows(engine, "SELECT sum(records) AS n FROM log_records_minute")
    assert logs["n"] == LOGS


def test_per_hour_p95_from_the_minute_view_equals_the_hour_view(engine: QueryEngine) -> None:
    keys = "host, route, method, status_class"
    from_minutes = rows(
        engine,
        f"SELECT date_trunc('hour', window_start) AS hour, {keys}, "
        "merged_quantile(latency, 0.95) AS p95, sum(requests) AS n "
        "FROM traffic_minute GROUP BY ALL ORDER BY ALL",
    )
    from_hours = rows(
        engine,
        f"SELECT window_start AS hour, {keys}, ddsketch_quantile(latency, 0.95) AS p95, "
        "requests AS n FROM traffic_hour ORDER BY ALL",
    )
    assert len(from_hours) >= 3 and from_minutes == from_hours  # exact: counts add


def test_unique_visitors_per_day_match_a_recompute_from_scratch(
    served: tuple[Path, LocalEventLog], engine: QueryEngine
) -> None:
    _home, log = served
    events = log.read("traffic", "traffic/0", 0, TRAFFIC).events
    with DuckDBEngine() as batch:
        [scratch] = batch.compute_arrow([VIEWS["visitors_day"]], {"traffic": events}).values()
    expected = sorted((r["window_start"], hll_estimate(r["visitors"])) for r in scratch.to_pylist())
    served_days = rows(
        engine, "SELECT window_start AS d, hll_estimate(visitors) AS u FROM visitors_day ORDER BY d"
    )
    assert [(r["d"], r["u"]) for r in served_days] == expected
    # The same count merged from the hour view with a plain GROUP BY.
    merged = rows(
        engine,
        "SELECT date_trunc('day', window_start) AS d, unique_count(visitors) AS u "
        "FROM visitors_hour GROUP BY d ORDER BY d",
    )
    assert [(r["d"], r["u"]) for r in merged] == expected


def test_raw_tables_hold_every_appended_event_once(engine: QueryEngine) -> None:
    result = engine.run(
        "SELECT count(*) AS n, count(DISTINCT (source, source_line)) AS distinct_events, "
        "min(source_line) AS lo, max(source_line) AS hi FROM traffic"
    )
    assert result.table.to_pylist() == [
        {"n": TRAFFIC, "distinct_events": TRAFFIC, "lo": 0, "hi": TRAFFIC - 1}
    ]
    raw = result.raw
    assert raw is not None
    assert raw.master_offsets == {"traffic/0": 4_000}  # the master holds [0, 4000)
    assert raw.tail == {"traffic/0": [(4_000, TRAFFIC)]}  # and the log the rest
    assert raw.log_end == {"traffic/0": TRAFFIC}
    [logs] = rows(engine, "SELECT count(*) AS n, count(DISTINCT source_line) AS d FROM logs")
    assert logs == {"n": LOGS, "d": LOGS}


def test_every_result_carries_its_freshness(engine: QueryEngine) -> None:
    result = engine.run("SELECT 1 AS one")
    f = result.freshness_json()
    assert f["batch_version"] == 1
    assert f["horizon"] == {"traffic/0": 3_000, "logs/0": 300}
    assert f["positions"] == {"traffic/0": TRAFFIC, "logs/0": LOGS}
    assert f["log_end"] == {"traffic/0": TRAFFIC, "logs/0": LOGS}
    assert f["lag"] == {"traffic/0": 0, "logs/0": 0}
    assert f["raw"] is None  # no raw table named
    json.dumps(f)  # serialisable as is
    text = result.freshness_text()
    assert "batch version 1" in text and "traffic/0 < 3000" in text
    table = rows(engine, "SELECT * FROM freshness ORDER BY partition")
    assert table[1] == {
        "partition": "traffic/0",
        "batch_version": 1,
        "horizon": 3_000,
        "speed_position": TRAFFIC,
        "log_end": TRAFFIC,
        "lag": 0,
    }


def test_events_the_speed_layer_has_not_seen_show_as_lag(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = build_served_home(home)
    log.append("traffic", traffic_events(25, first=TRAFFIC))
    engine = QueryEngine(Settings.load(home), catalog=VIEWS, log=log)
    result = engine.run("SELECT sum(requests) AS n FROM traffic_minute")
    assert result.table.to_pylist() == [{"n": TRAFFIC}]  # covers below the position...
    assert result.freshness.lag["traffic/0"] == 25  # ...and says what it does not cover
    raw = engine.run("SELECT count(*) AS n FROM traffic")
    assert raw.table.to_pylist() == [{"n": TRAFFIC + 25}]  # raw reads the whole log
    speed_once(home, log)
    after = engine.run("SELECT sum(requests) AS n FROM traffic_minute")
    assert (
        after.table.to_pylist() == [{"n": TRAFFIC + 25}] and after.freshness.lag["traffic/0"] == 0
    )


def test_a_missing_slice_between_horizon_and_position_is_an_error(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = build_served_home(home, slice_events=200)
    state_file = home / "realtime" / "STATE"
    state = json.loads(state_file.read_text())
    traffic = [p for p in state["partials"] if p["partition"] == "traffic/0"]
    assert len(traffic) >= 3
    state["partials"].remove(traffic[1])  # a slice in the middle goes missing
    state_file.write_text(json.dumps(state))
    engine = QueryEngine(Settings.load(home), catalog=VIEWS, log=log)
    with pytest.raises(DataUnavailable, match=r"not contiguous.*do not meet"):
        engine.run("SELECT sum(requests) FROM traffic_minute")


def test_a_view_the_batch_version_lacks_is_an_error_not_a_short_answer(
    served: tuple[Path, LocalEventLog],
) -> None:
    home, log = served
    catalog = {**VIEWS, "status_codes": STANDARD_CATALOG["status_codes"]}
    engine = QueryEngine(Settings.load(home), catalog=catalog, log=log)
    with pytest.raises(DataUnavailable, match="'status_codes' is not in batch version 1"):
        engine.run("SELECT sum(hits) FROM status_codes")
    # Views the query does not name are not checked (nor built).
    assert engine.run("SELECT sum(requests) AS n FROM traffic_hour").table.to_pylist() == [
        {"n": TRAFFIC}
    ]


def test_an_expiring_partial_is_retried_with_a_new_snapshot(
    engine: QueryEngine, monkeypatch: pytest.MonkeyPatch
) -> None:
    real = merged_view
    calls = {"n": 0}

    def flaky(snap: Any, view: View) -> pa.Table:
        calls["n"] += 1
        if calls["n"] == 1:
            raise StaleSnapshot("partial expired while reading")
        return real(snap, view)

    monkeypatch.setattr(sql_module, "merged_view", flaky)
    assert rows(engine, "SELECT sum(requests) AS n FROM traffic_hour") == [{"n": TRAFFIC}]
    assert calls["n"] == 2

    def always(snap: Any, view: View) -> pa.Table:
        raise StaleSnapshot("partial expired while reading")

    monkeypatch.setattr(sql_module, "merged_view", always)
    with pytest.raises(DataUnavailable, match="kept expiring"):
        engine.run("SELECT * FROM traffic_hour")


def test_results_are_cut_at_the_row_limit(engine: QueryEngine) -> None:
    cut = engine.run("SELECT * FROM traffic ORDER BY source_line", max_rows=10)
    assert cut.truncated and cut.table.num_rows == 10
    assert cut.table.column("source_line").to_pylist() == list(range(10))
    whole = engine.run("SELECT * FROM traffic_hour", max_rows=1_000)
    assert not whole.truncated and whole.table.num_rows > 0


def test_catalog_listing_works_without_building_the_data(engine: QueryEngine) -> None:
    shown = engine.run("SHOW TABLES")
    assert sorted(shown.table.column("name").to_pylist()) == engine.tables
    assert shown.tables == ()
    described = rows(engine, "DESCRIBE traffic_minute")
    assert [r["column_name"] for r in described][:2] == ["window_start", "host"]
    views = rows(engine, "SELECT name, kind, grain FROM views ORDER BY name")
    assert {"name": "traffic_minute", "kind": "traffic", "grain": "minute"} in views


def test_unknown_tables_and_syntax_errors_say_what_is_wrong(engine: QueryEngine) -> None:
    with pytest.raises(UnknownTable) as unknown:
        engine.run("SELECT * FROM trafic_minute")
    assert "'trafic_minute'" in str(unknown.value)
    assert "traffic_minute" in str(unknown.value) and "visitors_day" in str(unknown.value)
    with pytest.raises(QueryFailed, match="syntax error"):
        engine.run("SELEC 1")
    with pytest.raises(UnknownTable):
        engine.schema("nope")
    assert engine.schema("traffic").names[0] == "ts"


def test_limits_reach_duckdb(engine: QueryEngine, served: tuple[Path, LocalEventLog]) -> None:
    home, log = served
    small = QueryEngine(
        Settings.load(home), catalog=VIEWS, log=log, limits=Limits(memory_limit="64MB", threads=1)
    )
    [got] = rows(
        small,
        "SELECT current_setting('memory_limit') AS m, current_setting('threads') AS t, "
        "current_setting('TimeZone') AS tz",
    )
    assert got["t"] == 1 and got["tz"] == "UTC" and got["m"].startswith("61")  # 64 MB in MiB


def test_every_documented_helper_example_runs(engine: QueryEngine) -> None:
    for helper in HELPERS:
        result = engine.run(helper.example)
        assert result.table.num_rows > 0, helper.signature
