"""Derived dimensions and predicates: named expressions that every engine compiles.

Why a registry instead of SQL in the catalog: a view names ``route`` or ``not_4xx``,
never SQL text, so the DuckDB engine, the Spark engine and the Beam pipeline each
compile one definition, and the conformance test holds them to it. Each entry says
what it reads (``inputs``), what it yields (an Arrow type) and how each SQL dialect
computes it; a boolean entry is a predicate (a measure ``filter`` or a view ``where``).

Why ``inputs`` are more than documentation: a derived value is a pure function of its
inputs, so an engine may compute it once per *distinct* input instead of once per
event. Entries marked ``per_distinct`` are costly per row (regexes, URL decoding, a
user-agent parse); the DuckDB engine groups by their inputs first and derives after.

The GoAccess-facing definitions follow GoAccess 1.7 (``parser.c``), measured against
the installed binary: see ``docs/goaccess-parity.md``.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Final

import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.schemas import TS_TYPE, Kind

# GoAccess 1.7's shipped goaccess.conf (the list a packaged GoAccess uses). Matched
# case-insensitively against the end of the URL-decoded request, query string included.
GOACCESS_STATIC_EXTENSIONS: Final[tuple[str, ...]] = (
    ".css", ".js", ".jpg", ".png", ".gif", ".ico", ".jpeg", ".pdf", ".csv", ".mpeg",
    ".mpg", ".swf", ".woff", ".woff2", ".xls", ".xlsx", ".doc", ".docx", ".ppt", ".pptx",
    ".txt", ".zip", ".ogg", ".mp3", ".mp4", ".exe", ".iso", ".gz", ".rar", ".svg", ".bmp",
    ".tar", ".tgz", ".tiff", ".tif", ".ttf", ".flv", ".dmg", ".xz", ".zst",
)  # fmt: skip

# A URL path segment that is an id, not a route: folded so /users/42 and /users/43 are
# one route. Whole segments only; digits win over hex (so "1234" is :id, not :hash).
ROUTE_FOLDS: Final[tuple[tuple[str, str], ...]] = (
    ("[0-9]+", ":id"),
    ("[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}", ":uuid"),
    ("[0-9a-fA-F]{16,}", ":hash"),
)


@dataclass(frozen=True)
class DerivedSettings:
    """Choices a derived definition depends on (defaults: GoAccess 1.7's)."""

    static_extensions: tuple[str, ...] = GOACCESS_STATIC_EXTENSIONS
    # GoAccess --all-static-files: "/app.js?v=3" is static too (match before the '?').
    all_static_files: bool = False

    def __post_init__(self) -> None:
        bad = [e for e in self.static_extensions if not re.fullmatch(r"\.[A-Za-z0-9]+", e)]
        if bad or not self.static_extensions:
            raise ValueError(f"static extensions must look like '.css', got {bad or '()'}")


Ref = Callable[[str], str]  # SQL of an input (column or other derived), parenthesised
SqlFn = Callable[[Ref, DerivedSettings], str]


@dataclass(frozen=True)
class Derived:
    """One derived dimension or predicate of a record kind."""

    name: str
    kind: Kind
    type: pa.DataType
    inputs: tuple[str, ...]
    description: str
    sql: Mapping[str, SqlFn] = field(default_factory=dict)
    # Name of a lookup table keyed by the single input (values computed outside SQL).
    lookup: str | None = None
    per_distinct: bool = False

    @property
    def is_predicate(self) -> bool:
        return bool(pa.types.is_boolean(self.type))


def lit(text: str) -> str:
    """A SQL string literal (standard SQL quoting; backslashes are not escapes)."""
    return "'" + text.replace("'", "''") + "'"


def static_regex(settings: DerivedSettings) -> str:
    """RE2 pattern of a static request: one of the extensions at the end."""
    exts = sorted({e[1:].lower() for e in settings.static_extensions})
    return r"\.(?:" + "|".join(exts) + ")$"


def _route_duckdb(ref: Ref, _: DerivedSettings) -> str:
    cases = " ".join(
        f"WHEN regexp_full_match(s, {lit(pattern)}) THEN {lit(token)}"
        for pattern, token in ROUTE_FOLDS
    )
    return (
        f"array_to_string(list_transform(string_split({ref('path')}, '/'), "
        f"lambda s: CASE {cases} ELSE s END), '/')"
    )


def _request_duckdb(ref: Ref, _: DerivedSettings) -> str:
    # GoAccess decodes %XX (not '+') and trims whitespace; a decode that would not be
    # valid UTF-8 keeps the raw text (GoAccess would emit the raw bytes).
    path, query = ref("path"), ref("query")
    raw = f"(CASE WHEN {query} IS NULL THEN {path} ELSE {path} || '?' || {query} END)"
    blanks = "' ' || chr(9) || chr(10) || chr(11) || chr(12) || chr(13)"
    decoded = f"coalesce(nullif(trim(coalesce(TRY(url_decode({raw})), {raw}), {blanks}), ''), '-')"
    return f"CASE WHEN strpos({raw}, '%') > 0 THEN {decoded} ELSE {raw} END"


def _is_static_duckdb(ref: Ref, settings: DerivedSettings) -> str:
    target = ref("request")
    if settings.all_static_files:
        target = f"split_part({target}, '?', 1)"
    return f"coalesce(regexp_matches({target}, {lit(static_regex(settings))}, 'i'), false)"


def _status(expr: str) -> SqlFn:
    return lambda ref, _: expr.format(status=ref("status"))


def _d(
    name: str,
    kind: Kind,
    typ: pa.DataType,
    inputs: tuple[str, ...],
    description: str,
    duckdb: SqlFn | None = None,
    *,
    lookup: str | None = None,
    per_distinct: bool = False,
) -> Derived:
    sql = {"duckdb": duckdb} if duckdb is not None else {}
    return Derived(name, kind, typ, inputs, description, sql, lookup, per_distinct)


_TRAFFIC: Final[tuple[Derived, ...]] = (
    _d("status_class", "traffic", pa.string(), ("status",), "'2xx' … '5xx'",
       _status("CAST({status} // 100 AS VARCHAR) || 'xx'")),
    _d("route", "traffic", pa.string(), ("path",),
       "path with numeric, UUID and long hex segments folded to :id, :uuid, :hash",
       _route_duckdb, per_distinct=True),
    _d("request", "traffic", pa.string(), ("path", "query"),
       "GoAccess's request: path?query, %XX-decoded, trimmed",
       _request_duckdb, per_distinct=True),
    _d("is_static", "traffic", pa.bool_(), ("request",),
       "request ends with a static-file extension (GoAccess's rule and list)",
       _is_static_duckdb, per_distinct=True),
    _d("referrer_host", "traffic", pa.string(), ("referrer",),
       "GoAccess's referring site: after the first '//' up to the next '/'",
       lambda ref, _: f"nullif(regexp_extract({ref('referrer')}, '//([^/]*)', 1), '')",
       per_distinct=True),
    _d("browser", "traffic", pa.string(), ("user_agent",),
       "browser family (ua-parser); 'Other' when unknown", lookup="ua", per_distinct=True),
    _d("os", "traffic", pa.string(), ("user_agent",),
       "operating-system family (ua-parser); 'Other' when unknown",
       lookup="ua", per_distinct=True),
    # GoAccess's visitor: client IP + date + user agent (blanks removed, '-' if none).
    # This exact text is what HLL sketches hash, on every engine.
    _d("visitor", "traffic", pa.string(), ("client_ip", "date", "user_agent"),
       "unique-visitor key 'ip|YYYY-MM-DD|agent-without-spaces'",
       lambda ref, _: (
           f"{ref('client_ip')} || '|' || strftime({ref('date')}, '%Y-%m-%d') || '|' || "
           f"replace(coalesce({ref('user_agent')}, '-'), ' ', '')"
       ), per_distinct=True),
    # Sums of floats depend on addition order (parallel engines differ in the last bit);
    # whole microseconds add exactly, so a latency total merges exactly everywhere.
    _d("latency_us", "traffic", pa.int64(), ("latency_ms",), "latency in whole µs",
       lambda ref, _: f"CAST(round({ref('latency_ms')} * 1000) AS BIGINT)"),
    _d("is_5xx", "traffic", pa.bool_(), ("status",), "server error",
       _status("{status} >= 500")),
    _d("is_4xx", "traffic", pa.bool_(), ("status",), "client error",
       _status("{status} BETWEEN 400 AND 499")),
    _d("not_4xx", "traffic", pa.bool_(), ("status",),
       "not a client error (GoAccess counts visitors only for these by default)",
       _status("{status} NOT BETWEEN 400 AND 499")),
    _d("is_404", "traffic", pa.bool_(), ("status",), "not found", _status("{status} = 404")),
    _d("not_404", "traffic", pa.bool_(), ("status",), "anything but not found",
       _status("{status} <> 404")),
    _d("has_referrer", "traffic", pa.bool_(), ("referrer",), "a referrer was sent",
       lambda ref, _: f"{ref('referrer')} IS NOT NULL"),
    _d("has_referrer_host", "traffic", pa.bool_(), ("referrer_host",),
       "the referrer names a site", lambda ref, _: f"{ref('referrer_host')} IS NOT NULL"),
)  # fmt: skip


def _time_buckets(kind: Kind) -> tuple[Derived, ...]:
    ts = "ts"
    return (
        _d("date", kind, pa.date32(), (ts,), "UTC calendar date",
           lambda ref, _: f"CAST({ref(ts)} AS DATE)"),
        _d("hour", kind, TS_TYPE, (ts,), "start of the UTC hour",
           lambda ref, _: f"date_trunc('hour', {ref(ts)})"),
        _d("minute", kind, TS_TYPE, (ts,), "start of the minute",
           lambda ref, _: f"date_trunc('minute', {ref(ts)})"),
        _d("hour_of_day", kind, pa.int8(), (ts,), "0-23, UTC (GoAccess's visit time)",
           lambda ref, _: f"CAST(hour({ref(ts)}) AS TINYINT)"),
    )  # fmt: skip


_LOGS: Final[tuple[Derived, ...]] = (
    _d("is_error", "logs", pa.bool_(), ("level",), "level error or fatal",
       lambda ref, _: f"{ref('level')} IN ('error', 'fatal')"),
)  # fmt: skip


def _registry(entries: Iterable[Derived]) -> dict[tuple[Kind, str], Derived]:
    out: dict[tuple[Kind, str], Derived] = {}
    for d in entries:
        if (d.kind, d.name) in out:
            raise ValueError(f"derived {d.name!r} defined twice for {d.kind}")
        out[(d.kind, d.name)] = d
    return out


DERIVED: Final[dict[tuple[Kind, str], Derived]] = _registry(
    (*_TRAFFIC, *_time_buckets("traffic"), *_LOGS, *_time_buckets("logs"))
)


def derived(kind: Kind, name: str) -> Derived | None:
    """The derived entry called ``name`` for ``kind``, or None (then it is a column)."""
    return DERIVED.get((kind, name))


# ----------------------------------------------------------------------------------
# The user-agent lookup: ua-parser runs once per distinct agent, never per event.

UA_LOOKUP_SCHEMA: Final = pa.schema(
    [("user_agent", pa.string()), ("browser", pa.string()), ("os", pa.string())]
)
_UA_CACHE: dict[str, tuple[str, str]] = {}
_UA_CACHE_LIMIT: Final = 500_000


def _parse_agent(agent: str) -> tuple[str, str]:
    from ua_parser import Domain, parser

    result = parser(agent, Domain.USER_AGENT | Domain.OS)
    browser = result.user_agent.family if result.user_agent else "Other"
    os_ = result.os.family if result.os else "Other"
    return browser, os_


def ua_lookup(agents: pa.Array | pa.ChunkedArray) -> pa.Table:
    """Browser and OS family of each distinct non-null agent (``UA_LOOKUP_SCHEMA``).

    Parsed agents are cached for the process: batch runs see the same few thousand
    agents again and again, and ua-parser's pure-Python matcher costs ~0.3 ms each.
    """
    distinct = pc.unique(agents.drop_null()).to_pylist()
    missing = [a for a in distinct if a not in _UA_CACHE]
    if len(_UA_CACHE) + len(missing) > _UA_CACHE_LIMIT:
        _UA_CACHE.clear()
        missing = distinct
    for agent in missing:
        _UA_CACHE[agent] = _parse_agent(agent)
    parsed = [_UA_CACHE[a] for a in distinct]
    return pa.table(
        [
            pa.array(distinct, pa.string()),
            pa.array([b for b, _ in parsed], pa.string()),
            pa.array([o for _, o in parsed], pa.string()),
        ],
        schema=UA_LOOKUP_SCHEMA,
    )


LOOKUPS: Final[dict[str, tuple[pa.Schema, Callable[[pa.Array | pa.ChunkedArray], pa.Table]]]] = {
    "ua": (UA_LOOKUP_SCHEMA, ua_lookup),
}
