"""Transcription and OCR on a loaded model, each request ending in exactly one ledger row.

The CLI and the server call these with a ``ModelHandle`` (loaded by ``engine.loader`` or
leased from the pool); they check the model can do the task, run it, and record the
usage (``accounting.media_record``) whether it finished or failed. Blocking: the server
runs them in a thread.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from locara.backends.media import (
    AudioProgress,
    OcrResult,
    TranscribeRequest,
    Transcript,
    ocr_model,
    speech_model,
)
from locara.engine.accounting import media_record
from locara.engine.loader import ModelHandle
from locara.errors import LocaraError
from locara.ledger import record_usage
from locara.settings import Settings

if TYPE_CHECKING:
    from PIL import Image


def transcribe(
    settings: Settings,
    handle: ModelHandle,
    path: Path,
    req: TranscribeRequest,
    *,
    app: str,
    surface: str,
    load_s: float | None = None,
    progress: AudioProgress | None = None,
) -> Transcript:
    """The transcript of the audio file at ``path``; the request is recorded in the ledger."""
    model_id = handle.resolved.manifest.id
    started = time.perf_counter()
    try:
        transcript = speech_model(handle.model, model_id).transcribe(path, req, progress)
    except LocaraError as exc:
        _record_failure(settings, handle, app, surface, started, exc, load_s)
        raise
    record_usage(
        settings,
        media_record(
            handle, app=app, surface=surface, status="ok",
            elapsed_s=time.perf_counter() - started, audio_s=transcript.duration_s,
            tokens=transcript.tokens, load_s=load_s,
        ),
    )  # fmt: skip
    return transcript


def read_images(
    settings: Settings,
    handle: ModelHandle,
    images: Sequence[Image.Image],
    *,
    app: str,
    surface: str,
    load_s: float | None = None,
) -> list[OcrResult]:
    """The text in each image, in order; the request is recorded in the ledger."""
    model_id = handle.resolved.manifest.id
    started = time.perf_counter()
    try:
        model = ocr_model(handle.model, model_id)
        results = [model.read(img) for img in images]
    except LocaraError as exc:
        _record_failure(settings, handle, app, surface, started, exc, load_s)
        raise
    record_usage(
        settings,
        media_record(
            handle, app=app, surface=surface, status="ok",
            elapsed_s=time.perf_counter() - started, images=len(results), load_s=load_s,
        ),
    )  # fmt: skip
    return results


def _record_failure(
    settings: Settings,
    handle: ModelHandle,
    app: str,
    surface: str,
    started: float,
    exc: LocaraError,
    load_s: float | None,
) -> None:
    elapsed = time.perf_counter() - started
    rec = media_record(
        handle, app=app, surface=surface, status="error", elapsed_s=elapsed,
        error=exc.message, load_s=load_s,
    )  # fmt: skip
    record_usage(settings, rec)
