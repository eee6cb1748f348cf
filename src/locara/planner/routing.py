"""Which backend runs a model: a fixed rule, refined by measured speed.

Apple Silicon + an MLX artifact + MLX installed → MLX, unless the request needs a
feature only llama.cpp has; else llama.cpp. When ``locara bench`` measured both on this
device and the other one generated more than 10% faster, it goes first. The planner
(``locara.planner.plan``) is the only caller.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from locara.device.profile import DeviceProfile
from locara.planner.results import BenchResult, best_measured
from locara.registry.manifest import Artifact, ModelManifest

# Request features only llama.cpp serves, and why MLX cannot.
LLAMA_CPP_ONLY_FEATURES: dict[str, str] = {
    "json_schema": "json_schema output needs llama.cpp grammars; MLX cannot constrain output",
    "grammar": "grammars are llama.cpp's; MLX cannot constrain output",
    "embeddings": "embeddings run on llama.cpp only",
    "logprobs": "token logprobs come from llama.cpp only",
    "lora": "LoRA adapters run on llama.cpp only",
}


@dataclass
class Routing:
    """Backends to try, best first; why; and those that cannot run the model here."""

    order: list[str] = field(default_factory=list)
    reasons: list[str] = field(default_factory=list)
    unusable: list[tuple[str, str]] = field(default_factory=list)  # (backend, why)


def artifacts_for(
    manifest: ModelManifest, backend: str, asked: str | None = None
) -> tuple[Artifact, ...]:
    """The artifacts ``backend`` can run; ``asked`` is the backend the caller insisted on."""
    if backend == "llama_cpp":
        return manifest.artifact_list("llama_cpp")
    # MLX reads GGUF files too: a GGUF-only model runs on MLX when MLX is asked for.
    mlx = manifest.artifact_list("mlx")
    return mlx if mlx or asked != "mlx" else manifest.artifact_list("llama_cpp")


def route(
    manifest: ModelManifest,
    device: DeviceProfile,
    features: Iterable[str] = (),
    asked: str | None = None,
    results: Sequence[BenchResult] = (),
) -> Routing:
    """The backends that can run ``manifest`` here, in the order the planner tries them."""
    out = Routing()
    needs = sorted(features)
    usable: list[str] = []
    for backend in ("mlx", "llama_cpp"):
        if not artifacts_for(manifest, backend, asked):
            continue
        why = _unusable(backend, device, needs)
        if asked and asked != backend:
            why = why or f"--backend {asked} was requested"
        if why:
            out.unusable.append((backend, why))
        else:
            usable.append(backend)
    if len(usable) < 2:
        if usable and not asked:  # an asked-for backend is the plan's override, said there
            out.reasons.append(f"only {usable[0]} can run this model here")
        out.order = usable
        return out
    if device.is_apple_silicon:
        out.order = ["mlx", "llama_cpp"]
        out.reasons.append("Apple Silicon with an MLX artifact: MLX first")
    else:
        out.order = ["llama_cpp", "mlx"]
        out.reasons.append("not Apple Silicon: llama.cpp first")
    mlx_m = best_measured(results, manifest.id, "mlx")
    llama_m = best_measured(results, manifest.id, "llama_cpp")
    if mlx_m and llama_m:
        fast, slow = (mlx_m, llama_m) if mlx_m.tg_tps > llama_m.tg_tps else (llama_m, mlx_m)
        if fast.tg_tps > slow.tg_tps * 1.1:
            out.order = [fast.backend, slow.backend]
            out.reasons.append(
                f"measured on this device: {fast.backend} {fast.tg_tps:.1f} tok/s vs "
                f"{slow.backend} {slow.tg_tps:.1f} tok/s, so {fast.backend} first"
            )
    return out


def _unusable(backend: str, device: DeviceProfile, features: list[str]) -> str:
    if backend not in device.supported_runtimes:
        return f"{backend} is not installed on this device (pip install 'locara[mlx]')"
    if backend == "mlx":
        for feature in features:
            if feature in LLAMA_CPP_ONLY_FEATURES:
                return LLAMA_CPP_ONLY_FEATURES[feature]
    return ""
