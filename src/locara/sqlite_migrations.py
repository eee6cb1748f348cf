"""Numbered SQLite migrations, shared by Locara's databases (locara.db, usage.db).

Each migration is a string of ``;``-separated statements; ``PRAGMA user_version`` says
how many have run. Migrating takes the write lock first and re-reads the version under
it, because many fresh processes may open a new database at the same moment.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence


def apply_migrations(conn: sqlite3.Connection, migrations: Sequence[str]) -> None:
    """Run the migrations ``conn``'s database has not seen yet, atomically."""
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    if version >= len(migrations):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        version = int(conn.execute("PRAGMA user_version").fetchone()[0])
        for i, sql in enumerate(migrations[version:], start=version + 1):
            for stmt in sql.split(";"):
                if stmt.strip():
                    conn.execute(stmt)
            conn.execute(f"PRAGMA user_version={i}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
