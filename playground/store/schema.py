"""The SQLite file under the store: its schema and migrations, connections and transactions.

One file shared by the web app, the trainer process and any script. To make that safe:
- WAL mode, so readers never block the writer and the writer never blocks readers;
- a fresh connection per operation, so any thread or process can call any method;
- every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock up front, so two writers
  queue on the busy timeout instead of deadlocking when both try to upgrade a read lock;
- `synchronous=FULL`: a vote is on disk before the person who cast it is thanked;
- every transaction that changed a row also counts up `meta.changes`, so a reader learns with one query whether
  anything changed since it last looked (the page's panels are computed once per change, not once per viewer).
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import sqlite3
import threading
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

BUSY_TIMEOUT_S = 30.0

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
    # 3: a change counter for readers; whether a finished round's version started serving (it does not when the
    # serving version changed during the round, e.g. a rollback: that choice stands).
    """
    INSERT INTO meta (key, value) VALUES ('changes', '0') ON CONFLICT (key) DO NOTHING;
    ALTER TABLE adapter_versions ADD COLUMN served_on_publish INTEGER NOT NULL DEFAULT 1;
    """,
    # 4: the durable copy's change log (filled by triggers, see `changelog_triggers`; emptied as the copy catches up)
    # and who cast a vote ('ip:<keyed hash>' or 'hf:<user name>'; NULL for votes from before).
    """
    CREATE TABLE changelog (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: orders every copied record across restarts
        tbl  TEXT NOT NULL,
        key  TEXT NOT NULL                       -- JSON array of the row's primary key
    );
    ALTER TABLE votes ADD COLUMN voter TEXT;
    CREATE INDEX votes_voter ON votes (voter);
    """,
    # 5: conversations and corrections. A comparison is one turn of a chat: `history` holds the messages before its
    # prompt (the shared conversation every arm answered), `parent_answer_id` the answer of the previous turn that
    # history continued from. A person's better answer is an answer with arm 'human' and a vote of kind
    # 'correction'. SQLite cannot change a CHECK constraint in place, so `answers` and `votes` are rebuilt (the
    # migration runs with foreign keys off and checks them before it commits).
    """
    ALTER TABLE comparisons ADD COLUMN chat_id TEXT;
    ALTER TABLE comparisons ADD COLUMN turn INTEGER NOT NULL DEFAULT 1;
    ALTER TABLE comparisons ADD COLUMN history TEXT NOT NULL DEFAULT '[]' CHECK (json_valid(history));
    ALTER TABLE comparisons ADD COLUMN parent_answer_id INTEGER REFERENCES answers(id);
    CREATE INDEX comparisons_chat ON comparisons (chat_id, turn);

    CREATE TABLE answers_new (
        id               INTEGER PRIMARY KEY,
        comparison_id    INTEGER NOT NULL REFERENCES comparisons(id),
        arm              TEXT NOT NULL CHECK (arm IN ('base', 'sft', 'pref', 'human')),
        slot             INTEGER NOT NULL,
        model            TEXT NOT NULL,
        adapter_version  INTEGER NOT NULL DEFAULT 0,
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
    INSERT INTO answers_new SELECT * FROM answers;
    DROP TABLE answers;
    ALTER TABLE answers_new RENAME TO answers;

    CREATE TABLE votes_new (
        id             INTEGER PRIMARY KEY,
        kind           TEXT NOT NULL CHECK (kind IN ('best', 'all_bad', 'pairwise', 'thumb', 'correction')),
        session_id     TEXT NOT NULL,
        comparison_id  INTEGER NOT NULL REFERENCES comparisons(id),
        outcome        TEXT CHECK (outcome IN ('a', 'b', 'tie', 'both_bad', 'up', 'down')),
        created_at     REAL NOT NULL,
        voter          TEXT
    );
    INSERT INTO votes_new SELECT * FROM votes;
    DROP TABLE votes;
    ALTER TABLE votes_new RENAME TO votes;
    CREATE UNIQUE INDEX votes_once ON votes (
        session_id, comparison_id, (CASE kind WHEN 'all_bad' THEN 'best' ELSE kind END)
    ) WHERE kind <> 'thumb';
    CREATE INDEX votes_voter ON votes (voter);
    """,
    # 6: drift per version (drift.py): what the trainer measured on a fixed prompt set. version 0 = the SFT model
    # itself (not an adapter_versions row, so no reference); eval_set names the prompt set and length measured.
    """
    CREATE TABLE version_evals (
        version     INTEGER NOT NULL CHECK (version >= 0),
        eval_set    TEXT NOT NULL,
        metrics     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metrics)),
        created_at  REAL NOT NULL,
        PRIMARY KEY (version, eval_set)
    );
    """,
    # 7: every kind of feedback trains (training.py). A demonstration is a person's better answer (Dataset 1, the SFT
    # stage); a rating is one model answer judged on its own, 👍 or 👎 (the KTO stage): a thumb rates its answer, an
    # "all bad" vote is a 👎 for each model answer of the turn (identical texts once). Both are read from the votes
    # themselves (views), so every vote counts, those from before this migration too, and a restored durable copy
    # needs nothing beyond the votes. A round records which ones it trained on; one is pending until a round that
    # trained on it is done. Steps are numbered across a round's stages and say which stage logged them.
    """
    CREATE VIEW demonstrations AS
        SELECT a.id AS id, v.id AS vote_id, v.comparison_id, v.session_id, v.voter, v.created_at
        FROM votes v JOIN vote_answers va ON va.vote_id = v.id JOIN answers a ON a.id = va.answer_id
        WHERE v.kind = 'correction';
    CREATE VIEW ratings AS
        SELECT v.id AS vote_id, va.answer_id, CASE v.outcome WHEN 'up' THEN 1 ELSE 0 END AS label, v.comparison_id,
               v.session_id, v.voter, v.created_at
        FROM votes v JOIN vote_answers va ON va.vote_id = v.id
        WHERE v.kind = 'thumb'
        UNION ALL
        SELECT v.id, a.id, 0, v.comparison_id, v.session_id, v.voter, v.created_at
        FROM votes v JOIN answers a ON a.comparison_id = v.comparison_id
        WHERE v.kind = 'all_bad' AND a.arm <> 'human' AND a.id = (
            SELECT min(b.id) FROM answers b WHERE b.comparison_id = a.comparison_id AND b.arm <> 'human'
            AND trim(b.text, char(32, 9, 10, 13)) = trim(a.text, char(32, 9, 10, 13)));
    CREATE TABLE round_demonstrations (
        round_id   INTEGER NOT NULL REFERENCES rounds(id),
        answer_id  INTEGER NOT NULL REFERENCES answers(id),
        PRIMARY KEY (round_id, answer_id)
    ) WITHOUT ROWID;
    CREATE INDEX round_demonstrations_answer ON round_demonstrations (answer_id);
    CREATE TABLE round_ratings (
        round_id   INTEGER NOT NULL REFERENCES rounds(id),
        vote_id    INTEGER NOT NULL REFERENCES votes(id),
        answer_id  INTEGER NOT NULL REFERENCES answers(id),
        PRIMARY KEY (round_id, vote_id, answer_id)
    ) WITHOUT ROWID;
    CREATE INDEX round_ratings_rating ON round_ratings (vote_id, answer_id);
    ALTER TABLE rounds ADD COLUMN demonstrations_used INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rounds ADD COLUMN ratings_used INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE round_steps ADD COLUMN stage TEXT NOT NULL DEFAULT 'dpo';
    """,
]

# Meta keys that describe this process or this copy of the file, not the data: never copied, never restored.
LOCAL_META_KEYS = ("changes", "trainer", "voter_salt", "durable_copy")
# Tables that are the copy's own bookkeeping.
UNCOPIED_TABLES = ("changelog",)

_JSON_COLUMNS = {"settings", "hyperparams", "metrics", "extra", "history"}


def changelog_triggers(tables: dict[str, dict]) -> list[tuple[str, str]]:
    """(name, CREATE TRIGGER statement) for every data table and operation."""
    bound = "(SELECT 1 FROM meta WHERE key = 'durable_copy') IS NOT NULL"
    local = ", ".join(f"'{k}'" for k in LOCAL_META_KEYS)
    out = []
    for table, spec in tables.items():
        for op, row in (("INSERT", "NEW"), ("UPDATE", "NEW"), ("DELETE", "OLD")):
            name = f"changelog_{table}_{op.lower()}"
            when = bound + (f" AND {row}.key NOT IN ({local})" if table == "meta" else "")
            key = ", ".join(f"{row}.{c}" for c in spec["key"])
            out.append(
                (
                    name,
                    f"CREATE TRIGGER {name} AFTER {op} ON {table} WHEN {when} "
                    f"BEGIN INSERT INTO changelog (tbl, key) VALUES ('{table}', json_array({key})); END",
                )
            )
    return out


class StoreError(Exception):
    """A request the store refuses; the message is meant for people."""


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


class Database:
    """Connections, transactions and migrations of one SQLite file."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # each thread's connection for changes()
        with contextlib.closing(self._connect()) as conn:
            # journal_mode is persistent in the file; only switch when needed (it takes an exclusive lock).
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                warnings.warn(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r}); concurrent use will be slow", stacklevel=2
                )
            applied = conn.execute("PRAGMA user_version").fetchone()[0]
        if applied != len(MIGRATIONS):
            self._migrate()
        self._install_changelog_triggers()

    @property
    def root(self) -> Path:
        """The folder of the data set this store belongs to; adapter paths are stored relative to it."""
        return self.path.parent

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
            before = conn.total_changes
            try:
                yield conn
                if conn.total_changes != before:
                    conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'changes'")
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
            with self._write_unchecked_references() as conn:
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

    @contextlib.contextmanager
    def _write_unchecked_references(self, strict: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction with foreign keys checked once at its end instead of per statement: for rebuilding a
        table others refer to (a migration) or writing rows in an order that is not their key order (a restore).
        The pragma only takes effect outside a transaction. `strict`: a broken reference at the end rolls everything
        back (else the caller checks and decides)."""
        conn = self._connect()
        try:
            conn.execute("PRAGMA foreign_keys = OFF")
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
                if conn.in_transaction:
                    broken = conn.execute("PRAGMA foreign_key_check").fetchall() if strict else []
                    if broken:
                        raise StoreError(
                            f"{len(broken)} rows of {self.path} would refer to rows that do not exist; "
                            f"nothing was changed."
                        )
                    conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()

    def tables(self, conn: sqlite3.Connection) -> dict[str, dict]:
        """Every data table: {name: {"columns": [...], "key": [primary key columns]}} (what the durable copy copies;
        read from the schema, so tables and columns added later are copied too)."""
        names = [
            r[0]
            for r in conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name NOT LIKE 'sqlite_%' ORDER BY name"
            )
        ]
        out = {}
        for name in names:
            if name in UNCOPIED_TABLES:
                continue
            info = conn.execute(f"PRAGMA table_info({name})").fetchall()
            key = [r["name"] for r in sorted((r for r in info if r["pk"]), key=lambda r: r["pk"])]
            out[name] = {"columns": [r["name"] for r in info], "key": key or ["rowid"]}
        return out

    def _install_changelog_triggers(self) -> None:
        """Triggers that log the key of every inserted, updated or deleted row into `changelog` while a durable
        copy is bound to this file (meta 'durable_copy' set); generated from the schema, so they follow it."""
        with contextlib.closing(self._connect()) as conn:
            wanted = changelog_triggers(self.tables(conn))
            have = {
                r[0]: r[1]
                for r in conn.execute(
                    "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'changelog_%'"
                )
            }
        if {name: sql for name, sql in wanted} == have:
            return
        with self._write() as conn:  # under the write lock, so two processes opening the file do this once
            for name in have:
                conn.execute(f"DROP TRIGGER IF EXISTS {name}")
            for _, sql in wanted:
                conn.execute(sql)

    def pragmas(self) -> dict[str, Any]:
        """The settings a connection actually runs with, for health checks."""
        with contextlib.closing(self._connect()) as conn:
            return {
                name: conn.execute(f"PRAGMA {name}").fetchone()[0]
                for name in ("journal_mode", "foreign_keys", "synchronous", "busy_timeout", "user_version")
            }

    def changes(self) -> int:
        """How many write transactions changed something so far: equal numbers mean equal contents.

        Every open page asks this every few seconds, so each thread keeps one connection for it (opening one costs
        more than the query); outside a transaction, each query reads the latest commit."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self._connect()
        row = conn.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()
        return int(row[0]) if row else 0

    # -- small shared values -------------------------------------------------------------------------

    def _meta(self, conn: sqlite3.Connection, key: str) -> str | None:
        row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    @staticmethod
    def _set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
        conn.execute(
            "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
            (key, value),
        )
