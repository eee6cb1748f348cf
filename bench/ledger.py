"""What the usage ledger costs a request: ``record_usage`` against the alternatives.

Side by side in one run, on a fresh LOCARA_HOME each:

- ``log only``: what ``record_usage`` did before the ledger (a logging call);
- ``ledger``: ``record_usage`` writing to usage.db (WAL, synchronous=NORMAL, one short
  connection per call, migrations checked, spool drained);
- ``sqlite FULL``: a bare INSERT on a kept-open connection with the default rollback
  journal and synchronous=FULL (an fsync per row), the naive ledger.

Then 32 writer processes at once (each N rows), reporting every writer's worst
single-call latency and whether any row was lost. Prints medians, p99 and ratios.

    .venv/bin/python bench/ledger.py [--calls 300] [--writers 32] [--per-writer 20]
"""

from __future__ import annotations

import argparse
import logging
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from locara.ledger import UsageRecord, record_usage
from locara.settings import Settings

REC = UsageRecord("smollm2-135m-instruct", "b" * 64, "llama_cpp", "cli", "cli", 42, 17, 0.1, 70.0)

WRITER = r"""
import sys, time
from pathlib import Path
from locara.ledger import UsageRecord, record_usage
from locara.settings import Settings
home, go, n = sys.argv[1], Path(sys.argv[2]), int(sys.argv[3])
cfg = Settings.from_env({"LOCARA_HOME": home})
rec = UsageRecord("m", None, "llama_cpp", "app", "openai", 1, 1)
while not go.exists():
    time.sleep(0.002)
times = []
for _ in range(n):
    t = time.perf_counter()
    record_usage(cfg, rec)
    times.append(time.perf_counter() - t)
print(times[0], max(times[1:] or [0.0]), sorted(times)[len(times) // 2])
"""


def timed(fn: object, calls: int) -> list[float]:
    out = []
    for _ in range(calls):
        t = time.perf_counter()
        fn()  # type: ignore[operator]
        out.append(time.perf_counter() - t)
    return out


def summary(name: str, xs: list[float]) -> tuple[str, float]:
    xs = sorted(xs)
    med = statistics.median(xs)
    p99 = xs[min(len(xs) - 1, int(len(xs) * 0.99))]
    print(
        f"  {name:14} median {med * 1e3:8.3f} ms   p99 {p99 * 1e3:8.3f} ms   max {xs[-1] * 1e3:8.3f} ms"
    )
    return name, med


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--calls", type=int, default=300)
    ap.add_argument("--writers", type=int, default=32)
    ap.add_argument("--per-writer", type=int, default=20)
    args = ap.parse_args()
    log = logging.getLogger("bench.null")
    log.addHandler(logging.NullHandler())
    log.propagate = False

    with tempfile.TemporaryDirectory() as tmp:
        cfg = Settings.from_env({"LOCARA_HOME": str(Path(tmp) / "a")})
        naive = sqlite3.connect(Path(tmp) / "naive.db", isolation_level=None)
        naive.execute("PRAGMA synchronous=FULL")
        naive.execute("CREATE TABLE r (ts REAL, model TEXT, tin INT, tout INT)")

        print(f"one request's ledger write ({args.calls} calls each, sequential):")
        results = dict(
            [
                summary("log only", timed(lambda: log.info("usage %s", REC), args.calls)),
                summary("ledger", timed(lambda: record_usage(cfg, REC), args.calls)),
                summary(
                    "sqlite FULL",
                    timed(
                        lambda: naive.execute(
                            "INSERT INTO r VALUES (?,?,?,?)", (time.time(), "m", 42, 17)
                        ),
                        args.calls,
                    ),
                ),
            ]
        )
        base = results["ledger"]
        print(
            f"  ratios: ledger / log only = {base / results['log only']:.0f}x, "
            f"sqlite FULL / ledger = {results['sqlite FULL'] / base:.2f}x"
        )

        home = Path(tmp) / "c"
        go = Path(tmp) / "go"
        procs = [
            subprocess.Popen(
                [sys.executable, "-c", WRITER, str(home), str(go), str(args.per_writer)],
                stdout=subprocess.PIPE,
                text=True,
            )
            for _ in range(args.writers)
        ]
        time.sleep(1.5)
        t0 = time.perf_counter()
        go.touch()
        stats = [tuple(map(float, p.communicate()[0].split())) for p in procs]
        wall = time.perf_counter() - t0
        from locara.ledger.db import UsageDB

        rows = len(UsageDB(home / "usage.db").rows())
        want = args.writers * args.per_writer
        print(
            f"\n{args.writers} writer processes x {args.per_writer} rows at once: {rows}/{want} rows "
            f"({'none lost' if rows == want else 'LOST ROWS'}), {want / wall:.0f} rows/s overall"
        )
        first = sorted(s[0] for s in stats)
        rest = sorted(s[1] for s in stats)
        med = sorted(s[2] for s in stats)
        print(
            "  (32 processes on this machine's cores: wall times include waiting for a CPU)\n"
            f"  first call (opens the db; the first one creates it): median "
            f"{statistics.median(first) * 1e3:.1f} ms, max {first[-1] * 1e3:.1f} ms\n"
            f"  later calls: median of medians {statistics.median(med) * 1e3:.2f} ms, "
            f"worst {rest[-1] * 1e3:.1f} ms"
        )


if __name__ == "__main__":
    main()
