"""``GET /metrics``: the pipeline's state in the Prometheus text format.

Two sources. The state of the data (offsets, lags, horizon, freshness, the running
processes' heartbeat rates) is read from disk at each scrape by a custom collector --
``core.status.collect_status`` and the serving snapshot ``serving.merge.snapshot`` --
so the numbers are what ``loglambda status`` and a query would see at that moment,
whichever process produced them. What only this process knows (query latency and
errors) is kept in a histogram and a counter that the read API updates.

Each app has its own ``CollectorRegistry``: tests build many apps in one process, and
the global default registry would refuse the second histogram of the same name. With
``serve --workers N`` each worker answers for its own queries (a scrape reaches one of
them); the data-state metrics are the same from every worker.

Freshness: ``loglambda_freshness_seconds{partition}`` is an upper bound on how long the
oldest appended event the serving layer does not cover yet has been waiting: 0 when the
lag is 0, else the time since the speed layer last committed (or, if it never ran,
since the served batch version was made). The log does not record append times, so a
bound is what can be known without reading the events.
"""

from __future__ import annotations

import datetime as dt
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from typing import Any, Final

from fastapi import APIRouter, Depends, Response
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    CollectorRegistry,
    Counter,
    Histogram,
    disable_created_metrics,
)
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector

from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog
from loglambda.serving.api import read_access

RATE_WINDOW_S: Final = 60.0
# Query latency buckets, seconds: a cached dashboard answer takes milliseconds, a
# merge of a large minute view seconds, the default query time limit is 30 s.
LATENCY_BUCKETS: Final = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)


class ServingMetrics:
    """The registry of one app: query timings plus the collector of the data's state."""

    def __init__(self, settings: Settings, log: EventLog) -> None:
        # ``*_created`` series (a timestamp per label set) double the output and no
        # dashboard reads them; the switch is process-wide, and this app is the only
        # user of prometheus_client in a loglambda process.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry(auto_describe=True)
        self.query_seconds = Histogram(
            "loglambda_query_seconds",
            "Time to answer a read API request (SQL or a dashboard question), by endpoint.",
            ["endpoint"],
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.query_errors = Counter(
            "loglambda_query_errors",
            "Read API requests refused by the query engine, by endpoint and error.",
            ["endpoint", "error"],
            registry=self.registry,
        )
        self.registry.register(StateCollector(settings, log))

    @contextmanager
    def timed(self, endpoint: str) -> Iterator[None]:
        """Observe the time of the ``with`` block (also when it raises)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.query_seconds.labels(endpoint).observe(time.perf_counter() - started)

    def refused(self, endpoint: str, error: str) -> None:
        self.query_errors.labels(endpoint, error).inc()

    def render(self) -> bytes:
        text: bytes = generate_latest(self.registry)
        return text


class IngestRate:
    """Events appended per second and partition, from the log end offsets of recent
    scrapes: the rate of every front door together (HTTP, tail, Kafka, ...)."""

    def __init__(self, window_s: float = RATE_WINDOW_S) -> None:
        self.window_s = window_s
        self._samples: deque[tuple[float, dict[str, int]]] = deque()
        self._lock = threading.Lock()

    def update(self, now: float, ends: dict[str, int]) -> dict[str, float]:
        """Record this scrape's ends; the rates since the oldest sample kept (the newest
        one at least ``window_s`` old). Empty until a second scrape."""
        with self._lock:
            self._samples.append((now, dict(ends)))
            while len(self._samples) > 2 and self._samples[1][0] <= now - self.window_s:
                self._samples.popleft()
            t0, first = self._samples[0]
        if now <= t0:
            return {}
        return {p: max(0, end - first.get(p, 0)) / (now - t0) for p, end in ends.items()}


def _gauge(name: str, doc: str, labels: Iterable[str] = ()) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, labels=list(labels))


class StateCollector(Collector):
    """Reads the pipeline's state from disk at every scrape."""

    def __init__(self, settings: Settings, log: EventLog) -> None:
        self.settings = settings
        self.log = log
        self.rate = IngestRate()

    def describe(self) -> Iterable[Metric]:
        return []  # generated at scrape time; nothing to check at registration

    def collect(self) -> Iterable[Metric]:
        from loglambda.core.status import collect_status

        status = collect_status(self.settings, self.log)
        yield from self._log_metrics(status)
        yield from self._process_metrics(status["processes"])
        yield from self._serving_metrics()

    def _log_metrics(self, status: dict[str, Any]) -> Iterator[Metric]:
        end = _gauge("loglambda_log_end_offset", "Events appended to the partition.", ["partition"])
        pos = _gauge(
            "loglambda_consumer_position",
            "Committed position of a consumer of the event log.",
            ["consumer", "partition"],
        )
        lag = _gauge(
            "loglambda_consumer_lag",
            "Events a consumer of the event log has not committed yet.",
            ["consumer", "partition"],
        )
        horizon = _gauge(
            "loglambda_batch_horizon",
            "Offset below which the current batch version covers every event.",
            ["partition"],
        )
        ends: dict[str, int] = {}
        for p in status["partitions"]:
            name = p["partition"]
            ends[name] = p["end_offset"]
            end.add_metric([name], p["end_offset"])
            horizon.add_metric([name], p["batch_horizon"])
            for consumer, c in p["consumers"].items():
                pos.add_metric([consumer, name], c["committed"])
                lag.add_metric([consumer, name], c["lag"])
        rate = _gauge(
            "loglambda_ingest_events_per_second",
            f"Events appended per second over about the last {RATE_WINDOW_S:g} s of scrapes "
            "(absent until the second scrape).",
            ["partition"],
        )
        for name, value in sorted(self.rate.update(time.monotonic(), ends).items()):
            rate.add_metric([name], value)
        yield from (end, rate, pos, lag, horizon)
        batch, master = status["batch"], status["master"]
        version = _gauge("loglambda_batch_version", "The published (CURRENT) batch version.")
        if batch["version"] is not None:
            version.add_metric([], batch["version"])
        rows = _gauge("loglambda_master_rows", "Events in the master dataset.", ["kind"])
        for kind, n in master["rows"].items():
            rows.add_metric([kind], n)
        seq = _gauge("loglambda_master_seq", "Batches committed to the master dataset.")
        seq.add_metric([], master["seq"])
        yield from (version, rows, seq)

    def _process_metrics(self, processes: list[dict[str, Any]]) -> Iterator[Metric]:
        up = _gauge("loglambda_process_up", "A pipeline process is running.", ["process"])
        age = _gauge(
            "loglambda_process_heartbeat_age_seconds",
            "Seconds since the process last wrote its heartbeat.",
            ["process"],
        )
        rates = _gauge(
            "loglambda_process_rate_per_second",
            "A running process's counters per second over its last minute.",
            ["process", "counter"],
        )
        for p in processes:
            up.add_metric([p["name"]], 1 if p["alive"] else 0)
            age.add_metric([p["name"]], p["age_s"])
            if p["alive"]:  # a dead process's last rate would be a lie
                for counter, value in sorted(p["rates_per_s"].items()):
                    rates.add_metric([p["name"], counter], value)
        yield from (up, age, rates)

    def _serving_metrics(self) -> Iterator[Metric]:
        from loglambda.serving.merge import IncompleteData, snapshot

        complete = _gauge(
            "loglambda_serving_complete",
            "1 when the serving layer can answer exactly; 0 when queries would be refused "
            "(speed partials not contiguous, served batch version gone).",
        )
        try:
            snap = snapshot(self.settings.home, self.log)
        except IncompleteData:
            complete.add_metric([], 0)
            yield complete
            return
        complete.add_metric([], 1)
        f = snap.freshness
        served = _gauge(
            "loglambda_served_batch_version",
            "The batch version queries are answered from (the one the speed partials "
            "were cut against).",
        )
        if f.batch_version is not None:
            served.add_metric([], f.batch_version)
        position = _gauge(
            "loglambda_speed_position",
            "Offset below which query answers cover every event (batch + speed).",
            ["partition"],
        )
        lag = _gauge(
            "loglambda_serving_lag",
            "Events appended that query answers do not cover yet.",
            ["partition"],
        )
        fresh = _gauge(
            "loglambda_freshness_seconds",
            "Upper bound on how long the oldest event not yet covered by query answers "
            "has been waiting (0: every appended event is covered).",
            ["partition"],
        )
        now = time.time()
        since = f.speed_updated_at or _created_at(snap)
        for partition in sorted({*f.positions, *f.lag}):
            position.add_metric([partition], f.positions.get(partition, 0))
            behind = f.lag.get(partition)
            if behind is None:
                continue
            lag.add_metric([partition], behind)
            if behind == 0:
                fresh.add_metric([partition], 0.0)
            elif since is not None:
                fresh.add_metric([partition], max(0.0, now - since))
        age = _gauge("loglambda_batch_age_seconds", "Age of the served batch version.")
        created = _created_at(snap)
        if created is not None:
            age.add_metric([], max(0.0, now - created))
        yield from (complete, served, position, lag, fresh, age)


def _created_at(snap: Any) -> float | None:
    if snap.record is None:
        return None
    try:
        return dt.datetime.fromisoformat(snap.record.created_at).timestamp()
    except ValueError:
        return None


def metrics_router(metrics: ServingMetrics) -> APIRouter:
    """``GET /metrics`` (read scope when tokens are configured)."""
    router = APIRouter()

    @router.get(
        "/metrics",
        summary="Prometheus metrics: offsets, lags, horizon, freshness, query latency",
        dependencies=[Depends(read_access)],
        response_class=Response,
        responses={
            200: {"content": {"text/plain": {"schema": {"type": "string"}}}},
            401: {"description": "No token, or an unknown one"},
            403: {"description": "The token lacks the read scope"},
        },
    )
    def prometheus_metrics() -> Response:
        return Response(metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
