"""The streaming speed job at scale: Kafka topics → ``StreamingViews`` → upsert sink.

Run on a Flink cluster (see README, "Speed layer at scale")::

    python -m loglambda.speed.streaming_job --sink_dir /shared/loglambda/realtime-stream \\
        --kafka_bootstrap kafka:9092 \\
        --runner FlinkRunner --flink_master flink-jobmanager:8081 \\
        --environment_type LOOPBACK

Flags this module does not know go to Beam (``--runner``, ``--flink_master``,
``--environment_type``, ``--parallelism``...); ``--streaming`` is always on. A runner
must be named: Beam's default DirectRunner tries to download Prism and hangs offline.

What it reads: the Kafka event log's topics (``<prefix>traffic``, ``<prefix>logs``),
each record one event as the same JSON object as a line of the local log (``ts`` in
epoch µs), through Beam's cross-language ``ReadFromKafka`` (it starts a Java expansion
service at construction, hence the injectable ``source`` for tests), with Kafka's
CreateTime as the source watermark. Event time comes from ``ts``; events that trail the
watermark by more than the allowed lateness go to the sink's rejects, as do records
that are not events (``malformed``): nothing is dropped silently.
"""

# Beam's public API ships type hints but many of its functions are unannotated; calling
# them is the point of this module, so only that check is relaxed (defs stay strict).
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Final

import apache_beam as beam
import orjson
import pyarrow as pa
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput

from loglambda.core.catalog import STANDARD_CATALOG, View
from loglambda.core.schemas import Kind, schema_for
from loglambda.speed.sinks import DirectorySink, PartialSink, WriteToSink
from loglambda.speed.streaming import METRICS_NAMESPACE, StreamingConfig, StreamingViews

# (pipeline, kind, topic) -> PCollection of record values (bytes)
Source = Callable[[beam.Pipeline, Kind, str], PCollection[bytes]]
CONSUMER_GROUP: Final = "consumer.speed-stream"


class DecodeEvents(beam.DoFn):
    """A Kafka record value → an event dict, or ``malformed`` with the reason."""

    def __init__(self, kind: Kind) -> None:
        self.kind = kind
        self.malformed = Metrics.counter(METRICS_NAMESPACE, "malformed_records")

    def process(self, value: bytes) -> Iterator[Any]:
        try:
            event = orjson.loads(value)
            if not isinstance(event, dict):
                raise ValueError("not a JSON object")
            # One row through Arrow: exactly the conversion the combine will make later,
            # so a record that would fail it fails here, alone, instead of a whole pane.
            pa.Table.from_pylist([event], schema=schema_for(self.kind))
            if any(event.get(f.name) is None for f in schema_for(self.kind) if not f.nullable):
                raise ValueError("a required column is missing or null")
        except (ValueError, TypeError, pa.ArrowException) as err:
            self.malformed.inc()
            raw = value.decode("utf-8", "backslashreplace")[:2048]
            yield TaggedOutput("malformed", {"kind": self.kind, "error": str(err), "raw": raw})
            return
        yield event


class _RejectMalformed(beam.DoFn):
    def __init__(self, sink: PartialSink) -> None:
        self.sink = sink

    def process(self, record: dict[str, Any]) -> None:
        self.sink.reject(f"malformed-{record['kind']}", record)


def build_pipeline(
    pipeline: beam.Pipeline,
    views: Sequence[View],
    config: StreamingConfig,
    sink: PartialSink,
    source: Source,
    topic_prefix: str,
) -> None:
    """Per kind: source → decode → ``StreamingViews`` → sink (panes and rejects)."""
    for kind in dict.fromkeys(v.kind for v in views):
        topic = f"{topic_prefix}{kind}"
        decoded = source(pipeline, kind, topic) | f"Decode {kind}" >> beam.ParDo(
            DecodeEvents(kind)
        ).with_outputs("malformed", main="events")
        _ = decoded.malformed | f"Reject malformed {kind}" >> beam.ParDo(_RejectMalformed(sink))
        mine = [v for v in views if v.kind == kind]
        outputs = decoded.events | f"Views {kind}" >> StreamingViews(mine, config)
        _ = outputs | f"Write {kind}" >> WriteToSink(sink)


def kafka_source(bootstrap: str, topic_prefix: str) -> Source:
    """Records of the event log's Kafka topic, with CreateTime as the watermark."""

    def read(pipeline: beam.Pipeline, kind: Kind, topic: str) -> PCollection[bytes]:
        from apache_beam.io.kafka import ReadFromKafka

        consumer = {
            "bootstrap.servers": bootstrap,
            "group.id": f"{topic_prefix}{CONSUMER_GROUP}",
            "auto.offset.reset": "earliest",
        }
        records = pipeline | f"Read {topic}" >> ReadFromKafka(
            consumer_config=consumer,
            topics=[topic],
            timestamp_policy=ReadFromKafka.create_time_policy,
            commit_offset_in_finalize=True,  # so Kafka's tools show the job's lag
        )
        values: PCollection[bytes] = records | f"Values {topic}" >> beam.Map(lambda kv: kv[1])
        return values

    return read


def parser() -> argparse.ArgumentParser:
    env = os.environ
    p = argparse.ArgumentParser(
        prog="python -m loglambda.speed.streaming_job",
        description="Streaming speed layer: every catalog view with a grain, from the Kafka "
        "event log, as accumulating event-time panes upserted into a sink directory.",
        epilog="Other flags go to Beam, e.g. --runner FlinkRunner --flink_master HOST:8081 "
        "--environment_type LOOPBACK --parallelism 4. Name a runner: the default DirectRunner "
        "tries to download Prism.",
    )
    p.add_argument("--sink_dir", required=True, help="shared directory for panes and rejects")
    p.add_argument(
        "--kafka_bootstrap",
        default=env.get("LOGLAMBDA_KAFKA_BOOTSTRAP", "127.0.0.1:9092"),
        help="Kafka bootstrap servers (env LOGLAMBDA_KAFKA_BOOTSTRAP)",
    )
    p.add_argument(
        "--topic_prefix",
        default=env.get("LOGLAMBDA_KAFKA_TOPIC_PREFIX", "loglambda."),
        help="topics are <prefix>traffic and <prefix>logs (env LOGLAMBDA_KAFKA_TOPIC_PREFIX)",
    )
    p.add_argument("--views", default="", help="comma-separated view names (default: all)")
    defaults = StreamingConfig()
    p.add_argument(
        "--early_firing_s",
        type=int,
        default=defaults.early_firing_s,
        help="processing seconds from a window's first event to an early pane (%(default)s)",
    )
    p.add_argument(
        "--allowed_lateness_s",
        type=int,
        default=defaults.allowed_lateness_s,
        help="event seconds after a window's end that still update it (%(default)s)",
    )
    p.add_argument(
        "--shards", type=int, default=defaults.shards, help="keys per view group and window"
    )
    p.add_argument(
        "--compact_rows",
        type=int,
        default=defaults.compact_rows,
        help="events buffered before DuckDB computes them (%(default)s)",
    )
    p.add_argument("--exact_sketches", action="store_true", help="keep items, not sketches")
    return p


def choose_views(names: str) -> list[View]:
    """The named views (all standard views with a grain when ``names`` is empty)."""
    if not names.strip():
        return [v for v in STANDARD_CATALOG.values() if v.grain is not None]
    wanted = [n.strip() for n in names.split(",") if n.strip()]
    unknown = [n for n in wanted if n not in STANDARD_CATALOG]
    if unknown:
        raise SystemExit(f"unknown views: {unknown}; known: {sorted(STANDARD_CATALOG)}")
    return [STANDARD_CATALOG[n] for n in wanted]


def main(argv: Sequence[str] | None = None, source: Source | None = None) -> int:
    from apache_beam.options.pipeline_options import PipelineOptions, StandardOptions

    args, beam_args = parser().parse_known_args(argv)
    options = PipelineOptions(beam_args)
    runner = options.view_as(StandardOptions).runner
    if not runner or runner in ("DirectRunner", "SwitchingDirectRunner"):
        # The default DirectRunner tries to download Prism and hangs where the network does.
        raise SystemExit("name a runner, e.g. --runner FlinkRunner --flink_master HOST:8081")
    options.view_as(StandardOptions).streaming = True
    config = StreamingConfig(
        args.early_firing_s, args.allowed_lateness_s, args.shards, args.exact_sketches,
        args.compact_rows,
    )  # fmt: skip
    pipeline = beam.Pipeline(options=options)
    build_pipeline(
        pipeline,
        choose_views(args.views),
        config,
        DirectorySink(args.sink_dir),
        source or kafka_source(args.kafka_bootstrap, args.topic_prefix),
        args.topic_prefix,
    )
    pipeline.run().wait_until_finish()
    return 0


if __name__ == "__main__":
    # Beam logs through the root logger (and warns about apitools on import): show INFO.
    logging.basicConfig(level=logging.INFO, force=True)
    sys.exit(main())
