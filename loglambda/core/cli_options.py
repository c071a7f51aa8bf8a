"""What every command shares: the ``--home`` option, env-backed flags, clean stops.

Every flag is also an env var (``LOGLAMBDA_<NAME>``, shown in ``--help``), and every
long-running command stops the same way: SIGINT or SIGTERM sets a flag, the command
finishes the unit of work in hand (a batch, a slice), commits, and exits 0.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

import click

HOME_OPTION = click.option(
    "--home",
    envvar="LOGLAMBDA_HOME",
    show_envvar=True,
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Data directory (default ./loglambda-data).",
)


def env_option(name: str, env: str, *decls: str, **kw: Any) -> Callable[[Any], Any]:
    """A flag backed by the env var ``LOGLAMBDA_<env>`` (``decls``: more names, such as
    the parameter's)."""
    return click.option(name, *decls, envvar=f"LOGLAMBDA_{env}", show_envvar=True, **kw)


@contextlib.contextmanager
def stop_on_signals(
    on_stop: Callable[[int], None] | None = None,
) -> Iterator[Callable[[], bool]]:
    """Within the block, SIGINT/SIGTERM only request a stop; yields ``should_stop()``.
    The previous handlers come back afterwards (tests run commands in-process)."""
    received: list[int] = []

    def handler(signum: int, _frame: FrameType | None) -> None:
        received.append(signum)
        if on_stop is not None:
            on_stop(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield lambda: bool(received)
    finally:
        for signum, old in previous.items():
            signal.signal(signum, old)
