"""The durable copy: every record the store writes, appended as JSON lines to a folder that outlives this machine,
and every adapter version's folder, copied once. An empty store is rebuilt from it (`restore`).

Why this shape: the live SQLite file must stay on local disk (a Space's bucket volume can be seconds stale and its
locks are unreliable), and the other way to keep files on a Space, a CommitScheduler pushing a folder to a dataset
repo, needs files that are only ever appended to. So the copy is a log, not a database file:

- SQLite triggers (schema.changelog_triggers) note the key of every row any process inserts, updates or deletes in a
  `changelog` table, inside the same transaction: a vote is committed locally first and its copy can never be
  forgotten, however slow or broken the target is;
- one copier at a time (a lock file next to the live store) turns the noted keys into the rows' current values,
  appends them to its own shard (one per process that copies, never rewritten, flushed per record) and forgets the
  keys; a failed append is retried into a fresh shard, so a line cut short never swallows the next one;
- restoring replays every shard in `seq` order (the changelog's never-reused counter), the last record of a row wins.

Layout of a target (docs/durable-copy.md has the record format):

    <target>/datasets/<data set>/copy.json               written once: format, history id, the models
    <target>/datasets/<data set>/records/<time>-<host>-<pid>.jsonl   the shards
    <target>/datasets/<data set>/adapters/...            each version's folder, at its path in the data set

A target belongs to one history of one data set (`copy.json`'s id, also kept in the store's meta 'durable_copy'):
a non-empty store is never mixed into a target that holds another history, since the row ids would collide.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import shutil
import socket
import sqlite3
import threading
import time
import uuid
from pathlib import Path

from ..data_sets import _locked  # on local disk next to the live store: the one lock here that works
from .schema import LOCAL_META_KEYS, MIGRATIONS, StoreError

log = logging.getLogger(__name__)

FORMAT = "alignment-playground-durable-copy"
FORMAT_VERSION = 1
COPY_FILE = "copy.json"
RECORDS = "records"
PARTIAL = ".partial-"  # adapter folders being copied; renamed when complete (and never uploaded)
BATCH = 2000
META_KEY = "durable_copy"


class DurableCopyError(StoreError):
    """The copy cannot go on (or a restore cannot start); the message is meant for people."""


def data_set_folder(target: str | os.PathLike, data_set: str) -> Path:
    return Path(target) / "datasets" / data_set


def shards(folder: Path) -> list[Path]:
    return sorted((folder / RECORDS).glob("*.jsonl")) if (folder / RECORDS).is_dir() else []


def read_copy_file(folder: Path) -> dict | None:
    try:
        return json.loads((folder / COPY_FILE).read_text())
    except FileNotFoundError:
        return None
    except (OSError, ValueError) as error:
        raise DurableCopyError(
            f"{folder / COPY_FILE} is unreadable ({error}); it names this copy's history."
        ) from error


def _write_once(path: Path, text: str) -> None:
    # Written to a temporary name and renamed, so no reader (or upload) ever sees half of it.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{PARTIAL}{path.name}")
    tmp.write_text(text)
    os.replace(tmp, path)


def is_empty(store) -> bool:
    """No data rows at all (meta aside): a store that a restore may fill."""
    with store._read() as conn:
        return all(
            conn.execute(f"SELECT 1 FROM {t} LIMIT 1").fetchone() is None for t in store.tables(conn) if t != "meta"
        )


def _adapter_path(row: dict) -> str:
    # Versions inside the data set keep their relative path; one trained elsewhere gets a place of its own.
    path = row.get("path") or ""
    return path if path and not Path(path).is_absolute() else f"adapters/version-{row['version']}"


def _copy_folder(src: Path, dst: Path) -> bool:
    """Copy a folder once: to a partial name, then renamed. False when the source is missing."""
    if (dst / "adapter_config.json").is_file():
        return True
    if not src.is_dir():
        return False
    partial = dst.with_name(PARTIAL + dst.name)
    shutil.rmtree(partial, ignore_errors=True)
    shutil.copytree(src, partial)
    os.replace(partial, dst)
    return True


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
        with _locked(self._lock_path):
            copy_file = read_copy_file(self.folder)
            target_history = copy_file and copy_file.get("history")
            with self.store._read() as conn:
                bound = self.store._meta(conn, META_KEY)
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
                    with self.store._write() as conn:
                        self.store._set_meta(conn, META_KEY, self.history)
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
        _write_once(self.folder / COPY_FILE, json.dumps(about, indent=2) + "\n")
        return history

    def _snapshot(self) -> None:
        """Bind the store (its triggers start logging) and copy every row it holds, at the seq reached so far:
        whatever changes after that is in the log with a later seq."""
        with self.store._write() as conn:
            self.store._set_meta(conn, META_KEY, self.history)
        with self.store._read() as conn:
            seq = _last_seq(conn)
            records = []
            for table in self.store.tables(conn):
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
        with _locked(self._lock_path):
            while True:
                with self.store._read() as conn:
                    if self.store._meta(conn, META_KEY) != self.history:
                        raise DurableCopyError("The local store was bound to another durable copy meanwhile.")
                    entries = conn.execute(
                        "SELECT seq, tbl, key FROM changelog ORDER BY seq LIMIT ?", (BATCH,)
                    ).fetchall()
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
        tables = self.store.tables(conn)
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
        relative = _adapter_path(row)
        source = Path(row["path"]) if Path(row["path"]).is_absolute() else self.store.root / row["path"]
        if not _copy_folder(source, self.folder / relative):
            log.warning("Adapter v%s: folder %s is missing; its record is copied without it.", row["version"], source)

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
                "store_schema": len(MIGRATIONS),
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
        # Its own short transaction, outside Database._write: forgetting copied keys changes no data, so it must
        # not count as a change (every page would recompute its panels).
        with contextlib.closing(self.store._connect()) as conn:
            conn.execute("DELETE FROM changelog WHERE seq <= ?", (seq,))

    def pending(self) -> int:
        with contextlib.closing(self.store._connect()) as conn:
            return conn.execute("SELECT count(*) FROM changelog").fetchone()[0]

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


def _last_seq(conn: sqlite3.Connection) -> int:
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changelog'").fetchone()
    return int(row[0]) if row else 0


# ---- restore -----------------------------------------------------------------------------------------------


def read_records(folder: Path) -> tuple[dict | None, list[dict], list[str]]:
    """(copy file, records in replay order, warnings) of a data set folder in a target. A line cut short by a crash
    (or otherwise unreadable) is skipped with a warning; a shard of a newer format stops the restore."""
    copy_file = read_copy_file(folder)
    records, warnings_ = [], []
    for shard in shards(folder):
        with open(shard, encoding="utf-8", errors="replace") as handle:
            for number, line in enumerate(handle, 1):
                try:
                    if not line.endswith("\n"):
                        raise ValueError("cut short")
                    record = json.loads(line)
                except ValueError as error:
                    warnings_.append(f"{shard.name} line {number}: {error}; skipped")
                    continue
                if "header" in record:
                    _check_header(shard, record["header"])
                elif "table" in record:
                    records.append(record)
    records.sort(key=lambda r: r["seq"])  # stable: equal seqs keep their order
    return copy_file, records, warnings_


def _check_header(shard: Path, header: dict) -> None:
    if header.get("format") != FORMAT:
        raise DurableCopyError(f"{shard} is not a durable-copy shard (format {header.get('format')!r}).")
    if header.get("format_version", 0) > FORMAT_VERSION or header.get("store_schema", 0) > len(MIGRATIONS):
        raise DurableCopyError(
            f"{shard} was written by a newer version of the app (format "
            f"{header.get('format_version')}, schema {header.get('store_schema')}); upgrade first."
        )


def restore(store, folder: str | os.PathLike, *, bind: bool = False) -> dict:
    """Rebuild an empty store from a target's data set folder: every row with its id, the serving version, the
    adapters in place. Returns a summary (counts, warnings). `bind`: the store then continues this copy's history."""
    folder = Path(folder)
    copy_file, records, warnings_ = read_records(folder)
    for warning in warnings_:
        log.warning("Restore: %s", warning)
    if not records:
        raise DurableCopyError(f"{folder} holds no records to restore.")
    if not is_empty(store):
        raise DurableCopyError(
            f"The store {store.path} is not empty; a restore only fills an empty one (move it aside first)."
        )
    latest: dict[tuple, dict] = {}
    with store._read() as conn:
        tables = store.tables(conn)
    for record in records:
        spec = tables.get(record["table"])
        if spec is None:
            warnings_.append(f"table {record['table']} is unknown here; its records are skipped")
            continue
        key = record["deleted"] if "deleted" in record else [record["row"].get(c) for c in spec["key"]]
        latest[(record["table"], json.dumps(key))] = record
    rows = [
        r
        for r in latest.values()
        if "row" in r and not (r["table"] == "meta" and r["row"].get("key") in LOCAL_META_KEYS)
    ]

    missing = []
    for record in rows:  # adapters first: a version row without its folder would be marked bad when served
        if record["table"] == "adapter_versions":
            row = record["row"]
            relative = _adapter_path(row)
            if not _copy_folder(folder / relative, store.root / relative):
                missing.append(row["version"])
            row["path"] = relative
    if missing:
        warnings_.append(f"adapter folders of versions {missing} are missing in the copy")

    # Rows arrive in the order they changed, not in key order: references are checked once, at the end.
    with store._write_unchecked_references(strict=False) as conn:
        for record in rows:
            columns = [c for c in record["row"] if c in tables[record["table"]]["columns"]]
            conn.execute(
                f"INSERT OR REPLACE INTO {record['table']} ({', '.join(columns)}) "
                f"VALUES ({', '.join('?' * len(columns))})",
                [record["row"][c] for c in columns],
            )
        # A line lost to a crash may leave rows pointing at it: restore the rest and say so, rather than nothing.
        broken = conn.execute("PRAGMA foreign_key_check").fetchall()
        if broken:
            warnings_.append(f"{len(broken)} rows refer to rows missing from the copy")
        last = max(r["seq"] for r in records)
        # The change log continues after the copy's last seq, so later records sort after the restored ones.
        if conn.execute("UPDATE sqlite_sequence SET seq = max(seq, ?) WHERE name = 'changelog'", (last,)).rowcount == 0:
            conn.execute("INSERT INTO sqlite_sequence (name, seq) VALUES ('changelog', ?)", (last,))
        conn.execute("DELETE FROM changelog")  # what was just restored is in the copy already
        history = (copy_file or {}).get("history")
        if bind and history:
            store._set_meta(conn, META_KEY, history)
        conn.execute("UPDATE meta SET value = CAST(value AS INTEGER) + 1 WHERE key = 'changes'")
    counts: dict[str, int] = {}
    for record in rows:
        counts[record["table"]] = counts.get(record["table"], 0) + 1
    log.info("Restored %d rows from %s (%s).", len(rows), folder, ", ".join(f"{n} {t}" for t, n in counts.items()))
    return {
        "history": (copy_file or {}).get("history"),
        "rows": counts,
        "records_read": len(records),
        "adapters_missing": missing,
        "warnings": warnings_,
    }


# ---- a dataset repo on the Hub as the target's second home (a Space without a bucket volume) ---------------

# What the scheduler must never upload: folders still being copied (renamed when complete) and temporary files.
HUB_IGNORE = [f"**/{PARTIAL}*", f"**/{PARTIAL}*/**", f"{PARTIAL}*"]


def download_hub_copy(repo_id: str, data_set: str, dest: str | os.PathLike, api=None) -> Path | None:
    """The data set's folder from the dataset repo, downloaded into `dest`: what a restart restores from when the
    local target is empty. None when the repo does not exist yet (a first start). Any other failure raises: starting
    empty while the repo holds data would fork its history."""
    from huggingface_hub import HfApi
    from huggingface_hub.errors import RepositoryNotFoundError

    api = api or HfApi()
    prefix = f"datasets/{data_set}/"
    try:
        api.snapshot_download(repo_id=repo_id, repo_type="dataset", allow_patterns=[prefix + "**"], local_dir=dest)
    except RepositoryNotFoundError:
        return None
    except Exception as error:
        raise DurableCopyError(
            f"Could not read the dataset repo {repo_id} to restore from ({type(error).__name__}: {error}). "
            f"Not starting with an empty store: its new ids would collide with the repo's. Fix the token "
            f"(HF_TOKEN needs read access) or the network, or unset PLAYGROUND_HUB_DATASET."
        ) from error
    folder = data_set_folder(dest, data_set)
    return folder if shards(folder) else None


def start_hub_scheduler(repo_id: str, folder: str | os.PathLike, every_minutes: float = 5, api=None):
    """huggingface_hub's CommitScheduler on the target folder: every few minutes it uploads what was appended
    (it reads each file only up to its size when listed, which is why everything in the folder is append-only)."""
    from huggingface_hub import CommitScheduler

    return CommitScheduler(
        repo_id=repo_id,
        repo_type="dataset",
        folder_path=folder,
        every=every_minutes,
        private=True,
        ignore_patterns=HUB_IGNORE,
        hf_api=api,
    )
