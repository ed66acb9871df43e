"""The schema of the store's file, as named migrations applied in order.

`PRAGMA user_version` counts how many of them a file has: the count, not the names, is what a file records, so
every file written before the migrations had names opens as it did. A name says what a migration is for (and shows
in errors); a shipped migration is never edited or reordered, only new ones appended.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from .errors import StoreError


@dataclass(frozen=True)
class Migration:
    name: str
    sql: str


# Append, never edit a shipped one.
MIGRATIONS: list[Migration] = [
    # 1: initial schema.
    Migration(
        "initial",
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
    ),
    # 2: live progress of a round (the training panel's progress bar).
    Migration(
        "round_progress",
        """
    ALTER TABLE rounds ADD COLUMN steps_done INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE rounds ADD COLUMN steps_total INTEGER;
    """,
    ),
    # 3: a change counter for readers; whether a finished round's version started serving (it does not when the
    # serving version changed during the round, e.g. a rollback: that choice stands).
    Migration(
        "change_counter",
        """
    INSERT INTO meta (key, value) VALUES ('changes', '0') ON CONFLICT (key) DO NOTHING;
    ALTER TABLE adapter_versions ADD COLUMN served_on_publish INTEGER NOT NULL DEFAULT 1;
    """,
    ),
    # 4: the durable copy's change log (filled by triggers, see `changelog_triggers`; emptied as the copy catches up)
    # and who cast a vote ('ip:<keyed hash>' or 'hf:<user name>'; NULL for votes from before).
    Migration(
        "changelog_and_voter",
        """
    CREATE TABLE changelog (
        seq  INTEGER PRIMARY KEY AUTOINCREMENT,  -- never reused: orders every copied record across restarts
        tbl  TEXT NOT NULL,
        key  TEXT NOT NULL                       -- JSON array of the row's primary key
    );
    ALTER TABLE votes ADD COLUMN voter TEXT;
    CREATE INDEX votes_voter ON votes (voter);
    """,
    ),
    # 5: conversations and corrections. A comparison is one turn of a chat: `history` holds the messages before its
    # prompt (the shared conversation every arm answered), `parent_answer_id` the answer of the previous turn that
    # history continued from. A person's better answer is an answer with arm 'human' and a vote of kind
    # 'correction'. SQLite cannot change a CHECK constraint in place, so `answers` and `votes` are rebuilt (the
    # migration runs with foreign keys off and checks them before it commits).
    Migration(
        "conversations_and_corrections",
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
    ),
    # 6: drift per version (drift.py): what the trainer measured on a fixed prompt set. version 0 = the SFT model
    # itself (not an adapter_versions row, so no reference); eval_set names the prompt set and length measured.
    Migration(
        "version_evals",
        """
    CREATE TABLE version_evals (
        version     INTEGER NOT NULL CHECK (version >= 0),
        eval_set    TEXT NOT NULL,
        metrics     TEXT NOT NULL DEFAULT '{}' CHECK (json_valid(metrics)),
        created_at  REAL NOT NULL,
        PRIMARY KEY (version, eval_set)
    );
    """,
    ),
    # 7: every kind of feedback trains (training.py). A demonstration is a person's better answer (Dataset 1, the SFT
    # stage); a rating is one model answer judged on its own, 👍 or 👎 (the KTO stage): a thumb rates its answer, an
    # "all bad" vote is a 👎 for each model answer of the turn (identical texts once). Both are read from the votes
    # themselves (views), so every vote counts, those from before this migration too, and a restored durable copy
    # needs nothing beyond the votes. A round records which ones it trained on; one is pending until a round that
    # trained on it is done. Steps are numbered across a round's stages and say which stage logged them.
    Migration(
        "feedback_kinds",
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
    ),
    # 8: the reward model's view of answers and votes (rewards.py). answer_rewards: the score a version's reward model
    # gave an answer (scored once the answer is written). reward_judgments: whether the reward model that served when
    # a pair was voted agreed with the person, recorded only while no round had taken the pair (prequential: each new
    # vote is a test the reward model has not trained on). reward_version is the adapter version the reward model
    # came with.
    Migration(
        "reward_models",
        """
    CREATE TABLE answer_rewards (
        answer_id       INTEGER NOT NULL REFERENCES answers(id),
        reward_version  INTEGER NOT NULL,
        score           REAL NOT NULL,
        created_at      REAL NOT NULL,
        PRIMARY KEY (answer_id, reward_version)
    ) WITHOUT ROWID;
    CREATE TABLE reward_judgments (
        pair_id         INTEGER PRIMARY KEY REFERENCES pairs(id),
        reward_version  INTEGER NOT NULL,
        chosen_score    REAL NOT NULL,
        rejected_score  REAL NOT NULL,
        created_at      REAL NOT NULL
    );
    CREATE INDEX reward_judgments_version ON reward_judgments (reward_version);
    """,
    ),
]


def schema_version() -> int:
    """The user_version of a file this code has migrated fully."""
    return len(MIGRATIONS)


def statements(script: str) -> Iterator[str]:
    """The statements of a migration, one by one."""
    # executescript() would COMMIT first, breaking one-transaction-per-migration; split it instead.
    buf = ""
    for line in script.splitlines(keepends=True):
        buf += line
        if sqlite3.complete_statement(buf):
            yield buf
            buf = ""
    if buf.strip():
        yield buf  # trailing comments are harmless; an unfinished statement makes SQLite raise


def migrate(db) -> None:
    """Apply what `db` (a Database) lacks, one transaction per migration. Re-reading user_version under the write
    lock lets several processes open a fresh file at once without applying anything twice."""
    while True:
        with db.write_unchecked_references() as conn:
            applied = conn.execute("PRAGMA user_version").fetchone()[0]
            if applied > len(MIGRATIONS):
                raise StoreError(
                    f"{db.path} has schema version {applied}, newer than this code knows "
                    f"({len(MIGRATIONS)}); upgrade the app instead of risking the data."
                )
            if applied == len(MIGRATIONS):
                return
            for statement in statements(MIGRATIONS[applied].sql):
                conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {applied + 1}")
