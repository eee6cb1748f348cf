"""``usage.db``: one row per request, in SQLite (WAL) with numbered migrations.

Writing a row must never make a request wait or fail. A write gets a short busy
timeout; when the database is locked, corrupted or unwritable the row goes to a
spool file beside it (``usage-pending.jsonl``, one JSON object a line, appended under
an ``flock``) and a warning is logged. The next write or report that reaches the
database drains the spool into it. Every row carries a random id and is inserted
with ``INSERT OR IGNORE``, so a spool replayed twice (a crash between insert and
truncate) never counts a request twice.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from locara.errors import LedgerError
from locara.sqlite_migrations import apply_migrations

# A writer waits at most this long for the write lock before it spools its row instead,
# which bounds what the ledger can add to a request. A WAL insert takes ~0.1 ms, so
# only a pile-up (dozens of writers on two cores) or a stuck lock holder reaches it.
WRITE_BUSY_MS = 250
# Reports may wait longer: nobody's request is waiting on them.
READ_BUSY_MS = 5000

COLUMNS: tuple[str, ...] = (
    "id",
    "ts",
    "app",
    "surface",
    "model_id",
    "sha256",
    "backend",
    "prompt_tokens",
    "completion_tokens",
    "ttft_s",
    "generation_tps",
    "load_s",
    "status",
    "error",
    "extra",
    "audio_s",
    "images",
    "route",
    "escalated",
    "route_reason",
    "cost_usd",
    "saved_usd",
)

# Numbered migrations; PRAGMA user_version says how many have run. Append, never edit.
MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE requests (
        id                TEXT PRIMARY KEY,   -- random, so a replayed spool row is ignored
        ts                REAL NOT NULL,      -- unix time (UTC) the request finished
        app               TEXT NOT NULL,      -- "cli", or the app of the API token
        surface           TEXT NOT NULL,      -- "cli", "openai", "ollama"
        model_id          TEXT NOT NULL,
        sha256            TEXT,
        backend           TEXT NOT NULL,
        prompt_tokens     INTEGER NOT NULL DEFAULT 0,
        completion_tokens INTEGER NOT NULL DEFAULT 0,
        ttft_s            REAL,
        generation_tps    REAL,
        load_s            REAL,
        status            TEXT NOT NULL,      -- ok | error | cancelled
        error             TEXT,
        extra             TEXT                -- JSON object
    );
    CREATE INDEX requests_ts ON requests(ts);
    CREATE INDEX requests_model_ts ON requests(model_id, ts);
    CREATE INDEX requests_sha_ts ON requests(sha256, ts);
    """,
    # Speech and OCR requests are measured in what they read, not in tokens.
    """
    ALTER TABLE requests ADD COLUMN audio_s REAL;     -- seconds of audio transcribed
    ALTER TABLE requests ADD COLUMN images INTEGER;   -- images read (OCR, vision)
    """,
    # Router policies (locara serve --policy): which route answered, whether the request
    # was escalated to a remote target and why, what that cost and what answering
    # locally saved (the target's list price for the tokens the local model produced).
    """
    ALTER TABLE requests ADD COLUMN route TEXT;          -- policy/route, NULL: not routed
    ALTER TABLE requests ADD COLUMN escalated INTEGER;   -- 1: sent to a remote target
    ALTER TABLE requests ADD COLUMN route_reason TEXT;   -- why it escalated (or would have)
    ALTER TABLE requests ADD COLUMN cost_usd REAL;       -- a remote target's price for it
    ALTER TABLE requests ADD COLUMN saved_usd REAL;      -- answered locally: what it saved
    """,
)


def new_row_id() -> str:
    return uuid.uuid4().hex


@dataclass(frozen=True)
class WriteOutcome:
    """What happened to one row: stored in the database, or spooled (with the reason)."""

    stored: bool
    reason: str = ""


def spool_path(db_path: Path) -> Path:
    return db_path.with_name(db_path.stem + "-pending.jsonl")


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, sqlite3.DatabaseError) and not isinstance(exc, sqlite3.OperationalError):
        return f"corrupted ({text})"
    if "locked" in text or "busy" in text:
        return f"locked ({text})"
    return text


# Writers keep one connection per (thread, database). Opening one per request would
# make every request pay for the checkpoint SQLite runs when the last connection to a
# WAL database closes (an fsync and a WAL truncate: ~15 ms here, bench/ledger.py).
_local = threading.local()


def close_cached_connections() -> None:
    """Close the calling thread's cached writer connections (e.g. at server shutdown).

    The last connection to close checkpoints the WAL into the main file.
    """
    cache = getattr(_local, "conns", {})
    while cache:
        _, (conn, _ident) = cache.popitem()
        with contextlib.suppress(sqlite3.Error):
            conn.close()


class UsageDB:
    """The ledger database at ``path``: cached connections for writes, short ones for reads."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.spool = spool_path(path)

    # -- connections ---------------------------------------------------------------
    def _open(self, busy_ms: int) -> sqlite3.Connection:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        conn = sqlite3.connect(self.path, timeout=busy_ms / 1000, isolation_level=None)
        try:
            conn.execute(f"PRAGMA busy_timeout={int(busy_ms)}")
            conn.execute("PRAGMA journal_mode=WAL")
            # NORMAL is durable across application crashes in WAL mode, and avoids an
            # fsync per request; a power cut may lose the last few rows, never corrupt.
            conn.execute("PRAGMA synchronous=NORMAL")
            self._migrate(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    @contextmanager
    def _connect(self, busy_ms: int) -> Iterator[sqlite3.Connection]:
        conn = self._open(busy_ms)
        try:
            yield conn
        finally:
            conn.close()

    def _writer(self) -> sqlite3.Connection:
        """This thread's cached connection, reopened if the file was replaced (repair)."""
        cache: dict[str, tuple[sqlite3.Connection, tuple[int, int]]] = getattr(_local, "conns", {})
        _local.conns = cache
        key = str(self.path)
        entry = cache.get(key)
        try:
            st = os.stat(self.path)
            ident: tuple[int, int] | None = (st.st_dev, st.st_ino)
        except FileNotFoundError:
            ident = None
        if entry is not None and entry[1] == ident:
            return entry[0]
        self._forget_writer()
        conn = self._open(WRITE_BUSY_MS)
        st = os.stat(self.path)
        cache[key] = (conn, (st.st_dev, st.st_ino))
        return conn

    def _forget_writer(self) -> None:
        cache = getattr(_local, "conns", {})
        entry = cache.pop(str(self.path), None)
        if entry is not None:
            with contextlib.suppress(sqlite3.Error):
                entry[0].close()

    @staticmethod
    def _migrate(conn: sqlite3.Connection) -> None:
        apply_migrations(conn, MIGRATIONS)

    # -- writing -------------------------------------------------------------------
    def write(self, row: dict[str, Any]) -> WriteOutcome:
        """Insert ``row``; on any database trouble append it to the spool instead.

        Raises only if the spool cannot be written either (the caller logs and drops).
        """
        try:
            conn = self._writer()
            _insert(conn, [row])
            self._drain_into(conn, blocking=False)
            return WriteOutcome(True)
        except (sqlite3.Error, OSError) as exc:
            # A connection that failed once is not trusted again (the file may be damaged).
            self._forget_writer()
            self._append_spool(row)
            return WriteOutcome(False, _describe(exc))

    def _append_spool(self, row: dict[str, Any]) -> None:
        line = (json.dumps(row, separators=(",", ":"), default=str) + "\n").encode()
        self.spool.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.spool, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        try:
            # One write(2) under the lock: a drainer never sees half a line. No fsync,
            # like the database itself (synchronous=NORMAL): a crashed process loses
            # nothing, only a power cut could.
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, line)
        finally:
            os.close(fd)  # closing releases the flock

    def pending(self) -> int:
        """How many rows wait in the spool (0 when there is none)."""
        try:
            with self.spool.open("rb") as f:
                return sum(1 for line in f if line.strip())
        except FileNotFoundError:
            return 0

    def _drain_into(self, conn: sqlite3.Connection, blocking: bool) -> int:
        """Move spooled rows into the database; the spool is emptied only after commit."""
        try:
            if self.spool.stat().st_size == 0:
                return 0
        except FileNotFoundError:
            return 0
        with self.spool.open("r+b") as f:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | (0 if blocking else fcntl.LOCK_NB))
            except BlockingIOError:
                return 0  # someone else is appending or draining; they will finish it
            rows = list(_read_spool(f))
            if rows:
                # Writers queue behind this lock: keep the wait for the database short,
                # even inside a report that is otherwise willing to wait longer.
                previous = conn.execute("PRAGMA busy_timeout").fetchone()[0]
                conn.execute(f"PRAGMA busy_timeout={WRITE_BUSY_MS}")
                try:
                    _insert(conn, rows)
                finally:
                    conn.execute(f"PRAGMA busy_timeout={int(previous)}")
            f.seek(0)
            f.truncate()
            f.flush()
            os.fsync(f.fileno())
        return len(rows)

    # -- reading -------------------------------------------------------------------
    def rows(
        self,
        since: float | None = None,
        until: float | None = None,
        model: str | None = None,
        app: str | None = None,
    ) -> list[dict[str, Any]]:
        """Rows matching the filters, oldest first; spooled rows are drained in first.

        A corrupted, locked or unreadable database raises LedgerError with the repair
        command in its hint.
        """
        where: list[str] = []
        args: list[Any] = []
        for clause, value in (
            ("ts >= ?", since),
            ("ts < ?", until),
            ("model_id = ?", model),
            ("app = ?", app),
        ):
            if value is not None:
                where.append(clause)
                args.append(value)
        sql = f"SELECT {', '.join(COLUMNS)} FROM requests"
        if where:
            sql += " WHERE " + " AND ".join(where)
        sql += " ORDER BY ts, id"
        try:
            with self._connect(READ_BUSY_MS) as conn:
                self._drain_into(conn, blocking=True)
                fetched = conn.execute(sql, args).fetchall()
        except (sqlite3.Error, OSError) as exc:
            raise self._error(exc) from exc
        return [_row_dict(r) for r in fetched]

    def last_used_by_sha(self) -> dict[str, float]:
        """The latest request time per blob sha256, for cleanup; never raises.

        Rows still queued in the spool count too: a request made while the database
        was locked or damaged is still a use of that model.
        """
        latest: dict[str, float] = {}
        if self.path.exists():
            try:
                with self._connect(READ_BUSY_MS) as conn:
                    found = conn.execute(
                        "SELECT sha256, max(ts) FROM requests"
                        " WHERE sha256 IS NOT NULL GROUP BY sha256"
                    ).fetchall()
                latest = {str(sha): float(ts) for sha, ts in found}
            except (sqlite3.Error, OSError):
                latest = {}
        try:
            with self.spool.open("rb") as f:
                for row in _read_spool(f):
                    sha, ts = row.get("sha256"), row.get("ts")
                    if isinstance(sha, str) and isinstance(ts, int | float):
                        latest[sha] = max(latest.get(sha, 0.0), float(ts))
        except OSError:
            pass
        return latest

    def _error(self, exc: BaseException) -> LedgerError:
        why = _describe(exc)
        if why.startswith("locked"):
            return LedgerError(
                f"usage database {self.path} is {why}",
                "another process holds it; retry in a moment (requests keep working and are "
                "queued in " + self.spool.name + ")",
            )
        if why.startswith("corrupted"):
            return LedgerError(
                f"cannot read the usage database {self.path}: {why}",
                "repair it with: locara usage --repair  (keeps every readable row and "
                "moves the damaged file aside)",
            )
        return LedgerError(
            f"cannot open the usage database {self.path}: {why}",
            f"check that {self.path.parent} is writable and has free space "
            "(or point LOCARA_HOME elsewhere)",
        )

    # -- repair --------------------------------------------------------------------
    def repair(self) -> tuple[Path | None, int, int]:
        """Move a damaged database aside, rebuild it from its readable rows and the spool.

        Returns (where the old file went, rows salvaged from it, rows taken from the
        spool). A healthy database is left in place and only the spool is drained.
        """
        try:
            with self._connect(READ_BUSY_MS) as conn:
                healthy = conn.execute("PRAGMA quick_check").fetchall() == [("ok",)]
                if healthy:
                    return None, 0, self._drain_into(conn, blocking=True)
        except sqlite3.OperationalError as exc:
            # Locked, unreadable, out of disk: not damage. Never move such a file aside.
            raise self._error(exc) from exc
        except sqlite3.DatabaseError:
            pass  # "file is not a database", "malformed": rebuild below
        salvaged = _salvage(self.path)
        aside = self.path.with_name(f"{self.path.name}.corrupt-{time.strftime('%Y%m%dT%H%M%S')}")
        os.replace(self.path, aside)
        for suffix in ("-wal", "-shm"):
            side = self.path.with_name(self.path.name + suffix)
            if side.exists():
                os.replace(side, aside.with_name(aside.name + suffix))
        with self._connect(READ_BUSY_MS) as conn:
            if salvaged:
                _insert(conn, salvaged)
            drained = self._drain_into(conn, blocking=True)
        return aside, len(salvaged), drained


def _insert(conn: sqlite3.Connection, rows: Sequence[dict[str, Any]]) -> None:
    placeholders = ",".join("?" for _ in COLUMNS)
    values = []
    for row in rows:
        extra = row.get("extra")
        values.append(
            tuple(
                json.dumps(extra) if c == "extra" and extra is not None else row.get(c)
                for c in COLUMNS
            )
        )
    conn.execute("BEGIN IMMEDIATE")
    try:
        conn.executemany(
            f"INSERT OR IGNORE INTO requests({', '.join(COLUMNS)}) VALUES ({placeholders})",
            values,
        )
        conn.execute("COMMIT")
    except BaseException:
        with contextlib.suppress(sqlite3.Error):
            conn.execute("ROLLBACK")
        raise


def _read_spool(f: IO[bytes]) -> Iterator[dict[str, Any]]:
    f.seek(0)
    for raw in f:
        try:
            row = json.loads(raw)
        except ValueError:
            continue  # a torn last line from a crash mid-append: nothing to recover
        if isinstance(row, dict) and row.get("id") and row.get("model_id"):
            yield row


def _row_dict(r: Sequence[Any]) -> dict[str, Any]:
    row = dict(zip(COLUMNS, r, strict=True))
    try:
        row["extra"] = json.loads(row["extra"]) if row["extra"] else {}
    except ValueError:
        row["extra"] = {}
    return row


def _salvage(path: Path) -> list[dict[str, Any]]:
    """Whatever rows a damaged database still gives up, read one at a time."""
    out: list[dict[str, Any]] = []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=1)
    except sqlite3.Error:
        return out
    try:
        # A database from before a migration lacks its columns: read the ones it has.
        have = {c[1] for c in conn.execute("PRAGMA table_info(requests)")}
        cur = conn.execute(
            f"SELECT {', '.join(c if c in have else 'NULL' for c in COLUMNS)} FROM requests"
        )
        while True:
            try:
                r = cur.fetchone()
            except sqlite3.Error:
                break
            if r is None:
                break
            out.append(_row_dict(r))
    except sqlite3.Error:
        pass
    finally:
        conn.close()
    return out
