"""Arrow schemas of the two record kinds, and of quarantined records.

Every engine reads and writes these exact types: timestamps are UTC microseconds
(never INT96, never nanoseconds) so DuckDB, Spark and Beam agree on every value.
Provenance (``source``, ``source_line``, ``source_offset``) is part of each event:
it is how exactly-once is proven (every source position appears once) and how a
quarantined record is traced back to the byte that produced it.
"""

from __future__ import annotations

from typing import Final, Literal

import pyarrow as pa

Kind = Literal["traffic", "logs"]
KINDS: Final[tuple[Kind, ...]] = ("traffic", "logs")

TS_TYPE: Final = pa.timestamp("us", tz="UTC")

PROVENANCE_FIELDS: Final = (
    # Where the event came from: a file path, "http", or "kafka:<topic>".
    pa.field("source", pa.string(), nullable=False),
    # 1-based line number within the source (for files), or the event-log offset.
    pa.field("source_line", pa.int64(), nullable=False),
    # Byte offset of the start of the line within the (decompressed) source.
    pa.field("source_offset", pa.int64(), nullable=False),
)

TRAFFIC_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("host", pa.string()),
        pa.field("client_ip", pa.string(), nullable=False),
        pa.field("method", pa.string()),
        pa.field("path", pa.string()),
        pa.field("query", pa.string()),
        pa.field("protocol", pa.string()),
        pa.field("status", pa.int16(), nullable=False),
        pa.field("bytes", pa.int64(), nullable=False),
        pa.field("latency_ms", pa.float64()),
        pa.field("referrer", pa.string()),
        pa.field("user_agent", pa.string()),
        *PROVENANCE_FIELDS,
    ]
)

LEVELS: Final[tuple[str, ...]] = ("trace", "debug", "info", "notice", "warn", "error", "fatal")

LOGS_SCHEMA: Final = pa.schema(
    [
        pa.field("ts", TS_TYPE, nullable=False),
        pa.field("service", pa.string()),
        pa.field("level", pa.string(), nullable=False),
        pa.field("logger", pa.string()),
        pa.field("message", pa.string()),
        pa.field("trace_id", pa.string()),
        # Every field the format carried beyond the normalised ones, as a JSON object.
        pa.field("attrs", pa.string()),
        *PROVENANCE_FIELDS,
    ]
)

QUARANTINE_SCHEMA: Final = pa.schema(
    [
        pa.field("source", pa.string(), nullable=False),
        pa.field("source_line", pa.int64(), nullable=False),
        pa.field("source_offset", pa.int64(), nullable=False),
        pa.field("format", pa.string(), nullable=False),
        # A stable machine-readable code (see quarantine.REASONS) ...
        pa.field("reason", pa.string(), nullable=False),
        # ... and a human-readable detail naming what was wrong.
        pa.field("detail", pa.string()),
        # The raw record, decoded with backslash escapes for invalid bytes and cut at
        # RAW_LIMIT characters, so any byte sequence can be stored and shown safely.
        pa.field("raw", pa.string(), nullable=False),
        pa.field("raw_length", pa.int64(), nullable=False),
    ]
)


def schema_for(kind: Kind) -> pa.Schema:
    """The event schema of a record kind."""
    if kind == "traffic":
        return TRAFFIC_SCHEMA
    if kind == "logs":
        return LOGS_SCHEMA
    raise ValueError(f"unknown record kind {kind!r}; expected one of {KINDS}")
