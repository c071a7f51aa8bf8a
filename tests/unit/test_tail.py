"""``loglambda tail`` on real files, driven poll by poll: every line once, with the
provenance of its file generation, through appends, partial lines, rotation,
copytruncate, late files, gzip, restarts and crashes around the append.

Why poll by poll: a ``Follower`` does nothing between ``poll()`` calls, so each test
writes, polls and checks in a fixed order -- no threads, no timing.
"""

from __future__ import annotations

import gzip
import os
import shutil
import threading
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog, LogSlice, OffsetRange
from loglambda.core.eventlog_local import LocalEventLog
from loglambda.core.schemas import Kind
from loglambda.ingest.tail import BatchReport, Follower, TailError, TailOptions, run_tail
from loglambda.ingest.tail_checkpoint import CheckpointStore

pytestmark = pytest.mark.integration  # real files and a real local event log


def line(i: int, tag: str = "item") -> bytes:
    return (
        f"10.0.0.{i % 250} - - [27/Nov/2026:12:{i // 60 % 60:02d}:{i % 60:02d} +0000] "
        f'"GET /{tag}/{i} HTTP/1.1" 200 {i} "-" "agent {i}"\n'
    ).encode()


def lines(a: int, b: int, tag: str = "item") -> bytes:
    return b"".join(line(i, tag) for i in range(a, b))


class Rig:
    """One followed path in a temporary home, polled by hand."""

    def __init__(self, tmp: Path, name: str = "access.log", **options: Any) -> None:
        self.home = tmp / "home"
        self.path = tmp / name
        self.log = LocalEventLog(self.home)
        self.notes: list[str] = []
        self.batches: list[BatchReport] = []
        self.options = TailOptions(**{"fmt": "combined", "rotate_grace": 3600.0, **options})
        self.follower: Follower | None = None
        self.stop = threading.Event()

    def start(self, log: EventLog | None = None, **options: Any) -> Follower:
        if self.follower is not None:
            self.follower.close()
        opts = TailOptions(**{**self.options.__dict__, **options}) if options else self.options
        self.follower = Follower(
            self.path,
            opts,
            log or self.log,
            self.home,
            CheckpointStore(self.home),
            on_note=self.notes.append,
            on_batch=self.batches.append,
        )
        self.follower.start()
        return self.follower

    def poll(self) -> int:
        assert self.follower is not None
        return self.follower.poll(self.stop)

    def close(self) -> None:
        if self.follower is not None:
            self.follower.close()
            self.follower = None

    def write(self, data: bytes, path: Path | None = None) -> None:
        with open(path or self.path, "ab") as fh:
            fh.write(data)


def events(home: Path, kind: Kind = "traffic") -> list[dict[str, Any]]:
    log = LocalEventLog(home)
    end = log.end_offset(kind, f"{kind}/0")
    rows: list[dict[str, Any]] = log.read(kind, f"{kind}/0", 0, end).events.to_pylist()
    return rows


def quarantine(home: Path) -> list[dict[str, Any]]:
    files = sorted((home / "quarantine").glob("*.parquet"))
    return [r for f in files for r in pq.read_table(f).to_pylist()]


def paths(rows: list[dict[str, Any]]) -> list[str]:
    return [r["path"] for r in rows]


def ids(rows: list[dict[str, Any]], tag: str = "item") -> list[int]:
    return [int(r["path"].split("/")[2]) for r in rows if r["path"].startswith(f"/{tag}/")]


def sources(rows: list[dict[str, Any]]) -> list[str]:
    return list(dict.fromkeys(r["source"] for r in rows))


@pytest.fixture
def rig(tmp_path: Path) -> Iterator[Rig]:
    r = Rig(tmp_path)
    yield r
    r.close()


# --- following one file ---------------------------------------------------------------


def test_appends_are_delivered_with_generation_provenance(rig: Rig) -> None:
    rig.write(lines(0, 3))
    rig.start()
    assert rig.poll() == 1
    rig.write(lines(3, 5))
    assert rig.poll() == 1
    assert rig.poll() == 0  # nothing new: nothing delivered, nothing duplicated
    got = events(rig.home)
    assert ids(got) == [0, 1, 2, 3, 4]
    ino = os.stat(rig.path).st_ino
    assert sources(got) == [f"{rig.path}#g1-i{ino}"]
    assert [r["source_line"] for r in got] == [1, 2, 3, 4, 5]
    expected_offsets = [len(lines(0, i)) for i in range(5)]
    assert [r["source_offset"] for r in got] == expected_offsets
    state = CheckpointStore(rig.home).load(str(rig.path))
    assert state is not None and state.intent is None
    # The position rule: just past the last newline delivered, and the next line's number.
    assert (state.generations[0].position, state.generations[0].line) == (len(lines(0, 5)), 6)


def test_partial_line_waits_for_its_newline(rig: Rig) -> None:
    whole = line(1)
    rig.write(line(0) + whole[:20])
    rig.start()
    rig.poll()
    assert ids(events(rig.home)) == [0]
    rig.write(whole[20:40])
    rig.poll()
    assert ids(events(rig.home)) == [0]
    rig.write(whole[40:] + line(2))
    rig.poll()
    got = events(rig.home)
    assert ids(got) == [0, 1, 2]
    assert got[1]["source_offset"] == len(line(0))
    assert quarantine(rig.home) == []


def test_bad_lines_are_quarantined_and_counts_reconcile(rig: Rig) -> None:
    bad = [
        b"garbage here\n",
        b"\n",
        b"\xff\xfe not utf-8\n",
        b'1.2.3.4 - - [x] "GET / HTTP/1.1" 200 1\n',
    ]
    data = lines(0, 2) + bad[0] + line(2) + bad[1] + bad[2] + line(3) + bad[3]
    rig.write(data)
    rig.start()
    rig.poll()
    got, rejected = events(rig.home), quarantine(rig.home)
    assert ids(got) == [0, 1, 2, 3]
    assert sorted(r["source_line"] for r in rejected) == [3, 5, 6, 8]
    assert Counter(r["reason"] for r in rejected)["blank"] == 1
    assert {r["source"] for r in rejected} == set(sources(got))
    starts = {r["source_line"]: r["source_offset"] for r in rejected}
    assert data[starts[3] :].startswith(b"garbage here")
    [batch] = rig.batches
    assert batch.read == 8 == batch.accepted + batch.quarantined
    assert rig.follower is not None
    assert rig.follower.totals.read == rig.follower.totals.accepted + 4


def test_a_file_that_appears_later_is_read_from_its_start(rig: Rig) -> None:
    rig.start(from_beginning=False)  # --from-end applies only to a file already there
    assert rig.poll() == 0
    assert any("does not exist yet" in n for n in rig.notes)
    rig.write(lines(0, 4))
    rig.poll()
    assert ids(events(rig.home)) == [0, 1, 2, 3]


def test_from_end_skips_existing_lines_and_numbers_the_rest(rig: Rig) -> None:
    rig.write(lines(0, 10) + line(10)[:15])
    rig.start(from_beginning=False)
    rig.poll()
    assert events(rig.home) == []
    rig.write(line(10)[15:] + line(11))
    rig.poll()
    got = events(rig.home)
    assert ids(got) == [10, 11]  # the partial line at the start is taken once it is whole
    assert [r["source_line"] for r in got] == [11, 12]
    assert got[0]["source_offset"] == len(lines(0, 10))


def test_auto_format_is_detected_per_generation(tmp_path: Path) -> None:
    rig = Rig(tmp_path, fmt="auto")
    rig.write(lines(0, 5))
    rig.start()
    rig.poll()
    assert ids(events(rig.home)) == [0, 1, 2, 3, 4]
    assert any("detected format: combined" in n for n in rig.notes)
    state = CheckpointStore(rig.home).load(str(rig.path))
    assert state is not None and state.generations[0].fmt == "combined"
    rig.close()


def test_a_line_longer_than_a_batch_is_quarantined_whole(tmp_path: Path) -> None:
    rig = Rig(tmp_path, batch_bytes=256 << 10)
    huge = b"x" * (600 << 10) + b"\n"
    rig.write(line(0) + huge + line(1))
    rig.start()
    while rig.poll():
        pass
    assert ids(events(rig.home)) == [0, 1]
    [rej] = quarantine(rig.home)
    assert (rej["reason"], rej["source_line"], rej["source_offset"]) == (
        "line_too_long",
        2,
        len(line(0)),
    )
    assert rej["raw_length"] == 600 << 10
    assert events(rig.home)[1]["source_line"] == 3
    rig.close()


# --- rotation -------------------------------------------------------------------------


def test_rotation_by_rename_drains_the_old_file_then_finishes_it(rig: Rig) -> None:
    writer = open(rig.path, "ab")  # noqa: SIM115 - a long-lived writer, like nginx
    writer.write(lines(0, 3))
    writer.flush()
    rig.start()
    rig.poll()
    old_ino = os.stat(rig.path).st_ino
    rotated = rig.path.with_name("access.log.1")
    os.rename(rig.path, rotated)
    # The writer has not reopened yet: its lines still go to the renamed file ...
    writer.write(lines(3, 5) + line(5)[:10])
    writer.flush()
    rig.poll()
    assert ids(events(rig.home)) == [0, 1, 2, 3, 4]
    # ... then it reopens: a new file at the path, read from its start.
    rig.write(lines(100, 102))
    writer.write(line(5)[10:] + line(6)[:-1])  # a late line, and one without newline
    writer.flush()
    rig.poll()
    got = events(rig.home)
    assert sorted(ids(got)) == [0, 1, 2, 3, 4, 5, 100, 101]
    new_ino = os.stat(rig.path).st_ino
    g1, g2 = f"{rig.path}#g1-i{old_ino}", f"{rig.path}#g2-i{new_ino}"
    assert sources(got) == [g1, g2] or set(sources(got)) == {g1, g2}
    by_source = {s: [r["source_line"] for r in got if r["source"] == s] for s in (g1, g2)}
    assert by_source == {g1: [1, 2, 3, 4, 5, 6], g2: [1, 2]}
    assert any("was rotated" in n for n in rig.notes)
    writer.close()

    # The partial last line of the old file waits for rotate_grace; a restart with a
    # zero grace finds the renamed file by inode and finishes it, partial line included.
    rig.start(rotate_grace=0.0)
    rig.poll()
    got = events(rig.home)
    assert sorted(ids(got)) == [0, 1, 2, 3, 4, 5, 6, 100, 101]
    last = next(r for r in got if r["path"] == "/item/6")
    assert (last["source"], last["source_line"]) == (g1, 7)
    assert any("finished" in n and g1 in n for n in rig.notes)
    state = CheckpointStore(rig.home).load(str(rig.path))
    assert state is not None and [g.number for g in state.generations] == [2]


def test_rotation_while_the_tailer_is_down_resumes_the_renamed_file(rig: Rig) -> None:
    rig.write(lines(0, 3))
    rig.start()
    rig.poll()
    rig.close()
    rig.write(lines(3, 6))  # written before the rotation, never read
    os.rename(rig.path, rig.path.with_name("access.log.1"))
    rig.write(lines(100, 103))
    rig.start(rotate_grace=0.0)
    rig.poll()
    got = events(rig.home)
    assert sorted(ids(got)) == [0, 1, 2, 3, 4, 5, 100, 101, 102]
    assert Counter(ids(got)) == Counter(set(ids(got)))
    assert any("rotated while the tailer was down" in n for n in rig.notes)


def test_a_file_compressed_away_while_down_is_reported_not_guessed(rig: Rig) -> None:
    rig.write(lines(0, 3))
    rig.start()
    rig.poll()
    rig.close()
    rig.write(lines(3, 5))  # never read: logrotate compresses the file meanwhile
    with gzip.open(rig.path.with_name("access.log.1.gz"), "wb") as fh:
        fh.write(rig.path.read_bytes())
    rig.path.unlink()
    rig.write(lines(100, 102))
    rig.start()
    rig.poll()
    assert ids(events(rig.home)) == [0, 1, 2, 100, 101]
    assert any("gone while the tailer was down" in n and "line 4" in n for n in rig.notes)


def test_a_rotated_in_file_of_no_known_format_keeps_the_path_format(tmp_path: Path) -> None:
    rig = Rig(tmp_path, fmt="auto", rotate_grace=0.0)
    rig.write(lines(0, 3))
    rig.start()
    rig.poll()
    os.rename(rig.path, rig.path.with_name("access.log.1"))
    rig.write(b"not a log line\n" * 3)
    rig.poll()
    rig.write(lines(3, 5))
    rig.poll()
    assert ids(events(rig.home)) == [0, 1, 2, 3, 4]
    assert len(quarantine(rig.home)) == 3
    assert any("keeping combined" in n for n in rig.notes)
    rig.close()


def test_copytruncate_restarts_at_zero_as_a_new_generation(rig: Rig) -> None:
    rig.write(lines(0, 5))
    rig.start()
    rig.poll()
    shutil.copyfile(rig.path, rig.path.with_name("access.log.1"))
    with open(rig.path, "r+b") as fh:
        fh.truncate(0)
    rig.write(lines(100, 102))
    rig.poll()
    got = events(rig.home)
    assert ids(got) == [0, 1, 2, 3, 4, 100, 101]
    assert len(sources(got)) == 2
    assert [r["source_offset"] for r in got[5:]] == [0, len(line(100))]
    assert any("truncated" in n for n in rig.notes)


def test_truncated_and_regrown_past_the_position_is_caught_by_fingerprint(rig: Rig) -> None:
    rig.write(lines(0, 2))
    rig.start()
    rig.poll()
    with open(rig.path, "r+b") as fh:
        fh.truncate(0)
    rig.write(lines(200, 210))  # longer than before: the size alone would not tell
    rig.poll()
    got = events(rig.home)
    assert ids(got) == [0, 1, *range(200, 210)]
    assert any("rewritten" in n for n in rig.notes)


# --- restarts, gzip, several files -----------------------------------------------------


def test_restart_resumes_without_loss_or_duplication(rig: Rig) -> None:
    rig.write(lines(0, 10_000))
    rig.start(batch_bytes=256 << 10)
    # A clean stop (SIGTERM) after the first batch: the batch is finished, the rest waits.
    assert rig.follower is not None
    rig.follower.on_batch = lambda _batch: rig.stop.set()
    assert rig.poll() == 1
    rig.stop.clear()
    delivered = len(events(rig.home))
    assert 0 < delivered < 10_000
    rig.close()
    for round_ in range(3):
        rig.start(batch_bytes=256 << 10)
        rig.poll()
        rig.write(lines(10_000 + 10 * round_, 10_010 + 10 * round_))
        rig.close()
    rig.start()
    rig.poll()
    got = events(rig.home)
    assert ids(got) == list(range(10_030))
    assert [r["source_line"] for r in got] == list(range(1, 10_031))


def test_gzip_is_read_whole_once(tmp_path: Path) -> None:
    rig = Rig(tmp_path, name="access.log.2.gz", batch_bytes=256 << 10)
    with gzip.open(rig.path, "wb") as fh:
        fh.write(lines(0, 5000) + line(5000).rstrip(b"\n"))  # the last line has no newline
    rig.start()
    # Stop after the first batch, then resume inside the decompressed stream.
    assert rig.follower is not None
    rig.follower.on_batch = lambda _batch: rig.stop.set()
    assert rig.poll() == 1
    rig.stop.clear()
    assert 0 < len(events(rig.home)) < 5000
    rig.close()
    rig.start()
    rig.poll()
    got = events(rig.home)
    assert ids(got) == list(range(5001))
    assert got[-1]["source_offset"] == len(lines(0, 5000))
    assert [r["source_line"] for r in got] == list(range(1, 5002))
    rig.close()
    rig.start()
    assert rig.poll() == 0
    assert len(events(rig.home)) == 5001
    rig.close()


def test_two_files_at_once_through_run_tail(tmp_path: Path) -> None:
    home = tmp_path / "home"
    a, b = tmp_path / "a.log", tmp_path / "b.log"
    a.write_bytes(lines(0, 20, tag="a"))
    b.write_bytes(lines(0, 30, tag="b") + b"not a log line\n")
    notes: list[str] = []
    result = run_tail(
        [a, b, a],  # a path given twice is followed once
        TailOptions(once=True),
        Settings.load(home),
        stop=threading.Event(),
        on_note=notes.append,
    )
    got = events(home)
    assert sorted(ids(got, "a")) == list(range(20))
    assert sorted(ids(got, "b")) == list(range(30))
    assert {s.split("#")[0] for s in sources(got)} == {str(a), str(b)}
    assert result.totals.read == 51 == result.totals.accepted + result.totals.quarantined
    assert result.totals.quarantined == 1 and not result.failed
    again = run_tail(
        [a, b],
        TailOptions(once=True),
        Settings.load(home),
        stop=threading.Event(),
        on_note=notes.append,
    )
    assert again.totals.read == 0 and len(events(home)) == 50


def test_a_second_tailer_of_the_same_path_is_refused(rig: Rig, tmp_path: Path) -> None:
    rig.write(lines(0, 1))
    rig.start()
    other = Rig(tmp_path)
    with pytest.raises(TailError, match="already followed"):
        other.start()
    other.close()


def test_unknown_format_fails_only_that_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    good, bad = tmp_path / "good.log", tmp_path / "bad.log"
    good.write_bytes(lines(0, 3))
    bad.write_bytes(b"\x00\x01 nothing parses\n" * 3)
    result = run_tail(
        [bad, good],
        TailOptions(once=True),
        Settings.load(home),
        stop=threading.Event(),
        on_note=lambda _m: None,
    )
    assert [p for p, _ in result.failed] == [str(bad)]
    assert ids(events(home)) == [0, 1, 2]


# --- the exactly-once rule: a crash on either side of the append -----------------------


class Crash(Exception):
    """Stands for kill -9 at a chosen step."""


class CrashingLog:
    """A LocalEventLog that 'dies' just before or just after its n-th append."""

    def __init__(self, inner: LocalEventLog, at_append: int, after: bool) -> None:
        self.inner = inner
        self.at_append = at_append
        self.after = after
        self.appends = 0

    def append(self, kind: Kind, events: pa.Table) -> tuple[OffsetRange, ...]:
        self.appends += 1
        if self.appends == self.at_append and not self.after:
            raise Crash("before append")
        ranges = self.inner.append(kind, events)
        if self.appends == self.at_append:
            raise Crash("after append, before the checkpoint")
        return ranges

    def read(self, kind: Kind, partition: str, start: int, max_records: int) -> LogSlice:
        return self.inner.read(kind, partition, start, max_records)

    def end_offset(self, kind: Kind, partition: str) -> int:
        return self.inner.end_offset(kind, partition)

    def partitions(self, kind: Kind) -> list[str]:
        return self.inner.partitions(kind)

    def committed(self, consumer: str, partition: str) -> int:
        return self.inner.committed(consumer, partition)

    def commit(self, consumer: str, partition: str, offset: int) -> None:
        self.inner.commit(consumer, partition, offset)

    def consumers(self) -> dict[str, dict[str, int]]:
        return self.inner.consumers()

    def lag(self, consumer: str, partition: str) -> int:
        return self.inner.lag(consumer, partition)


@pytest.mark.parametrize("after", [False, True], ids=["before-append", "after-append"])
def test_crash_around_the_append_delivers_each_line_once(rig: Rig, after: bool) -> None:
    # Bad lines in every batch: their quarantine file must be rewritten, not doubled.
    data = b"".join(line(i) + (b"bad line\n" if i % 100 == 0 else b"") for i in range(3000))
    rig.write(data)
    crashing = CrashingLog(rig.log, at_append=2, after=after)
    rig.start(log=crashing, batch_bytes=256 << 10)
    with pytest.raises(Crash):
        rig.poll()
    state = CheckpointStore(rig.home).load(str(rig.path))
    assert state is not None and state.intent is not None  # the crash left its intent
    rig.close()

    rig.start()
    verdict = "reached the log" if after else "did not reach the log"
    assert any(verdict in n for n in rig.notes), rig.notes
    rig.poll()
    got = events(rig.home)
    assert ids(got) == list(range(3000))
    rejected = quarantine(rig.home)
    assert len(rejected) == 30
    assert len({(r["source"], r["source_offset"]) for r in rejected}) == 30
    assert len({(r["source"], r["source_offset"]) for r in got}) == 3000
