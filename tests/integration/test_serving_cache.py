"""The serving caches never answer stale, and the fast paths answer exactly alike.

Why: merged views, rolled-up views, the log tail and raw master files are kept in
memory between queries (``serving.cache``, ``serving.raw``), the dashboard's statements
run with the time window and rollup they promise (``QueryEngine.run``), histograms are
merged by a faster UDF, and queries share a locked database per lane. Each is a place
where a fast answer could silently differ from the true one: a speed commit or a batch
publish not seen by the next query, a freshness describing other data than the answer,
an incremental merge that drifts from a merge from scratch, a quantile off by a bucket.

The home is ``tests/served_home.py``'s, one per test (they change it): a batch version
at horizon 3,000, the master up to 4,000, the log up to 4,500, the speed layer caught
up in several partials.
"""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pytest
from fastapi.testclient import TestClient

from loglambda.batch.master_writer import MasterWriter
from loglambda.batch.recompute import run_batch
from loglambda.batch.versions import VersionStore
from loglambda.core.catalog import View, output_schema
from loglambda.core.config import Settings
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.partials import merge_partials
from loglambda.core.sketches import histograms_from_buckets, hll_estimate
from loglambda.core.sketches.quantiles import HISTOGRAM_TYPE, ZERO_KEY
from loglambda.serving import cache as cache_module
from loglambda.serving import histogram_udfs
from loglambda.serving import questions as q
from loglambda.serving.app import create_app
from loglambda.serving.histogram_udfs import histogram_sum_udf
from loglambda.serving.merge import Rollup, merged_view, rolled_up_view, snapshot
from loglambda.serving.sql import QueryEngine
from loglambda.serving.sql_guard import Connections, Limits, QueryFailed
from loglambda.speed.store import RealtimeStore
from tests.event_factory import T0_US, traffic_events
from tests.served_home import TRAFFIC, VIEWS, build_served_home, speed_once

pytestmark = pytest.mark.integration

T0 = dt.datetime(1970, 1, 1, tzinfo=dt.UTC) + dt.timedelta(microseconds=T0_US)
TOTAL = "SELECT sum(requests) AS n FROM traffic_minute"


@pytest.fixture
def served(tmp_path: Path) -> tuple[Path, LocalEventLog]:
    home = tmp_path / "home"
    return home, build_served_home(home)


def engine_of(home: Path, log: LocalEventLog) -> QueryEngine:
    return QueryEngine(Settings.load(home), catalog=VIEWS, log=log)


def from_scratch(home: Path, view: View) -> pa.Table:
    """What the merge was before any cache: every input read and merged at once."""
    snap = snapshot(home)
    tables = []
    if snap.record is not None:
        for path in VersionStore(home).paths(snap.record, view.name):
            tables.append(pa.parquet.read_table(path, partitioning=None))
    store = RealtimeStore(home)
    tables += [store.read(p, view.name) for p in snap.state.partials if view.name in p.views]
    return merge_partials(view, [t.cast(output_schema(view)) for t in tables])


def assert_same_rows(view: View, got: pa.Table, expected: pa.Table) -> None:
    """Equal row for row; HLL sketches by their estimate (unions of unions may differ
    in bytes, never in registers)."""
    assert got.num_rows == expected.num_rows
    for m_name in got.column_names:
        a, b = got.column(m_name).to_pylist(), expected.column(m_name).to_pylist()
        if got.schema.field(m_name).type == pa.binary():
            assert [hll_estimate(x) for x in a] == [hll_estimate(y) for y in b], m_name
        else:
            assert a == b, f"{view.name}.{m_name}"


def test_the_next_query_sees_a_speed_commit_and_says_so(
    served: tuple[Path, LocalEventLog],
) -> None:
    home, log = served
    engine = engine_of(home, log)
    before = engine.run(TOTAL)
    assert before.table.to_pylist() == [{"n": TRAFFIC}]
    assert before.freshness.positions["traffic/0"] == TRAFFIC
    engine.run(TOTAL)  # a cached answer now exists for that snapshot
    log.append("traffic", traffic_events(300, first=TRAFFIC))
    stale = engine.run(TOTAL)  # appended, not yet processed: not in the answer, and lag says so
    assert stale.table.to_pylist() == [{"n": TRAFFIC}]
    assert stale.freshness.lag["traffic/0"] == 300
    speed_once(home, log)
    after = engine.run(TOTAL)
    assert after.table.to_pylist() == [{"n": TRAFFIC + 300}]
    f = after.freshness
    assert f.positions["traffic/0"] == TRAFFIC + 300 and f.lag["traffic/0"] == 0
    assert f.speed_generation > before.freshness.speed_generation


def test_the_next_query_sees_a_batch_publish_and_says_so(
    served: tuple[Path, LocalEventLog],
) -> None:
    home, log = served
    engine = engine_of(home, log)
    assert engine.run(TOTAL).freshness.batch_version == 1
    with MasterWriter(home, log).session() as writer:
        writer.drain()
    run_batch(home, catalog=VIEWS)  # version 2 covers everything; partials not expired yet
    pending = engine.run(TOTAL)
    # Version 2 with the old partials would count [3000, 4500) twice: version 1 is
    # served until the speed layer re-cuts, and the answer says so.
    assert pending.table.to_pylist() == [{"n": TRAFFIC}]
    assert pending.freshness.batch_version == 1
    assert any("not applied it yet" in n for n in pending.freshness.notes)
    speed_once(home, log)
    after = engine.run(TOTAL)
    assert after.table.to_pylist() == [{"n": TRAFFIC}]
    assert after.freshness.batch_version == 2 and not after.freshness.notes
    assert after.freshness.horizon["traffic/0"] == TRAFFIC


def test_the_dashboard_sees_a_commit_on_its_next_refresh(
    served: tuple[Path, LocalEventLog],
) -> None:
    home, log = served
    client = TestClient(create_app(Settings.load(home), event_log=log))
    params = {"from": "2026-11-18T00:00:00Z", "to": "2026-11-20T00:00:00Z", "step": "1h"}
    first = client.get("/v1/dashboard/traffic", params=params).json()
    assert first["totals"]["requests"] == TRAFFIC
    log.append("traffic", traffic_events(200, first=TRAFFIC))
    speed_once(home, log)
    second = client.get("/v1/dashboard/traffic", params=params).json()
    assert second["totals"]["requests"] == TRAFFIC + 200
    assert second["freshness"]["positions"]["traffic/0"] == TRAFFIC + 200
    assert second["freshness"]["speed_generation"] > first["freshness"]["speed_generation"]


@pytest.mark.parametrize("rebuild", [False, True], ids=["incremental", "rebuilt"])
def test_cached_and_incremental_merges_equal_a_merge_from_scratch(
    served: tuple[Path, LocalEventLog], monkeypatch: pytest.MonkeyPatch, rebuild: bool
) -> None:
    home, log = served
    if rebuild:  # every commit folds the speed deltas and rebuilds from the batch rows
        monkeypatch.setattr(cache_module, "MAX_CHUNKS", 0)
        monkeypatch.setattr(cache_module, "MAX_PENDING", 1)
    for view in VIEWS.values():  # cached from the home as built
        assert_same_rows(view, merged_view(snapshot(home), view), from_scratch(home, view))
    for i in range(3):  # then extended one speed commit at a time (some events late)
        events = traffic_events(150, first=TRAFFIC + 150 * i, spread_s=3 * 86_400)
        log.append("traffic", events)
        speed_once(home, log, slice_events=100)
        for view in VIEWS.values():
            got = merged_view(snapshot(home), view)
            assert_same_rows(view, got, from_scratch(home, view))


@pytest.mark.parametrize(
    ("name", "rollup"),
    [
        ("traffic_hour", Rollup()),
        ("traffic_hour", Rollup(keep=("route",))),
        ("traffic_minute", Rollup(step_s=900)),
        ("traffic_hour", Rollup(keep=("host",), step_s=10_800)),
    ],
)
def test_rolled_up_views_equal_the_view_merged_to_fit(
    served: tuple[Path, LocalEventLog], name: str, rollup: Rollup
) -> None:
    home, log = served
    view = VIEWS[name]
    for commit in range(2):  # as built, then after one more speed commit
        if commit:
            log.append("traffic", traffic_events(100, first=TRAFFIC, spread_s=86_400))
            speed_once(home, log)
        got = rolled_up_view(snapshot(home), view, rollup)
        assert got.schema == output_schema(view)
        kept = tuple(d for d in view.dimensions if d.name in rollup.keep)
        small = View(view.name, view.kind, view.grain, kept, view.measures)
        names = output_schema(small).names
        rows = from_scratch(home, view).select(names)
        if rollup.step_s:  # each window start moved to its step's start (after 1970)
            step_us = rollup.step_s * 10**6
            micros = pc.cast(rows.column("window_start"), pa.int64())
            start = pc.multiply(pc.divide(micros, step_us), step_us)
            rows = rows.set_column(0, "window_start", start.cast(rows.schema.field(0).type))
        expected = merge_partials(small, [rows])
        assert_same_rows(view, got.select(names), expected)
        dropped = [d.name for d in view.dimensions if d.name not in rollup.keep]
        assert all(got.column(n).null_count == got.num_rows for n in dropped)


def test_dashboard_statements_answer_alike_with_and_without_their_promises(
    served: tuple[Path, LocalEventLog],
) -> None:
    home, log = served
    engine = engine_of(home, log)
    now = T0 + dt.timedelta(hours=3)
    day = q.window(now - dt.timedelta(hours=5), now, 60, now=now)
    odd = q.window(now - dt.timedelta(minutes=97), now - dt.timedelta(minutes=13), 60, now=now)
    week = q.window(now - dt.timedelta(days=7), now, 3600, now=now)

    def series(win: q.Window, step: q.Step) -> tuple[str, q.Window, Rollup]:
        # As the API asks: the range widened to whole steps, the rollup to them.
        aligned, _ = q.series_window(win.start, win.end, step, now=now)
        return q.traffic_sql(aligned, step), aligned, Rollup(step_s=q.STEPS[step])

    cases: list[tuple[str, q.Window, Rollup | None]] = [
        series(day, "5m"),
        series(week, "1h"),
        series(week, "3h"),
        series(odd, "1m"),
        series(odd, "15m"),
        (q.top_routes_sql(day, 10), day, Rollup(keep=("route",))),
        (q.top_routes_sql(odd, 3), odd, Rollup(keep=("route",))),
        (q.status_codes_sql(odd), odd, None),
        (q.visitors_sql(week), week, None),
        (q.log_levels_sql(day), day, None),
    ]
    for sql, win, rollup in cases:
        plain = engine.run(sql).table
        fast = engine.run(sql, window=(win.start, win.end), rollup=rollup).table
        assert fast.num_rows > 0 and fast.equals(plain), sql
    # and both the same again from a new engine, whose caches start cold
    sql, win, rollup = cases[0]
    cold = engine_of(home, log).run(sql, window=(win.start, win.end), rollup=rollup).table
    assert cold.equals(engine.run(sql).table)


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "general"])
def test_the_dense_histogram_sum_equals_the_general_one(
    monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    if not dense:
        monkeypatch.setattr(histogram_udfs, "DENSE_CELLS", 0)
    rng = np.random.default_rng(7)
    for _ in range(200):
        rows: list[Any] = []
        for _ in range(int(rng.integers(0, 12))):
            if rng.random() < 0.1:
                rows.append(None)
                continue
            entries = []
            for _ in range(int(rng.integers(0, 9))):
                key = ZERO_KEY if rng.random() < 0.15 else int(rng.integers(-350, 810))
                count = None if rng.random() < 0.05 else int(rng.integers(-1, 4))
                entries.append({"key": None if rng.random() < 0.05 else key, "count": count})
            rows.append(entries)
        lists = pa.array(rows, type=HISTOGRAM_TYPE)
        assert histogram_sum_udf(pa.chunked_array([lists])).equals(histograms_from_buckets(lists))


@pytest.mark.parametrize("dense", [True, False], ids=["dense", "general"])
def test_merged_quantile_equals_its_definition(
    monkeypatch: pytest.MonkeyPatch, dense: bool
) -> None:
    """The fused ``merged_quantile`` gives what ``ddsketch_quantile(histogram_merge(h),
    q)`` gives, bit for bit: NULL and empty groups, zero keys, q at and beyond the ends;
    by the dense grid and by the general path (a grid too big)."""
    if not dense:
        monkeypatch.setattr(histogram_udfs, "DENSE_CELLS", 0)
    rng = np.random.default_rng(11)
    rows: list[Any] = []
    for group in range(60):
        for _ in range(int(rng.integers(1, 6))):
            entries = [
                {
                    "key": ZERO_KEY if rng.random() < 0.1 else int(rng.integers(-350, 810)),
                    "count": int(rng.integers(0, 50)),
                }
                for _ in range(int(rng.integers(0, 7)))
            ]
            rows.append({"g": group, "h": None if rng.random() < 0.05 else entries})
    table = pa.Table.from_pylist(rows, schema=pa.schema([("g", pa.int64()), ("h", HISTOGRAM_TYPE)]))
    with Connections(Limits()).connection(30.0) as con:
        con.register("t", table)
        for q_ in ("0.0", "0.5", "0.95", "0.999", "1.0", "1.5", "-0.1", "NULL"):
            got, want = (
                con.sql(
                    f"SELECT g, {expr} AS v FROM t GROUP BY GROUPING SETS ((g), ()) ORDER BY g"
                ).fetchall()
                for expr in (
                    f"merged_quantile(h, {q_})",
                    f"ddsketch_quantile(histogram_sum(flatten(list(h))), {q_})",
                )
            )
            assert got == want, q_
        assert con.sql("SELECT merged_quantile(h, 0.5) FROM t WHERE g < 0").fetchall() == [(None,)]


def test_visitors_from_whole_days_equal_visitors_from_hours(
    served: tuple[Path, LocalEventLog],
) -> None:
    """Whole days come from ``visitors_day``: the same hits and estimates as the union
    of their hours, which is what the question answered before."""
    home, log = served
    engine = engine_of(home, log)
    day = T0.replace(hour=0, minute=0, second=0, microsecond=0)
    win = q.Window(day - dt.timedelta(hours=19), day + dt.timedelta(days=1, hours=5))
    assert "visitors_day" in q.visitors_sql(win)
    by_hours = (
        "SELECT date_trunc('day', window_start) AS day, sum(hits)::BIGINT AS hits, "
        f"unique_count(visitors) AS visitors FROM visitors_hour WHERE {win.where()} "
        "GROUP BY GROUPING SETS ((day), ()) ORDER BY day"
    )
    got = engine.run(q.visitors_sql(win), window=(win.start, win.end)).table.to_pylist()
    want = engine.run(by_hours).table.to_pylist()
    assert got == want and sum(r["hits"] for r in got if r["day"] is not None) == TRAFFIC


def test_a_database_broken_by_a_fatal_error_is_replaced() -> None:
    """Queries share a locked database per lane; one that DuckDB invalidated must not
    fail every later query (a new one is made), while ordinary errors keep it."""
    conns = Connections(Limits())
    with conns.connection(30.0, "dashboard") as con:
        first = con.execute("SELECT 1").fetchall()
    kept = conns._dbs["dashboard"]
    with pytest.raises(QueryFailed), conns.connection(30.0, "dashboard"):
        raise QueryFailed("no such column") from duckdb.BinderException("no such column")
    assert conns._dbs["dashboard"] is kept
    with pytest.raises(QueryFailed), conns.connection(30.0, "dashboard"):
        raise QueryFailed("invalidated") from duckdb.FatalException("database invalidated")
    assert "dashboard" not in conns._dbs
    with conns.connection(30.0, "dashboard") as con:
        assert con.execute("SELECT 1").fetchall() == first
    assert conns._dbs["dashboard"] is not kept
