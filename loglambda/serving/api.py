"""The read API: ``/v1/views``, ``/v1/query`` and the dashboard's questions.

Everything here runs through ``serving.sql.QueryEngine``, so an HTTP answer, a
``loglambda query`` answer and a dashboard chart are the same numbers from the same
merged views, each with its freshness. All routes need a token with the ``read`` scope
when tokens are configured (401 without a known token, 403 without the scope).

Refusals are JSON ``{"detail": ..., "error": ...}``: 400 for a statement or time
range that cannot be answered (``forbidden``, ``unknown_table``, ``failed``,
``timeout``, ``bad_window``), 503 with ``Retry-After`` when the answer would miss or
double count events (``incomplete_data``: a slice between the horizon and the speed
position is missing, the served batch version lacks a view...) -- never a short
answer.

Handlers are plain ``def``: FastAPI runs them in its worker threads, so a query (which
holds the GIL only in Python parts; DuckDB releases it) never blocks the event loop
that ingest shares.
"""

from __future__ import annotations

import datetime as dt
import math
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING, Annotated, Any, Final

from fastapi import APIRouter, Depends, HTTPException, Query, Request, Security
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog
from loglambda.core.schemas import KINDS
from loglambda.serving import api_models as m
from loglambda.serving import questions as q
from loglambda.serving.auth import check
from loglambda.serving.merge import Rollup
from loglambda.serving.sql import (
    META_TABLES,
    DataUnavailable,
    ForbiddenQuery,
    Limits,
    QueryEngine,
    QueryError,
    QueryResult,
    QueryTimeout,
    UnknownTable,
)

if TYPE_CHECKING:  # prometheus imports read_access from here
    from loglambda.serving.prometheus import ServingMetrics

_BEARER: Final = HTTPBearer(
    auto_error=False, description="A loglambda token (LOGLAMBDA_TOKENS) with the read scope."
)
_REFUSALS: Final[dict[int | str, dict[str, Any]]] = {
    401: {"description": "No token, or an unknown one"},
    403: {"description": "The token lacks the read scope"},
    400: {"model": m.Problem, "description": "The statement or range cannot be answered"},
    503: {"model": m.Problem, "description": "The answer would miss data; retry later"},
}
# Dashboard series are short, but a series of MAX_POINTS plus the total row must fit.
_DASHBOARD_ROWS: Final = q.MAX_POINTS + 1
_STATUS_CLASSES: Final = {1: "1xx", 2: "2xx", 3: "3xx", 4: "4xx", 5: "5xx"}
# Module level: with postponed annotations FastAPI resolves them in the module globals.
From = Annotated[
    dt.datetime | None,
    Query(alias="from", description="Start, UTC (ISO-8601; no zone = UTC). Default: to - 24 h."),
]
To = Annotated[
    dt.datetime | None,
    Query(alias="to", description="End, excluded, UTC. Default: now."),
]


async def read_access(
    request: Request,
    _credentials: Annotated[HTTPAuthorizationCredentials | None, Security(_BEARER)],
) -> None:
    """The read scope (the ``Security`` parameter puts the scheme in the OpenAPI spec)."""
    check(request.app.state.tokens, request.headers.get("authorization"), "read")


class _Engine:
    """One ``QueryEngine`` per app, made at first use (it refuses a data home that does
    not exist yet; the app must start anyway and answer once it does)."""

    def __init__(self, settings: Settings, log: EventLog, limits: Limits) -> None:
        self.settings, self.log, self.limits = settings, log, limits
        self._engine: QueryEngine | None = None
        self._lock = threading.Lock()

    def get(self) -> QueryEngine:
        with self._lock:
            if self._engine is None:
                self._engine = QueryEngine(self.settings, limits=self.limits, log=self.log)
            return self._engine


def _problem(status: int, error: str, detail: str) -> JSONResponse:
    headers = {"Retry-After": "5"} if status == 503 else None
    return JSONResponse({"detail": detail, "error": error}, status_code=status, headers=headers)


def _error_code(err: QueryError) -> str:
    for kind, code in (
        (DataUnavailable, "incomplete_data"),
        (ForbiddenQuery, "forbidden"),
        (UnknownTable, "unknown_table"),
        (QueryTimeout, "timeout"),
    ):
        if isinstance(err, kind):
            return code
    return "failed"


def _json_safe(value: Any) -> Any:
    """NaN and ±Infinity as strings: JSON has no such numbers (browsers refuse them)."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    return value


def _int(value: Any) -> int:
    return int(value or 0)


def _p95(value: Any) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def api_router(
    settings: Settings, log: EventLog, metrics: ServingMetrics, limits: Limits | None = None
) -> APIRouter:
    """The read routes over one data home."""
    engine = _Engine(settings, log, limits or Limits())
    router = APIRouter(dependencies=[Depends(read_access)], responses=_REFUSALS)

    def answer(
        endpoint: str,
        sql: str,
        shape: Callable[[QueryResult], dict[str, Any]],
        *,
        max_rows: int = _DASHBOARD_ROWS,
        timeout_s: float | None = None,
        win: q.Window | None = None,
        rollup: Rollup | None = None,
    ) -> Any:
        """Run ``sql``; the shaped answer with its freshness, or the refusal. ``win``
        and ``rollup`` are what a dashboard statement promises (``QueryEngine.run``):
        it reads only rows inside ``win``, and groups and merges as ``rollup`` says."""
        window = None if win is None else (win.start, win.end)
        with metrics.timed(endpoint):
            try:
                result = engine.get().run(
                    sql,
                    max_rows=max_rows,
                    timeout_s=timeout_s,
                    window=window,
                    rollup=rollup,
                    # The dashboard's own statements run apart from ad-hoc SQL.
                    dashboard=endpoint.startswith("dashboard_"),
                )
            except QueryError as err:
                code = _error_code(err)
                metrics.refused(endpoint, code)
                if code == "incomplete_data":
                    return _problem(503, code, str(err))
                return _problem(400, code, str(err))
            doc = shape(result)
        return {**doc, "sql": sql, "freshness": result.freshness_json()}

    def tables() -> tuple[QueryEngine, list[str]]:
        try:
            eng = engine.get()
        except QueryError as err:  # no data home (yet): nothing to describe
            raise HTTPException(503, str(err), headers={"Retry-After": "5"}) from err
        return eng, [*sorted(eng.catalog), *KINDS, *META_TABLES]

    @router.get("/v1/views", summary="The catalog: views and tables, with their columns")
    def views() -> m.ViewsResponse:
        eng, names = tables()
        infos = [_info(eng, name) for name in names]
        return m.ViewsResponse(
            views=[i for i in infos if i.type == "view"],
            tables=[i for i in infos if i.type != "view"],
        )

    @router.get(
        "/v1/views/{name}",
        summary="One view or table, with its columns",
        responses={404: {"model": m.Problem, "description": "No such view or table"}},
    )
    def view(name: str) -> m.TableInfo:
        eng, names = tables()
        if name not in names:
            detail = f"no table {name!r}; the tables are: {', '.join(names)}"
            return _problem(404, "unknown_table", detail)  # type: ignore[return-value]
        return _info(eng, name)

    @router.post("/v1/query", summary="Run one read-only SQL statement")
    def query(body: m.QueryRequest) -> m.QueryResponse:
        from loglambda.serving.query_cli import result_json

        # The answer's "sql" key is not in QueryResponse: the caller sent it.
        out: m.QueryResponse = answer(
            "query",
            body.sql,
            lambda r: _json_safe(result_json(r)),
            max_rows=body.max_rows,
            timeout_s=body.timeout_s,
        )
        return out

    def bad(err: q.BadWindow) -> JSONResponse:
        metrics.refused("dashboard", "bad_window")
        return _problem(400, "bad_window", str(err))

    @router.get("/v1/dashboard/range", summary="Where the data lies in time")
    def data_range() -> m.RangeResponse:
        def shape(r: QueryResult) -> dict[str, Any]:
            spans = {row["kind"]: row for row in r.table.to_pylist()}
            out: dict[str, Any] = {"now": q.iso(dt.datetime.now(q.UTC))}
            for kind in KINDS:
                row = spans.get(kind, {})
                out[kind] = {
                    "first": q.iso(row["first"]) if row.get("first") else None,
                    "last": q.iso(row["last"]) if row.get("last") else None,
                }
            return out

        out: m.RangeResponse = answer("dashboard_range", q.RANGE_SQL, shape)
        return out

    @router.get("/v1/dashboard/traffic", summary="Requests, 5xx, bytes, p95 over time")
    def traffic(
        start: From = None,
        end: To = None,
        step: Annotated[q.Step | None, Query(description="Default: ~360 points.")] = None,
    ) -> m.TrafficResponse:
        try:
            win, chosen = q.series_window(start, end, step, now=dt.datetime.now(q.UTC))
        except q.BadWindow as err:
            return bad(err)  # type: ignore[return-value]
        step_s = q.STEPS[chosen]

        def shape(r: QueryResult) -> dict[str, Any]:
            rows, total = q.split_total(r.table.to_pylist(), "t")
            return {
                **_range(win),
                "step": chosen,
                "view": "traffic_hour" if step_s >= 3600 else "traffic_minute",
                "series": q.series(rows, win, step_s),
                "totals": {
                    "requests": _int(total.get("requests")),
                    "errors_5xx": _int(total.get("errors_5xx")),
                    "bytes": _int(total.get("bytes")),
                    "latency_p95_ms": _p95(total.get("latency_p95_ms")),
                },
            }

        out: m.TrafficResponse = answer(
            "dashboard_traffic",
            q.traffic_sql(win, chosen),
            shape,
            win=win,
            rollup=Rollup(step_s=step_s),
        )
        return out

    @router.get("/v1/dashboard/top_routes", summary="Routes with the most requests")
    def top_routes(
        start: From = None, end: To = None, limit: Annotated[int, Query(ge=1, le=100)] = 10
    ) -> m.TopRoutesResponse:
        try:
            win = q.window(start, end, 60, now=dt.datetime.now(q.UTC))
        except q.BadWindow as err:
            return bad(err)  # type: ignore[return-value]

        def shape(r: QueryResult) -> dict[str, Any]:
            routes = [
                {**row, "latency_p95_ms": _p95(row["latency_p95_ms"])}
                for row in r.table.to_pylist()
            ]
            return {**_range(win), "view": f"traffic_{q.grain(win)}", "routes": routes}

        out: m.TopRoutesResponse = answer(
            "dashboard_top_routes",
            q.top_routes_sql(win, limit),
            shape,
            win=win,
            rollup=Rollup(keep=("route",)),
        )
        return out

    @router.get("/v1/dashboard/status_codes", summary="Requests per status code (raw events)")
    def status_codes(start: From = None, end: To = None) -> m.StatusCodesResponse:
        try:
            win = q.window(start, end, 60, now=dt.datetime.now(q.UTC))
        except q.BadWindow as err:
            return bad(err)  # type: ignore[return-value]

        def shape(r: QueryResult) -> dict[str, Any]:
            codes = [
                {**row, "status_class": _STATUS_CLASSES.get(row["status"] // 100, "other")}
                for row in r.table.to_pylist()
            ]
            return {**_range(win), "codes": codes}

        out: m.StatusCodesResponse = answer(
            "dashboard_status_codes", q.status_codes_sql(win), shape, win=win
        )
        return out

    @router.get("/v1/dashboard/visitors", summary="Unique visitors per UTC day")
    def visitors(start: From = None, end: To = None) -> m.VisitorsResponse:
        try:
            win = q.window(start, end, 3600, now=dt.datetime.now(q.UTC))
        except q.BadWindow as err:
            return bad(err)  # type: ignore[return-value]

        def shape(r: QueryResult) -> dict[str, Any]:
            rows, total = q.split_total(r.table.to_pylist(), "day")

            def day(row: dict[str, Any], when: dt.datetime) -> dict[str, Any]:
                return {
                    "day": q.iso(when),
                    "hits": _int(row.get("hits")),
                    "visitors": round(row.get("visitors") or 0),
                }

            days = [day(row, row["day"]) for row in rows]
            return {**_range(win), "days": days, "total": day(total, win.start)}

        out: m.VisitorsResponse = answer("dashboard_visitors", q.visitors_sql(win), shape, win=win)
        return out

    @router.get("/v1/dashboard/log_levels", summary="Log records by service and level")
    def log_levels(start: From = None, end: To = None) -> m.LogLevelsResponse:
        try:
            win = q.window(start, end, 60, now=dt.datetime.now(q.UTC))
        except q.BadWindow as err:
            return bad(err)  # type: ignore[return-value]

        def shape(r: QueryResult) -> dict[str, Any]:
            return {**_range(win), "view": "log_records_minute", "rows": r.table.to_pylist()}

        out: m.LogLevelsResponse = answer(
            "dashboard_log_levels", q.log_levels_sql(win), shape, win=win
        )
        return out

    return router


def _range(win: q.Window) -> dict[str, str]:
    return {"from": q.iso(win.start), "to": q.iso(win.end)}


def _info(engine: QueryEngine, name: str) -> m.TableInfo:
    """A table as ``/v1/views`` lists it (its columns from the engine's own schema)."""
    columns = [m.Column(name=f.name, type=str(f.type)) for f in engine.schema(name)]
    view = engine.catalog.get(name)
    if view is None:
        kind = name if name in KINDS else None
        return m.TableInfo(
            name=name,
            type="raw" if kind else "meta",
            kind=kind,
            columns=columns,
            description=engine.describe(name),
        )
    return m.TableInfo(
        name=name,
        type="view",
        kind=view.kind,
        grain=view.grain,
        key_columns=list(view.key_columns),
        measures=[
            m.MeasureInfo(name=x.name, agg=x.agg, column=x.column, filter=x.filter)
            for x in view.measures
        ],
        columns=columns,
        description=view.description,
    )
