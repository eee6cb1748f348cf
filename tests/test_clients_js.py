"""The official JavaScript clients, unchanged, against the real server.

``tests/js/clients.mjs`` drives openai (Node) and ollama (Node) at the versions pinned in
``tests/js/package-lock.json`` (installed by scripts/install.sh with ``npm ci``) against a
server on loopback with a fresh LOCARA_HOME, and prints one JSON line per check; each test
here asserts on one of them. README "Works with" lists what they cover.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from server_harness import running_server

JS = Path(__file__).parent / "js"
MODEL = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
pytestmark = pytest.mark.skipif(
    shutil.which("node") is None or not (JS / "node_modules" / "openai").is_dir(),
    reason="needs Node.js and tests/js/node_modules: run scripts/install.sh "
    "(or npm ci --prefix tests/js)",
)


@pytest.fixture(scope="module")
def checks(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, dict[str, Any]]]:
    home = tmp_path_factory.mktemp("js") / "home"
    with running_server(home) as server:
        out = subprocess.run(
            ["node", str(JS / "clients.mjs"), server.url],
            capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
    yield {c["check"]: c for c in map(json.loads, out.stdout.splitlines())}


def ok(checks: dict[str, dict[str, Any]], name: str) -> Any:
    c = checks[name]
    assert c["ok"], c["error"]
    return c["value"]


def test_a_fresh_install_lists_and_retrieves_the_bundled_models(checks: dict[str, Any]) -> None:
    assert {MODEL, EMBED} <= set(ok(checks, "openai.models"))
    assert ok(checks, "openai.retrieve") == MODEL
    assert {f"{MODEL}:latest", f"{EMBED}:latest"} <= set(ok(checks, "ollama.list"))


def test_openai_chat_history_stream_and_completions(checks: dict[str, Any]) -> None:
    chat = ok(checks, "openai.chat")
    assert "Paris" in chat["message"]["content"] and chat["usage"]["completion_tokens"] > 0
    assert ok(checks, "openai.history")  # the returned message went back in unchanged
    stream = ok(checks, "openai.stream")
    assert stream["text"] and stream["usage"]["completion_tokens"] == 8
    assert stream["finish"] == "length"
    assert ok(checks, "openai.completions")


def test_a_client_that_aborts_mid_stream_leaves_the_server_serving(checks: dict[str, Any]) -> None:
    assert ok(checks, "openai.abort")["next"] in ("stop", "length")
    assert ok(checks, "ollama.abort")["next"] in ("stop", "length")


def test_structured_output_follows_the_schema(checks: dict[str, Any]) -> None:
    for name in ("openai.json_schema", "ollama.format"):
        person = ok(checks, name)
        assert isinstance(person["name"], str) and isinstance(person["age"], int), name


def test_embeddings_base64_default_and_truncation(checks: dict[str, Any]) -> None:
    emb = ok(checks, "openai.embeddings")  # openai-node asks for base64 and decodes it
    assert emb["n"] == 2 and emb["dims"] == 384 and abs(emb["norm"] - 1) < 1e-3
    # OpenAI refuses over-long input, Ollama cuts it: each client gets its API's behaviour.
    too_long = checks["openai.embeddings_too_long"]
    assert not too_long["ok"] and too_long["error"].startswith("400")
    assert "512 tokens" in too_long["error"]
    assert ok(checks, "ollama.embed") == {"n": 2, "dims": 384}
    assert ok(checks, "ollama.embeddings") == 384


def test_ollama_show_ps_and_a_missing_model(checks: dict[str, Any]) -> None:
    assert "completion" in ok(checks, "ollama.show")
    assert f"{MODEL}:latest" in ok(checks, "ollama.ps")
    gen = ok(checks, "ollama.generate_stream")
    assert gen["text"] and gen["done"] == {"reason": "length", "eval_count": 8}
    missing = ok(checks, "ollama.missing_model")
    assert missing["status"] == 404 and "no-such-model" in missing["error"]
