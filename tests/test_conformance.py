"""One behavioural contract, run against every available backend.

llama_cpp runs the bundled default GGUF; mlx runs the same model converted for real
to an MLX directory (quantization kept) and executed by MLX on this CPU. Every test
here is parametrised over both, so a behaviour that holds for one and not the other
fails by name. Cheap checks use a short raw prompt (MLX decodes ~3 tok/s on this
CPU); the chat template is exercised by the Paris test.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from locara.backends.base import (
    Chunk,
    GenerationRequest,
    LoadedModel,
    LoadOptions,
    Message,
    Sampling,
)
from locara.backends.chat_template import render_chat
from locara.errors import ContextOverflowError, UnsupportedFeatureError, UsageError
from locara.registry.catalog import Registry
from locara.registry.manifest import ModelManifest
from locara.settings import Settings
from mlx_support import CAPITAL_PROMPT, converted_mlx_dir, needs_mlx

PROMPT = "The capital of France is"
GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0, seed=1)
BACKENDS = ["llama_cpp", pytest.param("mlx", marks=needs_mlx)]


@dataclass
class Subject:
    backend: str
    model: LoadedModel
    manifest: ModelManifest


@dataclass
class Answer:
    text: str
    chunks: list[Chunk]

    @property
    def last(self) -> Chunk:
        return self.chunks[-1]


def ask(model: LoadedModel, req: GenerationRequest) -> Answer:
    chunks = list(model.generate(req))
    return Answer("".join(c.text for c in chunks), chunks)


@pytest.fixture(scope="module", params=BACKENDS)
def subject(
    request: pytest.FixtureRequest, default_gguf: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Subject]:
    from locara.backends.registry import get_backend

    name = str(request.param)
    manifest = Registry(Settings.from_env({"LOCARA_HOME": "/nonexistent"})).get(
        "smollm2-135m-instruct"
    )
    path = (
        default_gguf if name == "llama_cpp" else converted_mlx_dir(tmp_path_factory, default_gguf)
    )
    model = get_backend(name).load(path, manifest, LoadOptions(n_ctx=1024))
    yield Subject(name, model, manifest)
    model.close()


@pytest.fixture(scope="module")
def reference(subject: Subject) -> Answer:
    """The greedy completion of PROMPT, 8 tokens, consumed all at once."""
    return ask(subject.model, GenerationRequest(prompt=PROMPT, max_tokens=8, sampling=GREEDY))


def test_greedy_output_is_deterministic(subject: Subject, reference: Answer) -> None:
    again = ask(subject.model, GenerationRequest(prompt=PROMPT, max_tokens=8, sampling=GREEDY))
    assert reference.text.strip(), "the model produced nothing"
    assert again.text == reference.text
    a, b = again.last.usage, reference.last.usage
    assert a is not None and b is not None
    # cached_tokens may differ: a backend may reuse the KV cache of the previous call.
    assert (a.prompt_tokens, a.completion_tokens) == (b.prompt_tokens, b.completion_tokens)


def test_seeded_sampling_is_reproducible(subject: Subject) -> None:
    s = Sampling(temperature=0.9, top_k=40, top_p=0.95, min_p=0.05, seed=1234)
    req = GenerationRequest(prompt="Once upon a time", max_tokens=5, sampling=s)
    first, second = ask(subject.model, req), ask(subject.model, req)
    assert first.text == second.text
    assert first.last.usage is not None and first.last.usage.completion_tokens >= 1


def test_max_tokens_is_honoured(subject: Subject, reference: Answer) -> None:
    short = ask(subject.model, GenerationRequest(prompt=PROMPT, max_tokens=3, sampling=GREEDY))
    assert short.last.finish_reason == "length"
    assert short.last.usage is not None and short.last.usage.completion_tokens == 3
    # Greedy decoding: the 3-token answer is the start of the 8-token one.
    assert reference.text.startswith(short.text) and len(short.text) < len(reference.text)


def test_stop_string_is_honoured_and_not_emitted(subject: Subject, reference: Answer) -> None:
    text = reference.text
    # A stop string taken from the middle of the known answer, occurring there first.
    cut = next(i for i in range(len(text) // 2, len(text) - 2) if text.find(text[i : i + 3]) == i)
    stop = text[cut : cut + 3]
    req = GenerationRequest(prompt=PROMPT, max_tokens=8, sampling=GREEDY, stop=(stop,))
    got = ask(subject.model, req)
    assert got.text == text[:cut]
    assert stop not in got.text
    assert got.last.finish_reason == "stop"


def test_stream_concatenates_to_the_non_streaming_answer(
    subject: Subject, reference: Answer
) -> None:
    req = GenerationRequest(prompt=PROMPT, max_tokens=8, sampling=GREEDY)
    pieces: list[str] = []
    counts: list[int] = []
    finishes = []
    for chunk in subject.model.generate(req):  # consumed one chunk at a time
        pieces.append(chunk.text)
        counts.append(chunk.completion_tokens)
        finishes.append(chunk.finish_reason)
    assert "".join(pieces) == reference.text
    assert len(pieces) > 2, "the answer was not streamed"
    assert counts == sorted(counts), "token counts must be cumulative"
    assert all(f is None for f in finishes[:-1]) and finishes[-1] is not None
    assert all("\ufffd" not in p for p in pieces)


def test_usage_counts_match_the_tokenizer(subject: Subject, reference: Answer) -> None:
    usage, timings = reference.last.usage, reference.last.timings
    assert usage is not None and timings is not None
    # SmolLM2 adds no BOS: the prompt is exactly its tokens.
    assert usage.prompt_tokens == subject.model.count_tokens(PROMPT)
    assert usage.completion_tokens == reference.last.completion_tokens
    assert usage.completion_tokens == subject.model.count_tokens(reference.text)
    assert timings.ttft_s > 0 and timings.generation_s >= 0

    template = subject.manifest.config.chat_template
    assert template is not None
    messages = (Message("user", "Hi"),)
    chat = ask(subject.model, GenerationRequest(messages=messages, max_tokens=1, sampling=GREEDY))
    assert chat.last.usage is not None
    assert chat.last.usage.prompt_tokens == subject.model.count_tokens(
        render_chat(template, messages)
    )


def test_unsupported_features_fail_loudly(subject: Subject) -> None:
    caps = subject.model.capabilities
    # An enum keeps the constrained answer short (grammar sampling is slow on a CPU).
    schema = {
        "type": "object",
        "properties": {"city": {"enum": ["Paris", "Rome"]}},
        "required": ["city"],
    }
    req = GenerationRequest(prompt="JSON:", max_tokens=16, sampling=GREEDY, json_schema=schema)
    if caps.json_schema:
        got = ask(subject.model, req)
        assert got.last.finish_reason == "stop"
        assert json.loads(got.text)["city"] in ("Paris", "Rome")
    else:
        with pytest.raises(UnsupportedFeatureError) as exc:
            list(subject.model.generate(req))
        assert exc.value.hint and "llama" in exc.value.hint
    if not caps.embed:
        with pytest.raises(UnsupportedFeatureError):
            subject.model.embed(["hello"])
    if not caps.logprobs:
        with pytest.raises(UnsupportedFeatureError):
            list(subject.model.generate(GenerationRequest(prompt="x", max_tokens=1, logprobs=1)))


def test_invalid_requests_are_refused_before_generating(subject: Subject) -> None:
    with pytest.raises(UsageError):
        list(subject.model.generate(GenerationRequest(prompt="x", max_tokens=0)))
    with pytest.raises(UsageError):
        list(
            subject.model.generate(
                GenerationRequest(prompt="x", sampling=Sampling(temperature=-1.0))
            )
        )
    with pytest.raises(ContextOverflowError):
        list(subject.model.generate(GenerationRequest(prompt="hello " * 1100, max_tokens=4)))


def test_answers_the_capital_of_france_with_paris(subject: Subject) -> None:
    req = GenerationRequest(
        messages=(Message("user", CAPITAL_PROMPT),), max_tokens=12, sampling=GREEDY
    )
    got = ask(subject.model, req)
    assert "Paris" in got.text, got.text
    assert got.last.finish_reason in ("stop", "length")
