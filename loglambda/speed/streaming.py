"""The streaming form of the speed transform, for Flink or Dataflow reading Kafka.

Same definitions as the bounded path (``transform.ViewPartials``): events are computed
by the batch layer's DuckDB compiler and merged by ``core.partials``. What differs is
time: elements are single events stamped with their event time; each (kind, grain)
group of views is cut into event-time ``FixedWindows`` of its grain (UTC-aligned, as
``date_trunc``), fired by the watermark with early panes every ``early_firing_s`` of
processing time and one late pane per late event within ``allowed_lateness_s``. Panes
*accumulate*, so each fired pane is the window's whole current value and an upsert sink
keyed by (view, window, shard) can replace the previous pane: replays and retries are
idempotent, and a stale pane (lower index) never overwrites a newer one.

Events reach the combine as Python rows; the ``CombineFn`` buffers them and computes
partials in vectorised DuckDB batches (``compact_rows``), and Beam's combiner lifting
runs that per bundle before the shuffle. Partials are in the sketch form by default
(HLL sketches unioned: bounded state per window); ``exact_sketches`` keeps items so the
final pane is byte-identical to the batch engine, at the cost of unbounded state.

Too-late events (their window closed, beyond the allowed lateness) are never dropped
silently: the ``LateGate`` in front of the windowing diverts them to the ``too_late``
output and counts them in the Beam metric ``loglambda.speed/too_late_events``. It
learns that a window closed from an event-time timer at its end + lateness; a window
that never saw an on-time event can still expire unnoticed, and Beam then drops its
events in the GroupByKey (Flink and Dataflow count those in their
``droppedDueToLateness`` metric; the Python direct runner does not count them).

``shards`` spreads each (kind, grain) group over several keys by a hash of the event's
source position; shards of one window hold overlapping dimension rows, which the sink
keeps apart (its key includes the shard) and readers merge with ``merge_partials``.
"""

# Beam's public API ships type hints but many of its functions are unannotated; calling
# them is the point of this module, so only that check is relaxed (defs stay strict).
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import zlib
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Final

import apache_beam as beam
import pyarrow as pa
from apache_beam.coders import VarIntCoder
from apache_beam.metrics.metric import Metrics
from apache_beam.pvalue import PCollection, TaggedOutput
from apache_beam.transforms import trigger, userstate
from apache_beam.transforms.timeutil import TimeDomain
from apache_beam.transforms.window import FixedWindows, TimestampedValue
from apache_beam.typehints import Tuple
from apache_beam.utils.timestamp import Duration, Timestamp
from apache_beam.utils.windowed_value import PaneInfoTiming

from loglambda.core.catalog import CatalogError, View
from loglambda.core.derived import DerivedSettings
from loglambda.core.partials import merge_partials, sketch_items
from loglambda.core.schemas import KINDS, Kind, schema_for
from loglambda.speed.sinks import Pane
from loglambda.speed.transform import engine_for

GRAIN_SECONDS: Final = {"minute": 60, "hour": 3600, "day": 86400}
METRICS_NAMESPACE: Final = "loglambda.speed"
Event = dict[str, Any]


@dataclass(frozen=True)
class StreamingConfig:
    """Trigger, lateness and parallelism of the streaming form."""

    # Processing seconds from a pane's first event to its early firing; whole seconds,
    # as Beam's AfterProcessingTime needs to translate to the runner API.
    early_firing_s: int = 10
    allowed_lateness_s: int = 3600  # event time after a window's end that still updates it
    shards: int = 1  # keys per (kind, grain) group and window
    exact_sketches: bool = False  # carry items instead of sketches (see the module doc)
    compact_rows: int = 20_000  # events buffered per accumulator before DuckDB runs

    def __post_init__(self) -> None:
        if self.early_firing_s <= 0 or self.allowed_lateness_s < 0:
            raise ValueError("early_firing_s must be > 0 and allowed_lateness_s >= 0")
        if self.shards < 1 or self.compact_rows < 1:
            raise ValueError("shards and compact_rows must be >= 1")


def kind_of_event(event: Mapping[str, Any]) -> Kind:
    """The kind whose columns the event has (extra keys are ignored)."""
    for kind in KINDS:
        if "ts" in event and all(n in event for n in _REQUIRED[kind]):
            return kind
    raise CatalogError(f"an event with keys {sorted(event)} is of no known kind {KINDS}")


_REQUIRED: Final = {k: [f.name for f in schema_for(k) if not f.nullable] for k in KINDS}


def event_micros(ts: Any) -> int:
    """Event time in epoch µs: the event log's JSON ``ts`` (an int) or a datetime."""
    if isinstance(ts, datetime):
        return int(Timestamp.from_utc_datetime(ts).micros)
    return int(ts)


class RouteEvents(beam.DoFn):
    """Stamp each event with its event time and send it to every (kind, grain) group of
    its kind, keyed by (group, shard)."""

    def __init__(self, groups: Mapping[str, Kind], shards: int) -> None:
        self.groups, self.shards = dict(groups), shards

    def process(self, event: Event) -> Iterator[TaggedOutput[Any, Any]]:
        kind = kind_of_event(event)
        micros = event_micros(event["ts"])
        shard = 0
        if self.shards > 1:  # crc32, not hash(): stable across workers and replays
            where = f"{event.get('source')}\0{event.get('source_line')}".encode()
            shard = zlib.crc32(where) % self.shards
        for group, group_kind in self.groups.items():
            if group_kind == kind:
                value = TimestampedValue(((group, shard), event), Timestamp(micros=micros))
                yield TaggedOutput(group, value)


_CLOSED = userstate.ReadModifyWriteStateSpec("closed_until", VarIntCoder())
_CLOSE = userstate.TimerSpec("close", TimeDomain.WATERMARK)
_CLOSED_STATE = beam.DoFn.StateParam(_CLOSED)
_CLOSE_TIMER = beam.DoFn.TimerParam(_CLOSE)


class LateGate(beam.DoFn):
    """Diverts events whose window has closed (see the module doc) to ``too_late``.

    State per key: the highest horizon (window end + lateness, + 1 µs) whose timer has
    fired, i.e. a watermark the gate has certainly seen.
    """

    def __init__(self, window_us: int, lateness_us: int) -> None:
        self.window_us, self.lateness_us = window_us, lateness_us
        self.too_late = Metrics.counter(METRICS_NAMESPACE, "too_late_events")

    def process(
        self,
        element: tuple[tuple[str, int], Event],
        timestamp: Any = beam.DoFn.TimestampParam,
        closed: Any = _CLOSED_STATE,
        close: Any = _CLOSE_TIMER,
    ) -> Iterator[Any]:
        micros = int(timestamp.micros)
        end = micros - micros % self.window_us + self.window_us
        horizon = end + self.lateness_us  # GroupByKey drops it once the watermark is past
        if horizon < (closed.read() or 0):
            # A timer at a horizon above this one has fired: the watermark is beyond it.
            self.too_late.inc()
            yield TaggedOutput("too_late", element)
            return
        close.set(Timestamp(micros=horizon + 1), dynamic_timer_tag=str(end))
        yield element

    @userstate.on_timer(_CLOSE)
    def on_close(
        self,
        fired: Any = beam.DoFn.TimestampParam,
        closed: Any = _CLOSED_STATE,
    ) -> None:
        closed.write(max(closed.read() or 0, int(fired.micros)))


@dataclass
class _Acc:
    """Buffered events and the partial tables computed from earlier ones, per view."""

    rows: list[Event] = field(default_factory=list)
    partials: dict[str, pa.Table] = field(default_factory=dict)


class EventsToPartials(beam.CombineFn):
    """Events of one kind → every view's rows (a dict by view name)."""

    def __init__(
        self, views: tuple[View, ...], settings: DerivedSettings, items: bool, compact_rows: int
    ) -> None:
        self.views, self.settings = views, settings
        self.items, self.compact_rows = items, compact_rows
        self.kind = views[0].kind

    def create_accumulator(self) -> _Acc:
        return _Acc()

    def add_input(self, acc: _Acc, event: Event) -> _Acc:
        acc.rows.append(event)
        return self._fold(acc) if len(acc.rows) >= self.compact_rows else acc

    def merge_accumulators(self, accs: Iterable[_Acc]) -> _Acc:
        out, tables = _Acc(), dict[str, list[pa.Table]]()
        for acc in accs:
            out.rows.extend(acc.rows)
            for name, table in acc.partials.items():
                tables.setdefault(name, []).append(table)
        for view in self.views:
            if view.name in tables:
                out.partials[view.name] = merge_partials(view, tables[view.name], items=self.items)
        return out

    def compact(self, acc: _Acc) -> _Acc:
        return self._fold(acc)

    def extract_output(self, acc: _Acc) -> dict[str, pa.Table]:
        acc = self._fold(acc)  # same content, folded: safe to keep accumulating
        out = {}
        for view in self.views:
            table = acc.partials.get(view.name)
            if table is None or not table.num_rows:
                continue
            out[view.name] = sketch_items(view, table) if self.items else table
        return out

    def _fold(self, acc: _Acc) -> _Acc:
        if not acc.rows:
            return acc
        events = pa.Table.from_pylist(acc.rows, schema=schema_for(self.kind))
        engine = engine_for(self.settings)
        computed = engine.compute_arrow(self.views, {self.kind: events}, items=self.items)
        partials = {}
        for view in self.views:
            earlier = acc.partials.get(view.name)
            parts = [computed[view.name]] if earlier is None else [earlier, computed[view.name]]
            partials[view.name] = merge_partials(view, parts, items=self.items)
        return _Acc([], partials)


class ToPanes(beam.DoFn):
    """A fired combine output → one ``Pane`` per view, with its window and pane info."""

    def process(
        self,
        element: tuple[tuple[str, int], dict[str, pa.Table]],
        window: Any = beam.DoFn.WindowParam,
        pane: Any = beam.DoFn.PaneInfoParam,
    ) -> Iterator[Pane]:
        (_, shard), tables = element
        for name in sorted(tables):
            yield Pane(
                name,
                int(window.start.micros),
                shard,
                int(pane.index),
                PaneInfoTiming.to_string(pane.timing),
                bool(pane.is_last),
                tables[name],
            )


class StreamingViews(beam.PTransform[PCollection[Any], Any]):
    """Event rows (dicts in the kind's columns, ``ts`` in epoch µs or a datetime) →
    ``{"panes": PCollection[Pane], "too_late": PCollection[((group, shard), event)]}``."""

    def __init__(
        self,
        views: Iterable[View],
        config: StreamingConfig | None = None,
        settings: DerivedSettings | None = None,
    ) -> None:
        super().__init__()
        self.views = tuple(views)
        self.config = config or StreamingConfig()
        self.settings = settings or DerivedSettings()
        self.groups: dict[str, tuple[View, ...]] = {}
        for view in self.views:
            if view.grain is None:
                raise CatalogError(
                    f"view {view.name!r} has no grain: the streaming form needs event-time "
                    "windows (give it a minute, hour or day grain)"
                )
            group = f"{view.kind}/{view.grain}"
            self.groups[group] = (*self.groups.get(group, ()), view)

    def expand(self, events: PCollection[Any]) -> dict[str, PCollection[Any]]:
        c = self.config
        kinds = {g: vs[0].kind for g, vs in self.groups.items()}
        routed = events | "Route" >> beam.ParDo(RouteEvents(kinds, c.shards)).with_outputs(
            *self.groups
        )
        panes, late = [], []
        lateness_us = int(c.allowed_lateness_s * 1_000_000)
        for group, views in self.groups.items():
            seconds = GRAIN_SECONDS[views[0].grain or "day"]
            gate = LateGate(seconds * 1_000_000, lateness_us)
            # Typed input: the state's key coder must be deterministic (str, int).
            keyed = beam.ParDo(gate).with_input_types(Tuple[Tuple[str, int], Any])
            gated = routed[group] | f"Gate {group}" >> keyed.with_outputs(
                "too_late", main="on_time"
            )
            late.append(gated.too_late)
            windowing = beam.WindowInto(
                FixedWindows(seconds),
                trigger=trigger.AfterWatermark(
                    early=trigger.AfterProcessingTime(c.early_firing_s),
                    late=trigger.AfterCount(1),
                ),
                allowed_lateness=Duration(seconds=c.allowed_lateness_s),
                accumulation_mode=trigger.AccumulationMode.ACCUMULATING,
            )
            combine = EventsToPartials(views, self.settings, c.exact_sketches, c.compact_rows)
            panes.append(
                gated.on_time
                | f"Window {group}" >> windowing
                | f"Views {group}" >> beam.CombinePerKey(combine)
                | f"Panes {group}" >> beam.ParDo(ToPanes())
            )
        return {
            "panes": panes | "All panes" >> beam.Flatten(),
            "too_late": late | "All too late" >> beam.Flatten(),
        }
