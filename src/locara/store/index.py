"""Locara's own database of what is stored, who uses it, and when it was last used.

References and last-used times live here, never in ``st_nlink`` or atime: hardlinks
can be made by anyone and atime is often disabled (noatime), so neither can tell GC
whether a blob is still wanted.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from locara.errors import StoreError
from locara.sqlite_migrations import apply_migrations

# Numbered migrations; the database's user_version says how many have run.
_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE blobs (
        sha256     TEXT PRIMARY KEY,
        model_id   TEXT,
        quant      TEXT,
        format     TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        created_at REAL NOT NULL,
        last_used  REAL
    );
    CREATE TABLE refs (
        sha256     TEXT NOT NULL,
        holder     TEXT NOT NULL,     -- e.g. "app:notes", "pin:user"
        created_at REAL NOT NULL,
        PRIMARY KEY (sha256, holder)
    );
    """,
    """
    CREATE TABLE apps (
        id           TEXT PRIMARY KEY,
        name         TEXT NOT NULL,
        version      TEXT NOT NULL,
        source       TEXT NOT NULL,     -- the app directory it was installed from
        installed_at REAL NOT NULL,
        link_mode    TEXT NOT NULL      -- hardlink | reflink | copy (worst of its models)
    );
    """,
)

APP_PREFIX = "app:"
# Held on a base model by each adapter bound to it: GC keeps the base, and a load of it
# plans the runtime that applies adapters.
ADAPTER_BASE_PREFIX = "adapter-base:"
# Blobs that share the store but are not models (meta.json "kind"): never listed as models.
NOT_MODELS = frozenset({"adapter", "suite"})


@dataclass(frozen=True)
class AppRecord:
    id: str
    name: str
    version: str
    source: str
    installed_at: float
    link_mode: str


@dataclass(frozen=True)
class BlobRecord:
    sha256: str
    model_id: str | None
    quant: str | None
    format: str
    size_bytes: int
    created_at: float
    last_used: float | None


class StoreIndex:
    """A thin, typed wrapper over ``locara.db``; opens a short connection per operation."""

    def __init__(self, path: Path) -> None:
        self.path = path

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise StoreError(
                f"cannot open the store database {self.path}: {exc}",
                "check that LOCARA_HOME is writable (or point LOCARA_HOME elsewhere)",
            ) from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.execute("PRAGMA busy_timeout=30000")
            self._migrate(conn)
            yield conn
        except sqlite3.Error as exc:
            raise StoreError(
                f"store database error in {self.path}: {exc}",
                "if the file is corrupted, move it aside; `locara cache verify` rebuilds it",
            ) from exc
        finally:
            conn.close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        apply_migrations(conn, _MIGRATIONS)

    def record_blob(
        self, sha256: str, model_id: str | None, quant: str | None, fmt: str, size: int
    ) -> None:
        with self._connect() as c:
            c.execute(
                "INSERT INTO blobs(sha256, model_id, quant, format, size_bytes, created_at)"
                " VALUES (?,?,?,?,?,?) ON CONFLICT(sha256) DO UPDATE SET"
                " model_id=coalesce(excluded.model_id, model_id),"
                " quant=coalesce(excluded.quant, quant)",
                (sha256, model_id, quant, fmt, size, time.time()),
            )

    def touch(self, sha256: str, when: float | None = None) -> None:
        with self._connect() as c:
            c.execute("UPDATE blobs SET last_used=? WHERE sha256=?", (when or time.time(), sha256))

    def forget_blob(self, sha256: str) -> None:
        with self._connect() as c:
            c.execute("DELETE FROM blobs WHERE sha256=?", (sha256,))

    def blobs(self) -> list[BlobRecord]:
        with self._connect() as c:
            rows = c.execute(
                "SELECT sha256, model_id, quant, format, size_bytes, created_at, last_used"
                " FROM blobs ORDER BY model_id, quant"
            ).fetchall()
        return [BlobRecord(*r) for r in rows]

    def blob(self, sha256: str) -> BlobRecord | None:
        with self._connect() as c:
            row = c.execute(
                "SELECT sha256, model_id, quant, format, size_bytes, created_at, last_used"
                " FROM blobs WHERE sha256=?",
                (sha256,),
            ).fetchone()
        return BlobRecord(*row) if row else None

    def add_ref(self, sha256: str, holder: str) -> None:
        with self._connect() as c:
            c.execute(
                "INSERT OR IGNORE INTO refs(sha256, holder, created_at) VALUES (?,?,?)",
                (sha256, holder, time.time()),
            )

    def remove_refs(self, holder: str) -> None:
        with self._connect() as c:
            c.execute("DELETE FROM refs WHERE holder=?", (holder,))

    def refs(self, sha256: str) -> list[str]:
        """Every holder of ``sha256`` ("app:<id>", "pin:<name>"); empty means unreferenced."""
        with self._connect() as c:
            rows = c.execute("SELECT holder FROM refs WHERE sha256=? ORDER BY holder", (sha256,))
            return [r[0] for r in rows.fetchall()]

    def pinned_by_apps(self, sha256: str) -> list[str]:
        """The ids of the installed apps that pin ``sha256`` (what cleanup shows and keeps)."""
        return [h[len(APP_PREFIX) :] for h in self.refs(sha256) if h.startswith(APP_PREFIX)]

    def all_refs(self) -> dict[str, list[str]]:
        with self._connect() as c:
            rows = c.execute("SELECT sha256, holder FROM refs ORDER BY sha256, holder").fetchall()
        out: dict[str, list[str]] = {}
        for sha, holder in rows:
            out.setdefault(sha, []).append(holder)
        return out

    def held_by(self, holder: str) -> list[str]:
        with self._connect() as c:
            rows = c.execute("SELECT sha256 FROM refs WHERE holder=? ORDER BY sha256", (holder,))
            return [r[0] for r in rows.fetchall()]

    # -- apps -----------------------------------------------------------------------
    def record_app(self, app: AppRecord, shas: list[str]) -> None:
        """Record an installed app and its references in one transaction."""
        holder = APP_PREFIX + app.id
        with self._connect() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute(
                    "INSERT OR REPLACE INTO apps(id, name, version, source, installed_at,"
                    " link_mode) VALUES (?,?,?,?,?,?)",
                    (app.id, app.name, app.version, app.source, app.installed_at, app.link_mode),
                )
                c.execute("DELETE FROM refs WHERE holder=?", (holder,))
                for sha in shas:
                    c.execute(
                        "INSERT OR IGNORE INTO refs(sha256, holder, created_at) VALUES (?,?,?)",
                        (sha, holder, app.installed_at),
                    )
                    # Installing counts as using: one transaction, one fsync, not one per blob.
                    c.execute(
                        "UPDATE blobs SET last_used=? WHERE sha256=?", (app.installed_at, sha)
                    )
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def forget_app(self, app_id: str) -> None:
        with self._connect() as c:
            c.execute("BEGIN IMMEDIATE")
            try:
                c.execute("DELETE FROM refs WHERE holder=?", (APP_PREFIX + app_id,))
                c.execute("DELETE FROM apps WHERE id=?", (app_id,))
                c.execute("COMMIT")
            except BaseException:
                c.execute("ROLLBACK")
                raise

    def apps(self) -> list[AppRecord]:
        with self._connect() as c:
            rows = c.execute(
                "SELECT id, name, version, source, installed_at, link_mode FROM apps ORDER BY id"
            ).fetchall()
        return [AppRecord(*r) for r in rows]

    def app(self, app_id: str) -> AppRecord | None:
        with self._connect() as c:
            row = c.execute(
                "SELECT id, name, version, source, installed_at, link_mode FROM apps WHERE id=?",
                (app_id,),
            ).fetchone()
        return AppRecord(*row) if row else None
