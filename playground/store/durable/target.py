"""The layout of a durable copy's target folder and the few facts both the copier and a restore need.

<target>/datasets/<data set>/copy.json               written once: format, history id, the models
<target>/datasets/<data set>/records/<time>-<host>-<pid>.jsonl   the shards
<target>/datasets/<data set>/adapters/...            each version's folder, at its path in the data set
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from ..changelog import data_tables
from ..errors import StoreError

FORMAT = "alignment-playground-durable-copy"
FORMAT_VERSION = 1
COPY_FILE = "copy.json"
RECORDS = "records"
PARTIAL = ".partial-"  # adapter folders being copied; renamed when complete (and never uploaded)
META_KEY = "durable_copy"


class DurableCopyError(StoreError):
    """The copy cannot go on (or a restore cannot start); the message is meant for people."""


def data_set_folder(target: str | os.PathLike, data_set: str) -> Path:
    return Path(target) / "datasets" / data_set


def shards(folder: Path) -> list[Path]:
    return sorted((folder / RECORDS).glob("*.jsonl")) if (folder / RECORDS).is_dir() else []


def read_copy_file(folder: Path) -> dict | None:
    try:
        return json.loads((folder / COPY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise DurableCopyError(
            f"{folder / COPY_FILE} is unreadable ({error}); it names this copy's history."
        ) from error


def write_once(path: Path, text: str) -> None:
    """Write a file that is never rewritten."""
    # Written to a temporary name and renamed, so no reader (or upload) ever sees half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{PARTIAL}{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_empty(store) -> bool:
    """No data rows at all (meta aside): a store that a restore may fill."""
    with store.read() as conn:
        return all(
            conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() is None for t in data_tables(conn) if t != "meta"
        )


def adapter_path(row: dict) -> str:
    """Where a version's folder goes, relative to the data set (in the store and in the copy)."""
    # Versions inside the data set keep their relative path; one trained elsewhere gets a place of its own.
    path = row.get("path") or ""
    return path if path and not Path(path).is_absolute() else f"adapters/version-{row['version']}"


def copy_folder(src: Path, dst: Path) -> bool:
    """Copy a folder once: to a partial name, then renamed. False when the source is missing."""
    if (dst / "adapter_config.json").is_file():
        return True
    if not src.is_dir():
        return False
    partial = dst.with_name(PARTIAL + dst.name)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    os.replace(partial, dst)
    return True
