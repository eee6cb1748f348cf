"""Model lifecycle on the real server: keep-alive, LRU eviction, bounded queues, cancellation.

The server runs with a queue depth of 0 (a second request to a busy model is refused),
a 2 s default keep-alive, and a memory budget that holds one loaded model but not two.
A JSON schema that demands 300 array items keeps the model generating for as long as a
test needs, so "still busy" never depends on timing.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from locara.engine.loader import resolve
from locara.planner.plan import PlanRequest
from locara.settings import Settings
from server_harness import RunningServer, endless_stream, metric, running_server, wait_until

MODEL = "smollm2-135m-instruct"
EMBED = "all-minilm-l6-v2"
CTX = 512
LONG = endless_stream(MODEL, 450)  # of a 512 context; the schema needs ~1200 to finish


@pytest.fixture(scope="module")
def server(shared_home: Path) -> Iterator[RunningServer]:
    # What the pool's admission counts for one loaded model: its plan's RAM bytes.
    cfg = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    one = resolve(cfg, MODEL, request=PlanRequest(default_ctx=CTX, n_parallel=1)).plan.ram_bytes
    env = {
        "LOCARA_QUEUE_DEPTH": "0",
        "LOCARA_NUM_PARALLEL": "1",  # one slot: a second request waits, and there is no room
        "LOCARA_KEEP_ALIVE": "2",
        "LOCARA_CTX": str(CTX),
        "LOCARA_MEMORY_BUDGET": str(int(one * 1.5)),
    }
    with running_server(shared_home, env) as s:
        yield s


def metrics(server: RunningServer) -> str:
    return httpx.get(f"{server.url}/metrics").text


def loaded_modes(server: RunningServer, model: str = MODEL) -> set[str]:
    text = metrics(server)
    return {
        mode
        for mode in ("generation", "embedding")
        if f'locara_model_memory_bytes{{model="{model}",mode="{mode}"}}' in text
    }


def idle(server: RunningServer) -> bool:
    return metric(metrics(server), "locara_in_flight_requests", model=MODEL, mode="generation") == 0


def chat(server: RunningServer, **extra: Any) -> httpx.Response:
    body = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 2}
    return httpx.post(f"{server.url}/v1/chat/completions", json={**body, **extra}, timeout=120)


def content_events(lines: Iterator[str]) -> Iterator[dict[str, Any]]:
    for line in lines:
        if line.startswith("data: ") and line != "data: [DONE]":
            yield json.loads(line[len("data: ") :])


def test_keep_alive_override_then_expiry(server: RunningServer) -> None:
    assert chat(server, keep_alive=-1).status_code == 200
    time.sleep(3)  # longer than the server's 2 s default keep-alive
    assert loaded_modes(server) == {"generation"}, "keep_alive -1 keeps the model loaded"
    assert chat(server, keep_alive="1s").status_code == 200
    assert wait_until(lambda: not loaded_modes(server), timeout=30), "keep-alive never expired"


def test_lru_eviction_stays_inside_the_budget(server: RunningServer) -> None:
    assert chat(server, keep_alive=-1).status_code == 200
    assert loaded_modes(server) == {"generation"}
    r = httpx.post(
        f"{server.url}/v1/embeddings", json={"model": EMBED, "input": "hello", "keep_alive": -1}
    )
    assert r.status_code == 200
    # Both do not fit: the idle, least recently used chat model made room.
    assert loaded_modes(server) == set() and loaded_modes(server, EMBED) == {"embedding"}
    assert "evicting smollm2-135m-instruct (least recently used)" in server.log_text()
    assert chat(server, keep_alive=-1).status_code == 200
    assert loaded_modes(server) == {"generation"} and loaded_modes(server, EMBED) == set()


def test_queue_overflow_is_503_with_retry_after(server: RunningServer) -> None:
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=LONG, timeout=120) as busy:
        assert busy.status_code == 200
        events = content_events(busy.iter_lines())
        next(events)
        next(events)  # the model is generating now
        r = chat(server)
        assert r.status_code == 503
        assert int(r.headers["retry-after"]) >= 1
        err = r.json()["error"]
        assert err["code"] == "queue_full" and "waiting" in err["message"]
        client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="x", max_retries=0)
        with pytest.raises(openai.APIStatusError) as exc:
            client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": "Hi"}], max_tokens=2
            )
        assert exc.value.status_code == 503
        # Another model would not fit next to the busy one: refused too, not queued forever.
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": EMBED, "input": "x"})
        assert r.status_code == 503 and "retry-after" in r.headers
        # The busy model's own embeddings wait in its queue like a chat (depth 0 here).
        r = httpx.post(f"{server.url}/v1/embeddings", json={"model": MODEL, "input": "x"})
        assert r.status_code == 503 and r.json()["error"]["code"] == "queue_full"
        assert next(events)["choices"][0]["finish_reason"] is None  # still going
    assert wait_until(lambda: idle(server))
    assert chat(server).status_code == 200


def test_stream_disconnect_stops_generation(server: RunningServer) -> None:
    assert wait_until(lambda: idle(server))
    before = metrics(server)
    received = 0
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=LONG, timeout=120) as r:
        for event in content_events(r.iter_lines()):
            if event["choices"] and event["choices"][0]["delta"].get("content"):
                received += 1
            if received == 5:
                break  # leaving the block closes the connection
    assert wait_until(lambda: idle(server)), "the generation kept the model busy"
    after = metrics(server)
    generated = metric(after, "locara_completion_tokens_total", model=MODEL) - metric(
        before, "locara_completion_tokens_total", model=MODEL
    )
    # 450 tokens were allowed and 300 items required: it stopped right after the client left.
    assert received <= generated <= received + 10
    cancelled = dict(surface="openai", model=MODEL, status="cancelled")
    assert (
        metric(after, "locara_requests_total", **cancelled)
        == metric(before, "locara_requests_total", **cancelled) + 1
    )
    assert chat(server).status_code == 200  # and the model serves the next request


def test_non_streaming_disconnect_stops_generation(server: RunningServer) -> None:
    assert wait_until(lambda: idle(server))
    before = metrics(server)
    with pytest.raises(httpx.ReadTimeout):
        httpx.post(f"{server.url}/v1/chat/completions", json={**LONG, "stream": False}, timeout=1.5)
    assert wait_until(lambda: idle(server)), "the generation kept the model busy"
    generated = metric(metrics(server), "locara_completion_tokens_total", model=MODEL) - metric(
        before, "locara_completion_tokens_total", model=MODEL
    )
    assert 0 < generated < 400  # would be 450 had it run to the end


def test_ollama_stream_disconnect_stops_generation(server: RunningServer) -> None:
    assert wait_until(lambda: idle(server))
    before = metrics(server)
    body = {
        "model": MODEL,
        "messages": LONG["messages"],
        "format": LONG["response_format"]["json_schema"]["schema"],  # type: ignore[index]
        "options": {"num_predict": 450},
    }
    with httpx.stream("POST", f"{server.url}/api/chat", json=body, timeout=120) as r:
        lines = r.iter_lines()
        for _ in range(5):
            assert json.loads(next(lines))["done"] is False
    assert wait_until(lambda: idle(server))
    generated = metric(metrics(server), "locara_completion_tokens_total", model=MODEL) - metric(
        before, "locara_completion_tokens_total", model=MODEL
    )
    assert 5 <= generated <= 15


def test_workers_end_with_a_server_killed_by_sigkill(tmp_path: Path) -> None:
    """A server that cannot clean up (kill -9) leaves no llama-server behind holding memory."""
    import os
    import signal

    import psutil

    with running_server(tmp_path / "home", {"LOCARA_CTX": str(CTX)}) as s:
        assert chat(s).status_code == 200
        workers = [
            p for p in psutil.Process(s.proc.pid).children(recursive=True)
            if p.name() == "llama-server"
        ]  # fmt: skip
        assert len(workers) == 1
        os.kill(s.proc.pid, signal.SIGKILL)
        s.proc.wait(10)
        assert wait_until(lambda: not workers[0].is_running() or workers[0].status() == "zombie")
