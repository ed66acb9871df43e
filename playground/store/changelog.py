"""The change log: the key of every row any process inserts, updates or deletes, noted by SQLite triggers in the
same transaction as the change, while a durable copy is bound to the file (meta 'durable_copy' set). The copier
(durable/copier.py) turns the noted keys into records and forgets them; so a vote committed locally can never be
left out of the copy, however slow or broken the copy's target is.

The triggers are generated from the schema each time a file is opened, so tables and columns added by later
migrations are logged too.
"""

from __future__ import annotations

import contextlib
import sqlite3

# Meta keys that describe this process or this copy of the file, not the data: never copied, never restored.
LOCAL_META_KEYS = ("changes", "trainer", "voter_salt", "durable_copy")
# Tables that are the copy's own bookkeeping.
UNCOPIED_TABLES = ("changelog",)


def data_tables(conn: sqlite3.Connection) -> dict[str, dict]:
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


def install_triggers(db) -> None:
    """Make `db`'s (a Database) triggers the ones its schema calls for, when they are not already."""
    with contextlib.closing(db.connect()) as conn:
        wanted = changelog_triggers(data_tables(conn))
        have = {
            r[0]: r[1]
            for r in conn.execute(
                "SELECT name, sql FROM sqlite_master WHERE type = 'trigger' AND name LIKE 'changelog_%'"
            )
        }
    if {name: sql for name, sql in wanted} == have:
        return
    with db.write() as conn:  # under the write lock, so two processes opening the file do this once
        for name in have:
            conn.execute(f"DROP TRIGGER IF EXISTS {name}")
        for _, sql in wanted:
            conn.execute(sql)


def noted(conn: sqlite3.Connection, limit: int) -> list[sqlite3.Row]:
    """The oldest `limit` noted changes: (seq, tbl, key) rows, in the order they happened."""
    return conn.execute("SELECT seq, tbl, key FROM changelog ORDER BY seq LIMIT ?", (limit,)).fetchall()


def last_seq(conn: sqlite3.Connection) -> int:
    """The highest seq ever noted (seqs are never reused, even after the notes are forgotten)."""
    row = conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'changelog'").fetchone()
    return int(row[0]) if row else 0


def forget(db, seq: int) -> None:
    """Forget the notes up to `seq`, once they are copied."""
    # Its own short transaction, outside Database.write: forgetting copied keys changes no data, so it must not
    # count as a change (every page would recompute its panels).
    with contextlib.closing(db.connect()) as conn:
        conn.execute("DELETE FROM changelog WHERE seq <= ?", (seq,))


def pending(db) -> int:
    """How many noted changes are not copied yet."""
    with contextlib.closing(db.connect()) as conn:
        return conn.execute("SELECT count(*) FROM changelog").fetchone()[0]
