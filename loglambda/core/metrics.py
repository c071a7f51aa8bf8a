"""Heartbeats of long-running processes, for ``loglambda status`` and ``/metrics``.

Each process (master writer, tailer, HTTP server, speed driver) owns one small JSON
file ``$LOGLAMBDA_HOME/run/<name>.json`` with its pid, counters and recent rates,
rewritten at most once per ``every_s``. A file is replaced by rename (readers see the
old or the new one) but never fsynced: it describes a live process, and after a
crash the pid check in ``read_stats`` says the process is gone anyway.
"""

from __future__ import annotations

import os
import time
from collections import deque
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson

RATE_WINDOW_S: Final = 60.0


class ProcessStats:
    """Counters of one process, flushed to its run file now and then."""

    def __init__(self, home: Path, name: str, *, every_s: float = 1.0) -> None:
        self.path = Path(home) / "run" / f"{name}.json"
        self.name = name
        self.every_s = every_s
        self.started_at = time.time()
        self.counters: dict[str, int] = {}
        self.values: dict[str, Any] = {}
        self._history: deque[tuple[float, dict[str, int]]] = deque()
        self._flushed = 0.0

    def add(self, counter: str, n: int = 1) -> None:
        self.counters[counter] = self.counters.get(counter, 0) + n

    def set(self, key: str, value: Any) -> None:
        self.values[key] = value

    def rates(self, now: float) -> dict[str, float]:
        """Per-second rate of every counter over the last minute."""
        self._history.append((now, dict(self.counters)))
        while len(self._history) > 2 and now - self._history[0][0] > RATE_WINDOW_S:
            self._history.popleft()
        t0, first = self._history[0]
        span = now - t0
        if span <= 0:
            return {k: 0.0 for k in self.counters}
        return {k: (v - first.get(k, 0)) / span for k, v in self.counters.items()}

    def flush(self, *, force: bool = False, state: str = "running") -> None:
        now = time.time()
        if not force and now - self._flushed < self.every_s:
            return
        self._flushed = now
        doc = {
            "name": self.name,
            "pid": os.getpid(),
            "state": state,
            "started_at": self.started_at,
            "updated_at": now,
            "counters": self.counters,
            "rates_per_s": {k: round(v, 1) for k, v in self.rates(now).items()},
            **self.values,
        }
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(orjson.dumps(doc))
        os.replace(tmp, self.path)


@dataclass(frozen=True)
class ProcessInfo:
    """A run file as ``status`` shows it."""

    name: str
    alive: bool
    state: str
    doc: dict[str, Any]


def read_stats(home: Path) -> list[ProcessInfo]:
    """Every process run file under ``home``, with whether its pid is still alive."""
    run = Path(home) / "run"
    out: list[ProcessInfo] = []
    if not run.is_dir():
        return out
    for path in sorted(run.glob("*.json")):
        try:
            doc = orjson.loads(path.read_bytes())
        except (OSError, orjson.JSONDecodeError):
            continue  # being replaced right now, or garbage: not worth failing status
        alive = doc.get("state") == "running" and _pid_alive(int(doc.get("pid", -1)))
        state = str(doc.get("state", "?")) if alive or doc.get("state") != "running" else "dead"
        out.append(ProcessInfo(path.stem, alive, state, doc))
    return out


def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    return True
