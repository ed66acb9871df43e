"""Adapter versions: which exist, which serves, which are bad, and what was measured of each (drift, ablation).

Serving rule: a finished round's version serves only if the serving version is still the round's parent. If
someone chose another version during the round (a rollback), that choice stands: the new version is published,
not served, and says so (`served_on_publish` = 0).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from pathlib import Path

from .database import from_row, meta, set_meta, to_json
from .errors import StoreError

# A version's reward model lives in this folder of the version's folder (reward_models.py).
REWARD_MODEL_FOLDER = "reward_model"

_VERSION_SELECT = (
    "SELECT av.*, r.pairs_used, r.demonstrations_used, r.ratings_used, r.hyperparams, r.started_at, r.finished_at "
    "FROM adapter_versions av LEFT JOIN rounds r ON r.id = av.round_id"
)


def learned_from(round_row: dict) -> dict[str, int]:
    """What a round (or the version it made) trained on, new and replayed: {"demonstrations", "pairs", "ratings"}."""
    return {
        "demonstrations": round_row.get("demonstrations_used") or 0,
        "pairs": round_row.get("pairs_used") or 0,
        "ratings": round_row.get("ratings_used") or 0,
    }


def serving_of(conn: sqlite3.Connection) -> int:
    """The serving version as `conn` sees it; 0 = no adapter."""
    value = meta(conn, "serving_version")
    return int(value) if value else 0


def set_serving(conn: sqlite3.Connection, version: int) -> None:
    set_meta(conn, "serving_version", str(int(version)))


def serves_after(conn: sqlite3.Connection, parent_version: int | None) -> bool:
    """Whether a round trained from `parent_version` serves its version when it finishes: only while its parent
    still serves."""
    return serving_of(conn) == (parent_version or 0)


def relative_path(root: Path, path: str | os.PathLike) -> str:
    """How a version's folder is stored."""
    # Inside the data set, a path is kept relative to it, so the folder can move (or be restored elsewhere).
    path = Path(path)
    try:
        return str(path.resolve().relative_to(root.resolve()))
    except ValueError:
        return str(path)


def absolute_path(root: Path, row: dict | None) -> dict | None:
    """A version row with its folder's path made absolute again."""
    if row is not None and row.get("path") and not Path(row["path"]).is_absolute():
        row["path"] = str(root / row["path"])
    return row


def _newest_ready_below(conn: sqlite3.Connection, version: int) -> int:
    return conn.execute(
        "SELECT coalesce(max(version), 0) FROM adapter_versions WHERE state = 'ready' AND version < ?", (version,)
    ).fetchone()[0]


class Versions:
    """Versions, the serving version and the measurements of versions (a part of `Store`)."""

    # -- versions ------------------------------------------------------------------------------------

    def versions(self) -> list[dict]:
        """All adapter versions, oldest first, with their round's pairs_used and hyperparams and whether
        each is serving."""
        with self.read() as conn:
            serving = serving_of(conn)
            rows = [
                absolute_path(self.root, from_row(r)) for r in conn.execute(_VERSION_SELECT + " ORDER BY av.version")
            ]
        for v in rows:
            v["serving"] = v["version"] == serving
            v["learned_from"] = learned_from(v)
        return rows

    def version(self, version: int) -> dict | None:
        with self.read() as conn:
            v = absolute_path(
                self.root, from_row(conn.execute(_VERSION_SELECT + " WHERE av.version = ?", (version,)).fetchone())
            )
            if v is not None:
                v["serving"] = v["version"] == serving_of(conn)
                v["learned_from"] = learned_from(v)
            return v

    def serving_version(self) -> int:
        """The adapter version the app should serve; 0 = no adapter."""
        with self.read() as conn:
            return serving_of(conn)

    def set_serving_version(self, version: int) -> None:
        """Serve another version (rollback/roll forward); 0 serves no adapter."""
        with self.write() as conn:
            if version != 0:
                row = conn.execute(
                    "SELECT state, reason FROM adapter_versions WHERE version = ?", (version,)
                ).fetchone()
                if row is None:
                    raise StoreError(f"Adapter version {version} does not exist.")
                if row["state"] == "bad":
                    raise StoreError(
                        f"Adapter version {version} is marked bad ({row['reason'] or 'no reason given'}) "
                        f"and cannot be served."
                    )
            set_serving(conn, version)

    def mark_version_bad(self, version: int, reason: str) -> int:
        """Take a version out of service (its files are broken; `mark_version_good` after a re-check puts it back). If
        it was serving, fall back to the newest ready version below it (or 0). Returns the serving version
        afterwards."""
        with self.write() as conn:
            if (
                conn.execute(
                    "UPDATE adapter_versions SET state = 'bad', reason = ? WHERE version = ?", (reason, version)
                ).rowcount
                == 0
            ):
                raise StoreError(f"Adapter version {version} does not exist.")
            serving = serving_of(conn)
            if serving == version:
                serving = _newest_ready_below(conn, version)
                set_serving(conn, serving)
            return serving

    def mark_version_good(self, version: int) -> None:
        """Put a version marked bad back in service (its files were re-checked and read fine); it serves again only
        when chosen (rollback)."""
        with self.write() as conn:
            if (
                conn.execute(
                    "UPDATE adapter_versions SET state = 'ready', reason = NULL WHERE version = ?", (version,)
                ).rowcount
                == 0
            ):
                raise StoreError(f"Adapter version {version} does not exist.")

    def fall_back_below(self, version: int) -> int:
        """While `version` serves: serve the newest ready version below it (or 0) instead, for a serving version
        whose record is gone. Returns the serving version afterwards."""
        with self.write() as conn:
            serving = serving_of(conn)
            if serving == version:
                serving = _newest_ready_below(conn, version)
                set_serving(conn, serving)
            return serving

    # -- drift per version (drift.py) --------------------------------------------------------------------

    def save_version_eval(self, version: int, eval_set: str, metrics: dict) -> None:
        """What the trainer measured of `version` (0 = the SFT model) on the prompt set `eval_set`; replaces an
        earlier measurement of the same set."""
        with self.write() as conn:
            conn.execute(
                "INSERT INTO version_evals (version, eval_set, metrics, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (version, eval_set) DO UPDATE SET metrics = excluded.metrics, "
                "created_at = excluded.created_at",
                (int(version), eval_set, to_json(metrics), time.time()),
            )

    def version_evals(self) -> list[dict]:
        """Every stored evaluation, oldest first."""
        with self.read() as conn:
            return [from_row(r) for r in conn.execute("SELECT * FROM version_evals ORDER BY created_at, version")]

    def versions_missing_eval(self, eval_set: str) -> list[int]:
        """Version 0 and the ready versions that have no evaluation of `eval_set`."""
        with self.read() as conn:
            return [
                r[0]
                for r in conn.execute(
                    "SELECT v FROM (SELECT 0 AS v UNION ALL SELECT version FROM adapter_versions WHERE state = 'ready') "
                    "WHERE v NOT IN (SELECT version FROM version_evals WHERE eval_set = ?) ORDER BY v",
                    (eval_set,),
                )
            ]

    # -- what each stage contributes (ablation.py) -----------------------------------------------------

    def save_ablation(self, summary: dict) -> None:
        """The latest ablation measured on this data set's models (`simulate --ablation` runs it on a copy of its
        own feedback, never this store's): what the Training tab's Stages view shows."""
        with self.write() as conn:
            self.set_meta(conn, "ablation", to_json(summary | {"saved_at": time.time()}))

    def latest_ablation(self) -> dict | None:
        with self.read() as conn:
            value = self.meta(conn, "ablation")
        return json.loads(value) if value else None

    # -- reward over-optimization (overoptimization.py) ---------------------------------------------------

    def save_overoptimization(self, summary: dict) -> None:
        """The latest over-optimization curve measured on this data set's models (`simulate --preference-route rlhf
        --checkpoint-steps N`, on feedback of its own): what the Stages view plots."""
        with self.write() as conn:
            self.set_meta(conn, "overoptimization", to_json(summary | {"saved_at": time.time()}))

    def latest_overoptimization(self) -> dict | None:
        with self.read() as conn:
            value = self.meta(conn, "overoptimization")
        return json.loads(value) if value else None

    # -- an ablation on the recorded feedback (`ablate`, the Stages view's button) ----------------------------

    def forget_training(self) -> None:
        """Every piece of feedback pending again and no adapter serving: for a COPY of a data set that trains each
        objective from the SFT model on all of it (ablation.py); never called on a live data set."""
        with self.write() as conn:
            conn.execute("UPDATE pairs SET round_id = NULL")
            for table in ("round_pairs", "round_demonstrations", "round_ratings"):
                conn.execute(f"DELETE FROM {table}")
            conn.execute(
                "UPDATE rounds SET status = 'failed', error = 'forgotten by an ablation copy' WHERE status = 'running'"
            )
            set_serving(conn, 0)

    def set_ablation_progress(self, progress: dict | None) -> None:
        """How far the running ablation is ({"pid", "done", "total", "current", "started_at", "error"}); None when
        none runs."""
        with self.write() as conn:
            self.set_meta(conn, "ablation_progress", to_json(progress) if progress else "")

    def ablation_progress(self) -> dict | None:
        with self.read() as conn:
            value = self.meta(conn, "ablation_progress")
        return json.loads(value) if value else None
