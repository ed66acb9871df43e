"""File locks: one process (and one thread) at a time, across every process on this machine that uses the same
lock file. Each `locked` call waits as long as it takes; the lock file stays in place (empty), so every waiter
locks the same file.

Only for lock files on local disk: network and bucket volumes may not honour them.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

from filelock import FileLock


@contextlib.contextmanager
def locked(path: str | os.PathLike) -> Iterator[None]:
    """Hold the exclusive lock of `path` (created when missing) while the block runs."""
    with FileLock(os.fspath(path)):
        yield
