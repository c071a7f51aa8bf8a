"""The registry of log formats, and ``--format auto`` detection.

Adding a format means adding one module with a ``Parser`` and one line here.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from loglambda.core.lines import split_block
from loglambda.core.parsers.access import COMBINED, COMMON, VCOMBINED
from loglambda.core.parsers.base import Parsed, Parser, RawParser
from loglambda.core.parsers.jsonlogs import JSON_LOGS
from loglambda.core.parsers.nginx_json import NGINX_JSON
from loglambda.core.parsers.plainlogs import APACHE_ERROR, PYTHON_LOGGING

# Order matters for detection ties: the more specific format first (vcombined lines
# never parse as combined, but combined lines without referrer/agent parse as common).
PARSERS: Final[dict[str, Parser]] = {
    p.name: p
    for p in (
        COMBINED,
        VCOMBINED,
        COMMON,
        NGINX_JSON,
        JSON_LOGS,
        APACHE_ERROR,
        PYTHON_LOGGING,
    )
}

__all__ = [
    "PARSERS",
    "Detection",
    "Parsed",
    "Parser",
    "RawParser",
    "detect_format",
    "get_parser",
]


def get_parser(name: str) -> Parser:
    """The parser for a format name, with the valid names in the error."""
    try:
        return PARSERS[name]
    except KeyError:
        known = ", ".join(sorted(PARSERS))
        raise ValueError(f"unknown format {name!r}; choose one of: auto, {known}") from None


@dataclass(frozen=True)
class Detection:
    """Which format a sample looks like, and how well it fitted."""

    parser: Parser
    parsed: int
    sampled: int

    def describe(self) -> str:
        return (
            f"detected format: {self.parser.name} "
            f"({self.parsed}/{self.sampled} sample lines parsed)"
        )


def detect_format(sample: bytes, source: str = "sample") -> Detection:
    """Pick the format that parses the most lines of ``sample`` (first lines of a file).

    Raises ValueError when no format parses any line: guessing would quarantine the
    whole file under the wrong format, which is worse than asking the user.
    """
    cut = sample.rfind(b"\n")
    if cut > 0:
        sample = sample[: cut + 1]
    block = split_block(sample, source=source, base_offset=0, base_line=1)
    best: Detection | None = None
    for parser in PARSERS.values():
        parsed = parser.parse(block).events.num_rows
        if best is None or parsed > best.parsed:
            best = Detection(parser, parsed, block.read)
    if best is None or best.parsed == 0:
        raise ValueError(
            f"{source}: no known format matches its first {block.read} lines; "
            f"pass --format (one of: {', '.join(sorted(PARSERS))})"
        )
    return best
