"""The whole Lambda journey through the HTTP API, checked at every point.

Why: this is what a user runs. History is imported and published by the batch layer;
live lines stream in over ``POST /v1/ingest`` (some of them days late); the speed
layer (Beam) covers them; mid-stream the master writer and a batch publish move the
horizon. At each point the API's answers must equal a from-scratch DuckDB computation
over every event the answer claims to cover (imported history + log events below the
served speed position), and the freshness must say what that is.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from fastapi.testclient import TestClient

from loglambda.batch.importer import import_file
from loglambda.batch.master import MasterDataset
from loglambda.batch.master_writer import MasterWriter
from loglambda.batch.recompute import run_batch
from loglambda.core.catalog import STANDARD_CATALOG
from loglambda.core.config import Settings
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.generate import main_generate
from loglambda.serving.app import create_app
from loglambda.serving.auth import TokenStore
from loglambda.speed.driver import SpeedDriver

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

READ, WRITE = "r" * 32, "w" * 32
TOKENS = TokenStore.parse(f"{READ}:read,{WRITE}:write")
VISITOR_TOLERANCE = 0.03  # HLL lg_k 12 (~1.6 % standard error)


@pytest.fixture(scope="module")
def beam_engine() -> Any:
    from loglambda.speed.transform import BeamSliceEngine

    return BeamSliceEngine(STANDARD_CATALOG)


class Journey:
    def __init__(self, home: Path, client: TestClient, engine: Any) -> None:
        self.home = home
        self.client = client
        self.log = LocalEventLog(home)
        self.engine = engine

    def post_lines(self, lines: bytes) -> dict[str, Any]:
        response = self.client.post(
            "/v1/ingest?format=combined",
            content=lines,
            headers={"Authorization": f"Bearer {WRITE}", "Content-Type": "text/plain"},
        )
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        assert doc["read"] == doc["accepted"] + doc["quarantined"]
        return doc

    def speed(self) -> None:
        with SpeedDriver(self.home, self.log, self.engine).session() as driver:
            driver.drain()

    def master_and_batch(self) -> None:
        with MasterWriter(self.home, self.log, max_events=700).session() as writer:
            writer.drain()
        run_batch(self.home)

    def query(self, sql: str) -> dict[str, Any]:
        response = self.client.post(
            "/v1/query", json={"sql": sql}, headers={"Authorization": f"Bearer {READ}"}
        )
        assert response.status_code == 200, response.text
        doc: dict[str, Any] = response.json()
        return doc

    def processed(self, position: int) -> pa.Table:
        """Every event an answer at speed position ``position`` covers: the imported
        history plus the log's events below the position (never the master's copies
        of log events, which would count those twice)."""
        master = MasterDataset(self.home)
        imported = [
            str(self.home / "master" / f.path)
            for e in master.entries()
            if e.origin.get("type") == "import"
            for f in e.files
            if f.kind == "traffic"
        ]
        con = duckdb.connect()
        history = con.sql(
            f"SELECT * FROM read_parquet({imported!r}, hive_partitioning = false)"
        ).to_arrow_table()
        live = self.log.read("traffic", "traffic/0", 0, position).events
        return pa.concat_tables([history.cast(live.schema), live])

    def check(self) -> dict[str, Any]:
        """The API's answers equal a recount of what its freshness says it covers."""
        per_day = self.query(
            "SELECT strftime(window_start, '%Y-%m-%d') AS day, sum(requests) AS n, "
            "sum(bytes) AS b, sum(errors_5xx) AS e FROM traffic_day GROUP BY day ORDER BY day"
        )
        position = per_day["freshness"]["positions"].get("traffic/0", 0)
        con = duckdb.connect()
        con.execute("SET TimeZone = 'UTC'")
        con.register("events", self.processed(position))
        expected = con.sql(
            "SELECT strftime(ts, '%Y-%m-%d') AS day, count(*) AS n, sum(bytes) AS b, "
            "count(*) FILTER (WHERE status >= 500) AS e FROM events GROUP BY day ORDER BY day"
        ).to_arrow_table()
        assert per_day["rows"] == expected.to_pylist()
        visitors = self.query(
            "SELECT strftime(window_start, '%Y-%m-%d') AS day, "
            "round(unique_count(visitors)) AS v FROM visitors_day GROUP BY day ORDER BY day"
        )["rows"]
        exact = con.sql(
            "SELECT strftime(ts, '%Y-%m-%d') AS day, count(DISTINCT (client_ip, "
            "CAST(ts AS DATE), coalesce(user_agent, ''))) FILTER (WHERE status NOT BETWEEN "
            "400 AND 499) AS v FROM events GROUP BY day ORDER BY day"
        ).fetchall()
        assert [r["day"] for r in visitors] == [d for d, _ in exact]
        for row, (_, v) in zip(visitors, exact, strict=True):
            assert abs(row["v"] - v) <= VISITOR_TOLERANCE * v + 1
        return per_day["freshness"]


def lines(path: Path, start: str, count: int, seed: int, days: float = 0.05) -> bytes:
    main_generate(
        kind="traffic", lines=count, out=path, seed=seed, fmt="combined", days=days,
        start=start, malformed_share=0.001, late_share=0.001,
    )  # fmt: skip
    return path.read_bytes()


@pytest.fixture
def journey(home: Path, beam_engine: Any) -> Iterator[Journey]:
    with TestClient(create_app(Settings.load(home), tokens=TOKENS)) as client:
        yield Journey(home, client, beam_engine)


def test_answers_equal_a_recount_at_every_point_of_the_journey(
    journey: Journey, sample_log: Path, tmp_path: Path
) -> None:
    # 1. History: the 10k-line sample, imported and published.
    import_file(MasterDataset(journey.home), sample_log, "combined")
    run_batch(journey.home)
    fresh = journey.check()
    assert fresh["batch_version"] == 1 and fresh["lag"] == {"traffic/0": 0, "logs/0": 0}

    # 2. Live lines stream in, some of them days late (dated inside the history).
    first = journey.post_lines(lines(tmp_path / "a.log", "2026-11-20T00:00:00Z", 3000, 1))
    late = journey.post_lines(lines(tmp_path / "late.log", "2015-05-18T10:00:00Z", 400, 2))
    assert first["accepted"] > 2900 and late["accepted"] > 390
    journey.speed()
    fresh = journey.check()
    assert fresh["positions"]["traffic/0"] == first["accepted"] + late["accepted"]

    # 3. More arrive before the speed layer runs: answers cover what they say, the
    #    rest shows as lag (never silently missing).
    more = journey.post_lines(lines(tmp_path / "b.log", "2026-11-20T02:00:00Z", 2000, 3))
    fresh = journey.check()
    assert fresh["lag"]["traffic/0"] == more["accepted"]

    # 4. Mid-stream, the master writer and a batch publish move the horizon; the speed
    #    layer has not applied it yet, so serving keeps the version its partials fit.
    journey.master_and_batch()
    fresh = journey.check()
    assert fresh["batch_version"] == 1

    # 5. The speed layer applies the new horizon and covers the rest.
    journey.speed()
    fresh = journey.check()
    assert fresh["batch_version"] == 2 and fresh["lag"]["traffic/0"] == 0
    assert fresh["horizon"]["traffic/0"] == fresh["positions"]["traffic/0"]

    # 6. And keeps going after the publish.
    journey.post_lines(lines(tmp_path / "c.log", "2026-11-20T04:00:00Z", 1500, 4))
    journey.speed()
    fresh = journey.check()
    assert fresh["lag"]["traffic/0"] == 0
    assert fresh["positions"]["traffic/0"] > fresh["horizon"]["traffic/0"]
