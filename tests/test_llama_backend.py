"""The llama.cpp backend on the real default model: templates, stops, grammar, embeddings."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator

import pytest

from locara.backends.base import GenerationRequest, LoadOptions, Message, Sampling
from locara.backends.chat_template import render_chat
from locara.backends.llama_cpp import LlamaCppModel
from locara.backends.stops import StopScanner
from locara.engine.loader import load, resolve
from locara.errors import (
    ContextOverflowError,
    ModelFormatError,
    TemplateRefusedError,
    UsageError,
)
from locara.settings import Settings

GREEDY = Sampling(temperature=0.0, seed=1)
UNSEEDED = Sampling(temperature=0.0)  # no seed: the prefix cache is used
CAPITAL = (Message("user", "Name the capital city of France."),)


@pytest.fixture(scope="module")
def model(shared_home) -> Iterator[LlamaCppModel]:  # type: ignore[no-untyped-def]
    s = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    handle = load(s, resolve(s, None), LoadOptions(n_ctx=2048))
    assert isinstance(handle.model, LlamaCppModel)
    yield handle.model
    handle.close()


@pytest.fixture(scope="module")
def embedder(shared_home) -> Iterator[LlamaCppModel]:  # type: ignore[no-untyped-def]
    s = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    handle = load(s, resolve(s, None), LoadOptions(n_ctx=512, embedding=True))
    assert isinstance(handle.model, LlamaCppModel)
    yield handle.model
    handle.close()


def text_of(model: LlamaCppModel, req: GenerationRequest) -> tuple[str, object]:
    chunks = list(model.generate(req))
    return "".join(c.text for c in chunks), chunks[-1]


def test_chat_uses_the_models_template(model: LlamaCppModel) -> None:
    prompt = model.render_prompt(GenerationRequest(messages=CAPITAL))
    assert prompt.startswith("<|im_start|>system\n")
    assert prompt.endswith(
        "<|im_start|>user\nName the capital city of France.<|im_end|>\n<|im_start|>assistant\n"
    )
    text, last = text_of(model, GenerationRequest(messages=CAPITAL, sampling=GREEDY))
    assert "Paris" in text
    assert "<|im_end|>" not in text  # the stop token ends the turn and is not emitted
    assert last.finish_reason == "stop"  # type: ignore[attr-defined]


def test_last_chunk_carries_usage_and_timings(model: LlamaCppModel) -> None:
    req = GenerationRequest(messages=CAPITAL, sampling=GREEDY, max_tokens=32)
    chunks = list(model.generate(req))
    last = chunks[-1]
    assert last.usage is not None and last.timings is not None
    assert last.usage.prompt_tokens == len(model.prompt_tokens(req))
    assert last.usage.completion_tokens == max(c.completion_tokens for c in chunks)
    text = "".join(c.text for c in chunks)
    # Counts agree with the tokenizer (re-tokenizing decoded text may merge differently,
    # so allow one token of slack at the boundary).
    assert abs(model.count_tokens(text) - last.usage.completion_tokens) <= 1
    assert last.timings.ttft_s > 0 and last.timings.generation_s >= 0
    assert all(c.prompt_tokens == last.usage.prompt_tokens for c in chunks)


def test_repeated_prompt_reuses_the_cached_prefix(model: LlamaCppModel) -> None:
    system = Message("system", "You are a terse assistant. " * 20)
    a = GenerationRequest(
        messages=(system, Message("user", "Say one word.")), sampling=UNSEEDED, max_tokens=4
    )
    b = GenerationRequest(
        messages=(system, Message("user", "Say two words.")), sampling=UNSEEDED, max_tokens=4
    )
    list(model.generate(a))
    last = list(model.generate(b))[-1]
    assert last.usage is not None
    assert last.usage.cached_tokens > 100  # the long system prompt was not recomputed


def test_a_seed_makes_repeats_identical_and_skips_the_prefix_cache(model: LlamaCppModel) -> None:
    """With a seed, every repeat evaluates the whole prompt: same batches, same answer."""
    req = GenerationRequest(
        messages=(Message("user", "Name three fruits."),), sampling=GREEDY, max_tokens=16
    )
    runs = [list(model.generate(req)) for _ in range(3)]
    texts = ["".join(c.text for c in chunks) for chunks in runs]
    assert texts[0] and texts.count(texts[0]) == 3
    assert all(chunks[-1].usage and chunks[-1].usage.cached_tokens == 0 for chunks in runs)
    unseeded = GenerationRequest(messages=req.messages, sampling=UNSEEDED, max_tokens=16)
    list(model.generate(unseeded))
    again = list(model.generate(unseeded))[-1]
    assert again.usage is not None and again.usage.cached_tokens > 0


def test_stop_strings_are_honoured_and_not_emitted(model: LlamaCppModel) -> None:
    base, _ = text_of(model, GenerationRequest(messages=CAPITAL, sampling=GREEDY))
    assert "Paris" in base
    text, last = text_of(
        model, GenerationRequest(messages=CAPITAL, sampling=GREEDY, stop=("Paris",))
    )
    assert text == base[: base.index("Paris")]
    assert last.finish_reason == "stop"  # type: ignore[attr-defined]


def test_sampling_parameters_reach_the_sampler(model: LlamaCppModel) -> None:
    msgs = (Message("user", "Write a sentence about cats."),)
    outs = {
        text_of(
            model,
            GenerationRequest(
                messages=msgs,
                max_tokens=24,
                sampling=Sampling(temperature=1.2, seed=s, top_k=0, top_p=1.0, min_p=0.0),
            ),
        )[0]
        for s in (1, 2, 3)
    }
    assert len(outs) > 1  # different seeds, different samples
    again = text_of(
        model,
        GenerationRequest(
            messages=msgs,
            max_tokens=24,
            sampling=Sampling(temperature=1.2, seed=2, top_k=0, top_p=1.0, min_p=0.0),
        ),
    )[0]
    assert again in outs


def test_json_schema_is_enforced_by_grammar(model: LlamaCppModel) -> None:
    schema = {
        "type": "object",
        "properties": {"city": {"type": "string"}, "country": {"type": "string"}},
        "required": ["city", "country"],
    }
    text, _ = text_of(
        model,
        GenerationRequest(
            messages=(Message("user", "Give the capital of France as JSON."),),
            sampling=GREEDY,
            max_tokens=60,
            json_schema=schema,
        ),
    )
    data = json.loads(text)
    assert set(data) >= {"city", "country"}
    assert isinstance(data["city"], str)


def test_raw_prompt_completion(model: LlamaCppModel) -> None:
    text, last = text_of(
        model, GenerationRequest(prompt="1, 2, 3, 4,", max_tokens=6, sampling=GREEDY)
    )
    assert "5" in text
    assert last.usage.completion_tokens <= 6  # type: ignore[attr-defined]


def test_prompt_over_context_is_refused(model: LlamaCppModel) -> None:
    long = (Message("user", "word " * 3000),)
    with pytest.raises(ContextOverflowError) as exc:
        list(model.generate(GenerationRequest(messages=long)))
    assert exc.value.n_ctx == 2048 and exc.value.prompt_tokens > 2048


def test_invalid_request_values(model: LlamaCppModel) -> None:
    for bad in (
        Sampling(temperature=-1),
        Sampling(top_p=0),
        Sampling(top_p=1.01),
        Sampling(min_p=2),
        Sampling(repeat_penalty=0),
        Sampling(temperature=math.nan),
    ):
        with pytest.raises(UsageError):
            list(model.generate(GenerationRequest(messages=CAPITAL, sampling=bad)))
    with pytest.raises(UsageError, match="max_tokens"):
        list(model.generate(GenerationRequest(messages=CAPITAL, max_tokens=0)))
    with pytest.raises(UsageError, match="either messages or a prompt"):
        list(model.generate(GenerationRequest()))


def test_embeddings_are_normalised_and_meaningful(embedder: LlamaCppModel) -> None:
    vecs = embedder.embed(
        [
            "The cat sat on the mat.",
            "A cat was sitting on a mat.",
            "Quarterly tax filings are due in April.",
        ]
    )
    assert len(vecs) == 3 and all(len(v) == 576 for v in vecs)
    for v in vecs:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-3)

    def cos(a: list[float], b: list[float]) -> float:
        return sum(x * y for x, y in zip(a, b, strict=True))

    assert cos(vecs[0], vecs[1]) > cos(vecs[0], vecs[2])


def test_chat_model_not_loaded_for_embeddings_says_so(model: LlamaCppModel) -> None:
    from locara.errors import UnsupportedFeatureError

    with pytest.raises(UnsupportedFeatureError, match="not loaded for embeddings"):
        model.embed(["x"])


def test_template_sandbox_blocks_python_internals() -> None:
    evil = "{{ messages.__class__.__mro__[1].__subclasses__() }}"
    with pytest.raises(ModelFormatError):
        render_chat(evil, CAPITAL)
    # The template's own check refuses the request: the client's to fix, not the model's.
    with pytest.raises(TemplateRefusedError, match="roles must alternate"):
        render_chat("{{ raise_exception('roles must alternate') }}", CAPITAL)
    with pytest.raises(ModelFormatError, match="does not compile"):
        render_chat("{% for %}", CAPITAL)


def test_stop_scanner_holds_back_partial_matches() -> None:
    s = StopScanner(("END",))
    assert s.feed("abc E") == ("abc ", False)
    assert s.feed("N") == ("", False)
    assert s.feed("D tail") == ("", True)
    s = StopScanner(("END",))
    assert s.feed("abc EN") == ("abc ", False)
    assert s.feed("x") == ("ENx", False)
    assert s.flush("E") == "E"
    assert StopScanner(()).feed("anything") == ("anything", False)
