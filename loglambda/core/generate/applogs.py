"""Generate JSON-lines application logs as winston, pino and structlog write them.

Each service logs through one library, so one file mixes three record shapes (level as
a word or a pino number; ``message``, ``msg`` or ``event``; ISO or epoch-millisecond
time), which is what the ``json`` parser must normalise. Messages come from templates
with variable parts, so grouping by template is meaningful; errors cluster in the same
incident windows as the traffic generator's 5xx bursts (same seed and period, same
windows); trace ids appear on request-scoped records, shared by consecutive records.

Speed follows the traffic recipe: every column is an array, each template slot is
filled in bulk per variable type, and Arrow kernels assemble the lines.
"""

from __future__ import annotations

import json
import re
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.generate import site as site
from loglambda.core.generate.applog_text import (
    ERROR,
    LEVEL_NAMES,
    STACKS,
    TEMPLATES,
    WARN,
    VarTable,
    build_vars,
    escaped,
    service_profile,
)
from loglambda.core.generate.common import (
    DEFAULT_START,
    F64,
    I64,
    STREAM_VOCAB,
    Bools,
    Incident,
    Timeline,
    choose,
    day_strings,
    displace,
    epoch_us,
    grouped_cdf,
    hex_strings,
    incidents_for,
    int_strings,
    iso_day,
    join,
    pad_digits,
    rng_for,
    sample_grouped,
    severity_at,
    strings,
    take,
    time_of_day,
)
from loglambda.core.generate.output import (
    GenerateReport,
    MalformedSpec,
    garbage_text,
    generate_file,
    invalid_utf8,
    smuggle_latin1,
)

Style = Literal["winston", "pino", "structlog"]
STYLES: Final[tuple[Style, ...]] = ("winston", "pino", "structlog")
STREAM_APPLOGS: Final = 20
SLOTS: Final = 4  # most variable parts in one template
_SLOT: Final = re.compile(r"\{(\w+)\}")

# fmt: off
MALFORMED_KINDS: Final = ("truncated", "garbage", "invalid_utf8", "blank", "bad_timestamp",
                          "not_object")
_MALFORMED_WEIGHTS: Final = (0.3, 0.2, 0.12, 0.08, 0.15, 0.15)
# What really ends up between JSON records: stack lines, npm chatter, the OOM killer.
_STRAY_LINES: Final = ("    at processTicksAndRejections (node:internal/process/task_queues:95:5)",
                       "Traceback (most recent call last):",
                       "npm WARN config production Use `--omit=dev` instead.", "Killed")
_BAD_TIMES: Final = {"time": ("soon", "2026-11-01 25:61", "NaN"),
                     "timestamp": ("not-a-time", "", "yesterday 10:00")}
_NOT_OBJECTS: Final = ('["info","user logged in"]', '"plain string"', "42", "null")
# fmt: on
_JS_STACKS: Final = escaped(STACKS["js"])
_PY_STACKS: Final = escaped(STACKS["py"])
# pino serialises an Error as {type, message, stack}: both come from the stack's first line.
_JS_HEAD: Final = [s.split("\\n", 1)[0].split(": ", 1) for s in _JS_STACKS.to_pylist()]
_JS_TYPES: Final = strings([h[0] for h in _JS_HEAD])
_JS_MESSAGES: Final = strings([h[-1] for h in _JS_HEAD])


@dataclass(frozen=True)
class AppLogSpec:
    """What to generate; service ``i`` logs in style ``styles[i % len(styles)]``."""

    lines: int
    seed: int = 42
    start: datetime = DEFAULT_START
    days: float = 1.0
    services: tuple[str, ...] = ("api", "auth", "billing", "search", "worker")
    styles: tuple[Style, ...] = STYLES
    malformed_share: float = 0.001
    late_share: float = 0.001
    jitter_share: float = 0.01
    trace_share: float = 0.6  # of request-scoped records; background workers rarely trace

    def __post_init__(self) -> None:
        if self.lines < 0 or self.seed < 0:
            raise ValueError("lines and seed must be non-negative")
        if not self.days > 0:
            raise ValueError(f"days must be positive, got {self.days}")
        if not self.services or any(not s or '"' in s or "\\" in s for s in self.services):
            raise ValueError(f"services must be non-empty names, got {self.services!r}")
        if not self.styles or any(s not in STYLES for s in self.styles):
            raise ValueError(f"styles must be drawn from {STYLES}, got {self.styles!r}")
        for name in ("malformed_share", "late_share", "jitter_share", "trace_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")


@dataclass(frozen=True)
class _Templates:
    """Templates as arrays: literal pieces around up to ``SLOTS`` variable slots."""

    literals: pa.StringArray  # piece k of template t at t * (SLOTS + 1) + k
    slots: I64  # (templates, SLOTS) variable type ids, 0 = unused
    cdf: F64  # grouped by service * 5 + level
    items: I64


def _applies(owner: str | None, service: str) -> bool:
    """None: every service; "http": every request-serving one; else that service only."""
    return owner is None or owner == service or (owner == "http" and service != "worker")


def _templates(services: tuple[str, ...], names: tuple[str, ...]) -> _Templates:
    literals: list[str] = []
    slots: list[list[int]] = []
    for *_, text in TEMPLATES:
        parts = _SLOT.split(text)  # literal, name, literal, name, ..., literal
        literals += parts[0::2] + [""] * (SLOTS + 1 - len(parts[0::2]))
        slots.append([1 + names.index(x) for x in parts[1::2]] + [0] * (SLOTS - len(parts[1::2])))
    weights, items = [], []
    for service in services:
        for level in range(5):
            mine = [i for i, t in enumerate(TEMPLATES) if t[1] == level and _applies(t[0], service)]
            weights.append(np.array([TEMPLATES[i][2] for i in mine], dtype=np.float64))
            items.append(np.array(mine, dtype=np.int64))
    return _Templates(
        escaped(literals), np.array(slots, dtype=np.int64), grouped_cdf(weights),
        np.concatenate(items),
    )  # fmt: skip


@dataclass(frozen=True)
class _World:
    spec: AppLogSpec
    timeline: Timeline
    incidents: tuple[Incident, ...]
    templates: _Templates
    vars: VarTable
    volume_cdf: F64
    level_probs: F64  # (services, 5)
    affected: F64  # how strongly each service feels an incident
    scoped: Bools  # request-scoped services carry trace ids
    style: I64  # per service, index into STYLES
    names: pa.StringArray  # service names
    loggers: pa.StringArray  # service * 3 + k
    hostnames: pa.StringArray  # service * 3 + replica
    pids: pa.StringArray  # service * 3 + replica


def _world(spec: AppLogSpec) -> _World:
    rng = rng_for(spec.seed, STREAM_APPLOGS, STREAM_VOCAB)
    start, span = epoch_us(spec.start), round(spec.days * 86_400e6)
    incidents = incidents_for(spec.seed, start, span)
    timeline = Timeline(
        seed=spec.seed, stream=STREAM_APPLOGS, start_us=start, span_us=span,
        lines=spec.lines, human_share=0.7, incidents=incidents,
    )  # fmt: skip
    n = len(spec.services)
    profiles = [service_profile(s) for s in spec.services]
    volume = np.array([p[0] for p in profiles])
    var_table = build_vars(
        rng, [site.random_ip(rng) for _ in range(2000)], site.search_phrases(rng, 300)
    )
    replicas = [
        f"{s}-{rng.bytes(4).hex()[:7]}-{rng.bytes(3).hex()[:5]}"
        for s in spec.services
        for _ in range(3)
    ]
    # Containerised processes run with small, distinct pids.
    pids = (1 + rng.permutation(max(64, 3 * n))[: 3 * n]).tolist()
    return _World(
        spec=spec, timeline=timeline, incidents=incidents,
        templates=_templates(spec.services, var_table.names), vars=var_table,
        volume_cdf=np.cumsum(volume) / volume.sum(),
        level_probs=np.array([p[1] for p in profiles]),
        affected=np.array([0.3 if s == "worker" else 1.0 for s in spec.services]),
        scoped=np.array([s != "worker" for s in spec.services]),
        style=np.array([STYLES.index(spec.styles[i % len(spec.styles)]) for i in range(n)]),
        names=escaped(spec.services), loggers=escaped([g for p in profiles for g in p[2]]),
        hostnames=escaped(replicas), pids=strings([str(p) for p in pids]),
    )  # fmt: skip


def _scatter(n: int, pieces: list[tuple[I64, pa.Array]]) -> pa.Array:
    """Reassemble per-group arrays into row order; the groups partition rows 0..n-1."""
    rows = np.concatenate([idx for idx, _ in pieces]) if pieces else np.zeros(0, np.int64)
    assert len(rows) == n
    values = pa.concat_arrays([arr for _, arr in pieces]) if pieces else strings([])
    return values.take(pa.array(np.argsort(rows, kind="stable")))


def _messages(w: _World, tmpl: I64, rng: np.random.Generator) -> pa.Array:
    """Fill every template slot in bulk: one generator call per variable type per slot."""
    n, width = len(tmpl), SLOTS + 1
    parts: list[pa.Array | str] = [take(w.templates.literals, tmpl * width)]
    for slot in range(SLOTS):
        kinds = w.templates.slots[tmpl, slot]
        filled = []
        for k in np.unique(kinds).tolist():
            rows = np.flatnonzero(kinds == k)
            gen = w.vars.gens[k - 1] if k else None
            values = gen(rng, len(rows)) if gen else take(strings([""]), np.zeros_like(rows))
            filled.append((rows, values))
        parts += [_scatter(n, filled), take(w.templates.literals, tmpl * width + slot + 1)]
    return join(*parts)


@dataclass(frozen=True)
class _Columns:
    ts: I64  # as shown, after jitter and lateness
    svc: I64
    level: I64
    message: pa.Array
    traced: Bools
    trace_id: pa.Array  # meaningful where ``traced``
    span_id: pa.Array
    failed: Bools  # carries a stack trace
    stack: I64
    replica: I64
    logger: I64


def _columns(w: _World, first: int, stop: int, rng: np.random.Generator) -> _Columns:
    n, spec = stop - first, w.spec
    true_ts = w.timeline.timestamps(first, stop, rng)
    svc = np.searchsorted(w.volume_cdf, rng.random(n) * w.volume_cdf[-1], side="right")
    # Incidents turn request-path services into error fountains: errors and warnings
    # rise with severity, in the same windows as the traffic generator's 5xx bursts.
    sev = severity_at(w.incidents, true_ts) * w.affected[svc]
    probs = w.level_probs[svc]
    probs[:, ERROR] += 1.5 * sev
    probs[:, WARN] += 0.5 * sev
    cum = np.cumsum(probs, axis=1)
    level = ((rng.random(n) * cum[:, -1])[:, None] >= cum[:, :-1]).sum(axis=1).astype(np.int64)
    tmpl = w.templates.items[sample_grouped(w.templates.cdf, svc * 5 + level, rng)]
    traced = rng.random(n) < np.where(w.scoped[svc], spec.trace_share, 0.1 * spec.trace_share)
    # Consecutive records often belong to one request, so they share its trace id.
    new_trace = rng.random(n) < 0.6
    new_trace[:1] = True
    trace_no = np.cumsum(new_trace) - 1
    return _Columns(
        ts=displace(true_ts, rng, jitter_share=spec.jitter_share, late_share=spec.late_share,
                    floor_us=w.timeline.start_us),
        svc=svc.astype(np.int64), level=level, message=_messages(w, tmpl, rng), traced=traced,
        trace_id=take(hex_strings(rng, int(trace_no[-1]) + 1 if n else 0, 16), trace_no),
        span_id=hex_strings(rng, n, 8), failed=(level >= ERROR) & (rng.random(n) < 0.5),
        stack=rng.integers(0, 3, n), replica=svc * 3 + rng.integers(0, 3, n),
        logger=svc * 3 + choose(rng, n, (0.6, 0.25, 0.15)),
    )  # fmt: skip


def _iso(ts: I64, micro: bool) -> pa.Array:
    """'2026-11-01T13:45:12.345Z' (winston) or with microseconds (structlog)."""
    sec = ts // 1_000_000
    frac = [take(pad_digits(3), (ts // 1000) % 1000)]
    if micro:
        frac.append(take(pad_digits(3), ts % 1000))
    day, tod = day_strings(sec // 86_400, iso_day), take(time_of_day(), sec % 86_400)
    return join(day, "T", tod, ".", *frac, "Z")


def _optional(mask: Bools, fragment: pa.Array) -> pa.Array:
    return pc.if_else(pa.array(mask), fragment, pa.scalar("", pa.string()))


def _render_style(w: _World, style: Style, c: _Columns, rows: I64) -> pa.Array:
    idx = pa.array(rows)
    ts, svc, stack, replica = c.ts[rows], c.svc[rows], c.stack[rows], c.replica[rows]
    msg, name = c.message.take(idx), take(w.names, svc)
    level = take(strings(LEVEL_NAMES[style]), c.level[rows])
    tid, sid = c.trace_id.take(idx), c.span_id.take(idx)
    if style == "structlog":
        # structlog's JSONRenderer is json.dumps with its default ", " and ": " separators.
        trace = join(', "trace_id": "', tid, '", "span_id": "', sid, '"')
        return join(
            '{"event": "', msg, '", "level": "', level, '", "logger": "',
            take(w.loggers, c.logger[rows]), '", "timestamp": "', _iso(ts, micro=True), '"',
            _optional(c.traced[rows], trace),
            _optional(c.failed[rows], join(', "exception": "', take(_PY_STACKS, stack), '"')),
            "}\n",
        )  # fmt: skip
    trace = _optional(c.traced[rows], join(',"trace_id":"', tid, '","span_id":"', sid, '"'))
    if style == "winston":
        return join(
            '{"level":"', level, '","message":"', msg, '","service":"', name, '"', trace,
            _optional(c.failed[rows], join(',"stack":"', take(_JS_STACKS, stack), '"')),
            ',"timestamp":"', _iso(ts, micro=False), '"}\n',
        )  # fmt: skip
    err = join(',"err":{"type":"', take(_JS_TYPES, stack), '","message":"',
               take(_JS_MESSAGES, stack), '","stack":"', take(_JS_STACKS, stack), '"}')  # fmt: skip
    return join(
        '{"level":', level, ',"time":', int_strings(ts // 1000), ',"pid":',
        take(w.pids, replica), ',"hostname":"', take(w.hostnames, replica), '","name":"', name,
        '"', trace, _optional(c.failed[rows], err), ',"msg":"', msg, '"}\n',
    )  # fmt: skip


def _render(w: _World, c: _Columns) -> pa.Array:
    style = w.style[c.svc]
    pieces = []
    for s, name in enumerate(STYLES):
        rows = np.flatnonzero(style == s)
        if len(rows):
            pieces.append((rows, _render_style(w, name, c, rows)))
    return _scatter(len(c.ts), pieces)


def _malformed(kind: str, line: str, rng: np.random.Generator) -> bytes:
    """A broken version of ``line``, or noise, that no honest JSON-lines parser accepts."""
    if kind == "blank":
        return b""
    if kind == "garbage":
        stray = _STRAY_LINES[int(rng.integers(0, len(_STRAY_LINES)))]
        return stray.encode() if rng.random() < 0.5 else garbage_text(rng)
    if kind == "invalid_utf8":
        return smuggle_latin1(line, rng) if rng.random() < 0.5 else invalid_utf8(rng)
    if kind == "truncated":  # a strict prefix of an object lacks its closing brace
        return line[: int(rng.integers(1, len(line) - 1))].encode()
    if kind == "not_object":
        return _NOT_OBJECTS[int(rng.integers(0, len(_NOT_OBJECTS)))].encode()
    obj = json.loads(line)
    key = "time" if "time" in obj else "timestamp"
    obj[key] = _BAD_TIMES[key][int(rng.integers(0, 3))]
    separators = (", ", ": ") if "event" in obj else (",", ":")
    return json.dumps(obj, separators=separators, ensure_ascii=False).encode()


def write_applogs(spec: AppLogSpec, path: Path) -> GenerateReport:
    """Write ``spec.lines`` JSON-lines app-log records to ``path`` (gzip if .gz)."""
    began = time.perf_counter()
    w = _world(spec)

    def render(rng: np.random.Generator, first: int, stop: int) -> tuple[pa.Array, I64]:
        cols = _columns(w, first, stop, rng)
        return _render(w, cols), cols.ts

    return generate_file(
        kind="logs", fmt="json", path=path, lines=spec.lines, seed=spec.seed,
        stream=STREAM_APPLOGS, render=render, incidents=w.incidents, began=began,
        malformed=MalformedSpec(spec.malformed_share, MALFORMED_KINDS, _MALFORMED_WEIGHTS,
                                _malformed),
    )  # fmt: skip
