"""Starting a server under test, the same way for every benchmark script."""

from __future__ import annotations

import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from typing import IO

import httpx


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(
    name: str, cmd: list[str], env: dict[str, str], url: str, probe: str
) -> Iterator[tuple[int, IO[bytes]]]:
    """Run ``cmd`` until ``url + probe`` answers 200; yield (pid, its log); stop it after.

    Every server gets a session of its own, as Locara starts its worker: Linux's autogroup
    scheduler shares the CPU between sessions, so a server left in the script's session
    (with the client, and often the rest of the machine's work) would get a smaller share
    than Locara's worker on a busy machine, and the ratios would measure that.
    """
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(
            cmd,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        try:
            deadline = time.monotonic() + 180
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"{name} exited:\n{log.read().decode(errors='replace')}")
                with suppress(httpx.HTTPError):
                    if httpx.get(url + probe, timeout=2).status_code == 200:
                        break
                if time.monotonic() > deadline:
                    raise SystemExit(f"{name} did not start within 180 s")
                time.sleep(0.2)
            yield proc.pid, log
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
