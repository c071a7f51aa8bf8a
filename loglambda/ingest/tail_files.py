"""Reading the files ``loglambda tail`` follows: one open generation, plain or gzip.

Why separate: the follower decides *what* to read (tail.py's rules); this module only
reads bytes at positions -- ``pread`` for plain files, so the descriptor's offset never
matters, and a forward-only decompressed view for ``.gz``.
"""

from __future__ import annotations

import gzip
import os
from typing import BinaryIO, Final

from loglambda.ingest.tail_checkpoint import Generation, TailError

GZIP_MAGIC: Final = b"\x1f\x8b"
SCAN_BYTES: Final = 1 << 20


class OpenGeneration:
    """A generation being read: its (frozen) checkpoint value plus the open descriptor.

    The descriptor is what lets a renamed or deleted file be drained to its end."""

    def __init__(self, gen: Generation, fd: int | None) -> None:
        self.gen = gen
        self.fd = fd
        self._gz: gzip.GzipFile | None = None
        self._raw: BinaryIO | None = None
        self._buf_at, self._buf = 0, b""
        self.seen: tuple[int, int] | None = None  # (size, mtime_ns) at the last look
        self.waiting_note = False

    def size(self) -> int:
        assert self.fd is not None
        return os.fstat(self.fd).st_size

    def mtime(self) -> float:
        assert self.fd is not None
        return os.fstat(self.fd).st_mtime

    def head(self, n: int) -> bytes:
        assert self.fd is not None
        return pread(self.fd, n, 0)

    def read_at(self, position: int, n: int) -> bytes:
        """Up to ``n`` bytes of the (decompressed) content from ``position``."""
        assert self.fd is not None
        if not self.gen.gz:
            return pread(self.fd, n, position)
        # Decompressed bytes from ``_buf_at`` up to the stream's position are kept, so
        # the unread tail of one batch (a partial line) costs no rewind.
        if self._gz is None or position < self._buf_at:
            # Rewinding a gzip stream means decompressing from the start: only replays do.
            self._close_gz()
            self._raw = os.fdopen(os.dup(self.fd), "rb")
            self._raw.seek(0)  # the dup shares the descriptor's offset
            self._gz = gzip.GzipFile(fileobj=self._raw, mode="rb")
            self._buf_at, self._buf = 0, b""
        try:
            if position <= self._buf_at + len(self._buf):
                have = self._buf[position - self._buf_at :]
            else:
                self._gz.seek(position)
                have = b""
            more = self._gz.read(n - len(have)) if len(have) < n else b""
        except (EOFError, gzip.BadGzipFile, OSError) as err:
            raise TailError(f"{self.gen.source}: unreadable gzip: {err}") from err
        self._buf_at, self._buf = position, have + more
        return self._buf[:n]

    def _close_gz(self) -> None:
        if self._gz is not None:
            self._gz.close()
            self._gz = None
        if self._raw is not None:
            self._raw.close()
            self._raw = None

    def close(self) -> None:
        self._close_gz()
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def pread(fd: int, n: int, position: int) -> bytes:
    parts = []
    while n > 0:
        chunk = os.pread(fd, n, position)
        if not chunk:
            break
        parts.append(chunk)
        n -= len(chunk)
        position += len(chunk)
    return b"".join(parts)


def last_line_end(fd: int, size: int) -> int:
    """The offset just past the last newline of the file's first ``size`` bytes."""
    end = size
    while end > 0:
        begin = max(0, end - SCAN_BYTES)
        chunk = pread(fd, end - begin, begin)
        newline = chunk.rfind(b"\n")
        if newline >= 0:
            return begin + newline + 1
        end = begin
    return 0


def count_newlines(fd: int, end: int) -> int:
    count, position = 0, 0
    while position < end:
        chunk = pread(fd, min(8 << 20, end - position), position)
        if not chunk:
            break
        count += chunk.count(b"\n")
        position += len(chunk)
    return count
