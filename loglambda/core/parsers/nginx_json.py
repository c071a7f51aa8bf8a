"""nginx access logs written as JSON (``log_format … escape=json``), one object a line.

JSON access logs are hand-written ``log_format`` lines, so every site names its
fields differently and nginx quotes most numbers (``"status": "200"``). This parser
accepts the spellings seen in the wild and turns them into ``TRAFFIC_SCHEMA`` rows;
a line whose essentials (time, client, status) are unusable is quarantined with the
field named, never guessed.

Field choices (the first present, non-empty value wins; ``"-"`` counts as empty):

* time: ``msec`` first (it carries milliseconds where ``$time_iso8601`` and
  ``$time_local`` have whole seconds), then ``time_iso8601``, ``time_local``,
  ``@timestamp``, ``timestamp``, ``time``. Times without an offset are taken as UTC.
* client: ``remote_addr`` (what nginx, after any realip rewrite, believes), then
  ``client_ip``, ``realip_remote_addr``, and the first address of
  ``http_x_forwarded_for`` (spoofable, hence last).
* request: the ``request`` line, with gaps filled from ``request_method``,
  ``request_uri`` (or ``uri`` + ``args``) and ``server_protocol``. Path and query are
  split at the first ``?``; an empty query is null. A request line that is not
  ``METHOD target [HTTP/x]`` (TLS handshakes sent to a plain port, scanner junk)
  keeps the event with method/path/protocol null: it still counts as traffic.
* bytes: ``body_bytes_sent``, else ``bytes_sent``; absent/empty means 0.
* latency: ``request_time`` seconds × 1000; only if it is absent, the sum of
  ``upstream_response_time`` (which lists one time per upstream tried).
* host: ``host`` (nginx's best guess), ``http_host`` (the header), ``server_name``.
* referrer: ``http_referer`` or the common misspelling ``http_referrer``.
"""

from __future__ import annotations

import math
import re
from datetime import datetime
from typing import Any, Final

from loglambda.core.lines import LineBlock
from loglambda.core.parsers.base import Parsed, Reject, parse_rows
from loglambda.core.parsers.jsonlogs import load_object, parse_time, show_value
from loglambda.core.schemas import Kind

TIME_KEYS: Final = ("msec", "time_iso8601", "time_local", "@timestamp", "timestamp", "time")
CLIENT_KEYS: Final = ("remote_addr", "client_ip", "realip_remote_addr", "http_x_forwarded_for")
HOST_KEYS: Final = ("host", "http_host", "server_name")
BYTES_KEYS: Final = ("body_bytes_sent", "bytes_sent")
# Many published log_format examples misspell the key as "http_referrer".
REFERRER_KEYS: Final = ("http_referer", "http_referrer")

_INT64_MAX: Final = 2**63 - 1
# ASCII digits only: int() would accept other scripts' digits and underscores.
_INT_RE: Final = re.compile(r"[+-]?[0-9]{1,30}")
_FLOAT_RE: Final = re.compile(r"[+-]?[0-9]{1,30}(?:\.[0-9]{0,30})?(?:[eE][+-]?[0-9]{1,3})?")
_REQUEST_RE: Final = re.compile(r"([A-Za-z][A-Za-z0-9_-]*) +(\S+)(?: +(HTTP/[0-9.]+))? *")
_UPSTREAM_SPLIT_RE: Final = re.compile(r"\s*[,:]\s*")


def _text(obj: dict[str, Any], key: str) -> str | None:
    """A string field; null, missing, "" and "-" are None; numbers are stringified."""
    value = obj.get(key)
    if value is None:
        return None
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if not isinstance(value, str):
        raise Reject("bad_type", f"field {key!r} is {show_value(value)}, expected a string")
    return None if value in ("", "-") else value


def _first_text(obj: dict[str, Any], keys: tuple[str, ...]) -> tuple[str | None, str | None]:
    for key in keys:
        value = _text(obj, key)
        if value is not None:
            return value, key
    return None, None


def _integer(value: object) -> int | None:
    """An integer from a JSON int, integral float or ASCII digit string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        return int(value) if value.is_integer() else None
    if isinstance(value, str) and _INT_RE.fullmatch(value.strip()):
        return int(value)
    return None


def _seconds(value: object) -> float | None:
    """A finite number of seconds from a JSON number or numeric string, else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, str):
        if not _FLOAT_RE.fullmatch(value.strip()):
            return None
    elif not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _split_target(target: str | None) -> tuple[str | None, str | None]:
    if target is None:
        return None, None
    path, _, query = target.partition("?")
    return path, query or None


def _latency_ms(obj: dict[str, Any]) -> float | None:
    value = obj.get("request_time")
    key = "request_time"
    if value in (None, "", "-"):
        key = "upstream_response_time"
        value = obj.get(key)
        if value in (None, "", "-"):
            return None
        if isinstance(value, str):
            # "0.010, 0.020 : 0.005": one time per upstream tried, "-" if none answered.
            parts = [p for p in _UPSTREAM_SPLIT_RE.split(value.strip()) if p not in ("", "-")]
            if not parts:
                return None
            times = [_seconds(p) for p in parts]
            if any(t is None for t in times):
                raise Reject("bad_latency", f"field {key!r} is {show_value(value)}, not seconds")
            seconds: float | None = sum(t for t in times if t is not None)
        else:
            seconds = _seconds(value)
    else:
        seconds = _seconds(value)
    if seconds is None:
        raise Reject("bad_latency", f"field {key!r} is {show_value(value)}, expected seconds")
    if seconds < 0:
        raise Reject("bad_latency", f"field {key!r} is {show_value(value)}, negative")
    # Round away float noise (0.123 * 1000 = 123.00000000000001); nginx has ms resolution.
    return round(seconds * 1000, 3)


def parse_nginx_json(text: str) -> dict[str, Any]:
    """One nginx JSON access-log line as a ``TRAFFIC_SCHEMA`` row (without provenance)."""
    obj = load_object(text)

    ts: datetime | None = None
    for key in TIME_KEYS:
        value = obj.get(key)
        if value is None or value in ("", "-"):
            continue
        try:
            ts = parse_time(value)
        except ValueError as err:
            raise Reject("bad_timestamp", f"field {key!r} is {show_value(value)}: {err}") from None
        break
    if ts is None:
        raise Reject("bad_timestamp", f"no time field (expected one of {', '.join(TIME_KEYS)})")

    client, client_key = _first_text(obj, CLIENT_KEYS)
    if client_key == "http_x_forwarded_for" and client is not None:
        client = client.split(",")[0].strip() or None
    if client is None:
        expected = ", ".join(CLIENT_KEYS)
        raise Reject("missing_field", f"no client address (expected one of {expected})")

    status_raw = obj.get("status")
    if status_raw is None or status_raw == "":
        raise Reject("missing_field", "no 'status' field")
    status = _integer(status_raw)
    if status is None:
        raise Reject(
            "bad_status", f"field 'status' is {show_value(status_raw)}, expected an integer"
        )
    if not 100 <= status <= 599:
        raise Reject("bad_status", f"field 'status' is {status}, outside 100-599")

    size = 0
    for key in BYTES_KEYS:
        raw = obj.get(key)
        if raw is None or raw in ("", "-"):
            continue
        parsed = _integer(raw)
        if parsed is None:
            raise Reject("bad_bytes", f"field {key!r} is {show_value(raw)}, expected an integer")
        if not 0 <= parsed <= _INT64_MAX:
            raise Reject("bad_bytes", f"field {key!r} is {parsed}, outside 0-{_INT64_MAX}")
        size = parsed
        break

    latency = _latency_ms(obj)

    method: str | None = None
    path: str | None = None
    query: str | None = None
    protocol: str | None = None
    request = _text(obj, "request")
    if request is not None:
        m = _REQUEST_RE.fullmatch(request)
        if m:
            method, target, protocol = m.group(1), m.group(2), m.group(3)
            path, query = _split_target(target)
    method = method or _text(obj, "request_method")
    protocol = protocol or _text(obj, "server_protocol")
    if path is None:
        request_uri = _text(obj, "request_uri")
        if request_uri is not None:
            path, query = _split_target(request_uri)
        else:
            path, query = _text(obj, "uri"), _text(obj, "args")

    return {
        "ts": ts,
        "host": _first_text(obj, HOST_KEYS)[0],
        "client_ip": client,
        "method": method,
        "path": path,
        "query": query,
        "protocol": protocol,
        "status": status,
        "bytes": size,
        "latency_ms": latency,
        "referrer": _first_text(obj, REFERRER_KEYS)[0],
        "user_agent": _text(obj, "http_user_agent"),
    }


class NginxJsonParser:
    """The ``nginx_json`` format (see the module docstring for the field rules)."""

    @property
    def name(self) -> str:
        return "nginx_json"

    @property
    def kind(self) -> Kind:
        return "traffic"

    def parse(self, block: LineBlock) -> Parsed:
        return parse_rows(block, self.kind, parse_nginx_json)


NGINX_JSON: Final = NginxJsonParser()
