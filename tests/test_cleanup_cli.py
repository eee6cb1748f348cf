"""``locara cleanup`` around real stored models, a real app pin, the ledger and leases."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.engine.loader import resolve
from locara.ledger import UsageRecord, record_usage
from locara.settings import Settings
from locara.store.blobs import BlobStore

PIN = f"{DEFAULT_MODEL}@sha256:{DEFAULT_SHA}"
DAY = 86400


@pytest.fixture
def stored_home(home: Path) -> Path:
    resolve(Settings.from_env(), None)
    return home


def _cleanup(home: Path, *args: str) -> dict[str, Any]:
    res = run_cli("cleanup", "--json", *args, home=home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


def _age(home: Path, days: float) -> None:
    """Say the default model was last used ``days`` ago, in the store's own records."""
    BlobStore(Settings.from_env()).index.touch(DEFAULT_SHA, time.time() - days * DAY)


def test_listing_active_then_stale(stored_home: Path) -> None:
    data = _cleanup(stored_home)
    (m,) = data["models"]
    assert (m["model"], m["quant"], m["sha256"]) == (DEFAULT_MODEL, "Q4_1", DEFAULT_SHA)
    assert m["size_bytes"] == DEFAULT_SIZE
    assert m["status"] == "active" and m["last_used"] is None and m["stored_at"]
    assert data["total_bytes"] == DEFAULT_SIZE and data["reclaimable_bytes"] == 0
    assert data["threshold_days"] == 30

    _age(stored_home, 45)
    data = _cleanup(stored_home)
    (m,) = data["models"]
    assert m["status"] == "stale" and m["reclaimable"] is True
    assert 44 < m["idle_days"] < 46
    assert data["reclaimable_bytes"] == DEFAULT_SIZE
    assert _cleanup(stored_home, "--threshold", "60")["models"][0]["status"] == "active"

    res = run_cli("cleanup", home=stored_home)
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()[:2]
    assert header.split() == ["MODEL", "SIZE", "LAST", "USED", "STATUS"]
    assert row.startswith(f"{DEFAULT_MODEL}:Q4_1") and "45d ago" in row and "stale (>30d)" in row
    assert "Total: 98.4 MB (98.4 MB stale)" in res.stdout
    assert "locara cleanup --remove-stale" in res.stdout


def test_ledger_use_keeps_a_model_active(stored_home: Path) -> None:
    _age(stored_home, 45)
    # A request through a surface that does not touch the store still counts as use.
    record_usage(
        Settings.from_env(),
        UsageRecord(DEFAULT_MODEL, DEFAULT_SHA, "llama_cpp", "notes", "openai", 5, 5),
    )
    (m,) = _cleanup(stored_home)["models"]
    assert m["status"] == "active" and m["idle_days"] < 1


def test_use_queued_while_the_ledger_was_broken_still_counts(stored_home: Path) -> None:
    _age(stored_home, 45)
    (stored_home / "usage.db").write_bytes(b"not a database" * 100)  # damaged: rows spool
    record_usage(
        Settings.from_env(),
        UsageRecord(DEFAULT_MODEL, DEFAULT_SHA, "llama_cpp", "cli", "cli", 5, 5),
    )
    assert (stored_home / "usage-pending.jsonl").read_text().count("\n") == 1
    (m,) = _cleanup(stored_home)["models"]
    assert m["status"] == "active" and m["idle_days"] < 1


def test_remove_stale_frees_space(stored_home: Path) -> None:
    _age(stored_home, 45)
    data = _cleanup(stored_home, "--remove-stale")
    assert [r["sha256"] for r in data["removed"]] == [DEFAULT_SHA]
    assert data["freed_bytes"] == DEFAULT_SIZE
    assert data["models"] == [] and data["total_bytes"] == 0
    assert BlobStore(Settings.from_env()).find(DEFAULT_SHA) is None
    assert not (stored_home / "models" / DEFAULT_SHA).exists()


def test_app_pin_is_never_removed_and_named(stored_home: Path, tmp_path: Path) -> None:
    app = tmp_path / "notes"
    app.mkdir()
    (app / "locara.app.json").write_text(
        json.dumps({"id": "notes", "name": "Notes", "version": "1.0.0", "models": [PIN]})
    )
    inst = run_cli("app", "install", str(app), home=stored_home)
    assert inst.returncode == 0, inst.stderr
    _age(stored_home, 400)  # unused for over a year: pinned wins over stale

    data = _cleanup(stored_home)
    (m,) = data["models"]
    assert m["status"] == "pinned" and m["pinned_by"] == ["notes"] and m["holders"] == ["app:notes"]
    assert m["reclaimable"] is False and data["reclaimable_bytes"] == 0

    table = run_cli("cleanup", home=stored_home)
    assert "pinned by app notes" in table.stdout

    stale = _cleanup(stored_home, "--remove-stale", "--threshold", "0")
    assert stale["removed"] == [] and stale["freed_bytes"] == 0

    for ref in (DEFAULT_MODEL, f"{DEFAULT_MODEL}:Q4_1", PIN):
        res = run_cli("cleanup", "--remove", ref, home=stored_home)
        assert res.returncode == 1
        assert f"{ref} is pinned by app notes; nothing was removed" in res.stderr
        assert "hint: uninstall the app first: locara app uninstall notes" in res.stderr
    store = BlobStore(Settings.from_env())
    assert store.find(DEFAULT_SHA) is not None
    linked = stored_home / "apps" / "notes" / "models"
    assert any(linked.iterdir())  # the app's model is still there

    # Once the app is gone, the same removal goes through the store's rules.
    out = run_cli("app", "uninstall", "notes", home=stored_home)
    assert out.returncode == 0, out.stderr
    data = _cleanup(stored_home, "--remove", DEFAULT_MODEL)
    assert [r["sha256"] for r in data["removed"]] == [DEFAULT_SHA]
    assert data["models"] == []
    assert BlobStore(Settings.from_env()).find(DEFAULT_SHA) is None


def test_a_model_in_use_is_not_removed(stored_home: Path) -> None:
    store = BlobStore(Settings.from_env())
    with store.lease(DEFAULT_SHA):  # what a loaded model or an install holds
        (m,) = _cleanup(stored_home)["models"]
        assert m["in_use"] is True
        res = run_cli("cleanup", "--remove", DEFAULT_MODEL, home=stored_home)
        assert res.returncode == 1
        assert "in use by a running process" in res.stderr and "hint:" in res.stderr
        _age(stored_home, 45)
        data = _cleanup(stored_home, "--remove-stale")
        assert data["removed"] == [] and [s["sha256"] for s in data["skipped"]] == [DEFAULT_SHA]
    assert store.find(DEFAULT_SHA) is not None


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (
            ("--remove", f"{DEFAULT_MODEL}:Q8_0"),
            f"{DEFAULT_MODEL}:Q8_0 is not stored",
            "locara cleanup",
        ),
        (("--remove", "never-heard-of-it"), "never-heard-of-it is not stored", "locara cleanup"),
        (("--remove", "../../etc"), "invalid model reference", "use MODEL"),
        (("--threshold", "-1"), "invalid --threshold -1.0", "--threshold 30"),
        (("--threshold", "nan"), "invalid --threshold nan", "--threshold 30"),
    ],
)
def test_bad_input(shared_home: Path, args: tuple[str, ...], message: str, hint: str) -> None:
    # Every one is refused before anything is removed, so the shared home is safe.
    res = run_cli("cleanup", *args, home=shared_home)
    assert res.returncode == 1
    assert message in res.stderr
    assert "hint:" in res.stderr and hint in res.stderr
    assert BlobStore(Settings.from_env({"LOCARA_HOME": str(shared_home)})).find(DEFAULT_SHA)


def test_empty_store(home: Path) -> None:
    res = run_cli("cleanup", home=home)
    assert res.returncode == 0 and "no models stored" in res.stdout
    assert _cleanup(home)["models"] == []
