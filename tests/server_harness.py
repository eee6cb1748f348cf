"""Start the real ``locara serve`` in a subprocess on a free loopback port, as users do."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class RunningServer:
    url: str
    port: int
    home: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")


def server_env(home: Path, extra: dict[str, str] | None = None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env.update({"LOCARA_HOME": str(home), **(extra or {})})
    return env


@contextmanager
def running_server(
    home: Path,
    env: dict[str, str] | None = None,
    host: str = "127.0.0.1",
    port: int | None = None,
    args: Sequence[str] = (),
    launcher: Sequence[str] = ("-m", "locara"),
) -> Iterator[RunningServer]:
    """``locara serve`` against ``home`` until the block ends; fails with the log if it dies.

    ``port`` reuses an address (a restarted server); by default a free one is picked.
    ``args`` are more ``serve`` options; ``launcher`` replaces ``-m locara`` (a wrapper
    script that runs Locara's CLI under a guard).
    """
    port = port or free_port()
    log = home.parent / f"server-{port}.log"
    with log.open("wb") as out:
        proc = subprocess.Popen(
            [sys.executable, *launcher, "serve", "--host", host, "--port", str(port), *args],
            env=server_env(home, env),
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", port, home, proc, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"server exited ({proc.returncode}):\n{server.log_text()}")
            try:
                if httpx.get(f"{server.url}/health", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"server did not start:\n{server.log_text()}")
            time.sleep(0.1)
        yield server
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def clone_home(shared_home: Path, dest: Path) -> Path:
    """A private home whose store holds the default model: blobs hardlinked, the rest copied.

    Databases and meta files are copied so the clone's writes never reach the shared home.
    """

    def copy(src: str, dst: str) -> None:
        if src.endswith(".gguf"):
            os.link(src, dst)
        else:
            shutil.copy2(src, dst)

    shutil.copytree(shared_home, dest, copy_function=copy)
    return dest


def wait_until(predicate: object, timeout: float = 30.0, interval: float = 0.1) -> bool:
    """Poll ``predicate()`` until it is true; False if ``timeout`` passes first."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(interval)
    return bool(predicate())


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one Prometheus sample (0.0 when absent)."""
    want = ",".join(f'{k}="{v}"' for k, v in labels.items())
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        key, _, value = line.rpartition(" ")
        if key == name or (
            want
            and key.startswith(name + "{")
            and all(f'{k}="{v}"' in key for k, v in labels.items())
        ):
            return float(value)
    return 0.0


def endless_stream(model: str, max_tokens: int, min_items: int = 300) -> dict[str, object]:
    """A streamed chat request that cannot end before ``max_tokens``: its JSON schema
    demands ``min_items`` numbers (about four tokens each), so "still generating" never
    depends on timing."""
    return {
        "model": model,
        "messages": [{"role": "user", "content": "List numbers."}],
        "max_tokens": max_tokens,
        "stream": True,
        "response_format": {
            "type": "json_schema",
            "json_schema": {
                "name": "numbers",
                "schema": {"type": "array", "items": {"type": "integer"}, "minItems": min_items},
            },
        },
    }
