"""Pulls in real subprocesses: kill -9 at several points, four at once, a full disk."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.settings import Settings
from locara.store.blobs import hash_file
from locara.store.fetch import partial_files
from loopback_server import LoopbackServer, write_manifest

PATH = "/org/repo/resolve/main/model.gguf"


@pytest.fixture
def server(default_gguf: Path) -> Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    srv.add(PATH, default_gguf)
    yield srv
    srv.stop()


@pytest.fixture
def reg(tmp_path: Path, server: LoopbackServer) -> Path:
    d = tmp_path / "reg"
    write_manifest(
        d, "loop", {"url": server.url + PATH, "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE}
    )
    return d


def _env(home: Path, reg: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LOCARA_", "HF_"))}
    env.update({"LOCARA_HOME": str(home), "LOCARA_REGISTRY_PATH": str(reg)})
    return env


def _spawn(home: Path, reg: Path, **kw: object) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "locara", "pull", "loop"],
        env=_env(home, reg),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        **kw,  # type: ignore[call-overload]
    )


def _wait_for(cond: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not cond():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not reached"
        time.sleep(0.02)


def _invariant(home: Path) -> None:
    """No wrong bytes under a content name, whatever state a crash left."""
    models = home / "models"
    for d in models.iterdir() if models.is_dir() else []:
        if d.name.startswith("."):
            continue
        for f in d.iterdir():
            if f.name != "meta.json":
                assert hash_file(f)[0] == d.name, f"{f} is not {d.name}"


@pytest.mark.slow
@pytest.mark.parametrize("at", [1, 50_000_000, DEFAULT_SIZE])
def test_kill_9_mid_pull_then_pull_again(
    tmp_path: Path, reg: Path, server: LoopbackServer, at: int
) -> None:
    home = tmp_path / "home"
    settings = Settings.from_env({"LOCARA_HOME": str(home)})
    server.fault(PATH, "stall", at=at, timeout=30)
    proc = _spawn(home, reg)
    try:

        def reached() -> bool:
            if (home / "models" / DEFAULT_SHA).exists():
                return True
            # the server has sent its bytes (the client may still hold the last few
            # in a buffer: whatever reached the disk is what a resume starts from)
            return bool(partial_files(settings, DEFAULT_SHA)) and server.sent(PATH) >= at

        _wait_for(reached)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.communicate()
    assert proc.returncode == -signal.SIGKILL
    _invariant(home)
    parts = partial_files(settings, DEFAULT_SHA)
    kept = parts[0].stat().st_size if parts else 0
    server.release.set()
    server.fault(PATH, "ok")
    before = len(server.requests(PATH))
    res = run_cli("pull", "loop", home=home, env={"LOCARA_REGISTRY_PATH": str(reg)})
    assert res.returncode == 0, res.stderr
    _invariant(home)
    assert hash_file(home / "models" / DEFAULT_SHA / "model.gguf")[0] == DEFAULT_SHA
    after = server.requests(PATH)[before:]
    if kept and kept < DEFAULT_SIZE:
        # the new pull resumed: one request for exactly the missing bytes
        (resumed,) = after
        assert resumed.range == f"bytes={kept}-"
        assert resumed.sent == DEFAULT_SIZE - kept
    elif kept == DEFAULT_SIZE:
        assert after == []  # everything was on disk: verified and placed, no request
    assert partial_files(settings, DEFAULT_SHA) == []


@pytest.mark.slow
def test_four_concurrent_pulls_download_once(
    tmp_path: Path, reg: Path, server: LoopbackServer
) -> None:
    home = tmp_path / "home"
    # ~2.5 s per download, so the four processes certainly overlap
    server.fault(PATH, "slow", rate=40_000_000)
    procs = [_spawn(home, reg) for _ in range(4)]
    outs = [p.communicate(timeout=120) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert DEFAULT_SHA in out
    gets = server.requests(PATH)
    assert len(gets) == 1 and gets[0].sent == DEFAULT_SIZE
    _invariant(home)
    assert partial_files(Settings.from_env({"LOCARA_HOME": str(home)}), DEFAULT_SHA) == []


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (20 << 20, 20 << 20))


def test_disk_full_leaves_no_partial_blob(tmp_path: Path, reg: Path) -> None:
    home = tmp_path / "home"
    proc = _spawn(home, reg, preexec_fn=_limit_file_size)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 1, (out, err)
    assert "cannot write" in err and "hint: free some disk space" in err
    assert not (home / "models" / DEFAULT_SHA).exists()
    assert partial_files(Settings.from_env({"LOCARA_HOME": str(home)}), DEFAULT_SHA) == []
    tmp = home / "models" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []


def test_disk_full_from_a_local_source(tmp_path: Path) -> None:
    # The bundled default model (package:// source) goes through the same checks.
    home = tmp_path / "home"
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env["LOCARA_HOME"] = str(home)
    proc = subprocess.run(
        [sys.executable, "-m", "locara", "pull", "smollm2-135m-instruct:Q4_1"],
        env=env,
        capture_output=True,
        text=True,
        preexec_fn=_limit_file_size,
        timeout=120,
    )
    assert proc.returncode == 1
    assert "free some disk space" in proc.stderr
    assert not (home / "models" / DEFAULT_SHA).exists()
    tmp = home / "models" / ".tmp"
    assert not tmp.exists() or list(tmp.iterdir()) == []
