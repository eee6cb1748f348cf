"""The OpenAI-compatible API, driven by the official ``openai`` client against the real server."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import jsonschema
import openai
import pytest

from server_harness import RunningServer, endless_stream, metric, running_server, wait_until

MODEL = "smollm2-135m-instruct"
CAPITAL = [{"role": "user", "content": "Name the capital city of France."}]


@pytest.fixture(scope="module")
def server(shared_home: Path) -> Iterator[RunningServer]:
    with running_server(shared_home) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0)


def test_chat_answers_the_question(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=24,  # type: ignore[arg-type]
    )
    assert r.object == "chat.completion"
    assert r.model == MODEL
    choice = r.choices[0]
    assert "Paris" in (choice.message.content or "")
    assert choice.finish_reason == "stop"
    assert r.usage is not None and r.usage.prompt_tokens > 5
    assert r.usage.completion_tokens > 0
    assert r.usage.total_tokens == r.usage.prompt_tokens + r.usage.completion_tokens


def test_chat_streams_with_usage(client: openai.OpenAI) -> None:
    stream = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=24,
        stream=True,
        stream_options={"include_usage": True},
    )
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert "Paris" in text
    assert chunks[0].choices[0].delta.role == "assistant"
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] == "stop" and all(f is None for f in finishes[:-1])
    usage = chunks[-1].usage
    assert not chunks[-1].choices and usage is not None
    # Streaming and non-streaming count the same tokens.
    assert usage.completion_tokens == len(
        [c for c in chunks if c.choices and c.choices[0].delta.content]
    )


def test_max_tokens_ends_with_length(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Write a long story about a dragon."}],
        max_tokens=3,
    )
    assert r.choices[0].finish_reason == "length"
    assert r.usage is not None and r.usage.completion_tokens == 3


def test_stop_string_is_honoured(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=24,
        stop=["Paris"],  # type: ignore[arg-type]
    )
    text = r.choices[0].message.content or ""
    assert "Paris" not in text and text  # cut just before the stop string
    assert r.choices[0].finish_reason == "stop"


def test_seed_makes_sampling_reproducible(client: openai.OpenAI) -> None:
    msgs = [{"role": "user", "content": "Tell me something about cats."}]
    a, b = (
        client.chat.completions.create(
            model=MODEL,
            messages=msgs,
            temperature=1.0,
            seed=1234,
            max_tokens=16,  # type: ignore[arg-type]
        )
        for _ in range(2)
    )
    assert a.choices[0].message.content == b.choices[0].message.content


def test_json_schema_reply_validates(client: openai.OpenAI) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
        "additionalProperties": False,
    }
    r = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,  # type: ignore[arg-type]
        temperature=0,
        max_tokens=60,
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "capital", "schema": schema, "strict": True},
        },
    )
    data = json.loads(r.choices[0].message.content or "")
    jsonschema.validate(data, schema)


def test_json_object_mode_returns_an_object(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=[{"role": "user", "content": "Describe Paris as JSON."}],
        temperature=0,
        max_tokens=40,
        response_format={"type": "json_object"},
    )
    text = r.choices[0].message.content or ""
    if r.choices[0].finish_reason == "stop":
        assert isinstance(json.loads(text), dict)
    else:  # cut by max_tokens: still the start of an object
        assert text.lstrip().startswith("{")


def test_logprobs(client: openai.OpenAI) -> None:
    r = client.chat.completions.create(
        model=MODEL,
        messages=CAPITAL,
        temperature=0,
        max_tokens=5,
        logprobs=True,
        top_logprobs=3,  # type: ignore[arg-type]
    )
    lp = r.choices[0].logprobs
    assert lp is not None and lp.content is not None
    assert len(lp.content) == r.usage.completion_tokens  # type: ignore[union-attr]
    assert "".join(t.token for t in lp.content) == r.choices[0].message.content
    for t in lp.content:
        assert t.logprob <= 0
        assert len(t.top_logprobs) == 3
        # Greedy decoding picks the most likely token.
        assert t.top_logprobs[0].token == t.token
        assert t.top_logprobs[0].logprob == pytest.approx(t.logprob)
        assert t.top_logprobs[0].logprob >= t.top_logprobs[1].logprob >= t.top_logprobs[2].logprob


def test_completions(client: openai.OpenAI) -> None:
    r = client.completions.create(
        model=MODEL, prompt="The capital city of France is", max_tokens=4, temperature=0
    )
    assert r.object == "text_completion"
    assert "Paris" in r.choices[0].text
    assert r.usage is not None and r.usage.completion_tokens <= 4
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt="The capital city of France is",
            max_tokens=4,
            temperature=0,
            stream=True,
        )
    )
    assert "".join(c.choices[0].text for c in chunks if c.choices) == r.choices[0].text


def test_completions_stream_echo_and_usage(client: openai.OpenAI) -> None:
    prompt = "The capital city of France is"
    chunks = list(
        client.completions.create(
            model=MODEL,
            prompt=prompt,
            max_tokens=4,
            temperature=0,
            echo=True,
            stream=True,
            stream_options={"include_usage": True},
        )
    )
    texts = [c.choices[0].text for c in chunks if c.choices]
    assert texts[0] == prompt  # the echo comes first
    assert "Paris" in "".join(texts[1:])
    finishes = [c.choices[0].finish_reason for c in chunks if c.choices]
    assert finishes[-1] in ("stop", "length") and all(f is None for f in finishes[:-1])
    assert not chunks[-1].choices
    assert chunks[-1].usage is not None and 0 < chunks[-1].usage.completion_tokens <= 4


def test_completions_logprobs_and_echo(client: openai.OpenAI) -> None:
    prompt = "One, two, three,"
    r = client.completions.create(
        model=MODEL, prompt=prompt, max_tokens=3, temperature=0, logprobs=2, echo=True
    )
    text = r.choices[0].text
    assert text.startswith(prompt)
    lp = r.choices[0].logprobs
    assert lp is not None and lp.tokens and lp.token_logprobs and lp.top_logprobs
    assert "".join(lp.tokens) == text[len(prompt) :]
    assert all(len(alts) == 2 for alts in lp.top_logprobs)


def test_embeddings_with_a_named_model(client: openai.OpenAI) -> None:
    # The openai client asks for base64 by default and decodes it; check floats too.
    r = client.embeddings.create(model=MODEL, input=["Paris is in France", "a cat sat"])
    assert [d.index for d in r.data] == [0, 1]
    vecs = [d.embedding for d in r.data]
    assert len(vecs[0]) == 576 and len(vecs[1]) == 576
    assert sum(x * x for x in vecs[0]) == pytest.approx(1.0, rel=1e-3)  # normalised
    assert vecs[0] != vecs[1]
    floats = client.embeddings.create(
        model=MODEL, input="Paris is in France", encoding_format="float"
    )
    assert floats.data[0].embedding == pytest.approx(vecs[0], abs=1e-6)
    assert r.usage.prompt_tokens > 0


def test_default_embedding_model(client: openai.OpenAI) -> None:
    r = client.embeddings.create(input=["hello world"], model="")
    assert len(r.data[0].embedding) == 384


def test_model_listing(client: openai.OpenAI) -> None:
    ids = [m.id for m in client.models.list()]
    assert MODEL in ids
    assert client.models.retrieve(MODEL).id == MODEL
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("no-such-model")


def test_shared_prefix_is_not_recomputed(client: openai.OpenAI) -> None:
    system = "You are a terse assistant. " + " ".join(f"Rule {i}: be brief." for i in range(60))
    usages = []
    for q in ("Name the capital of France.", "Name the capital of Italy."):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "system", "content": system}, {"role": "user", "content": q}],
            max_tokens=2,
            temperature=0,
        )
        assert r.usage is not None
        usages.append(r.usage)
    first, second = usages
    cached = second.prompt_tokens_details.cached_tokens  # type: ignore[union-attr]
    # Everything up to the user's question is reused; only the question is evaluated.
    assert cached >= first.prompt_tokens - 20
    assert cached < second.prompt_tokens


def test_smaller_context_is_served_without_reload_and_larger_says_why(
    server: RunningServer,
) -> None:
    body = {"model": MODEL, "messages": CAPITAL, "max_tokens": 2}
    small = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "num_ctx": 1024}, timeout=60
    )
    assert small.status_code == 200 and "x-locara-reload" not in small.headers
    ps = httpx.get(f"{server.url}/api/ps").json()["models"]
    assert max(m["context_length"] for m in ps) >= 4096
    big = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "num_ctx": 8192}, timeout=60
    )
    assert big.status_code == 200
    assert "smaller than the requested 8192" in big.headers["x-locara-reload"]
    again = httpx.post(
        f"{server.url}/v1/chat/completions", json={**body, "num_ctx": 2048}, timeout=60
    )
    assert "x-locara-reload" not in again.headers


def test_cors_is_closed_by_default(server: RunningServer) -> None:
    r = httpx.options(
        f"{server.url}/v1/models",
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "GET"},
    )
    assert "access-control-allow-origin" not in r.headers
    r = httpx.get(f"{server.url}/v1/models", headers={"Origin": "http://evil.example"})
    assert "access-control-allow-origin" not in r.headers


def test_health_and_metrics(server: RunningServer, client: openai.OpenAI) -> None:
    assert httpx.get(f"{server.url}/health").json()["status"] == "ok"
    ok = {"surface": "openai", "model": MODEL, "status": "ok"}

    def scrape() -> str:
        r = httpx.get(f"{server.url}/metrics")
        assert r.headers["content-type"].startswith("text/plain")
        return r.text

    before = scrape()
    reply = client.chat.completions.create(model=MODEL, messages=CAPITAL, max_tokens=2)  # type: ignore[arg-type]
    assert reply.usage is not None
    # The request is counted as it is accounted, just after the answer is sent.
    n0 = metric(before, "locara_requests_total", **ok)
    assert wait_until(lambda: metric(scrape(), "locara_requests_total", **ok) == n0 + 1)
    after = scrape()

    def moved(name: str, **labels: str) -> float:
        return metric(after, name, **labels) - metric(before, name, **labels)

    assert moved("locara_prompt_tokens_total", model=MODEL) == reply.usage.prompt_tokens
    assert moved("locara_completion_tokens_total", model=MODEL) == reply.usage.completion_tokens
    assert moved("locara_time_to_first_token_seconds_count") == 1
    assert moved("locara_time_to_first_token_seconds_bucket", le="+Inf") == 1
    assert moved("locara_time_to_first_token_seconds_sum") > 0
    # Loaded now, with its memory; loaded once however many requests it served.
    assert metric(after, "locara_loaded_models") >= 1
    assert metric(after, "locara_model_memory_bytes", model=MODEL, mode="generation") > 0
    assert metric(after, "locara_model_loads_total") >= 1  # from 0 when the server started
    assert metric(after, "locara_uptime_seconds") > metric(before, "locara_uptime_seconds")


def test_different_models_run_in_parallel(server: RunningServer) -> None:
    # A generation that cannot end soon (the schema demands 300 items) holds one model...
    long = endless_stream(MODEL, 2000)
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=long, timeout=120) as r:
        lines = (x for x in r.iter_lines() if x.startswith("data: {"))
        next(lines)
        next(lines)
        # ...while another model answers in full,
        r2 = httpx.post(
            f"{server.url}/v1/embeddings",
            json={"model": "all-minilm-l6-v2", "input": "x"},
            timeout=120,
        )
        assert r2.status_code == 200
        # ...and the first is still generating: the second did not wait for it.
        text = httpx.get(f"{server.url}/metrics").text
        assert metric(text, "locara_in_flight_requests", model=MODEL, mode="generation") == 1


def test_a_seed_makes_greedy_answers_repeat_exactly(client: openai.OpenAI) -> None:
    """With a seed the prompt is evaluated whole each time: no cached prefix, same answer."""
    answers, cached = [], []
    for _ in range(3):
        r = client.chat.completions.create(
            model=MODEL,
            messages=[{"role": "user", "content": "Name three rivers of Europe."}],
            max_tokens=24,
            temperature=0,
            seed=7,
        )
        assert r.usage is not None and r.usage.prompt_tokens_details is not None
        answers.append(r.choices[0].message.content)
        cached.append(r.usage.prompt_tokens_details.cached_tokens)
    assert answers[0] and answers.count(answers[0]) == 3
    assert cached == [0, 0, 0]


def test_chat_with_an_embedding_model_is_refused_before_loading(server: RunningServer) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": "all-minilm-l6-v2", "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert "embedding model" in r.json()["error"]["message"]
    loaded = httpx.get(f"{server.url}/api/ps").json()["models"]
    assert not [
        m for m in loaded if m["model"].startswith("all-minilm") and not m["locara"]["embedding"]
    ]


@pytest.mark.parametrize(
    ("model", "what"),
    [("whisper-tiny.en", "speech-to-text model"), ("rapidocr-ppocrv4", "OCR model")],
)
def test_chat_with_a_speech_or_ocr_model_is_refused_before_loading(
    server: RunningServer, model: str, what: str
) -> None:
    r = httpx.post(
        f"{server.url}/v1/chat/completions",
        json={"model": model, "messages": [{"role": "user", "content": "Hi"}]},
        timeout=60,
    )
    assert r.status_code == 400, r.text
    assert what in r.json()["error"]["message"]
    loaded = httpx.get(f"{server.url}/api/ps").json()["models"]
    assert not [m for m in loaded if m["model"].startswith(model)]


def _idle(server: RunningServer) -> bool:
    text = httpx.get(f"{server.url}/metrics").text
    return metric(text, "locara_in_flight_requests", model=MODEL, mode="generation") == 0


def test_disconnect_during_the_prompt_cancels_before_any_token(server: RunningServer) -> None:
    """A client that leaves while its (long) prompt is evaluated: no answer is generated
    for nobody, and the request is accounted as cancelled."""
    short = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1}
    assert httpx.post(f"{server.url}/v1/chat/completions", json=short, timeout=120).is_success
    assert wait_until(lambda: _idle(server))  # loaded, and nothing else running
    before = httpx.get(f"{server.url}/metrics").text
    words = " ".join(f"item{i}" for i in range(800))  # ~3,500 tokens: seconds of prompt
    body = {
        "model": MODEL,
        "messages": [{"role": "user", "content": f"Repeat these: {words}"}],
        "max_tokens": 300,
        "stream": True,
    }
    url = f"{server.url}/v1/chat/completions"
    with pytest.raises(httpx.ReadTimeout), httpx.stream("POST", url, json=body, timeout=0.5) as r:
        for _ in r.iter_lines():
            pass
    assert wait_until(lambda: _idle(server)), "the prompt kept the model busy"
    after = httpx.get(f"{server.url}/metrics").text
    cancelled = dict(surface="openai", model=MODEL, status="cancelled")
    assert (
        metric(after, "locara_requests_total", **cancelled)
        == metric(before, "locara_requests_total", **cancelled) + 1
    )
    generated = metric(after, "locara_completion_tokens_total", model=MODEL) - metric(
        before, "locara_completion_tokens_total", model=MODEL
    )
    assert generated == 0
