"""The copier: every record the store writes, appended as JSON lines to a folder that outlives this machine, and
every adapter version's folder, copied once.

Why this shape: the live SQLite file must stay on local disk (a Space's bucket volume can be seconds stale and its
locks are unreliable), and the other way to keep files on a Space, a CommitScheduler pushing a folder to a dataset
repo, needs files that are only ever appended to. So the copy is a log, not a database file:

- SQLite triggers (changelog.py) note the key of every row any process inserts, updates or deletes, inside the same
  transaction: a vote is committed locally first and its copy can never be forgotten, however slow or broken the
  target is;
- one copier at a time (a lock file next to the live store) turns the noted keys into the rows' current values,
  appends them to its own shard (one per process that copies, never rewritten, flushed per record) and forgets the
  keys; a failed append is retried into a fresh shard, so a line cut short never swallows the next one;
- restoring (restoring.py) replays every shard in `seq` order, the last record of a row wins.

A target belongs to one history of one data set (`copy.json`'s id, also kept in the store's meta 'durable_copy'):
a non-empty store is never mixed into a target that holds another history, since the row ids would collide.
docs/durable-copy.md has the record format.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ...locks import locked  # on local disk next to the live store: the one lock here that works
from .. import changelog
from ..changelog import LOCAL_META_KEYS, data_tables
from ..migrations import schema_version
from ..versions import REWARD_MODEL_FOLDER
from .restoring import restore
from .target import (
    COPY_FILE,
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    RECORDS,
    DurableCopyError,
    adapter_path,
    copy_folder,
    data_set_folder,
    is_empty,
    read_copy_file,
    shards,
    write_once,
)

log = logging.getLogger(__name__)

BATCH = 2000


class DurableCopy:
    """The copy of one store's data set to one target folder."""

    def __init__(self, store, data_set: str, target: str | os.PathLike, about: dict | None = None):
        self.store = store
        self.data_set = data_set
        self.target = Path(target)
        self.folder = data_set_folder(self.target, data_set)
        self.about = about or {}
        self.history: str | None = None
        self.last_error: str | None = None
        self.last_copy_at: float | None = None
        self.records_copied = 0
        self.restored: dict | None = None  # the restore's summary, when binding restored the store
        self._lock_path = store.root / "durable-copy.lock"
        self._shard = None  # this process's open shard
        self._pending_since: float | None = None
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None

    # ---- binding a store to a target -----------------------------------------------------------------
    def bind(self, restore_from: Path | None = None) -> str:
        """Make the store and the target one history, before anything is served:
        - 'continued': the store already copies to this target;
        - 'restored': the store was empty and the target (or `restore_from`, e.g. a dataset repo's download)
          holds records: the store is rebuilt from them;
        - 'started': the target holds nothing yet: everything in the store is copied now.
        Raises DurableCopyError when a non-empty store meets a target that holds another history."""
        with locked(self._lock_path):
            copy_file = read_copy_file(self.folder)
            target_history = copy_file and copy_file.get("history")
            with self.store.read() as conn:
                bound = self.store.meta(conn, META_KEY)
            if target_history and bound == target_history:
                self.history = bound
                return "continued"
            source = restore_from if restore_from is not None and shards(restore_from) else self.folder
            if (shards(source) or target_history) and not is_empty(self.store):
                raise DurableCopyError(
                    f"The durable copy in {source} holds another history of data set {self.data_set} than the "
                    f"local store {self.store.path}, which is not empty: mixing them would mix up their ids. "
                    f"Move one of them aside (an empty local store is restored from the copy)."
                )
            if shards(source):
                summary = restore(self.store, source, bind=True)
                self.history = summary["history"]
                if self.history is None:  # a copy without its copy.json: from here on, a history of its own
                    self.history = self._write_copy_file(uuid.uuid4().hex)
                    with self.store.write() as conn:
                        self.store.set_meta(conn, META_KEY, self.history)
                elif read_copy_file(self.folder) is None:
                    self._write_copy_file(self.history)
                self.restored = summary
                return "restored"
            self.history = target_history or self._write_copy_file(uuid.uuid4().hex)
            self._snapshot()
            return "started"

    def _write_copy_file(self, history: str) -> str:
        about = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "history": history,
            "data_set": self.data_set,
            "created_at": time.time(),
            **self.about,
        }
        write_once(self.folder / COPY_FILE, json.dumps(about, indent=2) + "\n")
        return history

    def _snapshot(self) -> None:
        """Bind the store (its triggers start logging) and copy every row it holds, at the seq reached so far:
        whatever changes after that is in the log with a later seq."""
        with self.store.write() as conn:
            self.store.set_meta(conn, META_KEY, self.history)
        with self.store.read() as conn:
            seq = changelog.last_seq(conn)
            records = []
            for table in data_tables(conn):
                for row in conn.execute(f"SELECT * FROM {table}"):
                    row = dict(row)
                    if table == "meta" and row["key"] in LOCAL_META_KEYS:
                        continue
                    records.append({"seq": seq, "table": table, "row": row})
        self._append(records)
        self._forget(seq)

    # ---- copying -------------------------------------------------------------------------------------
    def copy_pending(self) -> int:
        """Copy every noted change now; returns the records written. Raises on a failing target (nothing is
        forgotten then: the next call retries)."""
        total = 0
        with locked(self._lock_path):
            while True:
                with self.store.read() as conn:
                    if self.store.meta(conn, META_KEY) != self.history:
                        raise DurableCopyError("The local store was bound to another durable copy meanwhile.")
                    entries = changelog.noted(conn, BATCH)
                    if not entries:
                        break
                    records = self._current_rows(conn, entries)
                self._append(records)
                self._forget(entries[-1][0])
                total += len(records)
        self.last_copy_at = time.time()
        self.records_copied += total
        return total

    def _current_rows(self, conn: sqlite3.Connection, entries: list) -> list[dict]:
        # A row changed five times in a batch is copied once, as it is now, at its last change's seq.
        latest = {}
        for seq, table, key in entries:
            latest[(table, key)] = seq
        tables = data_tables(conn)
        records = []
        for (table, key), seq in sorted(latest.items(), key=lambda item: item[1]):
            if table not in tables:
                continue
            values = json.loads(key)
            where = " AND ".join(f"{c} = ?" for c in tables[table]["key"])
            row = conn.execute(f"SELECT * FROM {table} WHERE {where}", values).fetchone()
            if row is None:
                records.append({"seq": seq, "table": table, "deleted": values})
            else:
                records.append({"seq": seq, "table": table, "row": dict(row)})
        return records

    def _append(self, records: list[dict]) -> None:
        if not records:
            return
        for record in records:  # an adapter's folder lands before the record that names it
            if record["table"] == "adapter_versions" and "row" in record:
                self._copy_adapter(record["row"])
        try:
            handle = self._open_shard()
            for record in records:
                handle.write(json.dumps(record, separators=(",", ":"), allow_nan=True) + "\n")
                handle.flush()
            os.fsync(handle.fileno())
        except BaseException:
            # The shard may now end in half a line: continue in a fresh one rather than append after it.
            self._close_shard()
            raise

    def _copy_adapter(self, row: dict) -> None:
        relative = adapter_path(row)
        source = Path(row["path"]) if Path(row["path"]).is_absolute() else self.store.root / row["path"]
        if not copy_folder(source, self.folder / relative):
            log.warning("Adapter v%s: folder %s is missing; its record is copied without it.", row["version"], source)
        # A reward model is written into its version's folder after the version is published (its record is
        # updated then, which brings the record, and so this, here again).
        copy_folder(source / REWARD_MODEL_FOLDER, self.folder / relative / REWARD_MODEL_FOLDER)

    def _open_shard(self):
        if self._shard is None:
            stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
            name = f"{stamp}-{socket.gethostname()[:40]}-{os.getpid()}-{uuid.uuid4().hex[:6]}.jsonl"
            path = self.folder / RECORDS / name
            path.parent.mkdir(parents=True, exist_ok=True)
            self._shard = open(path, "a", encoding="utf-8")
            header = {
                "format": FORMAT,
                "format_version": FORMAT_VERSION,
                "store_schema": schema_version(),
                "history": self.history,
                "data_set": self.data_set,
                "created_at": time.time(),
                "host": socket.gethostname(),
                "pid": os.getpid(),
            }
            self._shard.write(json.dumps({"header": header}) + "\n")
            self._shard.flush()
        return self._shard

    def _close_shard(self) -> None:
        if self._shard is not None:
            with contextlib.suppress(OSError):
                self._shard.close()
            self._shard = None

    def _forget(self, seq: int) -> None:
        changelog.forget(self.store, seq)

    def pending(self) -> int:
        return changelog.pending(self.store)

    # ---- the background copier -----------------------------------------------------------------------
    def start(self, interval: float = 0.5) -> threading.Thread:
        """Copy in the background: every `interval` seconds (or when woken), backing off while the target fails."""

        def loop():
            failures = 0
            while not self._stop.is_set():
                try:
                    self.copy_pending()
                    failures, self.last_error = 0, None
                except Exception as error:  # keep trying: votes stay in the local store and the log meanwhile
                    failures += 1
                    self.last_error = f"{type(error).__name__}: {error}"
                    log.error("Durable copy to %s failed (attempt %d): %s", self.target, failures, self.last_error)
                self._wake.wait(interval if not failures else min(30.0, interval * 2**failures))
                self._wake.clear()

        if self._thread is None:
            self._thread = threading.Thread(target=loop, name="durable-copy", daemon=True)
            self._thread.start()
        return self._thread

    def wake(self) -> None:
        self._wake.set()

    def stop(self, flush: bool = True) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        if flush:
            with contextlib.suppress(Exception):
                self.copy_pending()
        self._close_shard()

    def status(self) -> dict:
        """For the status line and `stats`: how far behind the copy is, and why."""
        pending = self.pending()
        now = time.time()
        if pending == 0:
            self._pending_since = None
        elif self._pending_since is None:
            self._pending_since = now
        return {
            "target": str(self.target),
            "history": self.history,
            "pending": pending,
            "lagging_seconds": round(now - self._pending_since, 1) if self._pending_since else 0.0,
            "last_error": self.last_error,
            "last_copy_at": self.last_copy_at,
            "records_copied": self.records_copied,
        }
