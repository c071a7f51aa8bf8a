"""The shapes of the read API's answers (they make its OpenAPI spec).

Every answer that reads data carries ``freshness``: the batch version and horizon, the
speed position, the log end and the lag per log partition (and, when raw events were
read, what of them the master held and which log ranges were read). Times are ISO-8601
UTC strings ending in ``Z``; ``from``/``to`` are the half-open range actually answered,
which is the requested one widened to whole windows of the view read.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from loglambda.serving.questions import Step


class RawCoverage(BaseModel):
    master_seq: int = Field(description="Master dataset snapshot the raw tables read.")
    master_offsets: dict[str, int] = Field(description="Per partition: the master holds below.")
    tail: dict[str, list[tuple[int, int]]] = Field(description="Log ranges read besides.")
    log_end: dict[str, int]


class Freshness(BaseModel):
    batch_version: int | None = Field(description="Batch version served (None: none yet).")
    horizon: dict[str, int] = Field(description="Per partition: the batch covers below.")
    positions: dict[str, int] = Field(description="Per partition: the answer covers below.")
    log_end: dict[str, int] = Field(description="Per partition: events appended.")
    lag: dict[str, int] = Field(description="Per partition: appended events not covered.")
    speed_generation: int
    speed_updated_at: float | None = Field(description="Unix time of the speed commit.")
    as_of: float = Field(description="Unix time the snapshot was taken.")
    notes: list[str]
    raw: RawCoverage | None = Field(None, description="Only when raw tables were read.")


class Column(BaseModel):
    name: str
    type: str


class MeasureInfo(BaseModel):
    name: str
    agg: str
    column: str | None
    filter: str | None


class TableInfo(BaseModel):
    name: str
    type: str = Field(description="view (catalog), raw (events) or meta")
    kind: str | None = Field(description="traffic or logs; None for meta tables")
    grain: str | None = None
    key_columns: list[str] = []
    measures: list[MeasureInfo] = []
    columns: list[Column]
    description: str


class ViewsResponse(BaseModel):
    views: list[TableInfo] = Field(description="The catalog's views.")
    tables: list[TableInfo] = Field(description="Raw event tables and meta tables.")


class QueryRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    sql: str = Field(min_length=1, max_length=100_000, description="One read-only statement.")
    max_rows: int = Field(10_000, ge=0, le=100_000, description="Rows returned at most.")
    timeout_s: float = Field(30.0, gt=0, le=300, description="Seconds before it is stopped.")


class QueryResponse(BaseModel):
    columns: list[Column]
    rows: list[dict[str, Any]] = Field(
        description="Sketches as base64, times ISO-8601, NaN/±Infinity as strings."
    )
    row_count: int
    truncated: bool = Field(description="More rows existed than max_rows.")
    elapsed_ms: float
    tables: list[str] = Field(description="The tables the statement read.")
    freshness: Freshness


class Problem(BaseModel):
    detail: str
    error: str = Field(
        "bad_request",
        description="bad_window, forbidden, unknown_table, failed, timeout, "
        "incomplete_data (503: retry later); absent when the request itself is malformed "
        "(a body that is not JSON)",
    )


class Answer(BaseModel):
    """What every dashboard answer has."""

    model_config = ConfigDict(populate_by_name=True)
    start: str = Field(alias="from")
    end: str = Field(alias="to")
    sql: str = Field(description="The statement that produced it (POST /v1/query runs it).")
    freshness: Freshness


class Span(BaseModel):
    first: str | None = Field(description="Start of the first window holding data.")
    last: str | None = Field(description="End of the last window holding data.")


class RangeResponse(BaseModel):
    traffic: Span
    logs: Span
    now: str
    sql: str
    freshness: Freshness


class Series(BaseModel):
    t: list[str] = Field(description="Bucket starts; every bucket, quiet ones included.")
    requests: list[int]
    errors_5xx: list[int]
    bytes: list[int]
    latency_p95_ms: list[float | None] = Field(description="None where nothing was timed.")


class TrafficTotals(BaseModel):
    requests: int
    errors_5xx: int
    bytes: int
    latency_p95_ms: float | None


class TrafficResponse(Answer):
    step: Step
    view: str
    series: Series
    totals: TrafficTotals


class RouteRow(BaseModel):
    route: str | None
    requests: int
    errors_5xx: int
    latency_p95_ms: float | None


class TopRoutesResponse(Answer):
    view: str
    routes: list[RouteRow]


class StatusRow(BaseModel):
    status: int
    status_class: str
    requests: int


class StatusCodesResponse(Answer):
    codes: list[StatusRow]


class VisitorDay(BaseModel):
    day: str
    hits: int
    visitors: int = Field(description="HLL estimate (about 1.6 % standard error).")


class VisitorsResponse(Answer):
    days: list[VisitorDay]
    total: VisitorDay = Field(description="Over the whole range (day = from).")


class LevelRow(BaseModel):
    service: str | None
    level: str
    records: int


class LogLevelsResponse(Answer):
    view: str
    rows: list[LevelRow]
