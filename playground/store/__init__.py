"""The SQLite store: the system's record of prompts, answers, votes, preference pairs, training rounds and adapter
versions, one file per data set (see data_sets.py).

- database.py: access to the file (connections, one transaction per write, the change counter, hooks on commit);
- migrations.py: its schema, as named migrations; changelog.py: the triggers that note changes for the durable copy;
- comparisons.py: what people asked and what the arms answered (prompts, comparisons, answers, conversations);
- records.py: what people gave (votes, corrections and the pairs they make);
- feedback.py: what a round may train on (pairs, demonstrations, ratings: pending, trained, exported);
- rounds.py: what training made of it (rounds, steps, the trainer's state); versions.py: the versions it made,
  which one serves, and what was measured of them; rewards.py: the reward model's scores and judgments;
- durable/: the durable copy (copier, restore, Hub scheduler) and its binding to a running playground.

Timestamps are float unix seconds. JSON columns (settings, hyperparams, metrics, extra) come back parsed.
Lookups of a single row return None when it does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from .. import votes as rules
from .comparisons import ARMS, MODES, Comparisons
from .database import Database
from .errors import StoreError
from .feedback import Feedback
from .migrations import MIGRATIONS
from .records import Records, VoteError, VoteReceipt
from .rewards import Rewards
from .rounds import Rounds
from .versions import Versions

__all__ = ["ARMS", "MODES", "MIGRATIONS", "STORE_FILE", "Store", "StoreError", "VoteError", "VoteReceipt"]

STORE_FILE = "playground.sqlite3"  # the store of a data set, in its folder


class Store(Comparisons, Records, Feedback, Rewards, Rounds, Versions, Database):
    @classmethod
    def open(cls, folder: str | os.PathLike) -> Store:
        """The store of the data set in `folder`."""
        return cls(Path(folder) / STORE_FILE)

    def counts(self) -> dict[str, Any]:
        """How many rows of each kind the store holds."""
        with self.read() as conn:

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
