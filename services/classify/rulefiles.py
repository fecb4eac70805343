"""Read rule and list files defensively: regular files inside their directory, size-capped, never blocking."""

from __future__ import annotations

import os
import stat
from pathlib import Path

MAX_RULE_FILE_BYTES = 1 << 20
MAX_LIST_FILE_BYTES = 8 << 20


class UnsafeFile(Exception):
    """A file the loader refuses to read; the message says why in words a service manager understands."""


def read_capped(path: Path, root: Path, limit: int) -> bytes:
    """The file's bytes, or UnsafeFile for a FIFO, device, socket, a link out of `root`, or more than `limit`.

    Links that stay inside `root` are fine: a Kubernetes ConfigMap mounts every file as one.
    """
    resolved = path.resolve()
    if not resolved.is_relative_to(root.resolve()):
        raise UnsafeFile(f"is a link to {resolved}, outside {root}: rule and list files must live in the rule folder")
    # O_NONBLOCK: opening a FIFO for reading would otherwise wait for a writer, forever
    try:
        descriptor = os.open(resolved, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError as exc:
        raise UnsafeFile(f"cannot be read: {exc.strerror}") from exc
    try:
        info = os.fstat(descriptor)
        if not stat.S_ISREG(info.st_mode):
            raise UnsafeFile("is not a regular file (a FIFO, device or socket cannot hold rules)")
        if info.st_size > limit:
            raise UnsafeFile(f"is {info.st_size:,} bytes; a file may have at most {limit:,}")
        with os.fdopen(descriptor, "rb", closefd=False) as handle:
            data = handle.read(limit + 1)
    finally:
        os.close(descriptor)
    if len(data) > limit:
        raise UnsafeFile(f"grew past {limit:,} bytes while being read")
    return data
