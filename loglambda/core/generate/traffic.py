"""Generate web access logs: nginx/Apache "combined" (+ request time) or nginx JSON.

The demo and every benchmark read these files, so two properties matter above all:
the same spec always produces the same bytes, and millions of lines take seconds.
Each chunk draws all its columns as numpy arrays (who visits, what, when, with what
outcome), then Arrow kernels glue vocabulary lookups and rendered numbers into lines;
Python touches only the few malformed lines.

The traffic is shaped to exercise the pipeline: a diurnal load curve, browsers vs
crawlers vs scripts vs vulnerability scanners, cache revalidations (304), incident
windows with bursts of 502/503/504 and slow requests, a few lines stamped in another
time zone, out-of-order and very late lines, and an exact number of malformed lines.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Final, Literal

import numpy as np
import pyarrow as pa

from loglambda.core.generate import site as site
from loglambda.core.generate import vocab as vocab
from loglambda.core.generate.common import (
    DEFAULT_START,
    F64,
    I64,
    STREAM_VOCAB,
    Bools,
    Incident,
    Timeline,
    choose,
    clf_day,
    day_strings,
    displace,
    epoch_us,
    human_activity,
    incidents_for,
    int_strings,
    iso_day,
    join,
    millis_text,
    rng_for,
    sample_grouped,
    severity_at,
    strings,
    take,
    time_of_day,
    zipf_weights,
)
from loglambda.core.generate.output import (
    GenerateReport,
    MalformedSpec,
    garbage_text,
    generate_file,
    invalid_utf8,
    smuggle_latin1,
)

TrafficFormat = Literal["combined", "nginx_json"]
TRAFFIC_FORMATS: Final[tuple[TrafficFormat, ...]] = ("combined", "nginx_json")
STREAM_TRAFFIC: Final = 10

# fmt: off
# (CLF offset, ISO offset, seconds east of UTC); row 0 is UTC, the others a minority.
TIME_ZONES: Final = (("+0000", "+00:00", 0), ("+0200", "+02:00", 7200),
                     ("+0100", "+01:00", 3600), ("-0500", "-05:00", -18000),
                     ("+0530", "+05:30", 19800), ("-0800", "-08:00", -28800))
_TZ_WEIGHTS: Final = (0.4, 0.25, 0.15, 0.1, 0.1)
# Body sizes of nginx's built-in pages; errors the application renders are sized apart.
_NGINX_BYTES: Final = {301: 162, 302: 138, 400: 157, 401: 179, 403: 153, 404: 153, 405: 157,
                       409: 157, 422: 157, 429: 169, 500: 177, 502: 157, 503: 197, 504: 167}
MALFORMED_KINDS: Final = ("truncated", "garbage", "invalid_utf8", "blank", "bad_status",
                          "negative_bytes", "bad_timestamp", "not_object")
# 'not_object' only means something for JSON lines.
_MALFORMED_WEIGHTS: Final = {"combined": (0.25, 0.15, 0.14, 0.08, 0.13, 0.12, 0.13, 0.0),
                             "nginx_json": (0.22, 0.12, 0.12, 0.08, 0.12, 0.11, 0.13, 0.1)}
# fmt: on
_ERROR_TABLE: Final = np.zeros(1000, dtype=np.int64)
_ERROR_TABLE[list(_NGINX_BYTES)] = list(_NGINX_BYTES.values())
# Audience mix at average load; browsers follow human activity, bots do not sleep.
_AUDIENCE_BASE: Final = (0.78, 0.12, 0.06, 0.025, 0.015)
_APP: Final = (site.PAGE, site.API, site.SEARCH, site.LOGIN, site.ADMIN)
_BAD_CLF_TIMES: Final = ("01/Xyz/2026:13:45:12 +0000", "not-a-date", "--/---/----:--:--:-- +0000")
_BAD_ISO_TIMES: Final = ("not-a-time", "", "2026-Nov-01 morning")
_STRAY_LINES: Final = (
    "2026/11/01 13:45:12 [error] 1234#1234: *56789 upstream timed out (110: Connection timed "
    "out) while reading response header from upstream, client: 10.0.0.1",
    "tail: /var/log/nginx/access.log: file truncated",
    "==> /var/log/nginx/access.log <==",
)


@dataclass(frozen=True)
class TrafficSpec:
    """What to generate. ``hosts`` are virtual hosts: the ``host`` field of nginx_json
    and the origin of internal referrers (combined lines carry no host)."""

    lines: int
    seed: int = 42
    start: datetime = DEFAULT_START
    days: float = 1.0
    fmt: TrafficFormat = "combined"
    with_latency: bool = True
    malformed_share: float = 0.001
    late_share: float = 0.001
    hosts: tuple[str, ...] = ("www.example.com",)
    jitter_share: float = 0.02  # lines stamped 1-8 s before their neighbours
    tz_share: float = 0.02  # lines rendered with a non-UTC offset (same instant)

    def __post_init__(self) -> None:
        if self.lines < 0 or self.seed < 0:
            raise ValueError("lines and seed must be non-negative")
        if not self.days > 0:
            raise ValueError(f"days must be positive, got {self.days}")
        if self.fmt not in TRAFFIC_FORMATS:
            raise ValueError(f"unknown traffic format {self.fmt!r}; expected {TRAFFIC_FORMATS}")
        for name in ("malformed_share", "late_share", "jitter_share", "tz_share"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ValueError(f"{name} must be within [0, 1]")
        if not self.hosts or any(not h or any(c in h for c in ' "/\\') for h in self.hosts):
            raise ValueError(f"hosts must be non-empty host names, got {self.hosts!r}")


@dataclass(frozen=True)
class _World:
    """Everything fixed for a run: the site, its visitors, the load curve, the incidents."""

    spec: TrafficSpec
    routes: site.Routes
    clients: site.Clients
    timeline: Timeline
    incidents: tuple[Incident, ...]
    refs: pa.StringArray  # '-', search engines, social sites, then internal (host x page)
    page_cdf: F64
    host_cdf: F64


def _cdf(weights: F64) -> F64:
    out: F64 = np.cumsum(weights) / weights.sum()
    out[-1] = 1.0  # exact, so searchsorted of a draw in [0, 1) stays in range
    return out


def _world(spec: TrafficSpec) -> _World:
    rng = rng_for(spec.seed, STREAM_TRAFFIC, STREAM_VOCAB)
    routes, clients = site.build_routes(rng), site.build_clients(rng)
    start, span = epoch_us(spec.start), round(spec.days * 86_400e6)
    incidents = incidents_for(spec.seed, start, span)
    timeline = Timeline(
        seed=spec.seed, stream=STREAM_TRAFFIC, start_us=start, span_us=span,
        lines=spec.lines, human_share=0.8, incidents=incidents,
    )  # fmt: skip
    refs = ["-", *(r for r, _ in vocab.SEARCH_REFERRERS), *(r for r, _ in vocab.SOCIAL_REFERRERS)]
    refs += [f"https://{h}{p}" for h in spec.hosts for p in routes.pages]
    return _World(
        spec, routes, clients, timeline, incidents, strings(refs),
        page_cdf=_cdf(zipf_weights(len(routes.pages), 1.0)),
        host_cdf=_cdf(zipf_weights(len(spec.hosts), 1.2)),
    )  # fmt: skip


@dataclass(frozen=True)
class _Columns:
    ts: I64  # as shown, after jitter and lateness
    tz: I64
    client: I64
    target: I64
    method: I64
    status: I64
    size: I64
    ms: I64
    ref: I64
    user: I64
    host: I64


def _columns(w: _World, first: int, stop: int, rng: np.random.Generator) -> _Columns:
    r, c, n = w.routes, w.clients, stop - first
    true_ts = w.timeline.timestamps(first, stop, rng)
    # Who is asking depends on the hour: at night the bots' share rises.
    activity, b = human_activity(true_ts / 1e6), _AUDIENCE_BASE
    mix = np.cumsum([b[0] * activity, np.full(n, b[1]), b[2] * (0.4 + 0.6 * activity),
                     np.full(n, b[3]), np.full(n, b[4])], axis=0)  # fmt: skip
    audience = ((rng.random(n) * mix[-1])[None, :] >= mix[:-1]).sum(axis=0).astype(np.int64)
    client = c.items[sample_grouped(c.cdf, audience, rng)]
    t = r.items[sample_grouped(r.cdf, audience, rng)]
    # Within a template the first targets (oldest users, plain URL without query) dominate.
    target = r.first[t] + (r.count[t] * rng.random(n) ** 2.5).astype(np.int64)
    method = np.where(c.head[client], site.HEAD, r.method[t])
    cls = r.cls[t]
    sev = severity_at(w.incidents, true_ts)
    status = _status(rng, r.ok[t], cls, audience, method, c.admin[client], sev)
    host = np.searchsorted(w.host_cdf, rng.random(n), side="right").astype(np.int64)
    tz = np.where(rng.random(n) < w.spec.tz_share, 1 + choose(rng, n, _TZ_WEIGHTS), 0)
    shown = displace(
        true_ts, rng, jitter_share=w.spec.jitter_share, late_share=w.spec.late_share,
        floor_us=w.timeline.start_us,
    )  # fmt: skip
    return _Columns(
        ts=shown, tz=tz, client=client, target=target, method=method, status=status,
        size=_sizes(rng, r, t, cls, status, method),
        ms=_latency_ms(rng, r, t, cls, status, sev),
        ref=_referrers(w, rng, cls, audience, host),
        user=np.where((cls == site.ADMIN) & (status < 300), 1 + client % 2, 0), host=host,
    )  # fmt: skip


def _status(
    rng: np.random.Generator, ok: I64, cls: I64, audience: I64, method: I64, admin: Bools, sev: F64
) -> I64:
    n = len(ok)
    u, x = rng.random(n), rng.random(n)
    st = ok.copy()
    # Browsers revalidate cached assets; crawlers and scripts fetch them whole.
    static = np.isin(cls, (site.ASSET, site.IMAGE, site.FEED)) & (method == site.GET)
    st[static & (audience == site.BROWSER) & (u < 0.22)] = 304
    st[np.isin(cls, (site.ASSET, site.IMAGE)) & (u > 0.998)] = 404
    # Crawlers follow stale links far more often than people do.
    st[(cls == site.PAGE) & (u > np.where(audience == site.CRAWLER, 0.97, 0.992))] = 404
    api, write = cls == site.API, ~np.isin(method, (site.GET, site.HEAD))
    limited = u < np.where(audience == site.SCRIPT, 0.081, 0.065)
    invalid = np.where(method == site.POST, 422, 400)
    api_status = np.select(
        [u < 0.012, u < 0.027, write & (u < 0.057), write & (u < 0.061), limited],
        [401, 404, invalid, 409, 429], st,
    )  # fmt: skip
    st = np.where(api, api_status, st)
    # Failed form logins re-render the page (200); the JSON login answers 401.
    failed_login = (cls == site.LOGIN) & (method == site.POST) & (u < 0.18)
    st[failed_login] = np.where(ok[failed_login] == 302, 200, 401)
    guarded = (cls == site.ADMIN) & ~admin
    st[guarded] = np.select([u[guarded] < 0.35, u[guarded] < 0.85], [401, 403], 302)
    probe = cls == site.PROBE
    st[probe] = np.select([u[probe] < 0.86, u[probe] < 0.95, u[probe] < 0.98], [404, 403, 400], 444)
    st[probe & (method == site.POST) & (x < 0.3)] = 405
    app = np.isin(cls, _APP)
    background = np.select(
        [x < 0.0015, x < 0.0019, x < 0.0021, x < 0.0023], [500, 502, 503, 504], st
    )
    st = np.where(app, background, st)
    # Inside an incident a share (its severity) of dynamic requests fail, mostly upstream.
    failing = (app | (cls == site.HEALTH)) & (rng.random(n) < sev)
    upstream = choose(rng, int(failing.sum()), (0.45, 0.3, 0.15, 0.1))
    st[failing] = np.array([502, 503, 504, 500])[upstream]
    return st


def _sizes(
    rng: np.random.Generator, r: site.Routes, t: I64, cls: I64, status: I64, method: I64
) -> I64:
    drawn = np.exp(r.size_mu[t] + r.size_sigma[t] * rng.standard_normal(len(t)))
    size = np.where(r.size_fixed[t] >= 0, r.size_fixed[t], drawn.astype(np.int64))
    size = np.where(status >= 300, _ERROR_TABLE[np.minimum(status, 999)], size)
    # The application renders its own error pages and JSON errors; nginx only the rest.
    html = np.isin(cls, (site.PAGE, site.SEARCH, site.LOGIN, site.ADMIN)) & (status >= 400)
    size[html] = rng.integers(5_200, 5_400, int(html.sum()))
    api = (cls == site.API) & (status >= 400)
    size[api] = rng.integers(40, 140, int(api.sum()))
    size[(cls == site.LOGIN) & (status == 200) & (r.size_fixed[t] == 0)] = 6_150  # re-rendered
    size[np.isin(status, (204, 304, 444)) | (method == site.HEAD)] = 0
    return size


def _latency_ms(
    rng: np.random.Generator, r: site.Routes, t: I64, cls: I64, status: I64, sev: F64
) -> I64:
    n = len(t)
    lat = np.exp(r.lat_mu[t] + r.lat_sigma[t] * rng.standard_normal(n))
    lat[status == 304] *= 0.4
    # The slow tail: lock waits, cold caches, GC pauses; a few seconds.
    slow = rng.random(n) < 0.004
    lat[slow] *= np.exp(rng.normal(np.log(20.0), 0.5, int(slow.sum())))
    stuck = rng.random(n) < 0.0004
    lat[stuck] = rng.uniform(5.0, 15.0, int(stuck.sum()))
    lat = np.minimum(np.where(np.isin(cls, _APP), lat * (1.0 + 6.0 * sev), lat), 30.0)
    # Gateway errors keep their own timing: a 504 is the proxy's 60 s read timeout.
    for code, median in ((502, 0.004), (503, 0.0015)):
        hit = status == code
        lat[hit] = np.exp(rng.normal(np.log(median), 0.5, int(hit.sum())))
    lat[status == 504] = 60.0 + rng.random(int((status == 504).sum())) * 0.01
    lat[status == 444] = 0.0
    # Refused at the door: an auth check, not a page render.
    refused = (cls == site.ADMIN) & np.isin(status, (302, 401, 403))
    lat[refused] = np.exp(rng.normal(np.log(0.003), 0.5, int(refused.sum())))
    return np.rint(lat * 1000.0).astype(np.int64)


def _referrers(w: _World, rng: np.random.Generator, cls: I64, audience: I64, host: I64) -> I64:
    n = len(cls)
    u = rng.random(n)
    n_search, n_social = len(vocab.SEARCH_REFERRERS), len(vocab.SOCIAL_REFERRERS)
    page = np.searchsorted(w.page_cdf, rng.random(n), side="right")
    internal = 1 + n_search + n_social + host * len(w.routes.pages) + page
    search = 1 + choose(rng, n, [x for _, x in vocab.SEARCH_REFERRERS])
    social = 1 + n_search + choose(rng, n, [x for _, x in vocab.SOCIAL_REFERRERS])
    # Subresources are referred by the page that loaded them; pages arrive from anywhere.
    browser = audience == site.BROWSER
    sub = browser & np.isin(cls, (site.ASSET, site.IMAGE, site.API)) & (u < 0.92)
    nav = browser & np.isin(cls, (site.PAGE, site.SEARCH, site.LOGIN, site.ADMIN, site.REDIRECT))
    arrival = np.select([u < 0.35, u < 0.65, u < 0.9], [0, internal, search], social)
    return np.where(nav, arrival, np.where(sub, internal, 0))


def _json_escaped(values: pa.StringArray | tuple[str, ...], dash_empty: bool) -> pa.StringArray:
    """String bodies as nginx escape=json writes them: absent values are empty, not '-'."""
    items = values.to_pylist() if isinstance(values, pa.Array) else list(values)
    out = [json.dumps(s, ensure_ascii=False)[1:-1] for s in items]
    return strings(["" if dash_empty and s == "-" else s for s in out])


def _render(w: _World, col: _Columns, js: dict[str, pa.StringArray]) -> pa.Array:
    r, c = w.routes, w.clients
    local = col.ts // 1_000_000 + np.array([z[2] for z in TIME_ZONES])[col.tz]
    day, tod = local // 86_400, take(time_of_day(), local % 86_400)
    ip, method = take(c.ip, col.client), take(strings(site.METHODS), col.method)
    proto = take(strings(site.PROTOCOLS), c.proto[col.client])
    status, size, latency = int_strings(col.status), int_strings(col.size), millis_text(col.ms)
    if w.spec.fmt == "combined":
        tail = (" ", latency, "\n") if w.spec.with_latency else ("\n",)
        return join(
            ip, " - ", take(strings(("-", "admin", "ops")), col.user), " [",
            day_strings(day, clf_day), ":", tod, " ",
            take(strings([z[0] for z in TIME_ZONES]), col.tz), '] "', method, " ",
            take(r.targets, col.target), " ", proto, '" ', status, " ", size, ' "',
            take(w.refs, col.ref), '" "', take(c.ua, col.client), '"', *tail,
        )  # fmt: skip
    timing = (',"request_time":"', latency, '"') if w.spec.with_latency else ()
    return join(
        '{"time_iso8601":"', day_strings(day, iso_day), "T", tod,
        take(strings([z[1] for z in TIME_ZONES]), col.tz), '","remote_addr":"', ip,
        '","request":"', method, " ", take(js["targets"], col.target), " ", proto,
        '","status":"', status, '","body_bytes_sent":"', size, '"', *timing,
        ',"http_referer":"', take(js["refs"], col.ref), '","http_user_agent":"',
        take(js["ua"], col.client), '","host":"', take(js["hosts"], col.host), '"}\n',
    )  # fmt: skip


def _pick(rng: np.random.Generator, options: tuple[str, ...]) -> str:
    return options[int(rng.integers(0, len(options)))]


def _malformed(kind: str, line: str, fmt: str, rng: np.random.Generator) -> bytes:
    """A broken version of ``line``, or noise, that no honest parser can accept."""
    if kind == "blank":
        return b""
    if kind == "garbage":
        return _pick(rng, _STRAY_LINES).encode() if rng.random() < 0.3 else garbage_text(rng)
    if kind == "invalid_utf8":
        return smuggle_latin1(line, rng) if rng.random() < 0.5 else invalid_utf8(rng)
    if fmt == "nginx_json":
        return _malformed_json(kind, line, rng)
    open_q = line.index('"')
    close_q = line.index('"', open_q + 1)
    if kind == "truncated":  # cut before the request's closing quote
        return line[: int(rng.integers(1, close_q))].encode()
    status_end = line.index(" ", close_q + 2)
    if kind == "bad_status":
        return (
            line[: close_q + 2] + _pick(rng, ("999", "600", "000", "1200")) + line[status_end:]
        ).encode()
    if kind == "negative_bytes":
        size_end = line.index(" ", status_end + 1)
        return (line[: status_end + 1] + f"-{rng.integers(1, 99_999)}" + line[size_end:]).encode()
    bad_time = _pick(rng, _BAD_CLF_TIMES)
    return (line[: line.index("[") + 1] + bad_time + line[line.index("]") :]).encode()


def _malformed_json(kind: str, line: str, rng: np.random.Generator) -> bytes:
    if kind == "truncated":  # a strict prefix of an object lacks its closing brace
        return line[: int(rng.integers(1, len(line) - 1))].encode()
    obj = json.loads(line)
    if kind == "not_object":
        return (json.dumps(list(obj.values())[:3]) if rng.random() < 0.5 else "null").encode()
    if kind == "bad_status":
        obj["status"] = _pick(rng, ("999", "600", "0", "1200"))
    elif kind == "negative_bytes":
        obj["body_bytes_sent"] = f"-{rng.integers(1, 99_999)}"
    else:
        obj["time_iso8601"] = _pick(rng, _BAD_ISO_TIMES)
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def write_traffic(spec: TrafficSpec, path: Path) -> GenerateReport:
    """Write ``spec.lines`` access-log lines to ``path`` (gzip if it ends in .gz)."""
    began = time.perf_counter()
    w = _world(spec)
    js: dict[str, pa.StringArray] = {}
    if spec.fmt == "nginx_json":
        js = {
            "targets": _json_escaped(w.routes.targets, dash_empty=False),
            "refs": _json_escaped(w.refs, dash_empty=True),
            "ua": _json_escaped(w.clients.ua, dash_empty=True),
            "hosts": _json_escaped(spec.hosts, dash_empty=False),
        }

    def render(rng: np.random.Generator, first: int, stop: int) -> tuple[pa.Array, I64]:
        col = _columns(w, first, stop, rng)
        return _render(w, col, js), col.ts

    def malform(kind: str, line: str, rng: np.random.Generator) -> bytes:
        return _malformed(kind, line, spec.fmt, rng)

    return generate_file(
        kind="traffic", fmt=spec.fmt, path=path, lines=spec.lines, seed=spec.seed,
        stream=STREAM_TRAFFIC, render=render, incidents=w.incidents, began=began,
        malformed=MalformedSpec(spec.malformed_share, MALFORMED_KINDS,
                                _MALFORMED_WEIGHTS[spec.fmt], malform),
    )  # fmt: skip
