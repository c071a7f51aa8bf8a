"""Speed layer: freshness under sustained load, catch-up on a backlog, peak memory.

    python bench/speed_bench.py [--duration 120] [--rates 5000,20000,50000]
                                [--backlog 2000000] [--events 300000] [--batch-ms 50]
                                [--warmup 10] [--engine beam] [--max-events N] [--poll S]
                                [--floor-slices 40] [--keep DIR]

Four processes per phase, so that nothing measured shares an interpreter:

- **writer** (this script, ``_writer``): appends combined-log events (generated once with
  ``loglambda generate``, parsed once, cycled) to the local event log at a fixed rate,
  one batch every ``--batch-ms``, each stamped with the wall clock; records each
  batch's offsets and the time its append was acknowledged;
- **driver**: the real ``loglambda speed`` (Beam engine by default) on that home;
- **reader** (``_reader``): polls ``realtime/STATE`` every 5 ms and records when each
  speed position became visible (the commit that lists a partial is what makes it
  visible, so this is "durable and listed"; detection adds at most the poll interval);
- this process: orchestrates, then computes per-event freshness = time the position
  passed the event's offset - time its append was acknowledged, over the events
  appended after ``--warmup`` seconds.

Phases: each rate of ``--rates`` for ``--duration`` seconds (plus warm-up) on a fresh
home; then catch-up: ``--backlog`` events appended first (stamped as if they had
arrived at 20k events/s), the driver started, timed from ready (its banner, after
Beam is imported and the engine built) to the reader seeing the last offset; start-up
is printed separately. Peak RSS is the driver's ``VmHWM`` in each phase.

Floor, in the same run, on the very slices the driver committed (up to
``--floor-slices`` per phase, evenly spaced; all of them for catch-up), computed in this
process one after the other: ``BeamSliceEngine`` (what the driver runs),
``DuckDBSliceEngine`` (the same compiler without Beam: Beam's overhead ratio) and plain
pyarrow ``group_by`` per view (see ``pyarrow_floor`` for what it covers).

Targets (issue #5, 2 cores): p99 freshness <= 1.5 s at 20k events/s, catch-up >=
200,000 events/s, peak RSS <= 600 MB.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import numpy as np
import numpy.typing as npt
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.catalog import STANDARD_CATALOG, WINDOW_COLUMN, View
from loglambda.core.derived import derived
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.lines import split_block
from loglambda.core.parsers import get_parser
from loglambda.core.schemas import schema_for

BIN = Path(sys.executable).parent
PARTITION = "traffic/0"
TARGET_P99_S = 1.5
TARGET_RATE = 20_000
TARGET_CATCHUP = 200_000.0
TARGET_RSS_MB = 600.0
BACKLOG_RATE = 20_000  # events/s the backlog is stamped as having arrived at
READER_POLL_S = 0.005


# -- the events ----------------------------------------------------------------------


def parse_log(path: Path) -> pa.Table:
    """Parse a generated combined log once (the writer only re-stamps and cycles)."""
    block = split_block(path.read_bytes(), source=path.name, base_offset=0, base_line=1)
    return get_parser("combined").parse(block).events


def take_cycled(events: pa.Table, at: int, n: int) -> pa.Table:
    """``n`` rows from row ``at`` on, wrapping around the end."""
    at %= events.num_rows
    parts = []
    while n > 0:
        piece = events.slice(at, n)
        parts.append(piece)
        n -= piece.num_rows
        at = 0
    return pa.concat_tables(parts)


def stamped(events: pa.Table, ts_us: npt.NDArray[np.int64]) -> pa.Table:
    ts_field = events.schema.field("ts")
    return events.set_column(0, ts_field, pa.array(ts_us, pa.int64()).cast(ts_field.type))


# -- the writer and reader processes -------------------------------------------------


def writer_main(
    home: Path, events_path: Path, rate: float, seconds: float, batch_s: float, out: Path
) -> None:
    """Append ``rate`` events/s for ``seconds``, one batch per ``batch_s`` tick."""
    with pa.memory_map(str(events_path)) as source:
        events = pa.ipc.open_file(source).read_all()
    log = LocalEventLog(home)
    starts: list[int] = []
    ends: list[int] = []
    acks: list[float] = []
    appended = 0
    t0 = time.time()
    tick = t0
    while True:
        now = time.time()
        if now - t0 >= seconds:
            break
        due = int(rate * (now - t0)) - appended
        if due > 0:
            batch = take_cycled(events, appended, due)
            # Stamped at append time: event time and arrival are the same instant.
            batch = stamped(batch, np.full(due, int(now * 1e6), dtype=np.int64))
            (written,) = log.append("traffic", batch)
            acks.append(time.time())
            starts.append(written.start)
            ends.append(written.end)
            appended += due
        tick += batch_s
        time.sleep(max(0.0, tick - time.time()))
    np.savez(out, start=np.array(starts), end=np.array(ends), ack=np.array(acks), t0=t0)


_stop: list[int] = []


def _on_signal(signum: int, _frame: FrameType | None) -> None:
    _stop.append(signum)


def reader_main(home: Path, out: Path) -> None:
    """Record (position, time first seen) each time the committed position moves."""
    signal.signal(signal.SIGTERM, _on_signal)
    state = home / "realtime" / "STATE"
    seen: tuple[int, int] | None = None
    positions: list[int] = []
    times: list[float] = []
    last = -1
    while not _stop:
        try:
            st = os.stat(state)
        except FileNotFoundError:
            time.sleep(READER_POLL_S)
            continue
        # The store replaces STATE by rename: a new inode is a new commit.
        if (st.st_ino, st.st_mtime_ns) != seen:
            seen = (st.st_ino, st.st_mtime_ns)
            now = time.time()
            try:
                pos = int(json.loads(state.read_bytes())["positions"].get(PARTITION, 0))
            except FileNotFoundError:
                continue
            if pos != last:
                positions.append(pos)
                times.append(now)
                last = pos
        time.sleep(READER_POLL_S)
    np.savez(out, pos=np.array(positions, dtype=np.int64), t=np.array(times))


# -- the orchestrator ------------------------------------------------------------------


@dataclass
class Driver:
    """A running ``loglambda speed`` process."""

    proc: subprocess.Popen[bytes]
    stderr: Path
    spawned: float
    ready: float = 0.0

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.time() + timeout
        while b"following" not in self.stderr.read_bytes():
            if self.proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"speed driver did not start: {self.stderr.read_text()}")
            time.sleep(0.01)
        self.ready = time.time()

    def status(self) -> dict[str, str]:
        lines = Path(f"/proc/{self.proc.pid}/status").read_text().splitlines()
        return dict(line.split(":", 1) for line in lines if ":" in line)

    def peak_rss_mb(self) -> float:
        return int(self.status()["VmHWM"].split()[0]) / 1024

    def cpu_s(self) -> float:
        fields = Path(f"/proc/{self.proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(120)


def start_driver(home: Path, args: argparse.Namespace) -> Driver:
    cmd = [str(BIN / "loglambda"), "speed", "--home", str(home), "--engine", args.engine]
    if args.max_events:
        cmd += ["--max-events", str(args.max_events)]
    if args.poll:
        cmd += ["--poll", str(args.poll)]
    err = home / "driver.stderr"
    with open(err, "wb") as fh:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=fh)
    return Driver(proc, err, time.time())


def start_self(*args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, __file__, *args])


def ended(proc: subprocess.Popen[bytes]) -> None:
    """Kill a child this script started if it still runs (its phase failed)."""
    if proc.poll() is None:
        proc.kill()
        proc.wait(30)


def wait_position(home: Path, end: int, timeout: float) -> None:
    """Until ``STATE`` lists ``end`` as the position (or ``timeout``)."""
    deadline = time.time() + timeout
    state = home / "realtime" / "STATE"
    while time.time() < deadline:
        try:
            if json.loads(state.read_bytes())["positions"].get(PARTITION, 0) >= end:
                return
        except FileNotFoundError:
            pass
        time.sleep(0.05)
    raise RuntimeError(f"driver did not reach offset {end} within {timeout:.0f} s")


def committed_slices(home: Path) -> list[tuple[int, int]]:
    state = json.loads((home / "realtime" / "STATE").read_bytes())
    return sorted((p["start"], p["end"]) for p in state["partials"] if p["partition"] == PARTITION)


def visible_at(reader: Path, offsets: npt.NDArray[np.int64]) -> npt.NDArray[np.float64]:
    """When the committed position first passed each offset (NaN: never)."""
    seen = np.load(reader)
    pos, t = seen["pos"], seen["t"]
    at = np.searchsorted(pos, offsets, side="right")
    out = np.full(len(offsets), np.nan)
    ok = at < len(pos)
    out[ok] = t[at[ok]]
    return out


@dataclass
class Phase:
    """What one phase measured."""

    name: str
    events: int = 0
    seconds: float = 0.0
    p50: float = float("nan")
    p99: float = float("nan")
    worst: float = float("nan")
    rss_mb: float = 0.0
    cpu_s: float = 0.0
    slices: list[tuple[int, int]] = field(default_factory=list)
    run_stats: dict[str, Any] = field(default_factory=dict)
    floor: dict[str, float] = field(default_factory=dict)


def run_rate(work: Path, events_path: Path, rate: int, args: argparse.Namespace) -> Phase:
    home = work / f"rate-{rate}"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    LocalEventLog(home)
    with contextlib.ExitStack() as children:
        driver = start_driver(home, args)
        children.callback(ended, driver.proc)
        driver.wait_ready()
        reader = start_self("_reader", str(home), str(home / "reader.npz"))
        children.callback(ended, reader)
        writer = start_self(
            "_writer",
            str(home),
            str(events_path),
            str(rate),
            str(args.warmup + args.duration),
            str(args.batch_ms / 1000),
            str(home / "writer.npz"),
        )
        children.callback(ended, writer)
        cpu0 = driver.cpu_s()
        if writer.wait() != 0:
            raise RuntimeError("writer failed")
        wrote = np.load(home / "writer.npz")
        wait_position(home, int(wrote["end"][-1]), timeout=120)
        time.sleep(0.05)
        reader.send_signal(signal.SIGTERM)
        reader.wait(30)
        rss, cpu = driver.peak_rss_mb(), driver.cpu_s() - cpu0
        driver.stop()
    phase = Phase(f"{rate // 1000}k", rss_mb=rss, cpu_s=cpu)
    phase.run_stats = json.loads((home / "run" / "speed.json").read_bytes())

    # Per-event freshness over the batches acknowledged after the warm-up.
    starts, ends, acks = wrote["start"], wrote["end"], wrote["ack"]
    keep = acks >= float(wrote["t0"]) + args.warmup
    counts = ends[keep] - starts[keep]
    offsets = np.concatenate(
        [np.arange(a, b) for a, b in zip(starts[keep], ends[keep], strict=True)]
    )
    fresh = visible_at(home / "reader.npz", offsets) - np.repeat(acks[keep], counts)
    if np.isnan(fresh).any():
        raise RuntimeError(f"{int(np.isnan(fresh).sum())} events never became visible")
    phase.events = int(counts.sum())
    phase.seconds = float(acks[keep][-1] - acks[keep][0])
    phase.p50, phase.p99 = (float(v) for v in np.quantile(fresh, [0.5, 0.99]))
    phase.worst = float(fresh.max())
    phase.slices = committed_slices(home)
    return phase


def run_catchup(work: Path, events: pa.Table, args: argparse.Namespace) -> Phase:
    home = work / "catchup"
    shutil.rmtree(home, ignore_errors=True)
    home.mkdir(parents=True)
    log = LocalEventLog(home)
    batch = 10_000
    now_us = int(time.time() * 1e6)
    t0 = time.perf_counter()
    for at in range(0, args.backlog, batch):
        n = min(batch, args.backlog - at)
        ts = now_us - ((args.backlog - at - np.arange(n)) * 1e6 / BACKLOG_RATE).astype(np.int64)
        log.append("traffic", stamped(take_cycled(events, at, n), ts))
    print(
        f"catch-up: appended a backlog of {args.backlog:,} events in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    with contextlib.ExitStack() as children:
        reader = start_self("_reader", str(home), str(home / "reader.npz"))
        children.callback(ended, reader)
        driver = start_driver(home, args)
        children.callback(ended, driver.proc)
        driver.wait_ready()
        cpu0 = driver.cpu_s()
        wait_position(home, args.backlog, timeout=600)
        done = time.time()
        phase = Phase("catch-up", rss_mb=driver.peak_rss_mb(), cpu_s=driver.cpu_s() - cpu0)
        reader.send_signal(signal.SIGTERM)
        reader.wait(30)
        driver.stop()
    seen = np.load(home / "reader.npz")
    done = float(seen["t"][-1]) if len(seen["t"]) else done
    phase.events = args.backlog
    phase.seconds = done - driver.ready
    phase.run_stats = json.loads((home / "run" / "speed.json").read_bytes())
    phase.run_stats["startup_s"] = driver.ready - driver.spawned
    phase.slices = committed_slices(home)
    return phase


# -- the floor -------------------------------------------------------------------------


def _raw_inputs(kind: str, name: str) -> list[str]:
    """The event columns a column or derived value is computed from."""
    entry = derived(kind, name)  # type: ignore[arg-type]
    if entry is None:
        return [name]
    return [c for i in entry.inputs for c in _raw_inputs(kind, i)]


def pyarrow_floor(views: list[View], events: pa.Table) -> int:
    """Per view, one pyarrow ``group_by`` over the slice: the window (``floor_temporal``
    of ``ts`` by the view's grain; ``hour`` for ``hour_of_day``) and the *raw input
    columns* of every other dimension (``path`` for route, ``path, query`` for request,
    ``user_agent`` for browser and OS, ``referrer`` for the referring site, ``status``
    for the status class), with count/sum/min/max of the exact measures on their raw
    columns and ``count_distinct`` of ``client_ip`` for unique visitors.

    Not covered: derived values (route folding, URL decoding, static detection,
    ua-parser families), the views' filters, HLL sketches, latency histograms, sorting
    and output types. It is what the slices cost to group at all. Returns the rows.
    """
    rows = 0
    ts = events.column("ts")
    for view in views:
        table = events
        keys: list[str] = []
        if view.grain is not None:
            window = pc.floor_temporal(ts, unit=view.grain)
            table = table.append_column(WINDOW_COLUMN, window)
            keys.append(WINDOW_COLUMN)
        for dim in view.dimensions:
            if dim.source == "hour_of_day":
                table = table.append_column("_hour_of_day", pc.hour(ts))
                keys.append("_hour_of_day")
            elif dim.source != "is_static":
                keys += [c for c in _raw_inputs(view.kind, dim.source) if c not in keys]
        aggs: list[tuple[str, str]] = []
        for m in view.measures:
            if m.agg == "count":
                aggs.append(
                    ("ts" if m.column is None else _raw_inputs(view.kind, m.column)[0], "count")
                )
            elif m.agg in ("sum", "min", "max"):
                assert m.column is not None
                aggs.append((_raw_inputs(view.kind, m.column)[0], m.agg))
            elif m.agg == "distinct":
                aggs.append(("client_ip", "count_distinct"))
        rows += table.group_by(keys, use_threads=False).aggregate(aggs).num_rows
    return rows


def run_floor(home: Path, phase: Phase, limit: int) -> None:
    """Time Beam, DuckDB and pyarrow on (a sample of) the phase's committed slices."""
    from loglambda.speed.cli import DuckDBSliceEngine, make_engine

    slices = phase.slices
    if limit and len(slices) > limit:
        picks = np.linspace(0, len(slices) - 1, limit).round().astype(int)
        slices = [slices[i] for i in sorted(set(picks.tolist()))]
    log = LocalEventLog(home)
    views = [v for v in STANDARD_CATALOG.values() if v.kind == "traffic"]
    beam = make_engine("beam")
    duck = DuckDBSliceEngine()
    timings: dict[str, float] = {"beam": 0.0, "duckdb": 0.0, "pyarrow": 0.0}
    runs: dict[str, Callable[[pa.Table], object]] = {
        "beam": lambda t: beam.compute("traffic", t),
        "duckdb": lambda t: duck.compute("traffic", t),
        "pyarrow": lambda t: pyarrow_floor(views, t),
    }
    first = log.read("traffic", PARTITION, slices[0][0], slices[0][1] - slices[0][0]).events
    for run in runs.values():
        run(first)  # warm: engine build, first compile, first ua-parser lookups
    events = 0
    for a, b in slices:
        piece = log.read("traffic", PARTITION, a, b - a).events
        events += piece.num_rows
        for name, run in runs.items():
            t0 = time.perf_counter()
            run(piece)
            timings[name] += time.perf_counter() - t0
    timings["slices"] = len(slices)
    timings["events"] = events
    phase.floor = timings


# -- report ----------------------------------------------------------------------------


def report(phase: Phase) -> None:
    stats = phase.run_stats
    sizes = np.array([b - a for a, b in phase.slices]) if phase.slices else np.zeros(1)
    print(
        f"{phase.name}: {phase.events:,} events in {phase.seconds:.1f} s "
        f"({phase.events / max(phase.seconds, 1e-9):,.0f} events/s); "
        f"{len(phase.slices)} slices, median {int(np.median(sizes)):,} events; "
        f"driver slice p50 {stats.get('slice_ms_p50')} ms p99 {stats.get('slice_ms_p99')} ms "
        f"(last 200); driver CPU {phase.cpu_s:.1f} s; peak RSS {phase.rss_mb:.0f} MB"
    )
    if phase.name != "catch-up":
        print(
            f"{phase.name}: freshness p50 {phase.p50:.3f} s, p99 {phase.p99:.3f} s, "
            f"max {phase.worst:.3f} s"
        )
    f = phase.floor
    if f:
        n, ev = int(f["slices"]), int(f["events"])
        print(
            f"{phase.name} floor over {n} slices ({ev:,} events), compute only: "
            f"beam {f['beam']:.2f} s ({ev / f['beam']:,.0f} events/s), "
            f"duckdb {f['duckdb']:.2f} s, pyarrow {f['pyarrow']:.2f} s; "
            f"beam / duckdb = {f['beam'] / f['duckdb']:.2f}x, "
            f"beam / pyarrow = {f['beam'] / f['pyarrow']:.1f}x"
        )


def verdict(ok: bool) -> str:
    return "PASS" if ok else "FAIL"


def main() -> int:
    if len(sys.argv) > 1 and sys.argv[1] == "_writer":
        home, path, rate, seconds, batch_s, out = sys.argv[2:8]
        writer_main(Path(home), Path(path), float(rate), float(seconds), float(batch_s), Path(out))
        return 0
    if len(sys.argv) > 1 and sys.argv[1] == "_reader":
        reader_main(Path(sys.argv[2]), Path(sys.argv[3]))
        return 0
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--duration", type=float, default=120.0, help="measured seconds per rate")
    ap.add_argument("--warmup", type=float, default=10.0, help="seconds before measuring")
    ap.add_argument("--rates", default="5000,20000,50000", help="events/s, comma-separated")
    ap.add_argument("--backlog", type=int, default=2_000_000, help="catch-up events (0 skips)")
    ap.add_argument("--events", type=int, default=300_000, help="distinct generated lines")
    ap.add_argument("--batch-ms", type=float, default=50.0, help="writer append interval")
    ap.add_argument("--engine", default="beam", choices=["beam", "duckdb"])
    ap.add_argument("--max-events", type=int, default=0, help="driver --max-events (0: default)")
    ap.add_argument("--poll", type=float, default=0.0, help="driver --poll (0: default)")
    ap.add_argument("--floor-slices", type=int, default=40, help="slices per rate for the floor")
    ap.add_argument("--keep", type=Path, default=None, help="work dir to keep (default: temp)")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR, force=True)  # Beam's "apitools" warning

    work = args.keep or Path(tempfile.mkdtemp(prefix="speed-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    source = work / "access.log"
    if not source.exists():
        subprocess.run(
            [
                str(BIN / "loglambda"),
                "generate",
                str(source),
                "--lines",
                str(args.events),
                "--malformed-share",
                "0",
                "--late-share",
                "0",
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
    events = parse_log(source)
    assert events.schema.equals(schema_for("traffic"))
    events_path = work / "events.arrow"
    with pa.OSFile(str(events_path), "wb") as sink, pa.ipc.new_file(sink, events.schema) as ipc:
        ipc.write_table(events)
    load = " ".join(f"{v:.2f}" for v in os.getloadavg())
    print(f"events: {events.num_rows:,} distinct generated lines, cycled; load average {load}")

    phases: list[Phase] = []
    for per_s in [int(r) for r in args.rates.split(",") if r]:
        phase = run_rate(work, events_path, per_s, args)
        run_floor(work / f"rate-{per_s}", phase, args.floor_slices)
        report(phase)
        phases.append(phase)
        if args.keep is None:
            shutil.rmtree(work / f"rate-{per_s}", ignore_errors=True)
    catchup = None
    if args.backlog:
        catchup = run_catchup(work, events, args)
        run_floor(work / "catchup", catchup, 0)
        report(catchup)
        startup = float(catchup.run_stats["startup_s"])
        print(
            f"catch-up: driver start-up (imports, engine) {startup:.1f} s, "
            f"from spawn to caught up {catchup.seconds + startup:.1f} s"
        )
        phases.append(catchup)
    print(f"load average at the end: {' '.join(f'{v:.2f}' for v in os.getloadavg())}")

    at_target = [p for p in phases if p.name == f"{TARGET_RATE // 1000}k"]
    if at_target:
        p99 = at_target[0].p99
        print(
            f"RESULT speed_freshness_p99_20k {p99:.3f} s target <= {TARGET_P99_S} "
            f"{verdict(p99 <= TARGET_P99_S)}"
        )
    if catchup is not None:
        caught = catchup.events / catchup.seconds
        print(
            f"RESULT speed_catchup {caught:.0f} events/s target >= {TARGET_CATCHUP:.0f} "
            f"{verdict(caught >= TARGET_CATCHUP)}"
        )
    rss = max(p.rss_mb for p in phases)
    print(
        f"RESULT speed_rss {rss:.0f} MB target <= {TARGET_RSS_MB:.0f} "
        f"{verdict(rss <= TARGET_RSS_MB)}"
    )
    if args.keep is None:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
