"""``loglambda generate``: the project's own seeded generator of realistic input data.

The demo, the tests and every benchmark need inputs that look like production (load
curves, bots, incidents, broken lines) yet are identical on every machine, so results
can be compared run to run. Same seed and arguments give byte-identical files.

This module is the public face: the spec/report types and ``main_generate`` for the
CLI. The work is in ``traffic`` (access logs), ``applogs`` (JSON app
logs) and ``common`` (time model, incidents, fast writer) they share.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path
from typing import Final

from loglambda.core.generate.applogs import STYLES, AppLogSpec, Style, write_applogs
from loglambda.core.generate.common import DEFAULT_START, to_utc
from loglambda.core.generate.output import GenerateReport
from loglambda.core.generate.traffic import (
    TRAFFIC_FORMATS,
    TrafficFormat,
    TrafficSpec,
    write_traffic,
)

__all__ = [
    "DEFAULT_START",
    "GENERATE_KINDS",
    "STYLES",
    "TRAFFIC_FORMATS",
    "AppLogSpec",
    "GenerateReport",
    "Style",
    "TrafficFormat",
    "TrafficSpec",
    "main_generate",
    "parse_start",
    "write_applogs",
    "write_traffic",
]

GENERATE_KINDS: Final = ("traffic", "logs")
# App logs have one format; these spellings all mean it.
_LOG_FORMATS: Final = ("json", "auto", "")


def parse_start(text: str | None) -> datetime:
    """An ISO-8601 instant ('2026-11-01', '2026-11-01T06:00Z', ...); naive means UTC."""
    if text is None or not text.strip():
        return DEFAULT_START
    try:
        return to_utc(datetime.fromisoformat(text.strip()))
    except ValueError as err:
        raise ValueError(f"start must be an ISO-8601 date or time, got {text!r}") from err


def main_generate(
    kind: str,
    lines: int,
    out: Path,
    seed: int,
    fmt: str,
    days: float,
    start: str | None,
    malformed_share: float,
    late_share: float,
) -> GenerateReport:
    """Generate ``lines`` lines of ``kind`` ("traffic", or "logs" alias "applogs") into
    ``out``, gzip-compressed if it ends in .gz.

    ``fmt`` is "combined" or "nginx_json" for traffic; "json" (or "auto"/"") for logs.
    ``start`` is ISO-8601 (None: 2026-11-01T00:00Z). Raises ValueError with a message
    fit for the user on any invalid argument.
    """
    when = parse_start(start)
    if kind == "traffic":
        if fmt not in TRAFFIC_FORMATS:
            raise ValueError(f"traffic format must be one of {TRAFFIC_FORMATS}, got {fmt!r}")
        traffic_fmt: TrafficFormat = "combined" if fmt == "combined" else "nginx_json"
        spec = TrafficSpec(
            lines=lines,
            seed=seed,
            start=when,
            days=days,
            fmt=traffic_fmt,
            malformed_share=malformed_share,
            late_share=late_share,
        )
        return write_traffic(spec, out)
    if kind in ("logs", "applogs"):
        if fmt not in _LOG_FORMATS:
            raise ValueError(f"app logs are written as 'json', got format {fmt!r}")
        logs = AppLogSpec(
            lines=lines,
            seed=seed,
            start=when,
            days=days,
            malformed_share=malformed_share,
            late_share=late_share,
        )
        return write_applogs(logs, out)
    raise ValueError(f"kind must be one of {GENERATE_KINDS}, got {kind!r}")
