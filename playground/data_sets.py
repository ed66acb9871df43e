"""Data sets: the votes, pairs, rounds and adapters of one pair of models, in a folder of their own.

Votes on one model's answers must not train another model, and an adapter fits only the model it was trained
on, so every pair of models (the SFT model with the base model) gets its own data set:

    <data dir>/datasets/<name>/
        playground.sqlite3    the store
        adapters/round-NNNN/  adapter versions (the store records their paths relative to this folder)
        trainer.log
        dataset.json          which models it belongs to

Starting with other models opens (or creates) their data set; switching back finds the earlier one. The model
caches (`<data dir>/models`) are shared by all data sets.

A data directory written before data sets existed keeps its store at `<data dir>/playground.sqlite3`. The first
start whose models wrote those answers moves it into their data set (with its adapters); a store whose answers
came from other models is left where it is and `info` names it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

from .locks import locked
from .models import describe_source, hub_id
from .store import STORE_FILE

log = logging.getLogger(__name__)

DATA_SETS = "datasets"

ABOUT_FILE = "dataset.json"


def model_identity(spec: str) -> str:
    """What makes two specs the same model: an embedded name or Hub id as written, a local file or folder by its
    absolute path."""
    if spec.startswith("embedded:") or describe_source(spec) == "Hugging Face Hub id":
        return spec
    return str(Path(spec).expanduser().resolve())


def _slug(identity: str) -> str:
    last = identity.rstrip("/").rsplit("/", 1)[-1].removeprefix("embedded:").removesuffix(".gguf")
    return re.sub(r"[^a-z0-9.]+", "-", last.lower()).strip("-")[:40] or "model"


@dataclass(frozen=True)
class DataSet:
    root: Path
    base: str  # model identities
    sft: str

    @classmethod
    def for_models(cls, data_dir: str | os.PathLike, base_spec: str, sft_spec: str) -> DataSet:
        """The data set of these models in `data_dir`, created on first use (and adopting a pre-data-set store
        that these models wrote)."""
        data_dir = Path(data_dir)
        base, sft = model_identity(base_spec), model_identity(sft_spec)
        digest = hashlib.sha256(f"{base}\n{sft}".encode()).hexdigest()[:8]
        data_set = cls(data_dir / DATA_SETS / f"{_slug(sft)}__{_slug(base)}-{digest}", base, sft)
        data_set.root.mkdir(parents=True, exist_ok=True)
        about = data_set.root / ABOUT_FILE
        if not about.exists():
            text = json.dumps(
                {
                    "base": base,
                    "sft": sft,
                    "base_spec": base_spec,
                    "sft_spec": sft_spec,
                    "sft_hub_id": hub_id(sft_spec),
                    "created_at": time.time(),
                },
                indent=2,
            )
            tmp = about.with_suffix(".tmp")
            tmp.write_text(text)
            os.replace(tmp, about)
        _adopt_legacy_store(data_dir, data_set, base_spec, sft_spec)
        return data_set

    @property
    def name(self) -> str:
        return self.root.name

    @property
    def store_path(self) -> Path:
        return self.root / STORE_FILE

    @property
    def adapters_dir(self) -> Path:
        return self.root / "adapters"

    @property
    def trainer_log(self) -> Path:
        return self.root / "trainer.log"

    def open_store(self):
        from .store import Store

        return Store(self.store_path)


def list_data_sets(data_dir: str | os.PathLike) -> list[dict]:
    """Every data set in a data directory: its name, folder, models and number of votes."""
    rows = []
    for folder in sorted((Path(data_dir) / DATA_SETS).glob("*/")):
        try:
            about = json.loads((folder / ABOUT_FILE).read_text())
        except (OSError, ValueError):
            continue
        rows.append(
            {
                "name": folder.name,
                "path": str(folder),
                "base": about.get("base"),
                "sft": about.get("sft"),
                "votes": _count(folder / STORE_FILE, "votes"),
            }
        )
    return rows


def legacy_store(data_dir: str | os.PathLike) -> dict | None:
    """A store from before data sets that no start has adopted (its answers came from other models): where it is
    and which models wrote it."""
    path = Path(data_dir) / STORE_FILE
    if not path.exists():
        return None
    return {"path": str(path), "models": _answer_models(path), "votes": _count(path, "votes")}


def _count(path: Path, table: str) -> int | None:
    if not path.exists():
        return None
    try:
        with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
            return conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    except sqlite3.Error:
        return None


def _answer_models(path: Path) -> dict[str, list[str]]:
    """{"base": [...], "sft": [...]}: the model names a store's answers record, without the "(int8)" / "(int4)"
    mark."""
    with contextlib.closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as conn:
        rows = conn.execute("SELECT DISTINCT arm, model FROM answers").fetchall()
    models: dict[str, set[str]] = {"base": set(), "sft": set()}
    for arm, model in rows:
        models["base" if arm == "base" else "sft"].add(model.removesuffix(" (int8)").removesuffix(" (int4)"))
    return {role: sorted(names) for role, names in models.items()}


def _names_of(spec: str) -> set[str]:
    # What an answer records as its model (models.LoadedModel.name), as typed and as an absolute path.
    names = {spec.removeprefix("embedded:")}
    if not spec.startswith("embedded:"):
        names.add(str(Path(spec).expanduser().resolve()))
    return names


def _adopt_legacy_store(data_dir: Path, data_set: DataSet, base_spec: str, sft_spec: str) -> None:
    legacy = data_dir / STORE_FILE
    if not legacy.exists():
        return
    with locked(data_dir / ".datasets.lock"):
        if not legacy.exists() or data_set.store_path.exists():
            return  # adopted meanwhile, or this data set has its own store already: never merge two
        models = _answer_models(legacy)
        mine = {"base": _names_of(base_spec), "sft": _names_of(sft_spec)}
        if not all(set(names) <= mine[role] for role, names in models.items()):
            log.warning("%s holds answers of other models (%s); it stays there for them.", legacy, models)
            return
        if not _rewrite_for_moving(legacy, str(data_dir / "adapters")):
            log.warning("%s is in use by another process; it moves into its data set at a later start.", legacy)
            return
        if (data_dir / "adapters").is_dir():
            os.replace(data_dir / "adapters", data_set.adapters_dir)
        if (data_dir / "trainer.log").exists():
            os.replace(data_dir / "trainer.log", data_set.trainer_log)
        os.replace(legacy, data_set.store_path)
        log.info("Moved the store of %s into the data set %s.", data_dir, data_set.name)


def _rewrite_for_moving(store: Path, old_adapters: str) -> bool:
    """One self-contained file (no -wal) with adapter paths relative to the data set, ready to move; False (and
    nothing changed) when another process uses the store."""
    with contextlib.closing(sqlite3.connect(store, isolation_level=None, timeout=0)) as conn:
        # Leaving WAL mode checkpoints everything into the main file (SQLite then removes -wal and -shm); it needs
        # the only connection, so it also tells whether anyone else has the store open.
        try:
            if conn.execute("PRAGMA journal_mode = DELETE").fetchone()[0] != "delete":
                return False
            conn.execute("BEGIN IMMEDIATE")
        except sqlite3.OperationalError:
            return False
        for version, path in conn.execute("SELECT version, path FROM adapter_versions").fetchall():
            if path.startswith(old_adapters + os.sep):
                conn.execute(
                    "UPDATE adapter_versions SET path = ? WHERE version = ?",
                    ("adapters" + path[len(old_adapters) :], version),
                )
        conn.execute("COMMIT")
        return True
