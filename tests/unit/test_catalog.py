"""The view catalog and the derived registry: definitions, validity, clear errors.

Derived values are evaluated through their DuckDB SQL (in-process, no files) against
expectations written here by hand, from GoAccess 1.7's behaviour where they mirror it.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest

from loglambda.batch.duckdb_sql import compile_view, derived_sql
from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.core import derived as reg
from loglambda.core.catalog import (
    STANDARD_CATALOG,
    WINDOW_COLUMN,
    CatalogError,
    Dimension,
    Measure,
    View,
    check_view,
    output_schema,
    source_type,
    standard_catalog,
)
from loglambda.core.derived import GOACCESS_STATIC_EXTENSIONS, DerivedSettings, ua_lookup
from loglambda.core.schemas import KINDS, schema_for

pytestmark = pytest.mark.unit


def evaluate(
    name: str, rows: list[dict[str, Any]], settings: DerivedSettings | None = None
) -> list[Any]:
    """The derived value ``name`` of each row (traffic columns, missing ones NULL)."""
    # Every column nullable: a row here sets only what the value reads.
    schema = pa.schema([f.with_nullable(True) for f in schema_for("traffic")])
    table = pa.Table.from_pylist([{c: r.get(c) for c in schema.names} for r in rows], schema)
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("events", table)
    sql = f"SELECT {derived_sql('traffic', name, settings)} FROM events"
    return [r[0] for r in con.execute(sql).fetchall()]


ROUTES = [
    ("/users/42", "/users/:id"),
    ("/users/42/orders/7", "/users/:id/orders/:id"),
    ("/1/2/3", "/:id/:id/:id"),
    ("/users/42/", "/users/:id/"),
    ("/item/550e8400-e29b-41d4-a716-446655440000/edit", "/item/:uuid/edit"),
    ("/item/550E8400-E29B-41D4-A716-446655440000", "/item/:uuid"),
    ("/blob/da39a3ee5e6b4b0d3255bfef95601890afd80709", "/blob/:hash"),
    ("/assets/app.e6be4cc4.js", "/assets/app.e6be4cc4.js"),  # hash inside a name: kept
    ("/short/deadbeef", "/short/deadbeef"),  # 8 hex digits is not "long"
    ("/order/12345678901234567890", "/order/:id"),  # digits win over hex
    ("/v2/items", "/v2/items"),
    ("/", "/"),
    ("", ""),
]


@pytest.mark.parametrize(("path", "route"), ROUTES)
def test_route_folds_id_segments(path: str, route: str) -> None:
    assert evaluate("route", [{"path": path}]) == [route]


def test_status_class() -> None:
    statuses = [100, 200, 204, 301, 404, 499, 500, 599]
    got = evaluate("status_class", [{"status": s} for s in statuses])
    assert got == ["1xx", "2xx", "2xx", "3xx", "4xx", "4xx", "5xx", "5xx"]


def test_static_list_is_goaccess_17s() -> None:
    """The 40 extensions of GoAccess 1.7's shipped goaccess.conf, in its order."""
    assert GOACCESS_STATIC_EXTENSIONS[:4] == (".css", ".js", ".jpg", ".png")
    assert len(GOACCESS_STATIC_EXTENSIONS) == len(set(GOACCESS_STATIC_EXTENSIONS)) == 40
    conf = Path("/etc/goaccess/goaccess.conf")
    if conf.is_file():  # a packaged GoAccess: its active list must be ours
        active = re.findall(r"^static-file (\S+)", conf.read_text(), flags=re.MULTILINE)
        assert tuple(active) == GOACCESS_STATIC_EXTENSIONS


def test_static_rule_is_goaccess_suffix_match() -> None:
    """GoAccess matches the end of the decoded request, query string included, ignoring
    case: '/app.css?v=1' is dynamic unless --all-static-files, '/find?q=a.js' static."""
    rows = [
        {"path": "/a.CSS"},
        {"path": "/app.css", "query": "v=1"},
        {"path": "/find", "query": "q=a.js"},
        {"path": "/style.css.map"},
        {"path": "/img/logo.png"},
        {"path": "/download.tar.gz"},
        {"path": "/a.js"},
        {"path": "/api/users"},
    ]
    assert evaluate("is_static", rows) == [True, False, True, False, True, True, True, False]
    every = DerivedSettings(all_static_files=True)
    assert evaluate("is_static", rows, every)[1:3] == [True, False]
    custom = DerivedSettings(static_extensions=(".map",))
    assert evaluate("is_static", rows, custom)[3] is True


def test_static_settings_refuse_garbage() -> None:
    with pytest.raises(ValueError, match="static extensions"):
        DerivedSettings(static_extensions=("css",))
    with pytest.raises(ValueError, match="static extensions"):
        DerivedSettings(static_extensions=())


def test_request_is_goaccess_decoded_url() -> None:
    rows: list[dict[str, Any]] = [
        {"path": "/blog/tags/is%20it%20done", "query": None},
        {"path": "/p", "query": "utm=Feed%3A+main"},  # '+' stays, as in GoAccess
        {"path": "/abcd%20", "query": None},  # trimmed after decoding
        {"path": "/q%FFz", "query": None},  # not UTF-8 once decoded: kept as sent
        {"path": "/plain", "query": ""},
    ]
    assert evaluate("request", rows) == [
        "/blog/tags/is it done", "/p?utm=Feed:+main", "/abcd", "/q%FFz", "/plain?",
    ]  # fmt: skip


def test_referrer_host_is_goaccess_site() -> None:
    refs = [
        "https://www.google.com/search?q=x",
        "http://example.com?x=1",  # GoAccess cuts at '/', not '?'
        "http://ex2.com:8080/p",
        "android-app://com.google.android.gm",
        "x//",
        "no-scheme",
        None,
    ]
    got = evaluate("referrer_host", [{"referrer": r} for r in refs])
    assert got == [
        "www.google.com", "example.com?x=1", "ex2.com:8080", "com.google.android.gm",
        None, None, None,
    ]  # fmt: skip


def test_visitor_key_is_ip_date_agent_without_blanks() -> None:
    from datetime import UTC, datetime

    ts = datetime(2015, 5, 17, 23, 59, tzinfo=UTC)
    rows = [
        {"ts": ts, "client_ip": "1.2.3.4", "user_agent": "Mozilla/5.0 (X11; Linux)"},
        {"ts": ts, "client_ip": "1.2.3.4", "user_agent": None},
    ]
    assert evaluate("visitor", rows) == [
        "1.2.3.4|2015-05-17|Mozilla/5.0(X11;Linux)",
        "1.2.3.4|2015-05-17|-",
    ]


def test_latency_us_rounds_to_whole_microseconds() -> None:
    rows = [{"latency_ms": v} for v in (0.123 * 1000 / 1000, 12.3456, 0.0, None)]
    assert evaluate("latency_us", rows) == [123, 12346, 0, None]


def test_ua_lookup_parses_each_distinct_agent_once(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = reg._parse_agent

    def counting(agent: str) -> tuple[str, str]:
        calls.append(agent)
        return real(agent)

    monkeypatch.setattr(reg, "_parse_agent", counting)
    monkeypatch.setattr(reg, "_UA_CACHE", {})
    chrome = (
        "Mozilla/5.0 (Windows NT 6.1; WOW64) AppleWebKit/537.36 (KHTML, like Gecko) "
        "Chrome/32.0.1700.107 Safari/537.36"
    )
    agents = pa.array([chrome, chrome, "-", None, chrome])
    table = ua_lookup(agents)
    assert table.schema == reg.UA_LOOKUP_SCHEMA
    parsed = {r["user_agent"]: (r["browser"], r["os"]) for r in table.to_pylist()}
    assert parsed == {chrome: ("Chrome", "Windows"), "-": ("Other", "Other")}
    assert sorted(calls) == sorted([chrome, "-"])
    ua_lookup(agents)  # cached: no new parse
    assert len(calls) == 2


def test_standard_catalog_is_valid() -> None:
    """Every view compiles, every dimension, measure, filter and where resolves."""
    assert STANDARD_CATALOG, "empty catalog"
    for name, view in STANDARD_CATALOG.items():
        assert name == view.name and re.fullmatch(r"[a-z0-9][a-z0-9_]*", name)
        assert view.description
        check_view(view)
        for d in view.dimensions:
            assert source_type(view.kind, d.source) is not None
        schema = output_schema(view)
        assert schema.names == list(view.key_columns) + [m.name for m in view.measures]
        if view.grain:
            assert schema.field(WINDOW_COLUMN).type == pa.timestamp("us", tz="UTC")
        compile_view(view, DerivedSettings(), "events")


def test_derived_registry_entries_resolve() -> None:
    for (kind, name), entry in reg.DERIVED.items():
        assert kind in KINDS and entry.name == name and entry.description
        assert entry.lookup is not None or "duckdb" in entry.sql, name
        for source in entry.inputs:
            assert source_type(kind, source) is not None, (name, source)
        if entry.lookup is None:
            derived_sql(kind, name)  # compiles


def test_catalog_answers_every_goaccess_panel() -> None:
    """GoAccess 1.7's default panels, and the view holding each."""
    panels = {
        "general": "visitors_day", "visitors": "visitors_day", "requests": "requests",
        "static_requests": "requests", "not_found": "not_found", "hosts": "hosts",
        "os": "operating_systems", "browsers": "browsers", "visit_time": "visit_time",
        "referring_sites": "referring_sites", "status_codes": "status_codes",
    }  # fmt: skip
    for panel, view in panels.items():
        measures = {m.name for m in STANDARD_CATALOG[view].measures}
        assert {"hits", "bytes", "visitors"} <= measures, panel


def test_visitors_exclude_4xx_unless_asked() -> None:
    default = STANDARD_CATALOG["hosts"].measures[-1]
    assert (default.agg, default.column, default.filter) == ("distinct", "visitor", "not_4xx")
    counting = standard_catalog(count_4xx_visitors=True)["hosts"].measures[-1]
    assert counting.filter is None


def _view(**changes: Any) -> View:
    base: dict[str, Any] = {
        "name": "probe", "kind": "traffic", "grain": "hour",
        "dimensions": (Dimension("route", "route"),), "measures": (Measure("n", "count"),),
    }  # fmt: skip
    base.update(changes)
    return View(**base)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"measures": (Measure("m", "median", "latency_ms"),)}, "unsupported aggregation 'median'"),  # type: ignore[arg-type]
        ({"dimensions": (Dimension("x", "no_such"),)}, "dimension 'x': 'no_such' is neither"),
        ({"measures": (Measure("s", "sum", "path"),)}, "sum of non-numeric 'path'"),
        ({"measures": (Measure("s", "sum"),)}, "aggregation 'sum' needs a column"),
        (
            {"measures": (Measure("n", "count", filter="route"),)},
            "not a registered traffic predicate",
        ),
        ({"where": "status_class"}, "where: 'status_class' is not a registered"),
        ({"grain": "week"}, "grain 'week'"),
        ({"kind": "metrics"}, "unknown record kind"),
        ({"measures": (Measure("route", "count"),)}, "used twice"),
        ({"measures": ()}, "has no measures"),
    ],
)
def test_bad_views_fail_naming_view_and_part(changes: dict[str, Any], message: str) -> None:
    view = _view(**changes)
    with pytest.raises(CatalogError, match=re.escape(message)) as err:
        check_view(view)
    assert "view 'probe'" in str(err.value)
    with pytest.raises(CatalogError, match="view 'probe'"):
        DuckDBEngine().compile(view)


def test_lookup_values_work_per_group_but_not_per_event() -> None:
    """A predicate on a looked-up value is applied after grouping (fine); a measure
    reading one per event cannot be computed and says so."""
    entry = reg.Derived(
        "is_chrome", "traffic", pa.bool_(), ("browser",), "probe",
        {"duckdb": lambda ref, _: f"{ref('browser')} = 'Chrome'"},
    )  # fmt: skip
    with pytest.MonkeyPatch.context() as mp:
        mp.setitem(reg.DERIVED, ("traffic", "is_chrome"), entry)
        ok = _view(measures=(Measure("n", "count", filter="is_chrome"),))
        assert "lookup_ua" in DuckDBEngine().compile(ok).sql
    bad = _view(measures=(Measure("b", "min", "browser"),))
    with pytest.raises(CatalogError, match="view 'probe': 'browser' comes from the 'ua' lookup"):
        DuckDBEngine().compile(bad)
