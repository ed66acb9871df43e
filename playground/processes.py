"""Small facts about processes and ports that the trainer, the servers the app starts, the benchmarks and the tests
all need: defined once here."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

PACKAGE_ROOT = str(Path(__file__).resolve().parents[1])


def child_env() -> dict:
    """The environment of a child `python -m playground...`: this package importable from anywhere, no progress
    bars (their output is read, not watched)."""
    path = os.pathsep.join(p for p in (PACKAGE_ROOT, os.environ.get("PYTHONPATH")) if p)
    return os.environ | {"TQDM_DISABLE": "1", "PYTHONPATH": path}


def last_words(output: str) -> str | None:
    """The last non-empty line a failed child printed (its error, for a message), or None."""
    lines = [line for line in (output or "").strip().splitlines() if line.strip()]
    return lines[-1] if lines else None


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this machine."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def wait_for(predicate, timeout: float, interval: float = 0.5) -> bool:
    """Poll `predicate` until it holds or `timeout` seconds pass; whether it held."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return predicate()
