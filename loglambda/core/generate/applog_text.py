"""What generated application logs say: templates, variable pools, stack traces, levels.

Kept apart from the generator because it is data. A message template has literal text
and ``{name}`` slots; each slot name is a variable type with a bulk generator here, so
a chunk fills one slot for all its records with one call per variable type. Values are
JSON-escaped once, here, so lines can be assembled by plain concatenation.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Final

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.generate.common import (
    choose,
    hex_strings,
    int_strings,
    join,
    pad_digits,
    strings,
    take,
)

DEBUG, INFO, WARN, ERROR, FATAL = range(5)
# How each library spells the levels: winston's npm levels have no fatal; pino uses
# numbers; structlog uses the stdlib names ("warning", "critical").
LEVEL_NAMES: Final = {
    "winston": ("debug", "info", "warn", "error", "error"),
    "pino": ("20", "30", "40", "50", "60"),
    "structlog": ("debug", "info", "warning", "error", "critical"),
}

# (owner, level, weight, template); owner None: every service, "http": all but the worker.
TEMPLATES: Final[tuple[tuple[str | None, int, float, str], ...]] = (
    (None, DEBUG, 3, "cache hit for key {cache_key}"),
    (None, DEBUG, 2, "cache miss for key {cache_key}"),
    (None, DEBUG, 3, "db query took {ms} ms"),
    (None, DEBUG, 0.5, "opened connection to {dbhost}"),
    ("http", INFO, 6, "{method} {route} {status} {ms}ms"),
    (None, INFO, 1, "health check ok"),
    (None, WARN, 2, "slow query took {slow_ms} ms"),
    (None, WARN, 2, "retrying request to {upstream} (attempt {attempt})"),
    (None, WARN, 1, "rate limit approaching for client {ip}"),
    (None, ERROR, 3, "upstream {upstream} returned {status5}"),
    (None, ERROR, 2, "request failed: {errcode}"),
    (None, ERROR, 1.5, "unhandled exception in {route}: {exc}"),
    (None, FATAL, 1, "out of memory, shutting down"),
    (None, FATAL, 1, "cannot connect to database {dbhost} after {attempt} attempts, exiting"),
    ("api", INFO, 3, "user {user_id} fetched order {uuid}"),
    ("api", INFO, 1.5, "order {uuid} created for user {user_id}: {amount} {currency}"),
    ("api", WARN, 0.5, "request body too large from {ip}"),
    ("auth", INFO, 5, "user {user_id} logged in from {ip}"),
    ("auth", INFO, 3, "issued token for user {user_id}, expires in {ttl}s"),
    ("auth", INFO, 2, "session {uuid} refreshed"),
    ("auth", INFO, 1, "user {user_id} logged out"),
    ("auth", WARN, 4, "failed login for user {user_id} from {ip} ({attempt} attempts)"),
    ("auth", WARN, 1, "invalid token signature from {ip}"),
    ("auth", ERROR, 2, "identity provider timeout after {slow_ms} ms"),
    ("billing", INFO, 5, "payment {uuid} authorized: {amount} {currency}"),
    ("billing", INFO, 2, "invoice {invoice} sent to user {user_id}"),
    ("billing", INFO, 0.5, "refund {uuid} issued: {amount} {currency}"),
    ("billing", WARN, 2, "payment {uuid} requires 3DS verification"),
    ("billing", ERROR, 5, "payment {uuid} failed: {reason}"),
    ("billing", ERROR, 1, "webhook from {psp} rejected: signature mismatch"),
    ("search", INFO, 6, 'query "{query}" returned {count} hits in {ms} ms'),
    ("search", INFO, 0.5, "reindexed {count} documents"),
    ("search", WARN, 3, 'query "{query}" took {slow_ms} ms'),
    ("search", ERROR, 3, "search backend {upstream} unavailable"),
    ("worker", DEBUG, 4, "heartbeat from {worker_id}"),
    ("worker", INFO, 5, "job {job} {uuid} completed in {ms} ms"),
    ("worker", INFO, 4, "picked up job {job} from queue {queue}"),
    ("worker", INFO, 1, "scheduled {count} jobs"),
    ("worker", WARN, 3, "job {job} {uuid} retry {attempt}/5"),
    ("worker", ERROR, 3, "job {job} {uuid} failed: {exc}"),
)

STACKS: Final = {
    "js": (
        "TypeError: Cannot read properties of undefined (reading 'id')\n    at OrderService.get "
        "(/app/src/services/order.js:88:31)\n    at async Router.handle (/app/src/router.js:41:5)",
        "Error: connect ECONNREFUSED 10.0.3.7:5432\n    at TCPConnectWrap.afterConnect [as "
        "oncomplete] (node:net:1607:16)",
        "Error: socket hang up\n    at connResetException (node:internal/errors:787:14)\n    at "
        "TLSSocket.socketOnEnd (node:_http_client:519:23)",
    ),
    "py": (
        'Traceback (most recent call last):\n  File "/app/billing/payments.py", line 88, in charge'
        "\n    resp = client.post(url, json=payload)\nhttpx.ReadTimeout: timed out",
        'Traceback (most recent call last):\n  File "/app/search/query.py", line 142, in run\n    '
        "hits = self.backend.search(q)\nKeyError: 'hits'",
        'Traceback (most recent call last):\n  File "/app/worker/jobs.py", line 57, in execute\n'
        "    row = session.execute(stmt).one()\nsqlalchemy.exc.NoResultFound: No row was found",
    ),
}

_PROFILES: Final = {
    # service: (volume, P(debug, info, warn, error, fatal), loggers)
    "api": (0.34, (0.12, 0.76, 0.08, 0.035, 0.0004), ("api.http", "api.orders", "api.db")),
    "auth": (0.14, (0.1, 0.75, 0.11, 0.035, 0.0004), ("auth.session", "auth.tokens", "auth.http")),
    "billing": (0.1, (0.1, 0.78, 0.07, 0.045, 0.0004),
                ("billing.payments", "billing.invoices", "billing.webhooks")),
    "search": (0.22, (0.12, 0.76, 0.09, 0.03, 0.0004),
               ("search.query", "search.index", "search.http")),
    "worker": (0.2, (0.3, 0.6, 0.07, 0.03, 0.0003),
               ("worker.jobs", "worker.scheduler", "worker.queue")),
}  # fmt: skip


def service_profile(name: str) -> tuple[float, tuple[float, ...], tuple[str, ...]]:
    """(volume weight, level probabilities, logger names) of a service."""
    default = (
        0.15,
        (0.12, 0.76, 0.08, 0.035, 0.0004),
        (f"{name}.app", f"{name}.http", f"{name}.db"),
    )
    return _PROFILES.get(name, default)


def escaped(values: Sequence[str]) -> pa.StringArray:
    """JSON string bodies (without the quotes), as JS and Python loggers write them."""
    return strings([json.dumps(s, ensure_ascii=False)[1:-1] for s in values])


Gen = Callable[[np.random.Generator, int], pa.Array]


def _pool(values: Sequence[str], weights: Sequence[float] | None = None) -> Gen:
    arr = escaped(values)
    probs = list(weights) if weights is not None else [1.0] * len(values)
    return lambda rng, m: take(arr, choose(rng, m, probs))


def _lognormal(median: float, sigma: float) -> Gen:
    return lambda rng, m: int_strings(np.exp(rng.normal(np.log(median), sigma, m)).astype(np.int64))


def _ints(lo: int, hi: int, prefix: str = "") -> Gen:
    if not prefix:
        return lambda rng, m: int_strings(rng.integers(lo, hi, m))
    return lambda rng, m: join(prefix, int_strings(rng.integers(lo, hi, m)))


def uuid_strings(rng: np.random.Generator, m: int) -> pa.Array:
    """Version-4 UUIDs in bulk: random hex sliced into groups, version and variant set."""
    h = hex_strings(rng, m, 16)

    def part(a: int, b: int) -> pa.Array:
        return pc.utf8_slice_codeunits(h, a, b)

    variant = take(strings("89ab"), rng.integers(0, 4, m))
    return join(part(0, 8), "-", part(8, 12), "-4", part(13, 16), "-", variant, part(17, 20),
                "-", part(20, 32))  # fmt: skip


def _amount(rng: np.random.Generator, m: int) -> pa.Array:
    cents = np.exp(rng.normal(np.log(4_999), 0.9, m)).astype(np.int64) + 99
    return join(int_strings(cents // 100), ".", take(pad_digits(2), cents % 100))


@dataclass(frozen=True)
class VarTable:
    names: tuple[str, ...]  # slot type ids are 1 + index; 0 is "no slot"
    gens: tuple[Gen, ...]


# fmt: off
_ROUTES: Final = ("/api/v1/users/:id", "/api/v1/orders/:id", "/api/v1/orders", "/api/v1/cart/items",
                  "/api/v1/products", "/api/v1/payments", "/api/v2/search", "/graphql",
                  "/api/v1/auth/login", "/api/v1/me")
_POOLS: Final[dict[str, tuple[str, ...]]] = {
    "reason": ("card_declined", "insufficient_funds", "expired_card", "gateway timeout",
               "fraud suspected", "3ds authentication failed"),
    "errcode": ("ECONNRESET", "ETIMEDOUT", "ECONNREFUSED", "socket hang up", "EPIPE"),
    "exc": ("TypeError: Cannot read properties of undefined (reading 'id')",
            "KeyError: 'user_id'", "TimeoutError: operation timed out after 30s",
            'IntegrityError: duplicate key value violates unique constraint "orders_pkey"',
            "ValueError: invalid literal for int() with base 10: 'abc'"),
    "upstream": ("payments-gateway:443", "search-es-0:9200", "users-db:5432", "redis:6379",
                 "inventory:8080"),
    "dbhost": ("users-db.internal:5432", "orders-db.internal:5432", "redis.internal:6379"),
    "psp": ("stripe", "adyen", "paypal"),
    "job": ("send-email", "generate-invoice", "sync-inventory", "resize-image", "export-report",
            "cleanup-sessions"),
    "queue": ("default", "emails", "billing", "low-priority"),
    "worker_id": tuple(f"worker-{i}" for i in range(1, 17)),
}
_WEIGHTED: Final[dict[str, tuple[tuple[str, ...], tuple[float, ...]]]] = {
    "method": (("GET", "POST", "PUT", "DELETE", "PATCH"), (0.6, 0.25, 0.07, 0.05, 0.03)),
    "status": (("200", "201", "204", "304", "400", "401", "404"),
               (0.8, 0.06, 0.04, 0.03, 0.02, 0.02, 0.03)),
    "status5": (("502", "503", "504", "500"), (0.45, 0.3, 0.15, 0.1)),
    "ttl": (("900", "3600", "86400"), (0.6, 0.3, 0.1)),
    "currency": (("EUR", "USD", "GBP", "CHF"), (0.5, 0.35, 0.1, 0.05)),
    "route": (_ROUTES, tuple(1.0 / (i + 1) for i in range(len(_ROUTES)))),
}
# fmt: on


def build_vars(rng: np.random.Generator, ips: Sequence[str], queries: Sequence[str]) -> VarTable:
    """The generator of every variable type a template slot can name."""
    keys = [f"user:{u}" for u in rng.integers(1000, 250_000, 400)]
    keys += [f"product:SKU-{s:06d}" for s in rng.integers(0, 999_999, 200)]
    keys += [f"session:{rng.bytes(8).hex()}" for _ in range(200)]
    gens: dict[str, Gen] = {
        "ms": _lognormal(35.0, 1.0),
        "slow_ms": _lognormal(2_500.0, 0.4),
        "count": _lognormal(40.0, 1.2),
        "user_id": _ints(1000, 250_000),
        "attempt": _ints(1, 6),
        "invoice": _ints(100_000, 999_999, "INV-2026-"),
        "uuid": uuid_strings,
        "amount": _amount,
        "ip": _pool(ips),
        "query": _pool(queries),
        "cache_key": _pool(keys),
    }
    gens.update({name: _pool(values) for name, values in _POOLS.items()})
    gens.update({name: _pool(v, w) for name, (v, w) in _WEIGHTED.items()})
    return VarTable(tuple(gens), tuple(gens.values()))
