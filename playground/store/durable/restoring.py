"""Restoring a store from a durable copy: every shard replayed in `seq` order (the changelog's never-reused
counter), the last record of a row wins; a line cut short by a crash is skipped, not fatal."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from ..changelog import LOCAL_META_KEYS, data_tables
from ..migrations import schema_version
from .target import (
    FORMAT,
    FORMAT_VERSION,
    META_KEY,
    DurableCopyError,
    adapter_path,
    copy_folder,
    is_empty,
    read_copy_file,
    shards,
)

log = logging.getLogger(__name__)


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
    if header.get("format_version", 0) > FORMAT_VERSION or header.get("store_schema", 0) > schema_version():
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
    with store.read() as conn:
        tables = data_tables(conn)
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
            relative = adapter_path(row)
            if not copy_folder(folder / relative, store.root / relative):
                missing.append(row["version"])
            row["path"] = relative
    if missing:
        warnings_.append(f"adapter folders of versions {missing} are missing in the copy")

    # Rows arrive in the order they changed, not in key order: references are checked once, at the end.
    with store.write_unchecked_references(strict=False) as conn:
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
            store.set_meta(conn, META_KEY, history)
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
