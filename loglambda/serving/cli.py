"""``loglambda serve``: run the HTTP app (ingest, queries, metrics, dashboard) with uvicorn.

One process, one event loop; parsing and appending run in worker threads, and the
local event log serialises appends across processes, so ``serve`` and ``tail`` can
write to the same home at once.

Binding: the command binds the socket itself (``--port 0`` picks a free port) and
prints the URL it actually serves, so scripts and tests can read it. Without tokens
authentication is off, which is only acceptable where nobody else can connect: a
non-loopback ``--host`` then needs ``--insecure`` (or tokens).
"""

from __future__ import annotations

import dataclasses
import json
import os
import re
import socket
import sys
from pathlib import Path
from typing import Any, Final

import click

from loglambda.core.cli import HOME_OPTION
from loglambda.core.config import Settings

_WORKER_ENV: Final = "LOGLAMBDA_SERVE_WORKER_SPEC"
_SIZE_RE: Final = re.compile(r"^\s*([0-9]+)\s*([kmg]?)(?:i?b)?\s*$", re.IGNORECASE)


class ByteSize(click.ParamType):  # type: ignore[type-arg]
    """A size in bytes: ``16777216``, ``16M``, ``16MiB`` (powers of 1024)."""

    name = "size"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> int:
        if isinstance(value, int):
            return value
        m = _SIZE_RE.match(str(value))
        if not m:
            self.fail(f"{value!r} is not a size like 16777216, 16M or 16MiB", param, ctx)
        return int(m.group(1)) << {"": 0, "k": 10, "m": 20, "g": 30}[m.group(2).lower()]


@click.command("serve")
@click.option(
    "--host",
    envvar="LOGLAMBDA_HOST",
    show_envvar=True,
    default="127.0.0.1",
    help="Address to listen on.",
)
@click.option(
    "--port",
    envvar="LOGLAMBDA_PORT",
    show_envvar=True,
    type=click.IntRange(0, 65535),
    default=8080,
    help="0: any.",
)
@HOME_OPTION
@click.option(
    "--tokens-file",
    envvar="LOGLAMBDA_TOKENS_FILE",
    show_envvar=True,
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="File of 'token:scope[+scope]' lines (scopes: read, write). Tokens may also "
    "come from LOGLAMBDA_TOKENS='tok1:write,tok2:read' (env only: a flag would show "
    "them in `ps`).",
)
@click.option(
    "--insecure",
    envvar="LOGLAMBDA_INSECURE",
    show_envvar=True,
    is_flag=True,
    help="Allow a non-loopback --host without any token (anyone who can connect writes).",
)
@click.option(
    "--max-body",
    envvar="LOGLAMBDA_MAX_BODY",
    show_envvar=True,
    type=ByteSize(),
    default="16MiB",
    help="Per request.",
)
@click.option(
    "--max-in-flight",
    envvar="LOGLAMBDA_MAX_IN_FLIGHT",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=4,
    help="Requests parsed and appended at once.",
)
@click.option(
    "--max-queued",
    envvar="LOGLAMBDA_MAX_QUEUED",
    show_envvar=True,
    type=click.IntRange(min=0),
    default=64,
    help="Requests waiting for a turn; beyond that: 429.",
)
@click.option(
    "--queue-timeout",
    envvar="LOGLAMBDA_QUEUE_TIMEOUT",
    show_envvar=True,
    type=click.FloatRange(min=0),
    default=10.0,
    help="Seconds a request may wait for a turn before 429.",
)
@click.option(
    "--workers",
    envvar="LOGLAMBDA_WORKERS",
    show_envvar=True,
    type=click.IntRange(min=1),
    default=1,
    help="Server processes sharing the socket (limits apply per process).",
)
@click.option(
    "--access-log/--no-access-log", envvar="LOGLAMBDA_ACCESS_LOG", show_envvar=True, default=False
)
def serve_cmd(
    host: str,
    port: int,
    home: Path | None,
    tokens_file: Path | None,
    insecure: bool,
    max_body: int,
    max_in_flight: int,
    max_queued: int,
    queue_timeout: float,
    workers: int,
    access_log: bool,
) -> None:
    """Serve the HTTP app: POST /v1/ingest, POST /v1/query, GET /v1/views,
    /v1/dashboard/*, /metrics, the dashboard at /dashboard/, /healthz, /openapi.json."""
    import uvicorn

    from loglambda.ingest.http import IngestLimits
    from loglambda.serving.app import create_app
    from loglambda.serving.auth import TokenStore, describe, loopback_only

    settings = Settings.load(home)
    try:
        tokens = TokenStore.load(os.environ.get("LOGLAMBDA_TOKENS"), tokens_file)
        limits = IngestLimits(
            max_body=max_body,
            max_in_flight=max_in_flight,
            max_queued=max_queued,
            queue_timeout_s=queue_timeout,
        )
    except ValueError as err:
        raise click.UsageError(str(err)) from err
    infos = _resolve(host, port)
    if not tokens.enabled and not insecure and not loopback_only(i[4][0] for i in infos):
        raise click.UsageError(
            f"--host {host} is reachable from other machines and no token is configured: "
            "set LOGLAMBDA_TOKENS or --tokens-file, or pass --insecure to accept "
            "unauthenticated writes"
        )
    sock = _bind(infos[0])
    bound_host, bound_port = sock.getsockname()[:2]
    shown = f"[{bound_host}]" if ":" in bound_host else bound_host
    click.echo(
        f"loglambda serve: listening on http://{shown}:{bound_port} "
        f"(home {settings.home}, {describe(tokens)}"
        + (f", {workers} workers)" if workers > 1 else ")")
    )
    if not tokens.enabled:
        click.echo("warning: no tokens, so anyone who can connect can write", err=True)
    sys.stdout.flush()
    options: dict[str, Any] = {
        "log_level": "warning",
        "access_log": access_log,
        "lifespan": "off",
        "server_header": False,
        "timeout_graceful_shutdown": 30,
    }
    if workers == 1:
        app = create_app(settings, tokens=tokens, limits=limits)
        # uvicorn handles SIGINT/SIGTERM: stop accepting, let in-flight appends finish.
        uvicorn.Server(uvicorn.Config(app, **options)).run(sockets=[sock])
        return
    from uvicorn.supervisors import Multiprocess

    # Spawned workers rebuild the app from what this process resolved (the tokens
    # themselves travel in the inherited LOGLAMBDA_TOKENS, never on a command line).
    os.environ[_WORKER_ENV] = json.dumps(
        {
            "home": str(settings.home),
            "tokens_file": str(tokens_file) if tokens_file else None,
            "limits": dataclasses.asdict(limits),
        }
    )
    config = uvicorn.Config(f"{__name__}:worker_app", factory=True, workers=workers, **options)
    Multiprocess(config, sockets=[sock]).run()


def worker_app() -> Any:
    """The app of one ``serve --workers N`` process (uvicorn calls this in each)."""
    from loglambda.ingest.http import IngestLimits
    from loglambda.serving.app import create_app
    from loglambda.serving.auth import TokenStore

    spec = json.loads(os.environ[_WORKER_ENV])
    tokens_file = Path(spec["tokens_file"]) if spec["tokens_file"] else None
    tokens = TokenStore.load(os.environ.get("LOGLAMBDA_TOKENS"), tokens_file)
    limits = IngestLimits(**spec["limits"])
    return create_app(Settings.load(spec["home"]), tokens=tokens, limits=limits)


def _resolve(host: str, port: int) -> list[Any]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as err:
        raise click.UsageError(f"--host {host}: {err}") from err
    if not infos:
        raise click.UsageError(f"--host {host} resolves to no address")
    return infos


def _bind(info: Any) -> socket.socket:
    family, kind, proto, _, address = info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(address)
    except OSError as err:
        sock.close()
        raise click.ClickException(f"cannot listen on {address[0]}:{address[1]}: {err}") from err
    # Listening before the banner is printed: a client that read the URL can connect
    # at once (the kernel queues it until uvicorn accepts), never "refused".
    sock.listen(2048)
    return sock
