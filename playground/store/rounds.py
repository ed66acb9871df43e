"""What training made of the votes: rounds and their steps, adapter versions, which version serves, and what the
trainer process is doing.

Serving rule: a finished round's version serves only if the serving version is still the round's parent. If
someone chose another version during the round (a rollback), that choice stands: the new version is published,
not served, and says so (`served_on_publish` = 0).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

from .. import votes as rules
from ..processes import pid_alive
from .schema import StoreError, _json, _row

# trl's log keys -> round_steps columns.
_STEP_COLUMNS = {
    "loss": "loss",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "rewards/chosen": "chosen_reward",
    "rewards/rejected": "rejected_reward",
    "learning_rate": "learning_rate",
}

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


class Rounds:
    """Rounds, steps, versions, serving state and the trainer's state (a part of `Store`)."""

    # -- rounds --------------------------------------------------------------------------------------

    def start_round(
        self,
        parent_version: int | None,
        pair_ids: Iterable[int],
        hyperparams: dict,
        pid: int | None,
        *,
        demonstration_ids: Iterable[int] = (),
        rating_keys: Iterable[tuple[int, int]] = (),
    ) -> int:
        """Record a running round and what it trains on: pairs, demonstrations (their answer ids) and ratings
        ((vote id, answer id) keys). parent_version 0/None = trained from no adapter."""
        pair_ids = sorted(set(pair_ids))
        demonstration_ids = sorted(set(demonstration_ids))
        rating_keys = sorted({(int(v), int(a)) for v, a in rating_keys})
        with self._write() as conn:
            if (
                parent_version
                and conn.execute("SELECT 1 FROM adapter_versions WHERE version = ?", (parent_version,)).fetchone()
                is None
            ):
                raise StoreError(f"Parent version {parent_version} does not exist.")
            known = conn.execute(
                "SELECT count(*) FROM pairs WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(pair_ids),)
            ).fetchone()[0]
            if known != len(pair_ids):
                raise StoreError(f"{len(pair_ids) - known} of the {len(pair_ids)} pairs do not exist.")
            known = conn.execute(
                "SELECT count(*) FROM demonstrations WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(demonstration_ids),),
            ).fetchone()[0]
            if known != len(demonstration_ids):
                raise StoreError(
                    f"{len(demonstration_ids) - known} of the {len(demonstration_ids)} demonstrations do not exist."
                )
            known = conn.execute(
                "SELECT count(*) FROM ratings WHERE EXISTS (SELECT 1 FROM json_each(?) k WHERE "
                "json_extract(k.value, '$[0]') = vote_id AND json_extract(k.value, '$[1]') = answer_id)",
                (json.dumps(rating_keys),),
            ).fetchone()[0]
            if known != len(rating_keys):
                raise StoreError(f"{len(rating_keys) - known} of the {len(rating_keys)} ratings do not exist.")
            round_id = conn.execute(
                "INSERT INTO rounds (status, parent_version, pairs_used, demonstrations_used, ratings_used, "
                "hyperparams, pid, started_at) VALUES ('running', ?, ?, ?, ?, ?, ?, ?)",
                (
                    parent_version or None,
                    len(pair_ids),
                    len(demonstration_ids),
                    len(rating_keys),
                    _json(hyperparams),
                    pid,
                    time.time(),
                ),
            ).lastrowid
            conn.executemany(
                "INSERT INTO round_pairs (round_id, pair_id) VALUES (?, ?)", [(round_id, p) for p in pair_ids]
            )
            conn.executemany(
                "INSERT INTO round_demonstrations (round_id, answer_id) VALUES (?, ?)",
                [(round_id, d) for d in demonstration_ids],
            )
            conn.executemany(
                "INSERT INTO round_ratings (round_id, vote_id, answer_id) VALUES (?, ?, ?)",
                [(round_id, v, a) for v, a in rating_keys],
            )
            return round_id

    def log_step(self, round_id: int, step: int, metrics: dict, stage: str = "dpo") -> None:
        """Store one trl log dict of `stage` (sft, dpo, kto: training.STAGES); `step` counts across the round's
        stages. Logging the same step twice (train and eval logs) merges them."""
        columns = {col: None for col in _STEP_COLUMNS.values()}
        extra = {}
        for key, value in metrics.items():
            if key in _STEP_COLUMNS and isinstance(value, (int, float)) and not isinstance(value, bool):
                columns[_STEP_COLUMNS[key]] = float(value)
            else:
                extra[key] = value
        names = list(columns)
        updates = ", ".join(f"{c} = coalesce(excluded.{c}, round_steps.{c})" for c in names)
        with self._write() as conn:
            conn.execute(
                f"INSERT INTO round_steps (round_id, step, stage, {', '.join(names)}, extra, created_at) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(names))}, ?, ?) "
                f"ON CONFLICT (round_id, step) DO UPDATE SET {updates}, "
                f"extra = json_patch(round_steps.extra, excluded.extra)",
                (round_id, step, stage, *columns.values(), _json(extra), time.time()),
            )

    def finish_round(self, round_id: int, adapter_path: str | os.PathLike, metrics: dict) -> int:
        """Publish the round's adapter as the next version, all in one transaction; it serves if the serving
        version is still the round's parent (see the module docstring). Returns the new version."""
        with self._write() as conn:
            rnd = self._running_round(conn, round_id)
            version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM adapter_versions").fetchone()[0]
            serves = self._serving(conn) == (rnd["parent_version"] or 0)
            now = time.time()
            conn.execute(
                "INSERT INTO adapter_versions (version, round_id, parent_version, path, state, metrics, created_at, "
                "served_on_publish) VALUES (?, ?, ?, ?, 'ready', ?, ?, ?)",
                (
                    version,
                    round_id,
                    rnd["parent_version"],
                    self._relative(adapter_path),
                    _json(metrics),
                    now,
                    int(serves),
                ),
            )
            conn.execute(
                "UPDATE rounds SET status = 'done', version = ?, finished_at = ? WHERE id = ?", (version, now, round_id)
            )
            conn.execute(
                "UPDATE pairs SET round_id = ? WHERE round_id IS NULL "
                "AND id IN (SELECT pair_id FROM round_pairs WHERE round_id = ?)",
                (round_id, round_id),
            )
            if serves:
                self._set_serving(conn, version)
            return version

    def _relative(self, path: str | os.PathLike) -> str:
        # Inside the data set, a path is kept relative to it, so the folder can move (or be restored elsewhere).
        path = Path(path)
        try:
            return str(path.resolve().relative_to(self.root.resolve()))
        except ValueError:
            return str(path)

    def _absolute(self, row: dict | None) -> dict | None:
        if row is not None and row.get("path") and not Path(row["path"]).is_absolute():
            row["path"] = str(self.root / row["path"])
        return row

    def set_round_progress(self, round_id: int, steps_done: int, steps_total: int | None) -> None:
        with self._write() as conn:
            conn.execute(
                "UPDATE rounds SET steps_done = ?, steps_total = ? WHERE id = ?", (steps_done, steps_total, round_id)
            )

    def running_round(self) -> dict | None:
        with self._read() as conn:
            row = _row(conn.execute("SELECT * FROM rounds WHERE status = 'running' ORDER BY id DESC").fetchone())
        return None if row is None else row | {"learned_from": learned_from(row)}

    def request_round(self) -> None:
        """Ask the trainer for a round now, whatever the number of pending pairs ("train now")."""
        with self._write() as conn:
            self._set_meta(conn, "round_requested", str(time.time()))

    def take_round_request(self) -> bool:
        """True once per request_round() call (the trainer consumes it)."""
        with self._write() as conn:
            return conn.execute("DELETE FROM meta WHERE key = 'round_requested'").rowcount > 0

    def fail_round(self, round_id: int, error: str) -> None:
        """Mark a running round failed; its pairs stay pending and serving is untouched.
        Failing an already failed round is a no-op (the first error is kept)."""
        with self._write() as conn:
            rnd = conn.execute("SELECT status FROM rounds WHERE id = ?", (round_id,)).fetchone()
            if rnd is not None and rnd["status"] == "failed":
                return
            self._running_round(conn, round_id)
            conn.execute(
                "UPDATE rounds SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                (str(error), time.time(), round_id),
            )

    def recover_interrupted_rounds(self, is_alive: Callable[[int | None], bool] = pid_alive) -> list[dict]:
        """Mark 'running' rounds whose process is gone as failed ('interrupted'); return them.
        Call at trainer start-up, after a crash or restart."""
        with self._write() as conn:
            dead = [
                r["id"]
                for r in conn.execute("SELECT id, pid FROM rounds WHERE status = 'running'")
                if not is_alive(r["pid"])
            ]
            conn.executemany(
                "UPDATE rounds SET status = 'failed', error = 'interrupted', finished_at = ? WHERE id = ?",
                [(time.time(), i) for i in dead],
            )
            return [_row(conn.execute("SELECT * FROM rounds WHERE id = ?", (i,)).fetchone()) for i in dead]

    @staticmethod
    def _running_round(conn: sqlite3.Connection, round_id: int) -> sqlite3.Row:
        rnd = conn.execute("SELECT * FROM rounds WHERE id = ?", (round_id,)).fetchone()
        if rnd is None:
            raise StoreError(f"Round {round_id} does not exist.")
        if rnd["status"] != "running":
            raise StoreError(f"Round {round_id} is already {rnd['status']}.")
        return rnd

    def rounds(self) -> list[dict]:
        """All rounds, oldest first, each with what it `learned_from`."""
        with self._read() as conn:
            rows = [_row(r) for r in conn.execute("SELECT * FROM rounds ORDER BY id")]
        return [r | {"learned_from": learned_from(r)} for r in rows]

    def round_steps(self, round_id: int | None = None) -> list[dict]:
        """Every logged step (of one round), in order; `loss_<stage>` repeats the loss under its stage's name."""
        with self._read() as conn:
            rows = [
                _row(r)
                for r in conn.execute(
                    "SELECT * FROM round_steps WHERE ? IS NULL OR round_id = ? ORDER BY round_id, step",
                    (round_id, round_id),
                )
            ]
        for row in rows:
            row[f"loss_{row['stage']}"] = row["loss"]
        return rows

    # -- the trainer process's state -------------------------------------------------------------------

    def set_trainer_state(self, state: dict) -> None:
        """What the trainer is doing (`waiting` with how many pairs, `training`, `stopped`), for the page and for
        anyone waiting on it."""
        with self._write() as conn:
            self._set_meta(conn, "trainer", json.dumps(state | {"at": time.time()}))

    def trainer_state(self) -> dict | None:
        with self._read() as conn:
            value = self._meta(conn, "trainer")
        return json.loads(value) if value else None

    # -- versions ------------------------------------------------------------------------------------

    def versions(self) -> list[dict]:
        """All adapter versions, oldest first, with their round's pairs_used and hyperparams and whether
        each is serving."""
        with self._read() as conn:
            serving = self._serving(conn)
            rows = [self._absolute(_row(r)) for r in conn.execute(_VERSION_SELECT + " ORDER BY av.version")]
        for v in rows:
            v["serving"] = v["version"] == serving
            v["learned_from"] = learned_from(v)
        return rows

    def version(self, version: int) -> dict | None:
        with self._read() as conn:
            v = self._absolute(_row(conn.execute(_VERSION_SELECT + " WHERE av.version = ?", (version,)).fetchone()))
            if v is not None:
                v["serving"] = v["version"] == self._serving(conn)
                v["learned_from"] = learned_from(v)
            return v

    def serving_version(self) -> int:
        """The adapter version the app should serve; 0 = no adapter."""
        with self._read() as conn:
            return self._serving(conn)

    def set_serving_version(self, version: int) -> None:
        """Serve another version (rollback/roll forward); 0 serves no adapter."""
        with self._write() as conn:
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
            self._set_serving(conn, version)

    def mark_version_bad(self, version: int, reason: str) -> int:
        """Take a version out of service for good. If it was serving, fall back to the newest ready
        version below it (or 0). Returns the serving version afterwards."""
        with self._write() as conn:
            if (
                conn.execute(
                    "UPDATE adapter_versions SET state = 'bad', reason = ? WHERE version = ?", (reason, version)
                ).rowcount
                == 0
            ):
                raise StoreError(f"Adapter version {version} does not exist.")
            serving = self._serving(conn)
            if serving == version:
                serving = self._newest_ready_below(conn, version)
                self._set_serving(conn, serving)
            return serving

    def fall_back_below(self, version: int) -> int:
        """While `version` serves: serve the newest ready version below it (or 0) instead, for a serving version
        whose record is gone. Returns the serving version afterwards."""
        with self._write() as conn:
            serving = self._serving(conn)
            if serving == version:
                serving = self._newest_ready_below(conn, version)
                self._set_serving(conn, serving)
            return serving

    def latest_good_version(self) -> int:
        with self._read() as conn:
            return conn.execute(
                "SELECT coalesce(max(version), 0) FROM adapter_versions WHERE state = 'ready'"
            ).fetchone()[0]

    @staticmethod
    def _newest_ready_below(conn: sqlite3.Connection, version: int) -> int:
        return conn.execute(
            "SELECT coalesce(max(version), 0) FROM adapter_versions WHERE state = 'ready' AND version < ?", (version,)
        ).fetchone()[0]

    def _serving(self, conn: sqlite3.Connection) -> int:
        value = self._meta(conn, "serving_version")
        return int(value) if value else 0

    def _set_serving(self, conn: sqlite3.Connection, version: int) -> None:
        self._set_meta(conn, "serving_version", str(int(version)))

    # -- drift per version (drift.py) --------------------------------------------------------------------

    def save_version_eval(self, version: int, eval_set: str, metrics: dict) -> None:
        """What the trainer measured of `version` (0 = the SFT model) on the prompt set `eval_set`; replaces an
        earlier measurement of the same set."""
        with self._write() as conn:
            conn.execute(
                "INSERT INTO version_evals (version, eval_set, metrics, created_at) VALUES (?, ?, ?, ?) "
                "ON CONFLICT (version, eval_set) DO UPDATE SET metrics = excluded.metrics, "
                "created_at = excluded.created_at",
                (int(version), eval_set, _json(metrics), time.time()),
            )

    def version_evals(self) -> list[dict]:
        """Every stored evaluation, oldest first."""
        with self._read() as conn:
            return [_row(r) for r in conn.execute("SELECT * FROM version_evals ORDER BY created_at, version")]

    def versions_missing_eval(self, eval_set: str) -> list[int]:
        """Version 0 and the ready versions that have no evaluation of `eval_set`."""
        with self._read() as conn:
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
        with self._write() as conn:
            self._set_meta(conn, "ablation", _json(summary | {"saved_at": time.time()}))

    def latest_ablation(self) -> dict | None:
        with self._read() as conn:
            value = self._meta(conn, "ablation")
        return json.loads(value) if value else None

    # -- numbers -------------------------------------------------------------------------------------

    def counts(self) -> dict[str, Any]:
        with self._read() as conn:

            def one(sql: str) -> int:
                return conn.execute(sql).fetchone()[0]

            by_kind = dict.fromkeys(rules.VOTE_KINDS, 0)
            by_kind.update(conn.execute("SELECT kind, count(*) FROM votes GROUP BY kind").fetchall())
            return {
                "prompts": one("SELECT count(*) FROM prompts"),
                "comparisons": one("SELECT count(*) FROM comparisons"),
                "answers": one("SELECT count(*) FROM answers"),
                "votes": sum(by_kind.values()),
                "votes_by_kind": by_kind,
                "pairs": one("SELECT count(*) FROM pairs"),
                "pairs_pending": one("SELECT count(*) FROM pairs WHERE round_id IS NULL"),
                "rounds": one("SELECT count(*) FROM rounds"),
                "versions": one("SELECT count(*) FROM adapter_versions"),
            }
