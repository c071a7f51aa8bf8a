"""Kafka records of raw log lines -> parsed events and quarantine rows (no I/O here).

Split from ``kafka_source`` so the record rules can be read (and tested) on their own:

* one record is at most one line: a value (or JSON ``message_field``) holding several
  lines is quarantined whole (``no_match``), since ``source_line`` must name one event;
  one trailing newline is dropped (some shippers add it);
* a record without a value (a tombstone) is quarantined as ``blank``;
* with ``value="json"`` a value that is not a JSON object with a string
  ``message_field`` is quarantined (``bad_json``, ``missing_field``, ``bad_type``);
* every position (``source_line``, ``source_offset``) is the record's Kafka offset,
  which need not be dense (compaction, transaction markers), so lines are numbered by
  a lookup table rather than ``base + i``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import orjson
import pyarrow as pa

from loglambda.core.kafka_codec import kafka_module
from loglambda.core.lines import split_block
from loglambda.core.parsers import Parser
from loglambda.core.quarantine import RejectBuilder
from loglambda.ingest.frontdoor import IngestReport

ValueMode = Literal["raw", "json"]


@dataclass(frozen=True)
class Batch:
    """Records ``[start, end)`` of one topic partition, as values and offsets."""

    partition: int
    start: int
    end: int
    values: list[bytes | None]
    offsets: list[int]


@dataclass
class SourceReport:
    """Totals of one ``run``; ``read == accepted + quarantined`` (an accumulator, so
    mutable)."""

    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    batches: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    positions: dict[int, int] = field(default_factory=dict)

    def add(self, partition: int, end: int, report: IngestReport) -> None:
        self.read += report.read
        self.accepted += report.accepted
        self.quarantined += report.quarantined
        self.batches += 1
        for reason, n in report.reasons.items():
            self.reasons[reason] = self.reasons.get(reason, 0) + n
        self.positions[partition] = end


def batches(msgs: list[Any]) -> Iterator[tuple[Batch, bool]]:
    """Consumed messages grouped by partition, in order; then ``(empty, True)`` for a
    partition whose end-of-partition event came with them."""
    kafka = kafka_module()
    by_partition: dict[int, list[Any]] = {}
    for msg in msgs:
        err = msg.error()
        if err is not None and err.code() != kafka.KafkaError._PARTITION_EOF:
            raise kafka.KafkaException(err)
        by_partition.setdefault(msg.partition(), []).append(msg)
    for p, group in by_partition.items():
        records = [m for m in group if m.error() is None]
        if records:
            offsets = [m.offset() for m in records]
            values = [m.value() for m in records]
            yield Batch(p, offsets[0], offsets[-1] + 1, values, offsets), False
        if group[-1].error() is not None:
            yield Batch(p, group[-1].offset(), group[-1].offset(), [], []), True


def record_line(value: bytes | None, mode: ValueMode, field: str) -> tuple[bytes, str, str]:
    """One record's line, or ``(b"", reason, detail)`` to quarantine the record."""
    if value is None:
        return b"", "blank", "record without a value"
    if mode == "json":
        try:
            obj = orjson.loads(value)
        except orjson.JSONDecodeError as err:
            return b"", "bad_json", f"value is not JSON: {err}"
        if not isinstance(obj, dict) or field not in obj:
            return b"", "missing_field", f"no {field!r} in the value"
        text = obj[field]
        if not isinstance(text, str):
            return b"", "bad_type", f"{field!r} is not a string"
        value = text.encode()
    line = value[:-1] if value.endswith(b"\n") else value
    if b"\n" in line:
        return b"", "no_match", "the record holds several lines"
    return line, "", ""


def parse_batch(
    batch: Batch, parser: Parser, source: str, mode: ValueMode, field: str
) -> tuple[pa.Table, RejectBuilder]:
    """The events and rejects of a batch, every row placed at its record's offset;
    ``read == events + rejects`` always holds (nothing is dropped)."""
    rejects = RejectBuilder(source)
    lines: list[bytes] = []
    kept: list[int] = []
    for value, offset in zip(batch.values, batch.offsets, strict=True):
        line, reason, detail = record_line(value, mode, field)
        if reason:
            rejects.add(line=offset, offset=offset, reason=reason, detail=detail, raw=value or b"")
        else:
            lines.append(line)
            kept.append(offset)
    # Step 1: byte-level checks (UTF-8, NUL, size, blank) on all lines in one call.
    data = b"\n".join(lines) + b"\n" if lines else b""
    block = split_block(data, source=source, base_offset=0, base_line=0)
    # Step 2: split_block numbers lines 0..n-1; put each row at its record's offset.
    where = np.array(kept, dtype=np.int64)
    for row in block.rejects.to_table(parser.name).to_pylist():
        at = int(where[row["source_line"]])
        rejects.add(
            line=at,
            offset=at,
            reason=row["reason"],
            detail=row["detail"] or "",
            raw=row["raw"],
            raw_length=row["raw_length"],
        )
    line_no = pa.array(where[block.line_no.to_numpy()], pa.int64())
    block = replace(block, line_no=line_no, offset=line_no, rejects=rejects)
    # Step 3: the format's parser (it carries the block's rejects into its own).
    parsed = parser.parse(block)
    return parsed.events, parsed.rejects
