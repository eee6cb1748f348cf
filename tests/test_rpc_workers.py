"""One model across several machines: llama.cpp RPC workers started by ``locara worker``.

The real thing on loopback: two ``locara worker`` processes (llama.cpp's ggml-rpc-server),
a ``locara serve`` whose plan offloads the bundled model's layers to them, and the same
greedy answer as a local load. A worker killed mid-answer fails that request cleanly and
the next request is planned again without it. As root, the same answer with each worker
in a network namespace of its own, at its own address (tests/netns.py). A worker of
another llama.cpp version and one that never answers are scripted sockets (the real
worker cannot be made to do that).
"""

from __future__ import annotations

import json
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import httpx
import psutil
import pytest

from locara.backends.rpc import parse_endpoints, probe
from locara.backends.worker_binary import installed_path
from locara.errors import BackendUnavailableError, UsageError
from locara.server.config import is_loopback
from netns import Namespaces, NamespacesUnavailable, namespaces
from server_harness import free_port, running_server, server_env, wait_until

MODEL = "smollm2-135m-instruct"
QUESTION = [{"role": "user", "content": "Name the capital city of France."}]

needs_rpc = pytest.mark.skipif(
    not (installed_path().parent / "ggml-rpc-server").exists(),
    reason="ggml-rpc-server is not built: run ./scripts/install.sh",
)


def _locara(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "locara", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )


# -- addresses and refusals ----------------------------------------------------------------


def test_worker_addresses_parse_and_bad_ones_are_refused() -> None:
    assert parse_endpoints(" 127.0.0.1:1, [::1]:2 ,127.0.0.1:1") == ("127.0.0.1:1", "[::1]:2")
    for bad in ("127.0.0.1", "host:0", "host:99999", ":50052", "a:b"):
        with pytest.raises(UsageError, match="invalid RPC worker address"):
            parse_endpoints(bad)


def test_a_worker_refuses_a_network_address_without_the_explicit_flag() -> None:
    r = _locara("worker", "--listen", "0.0.0.0:50052")
    assert r.returncode == 1
    assert "no authentication" in r.stderr and "--i-know-this-is-unauthenticated" in r.stderr
    r = _locara("worker", "--listen", "nonsense")
    assert r.returncode == 1 and "host:port" in r.stderr


def test_a_server_with_an_unreachable_worker_says_which(tmp_path: Path) -> None:
    port = free_port()  # nothing listens there
    env = server_env(tmp_path / "home", {"LOCARA_RPC": f"127.0.0.1:{port}"})
    r = _locara("plan", MODEL, env=env)
    assert r.returncode == 1
    assert f"RPC worker 127.0.0.1:{port} is unreachable" in r.stderr
    assert "locara worker --listen" in r.stderr


def _scripted_worker(reply: bytes | None) -> tuple[socket.socket, int]:
    """A socket that answers HELLO with ``reply`` (None: never answers)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen()

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            conn.recv(64)
            if reply is not None:
                conn.sendall(struct.pack("<Q", len(reply)) + reply)
            conn.recv(64)  # until the client goes

    threading.Thread(target=serve, daemon=True).start()
    return srv, srv.getsockname()[1]


def test_a_worker_of_another_llama_cpp_version_is_refused_with_both_versions() -> None:
    srv, port = _scripted_worker(bytes([6, 2, 0, 0]) + bytes(24))
    with srv, pytest.raises(BackendUnavailableError) as err:
        probe(f"127.0.0.1:{port}")
    assert "speaks RPC protocol 6.2.0" in err.value.message and "7.0" in err.value.message
    assert "same Locara version" in (err.value.hint or "")


def test_a_worker_that_never_answers_times_out_and_says_why() -> None:
    srv, port = _scripted_worker(None)
    with srv, pytest.raises(BackendUnavailableError, match="did not answer within 1 s"):
        probe(f"127.0.0.1:{port}", timeout_s=1.0)


# -- the real thing --------------------------------------------------------------------------


@dataclass
class Worker:
    endpoint: str
    proc: subprocess.Popen[bytes]


@contextmanager
def running_workers(
    log_dir: Path,
    endpoints: list[str],
    inside: Callable[[int, list[str]], list[str]],
    env: dict[str, str] | None = None,
) -> Iterator[list[Worker]]:
    """``locara worker --listen ENDPOINT`` for each endpoint, its argv wrapped by
    ``inside(index, argv)`` (a network namespace, or nothing), with ``env`` added to
    this environment, until every one listens."""
    started = []
    try:
        for i, endpoint in enumerate(endpoints):
            argv = [sys.executable, "-m", "locara", "worker", "--listen", endpoint]
            if not is_loopback(endpoint.rpartition(":")[0]):
                argv.append("--i-know-this-is-unauthenticated")
            with (log_dir / f"worker-{i}.log").open("wb") as log:
                proc = subprocess.Popen(
                    inside(i, argv),
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **(env or {})},
                )
            started.append(Worker(endpoint, proc))
        for w in started:
            assert wait_until(lambda e=w.endpoint: _listening(e), timeout=30), f"{w.endpoint} down"
        yield started
    finally:
        for w in started:
            if w.proc.poll() is None:
                w.proc.terminate()
                w.proc.wait(10)


@pytest.fixture
def workers(tmp_path: Path) -> Iterator[list[Worker]]:
    endpoints = [f"127.0.0.1:{free_port()}" for _ in range(2)]
    with running_workers(tmp_path, endpoints, lambda _, argv: argv) as started:
        yield started


@pytest.fixture(scope="module")
def local_answer(shared_home: Path) -> str:
    """The greedy answer of the bundled model loaded on this machine alone."""
    with running_server(shared_home) as local:
        r = _chat(local.url)
        assert r.status_code == 200, r.text
        answer: str = r.json()["choices"][0]["message"]["content"]
    assert "Paris" in answer
    return answer


def _listening(endpoint: str) -> bool:
    host, _, port = endpoint.rpartition(":")
    try:
        socket.create_connection((host, int(port)), timeout=1).close()
    except OSError:
        return False
    return True


def _chat(url: str, **extra: object) -> httpx.Response:
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 24, "temperature": 0, **extra}
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=180)


def _ps_rpc(url: str) -> list[str]:
    (m,) = httpx.get(f"{url}/api/ps").json()["models"]
    return list(m["locara"]["options"]["rpc_servers"])


def _assert_split_answer(url: str, workers: list[Worker], expected: str) -> None:
    """The server at ``url`` answers as the local load does, with the model on ``workers``."""
    idle_rss = [psutil.Process(w.proc.pid).memory_info().rss for w in workers]
    r = _chat(url)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == expected
    assert _ps_rpc(url) == [w.endpoint for w in workers]
    # Every worker holds a share of the weights (98 MB in all) and of the KV cache.
    grown = [
        psutil.Process(w.proc.pid).memory_info().rss - rss
        for w, rss in zip(workers, idle_rss, strict=True)
    ]
    assert all(g > 30e6 for g in grown), grown


@needs_rpc
def test_a_model_split_across_two_workers_answers_as_it_does_locally(
    tmp_path: Path, shared_home: Path, workers: list[Worker], local_answer: str
) -> None:
    endpoints = [w.endpoint for w in workers]
    plan = _locara(
        "plan", MODEL, "--json", env=server_env(shared_home, {"LOCARA_RPC": ",".join(endpoints)})
    )
    assert plan.returncode == 0, plan.stderr
    explained = json.loads(plan.stdout)
    assert explained["rpc"] == endpoints and explained["n_gpu_layers"] > 0
    assert any("RPC worker" in why and endpoints[1] in why for why in explained["reasons"])

    with running_server(tmp_path / "home", {"LOCARA_RPC": ",".join(endpoints)}) as split:
        _assert_split_answer(split.url, workers, local_answer)

        # A worker killed mid-answer: that request fails cleanly, and the next one is
        # planned again with the worker that still answers.
        kill = partial(os.kill, workers[0].proc.pid, signal.SIGKILL)
        error = _fail_mid_answer(split.url, kill, endpoints[1:], local_answer)
        assert "llama-server" in error
        assert split.proc.poll() is None


def _fail_mid_answer(
    url: str, mid_answer: Callable[[], None], remaining: list[str], answer: str
) -> str:
    """A long greedy stream that ``mid_answer()`` breaks after its third event ends with an
    error event (the client's 120 s read timeout fails the test if it hangs); the next
    request is planned again with the ``remaining`` workers and gives ``answer``.
    Returns the error event's message."""
    events = []
    body = {"model": MODEL, "messages": QUESTION, "max_tokens": 3000, "stream": True,
            "temperature": 0, "response_format": {"type": "json_object"}}  # fmt: skip
    with httpx.stream("POST", f"{url}/v1/chat/completions", json=body, timeout=120) as stream:
        for line in stream.iter_lines():
            if line.startswith("data: {"):
                events.append(json.loads(line[6:]))
                if len(events) == 3:
                    mid_answer()
    assert "error" in events[-1], events[-1]
    r = _chat(url)
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["content"] == answer
    assert _ps_rpc(url) == remaining
    return str(events[-1]["error"]["message"])


@pytest.fixture
def two_namespaces() -> Iterator[Namespaces]:
    with ExitStack() as stack:
        try:
            ns = stack.enter_context(namespaces(2))
        except NamespacesUnavailable as exc:
            pytest.skip(f"no network namespaces here: {exc}")
        yield ns


@pytest.mark.slow  # ~20 s: it waits out GGML_RPC_TIMEOUT and two probes of a dead link
@needs_rpc
def test_a_model_split_across_two_network_namespaces_answers_as_it_does_locally(
    tmp_path: Path, two_namespaces: Namespaces, local_answer: str
) -> None:
    """Two machines with their own addresses: each worker in its own network namespace,
    reached over a bridge, not loopback."""
    ns = two_namespaces
    endpoints = [f"{address}:50052" for address in ns.addresses]
    # Both ends of every RPC connection drop a peer silent for this long
    # (scripts/patches/llama-server-rpc-dead-peer.patch).
    timeout = {"GGML_RPC_TIMEOUT": "5"}
    env = {"LOCARA_RPC": ",".join(endpoints), **timeout}
    with running_workers(tmp_path, endpoints, ns.exec_argv, timeout) as workers:
        with running_server(tmp_path / "home", env) as split:
            _assert_split_answer(split.url, workers, local_answer)

            # A worker's link goes down mid-answer: nothing closes the connection (without
            # the patch llama-server would wait 16 min for TCP to give up). That request
            # fails cleanly, and the next one is planned again without the worker.
            down = partial(ns.set_link, 0, up=False)
            error = _fail_mid_answer(split.url, down, endpoints[1:], local_answer)
            assert "llama-server" in error

        # Planned afresh, a worker whose link is down is named as unreachable, not as
        # busy with another server.
        plan = _locara("plan", MODEL, env=server_env(tmp_path / "home", env))
        assert plan.returncode == 1
        assert f"RPC worker {endpoints[0]} is unreachable" in plan.stderr, plan.stderr
        assert "another server" not in plan.stderr

        # Its link back, the worker has dropped its vanished client and serves again.
        ns.set_link(0, up=True)
        assert wait_until(lambda: _serves(endpoints[0]), timeout=30)


def _serves(endpoint: str) -> bool:
    try:
        probe(endpoint, timeout_s=1.0)
    except BackendUnavailableError:
        return False
    return True
