"""The dashboard's questions: time windows, and the SQL that answers each one.

Every question is one SQL statement run by ``serving.sql.QueryEngine`` -- the same
locked-down engine, merged views and freshness any ``POST /v1/query`` user gets -- so
a number on the dashboard can always be reproduced by hand with the statement shown
in the API response (``sql``).

Time windows are half-open ``[start, end)`` in UTC. A question can only be answered
exactly for whole windows of the view it reads, so the requested range is widened to
the view's grain (a minute, or an hour) and the response says which range it answered
for. Series buckets are aligned to the step counted from the Unix epoch (steps divide a
day, so a ``1d`` bucket is a UTC day and a ``1h`` bucket a clock hour). The coarsest view
whose grain fits the window is read: merging a view costs its size, and the hour views
hold ~60× fewer rows than the minute ones while giving the same answer.

Why status codes read the raw ``traffic`` table: per-code counts exist only in the
day-grain ``status_codes`` view, which cannot answer "the last hour". Raw events can,
for any window; their coverage (master + log tail) is in the response's freshness
(``raw``), and may run ahead of the views by the speed layer's lag.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final, Literal

UTC: Final = dt.UTC
STEPS: Final[dict[str, int]] = {
    "1m": 60,
    "5m": 300,
    "15m": 900,
    "30m": 1800,
    "1h": 3600,
    "3h": 10_800,
    "6h": 21_600,
    "12h": 43_200,
    "1d": 86_400,
}
Step = Literal["1m", "5m", "15m", "30m", "1h", "3h", "6h", "12h", "1d"]
TARGET_POINTS: Final = 360  # the automatic step keeps a series near this length
MAX_POINTS: Final = 10_000  # a longer series is refused: ask for a bigger step
MIN_TIME: Final = dt.datetime(1970, 1, 1, tzinfo=UTC)
MAX_TIME: Final = dt.datetime(2200, 1, 1, tzinfo=UTC)
DEFAULT_SPAN: Final = dt.timedelta(hours=24)
P95: Final = 0.95


class BadWindow(ValueError):
    """A time window that cannot be answered; the message says why (HTTP 400)."""


@dataclass(frozen=True)
class Window:
    """A half-open UTC range ``[start, end)`` that whole views' windows tile."""

    start: dt.datetime
    end: dt.datetime

    @property
    def seconds(self) -> int:
        return int((self.end - self.start).total_seconds())

    def where(self, column: str = "window_start") -> str:
        return f"{column} >= {ts_literal(self.start)} AND {column} < {ts_literal(self.end)}"


def utc(value: dt.datetime) -> dt.datetime:
    """An aware UTC datetime (a naive one is taken as UTC, like the log parsers do)."""
    return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def iso(value: dt.datetime) -> str:
    """``2015-05-17T10:05:00Z`` (what every API response uses)."""
    return utc(value).isoformat().replace("+00:00", "Z")


def ts_literal(value: dt.datetime) -> str:
    """A DuckDB TIMESTAMPTZ literal; built only from a datetime, never from user text."""
    return f"TIMESTAMPTZ '{utc(value).strftime('%Y-%m-%d %H:%M:%S.%f')}+00'"


def _floor(value: dt.datetime, unit_s: int) -> dt.datetime:
    epoch = int((value - MIN_TIME) // dt.timedelta(microseconds=1))
    unit_us = unit_s * 1_000_000
    return MIN_TIME + dt.timedelta(microseconds=epoch - epoch % unit_us)


def _ceil(value: dt.datetime, unit_s: int) -> dt.datetime:
    down = _floor(value, unit_s)
    return down if down == value else down + dt.timedelta(seconds=unit_s)


def window(
    start: dt.datetime | None, end: dt.datetime | None, unit_s: int, *, now: dt.datetime
) -> Window:
    """The requested range widened to whole ``unit_s`` windows. Defaults: ``end`` now,
    ``start`` 24 h before ``end``."""
    stop = utc(end) if end is not None else now
    begin = utc(start) if start is not None else stop - DEFAULT_SPAN
    for name, value in (("from", begin), ("to", stop)):
        if not MIN_TIME <= value <= MAX_TIME:
            raise BadWindow(f"{name} must lie between {iso(MIN_TIME)} and {iso(MAX_TIME)}")
    if begin >= stop:
        raise BadWindow(f"from ({iso(begin)}) must be before to ({iso(stop)})")
    return Window(_floor(begin, unit_s), _ceil(stop, unit_s))


def auto_step(start: dt.datetime, end: dt.datetime) -> Step:
    """The smallest step that keeps the series at most ``TARGET_POINTS`` long."""
    span = (end - start).total_seconds()
    for name, seconds in STEPS.items():
        if span / seconds <= TARGET_POINTS:
            return name  # type: ignore[return-value]
    return "1d"


def series_window(
    start: dt.datetime | None, end: dt.datetime | None, step: Step | None, *, now: dt.datetime
) -> tuple[Window, Step]:
    """The range widened to whole steps, and the step (chosen when not given)."""
    raw = window(start, end, 60, now=now)
    chosen: Step = step or auto_step(raw.start, raw.end)
    win = window(raw.start, raw.end, STEPS[chosen], now=now)
    points = win.seconds // STEPS[chosen]
    if points > MAX_POINTS:
        raise BadWindow(
            f"{points:,} points of {chosen} is more than {MAX_POINTS:,}; use a bigger step"
        )
    return win, chosen


def grain(win: Window) -> Literal["minute", "hour"]:
    """The coarsest grain whose windows tile ``win`` exactly."""
    return (
        "hour"
        if win.start == _floor(win.start, 3600) and win.end == _floor(win.end, 3600)
        else "minute"
    )


def buckets(win: Window, step_s: int) -> list[dt.datetime]:
    """Every bucket start of the series, gaps included (a quiet minute is a zero)."""
    return [win.start + dt.timedelta(seconds=s) for s in range(0, win.seconds, step_s)]


# -- the statements ------------------------------------------------------------------


def _bucket(step_s: int) -> str:
    return (
        f"time_bucket(INTERVAL {step_s} SECOND, window_start, TIMESTAMPTZ '1970-01-01 00:00:00+00')"
    )


def traffic_sql(win: Window, step: Step) -> str:
    """Requests, 5xx, bytes and p95 per bucket, and (bucket NULL) over the window.

    Two levels: the window's total merges the buckets' histograms, not every row's
    again (histograms add, so the p95 is the same; half the merging). Groups only by
    the window and merges every measure it reads: ``api`` registers the view rolled up
    over its dimensions for it (``QueryEngine.run``'s ``rollup``)."""
    view = "traffic_hour" if STEPS[step] >= 3600 else "traffic_minute"
    return (
        f"WITH b AS (SELECT {_bucket(STEPS[step])} AS t, sum(requests)::BIGINT AS requests, "
        "sum(errors_5xx)::BIGINT AS errors_5xx, sum(bytes)::BIGINT AS bytes, "
        f"histogram_merge(latency) AS latency FROM {view} WHERE {win.where()} GROUP BY t) "
        f"SELECT t, requests, errors_5xx, bytes, ddsketch_quantile(latency, {P95}) "
        "AS latency_p95_ms FROM b UNION ALL SELECT NULL, sum(requests)::BIGINT, "
        f"sum(errors_5xx)::BIGINT, sum(bytes)::BIGINT, merged_quantile(latency, {P95}) "
        "FROM b ORDER BY t"
    )


def top_routes_sql(win: Window, limit: int) -> str:
    """The routes with the most requests, with 5xx and p95. The histograms of only the
    top routes are merged (a day has ~1,000 routes; merging them all cost most of the
    answer). Groups by route only and merges every measure it reads: ``api`` registers
    the view rolled up to its routes (``rollup`` ("route",))."""
    view = f"traffic_{grain(win)}"
    return (
        "WITH top AS (SELECT route, sum(requests)::BIGINT AS requests, "
        f"sum(errors_5xx)::BIGINT AS errors_5xx FROM {view} WHERE {win.where()} "
        f"GROUP BY route ORDER BY requests DESC, route NULLS LAST LIMIT {int(limit)}) "
        "SELECT top.route, top.requests, top.errors_5xx, "
        f"merged_quantile(v.latency, {P95}) AS latency_p95_ms FROM top JOIN {view} AS v "
        f"ON v.route IS NOT DISTINCT FROM top.route AND {win.where('v.window_start')} "
        "GROUP BY ALL ORDER BY requests DESC, route NULLS LAST"
    )


def status_codes_sql(win: Window) -> str:
    return (
        "SELECT status::INTEGER AS status, count(*)::BIGINT AS requests FROM traffic "
        f"WHERE {win.where('ts')} GROUP BY status ORDER BY status"
    )


def visitors_sql(win: Window) -> str:
    """Unique visitors per UTC day and (day NULL) over the whole window.

    Whole days inside the window come from ``visitors_day``, the partial days at its
    ends from ``visitors_hour`` (exact for their hours). A day's sketch has the
    registers of the union of its hours' sketches, so the estimates are those of
    ``visitors_hour`` alone, from ~10x fewer sketches for a month. The window's total
    is the union of the days' unions (the same registers again)."""
    first, last = _ceil(win.start, 86_400), _floor(win.end, 86_400)
    rows = "SELECT window_start, hits, visitors FROM"
    source = f"{rows} visitors_hour WHERE {win.where()}"
    if first < last:
        days = Window(first, last)
        source += f" AND NOT ({days.where()}) UNION ALL {rows} visitors_day WHERE {days.where()}"
    return (
        f"WITH h AS ({source}), d AS (SELECT date_trunc('day', window_start) AS day, "
        "sum(hits)::BIGINT AS hits, hll_merge(visitors) AS visitors FROM h GROUP BY day) "
        "SELECT day, hits, hll_estimate(visitors) AS visitors FROM d "
        "UNION ALL SELECT NULL, sum(hits)::BIGINT, unique_count(visitors) FROM d ORDER BY day"
    )


def log_levels_sql(win: Window) -> str:
    return (
        "SELECT service, level, sum(records)::BIGINT AS records FROM log_records_minute "
        f"WHERE {win.where()} GROUP BY service, level ORDER BY service NULLS LAST, level"
    )


# One statement, so both ranges come from one snapshot. visitors_hour is the smallest
# traffic view with a time; its hour resolution is enough to place a range picker.
RANGE_SQL: Final = (
    "SELECT 'traffic' AS kind, min(window_start) AS first, "
    "max(window_start) + INTERVAL 1 HOUR AS last FROM visitors_hour "
    "UNION ALL SELECT 'logs', min(window_start), max(window_start) + INTERVAL 1 MINUTE "
    "FROM log_records_minute"
)


# -- shaping -------------------------------------------------------------------------


def split_total(
    rows: list[dict[str, Any]], key: str
) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Rows of a ``GROUPING SETS ((key), ())`` query: the grouped ones, and the total
    (the row whose key is NULL; an empty window still has one)."""
    grouped = [r for r in rows if r[key] is not None]
    totals = [r for r in rows if r[key] is None]
    return grouped, (totals[0] if totals else {})


def series(rows: list[dict[str, Any]], win: Window, step_s: int) -> dict[str, list[Any]]:
    """Columnar series over every bucket: counts zero-filled, p95 null where empty."""
    by_t = {utc(r["t"]): r for r in rows}
    out: dict[str, list[Any]] = {
        "t": [],
        "requests": [],
        "errors_5xx": [],
        "bytes": [],
        "latency_p95_ms": [],
    }
    for t in buckets(win, step_s):
        row = by_t.get(t, {})
        out["t"].append(iso(t))
        for name in ("requests", "errors_5xx", "bytes"):
            out[name].append(int(row.get(name) or 0))
        out["latency_p95_ms"].append(row.get("latency_p95_ms"))
    return out
