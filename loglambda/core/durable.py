"""Durability primitives every writer shares: fsync files and directories, and publish a
small file atomically.

A rename or link is durable only once its directory is fsynced, and a directory tree
only once every file and directory in it is; these helpers make that the default so no
writer has to remember it.
"""

from __future__ import annotations

import os
from pathlib import Path


def fsync_path(path: Path) -> None:
    """fsync one file or directory."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_tree(root: Path) -> None:
    """fsync every file and directory under ``root``, deepest first, then ``root``."""
    for path in [*sorted(root.rglob("*"), reverse=True), root]:
        fsync_path(path)


def write_atomic(path: Path, data: bytes, *, overwrite: bool) -> None:
    """Make ``path`` hold ``data`` durably, all or nothing.

    With ``overwrite`` the file is replaced (readers see the old or the new bytes);
    without it the file is linked into place and ``FileExistsError`` is raised if the
    name is taken, so two writers can never both claim one name.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.parent / f".{path.name}.{os.getpid()}.tmp"
    with open(tmp, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
    try:
        if overwrite:
            os.replace(tmp, path)
        else:
            os.link(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    fsync_path(path.parent)
