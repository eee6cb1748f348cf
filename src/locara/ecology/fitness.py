"""Fitness vectors: what a candidate (a base, plus adapters) scored, measured on what.

A FitnessVector is bound to content, not names: the base artifact's SHA-256, each
adapter's SHA-256 and scale, the suite file's SHA-256, the build and the device. Field
names follow lm-evaluation-harness (``acc``, ``acc_stderr``) and llama-bench
(``avg_ts``, ``model_size``, ``build_commit``, ``cpu_info``) where they overlap.
Vectors live in ``$LOCARA_HOME/fitness.db`` (numbered migrations), one row per run.
"""

from __future__ import annotations

import json
import math
import resource
import sqlite3
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from locara.errors import LedgerError
from locara.settings import Settings
from locara.sqlite_migrations import apply_migrations

_MIGRATIONS: tuple[str, ...] = (
    """
    CREATE TABLE runs (
        id            INTEGER PRIMARY KEY AUTOINCREMENT,
        created_at    TEXT NOT NULL,
        candidate     TEXT NOT NULL,     -- "model+adapter:scale+..."
        model_id      TEXT NOT NULL,
        base_sha256   TEXT NOT NULL,
        adapters      TEXT NOT NULL,     -- JSON [{id, sha256, scale}]
        suite         TEXT NOT NULL,
        suite_sha256  TEXT NOT NULL,
        acc           REAL NOT NULL,
        vector        TEXT NOT NULL      -- the whole FitnessVector as JSON
    );
    CREATE INDEX runs_candidate ON runs(candidate, suite_sha256);
    """,
)
Z95 = 1.959963984540054


def wilson(successes: int, n: int, z: float = Z95) -> tuple[float, float]:
    """The Wilson score interval for a proportion (sane at 0/n and n/n, unlike Wald's)."""
    if n == 0:
        return (0.0, 1.0)
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return (max(0.0, centre - half), min(1.0, centre + half))


def peak_rss_bytes() -> int:
    """This process's peak resident set (ru_maxrss: KiB on Linux, bytes on macOS)."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak if sys.platform == "darwin" else peak * 1024)


@dataclass(frozen=True)
class ItemResult:
    id: str
    passed: bool
    answer: str
    ttft_s: float
    n_gen: int
    gen_s: float


@dataclass(frozen=True)
class FitnessVector:
    candidate: str
    model_id: str
    base_sha256: str
    adapters: list[dict[str, Any]]  # [{id, sha256, scale}]
    suite: str
    suite_sha256: str
    utility: dict[str, Any]  # acc, acc_stderr, ci95, n, passed
    latency: dict[str, Any]  # ttft_s (median), avg_ts (generation tok/s)
    memory: dict[str, Any]  # peak_rss_bytes
    privacy: dict[str, Any]  # local_only, escalations
    size: dict[str, Any]  # model_size (bytes), adapters_size
    build: dict[str, Any]
    device: dict[str, Any]
    results: list[dict[str, Any]] = field(default_factory=list)
    created_at: str = ""
    run_id: int | None = None

    @property
    def acc(self) -> float:
        return float(self.utility["acc"])

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def summarize(items: list[ItemResult]) -> tuple[dict[str, Any], dict[str, Any]]:
    """(utility, latency) for a run's item results."""
    n = len(items)
    passed = sum(r.passed for r in items)
    acc = passed / n if n else 0.0
    lo, hi = wilson(passed, n)
    ttfts = sorted(r.ttft_s for r in items)
    gen_tokens = sum(r.n_gen for r in items)
    gen_s = sum(r.gen_s for r in items)
    utility = {
        "metric": "acc",
        "acc": acc,
        "acc_stderr": math.sqrt(acc * (1 - acc) / (n - 1)) if n > 1 else 0.0,
        "ci95": [lo, hi],
        "ci_method": "wilson",
        "n": n,
        "passed": passed,
    }
    latency = {
        "ttft_s": ttfts[n // 2] if n else None,
        "avg_ts": gen_tokens / gen_s if gen_s > 0 else None,
        "n_gen": gen_tokens,
    }
    return utility, latency


class FitnessDB:
    """``fitness.db``: one row per evaluation run; short connections, WAL."""

    def __init__(self, settings: Settings) -> None:
        self.path = settings.home / "fitness.db"

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            conn = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        except (OSError, sqlite3.Error) as exc:
            raise LedgerError(
                f"cannot open {self.path}: {exc}", "check that LOCARA_HOME is writable"
            ) from exc
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            apply_migrations(conn, _MIGRATIONS)
            yield conn
        except sqlite3.Error as exc:
            raise LedgerError(
                f"fitness database error in {self.path}: {exc}",
                f"if it is corrupted, move {self.path} aside (results are re-made by locara eval)",
            ) from exc
        finally:
            conn.close()

    def record(self, vec: FitnessVector) -> FitnessVector:
        created = vec.created_at or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
        with self._connect() as c:
            cur = c.execute(
                "INSERT INTO runs(created_at, candidate, model_id, base_sha256, adapters, suite,"
                " suite_sha256, acc, vector) VALUES (?,?,?,?,?,?,?,?,?)",
                (
                    created,
                    vec.candidate,
                    vec.model_id,
                    vec.base_sha256,
                    json.dumps(vec.adapters),
                    vec.suite,
                    vec.suite_sha256,
                    vec.acc,
                    json.dumps({**vec.to_json(), "created_at": created}),
                ),
            )
            run_id = cur.lastrowid
        return FitnessVector(**{**vec.to_json(), "created_at": created, "run_id": run_id})

    def latest(self, suite_sha256: str | None = None) -> list[FitnessVector]:
        """The newest run of each candidate (on one suite, if given), best first."""
        query = (
            "SELECT id, vector FROM runs WHERE id IN (SELECT max(id) FROM runs"
            + (" WHERE suite_sha256=?" if suite_sha256 else "")
            + " GROUP BY candidate, base_sha256, adapters, suite_sha256) ORDER BY acc DESC, id"
        )
        with self._connect() as c:
            rows = c.execute(query, (suite_sha256,) if suite_sha256 else ()).fetchall()
        return [FitnessVector(**{**json.loads(v), "run_id": i}) for i, v in rows]

    def for_base(self, sha256: str) -> list[FitnessVector]:
        """Every candidate's newest run whose base artifact is ``sha256``."""
        return [v for v in self.latest() if v.base_sha256 == sha256]
