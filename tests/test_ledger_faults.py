"""A corrupted or locked usage.db never fails a request; ``locara usage`` says how to repair.

The corruption is real bytes on disk and the lock is a real SQLite write lock held by
another connection: no fakes.
"""

from __future__ import annotations

import json
import logging
import sqlite3
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, run_cli
from locara.engine.loader import resolve
from locara.ledger import UsageRecord, record_usage
from locara.ledger.db import close_cached_connections
from locara.settings import Settings

# OpenMP threads that spin while waiting for each other starve on 2 cores shared with
# other jobs (a 5-token answer took 13.5 s spinning, 5 s passive); the model path is the same.
QUIET_OMP = {"OMP_WAIT_POLICY": "passive"}


@pytest.fixture
def stored_home(home: Path) -> Path:
    resolve(Settings.from_env(), None)
    return home


def _rec(**kw: object) -> UsageRecord:
    return UsageRecord(DEFAULT_MODEL, DEFAULT_SHA, "llama_cpp", "cli", "cli", 10, 5, **kw)  # type: ignore[arg-type]


@pytest.mark.slow
def test_corrupted_db_request_succeeds_then_repair_keeps_rows(stored_home: Path) -> None:
    home = stored_home
    cfg = Settings.from_env()
    record_usage(cfg, _rec())  # one good row before the damage
    close_cached_connections()  # as when that writer's process ends: WAL checkpointed
    db = home / "usage.db"
    # Overwrite the header and first page: "file is not a database".
    with db.open("r+b") as f:
        f.write(b"this is not sqlite" * 300)

    run = run_cli("run", "Say hi.", "--max-tokens", "4", "--json", home=home, env=QUIET_OMP)
    assert run.returncode == 0, run.stderr
    assert json.loads(run.stdout)["usage"]["completion_tokens"] >= 1
    assert f"warning: usage database {db} is corrupted" in run.stderr
    assert "locara usage --repair" in run.stderr

    usage = run_cli("usage", home=home)
    assert usage.returncode == 1
    assert "cannot read the usage database" in usage.stderr
    assert "hint: repair it with: locara usage --repair" in usage.stderr

    repair = run_cli("usage", "--repair", home=home)
    assert repair.returncode == 0, repair.stderr
    assert "moved the damaged database to" in repair.stdout
    assert list(home.glob("usage.db.corrupt-*"))

    after = run_cli("usage", "--json", home=home)
    assert after.returncode == 0, after.stderr
    report = json.loads(after.stdout)
    # The request made while the file was corrupted was queued, not lost.
    assert report["totals"]["requests"] >= 1
    assert report["models"][0]["apps"] == ["cli"]

    again = run_cli("usage", "--repair", home=home)
    assert again.returncode == 0 and "is healthy" in again.stdout


@pytest.mark.slow
def test_locked_db_request_succeeds_and_row_arrives_after(stored_home: Path) -> None:
    home = stored_home
    cfg = Settings.from_env()
    record_usage(cfg, _rec())  # creates the database (WAL) with one row
    holder = sqlite3.connect(home / "usage.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # holds the write lock, as a stuck writer would
        holder.execute(
            "INSERT INTO requests(id, ts, app, surface, model_id, backend, status)"
            " VALUES ('held', 0, 'x', 'cli', 'x', 'llama_cpp', 'ok')"
        )
        run = run_cli("run", "Say hi.", "--max-tokens", "4", "--json", home=home, env=QUIET_OMP)
        assert run.returncode == 0, run.stderr
        assert "is locked" in run.stderr and "queued in usage-pending.jsonl" in run.stderr
        assert (home / "usage-pending.jsonl").read_text().count("\n") == 1
    finally:
        holder.execute("ROLLBACK")
        holder.close()

    res = run_cli("usage", "--json", home=home)
    assert res.returncode == 0, res.stderr
    report = json.loads(res.stdout)
    assert report["totals"]["requests"] == 2
    assert (home / "usage-pending.jsonl").read_text() == ""


def test_record_usage_never_raises_and_warns_once(
    home: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cfg = Settings.from_env()
    home.mkdir(parents=True)
    (home / "usage.db").write_bytes(b"\x00garbage" * 1000)
    with caplog.at_level(logging.WARNING, logger="locara.usage"):
        for _ in range(3):
            record_usage(cfg, _rec())
    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # a broken ledger warns once per process, not per request
    assert "corrupted" in warnings[0].getMessage()
    spooled = (home / "usage-pending.jsonl").read_text().splitlines()
    assert len(spooled) == 3
    assert {json.loads(line)["model_id"] for line in spooled} == {DEFAULT_MODEL}


def test_unwritable_home_still_does_not_raise(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    # LOCARA_HOME is a file: neither the database nor the spool can be created.
    blocker = tmp_path / "home-is-a-file"
    blocker.write_text("")
    cfg = Settings.from_env({"LOCARA_HOME": str(blocker)})
    with caplog.at_level(logging.WARNING, logger="locara.usage"):
        record_usage(cfg, _rec())
    assert any("could not record usage" in r.getMessage() for r in caplog.records)


def test_torn_spool_line_is_skipped_and_replay_is_idempotent(home: Path) -> None:
    from locara.ledger.db import UsageDB

    cfg = Settings.from_env()
    record_usage(cfg, _rec())
    db = UsageDB(cfg.usage_db_path)
    row = db.rows()[0]
    # The same row again (a crash between insert and truncate), plus a torn last line.
    db.spool.write_text(json.dumps(row) + "\n" + '{"id": "abc", "model_')
    rows = db.rows()
    assert len(rows) == 1
    assert db.pending() == 0


@pytest.mark.slow
def test_repair_never_moves_a_locked_database_aside(home: Path) -> None:
    cfg = Settings.from_env()
    record_usage(cfg, _rec())
    close_cached_connections()  # an EXCLUSIVE lock needs every other connection gone
    holder = sqlite3.connect(home / "usage.db", isolation_level=None)
    try:
        holder.execute("PRAGMA locking_mode=EXCLUSIVE")
        holder.execute("BEGIN EXCLUSIVE")  # not even readers get in
        res = run_cli("usage", "--repair", home=home, env={})
        assert res.returncode == 1
        assert "is locked" in res.stderr and "retry in a moment" in res.stderr
        assert not list(home.glob("usage.db.corrupt-*"))
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    res = run_cli("usage", "--json", home=home)
    assert json.loads(res.stdout)["totals"]["requests"] == 1
