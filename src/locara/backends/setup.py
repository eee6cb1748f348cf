"""What ``locara setup`` finds on this machine and what it would do to make it ready.

The engine needs llama.cpp twice, from one pinned commit: llama-cpp-python in process
(embeddings, bench, fallback) and llama.cpp's own ``llama-server`` as the generation
worker. ``scripts/install.sh`` builds both from source with this platform's flags. This
module checks the platform, finds what is installed (``worker_binary`` for the
server), and lists the steps still needed; a build needs a C/C++ compiler, CMake and
make or Ninja, and a missing one is named with the package that provides it here.
Nothing is installed by this module: the CLI shows the plan and runs it on ``--yes``.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import locara
from locara.backends.worker_binary import ENV_VAR, locate_llama_server
from locara.device.profile import DeviceProfile
from locara.errors import BackendUnavailableError, UsageError

# (os, arch) pairs llama.cpp and Locara are built and tested for.
SUPPORTED = {
    ("linux", "x86_64"),
    ("linux", "aarch64"),
    ("linux", "arm64"),
    ("darwin", "arm64"),
    ("darwin", "x86_64"),
}

# tool -> the programs any one of which provides it
TOOLS: dict[str, tuple[str, ...]] = {
    "C compiler": ("cc", "gcc", "clang"),
    "C++ compiler": ("c++", "g++", "clang++"),
    "cmake": ("cmake",),
    "make or ninja": ("make", "ninja"),
}

# distribution family -> (install command, package per tool)
_PACKAGES: dict[str, tuple[str, dict[str, str]]] = {
    "debian": (
        "sudo apt-get install",
        {"cmake": "cmake", "*": "build-essential"},
    ),
    "fedora": ("sudo dnf install", {"cmake": "cmake", "make or ninja": "make", "*": "gcc-c++"}),
    "arch": ("sudo pacman -S", {"cmake": "cmake", "*": "base-devel"}),
    "alpine": ("sudo apk add", {"cmake": "cmake", "*": "build-base"}),
    "suse": ("sudo zypper install", {"cmake": "cmake", "make or ninja": "make", "*": "gcc-c++"}),
}
_FAMILIES = {
    "debian": "debian",
    "ubuntu": "debian",
    "fedora": "fedora",
    "rhel": "fedora",
    "centos": "fedora",
    "arch": "arch",
    "alpine": "alpine",
    "suse": "suse",
    "opensuse": "suse",
}


@dataclass(frozen=True)
class Component:
    name: str
    ready: bool
    detail: str


@dataclass(frozen=True)
class SetupPlan:
    """What is installed, and the steps ``--yes`` would run (none: ready)."""

    platform: str
    accelerator: str
    components: tuple[Component, ...]
    steps: tuple[str, ...]
    script: Path


def install_script() -> Path:
    """``scripts/install.sh`` of the source tree this Locara runs from (editable install)."""
    return Path(locara.__file__).resolve().parents[2] / "scripts" / "install.sh"


def check_platform(profile: DeviceProfile) -> str:
    """``os arch`` of ``profile``; an unsupported one is an error naming what is supported."""
    os_name, arch = profile.os.lower(), profile.arch.lower()
    if (os_name, arch) not in SUPPORTED:
        hint = (
            "on Windows, run Locara inside WSL2 (Ubuntu)"
            if os_name == "windows"
            else "Locara runs on Linux (x86_64, aarch64) and macOS (arm64, x86_64)"
        )
        raise UsageError(f"unsupported platform: {os_name} {arch}", hint)
    return f"{os_name} {arch}"


def _accelerator(profile: DeviceProfile, env: Mapping[str, str]) -> str:
    kinds = {g.kind for g in profile.gpus}
    if "metal" in kinds or (profile.os.lower(), profile.arch.lower()) == ("darwin", "arm64"):
        return "Metal (Apple Silicon): the build enables it"
    if "cuda" in kinds:
        if shutil.which("nvcc", path=env.get("PATH", "")):
            return "CUDA (NVIDIA GPU, nvcc found): the build enables it"
        return (
            "NVIDIA GPU without the CUDA toolkit (nvcc): the build is CPU-only; "
            "install the CUDA toolkit first for GPU offload"
        )
    if "rocm" in kinds or "vulkan" in kinds:
        return (
            f"{'ROCm' if 'rocm' in kinds else 'Vulkan'} GPU: the default build is CPU-only; "
            "set LOCARA_CMAKE_ARGS (e.g. -DGGML_HIP=ON or -DGGML_VULKAN=ON) to build for it"
        )
    return "CPU only (no supported GPU found)"


def missing_tools(env: Mapping[str, str]) -> list[str]:
    """The build tools of ``TOOLS`` that no program on ``env``'s PATH provides."""
    path = env.get("PATH", "")
    return [
        tool for tool, progs in TOOLS.items() if not any(shutil.which(p, path=path) for p in progs)
    ]


def _family(os_release: Path) -> str | None:
    try:
        text = os_release.read_text(encoding="utf-8")
    except OSError:
        return None
    fields = dict(
        line.split("=", 1) for line in text.splitlines() if "=" in line and not line.startswith("#")
    )
    ids = [fields.get("ID", "").strip('"'), *fields.get("ID_LIKE", "").strip('"').split()]
    return next((_FAMILIES[i] for i in ids if i in _FAMILIES), None)


def install_hint(
    os_name: str, missing: list[str], os_release: Path = Path("/etc/os-release")
) -> str:
    """The command that installs ``missing`` build tools on this platform."""
    if os_name == "darwin":
        parts = []
        if any(t != "cmake" for t in missing):
            parts.append("xcode-select --install")
        if "cmake" in missing:
            parts.append("brew install cmake")
        return "install them with: " + " && ".join(parts)
    family = _family(os_release)
    if family is None:
        return (
            "install gcc or clang (C and C++), make and CMake 3.14 or newer with your "
            "package manager"
        )
    command, packages = _PACKAGES[family]
    names = sorted({packages.get(t, packages["*"]) for t in missing})
    return f"install them with: {command} {' '.join(names)}"


def plan_setup(
    profile: DeviceProfile, update: bool, env: Mapping[str, str] | None = None
) -> SetupPlan:
    """Check the platform and what is installed; list the steps still needed.

    A build step needs the tools of ``TOOLS``; a missing one is a BackendUnavailableError
    naming the package to install, before anything runs. A ``LOCARA_LLAMA_SERVER`` that
    does not work is an error too: the user chose that binary, setup will not replace it.
    """
    env = os.environ if env is None else env
    platform = check_platform(profile)
    components: list[Component] = []
    steps: list[str] = []
    script = install_script()
    in_process = importlib.util.find_spec("llama_cpp") is not None
    components.append(
        Component(
            "llama-cpp-python",
            in_process,
            "installed (in-process llama.cpp)" if in_process else "not installed",
        )
    )
    try:
        binary = locate_llama_server(env)
        components.append(Component("llama-server", True, f"{binary.path} ({binary.version})"))
    except BackendUnavailableError as exc:
        if env.get(ENV_VAR, "").strip():
            raise
        components.append(Component("llama-server", False, exc.message))
        binary = None
    if binary is None or not in_process or update:
        if binary is not None and in_process:
            steps.append(
                f"re-run {script}: it rebuilds llama-cpp-python and llama.cpp's llama-server "
                "if Locara's pinned llama.cpp or this platform's build flags changed, and "
                "reinstalls Locara's pinned packages"
            )
        else:
            steps.append(
                f"run {script}: build llama-cpp-python and llama.cpp's llama-server from the "
                "pinned sources with this platform's flags (7-13 minutes on 2 cores; later "
                "runs reuse the build), and install Locara's pinned packages"
            )
        missing = missing_tools(env)
        if missing:
            raise BackendUnavailableError(
                f"building llama.cpp needs {', '.join(missing)}, not found on PATH",
                install_hint(profile.os.lower(), missing),
            )
    return SetupPlan(platform, _accelerator(profile, env), tuple(components), tuple(steps), script)


def run_setup(plan: SetupPlan) -> None:
    """Run the plan's build steps: ``scripts/install.sh`` for this virtualenv."""
    if not plan.steps:
        return
    if not plan.script.is_file():
        raise BackendUnavailableError(
            f"the build script {plan.script} is not here (Locara was installed from a wheel)",
            "build from a source checkout: git clone the Locara repository, then run "
            "./scripts/install.sh",
        )
    env = {**os.environ, "VENV": sys.prefix, "PYTHON": sys.executable}
    result = subprocess.run(["bash", str(plan.script)], env=env, check=False)
    if result.returncode != 0:
        raise BackendUnavailableError(
            f"{plan.script} failed (exit {result.returncode})",
            "read the lines above for the failing step, fix it, then run: locara setup --yes",
        )
