"""SQL helpers for the sketch columns of the views, registered on every query connection.

Why macros and not aggregate UDFs: DuckDB's Python API has no aggregate UDFs, but a
macro is expanded into the query text before binding, so a macro whose body holds an
aggregate (``list(...)``) *is* an aggregate for the user: ``unique_count(visitors)``
goes anywhere ``count(x)`` goes, with or without ``GROUP BY``. That is what lets a
per-hour p95 or a unique-visitor count be asked of a finer view with a plain
``GROUP BY`` -- the sketches are merged across the group's rows, never averaged.

Why this is exact: histograms merge by adding bucket counts, so ``merged_quantile``
over the minutes of an hour equals ``ddsketch_quantile`` of the hour view's histogram
exactly; HLL sketches merge by union, and ``hll_estimate`` reads the composite
estimate, which depends only on the registers, so ``unique_count`` over the hours of a
day reads exactly what the day view's sketch reads (see ``core/sketches/hll.py``).

The per-row scalars come from ``loglambda.core.sketches`` unchanged (``hll_estimate``,
``hll_union_list``, ``ddsketch_quantile``, ``ddsketch_key``); this module only adds
the merging layer on top of them and documents every helper once, for ``.help``,
``loglambda sql`` and the README.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Final

import duckdb
from duckdb.func import ARROW, SPECIAL

from loglambda.core.sketches import (
    DUCKDB_HISTOGRAM_TYPE,
    bucket_key_sql,
    register_sketch_functions,
)
from loglambda.serving.histogram_udfs import histogram_sum_udf, merged_quantile_udf

__all__ = ["HELPERS", "Helper", "helpers_text", "register_sql_functions"]


@dataclass(frozen=True)
class Helper:
    """One SQL helper as users see it."""

    signature: str
    kind: str  # "aggregate" (merges the rows of a group) or "scalar" (one row)
    does: str
    example: str


HELPERS: Final[tuple[Helper, ...]] = (
    Helper(
        "unique_count(sketch)",
        "aggregate",
        "estimated distinct count over all rows of the group (HLL sketches unioned)",
        "SELECT date_trunc('day', window_start) AS day, unique_count(visitors) "
        "FROM visitors_hour GROUP BY day",
    ),
    Helper(
        "merged_quantile(histogram, q)",
        "aggregate",
        "quantile q (0..1) of the values of all rows of the group (histograms added; "
        "1 % relative accuracy)",
        "SELECT date_trunc('hour', window_start) AS hour, route, "
        "merged_quantile(latency, 0.95) AS p95 FROM traffic_minute GROUP BY ALL",
    ),
    Helper(
        "hll_merge(sketch)",
        "aggregate",
        "the union of the group's HLL sketches, as a sketch (BLOB)",
        "SELECT hll_estimate(hll_merge(visitors)) FROM visitors_day",
    ),
    Helper(
        "histogram_merge(histogram)",
        "aggregate",
        "the sum of the group's latency histograms, as a histogram",
        "SELECT ddsketch_quantile(histogram_merge(latency), 0.5) FROM traffic_hour",
    ),
    Helper(
        "hll_estimate(sketch)",
        "scalar",
        "estimated distinct count of one sketch (one row)",
        "SELECT window_start, hll_estimate(visitors) FROM visitors_day",
    ),
    Helper(
        "ddsketch_quantile(histogram, q)",
        "scalar",
        "quantile q of one histogram (one row)",
        "SELECT window_start, route, ddsketch_quantile(latency, 0.99) FROM traffic_hour",
    ),
    Helper(
        "histogram_sum(entries)",
        "scalar",
        "a list of (key, count) entries in any order as a histogram: keys summed, sorted",
        "SELECT histogram_sum(flatten(list(latency))) FROM traffic_hour",
    ),
    Helper(
        "hll_union_list(sketches)",
        "scalar",
        "the union of a list of sketches (what hll_merge applies to list(sketch))",
        "SELECT hll_estimate(hll_union_list(list(visitors))) FROM visitors_day",
    ),
    Helper(
        "ddsketch_key(value_ms)",
        "scalar",
        "the histogram bucket key of a latency in milliseconds",
        "SELECT ddsketch_key(latency_ms), count(*) FROM traffic GROUP BY 1",
    ),
)

# Macro bodies: each is expanded where it is called, so the aggregate inside makes the
# macro an aggregate. Names match HELPERS above.
_MACROS: Final[dict[str, tuple[str, str]]] = {
    "hll_merge": ("sketch", "hll_union_list(list(sketch))"),
    "unique_count": ("sketch", "hll_estimate(hll_union_list(list(sketch)))"),
    # flatten(list(h)) is every (key, count) entry of the group; histogram_sum adds
    # entries of equal keys and sorts them, which ddsketch_quantile's walk needs.
    "histogram_merge": ("histogram", "histogram_sum(flatten(list(histogram)))"),
    # = ddsketch_quantile(histogram_merge(histogram), q), in one Python call
    # (serving.histogram_udfs: the same answer without the merged histogram's trips).
    "merged_quantile": ("histogram, q", "histogram_list_quantile(list(histogram), q)"),
}


def register_sql_functions(con: duckdb.DuckDBPyConnection, *, temporary: bool = True) -> None:
    """Register the sketch scalars and the merging helpers on ``con``.

    Must run before the connection's configuration is locked (the macros are created
    with SQL). Registering twice replaces the earlier definitions. ``temporary=False``
    puts the macros in the database's catalog, where every connection of it
    (``cursor()``) finds them; the Python functions are the database's either way.
    """
    register_sketch_functions(con)
    with contextlib.suppress(duckdb.InvalidInputException):
        con.remove_function("histogram_sum")
    con.create_function(
        "histogram_sum",
        histogram_sum_udf,
        [DUCKDB_HISTOGRAM_TYPE],
        DUCKDB_HISTOGRAM_TYPE,
        type=ARROW,
    )
    with contextlib.suppress(duckdb.InvalidInputException):
        con.remove_function("histogram_list_quantile")
    con.create_function(
        "histogram_list_quantile",
        merged_quantile_udf,
        [f"{DUCKDB_HISTOGRAM_TYPE}[]", "DOUBLE"],
        "DOUBLE",
        type=ARROW,
        # NULL for an empty group or q outside [0, 1], which DEFAULT forbids.
        null_handling=SPECIAL,
    )
    temp = "TEMP " if temporary else ""
    if not temporary:  # register_sketch_functions made this one TEMP
        con.execute(f"CREATE OR REPLACE MACRO ddsketch_key(x) AS {bucket_key_sql('x')}")
    for name, (params, body) in _MACROS.items():
        con.execute(f"CREATE OR REPLACE {temp}MACRO {name}({params}) AS {body}")


def helpers_text() -> str:
    """The helpers as a short reference (``.help`` in ``loglambda sql``)."""
    width = max(len(h.signature) for h in HELPERS)
    lines = ["SQL helpers for sketch columns (aggregates merge the rows of a group):"]
    for h in HELPERS:
        lines.append(f"  {h.signature:<{width}}  {h.kind:<9}  {h.does}")
    lines.append("Examples:")
    lines.extend(f"  {h.example};" for h in HELPERS if h.kind == "aggregate")
    return "\n".join(lines)
