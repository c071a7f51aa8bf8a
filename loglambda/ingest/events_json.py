"""NDJSON events in the normalised shape -> Arrow tables, validated record by record.

This is what ``POST /v1/ingest?kind=traffic|logs`` accepts: one JSON object per line
whose keys are the columns of ``TRAFFIC_SCHEMA`` / ``LOGS_SCHEMA`` (provenance
excluded: the server assigns ``source``/``source_line``/``source_offset``).

The rules (the row path below is their reference implementation):

* ``ts`` is required: an RFC 3339 / ISO 8601 string (an offset or ``Z``; a time
  without one is taken as UTC, as everywhere in loglambda) or an epoch number whose
  unit is guessed from its size like the JSON log parser does: seconds below 1e11,
  milliseconds below 1e14, microseconds below 1e17, else nanoseconds. Stored as UTC
  microseconds, rounded half-even. Missing or unparseable -> ``bad_timestamp``.
* traffic: ``client_ip`` (string) and ``status`` (integer 100-599) are required;
  ``bytes`` is an integer >= 0 (missing or null means 0); ``latency_ms`` a number
  >= 0 or null; the other columns strings or null.
* logs: ``level`` is one of ``LEVELS`` or a common alias (``warning``, ``ERROR``, pino
  numbers...), null or missing means ``info``; ``attrs`` is a JSON object (stored as
  JSON text with sorted keys) or a string (stored as given) or null; the rest strings
  or null.
* Integers may be written as integral floats (``200.0``); strings are never numbers.
  Unknown keys are ignored. A duplicated key takes its last value.

Speed: a body is first parsed in one vectorised ``pyarrow.json`` call and checked with
Arrow kernels. Rows that pass are converted exactly as the row path would convert them
(the unit tests compare both paths on generated records); every row that does not pass
-- or the whole body, when ``pyarrow.json`` refuses it or sees something it is more
lenient about than ``orjson`` -- goes through the row path, which gives each rejected
record its reason. A clean body therefore costs one C++ parse; a bad record costs only
itself.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import orjson
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.json as pa_json

from loglambda.core.lines import DEFAULT_MAX_LINE_BYTES, LineBlock, split_block
from loglambda.core.parsers.base import Parsed, Reject, parse_rows, with_provenance
from loglambda.core.parsers.jsonlogs import (
    LEVEL_ALIASES,
    level_from_number,
    load_object,
    parse_time,
    show_value,
)
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import TS_TYPE, Kind, schema_for

_INT64_MAX: Final = 2**63 - 1
_EPOCH: Final = datetime(1970, 1, 1, tzinfo=UTC)
# The microseconds Python's datetime can hold (years 1-9999): the row path fails
# outside them, so the fast path must not accept them either.
_MIN_US: Final = -62_135_596_800_000_000
_MAX_US: Final = 253_402_300_799_999_999
# RFC 3339 with an offset and at most microsecond digits: what both Arrow's cast and
# datetime.fromisoformat read identically. Anything else takes the row path.
_RFC3339: Final = (
    r"^[0-9]{4}-[0-9]{2}-[0-9]{2}[T ](?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9]"
    r"(?:\.[0-9]{1,6})?(?:Z|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])$"
)
_LOGS_TEXT: Final = ("service", "logger", "message", "trace_id")
_ALIAS_KEYS: Final = pa.array(list(LEVEL_ALIASES), pa.string())
_ALIAS_VALUES: Final = pa.array(list(LEVEL_ALIASES.values()), pa.string())
# pyarrow.json accepts NaN, Inf and Infinity (any sign) as numbers; orjson, the row
# path, rejects them. A body holding them anywhere (even inside a string: rare, and
# then only slower) takes the row path.
LENIENT_TOKENS: Final = (b"NaN", b"Inf")


def parse_events(
    data: bytes, kind: Kind, *, source: str, max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
) -> tuple[Parsed, int]:
    """Parse an NDJSON body of ``kind`` events; return what it made and the lines read."""
    block = split_block(
        data, source=source, base_offset=0, base_line=1, max_line_bytes=max_line_bytes
    )
    return events_from_block(block, kind), block.read


def events_from_block(block: LineBlock, kind: Kind, *, fast: bool = True) -> Parsed:
    """Events of ``kind`` from clean NDJSON lines (``fast=False`` forces the row path:
    the reference the fast path is tested against)."""
    schema_for(kind)
    rejects = RejectBuilder(block.source)
    rejects.extend(block.rejects)
    n = len(block)
    quick = _fast_path(block.lines, kind) if fast and n else None
    ok = quick[1] if quick is not None else np.zeros(n, dtype=bool)
    pieces = []
    if quick is not None and quick[0].num_rows:
        pieces.append(with_provenance(quick[0], block, pa.array(np.flatnonzero(ok))))
    slow = pa.array(np.flatnonzero(~ok))
    if len(slow):
        sub = LineBlock(
            block.source,
            block.lines.take(slow),
            block.line_no.take(slow),
            block.offset.take(slow),
            RejectBuilder(block.source),
            len(slow),
        )
        parsed = parse_rows(sub, kind, ROW_PARSERS[kind])
        rejects.extend(parsed.rejects)
        pieces.append(parsed.events)
    if not pieces:
        return Parsed(kind, schema_for(kind).empty_table(), rejects)
    events = pa.concat_tables(pieces)
    if len(pieces) > 1:  # keep body order: the log's order is the sender's order
        events = events.take(pc.sort_indices(events.column("source_line")))
    return Parsed(kind, events, rejects)


# -- the row path: the reference semantics ---------------------------------------------


def _ts(obj: Mapping[str, Any]) -> datetime:
    value = obj.get("ts")
    if value is None:
        raise Reject("bad_timestamp", "no 'ts' field")
    try:
        return parse_time(value)
    except ValueError as err:
        raise Reject("bad_timestamp", f"field 'ts' is {show_value(value)}: {err}") from None


def _text(obj: Mapping[str, Any], key: str) -> str | None:
    value = obj.get(key)
    if value is None or isinstance(value, str):
        return value
    raise Reject("bad_type", f"field {key!r} is {show_value(value)}, expected a string")


def _integer(obj: Mapping[str, Any], key: str) -> int | None:
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    raise Reject("bad_type", f"field {key!r} is {show_value(value)}, expected an integer")


def traffic_row(text: str) -> dict[str, Any]:
    """One normalised traffic event (a JSON object) as a ``TRAFFIC_SCHEMA`` row."""
    obj = load_object(text)
    # Checked in schema order: the first failing column names the reason.
    row: dict[str, Any] = {"ts": _ts(obj), "host": _text(obj, "host")}
    row["client_ip"] = _text(obj, "client_ip")
    if row["client_ip"] is None:
        raise Reject("missing_field", "no 'client_ip' field")
    for key in ("method", "path", "query", "protocol"):
        row[key] = _text(obj, key)
    status = _integer(obj, "status")
    if status is None:
        raise Reject("missing_field", "no 'status' field")
    if not 100 <= status <= 599:
        raise Reject("bad_status", f"field 'status' is {status}, outside 100-599")
    size = _integer(obj, "bytes")
    if size is not None and not 0 <= size <= _INT64_MAX:
        raise Reject("bad_bytes", f"field 'bytes' is {size}, outside 0-{_INT64_MAX}")
    latency = obj.get("latency_ms")
    if latency is not None:
        if isinstance(latency, bool) or not isinstance(latency, int | float):
            raise Reject("bad_type", f"field 'latency_ms' is {show_value(latency)}, not a number")
        if latency < 0:
            raise Reject("bad_latency", f"field 'latency_ms' is {latency}, negative")
        latency = float(latency)
    row.update(status=status, bytes=size or 0, latency_ms=latency)
    for key in ("referrer", "user_agent"):
        row[key] = _text(obj, key)
    return row


def _level(value: object) -> str:
    if value is None:
        return "info"
    if isinstance(value, str):
        word = value.strip().lower()
        if word in LEVEL_ALIASES:
            return LEVEL_ALIASES[word]
        if word.isascii() and word.lstrip("+-").isdigit():
            return level_from_number(int(word))
    elif isinstance(value, int) and not isinstance(value, bool):
        return level_from_number(value)
    raise Reject("bad_type", f"field 'level' is {show_value(value)}, not a known log level")


def logs_row(text: str) -> dict[str, Any]:
    """One normalised log record (a JSON object) as a ``LOGS_SCHEMA`` row."""
    obj = load_object(text)
    row: dict[str, Any] = {"ts": _ts(obj), "service": _text(obj, "service")}
    row["level"] = _level(obj.get("level"))
    for key in _LOGS_TEXT[1:]:
        row[key] = _text(obj, key)
    attrs = obj.get("attrs")
    if isinstance(attrs, dict):
        attrs = orjson.dumps(attrs, option=orjson.OPT_SORT_KEYS).decode()
    elif attrs is not None and not isinstance(attrs, str):
        raise Reject("bad_type", f"field 'attrs' is {show_value(attrs)}, expected an object")
    row["attrs"] = attrs
    return row


ROW_PARSERS: Final[dict[Kind, Callable[[str], Mapping[str, Any]]]] = {
    "traffic": traffic_row,
    "logs": logs_row,
}


# -- the fast path ----------------------------------------------------------------------

Mask = npt.NDArray[np.bool_]


def _fast_path(lines: pa.StringArray, kind: Kind) -> tuple[pa.Table, Mask] | None:
    """Rows the vectorised path converts exactly (as a table) and the mask of them;
    None when the whole body must take the row path."""
    ts_type = _ts_json_type(lines[0].as_py())
    if ts_type is None:
        return None
    body = _body_schema(kind)
    # Everything nullable (a missing required field is the row path's to name), ts in
    # the body's type, integers read wide (int16 status is range-checked below).
    json_schema = pa.schema(
        pa.field(f.name, ts_type if f.name == "ts" else _wide(f.type)) for f in body
    )
    table = read_json_lines(lines, json_schema)
    if table is None:
        return None
    micros, ok = _ts_micros(table.column("ts").chunk(0) if table.num_rows else pa.array([]))
    columns: dict[str, pa.Array] = {
        "ts": pa.array(micros, pa.int64()).cast(TS_TYPE),
    }
    col = {name: table.column(name).chunk(0) for name in table.column_names}
    if kind == "traffic":
        status, size, latency = col["status"], col["bytes"], col["latency_ms"]
        ok &= _mask(pc.is_valid(col["client_ip"]))
        ok &= _mask(pc.and_kleene(pc.greater_equal(status, 100), pc.less_equal(status, 599)))
        ok &= _mask(pc.or_kleene(pc.is_null(size), pc.greater_equal(size, 0)))
        finite = pc.and_kleene(pc.is_finite(latency), pc.greater_equal(latency, 0))
        ok &= _mask(pc.or_kleene(pc.is_null(latency), finite))
        safe_status = pc.if_else(pc.is_valid(status), status, 0)
        columns["status"] = pc.if_else(pa.array(ok), safe_status, 0).cast(pa.int16())
        columns["bytes"] = pc.fill_null(size, 0)
    else:
        level = col["level"]
        mapped = pc.take(_ALIAS_VALUES, pc.index_in(pc.ascii_lower(level), _ALIAS_KEYS))
        level = pc.if_else(pc.is_null(level), pa.scalar("info"), mapped)
        ok &= _mask(pc.is_valid(level))
        columns["level"] = pc.fill_null(level, "info")
    arrays = [columns.get(f.name, col.get(f.name)) for f in body]
    events = pa.Table.from_arrays(arrays, schema=body)
    return events.filter(pa.array(ok)), ok


def _wide(t: pa.DataType) -> pa.DataType:
    return pa.int64() if pa.types.is_integer(t) else t


def _mask(values: pa.Array) -> Mask:
    """A boolean Arrow array as numpy, null counting as failed."""
    return np.asarray(pc.fill_null(values, False).to_numpy(zero_copy_only=False), dtype=bool)


def read_json_lines(lines: pa.StringArray, schema: pa.Schema) -> pa.Table | None:
    """Every line as one record of ``schema`` (unknown keys ignored), in one vectorised
    read; None when the body must take the row path: a token pyarrow would read
    leniently (NaN, Inf), a record it refuses (it then refuses the whole body), or a
    whitespace-only or multi-object line (the row count would not match)."""
    buf = joined_lines(lines)
    if any(token in buf for token in LENIENT_TOKENS):
        return None
    try:
        table = pa_json.read_json(
            pa.BufferReader(buf),
            read_options=pa_json.ReadOptions(
                use_threads=len(buf) > (4 << 20), block_size=max(1 << 20, len(buf) + 1)
            ),
            parse_options=pa_json.ParseOptions(
                explicit_schema=schema, unexpected_field_behavior="ignore"
            ),
        ).combine_chunks()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return None
    return table if table.num_rows == len(lines) else None


def joined_lines(lines: pa.StringArray) -> bytes:
    """The lines as one newline-terminated buffer (CRs and rejected lines gone)."""
    joined = pc.binary_join_element_wise(lines, pa.scalar(""), pa.scalar("\n"))
    _, offsets, data = joined.buffers()
    if data is None:
        return b""
    bounds = np.frombuffer(offsets, dtype=np.int32)[joined.offset :][: len(joined) + 1]
    out: bytes = data[int(bounds[0]) : int(bounds[-1])].to_pybytes()
    return out


def _ts_json_type(first: str) -> pa.DataType | None:
    """The type to read ``ts`` as, from the first record (a body mixing strings and
    numbers makes ``pyarrow.json`` fail and takes the row path)."""
    try:
        value = orjson.loads(first).get("ts")
    except (orjson.JSONDecodeError, AttributeError):
        return None
    if isinstance(value, str):
        return pa.string()
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return pa.int64()
    if isinstance(value, float):
        return pa.float64()
    return None


def _body_schema(kind: Kind) -> pa.Schema:
    schema = schema_for(kind)
    for name in ("source", "source_line", "source_offset"):
        schema = schema.remove(schema.get_field_index(name))
    return schema


def _ts_micros(ts: pa.Array) -> tuple[npt.NDArray[np.int64], Mask]:
    """Epoch microseconds of each ``ts`` and whether the fast path computed it exactly."""
    n = len(ts)
    if pa.types.is_string(ts.type):
        good = _mask(pc.match_substring_regex(ts, _RFC3339))
        micros = np.zeros(n, dtype=np.int64)
        if good.any():
            try:
                cast = pc.cast(ts.filter(pa.array(good)), TS_TYPE).cast(pa.int64())
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                return micros, np.zeros(n, dtype=bool)  # e.g. Feb 30: row path says why
            micros[good] = cast.to_numpy()
        return micros, good & (micros >= _MIN_US) & (micros <= _MAX_US)
    valid = _mask(pc.is_valid(ts))
    if pa.types.is_integer(ts.type):
        v = np.asarray(pc.fill_null(ts, 0).to_numpy(), dtype=np.int64)
        good = valid & (v != np.iinfo(np.int64).min)
        size = np.abs(np.where(good, v, 0))
        q, r = np.divmod(v, 1000)  # nanoseconds, rounded half-even like the Decimal path
        ns = q + ((r > 500) | ((r == 500) & (q % 2 == 1)))
        micros = np.select(
            [size < 10**11, size < 10**14, size < 10**17], [v * 1_000_000, v * 1_000, v], ns
        )
    else:
        v = np.asarray(pc.fill_null(ts, 0.0).to_numpy(), dtype=np.float64)
        size = np.abs(v)
        good = valid & np.isfinite(v)
        factor = np.select([size < 1e11, size < 1e14, size < 1e17], [1e6, 1e3, 1.0], 1e-3)
        with np.errstate(invalid="ignore", over="ignore"):
            product = np.where(size < 1e17, v * factor, v / 1000.0)
            rounded = np.rint(product)
            # How far the exact decimal product (Decimal(repr(v)) * scale, the row path)
            # can be from this float product: half an ulp of v, scaled, plus half an ulp
            # of the product. Within that of a tie, only the row path rounds exactly.
            bound = np.spacing(size) / 2 * factor + np.spacing(np.abs(product)) / 2
            good &= (np.abs(product - rounded) + bound < 0.5) & (np.abs(product) < 2.0**53)
        micros = np.where(good, rounded, 0).astype(np.int64)
    good &= (micros >= _MIN_US) & (micros <= _MAX_US)
    return np.where(good, micros, 0), good
