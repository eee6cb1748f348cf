"""32 writers at once lose no rows: separate processes racing on a fresh usage.db."""

from __future__ import annotations

import json
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from conftest import run_cli
from locara.ledger import UsageRecord, record_usage
from locara.settings import Settings

WRITER = r"""
import os, sys, time
from pathlib import Path
from locara.ledger import UsageRecord, record_usage
from locara.settings import Settings

home, go, idx, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4])
cfg = Settings.from_env({"LOCARA_HOME": str(home)})
while not go.exists():  # every writer starts at the same moment
    time.sleep(0.005)
for i in range(n):
    record_usage(cfg, UsageRecord(f"model-{idx % 4}", None, "llama_cpp", f"app{idx}", "openai",
                                  prompt_tokens=idx, completion_tokens=i + 1))
"""

N_WRITERS = 32
PER_WRITER = 5


@pytest.mark.slow
def test_32_concurrent_writer_processes_lose_no_rows(home: Path) -> None:
    go = home.parent / "go"
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(home), str(go), str(i), str(PER_WRITER)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for i in range(N_WRITERS)
    ]
    time.sleep(1.0)  # let the interpreters start, then release them together
    go.touch()
    for p in procs:
        _, err = p.communicate(timeout=180)
        assert p.returncode == 0, err

    res = run_cli("usage", "--json", home=home)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    total = N_WRITERS * PER_WRITER
    assert report["totals"]["requests"] == total
    assert report["totals"]["prompt_tokens"] == PER_WRITER * sum(range(N_WRITERS))
    assert report["totals"]["completion_tokens"] == N_WRITERS * sum(range(1, PER_WRITER + 1))
    assert sorted(m["model"] for m in report["models"]) == [f"model-{i}" for i in range(4)]
    assert all(m["requests"] == total // 4 for m in report["models"])

    # Every row is in the database proper now (anything spooled was drained), once.
    with sqlite3.connect(home / "usage.db") as conn:
        n, distinct = conn.execute("SELECT count(*), count(DISTINCT id) FROM requests").fetchone()
    assert n == distinct == total
    spool = home / "usage-pending.jsonl"
    assert not spool.exists() or spool.read_text() == ""


def test_32_threads_in_one_server_process_lose_no_rows(home: Path) -> None:
    cfg = Settings.from_env()
    barrier = threading.Barrier(N_WRITERS)
    errors: list[BaseException] = []

    def write(idx: int) -> None:
        try:
            barrier.wait()
            for i in range(PER_WRITER):
                record_usage(cfg, UsageRecord("m", None, "llama_cpp", "srv", "ollama", idx, i))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(N_WRITERS)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    res = run_cli("usage", "--json", "--app", "srv", home=home)
    assert json.loads(res.stdout)["totals"]["requests"] == N_WRITERS * PER_WRITER
