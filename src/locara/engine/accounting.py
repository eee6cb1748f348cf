"""One usage record per request, built the same way for the CLI and the server."""

from __future__ import annotations

from locara.backends.base import Chunk
from locara.engine.loader import ModelHandle
from locara.ledger import RouteUsage, Status, UsageRecord


def generation_record(
    handle: ModelHandle,
    *,
    app: str,
    surface: str,
    last: Chunk | None,
    status: Status,
    error: str | None = None,
    load_s: float | None = None,
    route: RouteUsage | None = None,
) -> UsageRecord:
    """The ledger row for one generation, from the last chunk it produced (if any).

    ``load_s`` is the time this request spent loading the model (the server passes 0
    when the model was already loaded); by default the handle's own load time.
    ``route`` says how a router policy used this generation (``locara serve --policy``).
    """
    res = handle.resolved
    if last is not None and last.finish_reason == "cancelled":
        status = "cancelled"  # the backend saw the cancel itself and ended with this chunk
    usage = last.usage if last is not None else None
    timings = last.timings if last is not None else None
    return UsageRecord(
        model_id=res.manifest.id,
        sha256=res.blob.sha256,
        backend=handle.backend,
        app=app,
        surface=surface,
        prompt_tokens=usage.prompt_tokens if usage else (last.prompt_tokens if last else 0),
        completion_tokens=(
            usage.completion_tokens if usage else (last.completion_tokens if last else 0)
        ),
        ttft_s=timings.ttft_s if timings else None,
        generation_tps=timings.rates(usage)[1] if timings and usage else None,
        load_s=handle.load_s if load_s is None else load_s,
        status=status,
        error=error,
        route=route,
    )


def remote_record(
    *,
    target: str,
    model: str,
    app: str,
    surface: str,
    prompt_tokens: int,
    completion_tokens: int,
    elapsed_s: float | None,
    route: RouteUsage,
    status: Status = "ok",
    error: str | None = None,
) -> UsageRecord:
    """The ledger row for one request a router policy escalated to a remote target.

    ``backend`` is ``remote:<target name>``, so reports never count these tokens as
    run locally; nothing about the target's credentials is recorded.
    """
    return UsageRecord(
        model_id=model,
        sha256=None,
        backend=f"remote:{target}",
        app=app,
        surface=surface,
        prompt_tokens=prompt_tokens,
        completion_tokens=completion_tokens,
        ttft_s=elapsed_s,
        status=status,
        error=error,
        route=route,
    )


def media_record(
    handle: ModelHandle,
    *,
    app: str,
    surface: str,
    status: Status,
    elapsed_s: float | None,
    audio_s: float | None = None,
    images: int = 0,
    tokens: int = 0,
    error: str | None = None,
    load_s: float | None = None,
) -> UsageRecord:
    """The ledger row for one transcription or OCR request.

    Measured in what was read: ``audio_s`` seconds of audio, or ``images``; ``tokens``
    are the text tokens a speech model produced. ``elapsed_s`` is the request's work
    time (without loading), kept where a generation keeps its time to first token.
    """
    res = handle.resolved
    return UsageRecord(
        model_id=res.manifest.id,
        sha256=res.blob.sha256,
        backend=handle.backend,
        app=app,
        surface=surface,
        completion_tokens=tokens,
        ttft_s=elapsed_s,
        load_s=handle.load_s if load_s is None else load_s,
        status=status,
        error=error,
        audio_s=audio_s,
        images=images,
    )
