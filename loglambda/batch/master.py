"""The master dataset: immutable Parquet history plus an append-only manifest.

Layout under ``$LOGLAMBDA_HOME``::

    master/<kind>/date=YYYY-MM-DD/hour=HH/<batch>-<part>.parquet
    master/_manifest/<seq:010d>.json      one file per committed batch
    master/_staging/<batch>/...           files of a batch not yet committed
    quarantine/<batch>.parquet            the batch's rejected records

The manifest is the truth: a Parquet file the manifest does not list does not exist
for readers. A batch becomes visible at the instant its manifest entry is linked into
place (``os.link`` refuses to overwrite, so two writers can never claim one sequence
number). Files are named from the batch id, which is derived from what the batch
covers (an import's content hash, or an event-log offset range), so a replay of the
same batch rewrites the same names instead of adding duplicates.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from loglambda.batch.partition_writer import (
    HourPiece,
    PartitionWriter,
    split_by_hour,
)
from loglambda.core.durable import fsync_tree, write_atomic
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import QUARANTINE_SCHEMA, Kind


@dataclass(frozen=True)
class DataFile:
    """One Parquet file of the master dataset, as the manifest lists it."""

    path: str  # relative to master/
    kind: Kind
    rows: int
    min_ts_us: int
    max_ts_us: int


@dataclass(frozen=True)
class ManifestEntry:
    """One committed batch: what it added and where it came from."""

    seq: int
    batch_id: str
    created_at: float
    origin: dict[str, Any]
    files: tuple[DataFile, ...]
    read: int
    accepted: int
    quarantined: int
    quarantine_file: str | None

    def to_json(self) -> dict[str, Any]:
        d = self.__dict__.copy()
        d["files"] = [f.__dict__ for f in self.files]
        return d

    @staticmethod
    def from_json(d: dict[str, Any]) -> ManifestEntry:
        files = tuple(DataFile(**f) for f in d["files"])
        return ManifestEntry(**{**d, "files": files})


@dataclass(frozen=True)
class Snapshot:
    """The master dataset as of manifest sequence ``seq``: what a batch run reads."""

    root: Path
    seq: int
    entries: tuple[ManifestEntry, ...]

    def files(self, kind: Kind) -> list[Path]:
        return [self.root / f.path for e in self.entries for f in e.files if f.kind == kind]

    def rows(self, kind: Kind) -> int:
        return sum(f.rows for e in self.entries for f in e.files if f.kind == kind)


class MasterDataset:
    """Reads and appends to the master dataset under ``home``."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.root = home / "master"
        self.manifest_dir = self.root / "_manifest"
        self.staging_dir = self.root / "_staging"

    def entries(self) -> list[ManifestEntry]:
        if not self.manifest_dir.is_dir():
            return []
        names = sorted(p for p in os.listdir(self.manifest_dir) if p.endswith(".json"))
        return [
            ManifestEntry.from_json(json.loads((self.manifest_dir / n).read_text())) for n in names
        ]

    def snapshot(self) -> Snapshot:
        entries = tuple(self.entries())
        return Snapshot(self.root, entries[-1].seq if entries else 0, entries)

    def find_origin(
        self, key: str, value: object, entries: list[ManifestEntry] | None = None
    ) -> ManifestEntry | None:
        """The committed batch whose origin has ``key == value``, if any.

        ``entries`` is a list the caller already read, to search instead of the manifest.
        """
        for entry in self.entries() if entries is None else entries:
            if entry.origin.get(key) == value:
                return entry
        return None

    def stage(self, batch_id: str, *, writer_threads: int = 1) -> StagedBatch:
        return StagedBatch(self, batch_id, writer_threads)

    def recover(self) -> list[str]:
        """Finish or discard batches a crash interrupted; return what was done.

        A batch whose manifest entry exists is rolled forward (its staged files moved
        into place); a staging directory without an entry is an aborted batch and is
        removed. Either way readers never saw a partial batch.
        """
        done: list[str] = []
        if not self.staging_dir.is_dir():
            return done
        committed = {e.batch_id: e for e in self.entries()}
        for staged in sorted(p for p in self.staging_dir.iterdir() if p.is_dir()):
            lock = _try_lock(self.staging_dir / f"{staged.name}.lock")
            if lock is None:
                continue  # a live writer holds it: not a crash, leave it alone
            try:
                entry = committed.get(staged.name)
                if entry is not None:
                    _publish_files(staged, self.root, self.home)
                    done.append(f"rolled forward batch {staged.name} (seq {entry.seq})")
                else:
                    done.append(f"discarded uncommitted batch {staged.name}")
                shutil.rmtree(staged, ignore_errors=True)
            finally:
                _unlock(lock, self.staging_dir / f"{staged.name}.lock")
        return done


@dataclass
class StagedBatch:
    """Files of one batch being written; invisible until ``commit``."""

    master: MasterDataset
    batch_id: str
    # Parquet writer threads (see partition_writer); 1 writes on the caller's thread.
    writer_threads: int = 1
    _rejects: list[pa.Table] = field(default_factory=list)
    # Set once the manifest entry is linked: from then on the staged files are the
    # batch's only copy and must never be deleted, only moved into place.
    committed: bool = False

    def __post_init__(self) -> None:
        self.dir = self.master.staging_dir / self.batch_id
        self.dir.parent.mkdir(parents=True, exist_ok=True)
        # Held for the batch's life; the OS drops it if the process dies, which is how
        # recover() tells a crashed batch from one that is still being written.
        self._lock_path = self.master.staging_dir / f"{self.batch_id}.lock"
        lock = _try_lock(self._lock_path)
        if lock is None:
            raise RuntimeError(f"batch {self.batch_id} is being written by another process")
        self._lock = lock
        # A leftover from a crashed attempt at the same batch is garbage: start clean.
        shutil.rmtree(self.dir, ignore_errors=True)
        self.dir.mkdir(parents=True)
        self._files = PartitionWriter(
            self.dir / "master", self.batch_id, threads=self.writer_threads
        )

    def write(self, kind: Kind, table: pa.Table) -> None:
        """Append events, routed to their date/hour partition by event time."""
        self._files.write(kind, split_by_hour(table))

    def write_pieces(self, kind: Kind, pieces: list[HourPiece]) -> None:
        """Append events a worker already split with ``split_by_hour``."""
        self._files.write(kind, pieces)

    def quarantine(self, rejects: RejectBuilder, fmt: str) -> None:
        if len(rejects):
            self._rejects.append(rejects.to_table(fmt))

    def commit(self, origin: dict[str, Any], *, read: int) -> ManifestEntry:
        """Make the batch visible, atomically. Returns its manifest entry."""
        # Step 1: close every writer so all Parquet footers are written.
        parts = self._files.close()
        quarantined = sum(t.num_rows for t in self._rejects)
        qfile = None
        if self._rejects:
            qfile = f"quarantine/{self.batch_id}.parquet"
            qpath = self.dir / qfile
            qpath.parent.mkdir(parents=True, exist_ok=True)
            pq.write_table(pa.concat_tables(self._rejects).cast(QUARANTINE_SCHEMA), qpath)
        # Step 2: make the staged bytes durable before anything points at them.
        fsync_tree(self.dir)
        files = tuple(DataFile(p.rel, p.kind, p.rows, p.min_ts, p.max_ts) for p in parts if p.rows)
        accepted = sum(f.rows for f in files)
        # Step 3: link the manifest entry; from this instant the batch is committed.
        entry = _link_entry(
            self.master,
            lambda seq: ManifestEntry(
                seq=seq,
                batch_id=self.batch_id,
                created_at=time.time(),
                origin=origin,
                files=files,
                read=read,
                accepted=accepted,
                quarantined=quarantined,
                quarantine_file=qfile,
            ),
        )
        self.committed = True
        # Step 4: move files into place. A crash here is finished by recover().
        try:
            _publish_files(self.dir, self.master.root, self.master.home)
            shutil.rmtree(self.dir, ignore_errors=True)
        finally:
            # Even on failure: the batch is committed, and recover() must be free to
            # finish the move.
            _unlock(self._lock, self._lock_path)
            self._lock = -1
        return entry

    def abort(self) -> None:
        """Discard an uncommitted batch; a committed one is left for recover()."""
        if self.committed or self._lock < 0:
            return
        self._files.abort()
        shutil.rmtree(self.dir, ignore_errors=True)
        _unlock(self._lock, self._lock_path)
        self._lock = -1


def _try_lock(path: Path) -> int | None:
    """An exclusive flock on ``path``, or None if another process holds it."""
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        return None
    return fd


def _unlock(fd: int, path: Path) -> None:
    # Unlink before closing: a waiter that opened the old inode retries on a new one.
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    os.close(fd)


def _link_entry(master: MasterDataset, make: Any) -> ManifestEntry:
    while True:
        existing = (
            sorted(p for p in os.listdir(master.manifest_dir) if p.endswith(".json"))
            if master.manifest_dir.is_dir()
            else []
        )
        seq = int(existing[-1].split(".")[0]) + 1 if existing else 1
        entry: ManifestEntry = make(seq)
        data = json.dumps(entry.to_json(), indent=1).encode()
        try:
            write_atomic(master.manifest_dir / f"{seq:010d}.json", data, overwrite=False)
        except FileExistsError:
            continue  # another writer took this number; take the next
        return entry


def _publish_files(staged: Path, master_root: Path, home: Path) -> None:
    for src_root, dst_root in ((staged / "master", master_root), (staged / "quarantine", None)):
        if not src_root.is_dir():
            continue
        for src in src_root.rglob("*.parquet"):
            rel = src.relative_to(src_root)
            dst = (dst_root / rel) if dst_root else (home / "quarantine" / rel)
            dst.parent.mkdir(parents=True, exist_ok=True)
            os.replace(src, dst)
