"""Small, valid event tables with unique provenance, for tests of log consumers."""

from __future__ import annotations

import pyarrow as pa

from loglambda.core.schemas import LOGS_SCHEMA, TRAFFIC_SCHEMA

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
