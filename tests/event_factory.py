"""Small, valid event tables with unique provenance, for tests of log consumers."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pyarrow as pa

from loglambda.core.schemas import LOGS_SCHEMA, TRAFFIC_SCHEMA

AWKWARD_T0 = datetime(2026, 11, 27, 12, 0, 0, 123456, tzinfo=UTC)
T0_US = 1_795_000_000_000_000  # 2026-11-18T...Z: an arbitrary fixed instant


def traffic_events(
    n: int, *, first: int = 0, source: str = "test", spread_s: int = 7200
) -> pa.Table:
    """``n`` traffic events with ``source_line = first .. first+n-1``; event times
    spread over ``spread_s`` seconds (several hours: several master partitions),
    deliberately not in line order (late and out-of-order events)."""
    lines = list(range(first, first + n))
    ts = [T0_US + ((i * 7919) % spread_s) * 1_000_000 + i for i in lines]
    return pa.Table.from_pydict(
        {
            "ts": pa.array(ts, pa.int64()).cast(TRAFFIC_SCHEMA.field("ts").type),
            "host": [f"h{i % 3}" for i in lines],
            "client_ip": [f"10.0.{i % 250}.{i % 7}" for i in lines],
            "method": ["GET" if i % 5 else "POST" for i in lines],
            "path": [f"/items/{i % 97}" for i in lines],
            "query": [None] * n,
            "protocol": ["HTTP/1.1"] * n,
            "status": pa.array([(200, 200, 304, 404, 500)[i % 5] for i in lines], pa.int16()),
            "bytes": pa.array([100 + i % 1000 for i in lines], pa.int64()),
            "latency_ms": [float(i % 300) / 3 for i in lines],
            "referrer": [None] * n,
            "user_agent": ["Mozilla/5.0"] * n,
            "source": [source] * n,
            "source_line": pa.array(lines, pa.int64()),
            "source_offset": pa.array([i * 100 for i in lines], pa.int64()),
        },
        schema=TRAFFIC_SCHEMA,
    )


def log_events(n: int, *, first: int = 0, source: str = "app") -> pa.Table:
    lines = list(range(first, first + n))
    return pa.Table.from_pydict(
        {
            "ts": pa.array([T0_US + i * 1_000 for i in lines], pa.int64()).cast(
                LOGS_SCHEMA.field("ts").type
            ),
            "service": [("api", "worker")[i % 2] for i in lines],
            "level": [("info", "warn", "error")[i % 3] for i in lines],
            "logger": ["app"] * n,
            "message": [f"request {i} done" for i in lines],
            "trace_id": [None] * n,
            "attrs": ["{}"] * n,
            "source": [source] * n,
            "source_line": pa.array(lines, pa.int64()),
            "source_offset": pa.array([i * 50 for i in lines], pa.int64()),
        },
        schema=LOGS_SCHEMA,
    )


def awkward_traffic(n: int, source: str = "test", first: int = 0) -> pa.Table:
    """Traffic events with every awkward value the JSON round trip must preserve."""
    rows: list[dict[str, Any]] = [
        {
            "ts": datetime.fromtimestamp(AWKWARD_T0.timestamp() + i, UTC).replace(
                microsecond=(123456 + i) % 1_000_000
            ),
            "host": None if i % 3 == 0 else f"host-{i % 2}",
            "client_ip": f"10.0.{i % 256}.1",
            "method": "GET",
            "path": f'/p/"quoted"\n\tline {i} — ünïcødé ✓ 😀',
            "query": None,
            "protocol": "HTTP/1.1",
            "status": [200, 404, 503, -1][i % 4],
            "bytes": 2**62 + i,
            "latency_ms": None if i % 5 == 0 else i / 7,
            "referrer": "" if i % 2 else "\\back\\slash",
            "user_agent": "Mozilla/5.0 (X11; Linux) \x01",
            "source": source,
            "source_line": i,
            "source_offset": i * 100,
        }
        for i in range(first, first + n)
    ]
    return pa.Table.from_pylist(rows, schema=TRAFFIC_SCHEMA)


def awkward_logs(n: int) -> pa.Table:
    rows = [
        {
            "ts": AWKWARD_T0,
            "service": "api" if i % 2 else None,
            "level": "error",
            "logger": "a.b",
            "message": 'multi\nline "message" \u2028 日本語',
            "trace_id": None,
            "attrs": '{"k": [1, 2, {"x": null}]}',
            "source": "app.log",
            "source_line": i + 1,
            "source_offset": 0,
        }
        for i in range(n)
    ]
    return pa.Table.from_pylist(rows, schema=LOGS_SCHEMA)
