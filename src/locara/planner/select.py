"""Pick the artifact a reference means: pinned, named, stored, bundled, else planned."""

from __future__ import annotations

from locara.errors import UnknownModelError, UsageError
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.refs import ModelRef
from locara.store.blobs import BlobStore
from locara.store.sources import is_local


def select_artifact(
    manifest: ModelManifest,
    ref: ModelRef,
    store: BlobStore,
    backend: str | None = None,
    planned: Artifact | None = None,
) -> Artifact:
    """The artifact for ``ref``: the pinned digest, the named quant, else the best at hand.

    Without a digest or quant, prefer an artifact already in the store, then one with a
    local source (a bundled package), then the one the planner fits to this device
    (``planned``, when the caller already planned; else planned here), then the
    manifest's first; so the default model runs offline on a fresh machine.
    """
    if backend is None:  # llama.cpp's, else the only backend a speech or OCR model has
        backend = (
            "llama_cpp" if "llama_cpp" in manifest.artifacts else next(iter(manifest.artifacts))
        )
    candidates = manifest.artifact_list(backend)
    if not candidates:
        raise UsageError(
            f"{manifest.id} has no {backend} artifact",
            f"backends with artifacts: {', '.join(manifest.artifacts)}",
        )
    if ref.sha256:
        for _, art in manifest.all_artifacts():
            if art.sha256 == ref.sha256:
                return art
        raise UnknownModelError(
            str(ref), [f"{manifest.id}@sha256:{a.sha256}" for a in candidates if a.sha256]
        )
    if ref.quant:
        for art in candidates:
            if art.quant and art.quant.lower() == ref.quant.lower():
                return art
        quants = [a.quant for a in candidates if a.quant]
        raise UsageError(
            f"{manifest.id} has no quant {ref.quant!r}",
            "available: " + ", ".join(f"{manifest.id}:{q}" for q in quants),
        )
    for art in candidates:
        if art.sha256 and store.find(art.sha256) is not None:
            return art
    for art in candidates:
        if any(is_local(s) for s in art.sources):
            return art
    if planned is None or planned not in candidates:
        planned = _planned_artifact(manifest, candidates, store, backend)
    return planned if planned is not None else candidates[0]


def _planned_artifact(
    manifest: ModelManifest, candidates: tuple[Artifact, ...], store: BlobStore, backend: str
) -> Artifact | None:
    """The quant the device-aware planner would download for this machine, if it finds one.

    Only consulted when nothing is stored or bundled, i.e. when a download is next: a
    wrong guess there costs gigabytes, so the plan (memory fit, the device's quant class,
    measured speeds) decides instead of the manifest's order.
    """
    if backend not in ("llama_cpp", "mlx") or len(candidates) < 2:
        return None
    from locara.device.profile import current_device
    from locara.planner.plan import PlanRequest, plan_model
    from locara.planner.results import read_bench_results

    settings = store.settings
    device = current_device(settings)
    plan = plan_model(
        manifest,
        device,
        PlanRequest(backend=backend),
        bench_results=read_bench_results(settings.bench_results_path, device),
    )
    if plan.ok and plan.artifact is not None and plan.artifact in candidates:
        return plan.artifact
    return None
