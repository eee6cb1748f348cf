"""The requests the Ollama CLI sends for `list`, `ps`, `show` and `run`, replayed as it sends them.

The `ollama` CLI (a Go binary) cannot be installed from a package registry here, so its
client code's requests are replayed: every command first checks the server with
``HEAD /``; `run` looks the model up with ``/api/show``, preloads it with an empty
``/api/generate`` and then streams ``/api/chat`` as NDJSON. The Go client parses times
as RFC 3339 and sizes as integers; the checks below are what it would choke on.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from server_harness import RunningServer, clone_home, running_server

MODEL = "smollm2-135m-instruct"
GO_CLIENT = {"User-Agent": "ollama/0.13.0 (amd64 linux) Go/go1.24.0", "Accept": "application/json"}


@pytest.fixture(scope="module")
def server(shared_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = clone_home(shared_home, tmp_path_factory.mktemp("ollama-cli") / "home")
    with running_server(home) as s:
        yield s


def rfc3339(value: str) -> dt.datetime:
    return dt.datetime.fromisoformat(value.replace("Z", "+00:00"))


def heartbeat(server: RunningServer) -> None:
    r = httpx.head(f"{server.url}/", headers=GO_CLIENT)
    assert r.status_code == 200


def test_ollama_list(server: RunningServer) -> None:
    heartbeat(server)
    r = httpx.get(f"{server.url}/api/tags", headers=GO_CLIENT)
    assert r.status_code == 200
    (m,) = [m for m in r.json()["models"] if m["name"] == f"{MODEL}:latest"]
    assert isinstance(m["size"], int) and m["size"] > 0
    assert len(m["digest"]) == 64 and rfc3339(m["modified_at"])
    assert m["details"]["family"] == "llama" and m["details"]["quantization_level"]


def test_ollama_show(server: RunningServer) -> None:
    heartbeat(server)
    for key in ("model", "name"):  # newer CLIs send "model", older ones "name"
        r = httpx.post(f"{server.url}/api/show", json={key: MODEL}, headers=GO_CLIENT)
        assert r.status_code == 200, r.text
        body = r.json()
        assert "completion" in body["capabilities"]
        assert body["details"]["family"] == "llama" and body["template"]
        assert body["model_info"]["general.architecture"] == "llama"
    missing = httpx.post(f"{server.url}/api/show", json={"model": "nope"}, headers=GO_CLIENT)
    assert missing.status_code == 404 and isinstance(missing.json()["error"], str)


def test_ollama_run_then_ps(server: RunningServer) -> None:
    heartbeat(server)
    assert httpx.post(f"{server.url}/api/show", json={"model": MODEL}).status_code == 200
    # `ollama run` preloads the model with an empty generate before the first prompt.
    r = httpx.post(f"{server.url}/api/generate", json={"model": MODEL}, headers=GO_CLIENT)
    assert r.status_code == 200 and r.json()["done"] is True
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": "Name the capital city of France."}],
        "options": {"temperature": 0},
    }
    lines = []
    with httpx.stream(
        "POST", f"{server.url}/api/chat", json=body, headers=GO_CLIENT, timeout=120
    ) as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("application/x-ndjson")
        lines = [json.loads(line) for line in r.iter_lines() if line]
    assert lines[-1]["done"] is True and lines[-1]["eval_count"] > 0
    assert "Paris" in "".join(x["message"]["content"] for x in lines)
    heartbeat(server)
    ps = httpx.get(f"{server.url}/api/ps", headers=GO_CLIENT).json()["models"]
    (m,) = [m for m in ps if m["name"] == f"{MODEL}:latest"]
    assert isinstance(m["size"], int) and isinstance(m["size_vram"], int)
    assert rfc3339(m["expires_at"]) and m["context_length"] > 0
