"""Where the playground keeps its files, and the knobs every stage shares."""

from __future__ import annotations

import os
from pathlib import Path

DATA_DIR_ENV = "PLAYGROUND_DATA_DIR"


def default_data_dir() -> Path:
    """The data directory when none is given.

    Votes live here, so it is a data directory, not a cache: on a Hugging Face Space with persistent
    storage `/data` survives restarts; elsewhere the XDG data home.
    """
    env = os.environ.get(DATA_DIR_ENV)
    if env:
        return Path(env).expanduser()
    space_storage = Path("/data")
    if os.environ.get("SPACE_ID") and space_storage.is_dir() and os.access(space_storage, os.W_OK):
        return space_storage / "alignment-playground"
    xdg = os.environ.get("XDG_DATA_HOME") or str(Path.home() / ".local" / "share")
    return Path(xdg) / "alignment-playground"


def half_the_cores() -> int:
    """Torch threads for one of the two busy processes (the server decodes two models at once; the trainer trains):
    half the CPUs this process may use, at least 1."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 2)
    return max(1, cpus // 2)


def resolve_data_dir(data_dir: str | os.PathLike | None) -> Path:
    path = Path(data_dir).expanduser() if data_dir else default_data_dir()
    path.mkdir(parents=True, exist_ok=True)
    return path
