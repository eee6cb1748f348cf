"""Drop-in for real clients: the libraries people point at local servers, unchanged.

Each test drives the real server (a subprocess on loopback, a fresh LOCARA_HOME) with the
client named in the README's "Works with" table, at the version pinned in pyproject.toml:
openai, ollama, langchain-openai, langchain-ollama, litellm and simonw's llm (with the
llm-ollama plugin and without plugins). The JavaScript clients: test_clients_js.py. Nothing here touches the
network: langchain-openai's embeddings are built with ``check_embedding_ctx_length=False``
(otherwise they download a tokenizer) and litellm reads its bundled model-cost map.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import ollama
import openai
import pytest

from server_harness import RunningServer, endless_stream, running_server

MODEL = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
CAPITAL = [{"role": "user", "content": "Name the capital city of France."}]
GREEDY = {"temperature": 0, "num_predict": 12}
# An ordinary RAG chunk of about 900 tokens: all-MiniLM-L6-v2's context is 512.
LONG_CHUNK = " ".join(
    f"Paragraph {i}: the river runs through the old town, past the market and the bridge."
    for i in range(50)
)
NOOP_TOOL = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather in a city",
        "parameters": {"type": "object", "properties": {"city": {"type": "string"}}},
    },
}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = tmp_path_factory.mktemp("dropin") / "home"
    with running_server(home) as s:
        yield s


@pytest.fixture(scope="module")
def oai(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


@pytest.fixture(scope="module")
def oll(server: RunningServer) -> ollama.Client:
    return ollama.Client(host=server.url)


@pytest.fixture
def litellm(monkeypatch: pytest.MonkeyPatch) -> Any:
    # Read the bundled model-cost map instead of fetching it (no network in tests).
    monkeypatch.setenv("LITELLM_LOCAL_MODEL_COST_MAP", "True")
    import litellm

    return litellm


def _tags(url: str) -> dict[str, dict[str, Any]]:
    return {m["name"]: m for m in httpx.get(f"{url}/api/tags").json()["models"]}


def _models(url: str) -> dict[str, dict[str, Any]]:
    return {m["id"]: m for m in httpx.get(f"{url}/v1/models").json()["data"]}


# -- 1. a fresh install lists the models it can run ------------------------------------


def test_fresh_install_lists_bundled_models_and_says_they_are_not_stored(
    tmp_path: Path,
) -> None:
    from langchain_ollama import ChatOllama

    with running_server(tmp_path / "fresh") as s:
        models = _models(s.url)
        assert {MODEL, EMBED} <= set(models)
        assert models[MODEL]["stored"] is False and models[EMBED]["stored"] is False
        one = httpx.get(f"{s.url}/v1/models/{MODEL}")
        assert one.status_code == 200 and one.json()["stored"] is False
        client = openai.OpenAI(base_url=f"{s.url}/v1", api_key="unused", max_retries=0)
        assert client.models.retrieve(MODEL).id == MODEL

        tags = _tags(s.url)
        assert tags[f"{MODEL}:latest"]["details"]["stored"] is False
        assert tags[f"{MODEL}:latest"]["size"] == 98_362_432

        # langchain-ollama looks the model up in /api/tags before the first call.
        chat = ChatOllama(
            model=MODEL, base_url=s.url, validate_model_on_init=True, temperature=0, num_predict=12
        )
        assert "Paris" in str(chat.invoke("Name the capital city of France.").content)

        # The first use copied it into the store; the listings say so now.
        assert _models(s.url)[MODEL]["stored"] is True
        assert _tags(s.url)[f"{MODEL}:latest"]["details"]["stored"] is True
        assert _tags(s.url)[f"{EMBED}:latest"]["details"]["stored"] is False


def test_unknown_models_are_still_404(oai: openai.OpenAI, server: RunningServer) -> None:
    with pytest.raises(openai.NotFoundError):
        oai.models.retrieve("no-such-model")
    assert httpx.get(f"{server.url}/v1/models/qwen2.5-7b-instruct").status_code == 404
    assert "qwen2.5-7b-instruct" not in _models(server.url)  # a download: not listed


def test_langchain_ollama_validation_finds_the_bundled_embedding_model(
    server: RunningServer,
) -> None:
    from langchain_ollama import OllamaEmbeddings

    emb = OllamaEmbeddings(model=EMBED, base_url=server.url, validate_model_on_init=True)
    assert len(emb.embed_query("hello")) == 384


# -- 2. /api/embed truncates like Ollama; OpenAI's route refuses with a right message -----


def test_ollama_embeddings_of_ordinary_chunks_longer_than_the_context(
    server: RunningServer, oll: ollama.Client
) -> None:
    from langchain_ollama import OllamaEmbeddings

    emb = OllamaEmbeddings(model=EMBED, base_url=server.url)
    long_v, short_v = emb.embed_documents([LONG_CHUNK, "a short chunk"])
    assert len(long_v) == len(short_v) == 384

    r = oll.embed(model=EMBED, input=LONG_CHUNK)
    assert r.prompt_eval_count is not None and 100 < r.prompt_eval_count <= 512
    # What lies beyond the context does not change the vector; what lies within does.
    longer = oll.embed(model=EMBED, input=LONG_CHUNK + " And then it snowed all winter.")
    assert longer.embeddings[0] == pytest.approx(r.embeddings[0], abs=1e-6)
    assert long_v == pytest.approx(list(r.embeddings[0]), abs=1e-6)
    first = oll.embed(model=EMBED, input=LONG_CHUNK[:200]).embeddings[0]
    assert first != pytest.approx(r.embeddings[0], abs=1e-3)

    legacy = oll.embeddings(model=EMBED, prompt=LONG_CHUNK)
    assert legacy.embedding == pytest.approx(list(r.embeddings[0]), abs=1e-6)


def test_truncate_false_is_a_400_about_the_input(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.embed(model=EMBED, input=["fine", LONG_CHUNK], truncate=False)
    assert err.value.status_code == 400
    message = err.value.error
    assert "input 1" in message and "tokens" in message and "answer" not in message


def test_openai_embeddings_refuse_over_long_input_and_say_so(oai: openai.OpenAI) -> None:
    with pytest.raises(openai.BadRequestError) as err:
        oai.embeddings.create(model=EMBED, input=LONG_CHUNK)
    body = err.value.body
    assert isinstance(body, dict)
    assert body["code"] == "context_length_exceeded" and body["param"] == "input"
    assert "input 0" in body["message"] and "answer" not in body["message"]


def test_langchain_openai_embeddings(server: RunningServer) -> None:
    from langchain_openai import OpenAIEmbeddings

    emb = OpenAIEmbeddings(
        model=EMBED,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        check_embedding_ctx_length=False,  # else it downloads a tokenizer from OpenAI
    )
    vectors = emb.embed_documents(["Paris is in France", "a cat sat on the mat"])
    assert [len(v) for v in vectors] == [384, 384]


# -- 3. documented OpenAI message fields are accepted ---------------------------------


def test_a_response_message_goes_back_into_the_history_as_it_came(oai: openai.OpenAI) -> None:
    first = oai.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=12, temperature=0)
    echoed = first.choices[0].message.model_dump()  # refusal, audio, function_call: None ...
    assert {"refusal", "audio", "function_call", "annotations"} <= set(echoed)
    r = oai.chat.completions.create(
        model=MODEL,
        messages=[*CAPITAL, echoed, {"role": "user", "content": "And of Italy?"}],  # type: ignore[list-item]
        max_tokens=12,
        temperature=0,
    )
    assert "Rome" in (r.choices[0].message.content or "")


def test_every_documented_message_field_null_or_empty(server: RunningServer) -> None:
    messages = [
        {"role": "developer", "content": "Answer briefly.", "name": "ops"},
        {
            "role": "user",
            "name": "ann",
            "content": [
                {
                    "type": "text",
                    "text": "Name the capital city of France.",
                    "prompt_cache_breakpoint": {"mode": "explicit"},
                }
            ],
        },
        {
            "role": "assistant",
            "content": "Paris.",
            "name": None,
            "refusal": None,
            "audio": None,
            "function_call": None,
            "tool_calls": [],
            "annotations": [],
            "reasoning_content": "an unknown field in a message is ignored",
        },
        {"role": "tool", "content": "{}", "tool_call_id": "call_1"},
        {"role": "assistant", "content": None, "refusal": "I cannot help with that."},
        {"role": "assistant", "content": [{"type": "refusal", "refusal": "Not that either."}]},
        {"role": "user", "content": "Name the capital city of France."},
    ]
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": messages, "max_tokens": 8, "temperature": 0},
        timeout=120,
    )
    assert r.status_code == 200, r.text


def test_unknown_top_level_fields_stay_strict(server: RunningServer) -> None:
    # A misspelt max_tokens would otherwise be dropped and the answer would run long.
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": MODEL, "messages": CAPITAL, "max_token": 4},
    )
    assert r.status_code == 400 and r.json()["error"]["param"] == "max_token"
    # Documented fields that cannot change a local answer are accepted...
    ok = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={
            "model": MODEL,
            "messages": CAPITAL,
            "max_tokens": 4,
            "prompt_cache_key": "k",
            "safety_identifier": "u1",
            "store": False,
            "metadata": {},
        },
        timeout=120,
    )
    assert ok.status_code == 200, ok.text
    # ...and ones asking for what Locara cannot do are refused by name.
    for field, value in (("web_search_options", {}), ("modalities", ["text", "audio"])):
        bad = httpx.post(
            f"{server.url}/v1/chat/completions",
            json={"model": MODEL, "messages": CAPITAL, field: value},
        )
        assert bad.status_code == 400 and "not supported" in bad.json()["error"]["message"]


def test_langchain_openai_multi_turn(server: RunningServer) -> None:
    from langchain_core.messages import AIMessage, HumanMessage
    from langchain_openai import ChatOpenAI

    chat = ChatOpenAI(
        model=MODEL,
        base_url=f"{server.url}/v1",
        api_key="unused",  # type: ignore[arg-type]
        temperature=0,
        max_tokens=12,  # type: ignore[call-arg]
        max_retries=0,
    )
    first = chat.invoke([HumanMessage("Name the capital city of France.")])
    assert "Paris" in str(first.content)
    history = [HumanMessage("Name the capital city of France."), first]
    assert isinstance(first, AIMessage)
    second = chat.invoke([*history, HumanMessage("And of Italy?")])
    assert "Rome" in str(second.content)
    streamed = "".join(str(c.content) for c in chat.stream("Name the capital city of France."))
    assert streamed == first.content


def test_litellm_openai_provider_round_trip(server: RunningServer, litellm: Any) -> None:
    kw = {"api_base": f"{server.url}/v1", "api_key": "unused", "temperature": 0, "max_tokens": 12}
    r = litellm.completion(model=f"openai/{MODEL}", messages=CAPITAL, **kw)
    reply = r.choices[0].message
    assert "Paris" in reply.content
    again = litellm.completion(
        model=f"openai/{MODEL}",
        messages=[*CAPITAL, reply.model_dump(), {"role": "user", "content": "And of Italy?"}],
        **kw,
    )
    assert "Rome" in again.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in litellm.completion(model=f"openai/{MODEL}", messages=CAPITAL, stream=True, **kw)
    )
    assert streamed == reply.content
    e = litellm.embedding(
        model=f"openai/{EMBED}", input=["hello"], api_base=kw["api_base"], api_key="unused"
    )
    assert len(e.data[0]["embedding"]) == 384


# -- 6. one loaded copy of a chat model serves chat and embeddings -----------------------


def _loaded(url: str, model: str) -> list[dict[str, Any]]:
    ps = httpx.get(f"{url}/api/ps").json()["models"]
    return [m for m in ps if m["name"] == f"{model}:latest"]


def test_a_chat_model_embeds_with_the_copy_that_chats(
    server: RunningServer, oai: openai.OpenAI, oll: ollama.Client
) -> None:
    from locara.engine.loader import load, resolve
    from locara.planner.plan import PlanRequest
    from locara.settings import Settings

    oai.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=2)  # type: ignore[arg-type]
    texts = ["Paris is in France", "a cat sat on the mat in the sun all afternoon"]
    vectors = [d.embedding for d in oai.embeddings.create(model=MODEL, input=texts).data]
    assert oll.embed(model=MODEL, input=texts[1]).embeddings[0] == pytest.approx(
        vectors[1], abs=1e-6
    )  # one input alone or beside another: the same vector
    (entry,) = _loaded(server.url, MODEL)  # one loaded copy, not a chat and an embedding one
    assert entry["locara"]["runtime"] == "llama-server" and not entry["locara"]["embedding"]
    # The vectors the model computes in process (mean-pooled, normalised), as before.
    settings = Settings.from_env({"LOCARA_HOME": str(server.home)})
    plan = PlanRequest(features=frozenset({"embeddings"}))
    handle = load(settings, resolve(settings, MODEL, request=plan))
    try:
        for mine, theirs in zip(handle.model.embed(texts), vectors, strict=True):
            assert sum(a * b for a, b in zip(mine, theirs, strict=True)) > 0.999
    finally:
        handle.close()


def test_an_embedding_does_not_wait_for_the_generations_beside_it(
    server: RunningServer, oai: openai.OpenAI
) -> None:
    """llama-server never batches an embedding with generating slots and batched those
    first: an embedding waited until every generation ended (Locara's patch gives it
    every other batch). Asserted on order, not time: the embedding is answered while
    the generation is still running."""
    with httpx.stream(
        "POST", f"{server.url}/v1/chat/completions", json=endless_stream(MODEL, 600), timeout=300
    ) as stream:
        events = (ln for ln in stream.iter_lines() if ln.startswith("data: {"))
        next(events)
        next(events)  # generating now
        r = oai.embeddings.create(model=MODEL, input="Is the generation still running?")
        assert len(r.data[0].embedding) == 576
        (entry,) = _loaded(server.url, MODEL)
        assert entry["locara"]["in_flight"] == 1, "the generation ended before the embedding"
        last = json.loads(list(events)[-1][len("data: ") :])
    assert last["choices"][0]["finish_reason"] == "length"


# -- 5. Ollama details -------------------------------------------------------------------


def test_root_answers_get_and_head(server: RunningServer) -> None:
    get = httpx.get(f"{server.url}/")
    assert get.status_code == 200 and get.text == "Locara is running"
    assert httpx.head(f"{server.url}/").status_code == 200


def test_tags_carry_the_latest_tag_and_requests_take_both_forms(server: RunningServer) -> None:
    from langchain_ollama import ChatOllama

    tags = _tags(server.url)
    assert f"{MODEL}:latest" in tags and tags[f"{MODEL}:latest"]["model"] == f"{MODEL}:latest"
    for name in (MODEL, f"{MODEL}:latest"):
        chat = ChatOllama(
            model=name,
            base_url=server.url,
            validate_model_on_init=True,
            temperature=0,
            num_predict=12,
        )
        assert "Paris" in str(chat.invoke("Name the capital city of France.").content)


def test_show_reads_family_and_capabilities_from_the_model(oll: ollama.Client) -> None:
    embed = oll.show(EMBED)
    assert embed.details is not None and embed.details.family == "bert"
    assert embed.capabilities == ["embedding"]
    chat = oll.show(f"{MODEL}:latest")
    assert chat.details is not None and chat.details.family == "llama"
    assert chat.details.parameter_size == "134.52M"
    assert chat.capabilities == ["completion"]
    assert chat.modelinfo is not None and chat.modelinfo["general.architecture"] == "llama"


def test_tools_are_refused_after_looking_at_the_model(oll: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as err:
        oll.chat(model=MODEL, messages=CAPITAL, tools=[NOOP_TOOL])
    assert err.value.status_code == 400 and "tools" in err.value.error
    assert "tools" not in (oll.show(MODEL).capabilities or [])
    with pytest.raises(ollama.ResponseError) as unknown:
        oll.chat(model="no-such-model", messages=CAPITAL, tools=[NOOP_TOOL])
    assert unknown.value.status_code == 404


def _check_logprobs(logprobs: Any, text: str, top: int) -> None:
    assert logprobs and "".join(lp.token for lp in logprobs) == text
    for lp in logprobs:
        assert lp.logprob <= 0
        alts = lp.top_logprobs or []
        assert len(alts) == top
        if top:
            # Greedy decoding picks the most likely token.
            assert alts[0].token == lp.token and alts[0].logprob == pytest.approx(lp.logprob)
            assert [a.logprob for a in alts] == sorted((a.logprob for a in alts), reverse=True)


def test_ollama_logprobs_on_chat_and_generate(oll: ollama.Client) -> None:
    opts = {"temperature": 0, "num_predict": 5}
    chat = oll.chat(model=MODEL, messages=CAPITAL, options=opts, logprobs=True, top_logprobs=3)
    _check_logprobs(chat.logprobs, chat.message.content or "", 3)
    assert len(chat.logprobs or []) == chat.eval_count

    gen = oll.generate(
        model=MODEL, prompt="Name the capital city of France.", options=opts, logprobs=True
    )
    _check_logprobs(gen.logprobs, gen.response, 0)

    parts = list(
        oll.generate(
            model=MODEL,
            prompt="Name the capital city of France.",
            options=opts,
            logprobs=True,
            top_logprobs=2,
            stream=True,
        )
    )
    streamed = [lp for p in parts for lp in (p.logprobs or [])]
    _check_logprobs(streamed, "".join(p.response for p in parts), 2)
    assert [lp.token for lp in streamed] == [lp.token for lp in gen.logprobs or []]

    plain = oll.chat(model=MODEL, messages=CAPITAL, options=opts)
    assert plain.logprobs is None


def test_litellm_ollama_providers(server: RunningServer, litellm: Any) -> None:
    kw = {"api_base": server.url, "temperature": 0, "max_tokens": 12}
    for provider in ("ollama_chat", "ollama"):
        r = litellm.completion(model=f"{provider}/{MODEL}", messages=CAPITAL, **kw)
        assert "Paris" in r.choices[0].message.content
    streamed = "".join(
        c.choices[0].delta.content or ""
        for c in litellm.completion(
            model=f"ollama_chat/{MODEL}", messages=CAPITAL, stream=True, **kw
        )
    )
    assert "Paris" in streamed
    e = litellm.embedding(model=f"ollama/{EMBED}", input=[LONG_CHUNK], api_base=server.url)
    assert len(e.data[0]["embedding"]) == 384


# -- simonw's llm, with the llm-ollama plugin and without any plugin -------------------
def _llm(server: RunningServer, tmp: Path, *args: str, plugins: bool = True) -> str:
    env = {
        **os.environ,
        "LLM_USER_PATH": str(tmp),
        "OLLAMA_HOST": server.url,
        "OPENAI_API_KEY": "unused",
    }
    if not plugins:
        env["LLM_LOAD_PLUGINS"] = ""  # llm alone: Locara as an OpenAI-compatible model
    out = subprocess.run(
        [sys.executable, "-m", "llm", *args], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_llm_ollama_plugin_finds_and_runs_the_bundled_models(
    server: RunningServer, tmp_path: Path
) -> None:
    # llm-ollama looks every model up in /api/tags first ("Unknown model" on an empty list).
    assert f"ollama/{MODEL}" in _llm(server, tmp_path, "models")
    assert f"ollama/{EMBED}" in _llm(server, tmp_path, "embed-models")
    answer = _llm(
        server,
        tmp_path,
        "-m",
        f"ollama/{MODEL}",
        "Name the capital of France.",
        "-o",
        "temperature",
        "0",
        "-o",
        "num_predict",
        "12",
    )
    assert "Paris" in answer
    person = json.loads(
        _llm(
            server,
            tmp_path,
            "-m",
            f"ollama/{MODEL}",
            "--schema",
            "name, age int",
            "Invent a person.",
            "-o",
            "num_predict",
            "60",
        )
    )
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    vector = json.loads(_llm(server, tmp_path, "embed", "-m", f"ollama/{EMBED}", "-c", "hello"))
    assert len(vector) == 384


def test_llm_without_plugins_uses_the_openai_api(server: RunningServer, tmp_path: Path) -> None:
    (tmp_path / "extra-openai-models.yaml").write_text(
        f"- model_id: locara\n  model_name: {MODEL}\n  api_base: {server.url}/v1\n"
        "  supports_schema: true\n"
        f"- model_id: locara-completion\n  model_name: {MODEL}\n  api_base: {server.url}/v1\n"
        "  completion: true\n"
    )
    answer = _llm(
        server,
        tmp_path,
        "-m",
        "locara",
        "Name the capital of France.",
        "-o",
        "temperature",
        "0",
        "-o",
        "max_tokens",
        "12",
        plugins=False,
    )
    assert "Paris" in answer
    assert _llm(
        server,
        tmp_path,
        "-m",
        "locara-completion",
        "The sky is",
        "-o",
        "max_tokens",
        "5",
        plugins=False,
    ).strip()
    person = json.loads(
        _llm(
            server,
            tmp_path,
            "-m",
            "locara",
            "--schema",
            "name, age int",
            "Invent a person.",
            "-o",
            "max_tokens",
            "60",
            plugins=False,
        )
    )
    assert isinstance(person["name"], str) and isinstance(person["age"], int)
    logged = json.loads(_llm(server, tmp_path, "logs", "-n", "1", "--json", plugins=False))
    assert logged[0]["input_tokens"] > 0 and logged[0]["output_tokens"] > 0
