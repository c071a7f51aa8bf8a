"""The HTTP application: a thin composition of routers over one event log.

``create_app(settings)`` builds the FastAPI app that ``loglambda serve`` runs. Each
feature is an ``APIRouter`` made by its own module (ingest today; queries and the
dashboard later) and included here; this module only wires shared state:

* ``app.state.settings`` -- the ``Settings`` the app was made from;
* ``app.state.tokens`` -- the ``TokenStore`` (``serving.auth``; empty = auth off);
* ``app.state.event_log`` -- the one ``EventLog`` every route appends to / reads;
* every response carries ``X-Request-Id``; ingest records it as the events' source
  (``http:<id>``), so a report, a log line and a stored event can be matched up.

``GET /healthz`` needs no token: load balancers and ``serve``'s own startup check use
it. It says the process is up and the event log answers.
"""

from __future__ import annotations

from importlib import metadata
from typing import Any, Final

import orjson
from fastapi import APIRouter, FastAPI, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog, open_event_log
from loglambda.ingest.http import IngestLimits, ingest_router, new_request_id
from loglambda.serving.api import api_router
from loglambda.serving.auth import TokenStore
from loglambda.serving.dashboard import dashboard_router
from loglambda.serving.prometheus import ServingMetrics, metrics_router

try:
    __version__: Final = metadata.version("loglambda")
except metadata.PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0+unknown"  # type: ignore[misc]


def create_app(
    settings: Settings,
    *,
    tokens: TokenStore | None = None,
    limits: IngestLimits | None = None,
    event_log: EventLog | None = None,
) -> FastAPI:
    """The app over ``settings``' event log. ``tokens`` default to none (auth off, for
    loopback use), ``limits`` to ``IngestLimits()``; ``event_log`` replaces the log the
    settings name (tests use it to make the log slow)."""
    log = event_log if event_log is not None else open_event_log(settings)
    app = FastAPI(
        title="loglambda",
        version=__version__,
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.tokens = tokens if tokens is not None else TokenStore()
    app.state.event_log = log
    app.include_router(health_router(log))
    app.include_router(ingest_router(settings, log, limits or IngestLimits()))
    metrics = ServingMetrics(settings, log)
    app.state.metrics = metrics
    app.include_router(api_router(settings, log, metrics))
    app.include_router(metrics_router(metrics))
    app.include_router(dashboard_router())
    app.add_middleware(RequestIdMiddleware)
    return app


def health_router(log: EventLog) -> APIRouter:
    router = APIRouter()

    @router.get("/healthz", summary="Liveness: the process is up and the log answers")
    def healthz() -> Response:
        ends: dict[str, Any] = {}
        for kind in ("traffic", "logs"):
            for partition in log.partitions(kind):
                ends[partition] = log.end_offset(kind, partition)
        body = {"status": "ok", "version": __version__, "end_offsets": ends}
        return Response(orjson.dumps(body), media_type="application/json")

    return router


class RequestIdMiddleware:
    """Gives each HTTP request an id (``request.state.request_id``) and returns it as
    ``X-Request-Id``. Plain ASGI: no per-request task or body buffering."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = new_request_id()
        scope.setdefault("state", {})["request_id"] = rid
        header = (b"x-request-id", rid.encode())

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", ()), header]
            await send(message)

        await self.app(scope, receive, send_with_id)
