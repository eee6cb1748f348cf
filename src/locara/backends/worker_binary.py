"""Finding llama.cpp's ``llama-server`` binary, and refusing one of the wrong build.

Two places, in order: ``LOCARA_LLAMA_SERVER=/path`` (read when called, never at import),
then the copy ``scripts/install.sh`` puts inside the virtualenv
(``<venv>/libexec/locara/llama-server``, beside its shared libraries). Whichever is
found must report the llama.cpp commit vendored in the pinned llama-cpp-python, so
the worker and the in-process backend run the same llama.cpp: another build may
parse requests or name its flags differently. No binary at all is not an error for
the caller that can fall back to in-process llama-cpp-python (``available()``);
a wrong one named explicitly always is.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from locara import SPIN_COUNT
from locara.errors import BackendUnavailableError

ENV_VAR = "LOCARA_LLAMA_SERVER"
# The llama.cpp commit vendored in llama-cpp-python 0.3.36 (pinned in pyproject.toml);
# `llama-server --version` prints "version: 0.5.0-dev (build 1, commit 0c1e570)".
# Moves with that pin.
LLAMA_CPP_COMMIT = "0c1e570"
_INSTALL_HINT = "run ./scripts/install.sh (it builds llama-server from the pinned llama.cpp)"
_VERSION_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class WorkerBinary:
    """A checked ``llama-server``: where it is, what it reported, and who chose it."""

    path: Path
    version: str  # the "version: ..." line of `llama-server --version`
    source: Literal["env", "install"]

    @property
    def lib_dir(self) -> Path:
        """The directory of its shared libraries (install.sh keeps them beside it)."""
        return self.path.parent


def installed_path() -> Path:
    """Where ``scripts/install.sh`` puts llama-server: inside the running virtualenv."""
    return Path(sys.prefix) / "libexec" / "locara" / "llama-server"


# (path, size, mtime) -> version line; a rebuilt or replaced file is checked again.
_checked: dict[tuple[str, int, int], str] = {}


def _version(path: Path, source: str) -> str:
    where = f"{ENV_VAR}={path}" if source == "env" else str(path)
    fix = (
        f"unset {ENV_VAR} to use the llama-server ./scripts/install.sh builds, or point it "
        f"at a llama-server built from llama.cpp {LLAMA_CPP_COMMIT}"
        if source == "env"
        else _INSTALL_HINT
    )
    try:
        st = path.stat()
    except FileNotFoundError:
        raise BackendUnavailableError(f"{where}: no such file", fix) from None
    except OSError as exc:
        raise BackendUnavailableError(f"{where}: cannot read it ({exc.strerror})", fix) from exc
    if not path.is_file():
        raise BackendUnavailableError(f"{where}: not a file", fix)
    if not os.access(path, os.X_OK):
        raise BackendUnavailableError(
            f"{where}: not executable", f"chmod +x {path}, or {fix}" if source == "env" else fix
        )
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key in _checked:
        return _checked[key]
    try:
        proc = subprocess.run(
            [str(path), "--version"],
            capture_output=True,
            text=True,
            errors="replace",
            timeout=_VERSION_TIMEOUT_S,
            env=_library_env(path.parent),
            stdin=subprocess.DEVNULL,
        )
    except (OSError, subprocess.SubprocessError) as exc:
        raise BackendUnavailableError(f"{where}: cannot run it ({exc})", fix) from exc
    # llama-server prints its build on stderr; take the line wherever it is.
    lines = (proc.stderr + "\n" + proc.stdout).splitlines()
    line = next((x.strip() for x in lines if x.strip().startswith("version:")), "")
    if proc.returncode != 0 or not line:
        said = line or next((x.strip() for x in lines if x.strip()), "nothing")
        raise BackendUnavailableError(
            f"{where}: `--version` failed (exit {proc.returncode}: {said[:120]})", fix
        )
    if f"commit {LLAMA_CPP_COMMIT}" not in line:
        raise BackendUnavailableError(
            f"{where} reports {line[:120]!r}; Locara needs llama.cpp {LLAMA_CPP_COMMIT}", fix
        )
    _checked[key] = line
    return line


def _library_env(lib_dir: Path) -> dict[str, str]:
    """The environment for running llama-server: its shared libraries found beside it.

    install.sh links with an $ORIGIN RPATH, so this is only a second line of defence,
    for binaries built elsewhere whose libraries sit next to them.
    """
    env = dict(os.environ)
    var = "DYLD_LIBRARY_PATH" if sys.platform == "darwin" else "LD_LIBRARY_PATH"
    env[var] = os.pathsep.join(p for p in (str(lib_dir), env.get(var, "")) if p)
    return env


def locate_llama_server(env: Mapping[str, str] | None = None) -> WorkerBinary:
    """The llama-server to run, version-checked; BackendUnavailableError says how to get one.

    ``env`` defaults to ``os.environ`` (read now). ``LOCARA_LLAMA_SERVER`` wins when set,
    and a missing, non-executable or wrong-version file there is an error rather than a
    silent fallback: the user asked for that binary.
    """
    env = os.environ if env is None else env
    override = env.get(ENV_VAR, "").strip()
    if override:
        path = Path(override).expanduser()
        return WorkerBinary(path, _version(path, "env"), "env")
    path = installed_path()
    if not path.exists():
        raise BackendUnavailableError(
            f"llama-server is not installed (looked for {path})", _INSTALL_HINT
        )
    return WorkerBinary(path, _version(path, "install"), "install")


def worker_environment(binary: WorkerBinary) -> dict[str, str]:
    """The environment a llama-server worker runs in (without its API key).

    ``GOMP_SPINCOUNT``: llama.cpp's OpenMP threads otherwise spin for a long while at
    every wait, and on a machine where anything else runs that made decoding up to 80x
    slower (measured on 2 cores with one other busy process).
    """
    env = _library_env(binary.lib_dir)
    # llama-server reads LLAMA_ARG_* (and LLAMA_API_KEY) as defaults for its flags; a
    # stray one in the user's shell must not change what the plan decided.
    for name in [k for k in env if k.startswith("LLAMA_ARG_") or k == "LLAMA_API_KEY"]:
        del env[name]
    # Spin briefly, then sleep (see locara.SPIN_COUNT); the user's own setting wins.
    env.setdefault("GOMP_SPINCOUNT", SPIN_COUNT)
    return env
