"""``loglambda tail``: follow log files into the event log, Filebeat-style, exactly once.

Why a front door of its own: web servers write access logs to files, and logrotate
renames or truncates them under the writer. The tailer follows each path through all
of that and turns every line into one event (or one quarantine row), exactly once,
across restarts and ``kill -9``.

Generations and provenance
--------------------------
A path is a succession of files (*generations*): the file at the path when the tailer
first looks, then each file that replaces it (rotation by rename or delete plus a new
file, ``copytruncate``, an inode reused with new content). A generation is identified by
``(dev, inode)`` plus the SHA-256 of its first bytes (up to 1 KiB, growing with the
file), so inode reuse and truncate-then-rewrite are noticed. Offsets restart at 0 in
every generation, so provenance names the generation, not the path::

    source        = "/abs/path/access.log#g<generation>-i<inode>"   (e.g. "#g3-i1837462")
    source_line   = 1-based line number within that generation
    source_offset = byte offset of the line's first byte within that generation

Generation numbers count up per path for the life of ``$LOGLAMBDA_HOME`` (they live in
its checkpoint); ``(source, source_offset)`` is unique across everything ever tailed.

What the tailer does with a path
--------------------------------
* **New lines**: read whole lines only. POSITION RULE (the off-by-one): a checkpoint's
  ``position`` is the offset just *past the last newline delivered* -- the first byte not
  yet delivered, where the next line starts -- never the offset of the last line; its
  ``line`` is the number of the line starting at ``position``.
* **Partial last line**: a line without its newline is never delivered while the file
  can still grow. It is delivered as-is only when its generation is *finished*: rotated
  away, drained to its end, and unmodified for ``rotate_grace`` seconds (or a ``.gz``,
  which is complete by nature). In ``--once`` runs the partial tail of the live file
  therefore waits for a later run -- like Filebeat, which waits for the newline.
* **Rotation by rename** (or delete): the tailer keeps the old file open and drains it
  (writers like nginx keep writing to it until they reopen), while it starts the new
  file at the path from offset 0. The old generation is finished as above. After a
  restart, a generation that is no longer at the path is found again by inode and
  fingerprint among the files of the path's directory (``access.log.1``); one that
  was deleted or compressed meanwhile is reported as gone.
* **Truncation** (``copytruncate``): size below the position, or different first
  bytes, starts a new generation at 0 and says so. Lines written between the last read
  and the truncation are lost -- copytruncate's own race, which Filebeat shares.
* **A path that does not exist yet** is waited for; its first file is read from 0.
* **``--from-end``** applies only to a file already there when a path is followed for
  the first time (no checkpoint): it starts after the last complete line. Every later
  generation is new data and is read from its start.
* **``.gz``** files (recognised by magic bytes) are read whole, once; the position is
  in decompressed bytes.
* **``--format auto``** detects each generation's format on its first batch (up to
  64 KiB of whole lines); the choice is stored so a replay parses the same way.

THE EXACTLY-ONCE RULE (the log is the truth)
--------------------------------------------
A batch is the byte range ``[start, end)`` of one generation, ``start`` being its
``position`` and ``end`` just past a newline (or its end, when finishing it). Parsing a
range is deterministic (same bytes, same format, same first line number -> same events
and rejects), and the quarantine file of a batch is named from its source and range
(``tail-<file>-<hash of source>-<start>-<end>.parquet``). Each batch goes:

  Step 1  write the checkpoint with an *intent*: generation, ``[start, end)``, the line
          range, and the event log's end offset of every partition of the kind
          (``log_ends``), all taken *before* the append;
  Step 2  write the rejects to quarantine (atomic; a replay overwrites the same name);
  Step 3  append the events (all-or-nothing: returning is the acknowledgement);
  Step 4  write the checkpoint with ``position = end``, ``line = line_end`` and no intent.

A crash between any two steps leaves the intent in the checkpoint. On restart, before
reading anything else, the tailer reads each partition from ``log_ends`` to its end and
looks for an event with the batch's ``source`` and a ``source_offset`` in
``[start, end)``:

* found -> the append happened (and the rejects, written before it, are durable): move
  to ``end`` without delivering again;
* not found -> the append did not happen: replay exactly ``[start, end)`` (Steps 1-4
  again). A batch that had no accepted events is never found and is always replayed,
  which only rewrites its quarantine file.

Why this is exact: no event of the batch can be below ``log_ends`` (offsets only grow),
no other batch can match (earlier batches of the generation lie below ``start``, and no
later one starts while the intent is open), and a path has one tailer at a time (a
``flock`` per path under ``$LOGLAMBDA_HOME/tail``). If the generation's bytes are gone
when a replay is needed (deleted or compressed while the tailer was down), the lines are
reported as lost -- never silently.

Sources rebuild all their state from the checkpoint in ``start()``; constructors only
store what they are given.

Modules: this one runs the followers (``run_tail``); ``tail_follower`` follows one path
and holds the batch protocol; ``tail_files`` reads plain and gzip files by position;
``tail_checkpoint`` stores the checkpoints and answers "is that batch in the log?".
"""

from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from loglambda.core.config import Settings
from loglambda.core.eventlog import EventLog, open_event_log
from loglambda.core.parsers import get_parser
from loglambda.ingest.tail_checkpoint import CheckpointStore, TailError
from loglambda.ingest.tail_follower import BatchReport, Follower, Note, TailOptions, Totals

__all__ = [
    "BatchReport",
    "Follower",
    "TailError",
    "TailOptions",
    "TailResult",
    "Totals",
    "run_tail",
]


@dataclass(frozen=True)
class TailResult:
    """What a run delivered, per path and in total, and which paths failed (why)."""

    totals: Totals
    per_path: tuple[tuple[str, Totals], ...]
    failed: tuple[tuple[str, str], ...]
    seconds: float


def run_tail(
    paths: Sequence[Path],
    options: TailOptions,
    settings: Settings,
    *,
    stop: threading.Event,
    on_note: Note,
    on_batch: Callable[[BatchReport], None] | None = None,
    on_stats: Note | None = None,
    log: EventLog | None = None,
) -> TailResult:
    """Follow ``paths`` until ``stop`` is set (or once to their end with
    ``options.once``); every batch goes to the event log through the front door."""
    if options.fmt != "auto":
        get_parser(options.fmt)  # an unknown format fails before anything is read
    event_log = log if log is not None else open_event_log(settings)
    store = CheckpointStore(settings.home)
    stats = _Stats(options.stats_interval, on_stats)

    def batch_done(batch: BatchReport) -> None:
        stats.add(batch)
        if on_batch is not None:
            on_batch(batch)

    unique = list(dict.fromkeys(os.path.abspath(p) for p in paths))
    followers = [
        Follower(
            Path(p),
            options,
            event_log,
            settings.home,
            store,
            on_note=on_note,
            on_batch=batch_done,
        )
        for p in unique
    ]
    began = time.monotonic()
    try:
        for follower in followers:
            follower.start()
        on_note(
            f"following {len(followers)} file(s) into the {settings.log_backend} event log; "
            f"checkpoints in {store.root}"
            + ("" if options.once else "; SIGINT/SIGTERM stops after the batch in hand")
        )
        while True:
            batches = sum(f.poll(stop) for f in followers)
            stats.maybe_report()
            if options.once or stop.is_set() or all(f.failed for f in followers):
                break
            if batches == 0:
                # Not synchronisation: the pause between looks at the files. A signal
                # sets ``stop`` and ends the wait at once.
                stop.wait(options.poll_interval)
    finally:
        for follower in followers:
            follower.close()
    total = Totals()
    for f in followers:
        total = Totals(
            total.read + f.totals.read,
            total.accepted + f.totals.accepted,
            total.quarantined + f.totals.quarantined,
            total.batches + f.totals.batches,
        )
    return TailResult(
        totals=total,
        per_path=tuple((f.path, f.totals) for f in followers),
        failed=tuple((f.path, f.failed) for f in followers if f.failed),
        seconds=time.monotonic() - began,
    )


class _Stats:
    """Periodic throughput lines: what was read since the last one, and the rate."""

    def __init__(self, interval: float, out: Note | None) -> None:
        self.interval = interval
        self.out = out
        self.window = Totals()
        self.total = Totals()
        self.since = time.monotonic()

    def add(self, batch: BatchReport) -> None:
        self.window = self.window.add(batch)
        self.total = self.total.add(batch)
        self.maybe_report()

    def maybe_report(self) -> None:
        now = time.monotonic()
        elapsed = now - self.since
        if self.out is None or elapsed < self.interval or self.window.batches == 0:
            return
        self.out(
            f"tail: {self.window.describe()} in {elapsed:.1f} s "
            f"({self.window.read / elapsed:,.0f} lines/s); total {self.total.describe()}"
        )
        self.window = Totals()
        self.since = now
