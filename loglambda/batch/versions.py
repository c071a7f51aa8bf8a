"""Versioned, atomically published batch views: the store the serving layer reads.

A batch run never modifies what readers use. It writes a complete new version beside
the old ones, then moves one pointer. Layout under ``$LOGLAMBDA_HOME/views``::

    <view>/v=<n>/part-0.parquet    the rows of one view in version n (immutable)
    versions/<n>.json              the record of every kept version (status, rollback)
    CURRENT                        a copy of the record readers use, swapped atomically
    _tmp/<n>-<pid>/<view>/...      output of a run still in progress (or of a crash)
    .lock                          held by the one process changing the store

Why a pointer file: readers load CURRENT once and use only the paths it names, so they
see the old version or the new, never a mix, and a crashed run (CURRENT untouched)
is invisible to them. File paths in records are relative to ``views/`` so a data
directory can be moved. Version numbers only increase: a rollback moves CURRENT back
but the next run still takes a new, higher number, so "version 7" always means one
set of bytes. Parquet is written like the master dataset: INT64 UTC microseconds
(never INT96), zstd.
"""

from __future__ import annotations

import builtins
import contextlib
import fcntl
import json
import os
import re
import shutil
import threading
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import pyarrow as pa
import pyarrow.parquet as pq

from loglambda.batch.partition_writer import PARQUET_OPTIONS
from loglambda.core.durable import fsync_path, fsync_tree, write_atomic

PART_NAME: Final = "part-0.parquet"
_VIEW_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")
_RESERVED: Final = frozenset({"versions", "current"})


class VersionError(Exception):
    """A version-store operation that cannot be done (explains why)."""


class StoreBusyError(VersionError):
    """Another process holds the store's lock (a batch run, rollback or prune)."""


@dataclass(frozen=True)
class Horizon:
    """What a version covers: master manifest entries up to ``master_seq``, and per
    event-log partition every event with offset < ``offsets[partition]``."""

    master_seq: int
    offsets: dict[str, int] = field(default_factory=dict)

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> Horizon:
        return Horizon(int(d["master_seq"]), {str(k): int(v) for k, v in d["offsets"].items()})

    def describe(self) -> str:
        offsets = " ".join(f"{p}<{o}" for p, o in sorted(self.offsets.items()))
        return f"master_seq={self.master_seq}" + (f" offsets {offsets}" if offsets else "")


@dataclass(frozen=True)
class ViewVersion:
    """One view inside a version: its rows and files (relative to ``views/``).

    ``built_in`` is the version that computed the files: a view carried over by a
    partial run keeps pointing at the files of the version it came from.
    """

    rows: int
    files: tuple[str, ...]
    built_in: int
    seconds: float

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> ViewVersion:
        return ViewVersion(**{**d, "files": tuple(d["files"])})


@dataclass(frozen=True)
class VersionRecord:
    """Everything a reader, ``batch status`` and ``rollback`` need about one version."""

    version: int
    horizon: Horizon
    created_at: str  # ISO-8601 UTC
    duration_s: float
    engine: str
    views: dict[str, ViewVersion]

    @property
    def rows(self) -> int:
        return sum(v.rows for v in self.views.values())

    def to_json(self) -> dict[str, Any]:
        # master_seq is repeated at the top level for people reading CURRENT by eye.
        return {**asdict(self), "master_seq": self.horizon.master_seq}

    @staticmethod
    def from_json(d: Mapping[str, Any]) -> VersionRecord:
        plain = {k: v for k, v in d.items() if k != "master_seq"}
        views = {n: ViewVersion.from_json(v) for n, v in d["views"].items()}
        return VersionRecord(
            **{**plain, "horizon": Horizon.from_json(d["horizon"]), "views": views}
        )


@dataclass
class PendingVersion:
    """A version being written under ``_tmp``; invisible until ``VersionStore.publish``."""

    number: int
    tmp: Path
    views: dict[str, ViewVersion] = field(default_factory=dict)
    cleaned: list[str] = field(default_factory=list)

    def write_view(self, name: str, table: pa.Table, seconds: float = 0.0) -> ViewVersion:
        """Write one view's rows (fsynced) into the temp directory."""
        check_view_name(name)
        out = self.tmp / name
        out.mkdir(parents=True, exist_ok=True)
        with open(out / PART_NAME, "wb") as fh:
            pq.write_table(table, fh, **PARQUET_OPTIONS)
            fh.flush()
            os.fsync(fh.fileno())
        entry = ViewVersion(
            table.num_rows, (f"{name}/v={self.number}/{PART_NAME}",), self.number, seconds
        )
        self.views[name] = entry
        return entry

    def carry_over(self, name: str, entry: ViewVersion) -> None:
        """Reuse a view of an earlier version by reference (its files stay where they are)."""
        self.views[name] = entry

    def abort(self) -> None:
        shutil.rmtree(self.tmp, ignore_errors=True)


def check_view_name(name: str) -> None:
    if not _VIEW_NAME.match(name) or name in _RESERVED:
        raise VersionError(f"invalid view name {name!r}: use lowercase letters, digits and _")


class VersionStore:
    """The versions of every batch view under ``home/views``."""

    def __init__(self, home: Path) -> None:
        self.root = home / "views"
        self.records_dir = self.root / "versions"
        self.tmp_dir = self.root / "_tmp"
        self.current_path = self.root / "CURRENT"
        self._owner: int | None = None

    def current(self) -> VersionRecord | None:
        try:
            text = self.current_path.read_text()
        except FileNotFoundError:
            return None
        return VersionRecord.from_json(json.loads(text))

    def list(self) -> list[VersionRecord]:
        """Every kept version, oldest first."""
        if not self.records_dir.is_dir():
            return []
        records = []
        for path in sorted(self.records_dir.glob("[0-9]*.json"), key=lambda p: int(p.stem)):
            with contextlib.suppress(FileNotFoundError):  # pruned while we listed
                records.append(VersionRecord.from_json(json.loads(path.read_text())))
        return records

    def paths(self, record: VersionRecord, name: str) -> builtins.list[Path]:
        view = record.views.get(name)
        if view is None:
            raise VersionError(
                f"version {record.version} has no view {name!r}; it has {sorted(record.views)}"
            )
        return [self.root / f for f in view.files]

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive and non-blocking; re-entrant in the thread holding it. The kernel
        releases it when the process dies, so a crash never leaves it held."""
        if self._owner == threading.get_ident():
            yield  # the outer call holds it
            return
        self.root.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.root / ".lock", os.O_RDWR | os.O_CREAT, 0o644)
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StoreBusyError(
                    f"{self.root} is locked by another batch run, rollback or prune"
                ) from None
            self._owner = threading.get_ident()
            try:
                yield
            finally:
                self._owner = None
        finally:
            os.close(fd)  # closing the descriptor releases the flock

    def begin(self) -> PendingVersion:
        """Take the next version number and a clean temp directory for it.

        The number is above every number in use, including a crashed run's leftovers
        (counted before they are cleaned), so no number is ever handed out twice.
        """
        with self.lock():
            number = self._highest_number() + 1
            cleaned = self.cleanup_tmp()
            tmp = self.tmp_dir / f"{number}-{os.getpid()}"
            tmp.mkdir(parents=True)
            return PendingVersion(number, tmp, cleaned=cleaned)

    def publish(
        self, pending: PendingVersion, *, horizon: Horizon, engine: str, duration_s: float
    ) -> VersionRecord:
        """Move a pending version into place and make it CURRENT, atomically."""
        with self.lock():
            n = pending.number
            # Step 1: every byte of the new version is durable before anything moves.
            fsync_tree(pending.tmp)
            # Step 2: move each computed view to views/<view>/v=<n>. Not yet visible:
            # no record names it, and a crash here leaves orphans cleanup_tmp removes.
            for name, view in pending.views.items():
                if view.built_in != n:
                    continue  # carried over: files already in place
                dest = self.root / name / f"v={n}"
                dest.parent.mkdir(parents=True, exist_ok=True)
                os.rename(pending.tmp / name, dest)
                fsync_path(dest.parent)
            fsync_path(self.root)
            record = VersionRecord(
                version=n,
                horizon=horizon,
                created_at=datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                duration_s=round(duration_s, 3),
                engine=engine,
                views=dict(pending.views),
            )
            # Step 3: the version's record; link refuses to overwrite a kept version.
            _write_atomic(self.records_dir / f"{n}.json", record, overwrite=False)
            # Step 4: swap CURRENT. This rename is the commit point for readers.
            _write_atomic(self.current_path, record, overwrite=True)
            # Step 5: the temp directory is now empty scaffolding.
            pending.abort()
            return record

    def rollback(self) -> VersionRecord:
        """Point CURRENT at the newest kept version older than the current one."""
        with self.lock():
            current = self.current()
            if current is None:
                raise VersionError("no published version: nothing to roll back")
            kept = self.list()
            older = [r for r in kept if r.version < current.version]
            if not older:
                numbers = ", ".join(str(r.version) for r in kept)
                raise VersionError(
                    f"version {current.version} is the oldest kept version (kept: {numbers}); "
                    "there is nothing older to roll back to"
                )
            target = older[-1]
            missing = [
                p for name in target.views for p in self.paths(target, name) if not p.is_file()
            ]
            if missing:
                raise VersionError(f"version {target.version} is incomplete: {missing[0]}")
            _write_atomic(self.current_path, target, overwrite=True)
            return target

    def prune(self, keep: int) -> builtins.list[int]:
        """Delete versions beyond the newest ``keep`` (never CURRENT's); return them."""
        if keep < 1:
            raise VersionError(f"keep must be at least 1, got {keep}")
        with self.lock():
            current = self.current()
            kept = self.list()
            newest = {r.version for r in kept[-keep:]}
            if current is not None:
                newest.add(current.version)
            doomed = [r.version for r in kept if r.version not in newest]
            # Step 1: forget the records, so no status or rollback can choose them.
            for n in doomed:
                (self.records_dir / f"{n}.json").unlink()
            if doomed:
                fsync_path(self.records_dir)
            # Step 2: delete the files no remaining record references.
            self._remove_unreferenced()
            return doomed

    def cleanup_tmp(self) -> builtins.list[str]:
        """Remove what crashed runs left: temp output, and views moved into place
        whose record was never written. CURRENT was never touched by either."""
        notes: builtins.list[str] = []
        with self.lock():
            if self.tmp_dir.is_dir():
                for leftover in sorted(self.tmp_dir.iterdir()):
                    shutil.rmtree(leftover, ignore_errors=True)
                    notes.append(f"removed temp output of an unfinished run: {leftover.name}")
            for stray in [*self.root.glob(".*.tmp"), *self.records_dir.glob(".*.tmp")]:
                stray.unlink()
            notes += self._remove_unreferenced()
        return notes

    def _data_dirs(self) -> Iterator[tuple[Path, int]]:
        if not self.root.is_dir():
            return
        for view_dir in self.root.iterdir():
            if view_dir.is_dir() and _VIEW_NAME.match(view_dir.name):
                for vdir in view_dir.glob("v=*"):
                    if vdir.name[2:].isdigit():
                        yield vdir, int(vdir.name[2:])

    def _highest_number(self) -> int:
        numbers = [r.version for r in self.list()]
        current = self.current()
        if current is not None:
            numbers.append(current.version)
        numbers += [n for _, n in self._data_dirs()]
        if self.tmp_dir.is_dir():
            heads = (p.name.split("-")[0] for p in self.tmp_dir.iterdir())
            numbers += [int(h) for h in heads if h.isdigit()]
        return max(numbers, default=0)

    def _remove_unreferenced(self) -> builtins.list[str]:
        referenced = {
            (self.root / f).parent
            for r in [*self.list(), *filter(None, [self.current()])]
            for v in r.views.values()
            for f in v.files
        }
        notes = []
        for vdir, _ in sorted(self._data_dirs()):
            if vdir not in referenced:
                shutil.rmtree(vdir)
                notes.append(f"removed unreferenced view files {vdir.relative_to(self.root)}")
                with contextlib.suppress(OSError):
                    vdir.parent.rmdir()  # only succeeds once the view has no version left
        return notes


def open_view(home: Path, name: str) -> list[Path]:
    """The files of view ``name`` in the CURRENT version.

    CURRENT is read once and only its paths are used, so a reader sees one whole
    version even while a new one is being published.
    """
    store = VersionStore(home)
    record = store.current()
    if record is None:
        raise VersionError(f"no batch views under {store.root}; run `loglambda batch run`")
    return store.paths(record, name)


def _write_atomic(path: Path, record: VersionRecord, *, overwrite: bool) -> None:
    data = (json.dumps(record.to_json(), indent=1) + "\n").encode()
    try:
        write_atomic(path, data, overwrite=overwrite)
    except FileExistsError:
        raise VersionError(f"{path} already exists; version numbers are never reused") from None
