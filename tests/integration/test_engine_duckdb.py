"""The DuckDB engine against a plain-Python computation of the same views.

The reference here evaluates each view per event, in Python, from its catalog
declaration: derived values by their own definitions (``re``, ``urllib``, ua-parser),
measures by ``len``/``sum``/``min``/``max``. It shares no code with the compiler, so
the engine's two-phase SQL, side tables and lookups are checked against the obvious.
Exact measures must match exactly; a sketch must be byte-identical to the sketch of
the exact item set, and a histogram equal to the sketches module's numpy histogram.
"""

from __future__ import annotations

import io
import math
import re
import urllib.parse
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ua_parser import parse_os, parse_user_agent

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.batch.importer import import_file
from loglambda.batch.master import MasterDataset
from loglambda.core.catalog import (
    STANDARD_CATALOG,
    WINDOW_COLUMN,
    CatalogError,
    Dimension,
    Measure,
    View,
    output_schema,
)
from loglambda.core.derived import GOACCESS_STATIC_EXTENSIONS
from loglambda.core.generate import main_generate
from loglambda.core.schemas import Kind
from loglambda.core.sketches import build_hll, histogram_from_values, histograms_from_arrow

pytestmark = pytest.mark.integration

Row = dict[str, Any]


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[Kind, list[Path]]:
    """A small master: 12k traffic events over two days (with hosts) and app logs."""
    tmp = tmp_path_factory.mktemp("engine")
    traffic, logs = tmp / "access.log", tmp / "app.log"
    main_generate("traffic", 12_000, traffic, 3, "nginx_json", 2, None, 0.0, 0.0)
    main_generate("logs", 3_000, logs, 3, "json", 2, None, 0.0, 0.0)
    master = MasterDataset(tmp / "home")
    for path in (traffic, logs):
        import_file(master, path)
    snapshot = master.snapshot()
    return {"traffic": snapshot.files("traffic"), "logs": snapshot.files("logs")}


@pytest.fixture(scope="module")
def computed(files: dict[Kind, list[Path]]) -> dict[str, pa.Table]:
    with DuckDBEngine() as engine:
        return engine.compute_all(STANDARD_CATALOG, files)


@pytest.fixture(scope="module")
def events(files: dict[Kind, list[Path]]) -> dict[Kind, list[Row]]:
    out: dict[Kind, list[Row]] = {}
    for kind, paths in files.items():
        rows = pq.ParquetDataset([str(p) for p in paths], partitioning=None).read().to_pylist()
        for r in rows:
            r.update({name: fn(r) for name, fn in DERIVED.items() if _applies(kind, name)})
        out[kind] = rows
    return out


# -- the reference: every derived value, defined again in plain Python ----------------

SEGMENT_FOLDS = [
    (re.compile(r"[0-9]+"), ":id"),
    (re.compile(r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"),
     ":uuid"),
    (re.compile(r"[0-9a-fA-F]{16,}"), ":hash"),
]  # fmt: skip


def _route(path: str) -> str:
    def fold(seg: str) -> str:
        return next((tok for rx, tok in SEGMENT_FOLDS if rx.fullmatch(seg)), seg)

    return "/".join(fold(s) for s in path.split("/"))


def _request(r: Row) -> str:
    raw = r["path"] if r["query"] is None else f"{r['path']}?{r['query']}"
    if "%" not in raw:
        return str(raw)
    try:
        decoded = urllib.parse.unquote_to_bytes(raw).decode("utf-8")
    except UnicodeDecodeError:
        return str(raw)
    return decoded.strip(" \t\n\v\f\r") or "-"


def _site(ref: str | None) -> str | None:
    m = re.search(r"//([^/]*)", ref or "")
    return m.group(1) or None if m else None


def _agent(r: Row, parse: Callable[[str], Any]) -> str | None:
    if r["user_agent"] is None:
        return None
    parsed = parse(r["user_agent"])
    return str(parsed.family) if parsed else "Other"


def _micros(ms: float | None) -> int | None:
    return None if ms is None else math.floor(ms * 1000 + 0.5)


DERIVED: dict[str, Callable[[Row], Any]] = {
    "date": lambda r: r["ts"].date(),
    "hour_of_day": lambda r: r["ts"].hour,
    "status_class": lambda r: f"{r['status'] // 100}xx",
    "route": lambda r: _route(r["path"]),
    "request": _request,
    "referrer_host": lambda r: _site(r["referrer"]),
    "browser": lambda r: _agent(r, parse_user_agent),
    "os": lambda r: _agent(r, parse_os),
    "latency_us": lambda r: _micros(r["latency_ms"]),
    "is_5xx": lambda r: r["status"] >= 500,
    "is_404": lambda r: r["status"] == 404,
    "not_404": lambda r: r["status"] != 404,
    "not_4xx": lambda r: not 400 <= r["status"] <= 499,
    "has_referrer": lambda r: r["referrer"] is not None,
    "is_error": lambda r: r["level"] in ("error", "fatal"),
}  # fmt: skip
TRAFFIC_ONLY = {"status_class", "route", "request", "referrer_host", "browser", "os",
                "latency_us", "is_5xx", "is_404", "not_404", "not_4xx", "has_referrer"}  # fmt: skip


def _applies(kind: Kind, name: str) -> bool:
    if name == "is_error":
        return kind == "logs"
    return kind == "traffic" or name not in TRAFFIC_ONLY


def _late(r: Row) -> None:
    """Values derived from other derived values (computed after the first pass)."""
    if "request" in r:
        r["is_static"] = r["request"].lower().endswith(GOACCESS_STATIC_EXTENSIONS)
        r["has_referrer_host"] = r["referrer_host"] is not None
        agent = (r["user_agent"] or "-").replace(" ", "")
        r["visitor"] = f"{r['client_ip']}|{r['date'].isoformat()}|{agent}"


def _window(ts: datetime, grain: str) -> datetime:
    ts = ts.astimezone(UTC)
    if grain == "minute":
        return ts.replace(second=0, microsecond=0)
    if grain == "hour":
        return ts.replace(minute=0, second=0, microsecond=0)
    return ts.replace(hour=0, minute=0, second=0, microsecond=0)


def reference(view: View, rows: list[Row]) -> dict[tuple[Any, ...], Row]:
    """The view computed per event in Python: key tuple -> measures."""
    groups: dict[tuple[Any, ...], list[Row]] = {}
    for r in rows:
        _late(r)
        if view.where and not r[view.where]:
            continue
        key = (_window(r["ts"], view.grain),) if view.grain else ()
        key += tuple(r[d.source] for d in view.dimensions)
        groups.setdefault(key, []).append(r)
    out: dict[tuple[Any, ...], Row] = {}
    for key, members in groups.items():
        row: Row = {}
        for m in view.measures:
            seen = [r for r in members if m.filter is None or r[m.filter]]
            values = [r[m.column] for r in seen] if m.column else []
            present = [v for v in values if v is not None]
            if m.agg == "count":
                row[m.name] = len(seen) if m.column is None else len(present)
            elif m.agg == "distinct":
                row[m.name] = build_hll(pa.array(sorted(set(present))))
            elif m.agg == "quantiles":
                row[m.name] = histogram_from_values(present)
            elif not present:
                row[m.name] = None
            elif m.agg == "sum":
                row[m.name] = sum(present)
            else:
                row[m.name] = min(present) if m.agg == "min" else max(present)
        out[key] = row
    return out


def check(view: View, table: pa.Table, rows: list[Row]) -> None:
    assert table.schema == output_schema(view)
    expected = reference(view, rows)
    got = table.to_pylist()
    keys = [tuple(r[k] for k in view.key_columns) for r in got]
    assert len(set(keys)) == len(keys), "duplicate keys"
    assert keys == sorted(keys, key=lambda k: tuple((v is not None, v) for v in k))
    assert set(keys) == set(expected), set(keys) ^ set(expected)
    hists = [m.name for m in view.measures if m.agg == "quantiles"]
    for key, row in zip(keys, got, strict=True):
        for name in hists:
            row[name] = tuple(histograms_from_arrow(pa.array([row[name]]))[0] or ())
        want = expected[key]
        assert {m.name: row[m.name] for m in view.measures} == want, (view.name, key)


@pytest.mark.parametrize("name", list(STANDARD_CATALOG))
def test_standard_view_matches_plain_python(
    name: str, computed: dict[str, pa.Table], events: dict[Kind, list[Row]]
) -> None:
    view = STANDARD_CATALOG[name]
    table = computed[name]
    assert table.num_rows > 0
    check(view, table, events[view.kind])


def test_a_new_view_needs_no_engine_change(
    files: dict[Kind, list[Path]], events: dict[Kind, list[Row]]
) -> None:
    """Views declared here, mixing every kind of part: derived-per-value dimensions,
    a lookup, phase-2 predicates, several sketches, no grain, no dimensions."""
    views = [
        View("sites_by_browser", "traffic", "hour",
             (Dimension("site", "referrer_host"), Dimension("browser", "browser"),
              Dimension("static", "is_static")),
             (Measure("n", "count"), Measure("errors", "count", filter="is_5xx"),
              Measure("smallest", "min", "bytes"), Measure("slowest", "max", "latency_ms"),
              Measure("latency", "quantiles", "latency_ms"),
              Measure("static_latency", "quantiles", "latency_ms", filter="is_static"),
              Measure("ips", "distinct", "client_ip"),
              Measure("visitors", "distinct", "visitor", filter="has_referrer_host")),
             where="has_referrer_host", description="probe"),
        View("everything", "traffic", None, (),
             (Measure("n", "count"), Measure("routes", "distinct", "route"),
              Measure("first", "min", "ts"), Measure("bytes", "sum", "bytes"))),
        View("all_visitors", "traffic", None, (), (Measure("v", "distinct", "visitor"),)),
        View("services", "logs", "day", (Dimension("level", "level"),),
             (Measure("n", "count"), Measure("errors", "count", filter="is_error"),
              Measure("services", "distinct", "service"))),
    ]  # fmt: skip
    with DuckDBEngine() as engine:
        tables = engine.compute_all(views, files)
    for view in views:
        check(view, tables[view.name], events[view.kind])


def _parquet_bytes(table: pa.Table) -> bytes:
    sink = io.BytesIO()
    pq.write_table(table, sink)
    return sink.getvalue()


def test_deterministic_bytes(files: dict[Kind, list[Path]], computed: dict[str, pa.Table]) -> None:
    """Fresh engine, one view per call (as a batch run does): identical Parquet bytes."""
    with DuckDBEngine() as engine:
        for name, view in STANDARD_CATALOG.items():
            again = engine.compute(view, files[view.kind])
            assert _parquet_bytes(again) == _parquet_bytes(computed[name]), name


def test_no_events_gives_an_empty_table() -> None:
    with DuckDBEngine() as engine:
        for view in STANDARD_CATALOG.values():
            table = engine.compute(view, [])
            assert table.num_rows == 0 and table.schema == output_schema(view)


def test_timestamps_are_utc_microseconds(computed: dict[str, pa.Table]) -> None:
    window = computed["traffic_hour"].column(WINDOW_COLUMN)
    assert window.type == pa.timestamp("us", tz="UTC")
    first = window[0].as_py()
    assert first.tzinfo is not None and first.utcoffset() == timedelta(0)


def test_unsupported_aggregation_fails_naming_view(files: dict[Kind, list[Path]]) -> None:
    bad = View("probe", "traffic", "day", (), (Measure("p", "median", "latency_ms"),))  # type: ignore[arg-type]
    with DuckDBEngine() as engine, pytest.raises(CatalogError, match=r"view 'probe'.*'median'"):
        engine.compute(bad, files["traffic"])
