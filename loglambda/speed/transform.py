"""The speed layer's Beam transform, derived from the view catalog.

``ViewPartials(views)`` turns a PCollection of event chunks (Arrow tables of one kind)
into every view's partial rows, merged per (window_start, dimensions). Nothing about a view
is written here: each chunk is computed by the batch layer's own DuckDB compiler
(``DuckDBEngine.compute_arrow``), and chunks are merged by ``core.partials``, the merge
serving uses too. Beam only orchestrates: chunk → partials → merge per key.

Why the window start is in the key (not a Beam window) on this bounded path: the local
driver runs one small bounded pipeline per slice of the event log, and FnApiRunner's
per-window trigger machinery costs ~4x more than a plain key (DESIGN.md). The key holds
the UTC *day* of the window start, not the window itself: every Beam element is an Arrow
table pickled across the shuffle (~0.3 ms each, plus ~1 ms of merge per key), so a
catch-up slice spanning two days of minute windows took 23 s keyed per minute and takes
a fraction of a second keyed per day; a fresh slice spans one day either way. Rows stay
keyed by (window_start, dimensions) inside each table, where the vectorised merge works.
The streaming form (``streaming=True``, ``loglambda.speed.streaming``) uses real
event-time windows.

Why partials travel in the *items* form (distinct items instead of HLL sketches) when
chunks are merged: sketches are built once per key at the end, from sorted items, so a
slice computed in chunks is byte-identical to the batch engine computing it whole (a
union of sketches reads the same estimate, but its bytes differ). A slice in one chunk
keeps the engine's sketches, which are those bytes already. The conformance test holds
``run_slice`` to exactly that.

``run_slice`` is what the local driver calls: one bounded run on a ``FnApiRunner``
built once by the caller. The pipeline is built once per (views, settings) too and its
runner-API proto re-run for each slice (construction is ~120 ms of Beam bookkeeping,
a re-run ~30 ms); inputs and outputs pass through a process-local registry, which works
because FnApiRunner runs the DoFns in this process. A slice in one chunk (the driver's
usual case) runs a pipeline without the merge, one fused stage; and Arrow tables have
a coder (``ArrowTableCoder``) so that Beam's element-size sampling does not pickle
them. Together these took Beam's cost over the engine alone from ~120 ms to ~30 ms per
small slice, and from ~300 ms to ~50 ms per 250k-event slice.
"""

# Beam's public API ships type hints but many of its functions are unannotated; calling
# them is the point of this module, so only that check is relaxed (defs stay strict).
# mypy: disallow-untyped-calls=False

from __future__ import annotations

import itertools
import threading
import types
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, cast

import apache_beam as beam
import numpy as np
import pyarrow as pa
from apache_beam.coders import typecoders
from apache_beam.pvalue import PCollection
from apache_beam.typehints import typehints as th

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.core.catalog import WINDOW_COLUMN, CatalogError, View
from loglambda.core.derived import DerivedSettings
from loglambda.core.partials import merge_partials, partial_schema, sketch_items
from loglambda.core.schemas import KINDS, Kind, schema_for

# As large as the driver's biggest slice: one chunk per slice skips the cross-chunk merge
# (chunking bounds memory and spreads work on runners with several workers).
DEFAULT_CHUNK_ROWS: Final = 250_000
KEY_SPAN_US: Final = 86_400 * 1_000_000  # windows of one UTC day share a Beam key
Key = tuple[str, int | None]  # (view name, UTC day of the window start in epoch µs)


def as_views(views: Iterable[View] | Mapping[str, View]) -> tuple[View, ...]:
    """The views as a tuple (hashable: it keys the prepared pipelines); names unique."""
    chosen = tuple(views.values()) if isinstance(views, Mapping) else tuple(views)
    names = [v.name for v in chosen]
    if len(set(names)) != len(names):
        raise CatalogError(f"views named twice: {sorted({n for n in names if names.count(n) > 1})}")
    return chosen


def kind_of(events: pa.Table | pa.RecordBatch) -> Kind:
    """The record kind whose schema the events have (by column names)."""
    names = set(events.schema.names)
    for kind in KINDS:
        if names == set(schema_for(kind).names):
            return kind
    raise CatalogError(f"events with columns {sorted(names)} are of no known kind {KINDS}")


class ArrowTableCoder(beam.coders.Coder):
    """Arrow tables as IPC streams, their size estimated from their buffers.

    Why: Beam samples the size of the first elements of every PCollection by encoding
    them, and without a coder an Arrow table is pickled for it: ~140 ms and a 68 MB
    copy for a 250k-event chunk, on every catch-up slice. Registered for ``pa.Table``,
    so the type hints below pick it; the bytes are what crosses a shuffle.
    """

    def encode(self, value: pa.Table) -> bytes:
        sink = pa.BufferOutputStream()
        with pa.ipc.new_stream(sink, value.schema) as writer:
            writer.write_table(value)
        return bytes(sink.getvalue().to_pybytes())

    def decode(self, encoded: bytes) -> pa.Table:
        return pa.ipc.open_stream(encoded).read_all()

    def estimate_size(self, value: pa.Table) -> int:
        return int(value.get_total_buffer_size())

    def is_deterministic(self) -> bool:
        return False

    def to_type_hint(self) -> Any:
        return pa.Table


typecoders.registry.register_coder(pa.Table, ArrowTableCoder)
KeyHint = th.Tuple[str, th.Optional[int]]
PartialHint = th.Tuple[KeyHint, th.Tuple[str, pa.Table]]  # ChunkPartials' output
RowsHint = th.Tuple[KeyHint, pa.Table]  # ViewPartials' bounded output


# One DuckDB engine per thread and settings, kept across bundles and slices: a fresh
# engine would recompile every view and re-parse user agents on each slice.
_ENGINES = threading.local()


def engine_for(settings: DerivedSettings, threads: int | None = None) -> DuckDBEngine:
    """This thread's engine for ``settings`` (``threads``: DuckDB's, None for all cores)."""
    key = (settings, threads)
    cache: dict[tuple[DerivedSettings, int | None], DuckDBEngine] = (
        getattr(_ENGINES, "by_settings", None) or {}
    )
    _ENGINES.by_settings = cache
    if key not in cache:
        cache[key] = DuckDBEngine(settings, threads=threads)
    return cache[key]


def split_days(view: View, table: pa.Table) -> Iterator[tuple[int | None, pa.Table]]:
    """The rows of a key-sorted partial table, one zero-copy slice per UTC day of the
    window start (``KEY_SPAN_US``); the whole table under ``None`` without a grain."""
    if view.grain is None:
        yield None, table
        return
    windows = np.asarray(table.column(WINDOW_COLUMN).combine_chunks().cast(pa.int64()))
    starts = windows - windows % KEY_SPAN_US
    bounds = np.flatnonzero(np.diff(starts)) + 1
    edges = [0, *bounds.tolist(), len(starts)]
    for a, b in itertools.pairwise(edges):
        if b > a:
            yield int(starts[a]), table.slice(a, b - a)


class ChunkPartials(beam.DoFn):
    """An event chunk → ``((view, day), (view, rows))`` per view of its kind and UTC day
    of the window start."""

    def __init__(
        self,
        views: tuple[View, ...],
        settings: DerivedSettings,
        items: bool,
        threads: int | None = None,
    ) -> None:
        self.views, self.settings, self.items, self.threads = views, settings, items, threads

    def process(self, chunk: pa.Table | pa.RecordBatch) -> Iterator[tuple[Key, Any]]:
        table = pa.Table.from_batches([chunk]) if isinstance(chunk, pa.RecordBatch) else chunk
        kind = kind_of(table)
        mine = [v for v in self.views if v.kind == kind]
        if not mine or not table.num_rows:
            return
        engine = engine_for(self.settings, self.threads)
        tables = engine.compute_arrow(mine, {kind: table}, items=self.items)
        for view in mine:
            for day, rows in split_days(view, tables[view.name]):
                yield (view.name, day), (view.name, rows)


@dataclass
class _Tables:
    """A merge accumulator: partial tables of one view, merged lazily (``compact``)."""

    view: str | None = None
    tables: list[pa.Table] = field(default_factory=list)


class MergePartials(beam.CombineFn):
    """Merges ``(view, partial rows)`` values with ``core.partials.merge_partials``;
    the output is the view's rows (sketches built from items when ``items``)."""

    def __init__(self, views: tuple[View, ...], items: bool) -> None:
        self.views = {v.name: v for v in views}
        self.items = items

    def create_accumulator(self) -> _Tables:
        return _Tables()

    def add_input(self, acc: _Tables, value: tuple[str, pa.Table]) -> _Tables:
        acc.view = value[0]
        acc.tables.append(value[1])
        return acc

    def merge_accumulators(self, accs: Iterable[_Tables]) -> _Tables:
        out = _Tables()
        for acc in accs:
            out.view = out.view or acc.view
            out.tables.extend(acc.tables)
        return out

    def compact(self, acc: _Tables) -> _Tables:
        if acc.view is None or len(acc.tables) < 2:
            return acc
        merged = merge_partials(self.views[acc.view], acc.tables, items=self.items)
        return _Tables(acc.view, [merged])

    def extract_output(self, acc: _Tables) -> tuple[str, pa.Table]:
        if acc.view is None:
            raise ValueError("extract_output of an empty accumulator (Beam never asks)")
        view = self.views[acc.view]
        # One input is one engine output (sorted, keys unique): nothing to merge.
        merged = (
            acc.tables[0]
            if len(acc.tables) == 1
            else merge_partials(view, acc.tables, items=self.items)
        )
        return acc.view, sketch_items(view, merged) if self.items else merged


class ViewPartials(beam.PTransform[PCollection[Any], Any]):
    """Every view's partial rows over a PCollection of event chunks.

    Bounded form (default): input Arrow tables or record batches of events (each of one
    kind; mixed kinds are fine), output ``((view, day_us | None), rows)`` with ``rows``
    in ``output_schema(view)``, merged per (window_start, dimensions) across chunks, one
    element per view and UTC day of the window start (``None`` for views without grain).
    ``exact_sketches`` (default here) builds sketches from items at the end, so the
    output is byte-identical to the batch engine's over the same events.

    ``merge=False``: the caller guarantees one chunk per kind (the local driver's usual
    slice), so every (view, day) key occurs once and the shuffle is skipped: the whole
    run is then one fused stage, with no Arrow table pickled (~40-60 ms less per slice).
    ``threads``: DuckDB's threads per worker (None: all cores).

    ``streaming=True``: the event-time form for Flink/Dataflow, over event rows; see
    ``loglambda.speed.streaming.StreamingViews`` (this delegates to it, with the other
    keywords as its ``StreamingConfig``; ``exact_sketches`` defaults to False there).
    """

    def __init__(
        self,
        views: Iterable[View] | Mapping[str, View],
        *,
        streaming: bool = False,
        settings: DerivedSettings | None = None,
        exact_sketches: bool | None = None,
        merge: bool = True,
        threads: int | None = None,
        **streaming_options: Any,
    ) -> None:
        super().__init__()
        self.merge, self.threads = merge, threads
        self.views = as_views(views)
        self.streaming = streaming
        self.settings = settings or DerivedSettings()
        self.exact = True if exact_sketches is None else exact_sketches
        if streaming and exact_sketches is not None:
            streaming_options["exact_sketches"] = exact_sketches
        self.streaming_options = streaming_options
        for view in self.views:
            partial_schema(view)  # fails loudly, naming the view, before any data flows
        if streaming_options and not streaming:
            raise TypeError(f"options only the streaming form takes: {sorted(streaming_options)}")

    def expand(self, chunks: PCollection[Any]) -> Any:
        if self.streaming:
            from loglambda.speed.streaming import StreamingConfig, StreamingViews

            config = StreamingConfig(**self.streaming_options)
            return chunks | StreamingViews(self.views, config, self.settings)
        partials = chunks | "Partials per chunk" >> beam.ParDo(
            ChunkPartials(self.views, self.settings, self.exact, self.threads)
        ).with_output_types(PartialHint)
        if self.merge:
            partials = partials | "Merge per view and day" >> beam.CombinePerKey(
                MergePartials(self.views, self.exact)
            ).with_output_types(PartialHint)
        drop = beam.Map(lambda kv: (kv[0], kv[1][1])).with_output_types(RowsHint)
        return partials | "Drop value name" >> drop


# -- the bounded run the local driver uses ---------------------------------------------


@dataclass
class _Slot:
    """Input chunks and output rows of the run in progress of one prepared pipeline."""

    chunks: list[pa.Table] = field(default_factory=list)
    out: list[tuple[Key, pa.Table]] = field(default_factory=list)


_SLOTS: dict[str, _Slot] = {}


class _ReadSlot(beam.DoFn):
    def __init__(self, slot: str) -> None:
        self.slot = slot

    def process(self, _: object) -> Iterator[pa.Table]:
        yield from _SLOTS[self.slot].chunks


class _WriteSlot(beam.DoFn):
    def __init__(self, slot: str) -> None:
        self.slot = slot

    def process(self, element: tuple[Key, pa.Table]) -> None:
        _SLOTS[self.slot].out.append(element)


@dataclass
class _Prepared:
    slot: str
    pipeline: beam.Pipeline
    proto: Any  # the runner-API proto re-run by FnApiRunner; None: run the pipeline
    options: Any
    lock: threading.Lock = field(default_factory=threading.Lock)


@dataclass(frozen=True)
class _Plan:
    """What a prepared pipeline is built from (and keyed by)."""

    views: tuple[View, ...]
    settings: DerivedSettings
    exact: bool  # items carried and sketches built at the end
    merge: bool  # chunks merged per key (more than one chunk of a kind)
    threads: int | None


_PREPARED: dict[_Plan, _Prepared] = {}

# Beam's state sampler (per-step timing, for monitoring) sleeps between samples in
# periods growing to 200 ms, and the end of every bundle joins its thread, so waits out
# the current sleep: ~75-160 ms of idle wall time on a 250k-event slice, ~5-40 ms on a
# small one. With periods capped at 10 ms the join is a few ms; the thread wakes up 100
# times a second instead of 5, which costs nothing measurable.
SAMPLER_PERIOD_MS: Final = 10


def _cap_state_sampler() -> None:
    """Cap the sampling period of the state samplers created from now on in this
    process (local FnApiRunner runs only; a no-op if Beam's default is not the one
    measured)."""
    from apache_beam.runners.worker import statesampler

    init = cast(types.FunctionType, statesampler.StateSampler.__init__)
    if init.__defaults__ == (statesampler.DEFAULT_SAMPLING_PERIOD_MS,) == (200,):
        init.__defaults__ = (SAMPLER_PERIOD_MS,)


_PREPARED_LOCK = threading.Lock()


def _prepare(runner: Any, plan: _Plan) -> _Prepared:
    from apache_beam.options.pipeline_options import PipelineOptions
    from apache_beam.runners.pipeline_utils import group_by_key_input_visitor
    from apache_beam.transforms.environments import EmbeddedPythonEnvironment

    _cap_state_sampler()
    slot = uuid.uuid4().hex
    options = PipelineOptions()
    pipeline = beam.Pipeline(runner=runner, options=options)
    _ = (
        pipeline
        | "Slice" >> beam.Create([None])
        | "Chunks" >> beam.ParDo(_ReadSlot(slot)).with_output_types(pa.Table)
        | "Views"
        >> ViewPartials(
            plan.views,
            settings=plan.settings,
            exact_sketches=plan.exact,
            merge=plan.merge,
            threads=plan.threads,
        )
        | "Collect" >> beam.ParDo(_WriteSlot(slot))
    )
    proto = None
    if hasattr(runner, "run_via_runner_api"):
        # What FnApiRunner.run_pipeline does before running a proto, done once here.
        pipeline.visit(group_by_key_input_visitor(True))
        proto = pipeline.to_runner_api(default_environment=EmbeddedPythonEnvironment.default())
    return _Prepared(slot, pipeline, proto, options)


def run_slice(
    runner: Any,
    views: Iterable[View] | Mapping[str, View],
    events: pa.Table | Mapping[Kind, pa.Table],
    *,
    chunk_rows: int = DEFAULT_CHUNK_ROWS,
    settings: DerivedSettings | None = None,
    exact_sketches: bool = True,
    threads: int | None = None,
) -> dict[str, pa.Table]:
    """Each view's partial rows over ``events``, by a bounded Beam run on ``runner``.

    ``runner`` is meant to be one ``FnApiRunner`` reused for every slice (never the
    default DirectRunner: it tries to download Prism). Events are cut into chunks of
    ``chunk_rows``, computed chunk by chunk and merged per view and window. Returns the
    views of the kinds given (``output_schema(view)``, sorted by key columns); with
    ``exact_sketches`` each equals ``DuckDBEngine`` over the same events, byte for byte.
    ``threads``: DuckDB's threads (None: all cores).
    """
    if chunk_rows <= 0:
        raise ValueError(f"chunk_rows must be positive, got {chunk_rows}")
    chosen = as_views(views)
    settings = settings or DerivedSettings()
    by_kind = {kind_of(events): events} if isinstance(events, pa.Table) else dict(events)
    wanted = [v for v in chosen if v.kind in by_kind]
    chunks = [
        table.slice(start, chunk_rows)
        for table in by_kind.values()
        for start in range(0, table.num_rows, chunk_rows)
    ]
    # Items are carried only if some view merges chunks: a kind in one chunk is computed
    # whole, and the engine's sketches are then the exact ones (and ~25% cheaper).
    merge = any(t.num_rows > chunk_rows for t in by_kind.values())
    items = exact_sketches and merge
    out: list[tuple[Key, pa.Table]] = []
    if chunks and wanted:
        out = _run(runner, _Plan(tuple(wanted), settings, items, merge, threads), chunks)
    pieces: dict[str, list[tuple[int, pa.Table]]] = {v.name: [] for v in wanted}
    for (name, window), table in out:
        pieces[name].append((-1 if window is None else window, table))
    result = {}
    for view in wanted:
        # Days are disjoint and each piece is sorted: in day order they are the view.
        parts = [t for _, t in sorted(pieces[view.name], key=lambda p: p[0])]
        table = pa.concat_tables(parts) if parts else partial_schema(view).empty_table()
        result[view.name] = table.combine_chunks()  # one chunk per column, as the engine's
    return result


def _run(runner: Any, plan: _Plan, chunks: list[pa.Table]) -> list[tuple[Key, pa.Table]]:
    cacheable = hasattr(runner, "run_via_runner_api")
    with _PREPARED_LOCK:
        prepared = _PREPARED.get(plan) if cacheable else None
        if prepared is None:
            prepared = _prepare(runner, plan)
            if cacheable:
                _PREPARED[plan] = prepared
    with prepared.lock:
        _SLOTS[prepared.slot] = slot = _Slot(chunks)
        try:
            if prepared.proto is not None:
                runner.run_via_runner_api(prepared.proto, prepared.options).wait_until_finish()
            else:
                prepared.pipeline.run().wait_until_finish()
            return slot.out
        finally:
            del _SLOTS[prepared.slot]


class BeamSliceEngine:
    """The local driver's ``PartialEngine``: ``run_slice`` on one ``FnApiRunner``."""

    def __init__(
        self,
        views: Iterable[View] | Mapping[str, View],
        *,
        runner: Any = None,
        chunk_rows: int = DEFAULT_CHUNK_ROWS,
        settings: DerivedSettings | None = None,
        threads: int | None = None,
    ) -> None:
        from apache_beam.runners.portability.fn_api_runner.fn_runner import FnApiRunner

        self.views = as_views(views)
        self.runner = runner if runner is not None else FnApiRunner()
        self.chunk_rows = chunk_rows
        self.settings = settings or DerivedSettings()
        self.threads = threads

    def compute(self, kind: Kind, events: pa.Table) -> dict[str, pa.Table]:
        """Every view of ``kind`` over one slice of events (empty tables for none)."""
        return run_slice(
            self.runner, self.views, {kind: events}, chunk_rows=self.chunk_rows,
            settings=self.settings, threads=self.threads,
        )  # fmt: skip
