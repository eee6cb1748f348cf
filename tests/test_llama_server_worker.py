"""The llama-server worker backend on the real default model and the real binary.

Every test here runs llama.cpp's own ``llama-server`` (built by scripts/install.sh) as
a child process and talks to it over loopback HTTP. They are skipped only when that
binary has not been built.
"""

from __future__ import annotations

import os
import re
import signal
import stat
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import psutil
import pytest

from locara.backends.base import Chunk, GenerationRequest, LoadOptions, Message, Sampling
from locara.backends.llama_cpp import LlamaCppBackend, LlamaCppModel
from locara.backends.llama_server import (
    LlamaServerBackend,
    LlamaServerModel,
    LlamaServerWorker,
    WorkerConfig,
    WorkerState,
)
from locara.backends.worker_binary import ENV_VAR, LLAMA_CPP_COMMIT, locate_llama_server
from locara.engine.loader import ResolvedModel, resolve
from locara.errors import BackendError, BackendUnavailableError, UnsupportedFeatureError
from locara.settings import Settings

GREEDY = Sampling(temperature=0.0, seed=1)
UNSEEDED = Sampling(temperature=0.0)  # no seed: the prefix cache is used
N_PARALLEL = 8


def _require_binary() -> None:
    try:
        locate_llama_server({})  # the one install.sh built, whatever the environment says
    except BackendUnavailableError as exc:
        pytest.skip(f"llama-server is not built ({exc.message}); run ./scripts/install.sh")


@pytest.fixture(scope="module")
def resolved(shared_home: Path) -> ResolvedModel:
    return resolve(Settings.from_env({"LOCARA_HOME": str(shared_home)}), None)


def _load(resolved: ResolvedModel, n_parallel: int, n_ctx: int = 1024) -> LlamaServerModel:
    _require_binary()
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv(ENV_VAR, raising=False)
        opts = LoadOptions(n_ctx=n_ctx, n_parallel=n_parallel)
        return LlamaServerBackend().load(resolved.blob.path, resolved.manifest, opts)


@pytest.fixture(scope="module")
def model(resolved: ResolvedModel) -> Iterator[LlamaServerModel]:
    m = _load(resolved, N_PARALLEL)
    yield m
    m.close()


@pytest.fixture(scope="module")
def in_process(resolved: ResolvedModel) -> Iterator[LlamaCppModel]:
    """The in-process backend on the same file, whatever backend the planner prefers."""
    m = LlamaCppBackend().load(resolved.blob.path, resolved.manifest, LoadOptions(n_ctx=1024))
    yield m
    m.close()


def _text(chunks: list[Chunk]) -> str:
    return "".join(c.text for c in chunks)


def _counting(k: int, max_tokens: int = 64) -> GenerationRequest:
    """A raw prompt the model continues by counting: 'k01, k02, k03,' → ' k04, k05, …'."""
    b = k * 100
    return GenerationRequest(
        prompt=f"{b + 1}, {b + 2}, {b + 3},", sampling=GREEDY, max_tokens=max_tokens
    )


# -- the same answers as in process -----------------------------------------------------


@pytest.mark.parametrize(
    "req",
    [
        GenerationRequest(
            messages=(Message("user", "Name the capital city of France."),), sampling=GREEDY
        ),
        GenerationRequest(
            messages=(Message("user", "Write a haiku about the sea."),),
            sampling=GREEDY,
            max_tokens=40,
        ),
        GenerationRequest(prompt="The quick brown fox", sampling=GREEDY, max_tokens=24),
        # A stop string: kept out of the text by the same StopScanner.
        GenerationRequest(prompt="1, 2, 3,", sampling=GREEDY, max_tokens=40, stop=(" 7",)),
    ],
    ids=["chat-eog", "chat-length", "raw", "stop-string"],
)
def test_greedy_answer_equals_the_in_process_backend(
    model: LlamaServerModel, in_process: LlamaCppModel, req: GenerationRequest
) -> None:
    assert model.prompt_tokens(req) == in_process.prompt_tokens(req)
    ours, theirs = list(model.generate(req)), list(in_process.generate(req))
    assert _text(ours) == _text(theirs)
    a, b = ours[-1], theirs[-1]
    assert a.finish_reason == b.finish_reason
    assert a.usage is not None and b.usage is not None
    assert (a.usage.prompt_tokens, a.usage.completion_tokens) == (
        b.usage.prompt_tokens,
        b.usage.completion_tokens,
    )
    assert a.timings is not None and a.timings.ttft_s > 0
    if req.stop:
        assert a.finish_reason == "stop" and " 7" not in _text(ours) and "6," in _text(ours)


def test_logprobs_match_the_in_process_backend(
    model: LlamaServerModel, in_process: LlamaCppModel
) -> None:
    req = GenerationRequest(prompt="The capital of France is", sampling=GREEDY, max_tokens=8)
    for top in (0, 3):
        r = GenerationRequest(prompt=req.prompt, sampling=GREEDY, max_tokens=8, logprobs=top)
        ours = [lp for c in model.generate(r) for lp in c.logprobs]
        theirs = [lp for c in in_process.generate(r) for lp in c.logprobs]
        assert len(ours) == len(theirs) == 8
        for x, y in zip(ours, theirs, strict=True):
            assert x.token == y.token
            # llama-server computes in float32, the in-process path in float64.
            assert x.logprob == pytest.approx(y.logprob, abs=1e-3)
            assert [t for t, _ in x.top] == [t for t, _ in y.top]
            assert len(x.top) == top


def test_a_repeated_prefix_is_reported_as_cached(model: LlamaServerModel) -> None:
    system = Message("system", "You are a terse assistant. " * 10)
    first = GenerationRequest(
        messages=(system, Message("user", "Say one word.")), sampling=UNSEEDED
    )
    second = GenerationRequest(
        messages=(system, Message("user", "Say two words.")), sampling=UNSEEDED
    )
    list(model.generate(first))
    last = list(model.generate(second))[-1]
    assert last.usage is not None
    assert last.usage.cached_tokens >= model.count_tokens(system.content)


def test_a_seed_makes_repeats_identical_and_skips_the_prefix_cache(model: LlamaServerModel) -> None:
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


def test_json_schema_constrains_and_bad_schemas_are_refused(model: LlamaServerModel) -> None:
    import json

    name = {"type": "string", "maxLength": 20}
    schema = {"type": "object", "properties": {"name": name}, "required": ["name"]}
    req = GenerationRequest(
        messages=(Message("user", "Give a JSON object with a name."),),
        sampling=GREEDY,
        max_tokens=60,
        json_schema=schema,
    )
    assert isinstance(json.loads(_text(list(model.generate(req))))["name"], str)
    for bad in ({"enum": []}, {"anyOf": []}, {"properties": {"a": {"$ref": "#/nope"}}}):
        # Refused by the schema bounds in Locara, or by the worker when it converts them.
        with pytest.raises(
            UnsupportedFeatureError, match=r"unsupported JSON|cannot be compiled"
        ) as info:
            list(model.generate(GenerationRequest(prompt="x", json_schema=bad)))
        assert "\n" not in info.value.message
    # A schema that converts but that no text satisfies fails at the first token.
    impossible = {"type": "integer", "minimum": 5, "maximum": 3}
    with pytest.raises(UnsupportedFeatureError, match="cannot be satisfied"):
        list(model.generate(GenerationRequest(prompt="x", json_schema=impossible)))
    # A refused schema is a refused request, not a broken worker.
    pid = model.worker.pid
    assert _text(list(model.generate(_counting(1, 8)))).startswith(" 104,")
    assert model.worker.pid == pid


# -- many requests at once --------------------------------------------------------------


def test_concurrent_streams_overlap_without_cross_talk_and_cancel_alone(
    model: LlamaServerModel,
) -> None:
    """Eight streams at once: all have produced text before the first one finishes,
    each continues its own prompt, and closing one leaves the other seven running."""
    events: list[tuple[str, int]] = []
    texts: dict[int, str] = {}
    finishes: dict[int, str | None] = {}
    errors: list[BaseException] = []
    lock = threading.Lock()
    go = threading.Barrier(N_PARALLEL)
    cancelled = 1

    def run(k: int) -> None:
        try:
            go.wait()
            gen = model.generate(_counting(k, max_tokens=96))
            parts: list[str] = []
            for chunk in gen:
                parts.append(chunk.text)
                with lock:
                    events.append(("done" if chunk.finish_reason else "token", k))
                if k == cancelled and len(parts) == 3:
                    gen.close()  # the client went away
                    break
                if chunk.finish_reason:
                    finishes[k] = chunk.finish_reason
            texts[k] = "".join(parts)
        except BaseException as exc:  # surfaced by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(k,)) for k in range(1, N_PARALLEL + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors

    first_done = next(i for i, (kind, _) in enumerate(events) if kind == "done")
    started_before = {k for kind, k in events[:first_done] if kind == "token"}
    assert started_before == set(range(1, N_PARALLEL + 1))

    for k in range(1, N_PARALLEL + 1):
        b = k * 100
        if k == cancelled:
            assert f" {b + 4}, {b + 5},".startswith(texts[k]), texts[k]
            continue
        numbers = re.findall(r"\d{3}", texts[k])
        assert texts[k].startswith(f" {b + 4}, {b + 5},"), texts[k]
        assert all(n.startswith(str(k)) for n in numbers), texts[k]
        assert finishes[k] == "length"
    assert cancelled not in finishes


def test_closing_a_stream_frees_its_slot(resolved: ResolvedModel) -> None:
    m = _load(resolved, n_parallel=1)
    try:
        budget = 900
        gen = m.generate(_counting(1, max_tokens=budget))
        for n, _ in enumerate(gen):
            if n == 3:
                break
        gen.close()
        # The next request needs the only slot: it gets it only if the first was cancelled
        # (otherwise it would wait behind all 900 tokens).
        assert _text(list(m.generate(_counting(2, max_tokens=4)))).startswith(" 204")
        metrics = m.worker.client.get("/metrics").text
        found = re.search(r"^llamacpp:tokens_predicted_total (\S+)", metrics, re.M)
        assert found is not None
        assert float(found[1]) < budget  # decoding stopped when the stream was closed
    finally:
        m.close()


# -- a worker that dies ------------------------------------------------------------------


def test_killed_worker_fails_the_stream_and_the_next_request_restarts_it(
    resolved: ResolvedModel,
) -> None:
    m = _load(resolved, n_parallel=2)
    try:
        first_pid = m.worker.pid
        assert first_pid is not None
        gen = m.generate(_counting(1, max_tokens=900))
        next(gen)
        os.kill(first_pid, signal.SIGKILL)
        with pytest.raises(BackendError, match=rf"pid {first_pid}\) died .*SIGKILL") as info:
            for _ in gen:
                pass
        assert "\n" not in str(info.value) and info.value.hint
        assert m.worker.state is WorkerState.DEAD

        assert _text(list(m.generate(_counting(3, max_tokens=4)))).startswith(" 304")
        assert m.worker.pid not in (None, first_pid)
        assert m.worker.starts == 2 and m.worker.state is WorkerState.READY
    finally:
        m.close()
    assert not m.worker.alive and m.worker.state is WorkerState.STOPPED


def test_a_worker_that_cannot_start_says_why(tmp_path: Path) -> None:
    _require_binary()
    bogus = tmp_path / "not-a-model.gguf"
    bogus.write_bytes(b"this is not a GGUF file\n" * 10)
    log_path = tmp_path / "worker.log"
    worker = LlamaServerWorker(
        locate_llama_server({}),
        WorkerConfig(model_path=bogus, alias="bogus", n_ctx=256, n_parallel=1),
        log_path=log_path,
    )
    with pytest.raises(BackendError, match="stopped while starting") as info:
        worker.start()
    assert "\n" not in info.value.message
    assert "not-a-model.gguf" in info.value.message or "load" in info.value.message
    assert str(log_path) in (info.value.hint or "")
    assert not worker.alive


def test_the_worker_listens_on_a_private_unix_socket_with_a_key(model: LlamaServerModel) -> None:
    path = model.worker.socket_path
    assert path is not None and path.is_socket()
    assert path.parent.stat().st_mode & 0o777 == 0o700  # no other user can connect
    argv = model.worker.config.argv(Path("x"), path)
    assert "--port" not in argv and model.worker.api_key not in " ".join(argv)
    # No TCP port: the worker's process listens on nothing but its socket.
    assert not psutil.Process(model.worker.pid).net_connections(kind="inet")
    with httpx.Client(transport=httpx.HTTPTransport(uds=str(path))) as c:
        r = c.post("http://w/completion", json={"prompt": "hi", "n_predict": 1})
    assert r.status_code == 401  # without the worker's key


def test_a_stopped_worker_leaves_no_socket_behind(resolved: ResolvedModel) -> None:
    m = _load(resolved, n_parallel=1)
    path = m.worker.socket_path
    assert path is not None and path.exists()
    m.close()
    assert not path.parent.exists()


# -- finding the binary ------------------------------------------------------------------


def _script(path: Path, body: str, mode: int) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("make", "message", "hint"),
    [
        (lambda d: d / "missing", "no such file", f"unset {ENV_VAR}"),
        (lambda d: _script(d / "plain", "exit 0\n", 0o644), "not executable", "chmod +x"),
        (
            lambda d: _script(
                d / "old", 'echo "version: 9999 (build 1, commit deadbee)" >&2\n', 0o755
            ),
            f"needs llama.cpp {LLAMA_CPP_COMMIT}",
            f"unset {ENV_VAR}",
        ),
        (
            lambda d: _script(d / "fails", "exit 3\n", 0o755),
            "--version` failed",
            f"unset {ENV_VAR}",
        ),
    ],
    ids=["missing", "not-executable", "wrong-version", "no-version"],
)
def test_a_bad_override_is_a_one_line_error_with_the_fix(
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    make: Callable[[Path], Path],
    message: str,
    hint: str,
) -> None:
    path = make(tmp_path)
    monkeypatch.setenv(ENV_VAR, str(path))
    with pytest.raises(BackendUnavailableError) as info:
        locate_llama_server()
    err = info.value
    assert message in err.message and str(path) in err.message
    assert "\n" not in err.message and err.hint and hint in err.hint
    status = LlamaServerBackend().available()
    assert not status.ok and message in status.reason


def test_the_override_wins_when_it_is_the_right_build(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _require_binary()
    installed = locate_llama_server({})
    monkeypatch.setenv(ENV_VAR, str(installed.path))
    found = locate_llama_server()
    assert found.source == "env" and f"commit {LLAMA_CPP_COMMIT}" in found.version
    assert os.stat(found.path).st_mode & stat.S_IXUSR
