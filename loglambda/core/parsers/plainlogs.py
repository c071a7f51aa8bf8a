"""Plain-text application logs: Apache's error log and Python's ``logging`` output.

Text logs are the bulk of what servers keep, so these parsers are vectorised: one
RE2 pass (``pyarrow.compute.extract_regex``) per layout over a whole block, then
Arrow kernels for times and levels; Python only touches rejected lines (to word their
quarantine detail). Should a kernel ever fail on odd input, the block is bisected and
re-parsed so only the offending line is quarantined.

Common rules:

* One line is one record. A line that matches no layout, including the continuation
  lines of a multi-line entry (a Python traceback, a wrapped message), is quarantined
  as ``no_match``; joining continuation lines onto their entry is future work.
* Times carry no zone in either format (both write local time); they are taken as
  UTC. Run the servers in UTC, or shift afterwards, if that is wrong for you.
* Levels map onto ``LEVELS`` through ``jsonlogs.LEVEL_ALIASES`` (emerg/alert/crit and
  CRITICAL become fatal, trace1..trace8 trace, WARNING warn); an unknown level word is
  quarantined as ``bad_type`` rather than guessed.
* ``attrs`` is a JSON object with sorted keys, ``{}`` when there is nothing extra.

``apache_error`` reads Apache 2.2 (``[Sun Dec 04 04:47:44 2005] [error] [client
1.2.3.4] msg``) and 2.4 (``[Thu Jun 27 06:58:09.169510 2019] [mpm_event:notice] [pid
8308:tid 140] [client 1.2.3.4:5678] AH00489: msg``) default layouts. The module goes
to ``logger``, service is ``apache``, and ``attrs`` holds ``client``, ``pid``, ``tid``
and the ``AH`` error ``code`` when present (the message keeps its full text).

``python_logging`` reads ``%(asctime)s - %(name)s - %(levelname)s - %(message)s``
(the logging cookbook), ``%(asctime)s %(levelname)s %(name)s: %(message)s`` (level
optionally in brackets) and Flask's ``[%(asctime)s] %(levelname)s in %(module)s:
%(message)s``. The logger name goes to ``logger`` and its first dotted component to
``service``. basicConfig's default ``WARNING:root:message`` (like uvicorn's
``INFO:     message``) has no time, so it cannot be placed on a timeline: such lines
are quarantined as ``bad_timestamp``, not ``no_match``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.lines import LineBlock
from loglambda.core.parsers.base import Parsed, first_failure, with_provenance
from loglambda.core.parsers.jsonlogs import LEVEL_ALIASES
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import LOGS_SCHEMA, TS_TYPE, Kind

_BODY_SCHEMA: Final = pa.schema(
    [f for f in LOGS_SCHEMA if f.name not in ("source", "source_line", "source_offset")]
)
_MONTHS: Final = pa.array(
    ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"]
)
_LEVEL_WORDS: Final = pa.array(list(LEVEL_ALIASES))
_LEVEL_NAMES: Final = pa.array(list(LEVEL_ALIASES.values()))

# Every group is named because extract_regex requires it. Numbers that go into attrs
# as JSON exclude leading zeros, which JSON forbids; RE2's \w is ASCII-only, so the
# client text needs no JSON escaping.
_APACHE_RE: Final = (
    r"^\[(?P<when>[A-Z][a-z]{2} (?P<mon>[A-Z][a-z]{2}) +(?P<day>[0-9]{1,2}) "
    r"(?P<hms>[0-9]{2}:[0-9]{2}:[0-9]{2})(?:\.(?P<frac>[0-9]{1,6}))? (?P<year>[1-9][0-9]{3}))\] "
    r"\[(?:(?P<module>[\w.-]*):)?(?P<level>\w+)\]"
    r"(?: \[pid (?P<pid>0|[1-9][0-9]{0,17})(?::tid (?P<tid>0|[1-9][0-9]{0,19}))?\])?"
    r"(?: \[client (?P<client>[\w.:%-]+)\])?"
    r"(?: (?P<message>.*))?$"
)
# The AH code follows the message start or an OS error prefix like "(111)Connection refused: ".
_APACHE_CODE_RE: Final = r"^(?:\([0-9]+\)[^:]*: )?(?P<code>AH[0-9]{5}):"

_PY_TS: Final = (
    r"(?P<date>[1-9][0-9]{3}-[0-9]{2}-[0-9]{2})[ T](?P<hms>[0-9]{2}:[0-9]{2}:[0-9]{2})"
    r"(?:[,.](?P<frac>[0-9]{1,6}))?"
)
_PY_LAYOUTS: Final = (
    rf"^{_PY_TS} - (?P<logger>\S+) - (?P<level>\w+) - (?P<message>.*)$",
    rf"^{_PY_TS} \[?(?P<level>[A-Za-z]+)\]? (?P<logger>[^\s:]+): (?P<message>.*)$",
    rf"^\[{_PY_TS}\] (?P<level>\w+) in (?P<logger>[^\s:]+): (?P<message>.*)$",
)
# basicConfig's "LEVEL:name:message", and uvicorn's "INFO:     message": no time at all.
_PY_NO_TIME_RE: Final = r"^(?:DEBUG|INFO|WARNING|ERROR|CRITICAL):"


@dataclass(frozen=True)
class _Extraction:
    """Body columns for every input line, plus why each rejected line was rejected."""

    columns: pa.Table  # _BODY_SCHEMA, one row per line (garbage where rejected)
    reason: pa.Array  # string; null where the line parsed
    details: list[str]  # one per non-null reason, in line order


def _field(matches: pa.Array, name: str) -> pa.Array:
    # struct_field (unlike StructArray.field) is null where the regex did not match.
    return pc.struct_field(matches, name)


def _constant(value: str, n: int) -> pa.Array:
    return pa.nulls(n, pa.string()).fill_null(value)


def _blank_to_null(values: pa.Array) -> pa.Array:
    """extract_regex yields "" for a group that did not take part; make that null."""
    return pc.if_else(pc.equal(values, ""), pa.scalar(None, pa.string()), values)


def _timestamps(date: pa.Array, hms: pa.Array, frac: pa.Array) -> pa.Array:
    """UTC timestamps from 'YYYY-MM-DD', 'HH:MM:SS' and a fraction; null where invalid.

    Callers guarantee those fixed widths (their regexes do), so digits sit at known
    positions.
    """
    text = pc.binary_join_element_wise(date, hms, " ")
    parsed = pc.strptime(text, format="%Y-%m-%d %H:%M:%S", unit="us", error_is_null=True)
    # strptime rolls Feb 31 into March and second 60 into the next minute; comparing
    # the day and second back rejects both (a strftime round trip costs 10x more).
    valid = pc.and_(
        pc.equal(pc.day(parsed), pc.cast(pc.utf8_slice_codeunits(text, 8, 10), pa.int64())),
        pc.equal(pc.second(parsed), pc.cast(pc.utf8_slice_codeunits(text, 17, 19), pa.int64())),
    )
    micros = pc.cast(pc.utf8_rpad(pc.fill_null(frac, ""), width=6, padding="0"), pa.int64())
    total = pc.add(pc.cast(parsed, pa.int64()), micros)
    return pc.cast(
        pc.if_else(pc.fill_null(valid, False), total, pa.scalar(None, pa.int64())), TS_TYPE
    )


def _levels(words: pa.Array) -> pa.Array:
    """Level words mapped onto LEVELS, case-insensitively; null where unknown."""
    return pc.take(_LEVEL_NAMES, pc.index_in(pc.utf8_lower(words), value_set=_LEVEL_WORDS))


def _details(
    reason: pa.Array, values: dict[str, pa.Array], word: Callable[[str, dict[str, Any]], str]
) -> list[str]:
    """Quarantine details for rejected lines only: Python never sees the good ones."""
    bad = pc.indices_nonzero(pc.is_valid(reason))
    reasons = reason.take(bad).to_pylist()
    picked = {k: v.take(bad).to_pylist() for k, v in values.items()}
    return [word(r, {k: v[i] for k, v in picked.items()}) for i, r in enumerate(reasons)]


def _extract_apache(lines: pa.Array) -> _Extraction:
    n = len(lines)
    m = pc.extract_regex(lines, _APACHE_RE)
    matched = pc.is_valid(m)
    month = pc.add(pc.index_in(_field(m, "mon"), value_set=_MONTHS), 1)
    date = pc.binary_join_element_wise(
        _field(m, "year"),
        pc.utf8_lpad(pc.cast(month, pa.string()), width=2, padding="0"),
        pc.utf8_lpad(_field(m, "day"), width=2, padding="0"),
        "-",
    )
    ts = _timestamps(date, _field(m, "hms"), _field(m, "frac"))
    level_word = _field(m, "level")
    level = _levels(level_word)
    message = _field(m, "message")
    code = _field(pc.extract_regex(message, _APACHE_CODE_RE), "code")

    def member(key: str, values: pa.Array, quote: bool) -> pa.Array:
        # ',"key":value' or "", so joining needs no null skipping (whose Arrow kernel
        # drops rows where every input is null).
        q = '"' if quote else ""
        prefix = pa.scalar(f',"{key}":{q}')
        joined = pc.binary_join_element_wise(prefix, _blank_to_null(values), pa.scalar(q), "")
        return pc.fill_null(joined, "")

    members = pc.binary_join_element_wise(
        member("client", _field(m, "client"), True),
        member("code", code, True),
        member("pid", _field(m, "pid"), False),
        member("tid", _field(m, "tid"), False),
        "",
    )
    attrs = pc.binary_join_element_wise("{", pc.utf8_slice_codeunits(members, 1), "}", "")

    reason = pa.nulls(n, pa.string())
    reason = first_failure(reason, pc.invert(matched), "no_match")
    reason = first_failure(reason, pc.is_null(ts), "bad_timestamp")
    reason = first_failure(reason, pc.is_null(level), "bad_type")

    def word(r: str, v: dict[str, Any]) -> str:
        if r == "no_match":
            return (
                "not an Apache error-log line ('[Www Mmm dd hh:mm:ss yyyy] [level] message'); "
                "continuation lines are not joined"
            )
        if r == "bad_timestamp":
            return f"time {v['when']!r} is not a valid date and time"
        return f"level {v['level']!r} is not a known log level"

    columns = pa.Table.from_arrays(
        [
            ts,
            _constant("apache", n),
            level,
            _blank_to_null(_field(m, "module")),
            message,
            pa.nulls(n, pa.string()),
            attrs,
        ],
        schema=_BODY_SCHEMA,
    )
    values = {"when": _field(m, "when"), "level": level_word}
    return _Extraction(columns, reason, _details(reason, values, word))


def _extract_python(lines: pa.Array) -> _Extraction:
    n = len(lines)
    layouts = [pc.extract_regex(lines, pattern) for pattern in _PY_LAYOUTS]
    # The first layout that matches wins; choose() picks each field from that layout.
    which = pa.nulls(n, pa.int8())
    for i in reversed(range(len(layouts))):
        which = pc.if_else(pc.is_valid(layouts[i]), pa.scalar(i, pa.int8()), which)

    def pick(name: str) -> pa.Array:
        return pc.choose(which, *(_field(layout, name) for layout in layouts))

    ts = _timestamps(pick("date"), pick("hms"), pick("frac"))
    level_word = pick("level")
    level = _levels(level_word)
    logger = _blank_to_null(pick("logger"))
    service = _blank_to_null(pc.list_element(pc.split_pattern(logger, ".", max_splits=1), 0))

    no_time = pc.match_substring_regex(lines, _PY_NO_TIME_RE)
    unmatched = pc.is_null(which)
    reason = pa.nulls(n, pa.string())
    reason = first_failure(reason, pc.and_(unmatched, no_time), "bad_timestamp")
    reason = first_failure(reason, unmatched, "no_match")
    reason = first_failure(reason, pc.is_null(ts), "bad_timestamp")
    reason = first_failure(reason, pc.is_null(level), "bad_type")

    def word(r: str, v: dict[str, Any]) -> str:
        if r == "no_match":
            return (
                "not a Python logging line ('YYYY-MM-DD hh:mm:ss,mmm - name - LEVEL - message' "
                "or similar); traceback and other continuation lines are not joined"
            )
        if r == "bad_timestamp" and v["date"] is None:
            return "a 'LEVEL:...' line (basicConfig's default layout) has no timestamp"
        if r == "bad_timestamp":
            return f"time '{v['date']} {v['hms']}' is not a valid date and time"
        return f"level {v['level']!r} is not a known log level"

    columns = pa.Table.from_arrays(
        [
            ts,
            service,
            level,
            logger,
            pick("message"),
            pa.nulls(n, pa.string()),
            _constant("{}", n),
        ],
        schema=_BODY_SCHEMA,
    )
    values = {"date": pick("date"), "hms": pick("hms"), "level": level_word}
    return _Extraction(columns, reason, _details(reason, values, word))


class _RegexLogsParser:
    """A vectorised text-log format built from one ``_extract_*`` function."""

    def __init__(self, name: str, extract: Callable[[pa.Array], _Extraction]) -> None:
        self._name = name
        self._extract = extract

    @property
    def name(self) -> str:
        return self._name

    @property
    def kind(self) -> Kind:
        return "logs"

    def parse(self, block: LineBlock) -> Parsed:
        found = self._extract_safely(block.lines)
        rejects = RejectBuilder(block.source)
        rejects.extend(block.rejects)
        bad = pc.indices_nonzero(pc.is_valid(found.reason))
        if len(bad):
            for text, line, offset, reason, detail in zip(
                block.lines.take(bad).to_pylist(),
                block.line_no.take(bad).to_pylist(),
                block.offset.take(bad).to_pylist(),
                found.reason.take(bad).to_pylist(),
                found.details,
                strict=True,
            ):
                rejects.add(line=line, offset=offset, reason=reason, detail=detail, raw=text)
        good = pc.cast(pc.indices_nonzero(pc.is_null(found.reason)), pa.int64())
        events = with_provenance(found.columns.take(good), block, good)
        return Parsed(self.kind, events, rejects)

    def _extract_safely(self, lines: pa.Array) -> _Extraction:
        """Extract, and if a kernel raises, bisect so only the offending line is lost.

        Parsers must never raise; like ``parse_rows``, an unexpected error quarantines
        the line (``bad_type``, error named) instead of stopping an import.
        """
        try:
            return self._extract(lines)
        except Exception as err:
            if len(lines) <= 1:
                return _Extraction(
                    pa.Table.from_arrays(
                        [pa.nulls(len(lines), f.type) for f in _BODY_SCHEMA], schema=_BODY_SCHEMA
                    ),
                    pa.nulls(len(lines), pa.string()).fill_null("bad_type"),
                    [f"{type(err).__name__}: {err}"] * len(lines),
                )
        half = len(lines) // 2
        head = self._extract_safely(lines.slice(0, half))
        tail = self._extract_safely(lines.slice(half))
        return _Extraction(
            pa.concat_tables([head.columns, tail.columns]),
            pa.concat_arrays([head.reason, tail.reason]),
            head.details + tail.details,
        )


APACHE_ERROR: Final = _RegexLogsParser("apache_error", _extract_apache)
PYTHON_LOGGING: Final = _RegexLogsParser("python_logging", _extract_python)
