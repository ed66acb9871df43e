"""What training made of the votes: rounds, their steps and what they trained on, and what the trainer process is
doing. A finished round publishes a version (versions.py has the serving rule).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Callable, Iterable

from ..processes import pid_alive
from .database import from_row, to_json
from .errors import StoreError
from .versions import learned_from, relative_path, serves_after, set_serving

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
        with self.write() as conn:
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
                    to_json(hyperparams),
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
        with self.write() as conn:
            conn.execute(
                f"INSERT INTO round_steps (round_id, step, stage, {', '.join(names)}, extra, created_at) "
                f"VALUES (?, ?, ?, {', '.join('?' * len(names))}, ?, ?) "
                f"ON CONFLICT (round_id, step) DO UPDATE SET {updates}, "
                f"extra = json_patch(round_steps.extra, excluded.extra)",
                (round_id, step, stage, *columns.values(), to_json(extra), time.time()),
            )

    def finish_round(self, round_id: int, adapter_path: str | os.PathLike, metrics: dict) -> int:
        """Publish the round's adapter as the next version, all in one transaction; it serves if the serving
        version is still the round's parent (see versions.py). Returns the new version."""
        with self.write() as conn:
            rnd = self._running_round(conn, round_id)
            version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM adapter_versions").fetchone()[0]
            serves = serves_after(conn, rnd["parent_version"])
            now = time.time()
            conn.execute(
                "INSERT INTO adapter_versions (version, round_id, parent_version, path, state, metrics, created_at, "
                "served_on_publish) VALUES (?, ?, ?, ?, 'ready', ?, ?, ?)",
                (
                    version,
                    round_id,
                    rnd["parent_version"],
                    relative_path(self.root, adapter_path),
                    to_json(metrics),
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
                set_serving(conn, version)
            return version

    def note_round(self, round_id: int, hyperparams: dict) -> None:
        """Add to what a running round recorded of its settings (e.g. that it could not warm-start)."""
        with self.write() as conn:
            conn.execute(
                "UPDATE rounds SET hyperparams = json_patch(coalesce(hyperparams, '{}'), ?) WHERE id = ?",
                (to_json(hyperparams), round_id),
            )

    def set_round_progress(self, round_id: int, steps_done: int, steps_total: int | None) -> None:
        with self.write() as conn:
            conn.execute(
                "UPDATE rounds SET steps_done = ?, steps_total = ? WHERE id = ?", (steps_done, steps_total, round_id)
            )

    def running_round(self) -> dict | None:
        with self.read() as conn:
            row = from_row(conn.execute("SELECT * FROM rounds WHERE status = 'running' ORDER BY id DESC").fetchone())
        return None if row is None else row | {"learned_from": learned_from(row)}

    def request_round(self, admin: bool = False) -> None:
        """Ask the trainer for a round now ("train now"), whatever the number of pending pieces; `admin`: asked with
        the admin token. Whether the trainer honours it is its rule (training.request_honoured)."""
        with self.write() as conn:
            self.set_meta(conn, "round_requested", json.dumps({"at": time.time(), "admin": bool(admin)}))

    def round_requested(self) -> dict | None:
        """The request_round() that waits ({"at", "admin"}), without consuming it; None when none waits."""
        with self.read() as conn:
            return _request(self.meta(conn, "round_requested"))

    def take_round_request(self) -> dict | None:
        """The waiting request ({"at", "admin"}), once per request_round() call (the trainer consumes it)."""
        with self.write() as conn:
            row = conn.execute("DELETE FROM meta WHERE key = 'round_requested' RETURNING value").fetchone()
            return None if row is None else _request(row[0])

    def fail_round(self, round_id: int, error: str) -> None:
        """Mark a running round failed; its pairs stay pending and serving is untouched.
        Failing an already failed round is a no-op (the first error is kept)."""
        with self.write() as conn:
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
        with self.write() as conn:
            dead = [
                r["id"]
                for r in conn.execute("SELECT id, pid FROM rounds WHERE status = 'running'")
                if not is_alive(r["pid"])
            ]
            conn.executemany(
                "UPDATE rounds SET status = 'failed', error = 'interrupted', finished_at = ? WHERE id = ?",
                [(time.time(), i) for i in dead],
            )
            return [from_row(conn.execute("SELECT * FROM rounds WHERE id = ?", (i,)).fetchone()) for i in dead]

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
        with self.read() as conn:
            rows = [from_row(r) for r in conn.execute("SELECT * FROM rounds ORDER BY id")]
        return [r | {"learned_from": learned_from(r)} for r in rows]

    def round_steps(self, round_id: int | None = None) -> list[dict]:
        """Every logged step (of one round), in order; `loss_<stage>` repeats the loss under its stage's name."""
        with self.read() as conn:
            rows = [
                from_row(r)
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
        with self.write() as conn:
            self.set_meta(conn, "trainer", json.dumps(state | {"at": time.time()}))

    def trainer_state(self) -> dict | None:
        with self.read() as conn:
            value = self.meta(conn, "trainer")
        return json.loads(value) if value else None


def _request(value: str | None) -> dict | None:
    if value is None:
        return None
    try:
        request = json.loads(value)
    except ValueError:
        request = None
    # A request stored before requests said who asked (a bare time) counts as a visitor's.
    return request if isinstance(request, dict) else {"at": None, "admin": False}
