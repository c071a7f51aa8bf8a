"""The speed driver's bookkeeping: slices, the store transaction, expiry at the horizon.

Why: the exactness contract lives here. Whatever the batch horizon does (advance into
the middle of a slice, jump past everything, roll back), the committed partials must
cover exactly the offsets ``[horizon, position)``, each once. The engine is a fake
that records which events it saw (this tests our bookkeeping, not view math: the
Beam engine has its own conformance test).
"""

from __future__ import annotations

from pathlib import Path

import pyarrow as pa
import pytest

from loglambda.batch.versions import Horizon, VersionStore
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.schemas import Kind
from loglambda.speed.driver import DriverBusy, SpeedDriver
from loglambda.speed.store import RealtimeStore, SpeedState, StoreError
from tests.event_factory import log_events, traffic_events

pytestmark = pytest.mark.unit


class LinesSeen:
    """A fake engine: the 'partial' of a slice is the list of its source lines."""

    def __init__(self) -> None:
        self.calls = 0

    def compute(self, kind: Kind, events: pa.Table) -> dict[str, pa.Table]:
        self.calls += 1
        return {f"{kind}_lines": events.select(["source_line"])}


def covered(home: Path, partition: str = "traffic/0") -> list[int]:
    store = RealtimeStore(home)
    state = store.state()
    kind = partition.split("/")[0]
    lines: list[int] = []
    for p in state.of(partition):
        lines += store.read(p, f"{kind}_lines").column("source_line").to_pylist()
    return sorted(lines)


def publish(home: Path, **offsets: int) -> None:
    store = VersionStore(home)
    pending = store.begin()
    horizon = Horizon(0, {k.replace("_", "/"): v for k, v in offsets.items()})
    store.publish(pending, horizon=horizon, engine="test", duration_s=0.0)


def test_slices_cover_every_event_once_and_position_is_committed(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(250))
    log.append("logs", log_events(20))
    driver = SpeedDriver(tmp_path, log, LinesSeen(), max_events=100)
    with driver.session():
        assert driver.drain() == 270
        log.append("traffic", traffic_events(30, first=250))
        assert driver.drain() == 30
        state = driver.state
    assert [(p.start, p.end) for p in state.of("traffic/0")] == [
        (0, 100), (100, 200), (200, 250), (250, 280),
    ]  # fmt: skip
    assert covered(tmp_path) == list(range(280))
    assert covered(tmp_path, "logs/0") == list(range(20))
    assert log.committed("speed", "traffic/0") == 280
    # Restart: the state comes back from disk, nothing is recomputed.
    engine = LinesSeen()
    with SpeedDriver(tmp_path, LocalEventLog(tmp_path), engine).session() as again:
        assert again.drain() == 0
    assert engine.calls == 0


def test_horizon_inside_a_slice_recuts_it_exactly(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(300))
    driver = SpeedDriver(tmp_path, log, LinesSeen(), max_events=100)
    with driver.session():
        driver.drain()
        publish(tmp_path, traffic_0=150)  # the batch now covers offsets < 150
        assert driver.apply_horizon()
        state = driver.state
    assert [(p.start, p.end) for p in state.of("traffic/0")] == [(150, 200), (200, 300)]
    assert covered(tmp_path) == list(range(150, 300))
    assert state.batch_version == 1
    # The dropped and re-cut partials' files are gone.
    dirs = sorted(p.name for p in (tmp_path / "realtime/parts/traffic-0").iterdir())
    assert dirs == ["00000000000000000150-00000000000000000200",
                    "00000000000000000200-00000000000000000300"]  # fmt: skip


def test_horizon_past_the_position_skips_what_the_batch_covers(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(300))
    publish(tmp_path, traffic_0=250)
    driver = SpeedDriver(tmp_path, log, LinesSeen(), max_events=100)
    with driver.session():
        assert driver.drain() == 50  # only [250, 300): the batch has the rest
    assert covered(tmp_path) == list(range(250, 300))


def test_rollback_to_a_lower_horizon_recomputes_the_gap(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(300))
    publish(tmp_path, traffic_0=100)
    publish(tmp_path, traffic_0=200)
    driver = SpeedDriver(tmp_path, log, LinesSeen(), max_events=1000)
    with driver.session():
        driver.drain()
        assert covered(tmp_path) == list(range(200, 300))
        VersionStore(tmp_path).rollback()  # back to version 1, horizon 100
        assert driver.apply_horizon()
    assert covered(tmp_path) == list(range(100, 300))


def test_random_interleavings_keep_partials_exact(tmp_path: Path) -> None:
    import random

    rng = random.Random(5)
    log = LocalEventLog(tmp_path)
    appended = 0
    horizon = 0
    for _round in range(6):
        driver = SpeedDriver(tmp_path, LocalEventLog(tmp_path), LinesSeen(), max_events=37)
        with driver.session():  # a restart every round
            for _ in range(8):
                action = rng.choice(["append", "append", "step", "publish"])
                if action == "append":
                    n = rng.randint(1, 60)
                    log.append("traffic", traffic_events(n, first=appended))
                    appended += n
                elif action == "step":
                    driver.apply_horizon()
                    driver.step("traffic/0")
                else:
                    horizon = rng.randint(horizon, appended)
                    publish(tmp_path, traffic_0=horizon)
                driver.apply_horizon()
                state = driver.state
                position = state.positions.get("traffic/0", 0)
                assert covered(tmp_path) == list(range(horizon, max(horizon, position)))


def test_store_refuses_a_state_with_a_gap(tmp_path: Path) -> None:
    store = RealtimeStore(tmp_path)
    a = store.write_partial("traffic/0", 0, 10, {})
    c = store.write_partial("traffic/0", 20, 30, {})
    with pytest.raises(StoreError, match="do not meet"):
        store.commit(SpeedState(positions={"traffic/0": 30}, partials=(a, c)))
    assert store.state().generation == 0  # nothing committed


def test_second_driver_is_refused(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    with (
        SpeedDriver(tmp_path, log, LinesSeen()).session(),
        pytest.raises(DriverBusy),
        SpeedDriver(tmp_path, log, LinesSeen()).session(),
    ):
        pass


def test_unlisted_partial_from_a_crash_is_removed_on_start(tmp_path: Path) -> None:
    log = LocalEventLog(tmp_path)
    log.append("traffic", traffic_events(10))
    store = RealtimeStore(tmp_path)
    orphan = store.write_partial("traffic/0", 0, 10, {"x": pa.table({"a": [1]})})
    assert (tmp_path / "realtime" / orphan.path).is_dir()
    with SpeedDriver(tmp_path, log, LinesSeen()).session() as driver:
        assert not (tmp_path / "realtime" / orphan.path).exists()
        assert driver.drain() == 10  # replayed under the same name
    assert covered(tmp_path) == list(range(10))
