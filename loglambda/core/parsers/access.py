"""Apache/nginx access logs: combined, common and vhost-combined, vectorised.

One RE2 pass (``pyarrow.compute.extract_regex``) splits every line of a block into
fields; every later step is an Arrow kernel over whole columns. Fields are matched
loosely (``\\S+`` for status and size) so a line with status 999 is rejected as
``bad_status`` rather than as an anonymous ``no_match``: the reason a user sees
should name what is actually wrong.

An optional trailing request-time field is understood as nginx's ``$request_time``
when it has a decimal point (seconds, e.g. ``0.123``) and as Apache's ``%D`` when it
is an integer (microseconds). Apache's ``%T`` (whole seconds) is indistinguishable
from ``%D`` and is read as microseconds; use ``%D`` or ``%{ms}T`` in Apache configs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.lines import LineBlock, RawBlock
from loglambda.core.parsers import access_fast
from loglambda.core.parsers.base import Parsed, first_failure, with_provenance
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import TRAFFIC_SCHEMA, Kind

_QUOTED = r'(?:[^"\\]|\\.)*'
_CORE = (
    r"(?P<client_ip>\S+) \S+ \S+ \[(?P<time>[^\]]*)\] "
    rf'"(?P<request>{_QUOTED})" (?P<status>\S+) (?P<bytes>\S+)'
)
_AGENT = rf'(?: "(?P<referrer>{_QUOTED})" "(?P<user_agent>{_QUOTED})"?)?'
_TAIL = r"(?: (?P<request_time>\S+))?\s*$"

PATTERNS: Final[dict[str, str]] = {
    "combined": "^" + _CORE + _AGENT + _TAIL,
    "common": "^" + _CORE + _TAIL,
    # Apache's vhost_combined: "%v:%p %h %l %u %t ..."
    "vcombined": r"^(?P<host>[^\s:]+)(?::\d+)? " + _CORE + _AGENT + _TAIL,
}
_REQUEST = r"^(?P<method>[A-Za-z]+) (?P<target>\S+)(?: (?P<protocol>[A-Za-z]+/[0-9.]+))?$"
_TARGET = r"^(?P<path>[^?]*)(?:\?(?P<query>.*))?$"
TIME_FORMAT: Final = "%d/%b/%Y:%H:%M:%S %z"


_FIELD_NAMES: Final[dict[str, list[str]]] = {
    name: [
        n
        for n in (
            "host",
            "client_ip",
            "time",
            "request",
            "status",
            "bytes",
            "referrer",
            "user_agent",
            "request_time",
        )
        if f"<{n}>" in pattern
    ]
    for name, pattern in PATTERNS.items()
}
# Lines for the CSV fast path: quotes only where the format puts them (opening after a
# space, closing before a space or the end), no backslash (escaped quotes), and no
# whitespace but spaces outside quotes (the regex's \\S would split on it, CSV would
# not). One RE2 DFA pass, no captures. Lines outside this shape take the regex path.
_U = r'[^"\\\s]*(?: [^"\\\s]*)*'  # unquoted: tokens separated by single spaces
_Q = r'[^"\\\r]*'  # inside quotes
_ELIGIBLE: Final[dict[str, str]] = {
    "combined": rf'^{_U} "{_Q}" {_U} "{_Q}" "{_Q}"(?: {_U})?$',
    "common": rf'^{_U} "{_Q}" {_U}$',
    "vcombined": rf'^{_U} "{_Q}" {_U} "{_Q}" "{_Q}"(?: {_U})?$',
}
# Fields the regex matches with \S+ must be non-empty on the fast path too.
_NONEMPTY: Final = ("host", "client_ip", "_ident", "_user", "status", "bytes", "request_time")


def _csv_fields(
    lines: pa.StringArray, fmt: str, names: list[str]
) -> tuple[pa.StructArray, np.ndarray]:
    """Tokenize lines with Arrow's CSV reader (space-delimited, double-quoted).

    Returns the fields of the lines that tokenized into the expected shape, and a
    mask over ``lines`` marking them; the others are left for the regex path.
    """
    import pyarrow.csv as pcsv

    n = len(lines)
    if n == 0:
        return _no_fields(names), np.zeros(0, dtype=bool)
    # One trailing field after the last quote means a request-time column.
    first = lines[0].as_py()
    tail_tokens = first.rsplit('"', 1)[1].split() if '"' in first else []
    has_rt = len(tail_tokens) == (1 if fmt != "common" else 3)
    cols = (["host"] if fmt == "vcombined" else []) + [
        "client_ip",
        "_ident",
        "_user",
        "_t1",
        "_t2",
        "request",
        "status",
        "bytes",
    ]
    if fmt != "common":
        cols += ["referrer", "user_agent"]
    if has_rt:
        cols.append("request_time")
    text = pc.binary_join_element_wise(lines, pa.scalar(""), "\n")
    offsets = text.buffers()[1]
    start = int(np.frombuffer(offsets, dtype=np.int32, count=1, offset=text.offset * 4)[0])
    data = text.buffers()[2][start:]
    skipped: list[int] = []

    def on_invalid(row: pcsv.InvalidRow) -> str:
        skipped.append(row.number - 1 if row.number is not None else -1)
        return "skip"

    table = pcsv.read_csv(
        pa.BufferReader(data),
        read_options=pcsv.ReadOptions(column_names=cols, use_threads=False, block_size=16 << 20),
        parse_options=pcsv.ParseOptions(
            delimiter=" ",
            quote_char='"',
            escape_char=False,
            newlines_in_values=False,
            ignore_empty_lines=False,
            invalid_row_handler=on_invalid,
        ),
        convert_options=pcsv.ConvertOptions(
            column_types=dict.fromkeys(cols, pa.string()),
            strings_can_be_null=False,
            quoted_strings_can_be_null=False,
        ),
    )
    ok = np.ones(n, dtype=bool)
    if -1 in skipped or table.num_rows != n - len(skipped):
        # Row numbers unknown, or the tokenizer joined lines: trust nothing from it.
        return _no_fields(names), np.zeros(n, dtype=bool)
    if skipped:
        ok[np.array(skipped)] = False
    cols_ = {c: table[c].combine_chunks() for c in cols}
    t1, t2 = cols_["_t1"], cols_["_t2"]
    # "[10/Oct/2000:13:55:36" "-0700]": exactly what the regex's \[([^\]]*)\] takes.
    valid = pc.and_kleene(
        pc.match_substring_regex(t1, r"^\[[^\]]*$"), pc.match_substring_regex(t2, r"^[^\]]*\]$")
    )
    for c in _NONEMPTY:
        if c in cols_:
            valid = pc.and_kleene(valid, pc.not_equal(cols_[c], ""))
    if "host" in cols_:  # vhost_combined writes %v:%p; the port is not part of the host
        valid = pc.and_kleene(
            valid, pc.match_substring_regex(cols_["host"], r"^[^:]+(?::[0-9]+)?$")
        )
        cols_["host"] = pc.replace_substring_regex(cols_["host"], r":[0-9]+$", "")
    fields = {
        "time": pc.binary_join_element_wise(
            pc.utf8_slice_codeunits(t1, 1), pc.utf8_slice_codeunits(t2, 0, -1), " "
        ),
        "request_time": cols_["request_time"]
        if has_rt
        else pa.array([""] * table.num_rows, pa.string()),
    }
    for name in names:
        if name not in fields:
            fields[name] = cols_[name]
    out = pa.StructArray.from_arrays([fields[n_] for n_ in names], names)
    valid_np = valid.to_numpy(zero_copy_only=False)
    ok[np.flatnonzero(ok)[~valid_np]] = False
    return out.filter(valid), ok


def _no_fields(names: list[str]) -> pa.StructArray:
    return pa.StructArray.from_arrays([pa.array([], pa.string())] * len(names), names)


def _per_distinct(values: pa.Array, fn: Callable[[pa.Array], pa.Array]) -> pa.Array:
    """``fn`` applied to each distinct value once, spread back over the rows.

    Log fields repeat heavily within a block (a few thousand distinct timestamps and
    requests per 36k lines), and hashing a string is far cheaper than strptime or a
    regex with captures on it.
    """
    encoded = pc.dictionary_encode(values)
    return pc.take(fn(encoded.dictionary), encoded.indices)


def _split_request(request: pa.Array) -> pa.StructArray:
    """``METHOD target PROTO`` into method, path, query and protocol.

    A request line of another shape (scanners send raw bytes) is still a request the
    server answered: it is kept, with the raw text as the path.
    """
    req = pc.extract_regex(request, _REQUEST)
    req_ok = pc.is_valid(req)
    no_text = pa.scalar(None, pa.string())
    target = pc.if_else(req_ok, req.field("target"), request)
    tq = pc.extract_regex(target, _TARGET)
    has_query = pc.greater_equal(pc.find_substring(target, "?"), 0)
    return pa.StructArray.from_arrays(
        [
            pc.if_else(req_ok, req.field("method"), no_text),
            tq.field("path"),
            pc.if_else(has_query, tq.field("query"), no_text),
            _null_if(pc.if_else(req_ok, req.field("protocol"), no_text), ""),
        ],
        ["method", "path", "query", "protocol"],
    )


def _null_if(arr: pa.Array, *values: str) -> pa.Array:
    is_placeholder = pc.is_in(arr, value_set=pa.array(values, pa.string()))
    return pc.if_else(is_placeholder, pa.scalar(None, pa.string()), arr)


@dataclass(frozen=True)
class AccessLogParser:
    """Parser for one access-log variant (see ``PATTERNS``)."""

    name: str
    kind: Kind = "traffic"

    def parse(self, block: LineBlock) -> Parsed:
        rejects = RejectBuilder(block.source)
        rejects.extend(block.rejects)
        if len(block) == 0:
            return Parsed(self.kind, TRAFFIC_SCHEMA.empty_table(), rejects)
        f = self._fields(block.lines)
        matched = pc.is_valid(f)
        reason: pa.Array = pa.nulls(len(block), pa.string())
        reason = first_failure(reason, pc.invert(matched), "no_match")
        # Unmatched rows have null fields; give them placeholders so kernels stay total.
        f = pc.if_else(matched, f, pa.scalar(None, f.type))

        ts = _per_distinct(
            f.field("time"),
            lambda u: pc.strptime(u, format=TIME_FORMAT, unit="us", error_is_null=True),
        )
        reason = first_failure(reason, pc.is_null(ts), "bad_timestamp")

        status_s = f.field("status")
        status_ok = pc.match_substring_regex(status_s, r"^[0-9]{3}$")
        status = pc.cast(pc.if_else(status_ok, status_s, "0"), pa.int16())
        in_range = pc.and_kleene(pc.greater_equal(status, 100), pc.less_equal(status, 599))
        reason = first_failure(reason, pc.invert(pc.and_kleene(status_ok, in_range)), "bad_status")

        bytes_s = pc.if_else(pc.equal(f.field("bytes"), "-"), "0", f.field("bytes"))
        bytes_ok = pc.match_substring_regex(bytes_s, r"^[0-9]{1,18}$")
        nbytes = pc.cast(pc.if_else(bytes_ok, bytes_s, "0"), pa.int64())
        reason = first_failure(reason, pc.invert(bytes_ok), "bad_bytes")

        latency = self._latency(f.field("request_time"))
        has_rt = pc.not_equal(pc.fill_null(f.field("request_time"), ""), "")
        bad_rt = pc.and_kleene(has_rt, pc.or_kleene(pc.is_null(latency), pc.less(latency, 0.0)))
        reason = first_failure(reason, bad_rt, "bad_latency")

        req = _per_distinct(pc.fill_null(f.field("request"), ""), _split_request)
        names = set(_FIELD_NAMES[self.name])

        def text(name: str, *placeholders: str) -> pa.Array:
            if name not in names:
                return pa.nulls(len(block), pa.string())
            return _null_if(f.field(name), *placeholders)

        no_text = pa.scalar(None, pa.string())
        events = pa.table(
            {
                "ts": ts,
                "host": text("host", "", "-"),
                "client_ip": f.field("client_ip"),
                "method": req.field("method"),
                "path": pc.if_else(matched, req.field("path"), no_text),
                "query": req.field("query"),
                "protocol": req.field("protocol"),
                "status": status,
                "bytes": nbytes,
                "latency_ms": pc.if_else(has_rt, latency, pa.scalar(None, pa.float64())),
                "referrer": text("referrer", "", "-"),
                "user_agent": text("user_agent", ""),
            }
        )
        ok = pc.is_null(reason)
        if pc.all(ok).as_py():
            return Parsed(self.kind, self._finish(events, block, None), rejects)
        self._reject(block, reason, f, rejects)
        keep = pa.array(np.flatnonzero(ok.to_numpy(zero_copy_only=False)))
        return Parsed(self.kind, self._finish(events.take(keep), block, keep), rejects)

    def parse_raw(self, raw: RawBlock) -> Parsed:
        """``parse(raw.split())``, but well-formed lines go through the native scanner.

        Lines the scanner leaves alone take the reference path, so the result is the
        same either way (tests/unit/test_access_fast.py); only the speed differs.
        """
        scanned = access_fast.scan(raw, self.name)
        if scanned is None:
            return self.parse(raw.split())
        if scanned.slow.read == 0:
            return Parsed(self.kind, scanned.events, RejectBuilder(raw.source))
        rest = self.parse(scanned.slow)
        if rest.events.num_rows == 0:
            return Parsed(self.kind, scanned.events, rest.rejects)
        both = pa.concat_tables([scanned.events, rest.events])
        order = np.argsort(both.column("source_line").to_numpy(), kind="stable")
        return Parsed(self.kind, both.take(pa.array(order)), rest.rejects)

    def _fields(self, lines: pa.StringArray) -> pa.StructArray:
        """Split lines into raw text fields: null where the line does not match.

        Well-formed lines (the expected number of quotes, no backslash escapes) go
        through Arrow's multithreaded CSV tokenizer, ~5x faster than RE2 with captures;
        the rest through the regex. Both produce the same fields for the same line
        (tested), so which path a line takes never changes the result.
        """
        names = _FIELD_NAMES[self.name]
        eligible = pc.match_substring_regex(lines, _ELIGIBLE[self.name])
        fast_idx = np.flatnonzero(eligible.to_numpy(zero_copy_only=False))
        fast, fast_ok = _csv_fields(lines.take(pa.array(fast_idx)), self.name, names)
        fast_idx = fast_idx[fast_ok]  # ``fast`` holds only the rows that tokenized
        slow_mask = np.ones(len(lines), dtype=bool)
        slow_mask[fast_idx] = False
        slow_idx = np.flatnonzero(slow_mask)
        if len(slow_idx) == 0:
            return fast
        slow = pc.extract_regex(lines.take(pa.array(slow_idx)), PATTERNS[self.name])
        merged = pa.concat_arrays([fast.cast(slow.type), slow])
        order = np.argsort(np.concatenate([fast_idx, slow_idx]), kind="stable")
        return merged.take(pa.array(order))

    @staticmethod
    def _latency(rt: pa.Array) -> pa.Array:
        rt = pc.fill_null(rt, "")
        is_seconds = pc.match_substring_regex(rt, r"^-?[0-9]+\.[0-9]+$")
        is_micros = pc.match_substring_regex(rt, r"^-?[0-9]{1,15}$")
        numeric = pc.or_kleene(is_seconds, is_micros)
        value = pc.cast(pc.if_else(numeric, rt, "0"), pa.float64())
        ms = pc.if_else(is_seconds, pc.multiply(value, 1000.0), pc.divide(value, 1000.0))
        return pc.if_else(numeric, ms, pa.scalar(None, pa.float64()))

    def _finish(self, events: pa.Table, block: LineBlock, rows: pa.Array | None) -> pa.Table:
        return with_provenance(events, block, rows).cast(TRAFFIC_SCHEMA)

    def _reject(
        self, block: LineBlock, reason: pa.Array, f: pa.StructArray, rejects: RejectBuilder
    ) -> None:
        bad = np.flatnonzero(pc.is_valid(reason).to_numpy(zero_copy_only=False)).tolist()
        reasons = reason.to_pylist()
        lines = block.lines.to_pylist()
        for i in bad:
            code = reasons[i]
            rejects.add(
                line=block.line_no[i].as_py(),
                offset=block.offset[i].as_py(),
                reason=code,
                detail=_detail(code, f[i].as_py() or {}, self.name),
                raw=lines[i],
            )


def _detail(code: str, fields: dict[str, str], fmt: str) -> str:
    if code == "no_match":
        return f"not a {fmt} access-log line"
    if code == "bad_timestamp":
        return f"timestamp {fields.get('time')!r} is not like 10/Oct/2000:13:55:36 -0700"
    if code == "bad_status":
        return f"status {fields.get('status')!r} is not an HTTP status 100-599"
    if code == "bad_bytes":
        return f"response size {fields.get('bytes')!r} is not a non-negative integer"
    if code == "bad_latency":
        return f"request time {fields.get('request_time')!r} is not a non-negative number"
    return code


COMBINED: Final = AccessLogParser("combined")
COMMON: Final = AccessLogParser("common")
VCOMBINED: Final = AccessLogParser("vcombined")
