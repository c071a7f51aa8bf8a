"""The parser extension point and the helpers every format shares.

A parser turns a ``LineBlock`` (clean UTF-8 lines with positions) into a table of
events of one kind plus quarantine rows. Parsers must never raise on input: a line
that does not fit becomes a quarantine row with a reason code. Vectorised parsers work
on whole Arrow arrays; row-wise ones (JSON) go through ``parse_rows``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol, runtime_checkable

import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.lines import LineBlock, RawBlock
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import Kind, schema_for


@dataclass(frozen=True)
class Parsed:
    """What a parser made of one block: events in input order, and the rejects."""

    kind: Kind
    events: pa.Table
    rejects: RejectBuilder


class Parser(Protocol):
    """A log format. ``name`` is what users pass to ``--format``."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> Kind: ...

    def parse(self, block: LineBlock) -> Parsed: ...


@runtime_checkable
class RawParser(Parser, Protocol):
    """A parser that also takes unsplit blocks, splitting and parsing in one pass.

    ``parse_raw(raw)`` must equal ``parse(raw.split())``; only the speed differs.
    """

    def parse_raw(self, raw: RawBlock) -> Parsed: ...


class Reject(Exception):
    """Raised inside a row-wise parse function to quarantine the current line."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason
        self.detail = detail


def parse_rows(
    block: LineBlock,
    kind: Kind,
    parse_line: Callable[[str], Mapping[str, Any]],
) -> Parsed:
    """Apply a per-line function; ``Reject`` (or any error) quarantines that line.

    ``parse_line`` returns the event's fields except provenance. Catching every
    exception is deliberate: a parser bug on one odd line must quarantine that line
    with the error named, not stop an import of millions.
    """
    rejects = RejectBuilder(block.source)
    rejects.extend(block.rejects)
    rows: list[Mapping[str, Any]] = []
    keep: list[int] = []
    lines = block.lines.to_pylist()
    line_no = block.line_no.to_pylist()
    offsets = block.offset.to_pylist()
    for i, text in enumerate(lines):
        try:
            row = parse_line(text)
        except Reject as rej:
            rejects.add(
                line=line_no[i], offset=offsets[i], reason=rej.reason, detail=rej.detail, raw=text
            )
            continue
        except Exception as err:
            rejects.add(
                line=line_no[i],
                offset=offsets[i],
                reason="bad_type",
                detail=f"{type(err).__name__}: {err}",
                raw=text,
            )
            continue
        rows.append(row)
        keep.append(i)
    schema = schema_for(kind)
    body = schema.remove(schema.get_field_index("source_offset"))
    body = body.remove(body.get_field_index("source_line")).remove(body.get_field_index("source"))
    table, keep = _to_table(rows, keep, body, block, rejects, lines)
    idx = pa.array(keep, pa.int64())
    table = with_provenance(table, block, idx)
    return Parsed(kind, table, rejects)


def _to_table(
    rows: list[Mapping[str, Any]],
    keep: list[int],
    schema: pa.Schema,
    block: LineBlock,
    rejects: RejectBuilder,
    lines: list[str],
) -> tuple[pa.Table, list[int]]:
    """Convert parsed rows to Arrow; a value Arrow refuses quarantines only its line."""
    try:
        return pa.Table.from_pylist(rows, schema=schema), keep
    except (pa.ArrowException, TypeError, ValueError, OverflowError):
        pass
    good_rows: list[Mapping[str, Any]] = []
    good_keep: list[int] = []
    for row, i in zip(rows, keep, strict=True):
        try:
            pa.Table.from_pylist([row], schema=schema)
        except (pa.ArrowException, TypeError, ValueError, OverflowError) as err:
            rejects.add(
                line=block.line_no[i].as_py(),
                offset=block.offset[i].as_py(),
                reason="bad_type",
                detail=f"value does not fit the schema: {err}",
                raw=lines[i],
            )
            continue
        good_rows.append(row)
        good_keep.append(i)
    return pa.Table.from_pylist(good_rows, schema=schema), good_keep


def with_provenance(table: pa.Table, block: LineBlock, rows: pa.Array | None = None) -> pa.Table:
    """Append source/line/offset columns for the block rows ``rows`` (default: all)."""
    line_no = block.line_no if rows is None else block.line_no.take(rows)
    offset = block.offset if rows is None else block.offset.take(rows)
    n = len(line_no)
    table = table.append_column(
        pa.field("source", pa.string(), nullable=False),
        pa.array([block.source], pa.string()).take(pa.array([0] * n, pa.int32())),
    )
    table = table.append_column(pa.field("source_line", pa.int64(), nullable=False), line_no)
    return table.append_column(pa.field("source_offset", pa.int64(), nullable=False), offset)


def first_failure(reason: pa.Array, bad: pa.Array, code: str) -> pa.Array:
    """Record ``code`` for rows that are ``bad`` and have no earlier failure.

    Checks run in order, so a row's reason is the first check it failed.
    """
    bad = pc.fill_null(bad, True)
    return pc.if_else(pc.and_kleene(pc.is_null(reason), bad), pa.scalar(code), reason)
