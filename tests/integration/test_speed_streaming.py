"""The streaming form's triggers and lateness, through TestStream on BundleBasedDirectRunner.

One minute of traffic (and an app log record) plays out against the watermark: an early
pane after processing time passes, the on-time pane at the window's end, a late event
within the allowed lateness updating the window (accumulating), and an event after it
closed diverted to the sink's rejects. The final upserted rows must be the batch
engine's over the events the window accepted. Plus the sinks' idempotence, and the
Kafka job's construction with a fake source in place of ``ReadFromKafka``.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import orjson
import pyarrow as pa
import pytest

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.core.catalog import STANDARD_CATALOG, CatalogError, View
from loglambda.core.schemas import LOGS_SCHEMA, TRAFFIC_SCHEMA
from loglambda.core.sketches import hll_estimate

pytestmark = pytest.mark.integration

MINUTE = 60_000_000
W = 1_800_000_000_000_000 - 1_800_000_000_000_000 % (3_600 * 1_000_000) + 10 * MINUTE
VIEWS = [STANDARD_CATALOG[n] for n in ("traffic_minute", "visitors_hour", "log_records_minute")]
AGENTS = ("Mozilla/5.0 (X11; Linux x86_64) Firefox/120.0", "curl/8.4.0")


def _hit(n: int, seconds: float) -> dict[str, Any]:
    return {
        "ts": W + int(seconds * 1_000_000), "host": "shop.example", "client_ip": f"10.0.0.{n}",
        "method": "GET", "path": f"/items/{n}", "query": None, "protocol": "HTTP/1.1",
        "status": 200 if n % 3 else 404, "bytes": 100 * n, "latency_ms": 1.5 * n,
        "referrer": None, "user_agent": AGENTS[n % 2],
        "source": "test", "source_line": n, "source_offset": 0,
    }  # fmt: skip


LOG = {
    "ts": W + 1_000_000, "service": "api", "level": "warn", "logger": "x", "message": "m",
    "trace_id": None, "attrs": None, "source": "test", "source_line": 99, "source_offset": 0,
}  # fmt: skip
HITS = [_hit(n, n + 1) for n in range(5)]  # e0..e4, one per second from W+1s


def _streaming_pipeline() -> Any:
    logging.basicConfig(force=True)  # importing Beam logs a warning on the root logger
    import apache_beam as beam
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions
    from apache_beam.runners.direct.direct_runner import BundleBasedDirectRunner

    options = PipelineOptions()
    options.view_as(StandardOptions).streaming = True
    return beam.Pipeline(runner=BundleBasedDirectRunner(), options=options)


def _batch(view: View, rows: list[dict[str, Any]]) -> pa.Table:
    schema = TRAFFIC_SCHEMA if view.kind == "traffic" else LOGS_SCHEMA
    with DuckDBEngine() as engine:
        return engine.compute_arrow([view], {view.kind: pa.Table.from_pylist(rows, schema)})[
            view.name
        ]


def _same(view: View, got: pa.Table, want: pa.Table, exact: bool) -> None:
    assert got.schema == want.schema
    if exact:
        assert got.equals(want), view.name
        return
    for field in want.schema:
        a, b = got.column(field.name), want.column(field.name)
        if field.type == pa.binary():
            assert [hll_estimate(x) for x in a.to_pylist()] == [
                hll_estimate(x) for x in b.to_pylist()
            ]
        else:
            assert a.equals(b), (view.name, field.name)


@pytest.mark.parametrize("exact", [False, True], ids=["sketches", "items"])
def test_early_on_time_late_and_too_late(exact: bool) -> None:
    from apache_beam.testing.test_stream import TestStream

    from loglambda.speed.sinks import MemorySink, WriteToSink
    from loglambda.speed.transform import ViewPartials

    sink = MemorySink(f"streaming-{exact}")
    sink.clear()
    seconds = W / 1e6
    stream = (
        TestStream()
        .advance_watermark_to(seconds)
        .add_elements([HITS[0], HITS[1], LOG])
        .advance_processing_time(30)  # > early_firing_s: early panes
        .add_elements([HITS[2]])
        .advance_watermark_to(seconds + 61)  # past the minute: on-time pane
        .add_elements([HITS[3]])  # late, within the 120 s allowed: a late pane
        .advance_watermark_to(seconds + 60 + 120 + 5)  # the minute window has closed
        .add_elements([HITS[4]])  # too late for the minute, on time for the hour
        .advance_watermark_to_infinity()
    )
    pipeline = _streaming_pipeline()
    outputs = (
        pipeline
        | stream
        | ViewPartials(
            VIEWS, streaming=True, early_firing_s=10, allowed_lateness_s=120, exact_sketches=exact
        )
    )
    _ = outputs | WriteToSink(sink)
    pipeline.run().wait_until_finish()

    minute = [p for p in sink.store.history if p.view == "traffic_minute"]
    assert [(p.window_start, p.index, p.timing) for p in minute] == [
        (W, 0, "EARLY"),
        (W, 1, "ON_TIME"),
        (W, 2, "LATE"),
    ]
    # Accumulating: every pane is the window's whole value so far.
    assert [sum(p.rows.column("requests").to_pylist()) for p in minute] == [2, 3, 4]
    # Counted where it can be read back: the sink's rejects (and the Beam counter
    # loglambda.speed/too_late_events on runners that report metrics reliably).
    assert [(r, e["ts"]) for r, e in sink.store.rejected] == [
        ("too_late-traffic-minute", HITS[4]["ts"])
    ]
    hour = [p for p in sink.store.history if p.view == "visitors_hour"]
    assert hour[0].timing == "EARLY" and hour[-1].timing == "ON_TIME"
    logs = [p.timing for p in sink.store.history if p.view == "log_records_minute"]
    assert logs == ["EARLY", "ON_TIME"]

    expected = {
        "traffic_minute": HITS[:4],  # the on-time and allowed-late events
        "visitors_hour": HITS,  # the hour window had not closed for e4
        "log_records_minute": [LOG],
    }
    for view in VIEWS:
        _same(view, sink.table(view), _batch(view, expected[view.name]), exact)


def test_sinks_keep_the_newest_pane_and_replays_are_idempotent(tmp_path: Path) -> None:
    from loglambda.speed.sinks import DirectorySink, MemorySink, Pane

    view = STANDARD_CATALOG["traffic_minute"]
    two, three = _batch(view, HITS[:2]), _batch(view, HITS[:3])
    newer = Pane(view.name, W, 0, 1, "ON_TIME", False, three)
    older = Pane(view.name, W, 0, 0, "EARLY", False, two)
    memory = MemorySink("idempotence")
    memory.clear()
    for sink in (memory, DirectorySink(tmp_path)):
        for pane in (older, newer, older, newer):  # a retried, stale pane arrives late
            sink.upsert(pane)
        assert sink.table(view).equals(three)
    assert len(list((tmp_path / view.name).glob("*.parquet"))) == 1


def test_a_view_without_grain_cannot_stream() -> None:
    from loglambda.speed.streaming import StreamingViews

    flat = View("flat", "traffic", None, (), STANDARD_CATALOG["visitors_day"].measures)
    with pytest.raises(CatalogError, match="view 'flat' has no grain"):
        StreamingViews([flat])


def test_the_kafka_job_runs_with_a_fake_source(tmp_path: Path) -> None:
    """``main`` as the README runs it, ``ReadFromKafka`` replaced by a TestStream."""
    from apache_beam.testing.test_stream import TestStream

    from loglambda.speed.sinks import DirectorySink
    from loglambda.speed.streaming_job import main

    records = [orjson.dumps(h) for h in HITS[:3]]
    records += [b"not json", orjson.dumps({**HITS[3], "client_ip": None})]
    topics = []

    def fake(pipeline: Any, kind: str, topic: str) -> Any:
        topics.append(topic)
        stream = TestStream().add_elements(records).advance_watermark_to_infinity()
        return pipeline | f"Fake {topic}" >> stream

    argv = ["--sink_dir", str(tmp_path), "--views", "traffic_minute", "--topic_prefix", "t."]
    assert main([*argv, "--runner", "BundleBasedDirectRunner"], source=fake) == 0
    assert topics == ["t.traffic"]
    view = STANDARD_CATALOG["traffic_minute"]
    _same(view, DirectorySink(tmp_path).table(view), _batch(view, HITS[:3]), exact=False)
    rejected = sorted((tmp_path / "_rejected" / "malformed-traffic").glob("*.json"))
    assert len(rejected) == 2


def test_the_kafka_job_needs_a_named_runner(tmp_path: Path) -> None:
    from loglambda.speed.streaming_job import main

    with pytest.raises(SystemExit) as help_exit:
        main(["--help"])
    assert help_exit.value.code == 0
    with pytest.raises(SystemExit, match="name a runner"):
        main(["--sink_dir", str(tmp_path)])
