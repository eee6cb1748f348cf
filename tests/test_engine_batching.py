"""Concurrent requests to one loaded model share a llama-server worker's slots.

Through the real server, with the real worker and the bundled model: eight streams
overlap (each has produced tokens before any finishes), each gets its own prompt's
greedy answer, cancelling one leaves the others running, and a worker killed
mid-stream ends that stream with an error event while the next request gets a
fresh worker. Order of events is asserted, never durations.
"""

from __future__ import annotations

import json
import os
import re
import signal
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psutil
import pytest

from locara.backends.registry import llama_server_installed
from server_harness import RunningServer, clone_home, metric, running_server, wait_until

MODEL = "smollm2-135m-instruct"
SLOTS = 8
# Raw completions whose continuation is all but certain, one per stream: an answer that
# continues another stream's sequence would be cross-talk between slots.
SEQUENCES = {
    "1, 2, 3, 4, 5,": "6",
    "10, 20, 30, 40,": "50",
    "a, b, c, d,": "e",
    "Monday, Tuesday, Wednesday,": "Thursday",
    "January, February, March,": "April",
    "2, 4, 6, 8,": "10",
    "one, two, three, four,": "five",
    "Mercury, Venus, Earth,": "Mars",
}
PROMPTS = list(SEQUENCES)

pytestmark = pytest.mark.skipif(
    not llama_server_installed(), reason="llama-server is not built (./scripts/install.sh)"
)


@pytest.fixture(scope="module")
def server(shared_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    home = clone_home(shared_home, tmp_path_factory.mktemp("batching") / "home")
    env = {"LOCARA_NUM_PARALLEL": str(SLOTS), "LOCARA_CTX": "1024"}
    with running_server(home, env) as s:
        yield s


def body(prompt: str, max_tokens: int = 24, stream: bool = True) -> dict[str, Any]:
    return {
        "model": MODEL,
        "prompt": prompt,
        "temperature": 0,
        "seed": 1,
        "max_tokens": max_tokens,
        "stream": stream,
    }


def solo(server: RunningServer, prompt: str, max_tokens: int = 24) -> str:
    r = httpx.post(
        f"{server.url}/v1/completions", json=body(prompt, max_tokens, stream=False), timeout=120
    )
    assert r.status_code == 200, r.text
    return str(r.json()["choices"][0]["text"])


class Timeline:
    """A global order of events across threads: (stream, what) in the order they happened."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.events: list[tuple[int, str]] = []

    def add(self, stream: int, what: str) -> None:
        with self.lock:
            self.events.append((stream, what))

    def index(self, stream: int, what: str) -> int:
        return self.events.index((stream, what))


def stream_answer(
    server: RunningServer,
    i: int,
    prompt: str,
    timeline: Timeline,
    out: dict[int, Any],
    stop_after_first: threading.Event | None = None,
    start: threading.Barrier | None = None,
    max_tokens: int = 24,
) -> None:
    text: list[str] = []
    finish = None
    if start is not None:
        start.wait()  # every stream is sent at once
    payload = body(prompt, max_tokens)
    with httpx.stream("POST", f"{server.url}/v1/completions", json=payload, timeout=300) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            event = json.loads(line[len("data: ") :])
            if "error" in event:
                out[i] = ("error", event["error"])
                return
            choice = event["choices"][0]
            piece = choice.get("text") or ""
            if piece and not "".join(text):
                timeline.add(i, "first")
                if stop_after_first is not None:
                    stop_after_first.set()
                    out[i] = ("cancelled", piece)
                    return  # closing the stream cancels the request
            text.append(piece)
            finish = choice.get("finish_reason") or finish
    timeline.add(i, "done")
    out[i] = ("ok", "".join(text), finish)


def test_eight_streams_overlap_and_each_gets_its_own_answer(server: RunningServer) -> None:
    solos = {i: solo(server, p) for i, p in enumerate(PROMPTS)}
    timeline = Timeline()
    out: dict[int, Any] = {}
    start = threading.Barrier(SLOTS)
    threads = [
        threading.Thread(target=stream_answer, args=(server, i, p, timeline, out, None, start, 48))
        for i, p in enumerate(PROMPTS)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert all(out[i][0] == "ok" for i in range(SLOTS)), out
    # Every stream produced tokens before any stream that used its whole budget finished:
    # they ran together. (A sequence that ends by itself — the alphabet, the weekdays — may
    # stop after a few tokens, before a stream sent last has reached the worker.)
    full = [i for i in range(SLOTS) if out[i][2] == "length"]
    assert len(full) >= SLOTS // 2, out
    first_done = min(timeline.index(i, "done") for i in full)
    last_first = max(timeline.index(i, "first") for i in range(SLOTS))
    assert last_first < first_done, (timeline.events, out)
    for i, prompt in enumerate(PROMPTS):
        # Each goes on with its own sequence's next item, as it did alone: another
        # stream's tokens in its slot would have put some other word here.
        assert next_item(out[i][1]) == SEQUENCES[prompt] == next_item(solos[i]), (
            prompt,
            out[i][1],
            solos[i],
        )


def next_item(answer: str) -> str:
    """The first word of a continuation (after an "and"): the sequence's next item."""
    found = re.match(r"\s*(?:and\s+)?(\w+)", answer)
    return found.group(1) if found else ""


def test_cancelling_one_stream_leaves_the_others_running(server: RunningServer) -> None:
    timeline = Timeline()
    out: dict[int, Any] = {}
    leaver = threading.Event()
    threads = [
        threading.Thread(
            target=stream_answer,
            args=(server, i, p, timeline, out, leaver if i == 0 else None),
        )
        for i, p in enumerate(PROMPTS[:4])
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert out[0][0] == "cancelled"
    for i in range(1, 4):
        assert out[i][0] == "ok" and out[i][1], out[i]
    # The ledger's view, through /metrics: exactly one cancelled request so far.
    text = httpx.get(f"{server.url}/metrics").text
    assert wait_until(
        lambda: 'status="cancelled"' in httpx.get(f"{server.url}/metrics").text, timeout=30
    ), text


def _worker_pids(server: RunningServer) -> list[int]:
    children = psutil.Process(server.proc.pid).children(recursive=True)
    return [p.pid for p in children if "llama-server" in " ".join(p.cmdline())]


def test_a_worker_killed_mid_stream_ends_it_with_an_error_and_is_replaced(
    server: RunningServer,
) -> None:
    assert solo(server, PROMPTS[0], 4)  # the model (and its worker) is loaded
    pids = _worker_pids(server)
    assert len(pids) == 1
    events: list[dict[str, Any]] = []
    with httpx.stream(
        "POST",
        f"{server.url}/v1/completions",
        json=body("1, 2, 3,", max_tokens=900),
        timeout=120,
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            events.append(json.loads(line[len("data: ") :]))
            if len(events) == 3:
                os.kill(pids[0], signal.SIGKILL)
    errors = [e["error"] for e in events if "error" in e]
    assert errors, events[-3:]
    assert "died" in errors[0]["message"] or "llama-server" in errors[0]["message"]
    # The next request gets a fresh worker and a real answer; the server stayed up.
    assert "6" in solo(server, PROMPTS[0], 4)
    new = _worker_pids(server)
    assert len(new) == 1 and new != pids
    assert server.proc.poll() is None


@pytest.fixture(scope="module")
def long_ctx_server(
    shared_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    home = clone_home(shared_home, tmp_path_factory.mktemp("long-prompt") / "home")
    env = {"LOCARA_NUM_PARALLEL": "1", "LOCARA_CTX": "8192"}
    with running_server(home, env) as s:
        yield s


def test_a_client_gone_during_a_long_prompt_stops_it_before_any_token(
    long_ctx_server: RunningServer,
) -> None:
    """The prompt is evaluated batch by batch; leaving in the middle ends it there."""
    import socket
    import sqlite3

    server = long_ctx_server
    # ~7,000 prompt tokens: seconds of prompt work in 14 batches before the first token.
    prompt = " ".join(f"item{i}," for i in range(1300))
    payload = json.dumps(body(prompt, max_tokens=8)).encode()

    def in_flight() -> float:
        text = httpx.get(f"{server.url}/metrics").text
        return metric(text, "locara_in_flight_requests", model=MODEL, mode="generation")

    assert wait_until(lambda: in_flight() == 0)
    with socket.create_connection(("127.0.0.1", server.port)) as s:
        s.sendall(
            b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\n"
            + f"Content-Length: {len(payload)}\r\n\r\n".encode()
            + payload
        )
        # Leave once the request holds the model, i.e. while its prompt is evaluated.
        assert wait_until(lambda: in_flight() == 1, interval=0.02)
    # Gone before any answer: the ledger records it as cancelled, with no token generated.

    def row() -> tuple[str, int] | None:
        try:
            with sqlite3.connect(server.home / "usage.db") as conn:
                got = conn.execute(
                    "SELECT status, completion_tokens FROM requests WHERE prompt_tokens > 5000 "
                    "ORDER BY ts DESC LIMIT 1"
                ).fetchone()
        except sqlite3.OperationalError:  # no request recorded yet: no table yet
            return None
        return (str(got[0]), int(got[1])) if got else None

    assert wait_until(lambda: row() is not None, timeout=60)
    assert row() == ("cancelled", 0)
