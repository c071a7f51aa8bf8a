"""The exactness contract, property-based: batch ⊕ speed == recompute from scratch.

Why: this is the product's promise (DESIGN.md). Hypothesis draws random interleavings
of appends (with out-of-order and very late events), speed slices, master writes,
batch publishes and speed restarts. After every step, the serving merge of the batch
version and the unexpired partials must equal the views recomputed from scratch by the
batch engine over exactly the events the answer claims to cover (offsets below the
served position): exact measures equal, histograms equal bucket for bucket, unique
counts within the HLL's error.

Real parts: the event log on disk, the master writer, ``run_batch`` on DuckDB, and the
Beam speed engine on one reused FnApiRunner. A subset of the catalog keeps each
example fast while covering every aggregation (count, filtered count, sum, min, max,
quantiles, distinct) and both record kinds.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.batch.master_writer import MasterWriter
from loglambda.batch.recompute import run_batch
from loglambda.core.catalog import STANDARD_CATALOG, View
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.sketches.hll import hll_estimate
from loglambda.serving.merge import merged_view, snapshot
from loglambda.speed.driver import SpeedDriver
from tests.event_factory import log_events, traffic_events

pytestmark = [pytest.mark.integration, pytest.mark.slow]

VIEWS: dict[str, View] = {
    n: STANDARD_CATALOG[n]
    for n in ("traffic_minute", "visitors_day", "status_codes", "log_records_minute")
}
DAY_US = 86_400_000_000
HLL_REL_ERROR = 0.02  # lg_k 12: ~1.6 % standard error; small counts are near exact


@pytest.fixture(scope="module")
def beam_engine() -> Any:
    from loglambda.speed.transform import BeamSliceEngine

    return BeamSliceEngine(VIEWS)  # one FnApiRunner for every example


def late(table: pa.Table, days: int) -> pa.Table:
    """The same events, ``days`` earlier in event time (arriving very late)."""
    ts = table.column("ts")
    shifted = pc.subtract(ts.cast(pa.int64()), days * DAY_US).cast(ts.type)
    return table.set_column(table.schema.get_field_index("ts"), "ts", shifted)


Op = tuple[Any, ...]
_BUILD: dict[str, st.SearchStrategy[Op]] = {
    "append": st.tuples(st.just("append"), st.integers(1, 120), st.sampled_from([0, 0, 1, 9])),
    "logs": st.tuples(st.just("logs"), st.integers(1, 40)),
    "speed": st.tuples(st.just("speed")),
    "master": st.tuples(st.just("master"), st.integers(1, 150)),
    "batch": st.tuples(st.just("batch")),
    "restart": st.tuples(st.just("restart")),
}
# Weighted so that the interesting interleavings (a horizon landing inside a speed
# slice, a speed layer behind the batch, restarts between) are common, not lucky.
_WEIGHTS = ["append"] * 4 + ["speed"] * 3 + ["master"] * 3 + ["batch"] * 2 + ["logs", "restart"]
OPS = st.lists(st.sampled_from(_WEIGHTS).flatmap(lambda k: _BUILD[k]), min_size=6, max_size=22)


class World:
    """One data home and the processes acting on it."""

    def __init__(self, home: Path, engine: Any) -> None:
        self.home = home
        self.log = LocalEventLog(home, fsync="never")
        self.engine = engine
        self.lines = {"traffic": 0, "logs": 0}
        self.driver = SpeedDriver(home, self.log, engine, max_events=97)
        self._session = self.driver.session()
        self._session.__enter__()

    def close(self) -> None:
        self._session.__exit__(None, None, None)

    def apply(self, op: Op) -> None:
        name = op[0]
        if name == "append":
            events = traffic_events(op[1], first=self.lines["traffic"], source="exact")
            self.log.append("traffic", late(events, op[2]) if op[2] else events)
            self.lines["traffic"] += op[1]
        elif name == "logs":
            self.log.append("logs", log_events(op[1], first=self.lines["logs"], source="exact"))
            self.lines["logs"] += op[1]
        elif name == "speed":
            self.driver.apply_horizon()
            for partition in ("traffic/0", "logs/0"):
                self.driver.step(partition)
        elif name == "master":
            with MasterWriter(self.home, self.log, max_events=op[1]).session() as writer:
                writer.step("traffic/0")
                writer.step("logs/0")
        elif name == "batch":
            run_batch(self.home, catalog=VIEWS)
        elif name == "restart":
            self.close()
            self.driver = SpeedDriver(
                self.home, LocalEventLog(self.home), self.engine, max_events=97
            )
            self._session = self.driver.session()
            self._session.__enter__()

    def check(self) -> None:
        snap = snapshot(self.home, self.log)
        covered = snap.freshness.positions
        with DuckDBEngine(threads=1) as engine:
            for view in VIEWS.values():
                partition = f"{view.kind}/0"
                upto = covered.get(partition, 0)
                events = self.log.read(view.kind, partition, 0, upto).events  # type: ignore[arg-type]
                expected = engine.compute_arrow([view], {view.kind: events})[view.name]
                got = merged_view(snap, view)
                assert_same_view(view, got, expected)


def assert_same_view(view: View, got: pa.Table, expected: pa.Table) -> None:
    keys = list(view.key_columns)
    assert got.column_names == expected.column_names
    assert got.select(keys).equals(expected.select(keys)), f"{view.name}: keys differ"
    for m in view.measures:
        a, b = got.column(m.name).to_pylist(), expected.column(m.name).to_pylist()
        if m.agg == "distinct":
            for x, y in zip(a, b, strict=True):
                ex, ey = hll_estimate(x), hll_estimate(y)
                assert abs(ex - ey) <= HLL_REL_ERROR * ey + 1e-9, f"{view.name}.{m.name}"
        elif m.agg == "quantiles":
            norm = [[(e["key"], e["count"]) for e in h] for h in a]
            assert norm == [[(e["key"], e["count"]) for e in h] for h in b], f"{view.name}.{m.name}"
        else:
            assert a == b, f"{view.name}.{m.name} differs"


@settings(
    max_examples=15,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(ops=OPS)
def test_exact_batch_plus_speed_equals_recompute_after_every_step(
    beam_engine: Any, ops: list[Op]
) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        world = World(Path(tmp) / "home", beam_engine)
        try:
            world.check()
            for op in [*ops, ("speed",), ("master", 10_000), ("batch",), ("speed",)]:
                world.apply(op)
                world.check()
            # After the closing steps everything appended is covered: nothing was lost.
            snap = snapshot(world.home, world.log)
            assert snap.freshness.lag == {"traffic/0": 0, "logs/0": 0}
        finally:
            world.close()
