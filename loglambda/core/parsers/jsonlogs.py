"""JSON-lines application logs, as Winston, pino, bunyan and structlog write them.

These loggers agree on "one JSON object per line" and on little else: the time may be
an ISO 8601 string or epoch milliseconds, the level a word or a pino number, the
message ``message``, ``msg`` or ``event``. This parser maps every common spelling onto
``LOGS_SCHEMA`` so a query over ``level``/``service``/``message`` works whichever
library wrote the line, and keeps everything else in ``attrs`` so nothing is lost.

Rules users can rely on:

* Time: the first present (non-null) field of ``timestamp``, ``time``, ``ts``,
  ``@timestamp``. ISO 8601 strings are converted to UTC; strings *without* an offset
  are taken as UTC. Numbers (and numeric strings) are epoch times whose unit is
  guessed from their size: seconds (structlog's default), milliseconds (pino),
  microseconds or nanoseconds. A missing or unparseable time quarantines the line
  (``bad_timestamp``): a record that cannot be placed in time is unusable.
* Level: ``level``, ``severity``, ``levelname`` or ``log.level``, mapped onto
  ``LEVELS`` via ``LEVEL_ALIASES`` (case-insensitive). pino/bunyan numbers map by
  band (10 trace, 20 debug, 30 info, 40 warn, 50 error, 60 fatal; a custom pino level
  such as 35 falls into the band below it). A missing level means ``info``: most
  libraries omit it only for plain informational output. An unknown level word is
  quarantined (``bad_type``) rather than guessed, since a wrong level corrupts
  error-rate alerts.
* ``message``/``service``/``logger``/``trace_id`` take the first candidate field
  holding a string (trace ids also accept numbers, as Datadog injects them); a
  candidate of another type is left in ``attrs`` rather than quarantined, because the
  record is still usable. Dotted candidates (``service.name``) match either a literal
  dotted key or nested objects (ECS style).
* ``attrs`` is every field not consumed above, as a JSON object with sorted keys
  (``{}`` when nothing is left). Only the field actually used is consumed: a record
  with both ``msg`` and ``message`` keeps the unused one in ``attrs``.

The time, level and value-display helpers here are shared with ``nginx_json`` and
``plainlogs``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from typing import Any, Final

import orjson

from loglambda.core.lines import LineBlock
from loglambda.core.parsers.base import Parsed, Reject, parse_rows
from loglambda.core.schemas import Kind

LEVEL_ALIASES: Final[dict[str, str]] = {
    "trace": "trace",
    "silly": "trace",  # winston's lowest level, below debug
    # Apache 2.4 has trace1..trace8 sub-levels.
    **{f"trace{i}": "trace" for i in range(1, 9)},
    "debug": "debug",
    "verbose": "debug",
    "info": "info",
    "information": "info",
    "informational": "info",
    "http": "info",  # winston's request-log level, between info and verbose
    "notice": "notice",
    "warn": "warn",
    "warning": "warn",
    "error": "error",
    "err": "error",
    "exception": "error",  # structlog's log.exception()
    "fatal": "fatal",
    "critical": "fatal",
    "crit": "fatal",
    "alert": "fatal",
    "emerg": "fatal",
    "emergency": "fatal",
    "panic": "fatal",
}

TIME_KEYS: Final = ("timestamp", "time", "ts", "@timestamp")
LEVEL_KEYS: Final = ("level", "severity", "levelname", "log.level")
MESSAGE_KEYS: Final = ("message", "msg", "event")
SERVICE_KEYS: Final = ("service", "name", "app", "service.name")
LOGGER_KEYS: Final = ("logger", "logger_name", "module", "log.logger")
TRACE_KEYS: Final = ("trace_id", "traceId", "trace.id", "dd.trace_id")

_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# ASCII only: int()/Decimal() would also accept Arabic-Indic digits and underscores.
_NUMBER_RE: Final = re.compile(r"[+-]?[0-9]{1,30}(?:\.[0-9]{1,30})?")
_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,30}")
_MONTHS: Final = {
    m: i + 1
    for i, m in enumerate(
        ("jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec")
    )
}
# nginx $time_local / Common Log Format: 17/May/2015:10:05:03 +0000. Parsed by hand
# because strptime's %b depends on the process locale.
_CLF_TIME_RE: Final = re.compile(
    r"([0-9]{1,2})/([A-Za-z]{3})/([0-9]{4}):([0-9]{2}):([0-9]{2}):([0-9]{2})"
    r"(?:\.([0-9]{1,6}))? ([+-])([0-9]{2}):?([0-9]{2})"
)


def show_value(value: object, limit: int = 60) -> str:
    """A short rendering of a JSON value for quarantine details."""
    if isinstance(value, str):
        return repr(value if len(value) <= limit else value[:limit] + "…")
    try:
        text = orjson.dumps(value).decode()
    except (TypeError, orjson.JSONEncodeError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


def load_object(text: str) -> dict[str, Any]:
    """Decode one line as a JSON object, or quarantine it as ``bad_json``."""
    try:
        obj = orjson.loads(text)
    except orjson.JSONDecodeError as err:
        raise Reject("bad_json", f"not valid JSON: {err}") from None
    if not isinstance(obj, dict):
        raise Reject("bad_json", f"expected a JSON object, got {type(obj).__name__}")
    return obj


def level_from_number(number: int) -> str:
    """Map a pino/bunyan numeric level to ``LEVELS`` by band (custom levels round down)."""
    for bound, level in ((20, "trace"), (30, "debug"), (40, "info"), (50, "warn"), (60, "error")):
        if number < bound:
            return level
    return "fatal"


def epoch_to_utc(number: Decimal) -> datetime:
    """An epoch time in s, ms, µs or ns (guessed from its size) as a UTC datetime.

    Seconds below 1e11 reach the year 5138, so anything larger must be a finer unit.
    """
    if not number.is_finite():
        raise ValueError("not a finite number")
    size = abs(number)
    if size < Decimal("1e11"):
        scale = Decimal(1_000_000)
    elif size < Decimal("1e14"):
        scale = Decimal(1_000)
    elif size < Decimal("1e17"):
        scale = Decimal(1)
    else:
        scale = Decimal("0.001")
    micros = int((number * scale).to_integral_value(ROUND_HALF_EVEN))
    try:
        return _EPOCH + timedelta(microseconds=micros)
    except OverflowError:
        raise ValueError("epoch time out of range") from None


def parse_time(value: object) -> datetime:
    """Any common log timestamp as a tz-aware UTC datetime; naive times are taken as UTC.

    Accepts epoch numbers (see ``epoch_to_utc``), numeric strings, ISO 8601 strings and
    the Common Log Format time. Raises ``ValueError`` naming what was expected.
    """
    if isinstance(value, bool):  # bool is an int subclass: true must not be 1970
        raise ValueError("expected a time string or epoch number")
    if isinstance(value, int):
        return epoch_to_utc(Decimal(value))
    if isinstance(value, float):
        # repr is the shortest exact round-trip, so 1431857103.123 stays .123000.
        return epoch_to_utc(Decimal(repr(value)))
    if not isinstance(value, str):
        raise ValueError("expected a time string or epoch number")
    text = value.strip()
    try:
        if _NUMBER_RE.fullmatch(text):
            return epoch_to_utc(Decimal(text))
        clf = _CLF_TIME_RE.fullmatch(text)
        if clf:
            return _clf_time(clf)
        parsed = datetime.fromisoformat(text)
        if parsed.tzinfo is None:
            return parsed.replace(tzinfo=UTC)
        return parsed.astimezone(UTC)
    except (ValueError, OverflowError, InvalidOperation):
        pass
    raise ValueError("expected ISO 8601, Common Log Format time or an epoch number")


def _clf_time(m: re.Match[str]) -> datetime:
    day, mon, year, hh, mm, ss, frac, sign, oh, om = m.groups()
    month = _MONTHS.get(mon.lower())
    if month is None:
        raise ValueError(f"unknown month {mon!r}")
    offset = timedelta(hours=int(oh), minutes=int(om))
    tz = timezone(-offset if sign == "-" else offset)
    micros = int((frac or "0").ljust(6, "0"))
    local = datetime(int(year), month, int(day), int(hh), int(mm), int(ss), micros, tzinfo=tz)
    return local.astimezone(UTC)


def _find(obj: dict[str, Any], path: str) -> tuple[bool, Any]:
    """Look up a literal key, else a dotted path through nested objects."""
    if path in obj:
        return True, obj[path]
    head, dot, rest = path.partition(".")
    if dot:
        sub = obj.get(head)
        if isinstance(sub, dict):
            return _find(sub, rest)
    return False, None


def _consume(obj: dict[str, Any], path: str) -> None:
    """Remove what ``_find`` found, dropping nested objects left empty."""
    if path in obj:
        del obj[path]
        return
    head, _, rest = path.partition(".")
    sub = obj[head]
    _consume(sub, rest)
    if not sub:
        del obj[head]


def _pick_string(
    obj: dict[str, Any], keys: tuple[str, ...], *, numbers: bool = False
) -> tuple[str | None, str | None]:
    """The first candidate holding a string (or number if allowed), and its key."""
    for key in keys:
        found, value = _find(obj, key)
        if not found:
            continue
        if isinstance(value, str):
            return value, key
        if numbers and isinstance(value, int | float) and not isinstance(value, bool):
            return str(value), key
    return None, None


def _level(value: object, key: str) -> str:
    if isinstance(value, str):
        word = value.strip().lower()
        if word in LEVEL_ALIASES:
            return LEVEL_ALIASES[word]
        if _INT_RE.fullmatch(word):
            return level_from_number(int(word))
    elif isinstance(value, int) and not isinstance(value, bool):
        return level_from_number(value)
    raise Reject("bad_type", f"field {key!r} is {show_value(value)}, not a known log level")


def parse_json_log(text: str) -> dict[str, Any]:
    """One JSON log line as a ``LOGS_SCHEMA`` row (without provenance)."""
    obj = load_object(text)
    consumed: list[str] = []

    ts: datetime | None = None
    for key in TIME_KEYS:
        found, value = _find(obj, key)
        if not found or value is None:
            continue
        try:
            ts = parse_time(value)
        except ValueError as err:
            raise Reject("bad_timestamp", f"field {key!r} is {show_value(value)}: {err}") from None
        consumed.append(key)
        break
    if ts is None:
        raise Reject("bad_timestamp", f"no time field (expected one of {', '.join(TIME_KEYS)})")

    level = "info"
    for key in LEVEL_KEYS:
        found, value = _find(obj, key)
        if found and value is not None:
            level = _level(value, key)
            consumed.append(key)
            break

    row: dict[str, Any] = {"ts": ts, "level": level}
    for column, keys, numbers in (
        ("message", MESSAGE_KEYS, False),
        ("service", SERVICE_KEYS, False),
        ("logger", LOGGER_KEYS, False),
        ("trace_id", TRACE_KEYS, True),
    ):
        value, used = _pick_string(obj, keys, numbers=numbers)
        row[column] = value
        if used is not None:
            consumed.append(used)

    for key in consumed:
        _consume(obj, key)
    row["attrs"] = orjson.dumps(obj, option=orjson.OPT_SORT_KEYS).decode()
    return row


class JsonLogsParser:
    """The ``json`` format: JSON-lines application logs (see the module docstring)."""

    @property
    def name(self) -> str:
        return "json"

    @property
    def kind(self) -> Kind:
        return "logs"

    def parse(self, block: LineBlock) -> Parsed:
        return parse_rows(block, self.kind, parse_json_log)


JSON_LOGS: Final = JsonLogsParser()
