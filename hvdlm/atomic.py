"""Files that appear whole or not at all: write under a temporary name, fsync, rename.

A rename is atomic, so a reader (or a run killed at any moment) sees the old file or the new
one, never half of one; at worst a hidden ``.<name>.<random>.tmp`` stays behind.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from typing import BinaryIO, Iterator

import numpy as np

from hvdlm.errors import HvdlmError


def fsync_dir(folder: str | Path) -> None:
    """Make the renames in ``folder`` durable (a renamed file is not on disk until its folder is)."""
    dir_fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


@contextlib.contextmanager
def atomic_file(path: str | Path) -> Iterator[BinaryIO]:
    """Open a temp file beside ``path`` for writing; on a clean exit it is fsynced and renamed to
    ``path``; on any exception (a kill included) it is removed. OSErrors pass through as they are."""
    final = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(final.parent)


def write_atomic(path: str | Path, data: bytes | np.ndarray) -> None:
    """``data`` (bytes, or an array's raw buffer) into ``path`` atomically; a failed write is one
    HvdlmError naming the file."""
    try:
        with atomic_file(path) as fh:
            if isinstance(data, np.ndarray):
                data.tofile(fh)
            else:
                fh.write(data)
    except OSError as e:
        raise HvdlmError(f"cannot write {path}: {e.strerror or e}; check the directory is writable and has space") from e
