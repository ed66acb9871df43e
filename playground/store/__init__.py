"""The SQLite store: the system's record of prompts, answers, votes, preference pairs, training rounds and adapter
versions, one file per data set (see data_sets.py).

- schema.py: the file itself (migrations, connections, one transaction per write, the change counter);
- records.py: what people gave (comparisons, answers, votes and the pairs they make);
- feedback.py: what a round may train on (pairs, demonstrations, ratings: pending, trained, exported);
- rounds.py: what training made of it (rounds, steps, versions, the serving version, the trainer's state).

Timestamps are float unix seconds. JSON columns (settings, hyperparams, metrics, extra) come back parsed.
Lookups of a single row return None when it does not exist.
"""

from __future__ import annotations

import os
from pathlib import Path

from .feedback import Feedback
from .records import ARMS, MODES, Records, VoteError, VoteReceipt
from .rounds import Rounds
from .schema import MIGRATIONS, Database, StoreError

__all__ = ["ARMS", "MODES", "MIGRATIONS", "Store", "StoreError", "VoteError", "VoteReceipt", "pid_alive"]

DB_FILENAME = "playground.sqlite3"


class Store(Records, Feedback, Rounds, Database):
    @classmethod
    def open(cls, folder: str | os.PathLike) -> Store:
        """The store of the data set in `folder`."""
        return cls(Path(folder) / DB_FILENAME)
