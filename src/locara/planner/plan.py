"""The planner: backend, artifact/quant, context, KV type, offload, threads, batch and slots.

``plan_model(manifest, device, request)`` never raises for a model that does not fit:
it returns a ``Plan`` with ``ok=False``, the reasons, and the nearest alternatives
(smaller quant, shorter context). Every artifact it considered and did not pick is
listed in ``rejected`` with the reason, which is what ``locara plan`` prints.

Every load runs exactly what the plan says (``locara.engine.loader`` hands the plan's
values to the backend as its ``LoadOptions``). An explicit option (``--ctx``,
``--backend``, ``--gpu-layers``, ``num_ctx``, a memory budget …) arrives in the
``PlanRequest`` and replaces the rule below *here*, and ``Plan.overrides`` says so,
so the explanation always matches what runs.

The rules, in order:

1. Backend: Apple Silicon + an MLX artifact + MLX installed → MLX,
   unless the request needs a feature only llama.cpp has; else llama.cpp. Benchmark
   results measured on this device override the rule when the other backend generated
   more than 10% faster.
2. Quant: the device's memory class sets a ceiling — 8 GB → Q4_K_M,
   16 GB → Q5_K_M, 32 GB → Q6_K, 64 GB → Q8_0, 96 GB+ → F16 — and the planner takes the
   best quant at or under the ceiling that fits, else the smallest above it that fits.
   On battery below 20% the smallest quant that fits wins (fewer bytes per token).
   A quant that ``locara bench`` measured below 5 tok/s here gives way to one that
   fits and measured faster.
   Offline, an artifact that is neither stored nor on this machine is rejected.
3. Context: the request, else the model's default (``num_ctx`` in its manifest), else
   the caller's default (4096); never over the trained context (clamped, with a
   warning). If it does not fit: quantized KV (q8_0, then q4_0, with flash attention)
   before a shorter context, halving down to 512.
4. Offload: Metal (unified memory) offloads every layer; a discrete GPU takes as many
   layers as its memory holds (all when the whole model fits), the rest stays in RAM.
   A llama.cpp build without a GPU backend runs every layer on the CPU, and says so.
5. Threads: one per performance core, half of them on battery below 20%, and one core
   left free on a machine with four cores or fewer.
6. Batch: 512 tokens; an embedding load evaluates an input in one batch, so its batch
   is its context.
7. Parallel slots (llama.cpp generation on the CPU): 4 when the KV cache of four
   contexts fits the budget too, else 2, else 1; embeddings, MLX and GPU plans use 1.

Memory admission is this module's rule alone: a plan fits when its ``ram_bytes`` fit
the RAM budget (``budget.ram_budget``, or the operator's budget); the server's pool
counts the same ``ram_bytes`` of everything it keeps loaded against the same budget.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from locara.device.fit import FitEstimate, ModelShape
from locara.device.profile import DeviceProfile
from locara.errors import UnsupportedFeatureError, UsageError
from locara.planner.budget import (
    QUANT_ORDER,
    USABLE_TPS,
    bandwidth_gbps,
    bits_per_weight,
    decoding_threads,
    expected_tg_tps,
    gpu_budget,
    low_battery,
    quant_ceiling,
    quant_rank,
    ram_budget,
)
from locara.planner.media import is_media, plan_media
from locara.planner.placement import (
    ALL_LAYERS,
    Fitted,
    Room,
    gb,
    longest_context,
    offload_notes,
    parallel_slots,
)
from locara.planner.results import BenchResult, best_measured
from locara.planner.results import read_bench_results as read_bench_results  # re-export
from locara.planner.routing import artifacts_for, route
from locara.planner.shapes import has_local_source, shape_for
from locara.planner.shapes import local_gguf_paths as local_gguf_paths  # re-export
from locara.registry.manifest import Artifact, ModelManifest

DEFAULT_CTX = 4096
DEFAULT_BATCH = 512
MIN_EXPLICIT_CTX = 16  # the smallest context a caller may ask for explicitly
KV_TYPES = ("f16", "q8_0", "q4_0")


@dataclass(frozen=True)
class PlanRequest:
    """What the caller needs, and the options it set explicitly (None: the plan decides)."""

    n_ctx: int | None = None  # tokens per slot (--ctx, num_ctx)
    features: frozenset[str] = frozenset()  # generation, embeddings, json_schema, …
    backend: str | None = None  # force "llama_cpp" or "mlx"
    quant: str | None = None  # force one quant
    sha256: str | None = None  # one artifact: pinned, or the one a load selected
    n_gpu_layers: int | None = None  # -1: all
    kv_type: str | None = None
    n_threads: int | None = None
    n_batch: int | None = None
    n_parallel: int | None = None
    in_process: bool = False  # llama.cpp in this process even when llama-server is there
    default_ctx: int | None = None  # the caller's default context (a server's LOCARA_CTX)
    memory_budget_bytes: int | None = None  # the operator's RAM budget (LOCARA_MEMORY_BUDGET)

    @property
    def embedding(self) -> bool:
        return "embeddings" in self.features


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
    n_ctx: int | None = None  # tokens per slot
    requested_ctx: int | None = None
    kv_type: str = "f16"
    flash_attn: bool = False
    n_threads: int | None = None  # decoding
    n_threads_batch: int | None = None  # prompt processing
    n_gpu_layers: int = 0
    n_layers: int | None = None  # layers llama.cpp can offload (blocks + output)
    n_batch: int = DEFAULT_BATCH
    n_parallel: int = 1
    # How llama.cpp runs it: "llama-server" (a worker process batching its slots) or
    # "in-process" (llama-cpp-python, one request at a time); None for other backends.
    runtime: str | None = None
    # llama.cpp RPC workers (host:port) that hold the offloaded layers (n_gpu_layers).
    rpc: tuple[str, ...] = ()
    embedding: bool = False
    estimate: FitEstimate | None = None  # every slot's KV included
    ram_bytes: int = 0  # what counts against the RAM budget
    gpu_bytes: int = 0  # what sits in GPU memory
    budget_bytes: int = 0
    gpu_budget_bytes: int | None = None
    exact_shape: bool = False
    expected_tg_tps: float | None = None
    tps_source: str | None = None
    reasons: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    overrides: tuple[str, ...] = ()  # explicit options that replaced the plan's own choice
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
            "n_threads_batch": self.n_threads_batch,
            "n_gpu_layers": self.n_gpu_layers,
            "n_layers": self.n_layers,
            "n_batch": self.n_batch,
            "n_parallel": self.n_parallel,
            "runtime": self.runtime,
            "rpc": list(self.rpc),
            "embedding": self.embedding,
            "memory": self.estimate.to_dict() if self.estimate else None,
            "ram_bytes": self.ram_bytes,
            "gpu_bytes": self.gpu_bytes,
            "budget_bytes": self.budget_bytes,
            "gpu_budget_bytes": self.gpu_budget_bytes,
            "estimate_from": "gguf header" if self.exact_shape else "manifest size (approximate)",
            "expected_tg_tps": self.expected_tg_tps,
            "tps_source": self.tps_source,
            "reasons": list(self.reasons),
            "warnings": list(self.warnings),
            "overrides": list(self.overrides),
            "rejected": [asdict(r) for r in self.rejected],
            "alternatives": list(self.alternatives),
        }


# Models that answer no chat: what they are, and what to use them for.
_NOT_GENERATING = {
    "embedding": ("an embedding model", "embed with it (/v1/embeddings, /api/embed)"),
    "stt": (
        "a speech-to-text model",
        "transcribe with it (locara transcribe, /v1/audio/transcriptions)",
    ),
    "ocr": ("an OCR model", "read images with it (locara ocr, /v1/ocr)"),
}


def check_request(manifest: ModelManifest, request: PlanRequest) -> None:
    """Refuse explicit options no plan can honour, with the range that is accepted.

    ``plan_model`` clamps a context beyond the trained one (``locara plan`` shows what
    would happen); a load refuses it instead, so a typo never silently runs something else.
    """
    if "generation" in request.features and manifest.modality in _NOT_GENERATING:
        # Before anything is fetched or loaded: loading it as a chat model first would
        # only end in the same refusal, seconds (or a download) later.
        what, use = _NOT_GENERATING[manifest.modality]
        raise UnsupportedFeatureError(
            f"{manifest.id} is {what}: it does not generate text",
            f"{use}, or chat with another model: locara ls",
        )
    trained = manifest.context_length
    n = request.n_ctx
    if n is not None and n > trained:
        raise UsageError(
            f"context {n} is larger than {manifest.id}'s trained context {trained}",
            f"pass a context of {trained} tokens or less (--ctx, or num_ctx in a request)",
        )
    if n is not None and n < MIN_EXPLICIT_CTX:
        raise UsageError(
            f"invalid context {n}: a context must be {MIN_EXPLICIT_CTX}..{trained} tokens",
            f"pass a context between {MIN_EXPLICIT_CTX} and {trained} (--ctx, or num_ctx)",
        )
    for name, value in (
        ("threads", request.n_threads),
        ("batch", request.n_batch),
        ("parallel slots", request.n_parallel),
    ):
        if value is not None and value < 1:
            raise UsageError(f"invalid {name} {value}: must be 1 or more", f"pass 1 or more {name}")
    if request.n_gpu_layers is not None and request.n_gpu_layers < -1:
        raise UsageError(
            f"invalid GPU layers {request.n_gpu_layers}",
            "pass 0 (CPU only), a number of layers, or -1 for all of them",
        )
    if request.kv_type is not None and request.kv_type not in KV_TYPES:
        raise UsageError(
            f"unknown KV cache type {request.kv_type!r}", f"use one of: {', '.join(KV_TYPES)}"
        )


# -- the planner --------------------------------------------------------------------------


@dataclass
class _Attempt:
    backend: str
    artifact: Artifact
    shape: ModelShape
    exact: bool
    fitted: Fitted

    @property
    def ok(self) -> bool:
        return self.fitted.ok

    @property
    def estimate(self) -> FitEstimate:
        return self.fitted.placement.estimate


@dataclass
class _Planning:
    """Everything one ``plan_model`` call decides with, and the notes it collects."""

    manifest: ModelManifest
    device: DeviceProfile
    request: PlanRequest
    results: list[BenchResult]
    room: Room
    battery_low: bool
    want: int
    want_source: str
    ceiling: int
    reasons: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    overrides: list[str] = field(default_factory=list)
    rejected: list[Rejected] = field(default_factory=list)


def _wanted_context(manifest: ModelManifest, request: PlanRequest) -> tuple[int, str]:
    """Context before fitting: the request, else the model's default, else the caller's."""
    trained = manifest.context_length
    if request.n_ctx is not None:
        return request.n_ctx, "asked for"
    model_default = manifest.config.default_params.get("num_ctx")
    if isinstance(model_default, int) and model_default > 0:
        return min(model_default, trained), "the model's default (num_ctx in its manifest)"
    default = request.default_ctx or DEFAULT_CTX
    if default > trained:
        return trained, f"the model's trained context (the default {default} is larger)"
    return default, "the default context"


def plan_model(
    manifest: ModelManifest,
    device: DeviceProfile,
    request: PlanRequest | None = None,
    *,
    bench_results: Iterable[BenchResult] = (),
    gguf_path_of: Mapping[str, Path] | None = None,
    gpu_offload: bool = True,
    llama_server: bool = True,
) -> Plan:
    """Choose how to run ``manifest`` on ``device``. Never raises for "does not fit".

    ``gguf_path_of`` maps an artifact's sha256 to its GGUF on disk (the store), so the
    estimate uses the real header; other artifacts are estimated from their size.
    ``gpu_offload`` says whether the llama.cpp build that will run the plan can use a
    GPU (``llama_supports_gpu_offload()``); planning for another machine assumes it can.
    ``llama_server`` says whether llama.cpp's own server is installed to run generation
    as a worker with parallel slots; without it llama.cpp runs in process, one request
    at a time (planning for another machine assumes it is there).
    """
    request = request or PlanRequest()
    paths = gguf_path_of or {}
    if is_media(manifest):
        return _media_plan(manifest, device, request, paths)

    requested = request.n_ctx
    trained = manifest.context_length
    if requested is not None and requested <= 0:
        return Plan(
            manifest.id,
            False,
            requested_ctx=requested,
            reasons=(f"invalid context {requested}: it must be a positive number of tokens",),
            alternatives=(f"locara plan {manifest.id} --ctx {min(DEFAULT_CTX, trained)}",),
        )
    want, source = _wanted_context(manifest, request)
    device_budget = ram_budget(device)
    vram = gpu_budget(device)
    mem_class = device.ram_total_bytes if vram is None else max(vram, device.ram_total_bytes // 2)
    layers = request.n_gpu_layers
    room = Room(
        ram=request.memory_budget_bytes or device_budget,
        vram=vram,
        offload=gpu_offload,
        layers=ALL_LAYERS if layers is not None and layers < 0 else layers,
        # A run with adapters named up front (locara run/eval --adapter) applies them in
        # process; a server's worker loads every adapter of its base and requests pick.
        worker=llama_server and not request.in_process and "lora" not in request.features,
    )
    pl = _Planning(
        manifest, device, request, list(bench_results), room,
        low_battery(device), want, source, quant_rank(quant_ceiling(mem_class)),
    )  # fmt: skip
    if request.memory_budget_bytes:
        pl.overrides.append(
            f"memory budget {gb(room.ram)}: set by the operator "
            f"(this device's own budget is {gb(device_budget)})"
        )
    if requested is not None:
        pl.overrides.append(
            f"context {requested} tokens: asked for "
            f"(the plan's default is {_wanted_context(manifest, replace(request, n_ctx=None))[0]})"
        )
    if want > trained:
        pl.warnings.append(
            f"context {want} is larger than {manifest.id}'s trained context {trained}; "
            f"clamped to {trained}"
        )
        pl.want = want = trained
    if pl.battery_low and requested is None and want > 2048:
        pl.want = want = 2048
        pl.warnings.append("on battery below 20%: default context lowered to 2048")
    if request.embedding and manifest.modality != "embedding":
        pl.warnings.append(
            f"{manifest.id} is a {manifest.modality} model: its embeddings are pooled token "
            "states, not trained sentence embeddings (see: locara recommend --task embedding)"
        )

    order = _backend_order(pl)
    kv_types = (request.kv_type,) if request.kv_type else KV_TYPES
    near_misses: list[_Attempt] = []
    chosen: _Attempt | None = None
    fitting: list[_Attempt] = []
    for backend in order:
        for art in _candidates(pl, backend, paths):
            path = paths.get(art.sha256 or "")
            if device.offline and path is None and not has_local_source(art):
                pl.rejected.append(
                    Rejected(
                        backend,
                        art.quant,
                        "not in the store and this device is offline (it cannot be downloaded)",
                        art.sha256,
                    )
                )
                continue
            shape, exact, err = shape_for(art, manifest, path)
            if shape is None:
                pl.rejected.append(Rejected(backend, art.quant, err, art.sha256))
                continue
            fitted, why = longest_context(
                device, backend, shape, want, room, kv_types, request.embedding, request.n_batch
            )
            attempt = _Attempt(backend, art, shape, exact, fitted)
            if attempt.ok:
                fitting.append(attempt)
            if attempt.ok and chosen is None:
                chosen = attempt
            elif attempt.ok:
                assert chosen is not None
                reason = (
                    _why_not_chosen(chosen, art, pl.ceiling)
                    if chosen.backend == backend
                    else f"fits, but {chosen.backend} is preferred on this device"
                )
                pl.rejected.append(Rejected(backend, art.quant, reason, art.sha256))
            else:
                near_misses.append(attempt)
                pl.rejected.append(
                    Rejected(backend, art.quant, why, art.sha256, attempt.estimate.total_bytes)
                )
    if chosen is not None:
        chosen = _prefer_measured_speed(chosen, fitting, pl)
        return _finish(pl, chosen)
    return _no_fit(pl, near_misses)


def _media_plan(
    manifest: ModelManifest, device: DeviceProfile, request: PlanRequest, paths: Mapping[str, Path]
) -> Plan:
    """A speech or OCR model's plan (``locara.planner.media``), in the shape of any plan."""
    fit = plan_media(
        manifest,
        device,
        sha256=request.sha256,
        budget_bytes=request.memory_budget_bytes,
        stored=paths,
    )
    rejected = tuple(Rejected(fit.backend, None, why) for why in fit.why_not)
    if fit.artifact is None:
        return Plan(
            manifest.id, False, budget_bytes=fit.budget_bytes,
            reasons=tuple(fit.reasons + fit.why_not), rejected=rejected,
            alternatives=("free memory (close other programs), then: locara plan " + manifest.id,),
        )  # fmt: skip
    return Plan(
        model_id=manifest.id,
        ok=True,
        backend=fit.backend,
        artifact=fit.artifact,
        n_ctx=manifest.context_length,
        n_threads=fit.threads,
        n_threads_batch=fit.threads,
        ram_bytes=fit.ram_bytes,
        budget_bytes=fit.budget_bytes,
        exact_shape=True,  # its memory does not depend on a header read after download
        reasons=tuple(fit.reasons),
        rejected=rejected,
    )


def _candidates(pl: _Planning, backend: str, paths: Mapping[str, Path]) -> list[Artifact]:
    """This backend's artifacts in the order to try them: best quant for the device first."""
    request = pl.request
    arts = list(artifacts_for(pl.manifest, backend, request.backend))
    if request.quant:
        wanted = request.quant.upper()
        why = f"not the requested quant {wanted}"
        pl.rejected.extend(
            Rejected(backend, a.quant, why, a.sha256)
            for a in arts
            if (a.quant or "").upper() != wanted
        )
        arts = [a for a in arts if (a.quant or "").upper() == wanted]
    if request.sha256:
        why = "not the artifact selected for this load (pinned, stored or bundled)"
        pl.rejected.extend(
            Rejected(backend, a.quant, why, a.sha256) for a in arts if a.sha256 != request.sha256
        )
        arts = [a for a in arts if a.sha256 == request.sha256]
    if pl.battery_low:
        return sorted(arts, key=lambda a: -quant_rank(a.quant))  # smallest first
    # At or under the ceiling best-first, then those above it smallest-first.
    # Among builds of the same quant, one already in the store comes first.
    under = sorted(
        (a for a in arts if quant_rank(a.quant) >= pl.ceiling),
        key=lambda a: (quant_rank(a.quant), (a.sha256 or "") not in paths),
    )
    over = sorted(
        (a for a in arts if quant_rank(a.quant) < pl.ceiling),
        key=lambda a: (-quant_rank(a.quant), (a.sha256 or "") not in paths),
    )
    return under + over


def _backend_order(pl: _Planning) -> list[str]:
    request = pl.request
    routing = route(pl.manifest, pl.device, request.features, request.backend, pl.results)
    for backend, why in routing.unusable:
        arts = artifacts_for(pl.manifest, backend, request.backend)
        pl.rejected.extend(Rejected(backend, a.quant, why, a.sha256) for a in arts)
    if request.backend and request.backend in routing.order:
        pl.overrides.append(f"backend {request.backend}: asked for (--backend)")
    pl.reasons.extend(routing.reasons)
    return routing.order


def _prefer_measured_speed(chosen: _Attempt, fitting: list[_Attempt], pl: _Planning) -> _Attempt:
    """Swap to a faster measured artifact of the same backend when the choice is too slow.

    Quality wins by default; but when ``locara bench`` measured the chosen artifact below
    a usable speed and another artifact that fits measured usable, speed wins.
    """
    model_id = pl.manifest.id
    mine = best_measured(pl.results, model_id, chosen.backend, chosen.artifact)
    if mine is None or mine.tg_tps >= USABLE_TPS:
        return chosen
    best: tuple[_Attempt, BenchResult] | None = None
    for other in fitting:
        if other is chosen or other.backend != chosen.backend:
            continue
        m = best_measured(pl.results, model_id, other.backend, other.artifact)
        if m and m.tg_tps >= USABLE_TPS and (best is None or m.tg_tps > best[1].tg_tps):
            best = (other, m)
    if best is None:
        return chosen
    faster, m = best
    pl.rejected[:] = [r for r in pl.rejected if not (r.sha256 == faster.artifact.sha256
                                                      and r.quant == faster.artifact.quant)]  # fmt: skip
    pl.rejected.append(
        Rejected(
            chosen.backend,
            chosen.artifact.quant,
            f"fits, but measured {mine.tg_tps:.1f} tok/s on this device (below "
            f"{USABLE_TPS:.0f}); {faster.artifact.quant} measured {m.tg_tps:.1f} tok/s",
            chosen.artifact.sha256,
        )
    )
    pl.reasons.append(
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


def _finish(pl: _Planning, chosen: _Attempt) -> Plan:
    manifest, device, request = pl.manifest, pl.device, pl.request
    art, f = chosen.artifact, chosen.fitted
    if f.n_ctx < pl.want:
        pl.warnings.append(
            f"context {pl.want} does not fit; clamped to {f.n_ctx} tokens "
            f"(the most that fits with {f.kv_type} KV)"
        )
    elif request.n_ctx is None:
        pl.reasons.append(f"context {f.n_ctx} tokens: {pl.want_source}")
    if f.kv_type != "f16" and request.kv_type is None:
        pl.reasons.append(f"KV cache {f.kv_type} (with flash attention) to fit {f.n_ctx} tokens")
    elif request.kv_type is not None:
        pl.overrides.append(f"KV cache {f.kv_type}: set explicitly")
    quant_note = f"quant {art.quant}: device memory class suggests up to {QUANT_ORDER[pl.ceiling]}"
    if pl.battery_low:
        quant_note = f"quant {art.quant}: on battery below 20%, the smallest that fits"
    if request.quant:
        pl.overrides.append(f"quant {art.quant}: named in the reference")
    else:
        pl.reasons.append(quant_note)
    size = art.size_bytes or (sum(x.size_bytes for x in art.files) if art.files else 0)
    if (
        not chosen.exact
        and device.disk_free_bytes is not None
        and size
        and size > device.disk_free_bytes
    ):
        pl.warnings.append(
            f"the download needs {gb(size)} but the store's disk has {gb(device.disk_free_bytes)} "
            "free; make room with: locara cleanup"
        )
    if not chosen.exact:
        pl.warnings.append(
            "memory estimated from the manifest's size (the GGUF is not in the store yet); "
            "`locara pull` then plan again for an exact estimate"
        )
    notes = offload_notes(
        device, chosen.backend, chosen.shape, f, pl.room, request.n_gpu_layers, manifest.id
    )
    for kept, new in zip((pl.reasons, pl.warnings, pl.overrides), notes, strict=True):
        kept.extend(new)
    threads, threads_batch, why = decoding_threads(device)
    if request.n_threads is None:
        pl.reasons.append(why)
    else:
        pl.overrides.append(
            f"threads {request.n_threads}: set explicitly (the plan would use {threads} "
            f"decoding, {threads_batch} for prompts)"
        )
        threads = threads_batch = request.n_threads
    if request.n_batch is not None:
        pl.overrides.append(f"batch {f.n_batch}: set explicitly")
    elif request.embedding:
        pl.reasons.append(f"batch {f.n_batch}: an embedding input is evaluated in one batch")
    runtime = None
    if chosen.backend == "llama_cpp":
        if request.embedding:
            runtime = "in-process"
            pl.reasons.append("llama.cpp in process: embeddings are computed here, not in a worker")
        elif request.in_process:
            runtime = "in-process"
            pl.overrides.append("llama.cpp in process: asked for by the caller")
        elif "lora" in request.features:
            runtime = "in-process"
            pl.reasons.append(
                "llama.cpp in process: the LoRA adapters named for this run are applied here"
            )
        elif pl.room.worker:
            runtime = "llama-server"
            pl.reasons.append(
                "llama.cpp's own llama-server as a worker process: concurrent requests share "
                "decode steps (continuous batching over parallel slots)"
            )
        else:
            runtime = "in-process"
            pl.warnings.append(
                "llama-server is not installed: llama.cpp runs in process, one request at a "
                "time (./scripts/install.sh builds it, or set LOCARA_LLAMA_SERVER)"
            )
    n_parallel, placed, why = parallel_slots(
        device, chosen.backend, chosen.shape, f, pl.room, request.n_parallel, request.embedding
    )
    (pl.reasons if request.n_parallel is None else pl.overrides).append(why)
    p = chosen.fitted.placement
    on_gpu = p.layers > 0 or (chosen.backend == "mlx" and device.is_apple_silicon)
    measured = best_measured(pl.results, manifest.id, chosen.backend, art)
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
    return Plan(
        model_id=manifest.id,
        ok=True,
        backend=chosen.backend,
        artifact=art,
        n_ctx=f.n_ctx,
        requested_ctx=request.n_ctx,
        kv_type=f.kv_type,
        # llama.cpp cannot keep a quantized V cache without flash attention.
        flash_attn=f.kv_type != "f16",
        n_threads=threads,
        n_threads_batch=threads_batch,
        n_gpu_layers=p.layers,
        n_layers=chosen.shape.n_layers + 1,
        n_batch=f.n_batch,
        n_parallel=n_parallel,
        runtime=runtime,
        embedding=request.embedding,
        estimate=placed.estimate,
        ram_bytes=placed.ram_bytes,
        gpu_bytes=placed.gpu_bytes,
        budget_bytes=pl.room.ram,
        gpu_budget_bytes=pl.room.vram,
        exact_shape=chosen.exact,
        expected_tg_tps=tps,
        tps_source=source,
        reasons=tuple(pl.reasons),
        warnings=tuple(pl.warnings),
        overrides=tuple(pl.overrides),
        rejected=tuple(pl.rejected),
    )


def _no_fit(pl: _Planning, near: list[_Attempt]) -> Plan:
    manifest = pl.manifest
    why = [f"{r.backend} {r.quant or ''}: {r.reason}".replace("  ", " ") for r in pl.rejected]
    if not why:
        why = [f"{manifest.id} has no artifact this device can run"]
    alternatives: list[str] = []
    budget = pl.room.ram
    if near:
        smallest = min(near, key=lambda a: a.estimate.total_bytes)
        alternatives.append(
            f"a smaller model: {manifest.id}'s smallest artifact ({smallest.artifact.quant}) "
            f"needs at least {gb(smallest.estimate.total_bytes)} ({smallest.estimate.n_ctx} "
            f"tokens, {smallest.estimate.kv_type} KV); this device has {gb(budget)} for "
            "models (see: locara recommend)"
        )
        alternatives.append("free memory (close other programs), then: locara plan " + manifest.id)
    alternatives.append("escalate to a configured OpenAI-compatible endpoint, if a policy allows")
    return Plan(
        model_id=manifest.id,
        ok=False,
        requested_ctx=pl.request.n_ctx,
        n_ctx=pl.want,
        embedding=pl.request.embedding,
        budget_bytes=budget,
        gpu_budget_bytes=pl.room.vram,
        reasons=tuple(pl.reasons + why),
        warnings=tuple(pl.warnings),
        overrides=tuple(pl.overrides),
        rejected=tuple(pl.rejected),
        alternatives=tuple(alternatives),
    )
