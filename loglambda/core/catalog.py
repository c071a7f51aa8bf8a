"""The view catalog, as data: every batch, speed and serving view is declared here once.

Why data and not code: the DuckDB engine, the Spark engine and the Beam pipeline all
compile the same declarations (see DESIGN.md, "One definition, every engine"), so a
view is added by adding a ``View`` here, never by touching an engine. A dimension or
measure names an event column or an entry of the derived registry
(``loglambda.core.derived``); a filter names a registered predicate, never SQL text,
so each engine compiles it in its own dialect.

Every measure is a mergeable monoid (count, sum, min, max; unique counts as HLL
sketches; latency quantiles as log-bucketed histograms), which is what lets serving
add a batch version and speed-layer partials without double counting.

A view with a ``grain`` has a leading ``window_start`` column (UTC timestamp of the
minute, hour or day) before its dimensions; the speed layer windows by it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final, Literal, get_args

import pyarrow as pa

from loglambda.core.derived import derived
from loglambda.core.schemas import KINDS, TS_TYPE, Kind, schema_for

Agg = Literal["count", "sum", "min", "max", "distinct", "quantiles"]
Grain = Literal["minute", "hour", "day"]
AGGS: Final[tuple[str, ...]] = get_args(Agg)
GRAINS: Final[tuple[str, ...]] = get_args(Grain)
WINDOW_COLUMN: Final = "window_start"
HLL_TYPE: Final = pa.binary()  # a compact DataSketches HLL_8 sketch (lg_k 12)


class CatalogError(ValueError):
    """A view declaration that cannot be computed; the message names view and part."""


@dataclass(frozen=True)
class Dimension:
    """An output column to group by: ``source`` is an event column or a derived name."""

    name: str
    source: str


@dataclass(frozen=True)
class Measure:
    """An aggregate. ``column`` is an event column or derived name (None: count rows);
    ``filter`` a registered predicate restricting the rows this measure sees."""

    name: str
    agg: Agg
    column: str | None = None
    filter: str | None = None


@dataclass(frozen=True)
class View:
    """One view: rows of ``kind`` events grouped by window and dimensions."""

    name: str
    kind: Kind
    grain: Grain | None
    dimensions: tuple[Dimension, ...]
    measures: tuple[Measure, ...]
    where: str | None = None
    description: str = ""

    @property
    def key_columns(self) -> tuple[str, ...]:
        """The columns identifying a row, in sort order."""
        window = (WINDOW_COLUMN,) if self.grain else ()
        return window + tuple(d.name for d in self.dimensions)


def histogram_type() -> pa.DataType:
    """Storage type of a latency histogram (owned by ``loglambda.core.sketches``)."""
    from loglambda.core.sketches.quantiles import HISTOGRAM_TYPE

    hist_type: pa.DataType = HISTOGRAM_TYPE
    return hist_type


def source_type(kind: Kind, source: str) -> pa.DataType | None:
    """Arrow type of an event column or derived name; None if it is neither."""
    entry = derived(kind, source)
    if entry is not None:
        return entry.type
    schema = schema_for(kind)
    return schema.field(source).type if source in schema.names else None


def measure_type(view: View, m: Measure) -> pa.DataType:
    if m.agg == "count":
        return pa.int64()
    if m.agg == "distinct":
        return HLL_TYPE
    if m.agg == "quantiles":
        return histogram_type()
    col = source_type(view.kind, m.column or "")
    if col is None:
        raise CatalogError(f"view {view.name!r}, measure {m.name!r}: no column {m.column!r}")
    if m.agg == "sum":
        return pa.float64() if pa.types.is_floating(col) else pa.int64()
    return col


def output_schema(view: View) -> pa.Schema:
    """The exact Arrow schema of a view's rows: window, dimensions, then measures."""
    check_view(view)
    fields = [pa.field(WINDOW_COLUMN, TS_TYPE, nullable=False)] if view.grain else []
    for d in view.dimensions:
        typ = source_type(view.kind, d.source)
        assert typ is not None  # check_view proved it
        fields.append(pa.field(d.name, typ))
    for m in view.measures:
        # Only sum, min and max of nothing are NULL; a count is 0, and a sketch or
        # histogram of nothing is empty (as Spark's hll_sketch_agg and collect_list give).
        nullable = m.agg in ("sum", "min", "max")
        fields.append(pa.field(m.name, measure_type(view, m), nullable=nullable))
    return pa.schema(fields)


def check_view(view: View) -> None:
    """Raise CatalogError naming the view and the part if the declaration is unusable."""
    where = f"view {view.name!r}"
    if view.kind not in KINDS:
        raise CatalogError(f"{where}: unknown record kind {view.kind!r}")
    if view.grain is not None and view.grain not in GRAINS:
        raise CatalogError(f"{where}: grain {view.grain!r} is not one of {GRAINS}")
    names = [*view.key_columns, *(m.name for m in view.measures)]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise CatalogError(f"{where}: column names used twice: {dupes}")
    if not view.measures:
        raise CatalogError(f"{where}: has no measures")
    for d in view.dimensions:
        if source_type(view.kind, d.source) is None:
            raise CatalogError(
                f"{where}, dimension {d.name!r}: {d.source!r} is neither a {view.kind} "
                "column nor a derived dimension"
            )
    _check_predicate(view, view.where, "where")
    for m in view.measures:
        part = f"{where}, measure {m.name!r}"
        if m.agg not in AGGS:
            raise CatalogError(f"{part}: unsupported aggregation {m.agg!r}; one of {AGGS}")
        _check_predicate(view, m.filter, f"measure {m.name!r} filter")
        if m.column is None:
            if m.agg != "count":
                raise CatalogError(f"{part}: aggregation {m.agg!r} needs a column")
            continue
        col = source_type(view.kind, m.column)
        if col is None:
            raise CatalogError(f"{part}: {m.column!r} is neither a column nor derived")
        numeric = pa.types.is_integer(col) or pa.types.is_floating(col)
        if m.agg in ("sum", "quantiles") and not numeric:
            raise CatalogError(f"{part}: {m.agg} of non-numeric {m.column!r} ({col})")


def _check_predicate(view: View, name: str | None, part: str) -> None:
    if name is None:
        return
    entry = derived(view.kind, name)
    if entry is None or not entry.is_predicate:
        raise CatalogError(
            f"view {view.name!r}, {part}: {name!r} is not a registered {view.kind} predicate"
        )


# ----------------------------------------------------------------------------------
# The standard catalog: traffic SLI views and every GoAccess panel, plus app logs.


def _traffic_window(name: str, grain: Grain) -> View:
    return View(
        name,
        "traffic",
        grain,
        (
            Dimension("host", "host"),
            Dimension("route", "route"),
            Dimension("method", "method"),
            Dimension("status_class", "status_class"),
        ),
        (
            Measure("requests", "count"),
            Measure("bytes", "sum", "bytes"),
            Measure("errors_5xx", "count", filter="is_5xx"),
            Measure("latency_count", "count", "latency_ms"),
            Measure("latency_sum_us", "sum", "latency_us"),
            Measure("latency_min", "min", "latency_ms"),
            Measure("latency_max", "max", "latency_ms"),
            Measure("latency", "quantiles", "latency_ms"),
        ),
        description=f"Requests, bytes, 5xx and latency per {grain} by host, route, method "
        "and status class (SLIs: availability, latency under a threshold).",
    )


def _panel(
    name: str,
    dims: tuple[Dimension, ...],
    description: str,
    visitors: Measure,
    where: str | None = None,
) -> View:
    return View(
        name,
        "traffic",
        "day",
        dims,
        (Measure("hits", "count"), Measure("bytes", "sum", "bytes"), visitors),
        where,
        description,
    )


def standard_catalog(*, count_4xx_visitors: bool = False) -> dict[str, View]:
    """The standard views. ``count_4xx_visitors`` is GoAccess's --4xx-to-unique-count:
    by default a request answered 4xx creates no visitor (a scanner is no audience)."""
    visitors = Measure("visitors", "distinct", "visitor", None if count_4xx_visitors else "not_4xx")
    dim = Dimension
    request = (dim("request", "request"), dim("method", "method"), dim("protocol", "protocol"))
    views = [
        _traffic_window("traffic_minute", "minute"),
        _traffic_window("traffic_hour", "hour"),
        _traffic_window("traffic_day", "day"),
        View("visitors_day", "traffic", "day", (),
             (Measure("hits", "count"), Measure("bytes", "sum", "bytes"), visitors),
             description="GoAccess's visitors panel: hits, unique visitors, bytes per day."),
        View("visitors_hour", "traffic", "hour", (),
             (Measure("hits", "count"), Measure("bytes", "sum", "bytes"), visitors),
             description="Hits, unique visitors and bytes per hour."),
        _panel("status_codes", (dim("status", "status"), dim("status_class", "status_class")),
               "GoAccess's status codes panel.", visitors),
        _panel("requests", (*request, dim("is_static", "is_static")),
               "GoAccess's requests (is_static false) and static requests (true) panels: "
               "every request but 404s, by URL with query string.", visitors, "not_404"),
        _panel("not_found", request, "GoAccess's not found panel (404s).", visitors, "is_404"),
        _panel("hosts", (dim("client_ip", "client_ip"),), "GoAccess's hosts panel.", visitors),
        _panel("browsers", (dim("browser", "browser"),), "Browsers (ua-parser families).",
               visitors),
        _panel("operating_systems", (dim("os", "os"),), "Operating systems (ua-parser).",
               visitors),
        _panel("visit_time", (dim("hour_of_day", "hour_of_day"),),
               "GoAccess's visit time panel: per hour of the day (UTC).", visitors),
        _panel("referring_sites", (dim("referrer_host", "referrer_host"),),
               "GoAccess's referring sites panel.", visitors, "has_referrer_host"),
        _panel("referrers", (dim("referrer", "referrer"),), "Top referrers, full URL.",
               visitors, "has_referrer"),
        View("log_records_minute", "logs", "minute",
             (dim("service", "service"), dim("level", "level")),
             (Measure("records", "count"),),
             description="Application log records per minute by service and level."),
    ]  # fmt: skip
    catalog = {v.name: v for v in views}
    for view in views:
        check_view(view)
    return catalog


STANDARD_CATALOG: Final[dict[str, View]] = standard_catalog()
