"""The read API over a home built the real way (log -> master -> batch -> speed).

Why: the HTTP API is where users and the dashboard meet the exactness contract. Its
answers must equal the same questions asked of the raw events from scratch, say what
they cover (freshness), refuse rather than answer short, and be closed to anyone
without a read token.

The home is ``tests/served_home.py``'s: 4,500 traffic events and 450 log records, a
batch version at horizon 3,000/300, the speed layer caught up in several partials.
"From scratch" here is a plain DuckDB connection over the events read back from the
log, or (for route folding and visitor keys, which are derived dimensions) the view
recomputed from all those events by the batch engine.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from loglambda.batch.engine_duckdb import DuckDBEngine
from loglambda.core.catalog import STANDARD_CATALOG, output_schema
from loglambda.core.config import Settings
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.schemas import KINDS, schema_for
from loglambda.core.sketches import histogram_from_values, hll_estimate, hll_union, quantile
from loglambda.serving.app import create_app
from loglambda.serving.auth import TokenStore
from tests.event_factory import traffic_events
from tests.served_home import LOGS, TRAFFIC, build_served_home

pytestmark = pytest.mark.integration

READ, WRITE, BOTH = "r-token-1", "w-token-2", "rw-token-3"
TOKENS = TokenStore.parse(f"{READ}:read,{WRITE}:write,{BOTH}:read+write")
AUTH = {"Authorization": f"Bearer {READ}"}
READ_ROUTES = [
    ("GET", "/v1/views"),
    ("GET", "/v1/views/traffic_minute"),
    ("POST", "/v1/query"),
    ("GET", "/v1/dashboard/range"),
    ("GET", "/v1/dashboard/traffic"),
    ("GET", "/v1/dashboard/top_routes"),
    ("GET", "/v1/dashboard/status_codes"),
    ("GET", "/v1/dashboard/visitors"),
    ("GET", "/v1/dashboard/log_levels"),
    ("GET", "/metrics"),
]
DASHBOARD = ("traffic", "top_routes", "status_codes", "visitors", "log_levels")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, LocalEventLog]:
    home = tmp_path_factory.mktemp("api") / "home"
    return home, build_served_home(home)


@pytest.fixture(scope="module")
def client(served: tuple[Path, LocalEventLog]) -> Iterator[TestClient]:
    home, log = served
    with TestClient(create_app(Settings.load(home), tokens=TOKENS, event_log=log)) as c:
        yield c


@pytest.fixture(scope="module")
def events(served: tuple[Path, LocalEventLog]) -> dict[str, pa.Table]:
    """Every event appended, read back from the log (what the speed layer processed)."""
    _home, log = served
    return {
        "traffic": log.read("traffic", "traffic/0", 0, TRAFFIC).events,
        "logs": log.read("logs", "logs/0", 0, LOGS).events,
    }


@pytest.fixture(scope="module")
def scratch(events: dict[str, pa.Table]) -> Iterator[duckdb.DuckDBPyConnection]:
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.register("t", events["traffic"])
    con.register("l", events["logs"])
    yield con
    con.close()


@pytest.fixture(scope="module")
def data_range(client: TestClient) -> tuple[str, str]:
    body = client.get("/v1/dashboard/range", headers=AUTH).json()
    return body["traffic"]["first"], body["traffic"]["last"]


def get(client: TestClient, path: str, **params: Any) -> dict[str, Any]:
    response = client.get(path, params=params, headers=AUTH)
    assert response.status_code == 200, response.text
    doc: dict[str, Any] = response.json()
    return doc


def at(iso: str, minutes: int = 0) -> str:
    value = dt.datetime.fromisoformat(iso.replace("Z", "+00:00"))
    return (value + dt.timedelta(minutes=minutes)).isoformat().replace("+00:00", "Z")


def ts(iso: str) -> str:
    return f"TIMESTAMPTZ '{iso.replace('T', ' ').replace('Z', '+00')}'"


def check_fresh(doc: dict[str, Any]) -> None:
    """The served home's freshness: batch version 1, speed caught up, no lag."""
    f = doc["freshness"]
    assert f["batch_version"] == 1
    assert f["horizon"] == {"traffic/0": 3_000, "logs/0": 300}
    assert f["positions"] == {"traffic/0": TRAFFIC, "logs/0": LOGS}
    assert f["lag"] == {"traffic/0": 0, "logs/0": 0}


# -- auth ------------------------------------------------------------------------------


@pytest.mark.parametrize(("method", "path"), READ_ROUTES)
def test_read_routes_need_a_read_token(client: TestClient, method: str, path: str) -> None:
    body = {"sql": "SELECT 1"} if method == "POST" else None

    def call(token: str | None) -> Any:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        return client.request(method, path, headers=headers, json=body)

    missing = call(None)
    assert missing.status_code == 401 and missing.headers["WWW-Authenticate"].startswith("Bearer")
    assert call("not-a-token").status_code == 401
    wrong_scope = call(WRITE)
    assert wrong_scope.status_code == 403 and "read" in wrong_scope.json()["detail"]
    assert call(READ).status_code == 200
    assert call(BOTH).status_code == 200


def test_the_dashboard_page_and_plotly_need_no_token(client: TestClient) -> None:
    from loglambda.serving.dashboard import plotly_bundle

    page = client.get("/dashboard/")
    assert page.status_code == 200 and "<title>loglambda dashboard</title>" in page.text
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert "cdn" not in page.text.lower()  # nothing from outside this server
    bundle = client.get("/dashboard/plotly.min.js")
    path = plotly_bundle()
    assert path is not None and "site-packages" in str(path)  # the installed package
    assert bundle.status_code == 200 and bundle.content == path.read_bytes()
    assert client.get("/dashboard/static/dashboard.js").status_code == 200
    assert client.get("/dashboard/static/..%2Fapi.py").status_code == 404
    assert client.get("/", follow_redirects=False).headers["location"] == "/dashboard/"


# -- views and SQL ---------------------------------------------------------------------


def test_views_lists_the_catalog_with_columns(client: TestClient) -> None:
    doc = get(client, "/v1/views")
    views = {v["name"]: v for v in doc["views"]}
    assert set(views) == set(STANDARD_CATALOG)
    for name, view in STANDARD_CATALOG.items():
        assert [c["name"] for c in views[name]["columns"]] == output_schema(view).names
        assert views[name]["key_columns"] == list(view.key_columns)
    assert views["traffic_minute"]["grain"] == "minute"
    tables = {t["name"]: t for t in doc["tables"]}
    assert set(tables) == {*KINDS, "freshness", "views"}
    for kind in KINDS:
        assert [c["name"] for c in tables[kind]["columns"]] == schema_for(kind).names
    one = get(client, "/v1/views/visitors_day")
    assert one == views["visitors_day"]
    missing = client.get("/v1/views/nope", headers=AUTH)
    assert missing.status_code == 404 and "traffic_minute" in missing.json()["detail"]


def test_query_answers_with_its_freshness(client: TestClient) -> None:
    response = client.post(
        "/v1/query",
        json={"sql": "SELECT sum(requests) AS n, sum(errors_5xx) AS e FROM traffic_minute"},
        headers=AUTH,
    )
    assert response.status_code == 200, response.text
    doc = response.json()
    assert doc["rows"] == [{"n": TRAFFIC, "e": TRAFFIC // 5}]
    assert doc["tables"] == ["traffic_minute"] and doc["truncated"] is False
    check_fresh(doc)
    raw = client.post("/v1/query", json={"sql": "SELECT count(*) AS n FROM traffic"}, headers=AUTH)
    assert raw.json()["freshness"]["raw"]["tail"] == {"traffic/0": [[4_000, TRAFFIC]]}


def test_query_values_are_json_safe(client: TestClient) -> None:
    sql = (
        "SELECT 'nan'::DOUBLE AS a, 'inf'::DOUBLE AS b, TIMESTAMPTZ '2015-05-17 10:05:00+00' AS t, "
        "(SELECT visitors FROM visitors_day LIMIT 1) AS sketch"
    )
    response = client.post("/v1/query", json={"sql": sql}, headers=AUTH)
    json.loads(response.text)  # strict JSON: no bare NaN
    [row] = response.json()["rows"]
    assert (row["a"], row["b"], row["t"]) == ("NaN", "Infinity", "2015-05-17T10:05:00+00:00")
    assert isinstance(row["sketch"], str)  # base64


def test_query_rows_are_cut_at_max_rows(client: TestClient) -> None:
    body = {"sql": "SELECT * FROM range(50)", "max_rows": 7}
    doc = client.post("/v1/query", json=body, headers=AUTH).json()
    assert (doc["row_count"], doc["truncated"]) == (7, True)


@pytest.mark.parametrize(
    ("sql", "error"),
    [
        ("COPY traffic TO '/tmp/x.csv'", "forbidden"),
        ("SELECT * FROM read_text('/etc/passwd')", "forbidden"),
        ("SELECT * FROM no_such_table", "unknown_table"),
        ("SELEC 1", "failed"),
        ("SELECT 1; SELECT 2", "forbidden"),
    ],
)
def test_refused_statements_say_why(client: TestClient, sql: str, error: str) -> None:
    response = client.post("/v1/query", json={"sql": sql}, headers=AUTH)
    assert response.status_code == 400, response.text
    assert response.json()["error"] == error


def test_query_timeouts_are_refused_not_hung(client: TestClient) -> None:
    body = {"sql": "SELECT count(*) FROM range(10000000000) a", "timeout_s": 0.2}
    response = client.post("/v1/query", json=body, headers=AUTH)
    assert (response.status_code, response.json()["error"]) == (400, "timeout")


# -- the dashboard's questions against a computation from scratch -------------------------


def test_range_is_where_the_events_lie(
    client: TestClient, scratch: duckdb.DuckDBPyConnection
) -> None:
    doc = get(client, "/v1/dashboard/range")
    check_fresh(doc)
    first, last = scratch.execute(
        "SELECT date_trunc('hour', min(ts)), date_trunc('hour', max(ts)) + INTERVAL 1 HOUR FROM t"
    ).fetchone() or (None, None)
    assert (doc["traffic"]["first"], doc["traffic"]["last"]) == (
        first.isoformat().replace("+00:00", "Z"),
        last.isoformat().replace("+00:00", "Z"),
    )
    assert doc["logs"]["first"] is not None


@pytest.mark.parametrize(
    ("trim", "step", "view"),
    [
        ((0, 0), "15m", "traffic_minute"),
        ((0, 0), "1h", "traffic_hour"),
        ((17, -23), "5m", "traffic_minute"),
    ],
)
def test_traffic_series_equal_a_recount_of_the_events(
    client: TestClient,
    scratch: duckdb.DuckDBPyConnection,
    data_range: tuple[str, str],
    trim: tuple[int, int],
    step: str,
    view: str,
) -> None:
    start, end = at(data_range[0], trim[0]), at(data_range[1], trim[1])
    doc = get(client, "/v1/dashboard/traffic", **{"from": start, "to": end, "step": step})
    check_fresh(doc)
    step_s = {"5m": 300, "15m": 900, "1h": 3600}[step]
    assert (doc["step"], doc["view"]) == (step, view)
    rows = scratch.execute(
        f"SELECT time_bucket(INTERVAL {step_s} SECOND, ts, TIMESTAMPTZ '1970-01-01 00:00:00+00') "
        "AS b, count(*) AS n, count(*) FILTER (status >= 500) AS e, sum(bytes) AS by, "
        f"list(latency_ms) AS lat FROM t WHERE ts >= {ts(doc['from'])} AND ts < {ts(doc['to'])} "
        "GROUP BY b"
    ).fetchall()
    expected = {b.isoformat().replace("+00:00", "Z"): (n, e, by, lat) for b, n, e, by, lat in rows}
    series = doc["series"]
    assert len(series["t"]) == (
        dt.datetime.fromisoformat(doc["to"]) - dt.datetime.fromisoformat(doc["from"])
    ) // dt.timedelta(seconds=step_s)
    for i, t in enumerate(series["t"]):
        n, e, by, lat = expected.get(t, (0, 0, 0, []))
        assert (series["requests"][i], series["errors_5xx"][i], series["bytes"][i]) == (n, e, by)
        # The numpy sketch over the raw values: the p95 must be that exactly.
        assert series["latency_p95_ms"][i] == quantile(histogram_from_values(lat), 0.95), t
    totals = doc["totals"]
    assert totals["requests"] == sum(v[0] for v in expected.values())
    assert totals["errors_5xx"] == sum(v[1] for v in expected.values())
    all_lat = [x for v in expected.values() for x in v[3]]
    assert totals["latency_p95_ms"] == quantile(histogram_from_values(all_lat), 0.95)
    # ... and the sketch is within its 1 % relative accuracy of the exact p95.
    exact = sorted(all_lat)[int(0.95 * (len(all_lat) - 1))]
    assert abs(totals["latency_p95_ms"] - exact) <= 0.01 * exact + 1e-9


def test_an_unaligned_range_is_widened_to_whole_minutes(
    client: TestClient, data_range: tuple[str, str]
) -> None:
    start = at(data_range[0], 17).replace(":00Z", ":31.5Z")
    doc = get(client, "/v1/dashboard/top_routes", **{"from": start, "to": data_range[1]})
    assert doc["from"] == at(data_range[0], 17) and doc["view"] == "traffic_minute"
    naive = get(client, "/v1/dashboard/top_routes", **{"from": data_range[0][:-1]})
    assert naive["from"] == data_range[0]  # no zone: UTC


@pytest.mark.parametrize("trim", [(0, 0), (17, -23)])
def test_top_routes_equal_the_view_recomputed_from_every_event(
    client: TestClient,
    events: dict[str, pa.Table],
    data_range: tuple[str, str],
    trim: tuple[int, int],
) -> None:
    start, end = at(data_range[0], trim[0]), at(data_range[1], trim[1])
    doc = get(client, "/v1/dashboard/top_routes", **{"from": start, "to": end, "limit": 100})
    check_fresh(doc)
    with DuckDBEngine() as engine:
        [minutes] = engine.compute_arrow(
            [STANDARD_CATALOG["traffic_minute"]], {"traffic": events["traffic"]}
        ).values()
    lo, hi = dt.datetime.fromisoformat(doc["from"]), dt.datetime.fromisoformat(doc["to"])
    expected: dict[str | None, list[int]] = {}
    for row in minutes.to_pylist():
        if lo <= row["window_start"] < hi:
            acc = expected.setdefault(row["route"], [0, 0])
            acc[0] += row["requests"]
            acc[1] += row["errors_5xx"]
    got = {r["route"]: [r["requests"], r["errors_5xx"]] for r in doc["routes"]}
    assert got == expected
    counts = [r["requests"] for r in doc["routes"]]
    assert counts == sorted(counts, reverse=True)
    top3 = get(client, "/v1/dashboard/top_routes", **{"from": start, "to": end, "limit": 3})
    assert top3["routes"] == doc["routes"][:3]


def test_status_codes_equal_a_recount_of_the_events(
    client: TestClient, scratch: duckdb.DuckDBPyConnection, data_range: tuple[str, str]
) -> None:
    start, end = at(data_range[0], 17), at(data_range[1], -23)
    doc = get(client, "/v1/dashboard/status_codes", **{"from": start, "to": end})
    expected = scratch.execute(
        f"SELECT status, count(*) FROM t WHERE ts >= {ts(start)} AND ts < {ts(end)} "
        "GROUP BY status ORDER BY status"
    ).fetchall()
    assert [(c["status"], c["requests"]) for c in doc["codes"]] == expected
    assert {c["status"]: c["status_class"] for c in doc["codes"]}[404] == "4xx"
    assert doc["freshness"]["raw"]["log_end"] == {"traffic/0": TRAFFIC}


def test_unique_visitors_equal_the_view_recomputed_from_every_event(
    client: TestClient,
    events: dict[str, pa.Table],
    scratch: duckdb.DuckDBPyConnection,
    data_range: tuple[str, str],
) -> None:
    doc = get(client, "/v1/dashboard/visitors", **{"from": data_range[0], "to": data_range[1]})
    check_fresh(doc)
    with DuckDBEngine() as engine:
        [hours] = engine.compute_arrow(
            [STANDARD_CATALOG["visitors_hour"]], {"traffic": events["traffic"]}
        ).values()
    by_day: dict[str, list[bytes]] = {}
    for row in hours.to_pylist():
        by_day.setdefault(row["window_start"].date().isoformat(), []).append(row["visitors"])
    expected = {d: round(hll_estimate(hll_union(s))) for d, s in by_day.items()}
    assert {d["day"][:10]: d["visitors"] for d in doc["days"]} == expected
    assert sum(d["hits"] for d in doc["days"]) == doc["total"]["hits"] == TRAFFIC
    # Within the sketch's error of the exact count (GoAccess's key; 4xx make no visitor).
    exact = scratch.execute(
        "SELECT count(DISTINCT (client_ip, ts::DATE, user_agent)) FROM t "
        "WHERE status < 400 OR status >= 500"
    ).fetchone()
    assert exact is not None and abs(doc["total"]["visitors"] - exact[0]) <= 0.05 * exact[0]


def test_log_levels_equal_a_recount_of_the_records(
    client: TestClient, scratch: duckdb.DuckDBPyConnection
) -> None:
    span = get(client, "/v1/dashboard/range")["logs"]
    doc = get(client, "/v1/dashboard/log_levels", **{"from": span["first"], "to": span["last"]})
    check_fresh(doc)
    expected = scratch.execute(
        "SELECT service, level, count(*) FROM l GROUP BY ALL ORDER BY service, level"
    ).fetchall()
    assert [(r["service"], r["level"], r["records"]) for r in doc["rows"]] == expected
    assert sum(r["records"] for r in doc["rows"]) == LOGS


@pytest.mark.parametrize(
    ("params", "words"),
    [
        ({"from": "2015-05-18T00:00:00Z", "to": "2015-05-17T00:00:00Z"}, "must be before"),
        ({"from": "1900-01-01T00:00:00Z", "to": "2015-05-17T00:00:00Z"}, "must lie between"),
        (
            {"from": "2000-01-01T00:00:00Z", "to": "2015-05-17T00:00:00Z", "step": "1m"},
            "bigger step",
        ),
    ],
)
def test_windows_that_cannot_be_answered_are_400(
    client: TestClient, params: dict[str, str], words: str
) -> None:
    response = client.get("/v1/dashboard/traffic", params=params, headers=AUTH)
    assert response.status_code == 400 and words in response.json()["detail"]
    assert response.json()["error"] == "bad_window"


# -- exactness: refuse rather than answer short; report what is not covered ----------------


def test_a_missing_slice_is_a_503_not_a_short_answer(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = build_served_home(home, slice_events=200)
    state_file = home / "realtime" / "STATE"
    state = json.loads(state_file.read_text())
    traffic = [p for p in state["partials"] if p["partition"] == "traffic/0"]
    state["partials"].remove(traffic[1])  # a slice in the middle goes missing
    state_file.write_text(json.dumps(state))
    with TestClient(create_app(Settings.load(home), tokens=TOKENS, event_log=log)) as c:
        query = c.post(
            "/v1/query", json={"sql": "SELECT count(*) FROM traffic_minute"}, headers=AUTH
        )
        answers = [query] + [c.get(f"/v1/dashboard/{name}", headers=AUTH) for name in DASHBOARD]
        for response in answers:
            assert response.status_code == 503, response.text
            assert response.json()["error"] == "incomplete_data"
            assert "not contiguous" in response.json()["detail"]
            assert response.headers["Retry-After"] == "5"
        metrics = c.get("/metrics", headers=AUTH).text
    assert "loglambda_serving_complete 0.0" in metrics
    assert 'loglambda_query_errors_total{endpoint="query",error="incomplete_data"} 1.0' in metrics


def test_events_not_yet_covered_show_as_lag_and_in_metrics(tmp_path: Path) -> None:
    home = tmp_path / "home"
    log = build_served_home(home)
    with TestClient(create_app(Settings.load(home), tokens=TOKENS, event_log=log)) as c:
        c.get("/metrics", headers=AUTH)  # the first scrape: the base of the ingest rate
        log.append("traffic", traffic_events(25, first=TRAFFIC))
        doc = get(
            c,
            "/v1/dashboard/traffic",
            **{"from": "2026-01-01T00:00:00Z", "to": "2027-01-01T00:00:00Z", "step": "1d"},
        )
        assert doc["totals"]["requests"] == TRAFFIC  # what is covered, exactly...
        assert doc["freshness"]["lag"]["traffic/0"] == 25  # ...and what is not
        metrics = {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in c.get("/metrics", headers=AUTH).text.splitlines()
            if line and not line.startswith("#")
        }
    assert metrics['loglambda_log_end_offset{partition="traffic/0"}'] == TRAFFIC + 25
    assert metrics['loglambda_serving_lag{partition="traffic/0"}'] == 25
    assert metrics['loglambda_consumer_lag{consumer="speed",partition="traffic/0"}'] == 25
    assert metrics['loglambda_speed_position{partition="traffic/0"}'] == TRAFFIC
    assert metrics['loglambda_batch_horizon{partition="traffic/0"}'] == 3_000
    assert metrics['loglambda_freshness_seconds{partition="traffic/0"}'] > 0
    assert metrics['loglambda_freshness_seconds{partition="logs/0"}'] == 0
    assert metrics['loglambda_ingest_events_per_second{partition="traffic/0"}'] > 0
    assert metrics["loglambda_batch_version"] == 1
    assert metrics['loglambda_query_seconds_count{endpoint="dashboard_traffic"}'] == 1
