"""Plans for speech-to-text and OCR models: their backend, artifact, memory and threads.

These models have no context to fit, no KV cache, no quant ladder and no GPU layers:
the plan picks the manifest's artifact for the modality's backend (one already stored
or bundled first), estimates the memory it takes while running (the weights, plus the
working memory of one input: a window of audio, or an image at the pixel limit), checks
that against the same RAM budget as every other model, and gives it one thread per
performance core (a Whisper encoder and ONNX graphs are compute-bound, like a prompt).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from locara.device.profile import DeviceProfile
from locara.planner.budget import decoding_threads, ram_budget
from locara.planner.placement import gb
from locara.registry.manifest import Artifact, ModelManifest

# modality -> (backend, the manifest's artifacts key, working memory of one input)
MEDIA_BACKENDS: dict[str, tuple[str, int]] = {
    "stt": ("faster_whisper", 160 * 2**20),  # a 5-minute audio window, mel features, beams
    "ocr": ("rapidocr", 320 * 2**20),  # a decoded image at the default pixel limit, resized
}


@dataclass(frozen=True)
class MediaFit:
    """The plan of a speech or OCR model; ``artifact`` None means nothing fits (``why_not``)."""

    backend: str
    artifact: Artifact | None
    ram_bytes: int
    budget_bytes: int
    threads: int
    reasons: list[str] = field(default_factory=list)
    why_not: list[str] = field(default_factory=list)


def is_media(manifest: ModelManifest) -> bool:
    """Whether ``manifest`` is planned here (speech or OCR) rather than as a language model."""
    return manifest.modality in MEDIA_BACKENDS and bool(
        manifest.artifact_list(MEDIA_BACKENDS[manifest.modality][0])
    )


def plan_media(
    manifest: ModelManifest,
    device: DeviceProfile,
    *,
    sha256: str | None = None,
    budget_bytes: int | None = None,
    stored: Mapping[str, Path] | None = None,
) -> MediaFit:
    """How a speech or OCR model runs on ``device``, or why it cannot.

    ``sha256`` pins one artifact; ``stored`` maps the digests already in the store, which
    are preferred. The artifact is None when nothing fits (the last list says why).
    """
    from locara.store.sources import is_local

    backend, working = MEDIA_BACKENDS[manifest.modality]
    budget = budget_bytes or ram_budget(device)
    arts = [a for a in manifest.artifact_list(backend) if sha256 is None or a.sha256 == sha256]
    present = stored or {}

    def rank(a: Artifact) -> tuple[bool, bool]:
        local = any(is_local(s) for f in (a.files or (a,)) for s in f.sources)
        return ((a.sha256 or "") not in present, not local)

    reasons = [f"{backend}: the backend for {manifest.modality} models"]
    why_not: list[str] = []
    threads = decoding_threads(device)[1]
    for art in sorted(arts, key=rank):
        size = art.size_bytes or manifest.size_bytes or 0
        need = size + working
        if need > budget:
            why_not.append(
                f"{backend} {art.quant or ''}: needs about {gb(need)}; the budget is {gb(budget)}"
            )
            continue
        reasons.append(
            f"memory about {gb(need)}: {gb(size)} of weights and {gb(working)} for one input"
        )
        reasons.append(
            f"threads {threads}: one per performance core (its graphs are compute-bound)"
        )
        return MediaFit(backend, art, need, budget, threads, reasons, why_not)
    if not arts:
        why_not.append(
            f"{manifest.id} has no {backend} artifact" + (" with that digest" if sha256 else "")
        )
    return MediaFit(backend, None, 0, budget, threads, reasons, why_not)
