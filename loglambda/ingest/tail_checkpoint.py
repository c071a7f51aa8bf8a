"""Checkpoints of ``loglambda tail``: what each followed path has delivered, and the
batch in flight.

One JSON file per followed path, ``$LOGLAMBDA_HOME/tail/<sha256(path)[:16]>.json``,
replaced atomically (``write_atomic``) after every step, plus a ``.lock`` beside it that
the tailer holds (``flock``) for as long as it follows the path, so two tailers can never
deliver the same file twice. The rules the values obey are in ``loglambda.ingest.tail``;
this module only stores them and answers "did that batch reach the log?".
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.compute as pc

from loglambda.core.durable import write_atomic
from loglambda.core.eventlog import EventLog
from loglambda.core.schemas import KINDS, Kind

FORMAT_VERSION: Final = 1
# Bytes at the start of a file whose hash is part of its identity: with (dev, inode) it
# tells a file apart from a later one that reuses the inode or was truncated and
# rewritten. Filebeat's fingerprint mode hashes the same 1 KiB.
FINGERPRINT_BYTES: Final = 1024
SCAN_RECORDS: Final = 65_536


class TailError(Exception):
    """A path cannot be followed (busy, unreadable, unknown format): say why."""


@dataclass(frozen=True)
class Identity:
    """Which file a generation is: device and inode, plus the hash of its first
    ``fp_len`` bytes (``fp_len`` grows to FINGERPRINT_BYTES as the file does)."""

    dev: int
    ino: int
    fp_len: int
    fp: str


@dataclass(frozen=True)
class Generation:
    """One file that lived at the followed path: the unit of provenance.

    ``position`` is the offset just past the last newline delivered (the first byte
    not yet delivered); ``line`` is the 1-based number of the line starting there.
    """

    number: int
    source: str
    identity: Identity
    position: int
    line: int
    fmt: str | None  # the parser, fixed at the generation's first batch
    gz: bool
    rotated: bool  # no longer at the path: being drained through its open file
    finished: bool  # read to its end, last partial line included; nothing more comes


@dataclass(frozen=True)
class Intent:
    """The batch being delivered: bytes ``[start, end)`` of ``generation``, lines
    ``[line_start, line_end)``; ``log_ends`` are the partitions' end offsets before the
    append, so the batch's events, if appended, are at or past them."""

    generation: int
    start: int
    end: int
    line_start: int
    line_end: int
    oversize: bool  # the range is one line longer than a batch, quarantined whole
    kind: Kind
    log_ends: Mapping[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class PathState:
    """Everything a tailer knows about one followed path."""

    path: str
    next_generation: int
    generations: tuple[Generation, ...]
    intent: Intent | None
    # The format --format auto last detected at this path: the fallback for a later
    # file whose first lines match no format.
    last_format: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "version": FORMAT_VERSION,
            "path": self.path,
            "next_generation": self.next_generation,
            "last_format": self.last_format,
            "generations": [
                {
                    "number": g.number,
                    "source": g.source,
                    "dev": g.identity.dev,
                    "ino": g.identity.ino,
                    "fp_len": g.identity.fp_len,
                    "fp": g.identity.fp,
                    "position": g.position,
                    "line": g.line,
                    "format": g.fmt,
                    "gz": g.gz,
                    "rotated": g.rotated,
                    "finished": g.finished,
                }
                for g in self.generations
            ],
            "intent": None
            if self.intent is None
            else {
                "generation": self.intent.generation,
                "start": self.intent.start,
                "end": self.intent.end,
                "line_start": self.intent.line_start,
                "line_end": self.intent.line_end,
                "oversize": self.intent.oversize,
                "kind": self.intent.kind,
                "log_ends": dict(self.intent.log_ends),
            },
        }

    @staticmethod
    def from_json(data: Mapping[str, Any]) -> PathState:
        if data.get("version") != FORMAT_VERSION:
            raise TailError(f"tail checkpoint version {data.get('version')!r} is not supported")
        gens = tuple(
            Generation(
                number=int(g["number"]),
                source=str(g["source"]),
                identity=Identity(int(g["dev"]), int(g["ino"]), int(g["fp_len"]), str(g["fp"])),
                position=int(g["position"]),
                line=int(g["line"]),
                fmt=g["format"],
                gz=bool(g["gz"]),
                rotated=bool(g["rotated"]),
                finished=bool(g["finished"]),
            )
            for g in data["generations"]
        )
        raw = data.get("intent")
        intent = None
        if raw is not None:
            if raw["kind"] not in KINDS:
                raise TailError(f"tail checkpoint names unknown kind {raw['kind']!r}")
            intent = Intent(
                generation=int(raw["generation"]),
                start=int(raw["start"]),
                end=int(raw["end"]),
                line_start=int(raw["line_start"]),
                line_end=int(raw["line_end"]),
                oversize=bool(raw["oversize"]),
                kind=raw["kind"],
                log_ends={str(k): int(v) for k, v in raw["log_ends"].items()},
            )
        return PathState(
            str(data["path"]),
            int(data["next_generation"]),
            gens,
            intent,
            data.get("last_format"),
        )


def fingerprint(head: bytes) -> str:
    return hashlib.sha256(head).hexdigest()


def source_name(path: str, number: int, ino: int) -> str:
    """The provenance ``source`` of a generation: ``/abs/path#g<generation>-i<inode>``.

    The generation number makes it unique (after a rotation or a truncation offsets
    restart at 0 under the same path, and an inode can be reused); the inode is there
    for people, to match a source with ``ls -i`` of the rotated files."""
    return f"{path}#g{number}-i{ino}"


class CheckpointStore:
    """The ``tail/`` directory of a home: one checkpoint and one lock per path."""

    def __init__(self, home: Path) -> None:
        self.root = Path(home) / "tail"

    def _stem(self, path: str) -> Path:
        return self.root / hashlib.sha256(path.encode()).hexdigest()[:16]

    def checkpoint_path(self, path: str) -> Path:
        return self._stem(path).with_suffix(".json")

    def lock(self, path: str) -> int:
        """Take the path's lock for this process (released when the fd is closed or
        the process dies); raise TailError if another tailer holds it."""
        self.root.mkdir(parents=True, exist_ok=True)
        lock_path = self._stem(path).with_suffix(".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as err:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            if err.errno in (errno.EWOULDBLOCK, errno.EACCES):
                raise TailError(
                    f"{path} is already followed by another loglambda tail "
                    f"(pid {holder}, lock {lock_path})"
                ) from None
            raise
        # The pid is only for the message above; the flock is what excludes.
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        return fd

    @staticmethod
    def unlock(fd: int) -> None:
        with contextlib.suppress(OSError):
            os.close(fd)

    def load(self, path: str) -> PathState | None:
        try:
            raw = self.checkpoint_path(path).read_bytes()
        except FileNotFoundError:
            return None
        state = PathState.from_json(json.loads(raw))
        if state.path != path:  # a 64-bit hash collision: refuse rather than mix paths
            raise TailError(f"checkpoint {self.checkpoint_path(path)} belongs to {state.path}")
        return state

    def save(self, state: PathState) -> None:
        data = json.dumps(state.to_json(), indent=1).encode() + b"\n"
        write_atomic(self.checkpoint_path(state.path), data, overwrite=True)


def batch_in_log(log: EventLog, intent: Intent, source: str) -> bool:
    """Whether any event of the intent's batch is in the log at or past its
    ``log_ends``: appends are all-or-nothing, so one event means all of them.

    An event belongs to the batch when its ``source`` is the generation's and its
    ``source_offset`` lies in ``[start, end)``. Nothing else can match: every earlier
    batch of the generation covers bytes below ``start``, and no later one was
    started while this intent was open.
    """
    for partition, since in sorted(intent.log_ends.items()):
        position = since
        end = log.end_offset(intent.kind, partition)
        while position < end:
            chunk = log.read(intent.kind, partition, position, SCAN_RECORDS)
            if chunk.end == position:
                break
            events = chunk.events
            hit = pc.and_(
                pc.equal(events["source"], pa.scalar(source)),
                pc.and_(
                    pc.greater_equal(events["source_offset"], intent.start),
                    pc.less(events["source_offset"], intent.end),
                ),
            )
            if pc.any(hit).as_py():
                return True
            position = chunk.end
    return False
