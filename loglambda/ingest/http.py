"""``POST /v1/ingest``: the HTTP front door into the event log.

What a request may be (query parameters and ``Content-Type`` decide):

* ``?kind=traffic|logs`` + JSON (``application/x-ndjson``, ``application/json``...):
  NDJSON events in the normalised shape (rules in ``events_json``);
* ``?format=F`` + ``text/plain``: raw log lines of format F, one per line;
* ``?format=F`` + JSON: shipper envelopes whose ``message``/``log`` holds a raw line of
  format F (Vector, Fluent Bit; see ``envelope``).

A JSON body whose first byte (after whitespace) is ``[`` is a JSON array of those
objects (Vector's ``json`` codec without framing, Fluent Bit's ``format json``,
Logstash's ``json_batch``); it is re-encoded as NDJSON first, so positions refer to
that NDJSON (``source_line`` = element number). ``Content-Encoding: gzip`` is
decompressed with the same size cap as the body.

Outcomes: every bad *record* is quarantined and the request still succeeds (200 with
the report); only a body with no record structure at all -- gzip that does not
decompress, a ``[`` body that is not a JSON array -- is refused whole (400). Invalid
UTF-8 or JSON on a line is that line's problem. The response is sent only after
``deliver`` returned, i.e. after the rejects and then the events are durable; any
refusal (4xx, 503) has appended nothing.

Back-pressure (429 + ``Retry-After``): at most ``max_in_flight`` requests are parsed
and appended at once (in worker threads, so the event loop stays free) and at most
``max_queued`` more may wait for a turn, holding their bodies. A request beyond that
is refused before its body is read, and a queued one that waited ``queue_timeout_s``
without a turn is refused too (its body was read but nothing was written). Both mean
the log is not keeping up; ``Retry-After`` estimates when a turn frees from the queue
length and the recent time per request.
"""

from __future__ import annotations

import asyncio
import logging
import math
import re
import secrets
import time
import zlib
from dataclasses import dataclass
from typing import Any, Final, Literal

import anyio
import orjson
from fastapi import APIRouter, HTTPException, Request, Response

from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog
from loglambda.core.lines import DEFAULT_MAX_LINE_BYTES
from loglambda.core.parsers import PARSERS, Parsed, Parser, get_parser
from loglambda.core.schemas import KINDS, Kind
from loglambda.ingest.envelope import envelope_lines
from loglambda.ingest.events_json import parse_events
from loglambda.ingest.frontdoor import deliver, parse_lines, quarantine_name
from loglambda.serving.auth import check

log = logging.getLogger(__name__)

JSON_TYPES: Final = frozenset(
    {
        "application/json",
        "application/x-ndjson",
        "application/ndjson",
        "application/jsonl",
        "application/x-jsonlines",
    }
)
TEXT_TYPES: Final = frozenset({"text/plain"})
_LEADING_SPACE: Final = re.compile(rb"[ \t\r\n]*")


@dataclass(frozen=True)
class IngestLimits:
    """Size and concurrency bounds of the ingest endpoint (env vars in ``serve``)."""

    max_body: int = 16 << 20  # bytes, as sent and again after decompression
    max_line_bytes: int = DEFAULT_MAX_LINE_BYTES
    max_in_flight: int = 4  # requests parsed/appended at once
    max_queued: int = 64  # requests admitted and waiting for a turn
    queue_timeout_s: float = 10.0  # longest wait for a turn before 429
    rejected_sample: int = 10  # rejected lines listed in a report

    def __post_init__(self) -> None:
        if self.max_body <= 0 or self.max_in_flight <= 0 or self.max_queued < 0:
            raise ValueError("max_body and max_in_flight must be > 0, max_queued >= 0")


class BodyTooLarge(Exception):
    """The body, as sent or decompressed, exceeds ``max_body``."""


class BadBody(Exception):
    """The body has no record structure to quarantine records from."""


@dataclass(frozen=True)
class Mode:
    """How a request's body is read."""

    kind: Kind
    parser: Parser | None  # None: normalised events
    envelope: bool

    @property
    def fmt(self) -> str:
        """The ``format`` recorded with quarantined records."""
        if self.parser is None:
            return f"{self.kind}_events"
        return f"{self.parser.name}_envelope" if self.envelope else self.parser.name


def resolve_mode(kind: str | None, fmt: str | None, content_type: str) -> Mode:
    """The mode a request asks for; HTTPException 400/415 naming the valid values."""
    media = content_type.split(";", 1)[0].strip().lower()
    is_json, is_text = media in JSON_TYPES, media in TEXT_TYPES
    if kind is not None and kind not in KINDS:
        raise HTTPException(400, f"unknown kind {kind!r}; valid kinds: {', '.join(KINDS)}")
    if fmt is None:
        if kind is None:
            raise HTTPException(
                400,
                "say what the body holds: ?kind=traffic|logs for NDJSON events, or "
                f"?format=F for raw log lines (F one of: {', '.join(PARSERS)})",
            )
        if not is_json:
            raise HTTPException(
                415, f"events need a JSON content type ({', '.join(sorted(JSON_TYPES))})"
            )
        return Mode(kind, None, False)  # type: ignore[arg-type]
    try:
        parser = get_parser(fmt)
    except ValueError:
        raise HTTPException(
            400, f"unknown format {fmt!r}; valid formats: {', '.join(PARSERS)}"
        ) from None
    if kind is not None and kind != parser.kind:
        raise HTTPException(400, f"format {fmt!r} makes {parser.kind} events, not {kind}")
    if not (is_json or is_text):
        raise HTTPException(
            415,
            "raw lines need text/plain; shipper records (message/log) need one of "
            + ", ".join(sorted(JSON_TYPES)),
        )
    return Mode(parser.kind, parser, is_json)


class Gate:
    """Admission (``max_in_flight`` + ``max_queued`` requests) and turns to run."""

    def __init__(self, limits: IngestLimits) -> None:
        self.limits = limits
        self.admitted = 0
        self._seconds = 0.05  # moving average of time per request, for Retry-After
        self._limiter: anyio.CapacityLimiter | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    def admit(self) -> bool:
        if self.admitted >= self.limits.max_in_flight + self.limits.max_queued:
            return False
        self.admitted += 1
        return True

    def leave(self) -> None:
        self.admitted -= 1

    def limiter(self) -> anyio.CapacityLimiter:
        # Bound to the running loop (a test client may run several loops in turn).
        loop = asyncio.get_running_loop()
        if self._limiter is None or self._loop is not loop:
            self._limiter, self._loop = anyio.CapacityLimiter(self.limits.max_in_flight), loop
        return self._limiter

    def took(self, seconds: float) -> None:
        self._seconds = 0.8 * self._seconds + 0.2 * seconds

    def retry_after(self) -> int:
        waves = (self.admitted + 1) / self.limits.max_in_flight
        return max(1, min(60, math.ceil(waves * self._seconds)))

    def busy(self, why: str) -> HTTPException:
        return HTTPException(429, why, headers={"Retry-After": str(self.retry_after())})


class IngestService:
    """The work of one request, run in a worker thread."""

    def __init__(self, settings: Settings, event_log: EventLog, limits: IngestLimits) -> None:
        self.settings = settings
        self.log = event_log
        self.limits = limits

    def process(self, body: bytes, encoding: str, mode: Mode, rid: str) -> dict[str, Any]:
        data = decode(body, encoding, self.limits.max_body)
        if mode.parser is None or mode.envelope:
            start = _LEADING_SPACE.match(data)
            if start is not None and data[start.end() : start.end() + 1] == b"[":
                data = array_to_ndjson(data)
        source = f"http:{rid}"
        max_line = self.limits.max_line_bytes
        parsed: Parsed
        if mode.parser is None:
            parsed, read = parse_events(data, mode.kind, source=source, max_line_bytes=max_line)
        elif mode.envelope:
            block = envelope_lines(data, source=source, max_line_bytes=max_line)
            parsed, read = mode.parser.parse(block), block.read
        else:
            parsed, read = parse_lines(data, mode.parser, source=source, max_line_bytes=max_line)
        report = deliver(
            self.log,
            self.settings.home,
            mode.kind,
            parsed.events,
            parsed.rejects,
            fmt=mode.fmt,
            read=read,
            quarantine_as=quarantine_name("http", rid),
        )
        out: dict[str, Any] = {
            "request_id": rid,
            "format": None if mode.parser is None else mode.parser.name,
        }
        out.update(report.to_json())
        out["rejected"] = []
        if len(parsed.rejects):
            table = parsed.rejects.to_table(mode.fmt)
            table = table.sort_by("source_line").slice(0, self.limits.rejected_sample)
            out["rejected"] = [
                {
                    "line": r["source_line"],
                    "offset": r["source_offset"],
                    "reason": r["reason"],
                    "detail": r["detail"],
                }
                for r in table.select(
                    ["source_line", "source_offset", "reason", "detail"]
                ).to_pylist()
            ]
        return out


def coding_of(encoding: str) -> Literal["identity", "gzip"]:
    """The ``Content-Encoding`` we will undo, or 415 (RFC 7694) for one we cannot."""
    coding = encoding.strip().lower()
    if coding in ("", "identity"):
        return "identity"
    if coding in ("gzip", "x-gzip"):
        return "gzip"
    raise HTTPException(415, f"unsupported Content-Encoding {encoding!r}; use gzip or none")


def decode(body: bytes, encoding: str, limit: int) -> bytes:
    """The body after its ``Content-Encoding`` (gzip or none), at most ``limit`` bytes."""
    return gunzip(body, limit) if coding_of(encoding) == "gzip" else body


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip (several members allowed) without ever holding more than
    ``limit + 1`` output bytes: a gzip bomb costs ``limit``, not its expanded size."""
    out = bytearray()
    rest = data
    try:
        while rest:
            stream = zlib.decompressobj(wbits=16 + zlib.MAX_WBITS)
            pending = rest
            while True:
                out += stream.decompress(pending, limit + 1 - len(out))
                if len(out) > limit:
                    raise BodyTooLarge(f"body over {limit} bytes once decompressed")
                if stream.eof:
                    break
                pending = stream.unconsumed_tail
                if not pending:
                    raise BadBody("gzip body is truncated")
            rest = stream.unused_data
    except zlib.error as err:
        raise BadBody(f"body is not valid gzip: {err}") from None
    return bytes(out)


def array_to_ndjson(data: bytes) -> bytes:
    """A JSON array body as NDJSON, one element a line."""
    try:
        items = orjson.loads(data)
    except orjson.JSONDecodeError as err:
        raise BadBody(f"body starts with '[' but is not a JSON array: {err}") from None
    if not isinstance(items, list):
        raise BadBody("body starts with '[' but is not a JSON array")
    return b"".join(orjson.dumps(item) + b"\n" for item in items)


def new_request_id() -> str:
    """A unique id that sorts by time: 11 hex digits of milliseconds, 10 random."""
    return f"{time.time_ns() // 1_000_000:011x}{secrets.token_hex(5)}"


def request_id(request: Request) -> str:
    """The id the app's middleware gave this request (one is made when used alone)."""
    rid = getattr(request.state, "request_id", None)
    if rid is None:
        rid = request.state.request_id = new_request_id()
    return str(rid)


def ingest_router(settings: Settings, event_log: EventLog, limits: IngestLimits) -> APIRouter:
    """The ``/v1/ingest`` route over one event log."""
    service = IngestService(settings, event_log, limits)
    gate = Gate(limits)
    router = APIRouter()

    @router.post("/v1/ingest", summary="Append events or raw log lines to the event log")
    async def ingest(request: Request) -> Response:
        check(request.app.state.tokens, request.headers.get("authorization"), "write")
        params = request.query_params
        mode = resolve_mode(
            params.get("kind"), params.get("format"), request.headers.get("content-type", "")
        )
        encoding = request.headers.get("content-encoding", "")
        coding_of(encoding)  # 415 for an unknown coding before reading the body
        declared = request.headers.get("content-length")
        if declared is not None and declared.isdigit() and int(declared) > limits.max_body:
            raise HTTPException(413, f"body over {limits.max_body} bytes")
        if not gate.admit():
            raise gate.busy("too many requests in flight; the event log is not keeping up")
        try:
            body = await _read_body(request, limits.max_body)
            limiter, turn = gate.limiter(), False
            with anyio.move_on_after(limits.queue_timeout_s):
                await limiter.acquire()
                turn = True
            if not turn:
                raise gate.busy(f"no turn within {limits.queue_timeout_s:g} s")
            try:
                started = time.perf_counter()
                rid = request_id(request)
                # Never cancelled once started: the append either completes (and is
                # reported) or fails (and nothing is acknowledged).
                report = await anyio.to_thread.run_sync(service.process, body, encoding, mode, rid)
                gate.took(time.perf_counter() - started)
            finally:
                limiter.release()
        except BodyTooLarge as err:
            raise HTTPException(413, str(err)) from None
        except BadBody as err:
            raise HTTPException(400, str(err)) from None
        except OSError as err:
            log.exception("append failed")
            raise HTTPException(
                503, f"event log unavailable: {err}", headers={"Retry-After": "5"}
            ) from None
        finally:
            gate.leave()
        return Response(orjson.dumps(report), media_type="application/json")

    return router


async def _read_body(request: Request, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise BodyTooLarge(f"body over {limit} bytes")
        chunks.append(chunk)
    return b"".join(chunks)
