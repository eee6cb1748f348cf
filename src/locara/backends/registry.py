"""Backends by name: ``llama_cpp`` and ``mlx``, looked up without importing their engines.

``get_backend(name)`` is what the loader, the CLI's ``--backend`` option and the
planner call. An unknown name lists the known ones; a known backend whose engine is
not installed raises ``BackendUnavailableError`` with the install command.
"""

from __future__ import annotations

import importlib
import platform
from collections.abc import Iterable
from typing import TYPE_CHECKING

from locara.backends.base import Availability, Backend
from locara.errors import BackendUnavailableError, UsageError

if TYPE_CHECKING:
    from locara.registry.manifest import ModelManifest

# name -> (module, class, how to install it). Modules import their engines lazily.
_BACKENDS: dict[str, tuple[str, str, str]] = {
    "llama_cpp": ("locara.backends.llama_cpp", "LlamaCppBackend", "./scripts/install.sh"),
    "mlx": ("locara.backends.mlx", "MlxBackend", "pip install 'locara[mlx]'"),
}
# Manifests key artifacts by "llamacpp"; users and the planner may say either.
_ALIASES = {"llamacpp": "llama_cpp", "llama.cpp": "llama_cpp", "llama-cpp": "llama_cpp"}

BACKEND_NAMES = tuple(_BACKENDS)


def canonical_name(name: str) -> str:
    """``llamacpp``/``llama.cpp`` → ``llama_cpp``; unknown names are a UsageError."""
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in _BACKENDS:
        raise UsageError(f"unknown backend {name!r}", f"choose one of: {', '.join(BACKEND_NAMES)}")
    return key


def manifest_key(name: str) -> str:
    """The key a manifest's ``artifacts`` uses for this backend (``llamacpp``, ``mlx``)."""
    return "llamacpp" if canonical_name(name) == "llama_cpp" else canonical_name(name)


def _instance(name: str) -> Backend:
    module, cls, _ = _BACKENDS[name]
    backend: Backend = getattr(importlib.import_module(module), cls)()
    return backend


def availability(name: str) -> Availability:
    """Whether the backend can run here; never raises for a known name."""
    return _instance(canonical_name(name)).available()


def get_backend(name: str) -> Backend:
    """The backend called ``name``, ready to ``load()``; raises if it cannot run here."""
    key = canonical_name(name)
    backend = _instance(key)
    status = backend.available()
    if not status.ok:
        raise BackendUnavailableError(
            f"the {key} backend is not available: {status.reason}",
            f"install it with: {_BACKENDS[key][2]}",
        )
    return backend


def available_backends() -> list[str]:
    """Names of the backends that can run on this machine."""
    return [n for n in BACKEND_NAMES if _instance(n).available().ok]


# Request features only llama.cpp serves; MLX refuses them (UnsupportedFeatureError).
LLAMA_CPP_ONLY_FEATURES = frozenset({"json_schema", "embeddings", "logprobs", "grammar", "lora"})


def preferred_backend(
    manifest: ModelManifest,
    needs: Iterable[str] = (),
    *,
    system: str | None = None,
    machine: str | None = None,
    mlx_ok: bool | None = None,
) -> str:
    """The default rule of SPEC §4, before benchmarks refine it.

    Apple Silicon (Darwin/arm64) + an MLX artifact in the manifest + MLX installed →
    ``"mlx"``, unless the request needs a feature only llama.cpp has (JSON schema,
    embeddings, logprobs, LoRA); everything else → ``"llama_cpp"``. On Linux MLX is
    used only when asked for (``--backend mlx``) or when measured benchmarks say so,
    which is the planner's call on top of this.
    """
    system = system or platform.system()
    machine = machine or platform.machine()
    if system != "Darwin" or machine not in ("arm64", "aarch64"):
        return "llama_cpp"
    if not manifest.artifact_list("mlx") or LLAMA_CPP_ONLY_FEATURES.intersection(needs):
        return "llama_cpp"
    if mlx_ok is None:
        mlx_ok = availability("mlx").ok
    return "mlx" if mlx_ok else "llama_cpp"
