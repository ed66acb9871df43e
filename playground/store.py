"""The SQLite store: the system's record of prompts, answers, votes, preference pairs, training rounds
and adapter versions.

One file shared by the web app, the trainer process and any script. To make that safe:
- WAL mode, so readers never block the writer and the writer never blocks readers;
- a fresh connection per operation, so any thread or process can call any method;
- every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock up front, so two writers
  queue on the busy timeout instead of deadlocking when both try to upgrade a read lock;
- `synchronous=FULL`: a vote is on disk before the person who cast it is thanked.

Timestamps are float unix seconds. JSON columns (settings, hyperparams, metrics, extra) come back
parsed. Lookups of a single row return None when it does not exist.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

from . import pairs as rules
from .config import resolve_data_dir

DB_FILENAME = "playground.sqlite3"
BUSY_TIMEOUT_S = 30.0
ARMS = ("base", "sft", "pref")
MODES = ("compare", "duel")

# Ordered migrations; PRAGMA user_version counts how many are applied. Append, never edit a shipped one.
MIGRATIONS: list[str] = [
    # 1: initial schema.
    """
    -- One row per distinct prompt text; comparisons of the same prompt share it.
    CREATE TABLE prompts (
        id          INTEGER PRIMARY KEY,
        text        TEXT NOT NULL UNIQUE,
        category    TEXT,
        created_at  REAL NOT NULL
    );

    -- One request that produced several answers to one prompt for one session.
    CREATE TABLE comparisons (
        id          INTEGER PRIMARY KEY,
        prompt_id   INTEGER NOT NULL REFERENCES prompts(id),
        session_id  TEXT NOT NULL,
        mode        TEXT NOT NULL CHECK (mode IN ('compare', 'duel')),
        created_at  REAL NOT NULL
    );

    -- Everything needed to reproduce or audit an answer: model, adapter, sampling settings and seed.
    CREATE TABLE answers (
        id               INTEGER PRIMARY KEY,
        comparison_id    INTEGER NOT NULL REFERENCES comparisons(id),
        arm              TEXT NOT NULL CHECK (arm IN ('base', 'sft', 'pref')),
        slot             INTEGER NOT NULL,            -- display position
        model            TEXT NOT NULL,
        adapter_version  INTEGER NOT NULL DEFAULT 0,  -- 0 = no adapter
        settings         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(settings)),
        seed             INTEGER,
        text             TEXT NOT NULL,
        prompt_tokens    INTEGER,
        new_tokens       INTEGER,
        seconds          REAL,
        ttft             REAL,
        finish_reason    TEXT,
        created_at       REAL NOT NULL,
        UNIQUE (comparison_id, slot)
    );

    CREATE TABLE votes (
        id             INTEGER PRIMARY KEY,
        kind           TEXT NOT NULL CHECK (kind IN ('best', 'all_bad', 'pairwise', 'thumb')),
        session_id     TEXT NOT NULL,
        comparison_id  INTEGER NOT NULL REFERENCES comparisons(id),
        outcome        TEXT CHECK (outcome IN ('a', 'b', 'tie', 'both_bad', 'up', 'down')),
        created_at     REAL NOT NULL
    );
    -- One verdict per session and comparison ('best' and 'all_bad' answer the same question);
    -- thumbs are once per answer, which the vote code checks.
    CREATE UNIQUE INDEX votes_once ON votes (
        session_id, comparison_id, (CASE kind WHEN 'all_bad' THEN 'best' ELSE kind END)
    ) WHERE kind <> 'thumb';

    -- The answers a vote names. position: rank for 'best' (0 = best), 0/1 for A/B in 'pairwise',
    -- 0 for 'thumb'; 'all_bad' names none (it is about the whole comparison).
    CREATE TABLE vote_answers (
        vote_id    INTEGER NOT NULL REFERENCES votes(id),
        answer_id  INTEGER NOT NULL REFERENCES answers(id),
        position   INTEGER NOT NULL,
        PRIMARY KEY (vote_id, answer_id),
        UNIQUE (vote_id, position)
    ) WITHOUT ROWID;
    CREATE INDEX vote_answers_answer ON vote_answers (answer_id);

    -- Training runs. parent_version NULL = trained from no adapter.
    CREATE TABLE rounds (
        id              INTEGER PRIMARY KEY,
        status          TEXT NOT NULL CHECK (status IN ('running', 'done', 'failed')),
        parent_version  INTEGER REFERENCES adapter_versions(version),
        version         INTEGER REFERENCES adapter_versions(version),
        pairs_used      INTEGER NOT NULL,
        hyperparams     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(hyperparams)),
        pid             INTEGER,
        error           TEXT,
        started_at      REAL NOT NULL,
        finished_at     REAL
    );

    -- Preference pairs derived from votes. round_id: the finished round that first trained on it
    -- (NULL = pending).
    CREATE TABLE pairs (
        id                  INTEGER PRIMARY KEY,
        vote_id             INTEGER NOT NULL REFERENCES votes(id),
        comparison_id       INTEGER NOT NULL REFERENCES comparisons(id),
        chosen_answer_id    INTEGER NOT NULL REFERENCES answers(id),
        rejected_answer_id  INTEGER NOT NULL REFERENCES answers(id),
        round_id            INTEGER REFERENCES rounds(id),
        created_at          REAL NOT NULL,
        CHECK (chosen_answer_id <> rejected_answer_id)
    );
    CREATE INDEX pairs_pending ON pairs (id) WHERE round_id IS NULL;
    CREATE INDEX pairs_vote ON pairs (vote_id);

    CREATE TABLE round_pairs (
        round_id  INTEGER NOT NULL REFERENCES rounds(id),
        pair_id   INTEGER NOT NULL REFERENCES pairs(id),
        PRIMARY KEY (round_id, pair_id)
    ) WITHOUT ROWID;

    -- Trainer logs, one row per (round, step); trl keys we chart get columns, the rest goes to extra.
    CREATE TABLE round_steps (
        round_id         INTEGER NOT NULL REFERENCES rounds(id),
        step             INTEGER NOT NULL,
        loss             REAL,
        reward_margin    REAL,
        reward_accuracy  REAL,
        chosen_reward    REAL,
        rejected_reward  REAL,
        learning_rate    REAL,
        extra            TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(extra)),
        created_at       REAL NOT NULL,
        PRIMARY KEY (round_id, step)
    );

    -- Version numbers are never reused, even for versions marked bad.
    CREATE TABLE adapter_versions (
        version         INTEGER PRIMARY KEY CHECK (version > 0),
        round_id        INTEGER UNIQUE REFERENCES rounds(id),
        parent_version  INTEGER REFERENCES adapter_versions(version),
        path            TEXT NOT NULL,
        state           TEXT NOT NULL DEFAULT 'ready' CHECK (state IN ('ready', 'bad')),
        reason          TEXT,
        metrics         TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metrics)),
        created_at      REAL NOT NULL
    );

    -- Small shared settings; 'serving_version' is the adapter the app serves (absent = 0, none).
    CREATE TABLE meta (
        key    TEXT PRIMARY KEY,
        value  TEXT
    );
    """,
    # 2: live progress of a round (the training panel's progress bar).
    """
    ALTER TABLE rounds ADD COLUMN steps_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rounds ADD COLUMN steps_total INTEGER;
    """,
]

_JSON_COLUMNS = {"settings", "hyperparams", "metrics", "extra"}

# trl's log keys -> round_steps columns.
_STEP_COLUMNS = {
    "loss": "loss",
    "rewards/margins": "reward_margin",
    "rewards/accuracies": "reward_accuracy",
    "rewards/chosen": "chosen_reward",
    "rewards/rejected": "rejected_reward",
    "learning_rate": "learning_rate",
}

_PAIR_SELECT = """
    SELECT p.id, p.vote_id, v.kind AS vote_kind, v.session_id, p.comparison_id, p.round_id,
           p.created_at, pr.text AS prompt_text, pr.category,
           p.chosen_answer_id, c.text AS chosen_text, c.arm AS chosen_arm,
           c.adapter_version AS chosen_adapter_version,
           p.rejected_answer_id, r.text AS rejected_text, r.arm AS rejected_arm,
           r.adapter_version AS rejected_adapter_version
    FROM pairs p
    JOIN votes v ON v.id = p.vote_id
    JOIN comparisons cm ON cm.id = p.comparison_id
    JOIN prompts pr ON pr.id = cm.prompt_id
    JOIN answers c ON c.id = p.chosen_answer_id
    JOIN answers r ON r.id = p.rejected_answer_id
"""

_EXPORT_BATCH = 500


class StoreError(Exception):
    """A request the store refuses; the message is meant for people."""


class VoteError(StoreError):
    """A vote that was refused; nothing was written."""


@dataclass(frozen=True)
class VoteReceipt:
    vote_id: int
    kind: str
    pairs_created: int
    message: str


def pid_alive(pid: int | None) -> bool:
    """Whether a process with this pid exists on this machine (the default liveness check)."""
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def _json(value: Any) -> str:
    # SQLite's JSON functions reject NaN/Infinity, and a diverging loss is exactly what must be logged.
    def clean(v: Any) -> Any:
        if isinstance(v, float) and not math.isfinite(v):
            return str(v)
        if isinstance(v, dict):
            return {str(k): clean(x) for k, x in v.items()}
        if isinstance(v, (list, tuple)):
            return [clean(x) for x in v]
        return v

    return json.dumps(clean(value if value is not None else {}), default=str)


def _row(row: sqlite3.Row | None) -> dict | None:
    if row is None:
        return None
    d = dict(row)
    for key in _JSON_COLUMNS & d.keys():
        if isinstance(d[key], str):
            d[key] = json.loads(d[key])
    return d


def _statements(script: str) -> Iterator[str]:
    # executescript() would COMMIT first, breaking one-transaction-per-migration; split it instead.
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip():
        yield buf  # trailing comments are harmless; an unfinished statement makes SQLite raise


def _plural(n: int, word: str) -> str:
    return f"{n} {word}{'' if n == 1 else 's'}"


class Store:
    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.closing(self._connect()) as conn:
            # journal_mode is persistent in the file; only switch when needed (it takes an exclusive lock).
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                warnings.warn(f"{self.path}: SQLite refused WAL mode (got {mode!r}); concurrent use will be slow")
            applied = conn.execute("PRAGMA user_version").fetchone()[0]
        if applied != len(MIGRATIONS):
            self._migrate()

    @classmethod
    def open(cls, data_dir: str | os.PathLike | None = None) -> "Store":
        return cls(resolve_data_dir(data_dir) / DB_FILENAME)

    # -- connections ---------------------------------------------------------------------------------

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: we issue BEGIN ourselves, so the transaction boundaries are the ones we wrote.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    @contextlib.contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: commits when the block ends, rolls back if it raises."""
        conn = self._connect()
        try:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                if conn.in_transaction:  # SQLite may already have rolled back (e.g. disk full)
                    conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")
        finally:
            conn.close()

    @contextlib.contextmanager
    def _read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so several queries see one consistent snapshot."""
        conn = self._connect()
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()  # ends the read transaction

    def _migrate(self) -> None:
        # One transaction per migration; re-reading user_version under the write lock lets several
        # processes open a fresh file at once without applying anything twice.
        while True:
            with self._write() as conn:
                applied = conn.execute("PRAGMA user_version").fetchone()[0]
                if applied > len(MIGRATIONS):
                    raise StoreError(
                        f"{self.path} has schema version {applied}, newer than this code knows "
                        f"({len(MIGRATIONS)}); upgrade the app instead of risking the data."
                    )
                if applied == len(MIGRATIONS):
                    return
                for statement in _statements(MIGRATIONS[applied]):
                    conn.execute(statement)
                conn.execute(f"PRAGMA user_version = {applied + 1}")

    def pragmas(self) -> dict[str, Any]:
        """The settings a connection actually runs with, for health checks."""
        with contextlib.closing(self._connect()) as conn:
            return {
                name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "user_version")
            }

    # -- prompts, comparisons, answers ---------------------------------------------------------------

    def add_comparison(self, prompt: str, session_id: str, mode: str = "compare", category: str | None = None) -> int:
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, not {mode!r}")
        now = time.time()
        with self._write() as conn:
            prompt_id = conn.execute(
                "INSERT INTO prompts (text, category, created_at) VALUES (?, ?, ?) "
                "ON CONFLICT (text) DO UPDATE SET category = coalesce(prompts.category, excluded.category) "
                "RETURNING id",
                (prompt, category, now),
            ).fetchone()[0]
            return conn.execute(
                "INSERT INTO comparisons (prompt_id, session_id, mode, created_at) VALUES (?, ?, ?, ?)",
                (prompt_id, session_id, mode, now),
            ).lastrowid

    def add_answer(
        self,
        comparison_id: int,
        arm: str,
        slot: int,
        *,
        text: str,
        model: str,
        adapter_version: int,
        settings: dict,
        seed: int | None,
        prompt_tokens: int | None,
        new_tokens: int | None,
        seconds: float | None,
        ttft: float | None = None,
        finish_reason: str | None = None,
    ) -> int:
        if arm not in ARMS:
            raise ValueError(f"arm must be one of {ARMS}, not {arm!r}")
        with self._write() as conn:
            return conn.execute(
                "INSERT INTO answers (comparison_id, arm, slot, model, adapter_version, settings, seed, text, "
                "prompt_tokens, new_tokens, seconds, ttft, finish_reason, created_at) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (comparison_id, arm, slot, model, adapter_version or 0, _json(settings), seed, text,
                 prompt_tokens, new_tokens, seconds, ttft, finish_reason, time.time()),
            ).lastrowid

    def comparison(self, comparison_id: int) -> dict | None:
        """The comparison with its prompt text, category and answers (by slot)."""
        with self._read() as conn:
            c = _row(conn.execute(
                "SELECT cm.id, cm.prompt_id, p.text AS prompt, p.category, cm.session_id, cm.mode, cm.created_at "
                "FROM comparisons cm JOIN prompts p ON p.id = cm.prompt_id WHERE cm.id = ?",
                (comparison_id,),
            ).fetchone())
            if c is not None:
                c["answers"] = self._answers_of(conn, comparison_id)
            return c

    def answer(self, answer_id: int) -> dict | None:
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM answers WHERE id = ?", (answer_id,)).fetchone())

    @staticmethod
    def _answers_of(conn: sqlite3.Connection, comparison_id: int) -> list[dict]:
        rows = conn.execute("SELECT * FROM answers WHERE comparison_id = ? ORDER BY slot", (comparison_id,))
        return [_row(r) for r in rows]

    # -- votes ---------------------------------------------------------------------------------------

    def vote_best(self, session_id: str, comparison_id: int, ranking: list[int]) -> VoteReceipt:
        """`ranking`: answer ids best first, either just the winner or every answer of the comparison."""
        ranking = list(ranking)
        with self._write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_members(conn, comparison_id, answers, ranking)
            problem = rules.ranking_problem(ranking, [a["id"] for a in answers])
            if problem:
                raise VoteError(problem)
            self._check_not_voted(conn, "best", session_id, comparison_id)
            by_id = {a["id"]: a for a in answers}
            return self._record(conn, "best", session_id, comparison_id, None, [by_id[i] for i in ranking], answers)

    def vote_all_bad(self, session_id: str, comparison_id: int) -> VoteReceipt:
        with self._write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_not_voted(conn, "all_bad", session_id, comparison_id)
            return self._record(conn, "all_bad", session_id, comparison_id, None, [], answers)

    def vote_pairwise(
        self, session_id: str, comparison_id: int, answer_a: int, answer_b: int, outcome: str
    ) -> VoteReceipt:
        """outcome: 'a' or 'b' (the winner), 'tie' or 'both_bad'."""
        if outcome not in rules.PAIRWISE_OUTCOMES:
            raise VoteError(f"Unknown outcome {outcome!r}; expected one of {', '.join(rules.PAIRWISE_OUTCOMES)}.")
        if answer_a == answer_b:
            raise VoteError("Answer A and answer B must be two different answers.")
        with self._write() as conn:
            answers = self._vote_target(conn, session_id, comparison_id)
            self._check_members(conn, comparison_id, answers, [answer_a, answer_b])
            self._check_not_voted(conn, "pairwise", session_id, comparison_id)
            by_id = {a["id"]: a for a in answers}
            pair = [by_id[answer_a], by_id[answer_b]]
            return self._record(conn, "pairwise", session_id, comparison_id, outcome, pair, answers)

    def vote_thumb(self, session_id: str, answer_id: int, up: bool) -> VoteReceipt:
        with self._write() as conn:
            row = conn.execute("SELECT comparison_id FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if row is None:
                raise VoteError(f"Answer {answer_id} does not exist.")
            comparison_id = row[0]
            answers = self._vote_target(conn, session_id, comparison_id)
            already = conn.execute(
                "SELECT 1 FROM votes v JOIN vote_answers va ON va.vote_id = v.id "
                "WHERE v.kind = 'thumb' AND v.session_id = ? AND va.answer_id = ?",
                (session_id, answer_id),
            ).fetchone()
            if already:
                raise VoteError("You already rated this answer.")
            answer = next(a for a in answers if a["id"] == answer_id)
            return self._record(conn, "thumb", session_id, comparison_id, "up" if up else "down", [answer], answers)

    @staticmethod
    def _vote_target(conn: sqlite3.Connection, session_id: str, comparison_id: int) -> list[dict]:
        if not session_id:
            raise VoteError("A vote needs a session id.")
        if conn.execute("SELECT 1 FROM comparisons WHERE id = ?", (comparison_id,)).fetchone() is None:
            raise VoteError(f"Comparison {comparison_id} does not exist.")
        return Store._answers_of(conn, comparison_id)

    @staticmethod
    def _check_members(conn: sqlite3.Connection, comparison_id: int, answers: list[dict], ids: Iterable[int]) -> None:
        own = {a["id"] for a in answers}
        for answer_id in ids:
            if answer_id in own:
                continue
            row = conn.execute("SELECT comparison_id FROM answers WHERE id = ?", (answer_id,)).fetchone()
            if row is None:
                raise VoteError(f"Answer {answer_id} does not exist.")
            raise VoteError(f"Answer {answer_id} belongs to comparison {row[0]}, not to comparison {comparison_id}.")

    @staticmethod
    def _check_not_voted(conn: sqlite3.Connection, kind: str, session_id: str, comparison_id: int) -> None:
        # 'best' and 'all_bad' are two answers to one question, so either one closes it.
        kinds = ("best", "all_bad") if kind in ("best", "all_bad") else (kind,)
        row = conn.execute(
            f"SELECT kind FROM votes WHERE session_id = ? AND comparison_id = ? "
            f"AND kind IN ({','.join('?' * len(kinds))})",
            (session_id, comparison_id, *kinds),
        ).fetchone()
        if row is not None:
            what = {"best": "picked the best answer", "all_bad": "marked every answer bad",
                    "pairwise": "voted on this duel"}[row[0]]
            raise VoteError(f"You already {what} for this prompt; each session votes once per comparison.")

    @staticmethod
    def _record(
        conn: sqlite3.Connection, kind: str, session_id: str, comparison_id: int, outcome: str | None,
        named: list[dict], answers: list[dict],
    ) -> VoteReceipt:
        now = time.time()
        vote_id = conn.execute(
            "INSERT INTO votes (kind, session_id, comparison_id, outcome, created_at) VALUES (?, ?, ?, ?, ?)",
            (kind, session_id, comparison_id, outcome, now),
        ).lastrowid
        conn.executemany(
            "INSERT INTO vote_answers (vote_id, answer_id, position) VALUES (?, ?, ?)",
            [(vote_id, a["id"], position) for position, a in enumerate(named)],
        )
        pairs = rules.pairs_from_vote(kind, named, outcome, answers)
        conn.executemany(
            "INSERT INTO pairs (vote_id, comparison_id, chosen_answer_id, rejected_answer_id, created_at) "
            "VALUES (?, ?, ?, ?, ?)",
            [(vote_id, comparison_id, chosen, rejected, now) for chosen, rejected in pairs],
        )
        return VoteReceipt(vote_id, kind, len(pairs), _thanks(kind, outcome, len(pairs)))

    # -- pairs ---------------------------------------------------------------------------------------

    def pending_pairs(self, limit: int | None = None) -> list[dict]:
        """Pairs no finished round has trained on yet, oldest first."""
        with self._read() as conn:
            rows = conn.execute(
                _PAIR_SELECT + " WHERE p.round_id IS NULL ORDER BY p.id LIMIT ?",
                (-1 if limit is None else limit,),
            )
            return [_row(r) for r in rows]

    def pairs(self, ids: Iterable[int] | None = None) -> list[dict]:
        """Pairs (all, or those with these ids) by id: prompt/chosen/rejected texts, arms, versions."""
        with self._read() as conn:
            if ids is None:
                rows = conn.execute(_PAIR_SELECT + " ORDER BY p.id")
            else:
                rows = conn.execute(
                    _PAIR_SELECT + " WHERE p.id IN (SELECT value FROM json_each(?)) ORDER BY p.id",
                    (json.dumps(list(ids)),),
                )
            return [_row(r) for r in rows]

    def export_pairs(self) -> Iterator[dict]:
        """Every pair in TRL's conversational format (keys prompt/chosen/rejected only)."""
        last = 0
        while True:
            with self._read() as conn:  # one short transaction per batch: never pins the WAL for long
                batch = [_row(r) for r in conn.execute(
                    _PAIR_SELECT + " WHERE p.id > ? ORDER BY p.id LIMIT ?", (last, _EXPORT_BATCH))]
            if not batch:
                return
            for pair in batch:
                yield rules.to_trl(pair)
            last = batch[-1]["id"]

    def export_votes(self) -> Iterator[dict]:
        """Every vote, raw: kind, session, outcome, time, prompt and the comparison's answers, each with
        the `position` the vote gave it (None when the vote did not name it, e.g. all_bad)."""
        last = 0
        while True:
            with self._read() as conn:
                votes = [_row(r) for r in conn.execute(
                    "SELECT v.id AS vote_id, v.kind, v.session_id, v.outcome, v.created_at, v.comparison_id, "
                    "cm.mode, p.text AS prompt, p.category FROM votes v "
                    "JOIN comparisons cm ON cm.id = v.comparison_id JOIN prompts p ON p.id = cm.prompt_id "
                    "WHERE v.id > ? ORDER BY v.id LIMIT ?", (last, _EXPORT_BATCH))]
                for vote in votes:
                    vote["answers"] = [_row(r) for r in conn.execute(
                        "SELECT a.id AS answer_id, va.position, a.slot, a.arm, a.model, a.adapter_version, "
                        "a.settings, a.seed, a.text FROM answers a "
                        "LEFT JOIN vote_answers va ON va.answer_id = a.id AND va.vote_id = ? "
                        "WHERE a.comparison_id = ? ORDER BY va.position IS NULL, va.position, a.slot",
                        (vote["vote_id"], vote["comparison_id"]))]
            if not votes:
                return
            yield from votes
            last = votes[-1]["vote_id"]

    # -- rounds --------------------------------------------------------------------------------------

    def start_round(self, parent_version: int | None, pair_ids: Iterable[int], hyperparams: dict, pid: int | None) -> int:
        """Record a running round. parent_version 0/None = trained from no adapter."""
        pair_ids = sorted(set(pair_ids))
        with self._write() as conn:
            if parent_version and conn.execute(
                "SELECT 1 FROM adapter_versions WHERE version = ?", (parent_version,)
            ).fetchone() is None:
                raise StoreError(f"Parent version {parent_version} does not exist.")
            known = conn.execute(
                "SELECT count(*) FROM pairs WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(pair_ids),)
            ).fetchone()[0]
            if known != len(pair_ids):
                raise StoreError(f"{len(pair_ids) - known} of the {len(pair_ids)} pairs do not exist.")
            round_id = conn.execute(
                "INSERT INTO rounds (status, parent_version, pairs_used, hyperparams, pid, started_at) "
                "VALUES ('running', ?, ?, ?, ?, ?)",
                (parent_version or None, len(pair_ids), _json(hyperparams), pid, time.time()),
            ).lastrowid
            conn.executemany("INSERT INTO round_pairs (round_id, pair_id) VALUES (?, ?)",
                             [(round_id, p) for p in pair_ids])
            return round_id

    def log_step(self, round_id: int, step: int, metrics: dict) -> None:
        """Store one trl log dict. Logging the same step twice (train and eval logs) merges them."""
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
                f"INSERT INTO round_steps (round_id, step, {', '.join(names)}, extra, created_at) "
                f"VALUES (?, ?, {', '.join('?' * len(names))}, ?, ?) "
                f"ON CONFLICT (round_id, step) DO UPDATE SET {updates}, "
                f"extra = json_patch(round_steps.extra, excluded.extra)",
                (round_id, step, *columns.values(), _json(extra), time.time()),
            )

    def finish_round(self, round_id: int, adapter_path: str | os.PathLike, metrics: dict) -> int:
        """Publish the round's adapter as the next version and serve it, all in one transaction."""
        with self._write() as conn:
            rnd = self._running_round(conn, round_id)
            version = conn.execute("SELECT coalesce(max(version), 0) + 1 FROM adapter_versions").fetchone()[0]
            now = time.time()
            conn.execute(
                "INSERT INTO adapter_versions (version, round_id, parent_version, path, state, metrics, created_at) "
                "VALUES (?, ?, ?, ?, 'ready', ?, ?)",
                (version, round_id, rnd["parent_version"], str(adapter_path), _json(metrics), now),
            )
            conn.execute("UPDATE rounds SET status = 'done', version = ?, finished_at = ? WHERE id = ?",
                         (version, now, round_id))
            conn.execute(
                "UPDATE pairs SET round_id = ? WHERE round_id IS NULL "
                "AND id IN (SELECT pair_id FROM round_pairs WHERE round_id = ?)",
                (round_id, round_id),
            )
            self._set_serving(conn, version)
            return version

    def set_round_progress(self, round_id: int, steps_done: int, steps_total: int | None) -> None:
        with self._write() as conn:
            conn.execute("UPDATE rounds SET steps_done = ?, steps_total = ? WHERE id = ?",
                         (steps_done, steps_total, round_id))

    def running_round(self) -> dict | None:
        with self._read() as conn:
            return _row(conn.execute("SELECT * FROM rounds WHERE status = 'running' ORDER BY id DESC").fetchone())

    def request_round(self) -> None:
        """Ask the trainer for a round now, whatever the number of pending pairs ("train now")."""
        with self._write() as conn:
            conn.execute("INSERT INTO meta (key, value) VALUES ('round_requested', ?) "
                         "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(time.time()),))

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
            conn.execute("UPDATE rounds SET status = 'failed', error = ?, finished_at = ? WHERE id = ?",
                         (str(error), time.time(), round_id))

    def recover_interrupted_rounds(self, is_alive: Callable[[int | None], bool] = pid_alive) -> list[dict]:
        """Mark 'running' rounds whose process is gone as failed ('interrupted'); return them.
        Call at trainer start-up, after a crash or restart."""
        with self._write() as conn:
            dead = [r["id"] for r in conn.execute("SELECT id, pid FROM rounds WHERE status = 'running'")
                    if not is_alive(r["pid"])]
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
        """All rounds, oldest first."""
        with self._read() as conn:
            return [_row(r) for r in conn.execute("SELECT * FROM rounds ORDER BY id")]

    def round_steps(self, round_id: int | None = None) -> list[dict]:
        with self._read() as conn:
            rows = conn.execute(
                "SELECT * FROM round_steps WHERE ? IS NULL OR round_id = ? ORDER BY round_id, step",
                (round_id, round_id),
            )
            return [_row(r) for r in rows]

    # -- versions ------------------------------------------------------------------------------------

    _VERSION_SELECT = (
        "SELECT av.*, r.pairs_used, r.hyperparams, r.started_at, r.finished_at "
        "FROM adapter_versions av LEFT JOIN rounds r ON r.id = av.round_id"
    )

    def versions(self) -> list[dict]:
        """All adapter versions, oldest first, with their round's pairs_used and hyperparams and whether
        each is serving."""
        with self._read() as conn:
            serving = self._serving(conn)
            rows = [_row(r) for r in conn.execute(self._VERSION_SELECT + " ORDER BY av.version")]
        for v in rows:
            v["serving"] = v["version"] == serving
        return rows

    def version(self, version: int) -> dict | None:
        with self._read() as conn:
            v = _row(conn.execute(self._VERSION_SELECT + " WHERE av.version = ?", (version,)).fetchone())
            if v is not None:
                v["serving"] = v["version"] == self._serving(conn)
            return v

    def serving_version(self) -> int:
        """The adapter version the app should serve; 0 = no adapter."""
        with self._read() as conn:
            return self._serving(conn)

    def set_serving_version(self, version: int) -> None:
        """Serve another version (rollback/roll forward); 0 serves no adapter."""
        with self._write() as conn:
            if version != 0:
                row = conn.execute("SELECT state, reason FROM adapter_versions WHERE version = ?",
                                   (version,)).fetchone()
                if row is None:
                    raise StoreError(f"Adapter version {version} does not exist.")
                if row["state"] == "bad":
                    raise StoreError(f"Adapter version {version} is marked bad ({row['reason'] or 'no reason given'}) "
                                     f"and cannot be served.")
            self._set_serving(conn, version)

    def mark_version_bad(self, version: int, reason: str) -> int:
        """Take a version out of service for good. If it was serving, fall back to the newest ready
        version below it (or 0). Returns the serving version afterwards."""
        with self._write() as conn:
            if conn.execute("UPDATE adapter_versions SET state = 'bad', reason = ? WHERE version = ?",
                            (reason, version)).rowcount == 0:
                raise StoreError(f"Adapter version {version} does not exist.")
            serving = self._serving(conn)
            if serving == version:
                serving = conn.execute(
                    "SELECT coalesce(max(version), 0) FROM adapter_versions WHERE state = 'ready' AND version < ?",
                    (version,),
                ).fetchone()[0]
                self._set_serving(conn, serving)
            return serving

    def latest_good_version(self) -> int:
        with self._read() as conn:
            return conn.execute("SELECT coalesce(max(version), 0) FROM adapter_versions WHERE state = 'ready'").fetchone()[0]

    @staticmethod
    def _serving(conn: sqlite3.Connection) -> int:
        row = conn.execute("SELECT value FROM meta WHERE key = 'serving_version'").fetchone()
        return int(row[0]) if row else 0

    @staticmethod
    def _set_serving(conn: sqlite3.Connection, version: int) -> None:
        conn.execute("INSERT INTO meta (key, value) VALUES ('serving_version', ?) "
                     "ON CONFLICT (key) DO UPDATE SET value = excluded.value", (str(int(version)),))

    # -- dashboard -----------------------------------------------------------------------------------

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

    def vote_win_rates(self, kinds: Iterable[str] | None = None) -> list[dict]:
        """Per (arm, adapter_version): how many votes its answers were judged in and how many they won.

        Judged in: every answer shown for 'best'/'all_bad', the two for 'pairwise', the one for 'thumb'.
        Won: ranked first, the pairwise winner, or thumbs up. Ties, both_bad and all_bad win nothing.
        """
        kinds = list(rules.VOTE_KINDS if kinds is None else kinds)
        with self._read() as conn:
            rows = conn.execute(
                """
                WITH v AS (SELECT * FROM votes WHERE kind IN (SELECT value FROM json_each(:kinds))),
                judged AS (
                    SELECT v.id AS vote_id, a.id AS answer_id, a.arm, a.adapter_version
                    FROM v JOIN answers a ON a.comparison_id = v.comparison_id
                    WHERE v.kind IN ('best', 'all_bad')
                    UNION
                    SELECT v.id, a.id, a.arm, a.adapter_version
                    FROM v JOIN vote_answers va ON va.vote_id = v.id JOIN answers a ON a.id = va.answer_id
                    WHERE v.kind IN ('pairwise', 'thumb')
                ),
                won AS (
                    SELECT v.id AS vote_id, va.answer_id FROM v JOIN vote_answers va ON va.vote_id = v.id
                    WHERE (v.kind = 'best' AND va.position = 0)
                       OR (v.kind = 'pairwise' AND va.position = CASE v.outcome WHEN 'a' THEN 0 WHEN 'b' THEN 1 END)
                       OR (v.kind = 'thumb' AND v.outcome = 'up')
                )
                SELECT j.arm, j.adapter_version, count(DISTINCT j.vote_id) AS votes,
                       count(DISTINCT w.vote_id) AS wins
                FROM judged j LEFT JOIN won w ON w.vote_id = j.vote_id AND w.answer_id = j.answer_id
                GROUP BY j.arm, j.adapter_version ORDER BY j.arm, j.adapter_version
                """,
                {"kinds": json.dumps(kinds)},
            )
            return [dict(r, win_rate=r["wins"] / r["votes"]) for r in rows]


def _thanks(kind: str, outcome: str | None, n_pairs: int) -> str:
    if kind == "thumb":
        return f"Thanks for the thumbs {outcome}!"
    if kind == "all_bad":
        return "Thanks! Noted that every answer was bad; that counts against each model but makes no training pair."
    if outcome == "tie":
        return "Thanks! Tie recorded; a tie makes no training pair."
    if outcome == "both_bad":
        return "Thanks! Noted that both answers were bad; that makes no training pair."
    if n_pairs == 0:
        return "Thanks! Vote saved; it made no training pair because the answers compared had identical text."
    return f"Thanks! Your vote added {_plural(n_pairs, 'training pair')}."
