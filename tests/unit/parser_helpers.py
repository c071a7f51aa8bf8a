"""What every parser test does: parse lines as a file would give them, and check that
nothing was lost (read = accepted + quarantined) and the schema is the kind's."""

from __future__ import annotations

from typing import Any

from loglambda.core.lines import split_block
from loglambda.core.parsers import Parsed, Parser
from loglambda.core.schemas import schema_for


def parse_lines(parser: Parser, *lines: str, source: str = "t") -> Parsed:
    data = "".join(line + "\n" for line in lines).encode()
    block = split_block(data, source=source, base_offset=0, base_line=1)
    parsed = parser.parse(block)
    assert block.read == len(parsed.events) + len(parsed.rejects)
    assert parsed.events.schema == schema_for(parser.kind)
    return parsed


def parse_one(parser: Parser, line: str) -> dict[str, Any]:
    """The single event a good line gives."""
    parsed = parse_lines(parser, line)
    assert len(parsed.rejects) == 0, parsed.rejects.to_table(parser.name).to_pylist()
    rows: list[dict[str, Any]] = parsed.events.to_pylist()
    return rows[0]


def parse_rejected(parser: Parser, line: str) -> tuple[str, str]:
    """Reason code and detail of the single quarantine row a bad line gives."""
    parsed = parse_lines(parser, line)
    assert len(parsed.events) == 0
    row = parsed.rejects.to_table(parser.name).to_pylist()[0]
    return row["reason"], row["detail"]
