"""Access to the store's SQLite file: connections, transactions, the change counter and hooks on commit.

One file shared by the web app, the trainer process and any script. To make that safe:
- WAL mode, so readers never block the writer and the writer never blocks readers;
- a fresh connection per operation, so any thread or process can call any method;
- every write is one `BEGIN IMMEDIATE` transaction: it takes the write lock up front, so two writers
  queue on the busy timeout instead of deadlocking when both try to upgrade a read lock;
- `synchronous=FULL`: a vote is on disk before the person who cast it is thanked;
- every transaction that changed a row also counts up `meta.changes`, so a reader learns with one query whether
  anything changed since it last looked (the page's panels are computed once per change, not once per viewer).

Opening a file applies its missing migrations (migrations.py) and installs the change log's triggers
(changelog.py).
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import sqlite3
import threading
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from . import changelog, migrations
from .errors import StoreError

log = logging.getLogger(__name__)

BUSY_TIMEOUT_S = 30.0

JSON_COLUMNS = {"settings", "hyperparams", "metrics", "extra", "history"}


def to_json(value: Any) -> str:
    """`value` as the text of a JSON column (None as {})."""

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


def from_row(row: sqlite3.Row | None) -> dict | None:
    """A row as a dict, its JSON columns parsed."""
    if row is None:
        return None
    d = dict(row)
    for key in JSON_COLUMNS & d.keys():
        if isinstance(d[key], str):
            d[key] = json.loads(d[key])
    return d


def meta(conn: sqlite3.Connection, key: str) -> str | None:
    """A small shared value (the `meta` table), None when unset."""
    row = conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
    return row[0] if row else None


def set_meta(conn: sqlite3.Connection, key: str, value: str) -> None:
    conn.execute(
        "INSERT INTO meta (key, value) VALUES (?, ?) ON CONFLICT (key) DO UPDATE SET value = excluded.value",
        (key, value),
    )


class Database:
    """Connections and transactions of one SQLite file."""

    meta = staticmethod(meta)
    set_meta = staticmethod(set_meta)

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._local = threading.local()  # each thread's connection for changes()
        self._commit_hooks: list[Callable[[], object]] = []
        with contextlib.closing(self.connect()) as conn:
            # journal_mode is persistent in the file; only switch when needed (it takes an exclusive lock).
            mode = conn.execute("PRAGMA journal_mode").fetchone()[0]
            if mode != "wal":
                mode = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if mode != "wal":
                warnings.warn(
                    f"{self.path}: SQLite refused WAL mode (got {mode!r}); concurrent use will be slow", stacklevel=2
                )
            applied = conn.execute("PRAGMA user_version").fetchone()[0]
        if applied != migrations.schema_version():
            migrations.migrate(self)
        changelog.install_triggers(self)

    @property
    def root(self) -> Path:
        """The folder of the data set this store belongs to; adapter paths are stored relative to it."""
        return self.path.parent

    def connect(self) -> sqlite3.Connection:
        """A new connection with the store's settings; outside `read`/`write` only for statements that must not
        count as a change or must run outside a transaction."""
        # isolation_level=None: we issue BEGIN ourselves, so the transaction boundaries are the ones we wrote.
        conn = sqlite3.connect(self.path, timeout=BUSY_TIMEOUT_S, isolation_level=None)
        conn.row_factory = sqlite3.Row
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA synchronous = FULL")
        return conn

    def on_commit(self, callback: Callable[[], object]) -> None:
        """Call `callback()` after every write transaction this object commits, in the writing thread. A hook that
        raises is logged and ignored: by then the write is committed, and it stays so."""
        self._commit_hooks.append(callback)

    def _committed(self) -> None:
        for hook in tuple(self._commit_hooks):
            try:
                hook()
            except Exception:
                log.exception("A commit hook of %s failed (the write itself is committed).", self.path)

    @contextlib.contextmanager
    def write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: commits when the block ends, rolls back if it raises."""
        conn = self.connect()
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
        self._committed()

    @contextlib.contextmanager
    def read(self) -> Iterator[sqlite3.Connection]:
        """A read transaction, so several queries see one consistent snapshot."""
        conn = self.connect()
        try:
            conn.execute("BEGIN")
            yield conn
        finally:
            conn.close()  # ends the read transaction

    @contextlib.contextmanager
    def write_unchecked_references(self, strict: bool = True) -> Iterator[sqlite3.Connection]:
        """A write transaction with foreign keys checked once at its end instead of per statement: for rebuilding a
        table others refer to (a migration) or writing rows in an order that is not their key order (a restore).
        The pragma only takes effect outside a transaction. `strict`: a broken reference at the end rolls everything
        back (else the caller checks and decides)."""
        conn = self.connect()
        committed = False
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
                    committed = True
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
        finally:
            conn.close()
        if committed:
            self._committed()

    def changes(self) -> int:
        """How many write transactions changed something so far: equal numbers mean equal contents.

        Every open page asks this every few seconds, so each thread keeps one connection for it (opening one costs
        more than the query); outside a transaction, each query reads the latest commit."""
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = self._local.conn = self.connect()
        row = conn.execute("SELECT value FROM meta WHERE key = 'changes'").fetchone()
        return int(row[0]) if row else 0
