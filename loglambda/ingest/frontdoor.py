"""What every front door does with input: parse, quarantine durably, then append.

The order is the point. Rejected lines are written to quarantine *before* the
accepted events are appended, under a file name the caller derives from what the
input covers (a source and byte range, a request id), so a front door that crashes
and replays the same input rewrites the same quarantine file instead of adding a
second copy, and never acknowledges events whose rejects could still be lost.
Counts reconcile per call: ``read == accepted + quarantined``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from loglambda.core.eventlog import EventLog, OffsetRange
from loglambda.core.lines import DEFAULT_MAX_LINE_BYTES, RawBlock, count_lines
from loglambda.core.parsers import Parsed, Parser, RawParser
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import QUARANTINE_SCHEMA, Kind

_SAFE_NAME: Final = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class IngestReport:
    """What one front-door call did; ``read == accepted + quarantined``."""

    kind: Kind
    read: int
    accepted: int
    quarantined: int
    reasons: dict[str, int] = field(default_factory=dict)
    ranges: tuple[OffsetRange, ...] = ()
    quarantine_file: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "read": self.read,
            "accepted": self.accepted,
            "quarantined": self.quarantined,
            "reasons": self.reasons,
            "offsets": [
                {"partition": r.partition, "from": r.start, "to": r.end} for r in self.ranges
            ],
            "quarantine_file": self.quarantine_file,
        }


def parse_lines(
    data: bytes,
    parser: Parser,
    *,
    source: str,
    base_line: int = 1,
    base_offset: int = 0,
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES,
) -> tuple[Parsed, int]:
    """Parse whole lines (``data`` ends at a line boundary or is the final partial
    line of a finished input); return what the parser made and the lines read.

    Access logs go through the native scanner (``parse_raw``), everything else
    through a split and the format's Arrow parser.
    """
    raw = RawBlock(source, data, base_offset, base_line, count_lines(data), max_line_bytes)
    if isinstance(parser, RawParser):
        return parser.parse_raw(raw), raw.read
    return parser.parse(raw.split()), raw.read


def quarantine_name(*parts: object) -> str:
    """A file name for a quarantine batch, from what the batch covers (so a replay of
    the same input overwrites instead of duplicating)."""
    text = "-".join(str(p) for p in parts)
    return _SAFE_NAME.sub("_", text).strip("_")[:200] + ".parquet"


def write_quarantine(home: Path, name: str, rejects: pa.Table) -> str:
    """Durably write rejected records to ``quarantine/<name>``, replacing any earlier
    copy atomically; return the path relative to ``home``."""
    from loglambda.core.durable import write_atomic

    sink = pa.BufferOutputStream()
    pq.write_table(rejects.cast(QUARANTINE_SCHEMA), sink, compression="zstd")
    rel = f"quarantine/{name}"
    (home / "quarantine").mkdir(parents=True, exist_ok=True)
    write_atomic(home / rel, sink.getvalue().to_pybytes(), overwrite=True)
    return rel


def deliver(
    log: EventLog,
    home: Path,
    kind: Kind,
    events: pa.Table,
    rejects: RejectBuilder,
    *,
    fmt: str,
    read: int,
    quarantine_as: str,
) -> IngestReport:
    """Quarantine the rejects, then append the events; return the report.

    ``quarantine_as`` names the quarantine file (see ``quarantine_name``). Raises
    whatever the log raises: the caller must not acknowledge its input then.
    """
    if read != events.num_rows + len(rejects):
        raise AssertionError(
            f"front door lost records: read {read} != {events.num_rows} + {len(rejects)}"
        )
    # Step 1: rejects durable first (a crash after this replays into the same name).
    qfile = write_quarantine(home, quarantine_as, rejects.to_table(fmt)) if len(rejects) else None
    # Step 2: append; returning from append is the log's acknowledgement.
    ranges = log.append(kind, events) if events.num_rows else ()
    return IngestReport(
        kind=kind,
        read=read,
        accepted=events.num_rows,
        quarantined=len(rejects),
        reasons=dict(rejects.reasons()),
        ranges=ranges,
        quarantine_file=qfile,
    )
