"""Speech and OCR over HTTP: ``POST /v1/audio/transcriptions`` and ``POST /v1/ocr``.

``/v1/audio/transcriptions`` is OpenAI's (multipart: ``file``, ``model``, ``language``,
``prompt``, ``response_format`` json|text|srt|verbose_json|vtt, ``temperature``,
``timestamp_granularities[]``); ``whisper-1``, the name OpenAI clients default to, means
the bundled ``whisper-tiny.en``. ``/v1/ocr`` is Locara's: a multipart ``file`` (and
``model``), or JSON ``{"model", "image_url"}`` where ``image_url`` is a data URI (or a
URL the operator allowed) as in OpenAI's content parts; it answers the text, and each
line's box and confidence.

The upload is streamed to a temporary file (the front door counts it against
LOCARA_MAX_UPLOAD_BYTES), checked before any model is loaded, then run on a model
leased from the pool in a thread of its own; ``engine.media`` records the usage.
"""

from __future__ import annotations

import math
import re
import shutil
import tempfile
import time
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, File, Form, Request, UploadFile
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from pydantic import BaseModel, ConfigDict, ValidationError
from starlette.datastructures import UploadFile as FormFile

from locara.backends.media import TranscribeRequest
from locara.engine.runner import in_thread
from locara.errors import UnsupportedFeatureError, UsageError
from locara.server.common import app_name, service
from locara.server.errors import HTTPError, validation_message
from locara.server.service import Caller, Service

router = APIRouter(tags=["media"])

DEFAULT_STT_MODEL = "whisper-tiny.en"
DEFAULT_OCR_MODEL = "rapidocr-ppocrv4"
# What OpenAI clients send by default; it means the bundled speech model here.
MODEL_ALIASES = {"whisper-1": DEFAULT_STT_MODEL}
GRANULARITIES = ("segment", "word")
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,99}")


def _check_modality(svc: Service, reference: str, modality: str, use: str) -> str:
    """Refuse a model of another kind before it is loaded; the catalog id otherwise."""
    from locara.registry.catalog import Registry
    from locara.registry.refs import parse_ref

    manifest = Registry(svc.settings).get(parse_ref(reference).id)
    if manifest.modality != modality:
        kind = {"stt": "a speech-to-text", "ocr": "an OCR", "embedding": "an embedding"}
        have = kind.get(manifest.modality, f"a {manifest.modality}")
        raise UnsupportedFeatureError(
            f"{manifest.id} is {have} model, not {kind[modality]} model", use
        )
    return manifest.id


async def _spool(upload: UploadFile) -> Path:
    """The upload in a temporary directory of its own, under the client's file name when
    that is a safe one (errors name it); PyAV reads files."""
    name = Path(upload.filename or "").name
    if not _SAFE_NAME.fullmatch(name):
        name = "upload" + (Path(name).suffix if _SAFE_NAME.fullmatch(Path(name).suffix[1:]) else "")

    def copy() -> Path:
        path = Path(tempfile.mkdtemp(prefix="locara-upload-")) / name
        with path.open("wb") as f:
            shutil.copyfileobj(upload.file, f, 1 << 20)
        return path

    return await in_thread(copy, name="locara-upload")


@router.post("/v1/audio/transcriptions", response_model=None)
async def transcriptions(
    request: Request,
    file: Annotated[UploadFile, File(description="The audio: wav, mp3, m4a, ogg, flac ...")],
    model: Annotated[str, Form()] = DEFAULT_STT_MODEL,
    language: Annotated[str | None, Form()] = None,
    prompt: Annotated[str | None, Form()] = None,
    response_format: Annotated[str, Form()] = "json",
    temperature: Annotated[float, Form()] = 0.0,
    timestamp_granularities: Annotated[
        list[str] | None, Form(alias="timestamp_granularities[]")
    ] = None,
) -> Response:
    """Transcribe an audio file (OpenAI's API); the speech model runs on this machine."""
    from locara.engine.media import transcribe
    from locara.media import audio
    from locara.media.transcript_formats import check_format, render

    svc = service(request)
    caller = Caller(app_name(request), "openai")
    check_format(response_format)
    if not math.isfinite(temperature) or not 0 <= temperature <= 1:
        raise UsageError(f"invalid temperature {temperature}", "pass a temperature in [0, 1]")
    grains = set(timestamp_granularities or ())
    if not grains <= set(GRANULARITIES):
        raise UsageError(
            f"unknown timestamp_granularities {sorted(grains - set(GRANULARITIES))}",
            "use segment and/or word",
        )
    words = "word" in grains
    if words and response_format != "verbose_json":
        raise UsageError(
            "word timestamps need response_format verbose_json", "pass response_format=verbose_json"
        )
    reference = MODEL_ALIASES.get(model, model)
    _check_modality(
        svc, reference, "stt", f"transcribe with {DEFAULT_STT_MODEL}, or list models: locara ls"
    )
    path = await _spool(file)
    try:
        # A file that is not audio is refused before any model is loaded.
        await in_thread(audio.probe, path, name="locara-probe")
        req = TranscribeRequest(language, prompt, temperature, words)
        transcript, _ = await svc.media(
            reference,
            caller,
            lambda lease: transcribe(
                svc.settings, lease.handle, path, req,
                app=caller.app, surface=caller.surface, load_s=lease.load_s,
            ),
            name="locara-transcribe",
            tokens=lambda t: t.tokens,
        )  # fmt: skip
    finally:
        shutil.rmtree(path.parent, ignore_errors=True)
    out = render(transcript, response_format, words)
    headers = {"X-Locara-Warning": "; ".join(transcript.warnings)} if transcript.warnings else None
    if isinstance(out, str):
        media = "text/vtt" if response_format == "vtt" else "text/plain"
        return PlainTextResponse(out, media_type=media, headers=headers)
    out["usage"] = {"type": "duration", "seconds": math.ceil(transcript.duration_s)}
    if transcript.warnings:
        out["warnings"] = list(transcript.warnings)
    return JSONResponse(out, headers=headers)


class ImageUrl(BaseModel):
    model_config = ConfigDict(extra="forbid")
    url: str


class OcrBody(BaseModel):
    model_config = ConfigDict(extra="forbid")
    model: str = DEFAULT_OCR_MODEL
    image_url: str | ImageUrl


_OCR_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "multipart/form-data": {
                "schema": {
                    "type": "object",
                    "required": ["file"],
                    "properties": {
                        "file": {"type": "string", "format": "binary"},
                        "model": {"type": "string", "default": DEFAULT_OCR_MODEL},
                    },
                }
            },
            "application/json": {"schema": OcrBody.model_json_schema()},
        },
    }
}


@router.post("/v1/ocr", openapi_extra=_OCR_BODY)
async def ocr(request: Request) -> dict[str, Any]:
    """The text in an image: a multipart ``file``, or JSON with an ``image_url`` data URI."""
    from locara.engine.media import read_images
    from locara.media.images import image_url_bytes, open_image

    svc = service(request)
    caller = Caller(app_name(request), "openai")
    settings = svc.settings
    if request.headers.get("content-type", "").lower().startswith("multipart/form-data"):
        form = await request.form(max_files=1, max_fields=4)
        upload, reference = form.get("file"), form.get("model") or DEFAULT_OCR_MODEL
        if not isinstance(upload, FormFile) or not isinstance(reference, str):
            raise HTTPError(400, "send the image as the multipart file field 'file'", param="file")
        what = f"file {upload.filename or 'upload'!r}"
        # Bigger than an uncompressed RGBA image at the pixel limit: not worth reading.
        if upload.size is not None and upload.size > settings.max_image_pixels * 4:
            raise UsageError(
                f"{what} is {upload.size} bytes, more than an image within the pixel limit",
                "send a smaller image, or raise LOCARA_MAX_IMAGE_PIXELS",
            )
        data = await in_thread(upload.file.read, name="locara-upload")
    else:
        try:
            body = OcrBody.model_validate_json(await request.body())
        except ValidationError as exc:
            message, field = validation_message([dict(e) for e in exc.errors()])
            raise HTTPError(
                400, message, 'send {"image_url": "data:image/png;base64,..."}', param=field
            ) from None
        reference = body.model
        url = body.image_url if isinstance(body.image_url, str) else body.image_url.url
        what = "image_url"
        data = await in_thread(image_url_bytes, url, what, settings, name="locara-image")
    _check_modality(
        svc, reference, "ocr", f"read text with {DEFAULT_OCR_MODEL}, or list models: locara ls"
    )
    image = await in_thread(open_image, data, what, settings, name="locara-image")
    started = time.perf_counter()
    results, model_id = await svc.media(
        reference,
        caller,
        lambda lease: read_images(
            settings, lease.handle, [image],
            app=caller.app, surface=caller.surface, load_s=lease.load_s,
        ),
        name="locara-ocr",
    )  # fmt: skip
    r = results[0]
    return {
        "object": "ocr.result",
        "model": model_id,
        "text": r.text,
        "width": r.width,
        "height": r.height,
        "lines": [
            {
                "text": ln.text,
                "confidence": round(ln.confidence, 4),
                "box": [list(p) for p in ln.box],
            }
            for ln in r.lines
        ],
        "usage": {"images": 1, "seconds": round(time.perf_counter() - started, 3)},
    }
