"""Atomic file writes: a reader (or a crash) never sees half a file.

Every output the suite keeps — run records, checkpoints, the exported student, tables,
plots — is written to a temporary file in the same directory, flushed and fsync'ed, then
renamed over the final name (``os.replace`` is atomic on POSIX filesystems). A kill at
any moment leaves either the previous complete file or the new complete file, plus at
most a hidden ``.<name>.*.partial`` file that the next write replaces or ignores.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

PARTIAL_SUFFIX = ".partial"


def fsync_dir(directory: str | os.PathLike) -> None:
    """Persist a rename: fsync the directory entry (a no-op where directories cannot be opened)."""
    with contextlib.suppress(OSError):
        fd = os.open(directory, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def fsync_file(path: str | os.PathLike) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
    """Yields a temporary path beside ``path``; on success it is fsync'ed and renamed to ``path``.

    On an exception the temporary file is removed and ``path`` is left untouched.
    """
    from benchmark import faults

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=PARTIAL_SUFFIX, dir=path.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        fsync_file(tmp)
        faults.fire("before_rename", file=path.name)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise
    fsync_dir(path.parent)


def write_text(path: str | os.PathLike, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text, encoding="utf-8", newline="\n")
    return Path(path)


def write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


__all__ = ["atomic_path", "write_text", "write_bytes", "fsync_dir", "fsync_file", "PARTIAL_SUFFIX"]
