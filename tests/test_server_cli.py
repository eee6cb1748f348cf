"""``locara start|status|stop`` run the server in the background with a pid file and a log."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import httpx
import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.ledger.db import UsageDB
from server_harness import clone_home, free_port


def _status_after(home: Path, env: dict[str, str], served: int) -> dict[str, Any]:
    """``status --json`` once the ledger holds ``served`` API requests (it is written
    after the response is sent, so the first look may come too early)."""
    for _ in range(100):
        info: dict[str, Any] = json.loads(run_cli("status", "--json", home=home, env=env).stdout)
        if info.get("served", {}).get("requests") == served:
            return info
        time.sleep(0.1)
    raise AssertionError(f"the ledger never showed {served} request(s): {info}")


def test_start_status_stop(shared_home: Path, tmp_path: Path) -> None:
    home = clone_home(shared_home, tmp_path / "home")
    port = str(free_port())
    env = {"LOCARA_PORT": port}
    assert "not running" in run_cli("status", home=home, env=env).stdout
    started = run_cli("start", home=home, env=env)
    try:
        assert started.returncode == 0, started.stderr
        assert f"127.0.0.1:{port}" in started.stdout
        state = json.loads((home / "run" / "server.json").read_text())
        assert (home / "logs" / "server.log").exists()
        again = run_cli("start", home=home, env=env)
        assert "already running" in again.stdout

        r = httpx.post(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            json={"messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2},
            timeout=60,
        )
        assert r.status_code == 200
        info = _status_after(home, env, served=1)
        assert info["running"] and info["pid"] == state["pid"]
        assert info["address"] == f"http://127.0.0.1:{port}"
        assert info["uptime_s"] > 0 and info["requests"] == 1
        (m,) = info["loaded"]
        assert (m["model"], m["quant"], m["sha256"]) == (DEFAULT_MODEL, "Q4_1", DEFAULT_SHA)
        assert m["size_bytes"] == DEFAULT_SIZE
        # The average speed is the ledger's: the one request's generation tok/s (the cloned
        # home's ledger holds other tests' requests from before this server started).
        since = float(state["started_at"])
        (row,) = [
            x for x in UsageDB(home / "usage.db").rows(since=since) if x["surface"] == "openai"
        ]
        assert info["served"]["avg_tps"] == pytest.approx(row["generation_tps"])
        assert info["served"]["completion_tokens"] == r.json()["usage"]["completion_tokens"]
        text = run_cli("status", home=home, env=env).stdout
        assert f"pid {state['pid']}" in text
        assert f"API       http://127.0.0.1:{port}/v1" in text
        assert f"requests  1, avg {row['generation_tps']:.1f} tok/s over 1 generation(s)" in text
        assert f"model     {DEFAULT_MODEL} Q4_1 (98.4 MB;" in text
    finally:
        stopped = run_cli("stop", home=home, env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (home / "run" / "server.json").exists()
    assert "not running" in run_cli("status", home=home, env=env).stdout
    assert "Uvicorn running" in (home / "logs" / "server.log").read_text()
