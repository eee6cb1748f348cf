"""The planner: backend, artifact/quant, context, KV type, threads and GPU offload for a device.

``plan_model(manifest, device, request)`` never raises for a model that does not fit:
it returns a ``Plan`` with ``ok=False``, the reasons, and the nearest alternatives
(smaller quant, shorter context). Every artifact it considered and did not pick is
listed in ``rejected`` with the reason, which is what ``locara plan`` prints.

The rules, in order:

1. Backend (reference/000): Apple Silicon + an MLX artifact + MLX installed → MLX,
   else llama.cpp. Then benchmark results measured on this device override the rule
   when the other backend generated more than 10% faster.
2. Quant (reference/003): the device's memory class sets a ceiling — 8 GB → Q4_K_M,
   16 GB → Q5_K_M, 32 GB → Q6_K, 64 GB → Q8_0, 96 GB+ → F16 — and the planner takes the
   best quant at or under the ceiling that fits, else the smallest above it that fits.
   On battery below 20% the smallest quant that fits wins (fewer bytes per token).
   A quant that ``locara bench`` measured below 5 tok/s here gives way to one that
   fits and measured faster.
   Offline, an artifact that is neither stored nor on this machine is rejected.
3. Context: the request (default 4096), clamped to the model's trained context with a
   warning; if it does not fit, quantized KV (q8_0, then q4_0, with flash attention)
   before a shorter context, halving down to 512.
4. Offload: Metal (unified memory) offloads every layer; a discrete GPU takes as many
   layers as its memory holds (all when the whole model fits), the rest stays in RAM.
5. Threads: performance cores (half of them on battery below 20%).

Benchmark results (their record shape is documented in ``locara.planner.results``)
refine rules 1 and 2 when ``locara bench`` has measured this device.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from locara.device.fit import (
    FitEstimate,
    ModelShape,
    approximate_shape,
    cpu_repack_types,
    estimate_shape,
)
from locara.device.profile import DeviceProfile
from locara.errors import LocaraError
from locara.planner.budget import (
    QUANT_ORDER,
    USABLE_TPS,
    GiB,
    bandwidth_gbps,
    bits_per_weight,
    expected_tg_tps,
    gpu_budget,
    low_battery,
    quant_ceiling,
    quant_rank,
    ram_budget,
)
from locara.planner.results import BenchResult, best_measured
from locara.planner.results import read_bench_results as read_bench_results  # re-export
from locara.registry.manifest import Artifact, ModelManifest
from locara.settings import Settings

DEFAULT_CTX = 4096
MIN_CTX = 512
KV_TYPES = ("f16", "q8_0", "q4_0")
# Manifest backend keys -> backend names (the registry says "llamacpp").
BACKEND_OF = {"llamacpp": "llama_cpp", "mlx": "mlx"}


@dataclass(frozen=True)
class PlanRequest:
    """What the caller needs: a context length and features (embeddings, json_schema, …)."""

    n_ctx: int | None = None
    features: frozenset[str] = frozenset()
    backend: str | None = None  # force "llama_cpp" or "mlx"
    quant: str | None = None  # force one quant


@dataclass(frozen=True)
class Rejected:
    backend: str
    quant: str | None
    reason: str
    sha256: str | None = None
    needs_bytes: int | None = None  # the smallest configuration tried, when it did not fit


@dataclass(frozen=True)
class Plan:
    """The planner's answer for one model on one device; ``ok`` False means nothing fits."""

    model_id: str
    ok: bool
    backend: str | None = None
    artifact: Artifact | None = None
    n_ctx: int | None = None
    requested_ctx: int | None = None
    kv_type: str = "f16"
    flash_attn: bool = False
    n_threads: int | None = None
    n_gpu_layers: int = 0
    estimate: FitEstimate | None = None
    budget_bytes: int = 0
    gpu_budget_bytes: int | None = None
    exact_shape: bool = False
    expected_tg_tps: float | None = None
    tps_source: str | None = None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    rejected: tuple[Rejected, ...] = ()
    alternatives: tuple[str, ...] = ()

    @property
    def quant(self) -> str | None:
        return self.artifact.quant if self.artifact else None

    def to_dict(self) -> dict[str, Any]:
        art = self.artifact
        return {
            "model_id": self.model_id,
            "ok": self.ok,
            "backend": self.backend,
            "artifact": (
                {
                    "format": art.format,
                    "quant": art.quant,
                    "sha256": art.sha256,
                    "size_bytes": art.size_bytes,
                }
                if art
                else None
            ),
            "n_ctx": self.n_ctx,
            "requested_ctx": self.requested_ctx,
            "kv_type": self.kv_type,
            "flash_attn": self.flash_attn,
            "n_threads": self.n_threads,
            "n_gpu_layers": self.n_gpu_layers,
            "memory": self.estimate.to_dict() if self.estimate else None,
            "budget_bytes": self.budget_bytes,
            "gpu_budget_bytes": self.gpu_budget_bytes,
            "estimate_from": "gguf header" if self.exact_shape else "manifest size (approximate)",
            "expected_tg_tps": self.expected_tg_tps,
            "tps_source": self.tps_source,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "rejected": [asdict(r) for r in self.rejected],
            "alternatives": list(self.alternatives),
        }


# -- the planner --------------------------------------------------------------------------


@dataclass
class _Attempt:
    backend: str
    artifact: Artifact
    shape: ModelShape
    exact: bool
    n_ctx: int
    kv_type: str
    estimate: FitEstimate
    n_gpu_layers: int
    ok: bool
    why_not: str = ""
    notes: list[str] = field(default_factory=list)


def _shape_for(
    art: Artifact, manifest: ModelManifest, gguf_path: Path | None
) -> tuple[ModelShape | None, bool, str]:
    if gguf_path is not None and art.format == "gguf":
        from locara.device.gguf_meta import read_gguf

        try:
            return ModelShape.from_gguf(read_gguf(gguf_path)), True, ""
        except LocaraError as exc:
            return None, False, exc.message
    size = (
        art.size_bytes
        or (sum(f.size_bytes for f in art.files) if art.files else None)
        or manifest.size_bytes
    )
    if size is None:
        return None, False, "no size known for this artifact (manifest lacks size_bytes)"
    return approximate_shape(size, art.quant, manifest.context_length), False, ""


def _fit(
    device: DeviceProfile,
    backend: str,
    shape: ModelShape,
    n_ctx: int,
    kv_type: str,
) -> tuple[bool, FitEstimate, int, str]:
    """Does this (shape, context, KV type) fit? Returns (ok, estimate, gpu layers, reason)."""
    est = estimate_shape(shape, n_ctx, kv_type, backend)  # every layer on a GPU: no repack
    ram = ram_budget(device)
    cpu_est = estimate_shape(
        shape,
        n_ctx,
        kv_type,
        backend,
        repack_types=cpu_repack_types(device.arch, device.cpu_features),
    )
    if device.is_apple_silicon and device.unified_memory:
        # llama.cpp on Metal: every layer plus the output layer; MLX has no layer split.
        layers = shape.n_layers + 1 if backend == "llama_cpp" else 0
        if est.total_bytes <= ram:
            return True, est, layers, ""
        return False, est, 0, f"needs {_gb(est.total_bytes)}, Metal budget {_gb(ram)}"
    vram = gpu_budget(device)
    if vram is not None and backend == "llama_cpp":
        gpu_need = est.weights_bytes + est.kv_bytes + est.compute_bytes
        host_need = est.overhead_bytes
        if gpu_need <= vram and host_need <= ram:
            return True, est, shape.n_layers + 1, ""
        # Partial offload: whole layers (weights + their KV) go to the GPU until it is full.
        per_layer = (est.weights_bytes + est.kv_bytes) / (shape.n_layers + 1)
        layers = max(0, int((vram - est.compute_bytes) // per_layer))
        layers = min(layers, shape.n_layers)
        # Layers left on the CPU are repacked there (a second copy of their weights).
        cpu_share = 1 - layers / (shape.n_layers + 1)
        est = replace(est, repack_bytes=int(cpu_est.repack_bytes * cpu_share))
        host = est.total_bytes - int(layers * per_layer)
        if host <= ram:
            return True, est, layers, ""
        return (
            False,
            est,
            0,
            f"needs {_gb(est.total_bytes)}: {layers} layers fit the GPU's {_gb(vram)}, "
            f"the other {_gb(host)} exceed the RAM budget {_gb(ram)}",
        )
    if cpu_est.total_bytes <= ram:
        return True, cpu_est, 0, ""
    return False, cpu_est, 0, f"needs {_gb(cpu_est.total_bytes)}, RAM budget {_gb(ram)}"


def _gb(n: int | float) -> str:
    return f"{n / GiB:.1f} GiB" if n >= GiB / 10 else f"{n / 2**20:.0f} MiB"


def plan_model(
    manifest: ModelManifest,
    device: DeviceProfile,
    request: PlanRequest | None = None,
    *,
    bench_results: Iterable[BenchResult] = (),
    gguf_path_of: Mapping[str, Path] | None = None,
) -> Plan:
    """Choose how to run ``manifest`` on ``device``. Never raises for "does not fit".

    ``gguf_path_of`` maps an artifact's sha256 to its GGUF on disk (the store), so the
    estimate uses the real header; other artifacts are estimated from their size.
    """
    request = request or PlanRequest()
    results = list(bench_results)
    paths = gguf_path_of or {}
    warnings: list[str] = []
    reasons: list[str] = []
    rejected: list[Rejected] = []

    # 1. Context: requested, clamped to the trained context.
    trained = manifest.context_length
    requested = request.n_ctx
    if requested is not None and requested <= 0:
        return Plan(
            manifest.id,
            False,
            requested_ctx=requested,
            reasons=(f"invalid context {requested}: it must be a positive number of tokens",),
            alternatives=(f"locara plan {manifest.id} --ctx {min(DEFAULT_CTX, trained)}",),
        )
    want = requested if requested is not None else min(DEFAULT_CTX, trained)
    if want > trained:
        warnings.append(
            f"context {want} is larger than {manifest.id}'s trained context {trained}; "
            f"clamped to {trained}"
        )
        want = trained
    battery_low = low_battery(device)
    if battery_low and requested is None and want > 2048:
        want = 2048
        warnings.append("on battery below 20%: default context lowered to 2048")

    # 2. Backends in order of preference.
    order = _backend_order(manifest, device, request, results, reasons, rejected)

    # 3. Artifacts per backend, best quant first; the first that fits wins.
    mem_class = device.ram_total_bytes
    vram = gpu_budget(device)
    if vram is not None:
        mem_class = max(vram, device.ram_total_bytes // 2)
    ceiling = quant_rank(quant_ceiling(mem_class))
    near_misses: list[_Attempt] = []
    chosen: _Attempt | None = None
    fitting: list[_Attempt] = []
    for backend in order:
        key = "llamacpp" if backend == "llama_cpp" else "mlx"
        arts = list(manifest.artifact_list(key))
        if request.quant:
            wanted = request.quant.upper()
            for a in arts:
                if (a.quant or "").upper() != wanted:
                    rejected.append(
                        Rejected(backend, a.quant, f"not the requested quant {wanted}", a.sha256)
                    )
            arts = [a for a in arts if (a.quant or "").upper() == wanted]
        if battery_low:
            arts.sort(key=lambda a: -quant_rank(a.quant))  # smallest first
        else:
            # At or under the ceiling best-first, then those above it smallest-first.
            # Among builds of the same quant, one already in the store comes first.
            under = sorted(
                (a for a in arts if quant_rank(a.quant) >= ceiling),
                key=lambda a: (quant_rank(a.quant), (a.sha256 or "") not in paths),
            )
            over = sorted(
                (a for a in arts if quant_rank(a.quant) < ceiling),
                key=lambda a: (-quant_rank(a.quant), (a.sha256 or "") not in paths),
            )
            arts = under + over
        for art in arts:
            path = paths.get(art.sha256 or "")
            if device.offline and path is None and not _has_local_source(art):
                rejected.append(
                    Rejected(
                        backend,
                        art.quant,
                        "not in the store and this device is offline (it cannot be downloaded)",
                        art.sha256,
                    )
                )
                continue
            shape, exact, err = _shape_for(art, manifest, path)
            if shape is None:
                rejected.append(Rejected(backend, art.quant, err, art.sha256))
                continue
            attempt = _try_contexts(device, backend, art, shape, exact, want)
            if attempt.ok:
                fitting.append(attempt)
            if attempt.ok and chosen is None:
                chosen = attempt
            elif attempt.ok:
                assert chosen is not None
                why = (
                    _why_not_chosen(chosen, art, ceiling)
                    if chosen.backend == backend
                    else f"fits, but {chosen.backend} is preferred on this device"
                )
                rejected.append(Rejected(backend, art.quant, why, art.sha256))
            else:
                near_misses.append(attempt)
                rejected.append(
                    Rejected(
                        backend,
                        art.quant,
                        attempt.why_not,
                        art.sha256,
                        attempt.estimate.total_bytes,
                    )
                )
    if chosen is not None:
        chosen = _prefer_measured_speed(chosen, fitting, results, manifest.id, reasons, rejected)
        return _finish(
            manifest, device, chosen, want, requested, battery_low, results,
            reasons, warnings, rejected, ceiling,
        )  # fmt: skip
    return _no_fit(manifest, device, want, requested, near_misses, reasons, warnings, rejected)


def _backend_order(
    manifest: ModelManifest,
    device: DeviceProfile,
    request: PlanRequest,
    results: list[BenchResult],
    reasons: list[str],
    rejected: list[Rejected],
) -> list[str]:
    has_mlx = bool(manifest.artifact_list("mlx"))
    has_llama = bool(manifest.artifact_list("llamacpp"))
    usable: list[str] = []
    for backend, present in (("mlx", has_mlx), ("llama_cpp", has_llama)):
        if not present:
            continue
        why = _backend_unusable(backend, device, request, manifest)
        if request.backend and request.backend != backend:
            why = why or f"--backend {request.backend} was requested"
        if why:
            for a in manifest.artifact_list("mlx" if backend == "mlx" else "llamacpp"):
                rejected.append(Rejected(backend, a.quant, why, a.sha256))
            continue
        usable.append(backend)
    if not usable:
        return []
    if "mlx" in usable and "llama_cpp" in usable:
        if device.is_apple_silicon:
            order = ["mlx", "llama_cpp"]
            reasons.append("Apple Silicon with an MLX artifact: MLX first (reference/000 rule)")
        else:
            order = ["llama_cpp", "mlx"]
            reasons.append("not Apple Silicon: llama.cpp first (reference/000 rule)")
        mlx_m = best_measured(results, manifest.id, "mlx")
        llama_m = best_measured(results, manifest.id, "llama_cpp")
        if mlx_m and llama_m:
            fast, slow = (mlx_m, llama_m) if mlx_m.tg_tps > llama_m.tg_tps else (llama_m, mlx_m)
            if fast.tg_tps > slow.tg_tps * 1.1:
                order = [fast.backend, slow.backend]
                reasons.append(
                    f"measured on this device: {fast.backend} {fast.tg_tps:.1f} tok/s vs "
                    f"{slow.backend} {slow.tg_tps:.1f} tok/s, so {fast.backend} first"
                )
        return order
    reasons.append(f"only {usable[0]} can run this model here")
    return usable


def _backend_unusable(
    backend: str, device: DeviceProfile, request: PlanRequest, manifest: ModelManifest
) -> str:
    if backend not in device.supported_runtimes:
        return f"{backend} is not installed on this device (pip install 'locara[mlx]')"
    if backend == "mlx":
        if "json_schema" in request.features:
            return "json_schema output needs llama.cpp grammars; MLX cannot constrain output"
        if "embeddings" in request.features:
            return "embeddings run on llama.cpp only"
    if "embeddings" in request.features and manifest.modality != "embedding":
        return f"{manifest.id} is a {manifest.modality} model, not an embedding model"
    return ""


def _try_contexts(
    device: DeviceProfile,
    backend: str,
    art: Artifact,
    shape: ModelShape,
    exact: bool,
    want: int,
) -> _Attempt:
    """The longest context (and least quantized KV) that fits, else the failing attempt."""
    ctx = want
    first: _Attempt | None = None
    while True:
        for kv in KV_TYPES:
            ok, est, layers, why = _fit(device, backend, shape, ctx, kv)
            attempt = _Attempt(backend, art, shape, exact, ctx, kv, est, layers, ok, why)
            if ok:
                return attempt
            if first is None:
                first = attempt
        if ctx <= MIN_CTX:
            break
        ctx = max(MIN_CTX, ctx // 2)
    assert first is not None
    # The smallest configuration tried still failed: report it, with what the first needed.
    smallest = _fit(device, backend, shape, min(want, MIN_CTX), "q4_0")
    first.why_not = (
        f"does not fit at any context: at {want} tokens {first.why_not}; "
        f"even {min(want, MIN_CTX)} tokens with q4_0 KV needs {_gb(smallest[1].total_bytes)}"
    )
    first.estimate = smallest[1]
    return first


def _prefer_measured_speed(
    chosen: _Attempt,
    fitting: list[_Attempt],
    results: list[BenchResult],
    model_id: str,
    reasons: list[str],
    rejected: list[Rejected],
) -> _Attempt:
    """Swap to a faster measured artifact of the same backend when the choice is too slow.

    Quality wins by default; but when ``locara bench`` measured the chosen artifact below
    a usable speed and another artifact that fits measured usable, speed wins.
    """
    mine = best_measured(results, model_id, chosen.backend, chosen.artifact)
    if mine is None or mine.tg_tps >= USABLE_TPS:
        return chosen
    best: tuple[_Attempt, BenchResult] | None = None
    for other in fitting:
        if other is chosen or other.backend != chosen.backend:
            continue
        m = best_measured(results, model_id, other.backend, other.artifact)
        if m and m.tg_tps >= USABLE_TPS and (best is None or m.tg_tps > best[1].tg_tps):
            best = (other, m)
    if best is None:
        return chosen
    faster, m = best
    rejected[:] = [r for r in rejected if not (r.sha256 == faster.artifact.sha256
                                                and r.quant == faster.artifact.quant)]  # fmt: skip
    rejected.append(
        Rejected(
            chosen.backend,
            chosen.artifact.quant,
            f"fits, but measured {mine.tg_tps:.1f} tok/s on this device (below "
            f"{USABLE_TPS:.0f}); {faster.artifact.quant} measured {m.tg_tps:.1f} tok/s",
            chosen.artifact.sha256,
        )
    )
    reasons.append(
        f"measured on this device: {faster.artifact.quant} {m.tg_tps:.1f} tok/s vs "
        f"{chosen.artifact.quant} {mine.tg_tps:.1f} tok/s, so the faster quant"
    )
    return faster


def _why_not_chosen(chosen: _Attempt | None, art: Artifact, ceiling: int) -> str:
    if chosen is None:
        return "fits, but another artifact was preferred"
    r = quant_rank(art.quant)
    if r == quant_rank(chosen.artifact.quant):
        other = (chosen.artifact.sha256 or "")[:12]
        return f"fits; another {chosen.artifact.quant} build (sha256 {other}…) was preferred"
    if r < ceiling:
        return (
            f"fits, but above the quant this device's memory class suggests "
            f"({QUANT_ORDER[ceiling]}); {chosen.artifact.quant} was chosen"
        )
    if r < quant_rank(chosen.artifact.quant):
        return f"fits only with a shorter context or quantized KV; {chosen.artifact.quant} doesn't"
    return f"fits, but lower quality than {chosen.artifact.quant}"


def _finish(
    manifest: ModelManifest,
    device: DeviceProfile,
    chosen: _Attempt,
    want: int,
    requested: int | None,
    battery_low: bool,
    results: list[BenchResult],
    reasons: list[str],
    warnings: list[str],
    rejected: list[Rejected],
    ceiling: int,
) -> Plan:
    art = chosen.artifact
    if chosen.n_ctx < want:
        warnings.append(
            f"context {want} does not fit; clamped to {chosen.n_ctx} tokens "
            f"(the most that fits with {chosen.kv_type} KV)"
        )
    if chosen.kv_type != "f16":
        reasons.append(
            f"KV cache {chosen.kv_type} (with flash attention) to fit {chosen.n_ctx} tokens"
        )
    quant_note = f"quant {art.quant}: device memory class suggests up to {QUANT_ORDER[ceiling]}"
    if battery_low:
        quant_note = f"quant {art.quant}: on battery below 20%, the smallest that fits"
    reasons.append(quant_note)
    size = art.size_bytes or (sum(f.size_bytes for f in art.files) if art.files else 0)
    if (
        not chosen.exact
        and device.disk_free_bytes is not None
        and size
        and size > device.disk_free_bytes
    ):
        warnings.append(
            f"the download needs {_gb(size)} but the store's disk has {_gb(device.disk_free_bytes)} "
            "free; make room with: locara cleanup"
        )
    if not chosen.exact:
        warnings.append(
            "memory estimated from the manifest's size (the GGUF is not in the store yet); "
            "`locara pull` then plan again for an exact estimate"
        )
    perf = device.cores_performance or device.cores_logical or 1
    threads = max(1, perf // 2) if battery_low else perf
    on_gpu = chosen.n_gpu_layers > 0 or (chosen.backend == "mlx" and device.is_apple_silicon)
    measured = best_measured(results, manifest.id, chosen.backend, art)
    if measured:
        tps, source = measured.tg_tps, "measured by locara bench on this device"
    else:
        bw = bandwidth_gbps(device, on_gpu)
        params = chosen.estimate.weights_bytes * 8 / bits_per_weight(art.quant)
        tps = expected_tg_tps(
            chosen.estimate.weights_bytes, bw, params, None if on_gpu else threads
        )
        source = f"estimated from {bw:.0f} GB/s memory bandwidth"
        if not on_gpu:
            source += f" and {threads} CPU threads"
    if chosen.backend == "mlx" and device.is_apple_silicon:
        reasons.append("MLX runs the whole model on the Apple GPU (unified memory)")
    if on_gpu:
        total = chosen.shape.n_layers + 1
        where = "Metal" if device.is_apple_silicon else "the GPU"
        reasons.append(f"{min(chosen.n_gpu_layers, total)}/{total} layers offloaded to {where}")
    return Plan(
        model_id=manifest.id,
        ok=True,
        backend=chosen.backend,
        artifact=art,
        n_ctx=chosen.n_ctx,
        requested_ctx=requested,
        kv_type=chosen.kv_type,
        flash_attn=chosen.kv_type != "f16",
        n_threads=threads,
        n_gpu_layers=chosen.n_gpu_layers,
        estimate=chosen.estimate,
        budget_bytes=ram_budget(device),
        gpu_budget_bytes=gpu_budget(device),
        exact_shape=chosen.exact,
        expected_tg_tps=tps,
        tps_source=source,
        reasons=tuple(reasons),
        warnings=tuple(warnings),
        rejected=tuple(rejected),
    )


def _no_fit(
    manifest: ModelManifest,
    device: DeviceProfile,
    want: int,
    requested: int | None,
    near: list[_Attempt],
    reasons: list[str],
    warnings: list[str],
    rejected: list[Rejected],
) -> Plan:
    why = [f"{r.backend} {r.quant or ''}: {r.reason}".replace("  ", " ") for r in rejected]
    if not why:
        why = [f"{manifest.id} has no artifact this device can run"]
    alternatives: list[str] = []
    budget = ram_budget(device)
    if near:
        smallest = min(near, key=lambda a: a.estimate.total_bytes)
        alternatives.append(
            f"a smaller model: {manifest.id}'s smallest artifact ({smallest.artifact.quant}) "
            f"needs at least {_gb(smallest.estimate.total_bytes)} ({smallest.estimate.n_ctx} "
            f"tokens, {smallest.estimate.kv_type} KV); this device has {_gb(budget)} for "
            "models (see: locara recommend)"
        )
        alternatives.append("free memory (close other programs), then: locara plan " + manifest.id)
    alternatives.append(
        "escalate to a configured OpenAI-compatible endpoint, if a policy allows (SPEC §13)"
    )
    return Plan(
        model_id=manifest.id,
        ok=False,
        requested_ctx=requested,
        n_ctx=want,
        budget_bytes=budget,
        gpu_budget_bytes=gpu_budget(device),
        reasons=tuple(reasons + why),
        warnings=tuple(warnings),
        rejected=tuple(rejected),
        alternatives=tuple(alternatives),
    )


def local_gguf_paths(settings: Settings, manifests: Iterable[ModelManifest]) -> dict[str, Path]:
    """sha256 -> GGUF path for the artifacts of ``manifests`` already in the store."""
    from locara.store.blobs import BlobStore

    store = BlobStore(settings)
    out: dict[str, Path] = {}
    for m in manifests:
        for _, art in m.all_artifacts():
            if art.format == "gguf" and art.sha256:
                blob = store.find(art.sha256)
                if blob is not None:
                    out[art.sha256] = blob.path
    return out


def _has_local_source(art: Artifact) -> bool:
    from locara.store.sources import is_local

    return any(is_local(src) for src in art.sources) or any(
        is_local(src) for f in (art.files or ()) for src in ((f.url,) if f.url else ()) + f.mirrors
    )
