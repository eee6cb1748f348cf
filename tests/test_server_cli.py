"""``locara start|status|stop`` run the server in the background with a pid file and a log."""

from __future__ import annotations

import json
from pathlib import Path

import httpx

from conftest import run_cli
from server_harness import clone_home, free_port


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
        status = run_cli("status", "--json", home=home, env=env)
        info = json.loads(status.stdout)
        assert info["running"] and info["pid"] == state["pid"]
        assert info["address"] == f"http://127.0.0.1:{port}"
        assert info["uptime_s"] > 0 and info["requests"] == 1
        assert [m["model"] for m in info["loaded"]] == ["smollm2-135m-instruct"]
        text = run_cli("status", home=home, env=env).stdout
        assert f"pid {state['pid']}" in text and "smollm2-135m-instruct" in text
    finally:
        stopped = run_cli("stop", home=home, env=env)
    assert stopped.returncode == 0 and "stopped" in stopped.stdout
    assert not (home / "run" / "server.json").exists()
    assert "not running" in run_cli("status", home=home, env=env).stdout
    assert "Uvicorn running" in (home / "logs" / "server.log").read_text()
