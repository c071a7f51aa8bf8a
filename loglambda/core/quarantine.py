"""Quarantine: where every rejected record goes, with its reason and source position.

Nothing is dropped silently. A rejected record keeps its source, line, byte offset, a
stable reason code, a human detail, and its raw bytes decoded safely (invalid bytes as
backslash escapes) and cut at ``RAW_LIMIT`` characters, so any input can be stored.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Final

import pyarrow as pa

from loglambda.core.schemas import QUARANTINE_SCHEMA

RAW_LIMIT: Final = 2048

# Reason codes are part of the interface: users filter quarantine by them.
REASONS: Final[dict[str, str]] = {
    "invalid_utf8": "the line is not valid UTF-8",
    "nul_byte": "the line contains a NUL byte",
    "line_too_long": "the line exceeds the size limit",
    "blank": "the line is empty",
    "no_match": "the line does not match the format",
    "bad_timestamp": "the timestamp is missing or cannot be parsed",
    "bad_status": "the HTTP status is outside 100-599",
    "bad_bytes": "the response size is negative or not a number",
    "bad_latency": "the request time is negative or not a number",
    "bad_json": "the line is not a JSON object",
    "bad_type": "a field has the wrong type",
    "missing_field": "a required field is missing",
}


def safe_raw(raw: bytes | str) -> str:
    """Decode any bytes for display and storage, cut at RAW_LIMIT characters."""
    text = raw if isinstance(raw, str) else raw[: RAW_LIMIT * 4].decode("utf-8", "backslashreplace")
    text = text.replace("\x00", "\\x00")
    return text[:RAW_LIMIT]


@dataclass
class RejectBuilder:
    """Accumulates quarantine rows for one source; cheap when nothing is rejected."""

    source: str
    _rows: list[tuple[int, int, str, str, str, int]] = field(default_factory=list)

    def add(
        self,
        *,
        line: int,
        offset: int,
        reason: str,
        detail: str,
        raw: bytes | str,
        raw_length: int | None = None,
    ) -> None:
        if reason not in REASONS:
            raise ValueError(f"unknown quarantine reason {reason!r}")
        length = raw_length if raw_length is not None else len(raw)
        self._rows.append((line, offset, reason, detail, safe_raw(raw), length))

    def extend(self, other: RejectBuilder) -> None:
        self._rows.extend(other._rows)

    def __len__(self) -> int:
        return len(self._rows)

    def reasons(self) -> Counter[str]:
        return Counter(r[2] for r in self._rows)

    def to_table(self, fmt: str) -> pa.Table:
        cols: list[tuple[Any, ...]] = list(zip(*self._rows, strict=True)) or [()] * 6
        return pa.table(
            {
                "source": pa.array([self.source] * len(self._rows), pa.string()),
                "source_line": pa.array(cols[0], pa.int64()),
                "source_offset": pa.array(cols[1], pa.int64()),
                "format": pa.array([fmt] * len(self._rows), pa.string()),
                "reason": pa.array(cols[2], pa.string()),
                "detail": pa.array(cols[3], pa.string()),
                "raw": pa.array(cols[4], pa.string()),
                "raw_length": pa.array(cols[5], pa.int64()),
            },
            schema=QUARANTINE_SCHEMA,
        )
