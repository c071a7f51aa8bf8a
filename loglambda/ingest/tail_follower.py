"""The follower of one path: generations, rotation, truncation, and the exactly-once
batch protocol. The rules it implements are documented in ``loglambda.ingest.tail``."""

from __future__ import annotations

import contextlib
import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Final

import pyarrow as pa

from loglambda.core.eventlog import EventLog, OffsetRange
from loglambda.core.lines import DEFAULT_MAX_LINE_BYTES
from loglambda.core.parsers import Parser, detect_format, get_parser
from loglambda.core.quarantine import RejectBuilder
from loglambda.core.schemas import schema_for
from loglambda.ingest.frontdoor import deliver, parse_lines, quarantine_name
from loglambda.ingest.tail_checkpoint import (
    FINGERPRINT_BYTES,
    CheckpointStore,
    Generation,
    Identity,
    Intent,
    PathState,
    TailError,
    batch_in_log,
    fingerprint,
    source_name,
)
from loglambda.ingest.tail_files import (
    GZIP_MAGIC,
    SCAN_BYTES,
    OpenGeneration,
    count_newlines,
    last_line_end,
    pread,
)

SAMPLE_BYTES: Final = 64 << 10
OVERSIZE_HEAD: Final = 4096

Note = Callable[[str], None]


@dataclass(frozen=True)
class TailOptions:
    """How to follow (the CLI flags of ``loglambda tail``)."""

    fmt: str = "auto"
    poll_interval: float = 0.25
    once: bool = False
    from_beginning: bool = True
    # Seconds a rotated-away file must stay unmodified before it is finished (its
    # partial last line delivered, its descriptor closed). Filebeat's close_inactive.
    rotate_grace: float = 30.0
    batch_bytes: int = 4 << 20
    stats_interval: float = 10.0

    def __post_init__(self) -> None:
        # A batch must hold any line the parsers accept, so that only a line no
        # parser would accept anyway can be longer than a batch ("oversize").
        if self.batch_bytes <= 2 * DEFAULT_MAX_LINE_BYTES:
            raise ValueError(f"batch_bytes must exceed {2 * DEFAULT_MAX_LINE_BYTES} bytes")
        if self.poll_interval <= 0 or self.rotate_grace < 0 or self.stats_interval < 0:
            raise ValueError(
                "poll_interval must be positive, rotate_grace and stats_interval not negative"
            )


@dataclass(frozen=True)
class BatchReport:
    """One delivered batch; ``read == accepted + quarantined``."""

    path: str
    source: str
    start: int
    end: int
    line_start: int
    line_end: int
    read: int
    accepted: int
    quarantined: int
    ranges: tuple[OffsetRange, ...]
    replay: bool

    def describe(self) -> str:
        where = ", ".join(f"{r.partition} [{r.start}, {r.end})" for r in self.ranges)
        return (
            f"{self.source} lines {self.line_start:,}-{self.line_end - 1:,} "
            f"bytes [{self.start:,}, {self.end:,}): read {self.read:,} = accepted "
            f"{self.accepted:,} + quarantined {self.quarantined:,}"
            + (f" -> {where}" if where else "")
            + (" (replayed)" if self.replay else "")
        )


@dataclass(frozen=True)
class Totals:
    """Counts over many batches; ``read == accepted + quarantined``."""

    read: int = 0
    accepted: int = 0
    quarantined: int = 0
    batches: int = 0

    def add(self, batch: BatchReport) -> Totals:
        return Totals(
            self.read + batch.read,
            self.accepted + batch.accepted,
            self.quarantined + batch.quarantined,
            self.batches + 1,
        )

    def describe(self) -> str:
        return f"read {self.read:,} = accepted {self.accepted:,} + quarantined {self.quarantined:,}"


class Follower:
    """Follows one path through all its generations (see the module docstring)."""

    def __init__(
        self,
        path: Path,
        options: TailOptions,
        log: EventLog,
        home: Path,
        store: CheckpointStore,
        *,
        on_note: Note,
        on_batch: Callable[[BatchReport], None],
    ) -> None:
        self.path = os.path.abspath(path)
        self.options = options
        self.log = log
        self.home = home
        self.store = store
        self.on_note = on_note
        self.on_batch = on_batch
        self.totals = Totals()
        self.failed: str | None = None
        self._readers: list[OpenGeneration] = []
        self._next_generation = 1
        self._lock: int | None = None
        self._fresh = False
        self._waiting_note = False
        self._last_format: str | None = None

    # -- resume ------------------------------------------------------------------

    def start(self) -> None:
        """Lock the path, load its checkpoint, reopen its generations and settle a
        batch left in flight by a crash (the exactly-once rule)."""
        # Step 1: one tailer per path, or two would deliver the same lines.
        self._lock = self.store.lock(self.path)
        state = self.store.load(self.path)
        self._fresh = state is None
        if state is None:
            return
        self._next_generation = state.next_generation
        self._last_format = state.last_format
        # Step 2: find every unfinished generation again (at the path, or renamed).
        for gen in state.generations:
            if gen.finished:
                self._readers.append(OpenGeneration(gen, None))
                continue
            reader = self._reattach(gen)
            if reader is not None:
                self._readers.append(reader)
            else:
                self.on_note(
                    f"{gen.source}: gone while the tailer was down (deleted or compressed); "
                    f"lines after byte {gen.position:,} (line {gen.line:,}) were not read"
                )
        # Step 3: the batch in flight, if any: in the log already, or replayed.
        if state.intent is not None:
            self._settle(state.intent, {g.number: g for g in state.generations})
        self._save(None)

    def _reattach(self, gen: Generation) -> OpenGeneration | None:
        for candidate, at_path in self._candidates(gen.identity):
            try:
                fd = os.open(candidate, os.O_RDONLY | os.O_CLOEXEC)
            except OSError:
                continue
            st = os.fstat(fd)
            ident = gen.identity
            if (st.st_dev, st.st_ino) == (ident.dev, ident.ino) and (
                fingerprint(pread(fd, ident.fp_len, 0)) == ident.fp
            ):
                if not at_path and not gen.rotated:
                    self.on_note(
                        f"{self.path} was rotated while the tailer was down: "
                        f"reading the rest of {gen.source} from {candidate}"
                    )
                return OpenGeneration(replace(gen, rotated=gen.rotated or not at_path), fd)
            os.close(fd)
        return None

    def _candidates(self, ident: Identity) -> Iterator[tuple[str, bool]]:
        """The path itself, then files of its directory (and of its symlink target's)
        with the generation's inode: where logrotate moves a file."""
        with contextlib.suppress(OSError):
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) == (ident.dev, ident.ino):
                yield self.path, True
        dirs = dict.fromkeys(
            [os.path.dirname(self.path), os.path.dirname(os.path.realpath(self.path))]
        )
        for directory in dirs:
            with contextlib.suppress(OSError), os.scandir(directory) as entries:
                for entry in entries:
                    if entry.inode() == ident.ino and entry.path != self.path:
                        yield entry.path, False

    def _settle(self, intent: Intent, gens: dict[int, Generation]) -> None:
        gen = gens.get(intent.generation)
        if gen is None:
            raise TailError(f"{self.path}: checkpoint intent names unknown generation")
        span = f"{gen.source} bytes [{intent.start:,}, {intent.end:,})"
        if batch_in_log(self.log, intent, gen.source):
            self._set(intent.generation, position=intent.end, line=intent.line_end)
            self.on_note(f"recovered: {span} reached the log before the crash; not replaying")
            return
        reader = self._reader(intent.generation)
        if reader is None or (not gen.gz and reader.size() < intent.end):
            self.on_note(
                f"LOST: {span} (lines {intent.line_start:,}-{intent.line_end - 1:,}) did not "
                "reach the log and the file no longer holds them"
            )
            if reader is not None:
                self._readers.remove(reader)
                reader.close()
            return
        try:
            data = self._range_bytes(reader, intent.start, intent.end, intent.oversize)
        except TailError as err:
            self.on_note(f"LOST: {span} did not reach the log and cannot be read again: {err}")
            self._readers.remove(reader)
            reader.close()
            return
        self.on_note(f"recovered: {span} did not reach the log before the crash; replaying")
        self._deliver(reader, intent.start, intent.end, intent.oversize, data, replay=True)

    # -- following ---------------------------------------------------------------

    def poll(self, stop: threading.Event) -> int:
        """Look at the path, then deliver what every generation has; return batches."""
        if self.failed:
            return 0
        try:
            self._check_path()
            batches = 0
            for reader in list(self._readers):
                if stop.is_set():
                    break
                if reader.gen.finished:
                    continue
                n, caught_up = self._drain(reader, stop, finishing=False)
                batches += n
                if caught_up and (reader.gen.gz or reader.gen.rotated):
                    batches += self._maybe_finish(reader, stop)
            self._fresh = False
            return batches
        except (TailError, OSError) as err:
            # One file's trouble must not stop the others; a batch in flight stays in
            # the checkpoint and is settled when the tailer starts again.
            self.failed = str(err)
            self.on_note(f"error: {err}; no longer following {self.path}")
            return 0

    def _current(self) -> OpenGeneration | None:
        for reader in self._readers:
            if not reader.gen.rotated:
                return reader
        return None

    def _reader(self, number: int) -> OpenGeneration | None:
        for reader in self._readers:
            if reader.gen.number == number:
                return reader
        return None

    def _check_path(self) -> None:
        try:
            st: os.stat_result | None = os.stat(self.path)
        except FileNotFoundError:
            st = None
        except OSError as err:
            raise TailError(f"cannot stat {self.path}: {err}") from err
        cur = self._current()
        if cur is None:
            if st is None:
                if not self._waiting_note:
                    self.on_note(f"{self.path} does not exist yet; waiting for it")
                    self._waiting_note = True
                return
            self._new_generation(from_end=self._fresh and not self.options.from_beginning)
            return
        ident = cur.gen.identity
        if st is None or (st.st_dev, st.st_ino) != (ident.dev, ident.ino):
            # Rotated (renamed or deleted): keep draining the open file.
            if cur.gen.finished:
                self._readers.remove(cur)
            else:
                cur.gen = replace(cur.gen, rotated=True)
                self.on_note(
                    f"{self.path} was rotated: finishing {cur.gen.source} from its open file"
                    + ("" if st is None else ", reading the new file from its start")
                )
            if st is not None:
                self._new_generation(from_end=False)
            else:
                self._save(None)
            return
        if cur.gen.gz or cur.gen.finished:
            return
        if st.st_size < cur.gen.position:
            self._restart(
                cur, f"truncated to {st.st_size:,} bytes below position {cur.gen.position:,}"
            )
        elif not self._fingerprint_holds(cur):
            self._restart(cur, "rewritten (its first bytes changed)")

    def _restart(self, cur: OpenGeneration, why: str) -> None:
        self.on_note(
            f"{self.path} was {why}: {cur.gen.source} ends at byte {cur.gen.position:,}; "
            "restarting at 0 as a new generation (lines written after the last read and "
            "before the truncation were not seen)"
        )
        self._readers.remove(cur)
        cur.close()
        self._new_generation(from_end=False)

    def _fingerprint_holds(self, reader: OpenGeneration) -> bool:
        """Check the file still starts with the bytes it started with; grow the
        fingerprint while the file is shorter than FINGERPRINT_BYTES."""
        ident = reader.gen.identity
        st = os.fstat(reader.fd) if reader.fd is not None else None
        if st is None:
            return True
        seen = (st.st_size, st.st_mtime_ns)
        if seen == reader.seen:
            return True
        reader.seen = seen
        want = min(st.st_size, FINGERPRINT_BYTES)
        head = reader.head(max(want, ident.fp_len))
        if fingerprint(head[: ident.fp_len]) != ident.fp:
            return False
        if want > ident.fp_len:
            new_ident = replace(ident, fp_len=want, fp=fingerprint(head[:want]))
            reader.gen = replace(reader.gen, identity=new_ident)
        return True

    def _new_generation(self, *, from_end: bool) -> None:
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_CLOEXEC)
        except FileNotFoundError:
            return  # gone between stat and open: the next poll looks again
        except OSError as err:
            raise TailError(f"cannot open {self.path}: {err}") from err
        st = os.fstat(fd)
        head = pread(fd, FINGERPRINT_BYTES, 0)
        gz = head[:2] == GZIP_MAGIC
        if not gz and len(head) < 2 and self.path.endswith(".gz"):
            os.close(fd)  # a .gz still being created: wait for its magic bytes
            return
        number = self._next_generation
        self._next_generation += 1
        position, line = 0, 1
        if from_end and not gz:
            position = last_line_end(fd, st.st_size)
            line = count_newlines(fd, position) + 1
        gen = Generation(
            number=number,
            source=source_name(self.path, number, st.st_ino),
            identity=Identity(st.st_dev, st.st_ino, len(head), fingerprint(head)),
            position=position,
            line=line,
            fmt=None if self.options.fmt == "auto" else self.options.fmt,
            gz=gz,
            rotated=False,
            finished=False,
        )
        reader = OpenGeneration(gen, fd)
        reader.seen = (st.st_size, st.st_mtime_ns)
        self._readers.append(reader)
        self._waiting_note = False
        start = f" from byte {position:,} (line {line:,}, --from-end)" if position else ""
        self.on_note(f"following {self.path} as {gen.source}{' (gzip)' if gz else ''}{start}")
        self._save(None)

    def _maybe_finish(self, reader: OpenGeneration, stop: threading.Event) -> int:
        """Finish a gzip at its end, or a rotated file quiet for rotate_grace seconds:
        deliver its partial last line, close it."""
        if reader.gen.rotated and not reader.gen.gz:
            idle = time.time() - reader.mtime()
            if idle < self.options.rotate_grace:
                return 0
        batches, caught_up = self._drain(reader, stop, finishing=True)
        if not caught_up:
            return batches
        reader.gen = replace(reader.gen, finished=True)
        reader.close()
        if reader.gen.rotated:
            self._readers.remove(reader)
        self.on_note(f"finished {reader.gen.source} at byte {reader.gen.position:,}")
        self._save(None)
        return batches

    def _drain(
        self, reader: OpenGeneration, stop: threading.Event, *, finishing: bool
    ) -> tuple[int, bool]:
        """Deliver batches until the generation is caught up (up to its size when
        this drain started, so ``--once`` ends even if a writer keeps writing)."""
        if not reader.gen.gz and not reader.gen.rotated and not self._fingerprint_holds(reader):
            return 0, True  # rewritten: the next _check_path starts a new generation
        limit = None if (reader.gen.gz or finishing) else reader.size()
        batches = 0
        while not stop.is_set():
            planned = self._plan(reader, limit, finishing=finishing)
            if planned is None:
                return batches, True
            start, end, oversize, data = planned
            if reader.gen.fmt is None and not self._choose_format(reader, data, finishing):
                return batches, True
            self._deliver(reader, start, end, oversize, data, replay=False)
            batches += 1
        return batches, False

    def _plan(
        self, reader: OpenGeneration, limit: int | None, *, finishing: bool
    ) -> tuple[int, int, bool, bytes] | None:
        """The next batch ``(start, end, oversize, bytes)``: whole lines from the
        position, or (``finishing``) the partial last line; None when caught up."""
        batch = self.options.batch_bytes
        start = reader.gen.position
        want = batch if limit is None else min(batch, limit - start)
        data = reader.read_at(start, want) if want > 0 else b""
        if not data:
            return None
        cut = data.rfind(b"\n") + 1
        if cut:
            return start, start + cut, False, data[:cut]
        if len(data) < batch:  # only a partial line up to the end (or the limit)
            return (start, start + len(data), False, data) if finishing else None
        # A line longer than a whole batch: it is one quarantined line; find its end.
        scan = start + len(data)
        while more := reader.read_at(scan, SCAN_BYTES):
            newline = more.find(b"\n")
            if newline >= 0:
                return start, scan + newline + 1, True, data[:OVERSIZE_HEAD]
            scan += len(more)
        return (start, scan, True, data[:OVERSIZE_HEAD]) if finishing else None

    def _range_bytes(self, reader: OpenGeneration, start: int, end: int, oversize: bool) -> bytes:
        """The bytes a batch was planned with, read again for a replay."""
        if oversize:
            return reader.read_at(start, min(end - start, OVERSIZE_HEAD))
        data = reader.read_at(start, end - start)
        if len(data) != end - start:
            raise TailError(f"{reader.gen.source}: bytes [{start}, {end}) are no longer there")
        return data

    def _choose_format(self, reader: OpenGeneration, data: bytes, finishing: bool) -> bool:
        try:
            detection = detect_format(data[:SAMPLE_BYTES], source=reader.gen.source)
        except ValueError as err:
            if self._last_format is not None:
                # A rotated-in file whose first lines match nothing: keep the path's
                # format (its lines are quarantined) rather than stop following.
                reader.gen = replace(reader.gen, fmt=self._last_format)
                self.on_note(
                    f"{reader.gen.source}: no known format matches its first lines; "
                    f"keeping {self._last_format}, the format of the file before it"
                )
                return True
            if len(data) < SAMPLE_BYTES and not finishing and not self.options.once:
                if not reader.waiting_note:
                    self.on_note(
                        f"{reader.gen.source}: no known format matches yet; waiting for more lines"
                    )
                    reader.waiting_note = True
                return False
            raise TailError(str(err)) from err
        reader.gen = replace(reader.gen, fmt=detection.parser.name)
        self._last_format = detection.parser.name
        self.on_note(f"{reader.gen.source}: {detection.describe()}")
        return True

    def _deliver(
        self,
        reader: OpenGeneration,
        start: int,
        end: int,
        oversize: bool,
        data: bytes,
        *,
        replay: bool,
    ) -> None:
        gen = reader.gen
        assert gen.fmt is not None and gen.position == start
        parser = get_parser(gen.fmt)
        events, rejects, read = parse_range(parser, gen, start, end, oversize, data, reader)
        kind = parser.kind
        intent = Intent(
            generation=gen.number,
            start=start,
            end=end,
            line_start=gen.line,
            line_end=gen.line + read,
            oversize=oversize,
            kind=kind,
            log_ends={p: self.log.end_offset(kind, p) for p in self.log.partitions(kind)},
        )
        # Step 1: the intent is durable before anything of the batch is.
        self._save(intent)
        # Step 2 + Step 3: rejects durably first, then the append (frontdoor.deliver).
        digest = hashlib.sha256(gen.source.encode()).hexdigest()[:16]
        report = deliver(
            self.log,
            self.home,
            kind,
            events,
            rejects,
            fmt=parser.name,
            read=read,
            quarantine_as=quarantine_name(
                "tail", os.path.basename(self.path)[:80], digest, start, end
            ),
        )
        # Step 4: commit the position: just past the batch's last byte.
        reader.gen = replace(gen, position=end, line=intent.line_end)
        self._save(None)
        batch = BatchReport(
            path=self.path,
            source=gen.source,
            start=start,
            end=end,
            line_start=intent.line_start,
            line_end=intent.line_end,
            read=report.read,
            accepted=report.accepted,
            quarantined=report.quarantined,
            ranges=report.ranges,
            replay=replay,
        )
        self.totals = self.totals.add(batch)
        self.on_batch(batch)

    def _set(self, number: int, *, position: int, line: int) -> None:
        reader = self._reader(number)
        if reader is not None:
            reader.gen = replace(reader.gen, position=position, line=line)

    def _save(self, intent: Intent | None) -> None:
        state = PathState(
            path=self.path,
            next_generation=self._next_generation,
            generations=tuple(r.gen for r in self._readers),
            intent=intent,
            last_format=self._last_format,
        )
        self.store.save(state)

    def close(self) -> None:
        for reader in self._readers:
            reader.close()
        self._readers = []
        if self._lock is not None:
            self.store.unlock(self._lock)
            self._lock = None


def parse_range(
    parser: Parser,
    gen: Generation,
    start: int,
    end: int,
    oversize: bool,
    data: bytes,
    reader: OpenGeneration,
) -> tuple[pa.Table, RejectBuilder, int]:
    """Events, rejects and lines read of bytes ``[start, end)``: a pure function of
    those bytes, the format and the first line number, so a replay makes the same."""
    if not oversize:
        parsed, read = parse_lines(
            data, parser, source=gen.source, base_line=gen.line, base_offset=start
        )
        return parsed.events, parsed.rejects, read
    terminated = reader.read_at(end - 1, 1) == b"\n"
    length = end - start - terminated
    rejects = RejectBuilder(gen.source)
    rejects.add(
        line=gen.line,
        offset=start,
        reason="line_too_long",
        detail=f"over {DEFAULT_MAX_LINE_BYTES} bytes ({length} bytes"
        + ("" if terminated else ", no newline")
        + ")",
        raw=data[:OVERSIZE_HEAD],
        raw_length=length,
    )
    return schema_for(parser.kind).empty_table(), rejects, 1
