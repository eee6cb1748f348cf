"""Backends by name: ``llama_cpp``, ``mlx``, ``faster_whisper`` (speech) and ``rapidocr``
(OCR), looked up without importing their engines.

``get_backend(name)`` is what the loader and the CLI's ``--backend`` option call;
which backend runs a model is the planner's decision (``locara.planner.routing``).
An unknown name lists the known ones; a known backend whose engine is not installed
raises ``BackendUnavailableError`` with the install command.
"""

from __future__ import annotations

import functools
import importlib
from pathlib import Path

from locara.backends.base import Backend
from locara.errors import BackendUnavailableError, UsageError

# name -> (module, class, how to install it). Modules import their engines lazily.
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "llama_cpp": ("locara.backends.llama_cpp", "LlamaCppBackend", "./scripts/install.sh"),
    "mlx": ("locara.backends.mlx", "MlxBackend", "pip install 'locara[mlx]'"),
    # How the llama_cpp backend runs generation when the plan says so (Plan.runtime).
    "llama_server": ("locara.backends.llama_server", "LlamaServerBackend", "./scripts/install.sh"),
    # Speech-to-text and OCR models (manifest modality stt / ocr).
    "faster_whisper": (
        "locara.backends.faster_whisper",
        "FasterWhisperBackend",
        "pip install 'locara[media]' (or ./scripts/install.sh)",
    ),
    "rapidocr": (
        "locara.backends.rapidocr",
        "RapidOcrBackend",
        "pip install 'locara[media]' && pip install --no-deps rapidocr-onnxruntime==1.4.4",
    ),
}
# What users type for llama.cpp; manifests and code say llama_cpp.
_ALIASES = {"llamacpp": "llama_cpp", "llama.cpp": "llama_cpp", "llama-cpp": "llama_cpp"}

# What a user may choose with --backend; llama_server is llama_cpp's runtime, not a choice.
BACKEND_NAMES = ("llama_cpp", "mlx")


def canonical_name(name: str) -> str:
    """``llamacpp``/``llama.cpp`` → ``llama_cpp``; unknown names are a UsageError."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"choose one of: {', '.join(BACKEND_NAMES)}")
    return key


def _instance(name: str, log_dir: Path | None = None) -> Backend:
    module, cls, _ = _BACKENDS[name]
    kind = getattr(importlib.import_module(module), cls)
    # Worker processes write a log of their own, beside the server's.
    backend: Backend = kind(log_dir=log_dir) if name == "llama_server" else kind()
    return backend


def get_backend(name: str, log_dir: Path | None = None) -> Backend:
    """The backend called ``name``, ready to ``load()``; raises if it cannot run here.

    ``llama_server`` (the plan's runtime for llama.cpp generation) is not checked here:
    its ``load()`` locates the binary and says what is wrong with it in one line.
    """
    key = name if name == "llama_server" else canonical_name(name)
    backend = _instance(key, log_dir)
    if key == "llama_server":
        return backend
    status = backend.available()
    if not status.ok:
        raise BackendUnavailableError(
            f"the {key} backend is not available: {status.reason}",
            f"install it with: {_BACKENDS[key][2]}",
        )
    return backend


@functools.cache
def llama_cpp_gpu_offload() -> bool:
    """Whether the installed llama.cpp build can put layers on a GPU; never raises.

    llama.cpp says so itself: ``llama_supports_gpu_offload()`` is true for a Metal,
    CUDA, ROCm or Vulkan build and false for a CPU-only one. The planner hears it from
    the loader, so a GPU plan on a CPU-only build falls back to the CPU and says so.
    Asked once per process: the build does not change while it runs.
    """
    try:
        import llama_cpp
    except ImportError:
        return False
    return bool(llama_cpp.llama_supports_gpu_offload())


def llama_server_installed() -> bool:
    """Whether llama.cpp generation runs in a llama-server worker here; never raises.

    True when ``scripts/install.sh`` built a llama-server of the right version, or when
    ``LOCARA_LLAMA_SERVER`` names one: a bad binary named there then fails the load with
    its own one-line error rather than falling back silently (the user asked for it).
    """
    import os

    from locara.backends.worker_binary import ENV_VAR, locate_llama_server

    if os.environ.get(ENV_VAR, "").strip():
        return True
    try:
        locate_llama_server()
    except BackendUnavailableError:
        return False
    return True
