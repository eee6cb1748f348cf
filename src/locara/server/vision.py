"""Images in chat requests: OpenAI ``image_url`` content parts and Ollama ``images``.

Each image is fetched (a data URI; a remote URL only when LOCARA_ALLOW_REMOTE_IMAGES is
set), size-checked from its header and decoded (``locara.media.images``) before any
model is loaded, then travels on its message (``Message.images``, the encoded bytes) to
the backend. A model without a vision projector (an ``mmproj`` file in its artifact) is
refused before it is loaded, naming the vision models to use instead; a vision model on
a runtime that cannot pass images to it is refused once it is loaded.

UNTESTED END TO END: no vision GGUF + projector is available offline here, so the path
is tested up to the worker boundary only (parsing, decoding, limits, refusals).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Sequence
from dataclasses import replace

from locara.backends.base import Message
from locara.engine.pool import Lease
from locara.errors import UnsupportedFeatureError, UsageError
from locara.media.images import image_url_bytes, open_image
from locara.registry.catalog import Registry
from locara.registry.manifest import ModelManifest
from locara.registry.refs import parse_ref
from locara.settings import Settings

MAX_IMAGES = 16  # per request: each one costs hundreds of context tokens


def _checked(data: bytes, what: str, settings: Settings) -> bytes:
    open_image(data, what, settings)  # size limit from the header, then a full decode
    return data


def openai_images(
    urls: Sequence[tuple[int, int, str]], settings: Settings
) -> dict[int, tuple[bytes, ...]]:
    """Images by message index, from ``(message, part, url)`` of ``image_url`` parts."""
    out: dict[int, tuple[bytes, ...]] = {}
    for i, j, url in urls:
        what = f"messages[{i}].content[{j}].image_url"
        out[i] = (*out.get(i, ()), _checked(image_url_bytes(url, what, settings), what, settings))
    return out


def ollama_images(images: Sequence[str], where: str, settings: Settings) -> tuple[bytes, ...]:
    """Ollama's ``images``: base64 strings (a data URI is accepted too)."""
    out = []
    for k, text in enumerate(images):
        what = f"{where}.images[{k}]"
        if text.strip()[:5].lower() == "data:":
            data = image_url_bytes(text, what, settings)
        else:
            try:
                data = base64.b64decode("".join(text.split()), validate=True)
            except (binascii.Error, ValueError) as exc:
                raise UsageError(
                    f"{what} is not valid base64 ({exc})", "send each image as base64 text"
                ) from exc
        out.append(_checked(data, what, settings))
    return tuple(out)


def attach(
    messages: tuple[Message, ...], images: dict[int, tuple[bytes, ...]]
) -> tuple[Message, ...]:
    """``messages`` with their images; refuses more than ``MAX_IMAGES`` in one request."""
    count = sum(len(v) for v in images.values())
    if count > MAX_IMAGES:
        raise UsageError(f"{count} images in one request; at most {MAX_IMAGES}", "send fewer")
    for i in images:
        if messages[i].role != "user":
            raise UsageError(
                f"messages[{i}] is a {messages[i].role} message with images",
                "send images in user messages",
            )
    return tuple(replace(m, images=images[i]) if i in images else m for i, m in enumerate(messages))


def has_projector(manifest: ModelManifest) -> bool:
    return any(f.role == "mmproj" for _, a in manifest.all_artifacts() for f in a.files or ())


def vision_models(settings: Settings) -> list[str]:
    return sorted(m.id for m in Registry(settings).all() if has_projector(m))


def check_vision_model(settings: Settings, reference: str | None) -> None:
    """Refuse, before loading, a model that cannot see: one without a vision projector."""
    manifest = Registry(settings).get(parse_ref(reference or settings.default_model).id)
    if not has_projector(manifest):
        names = ", ".join(vision_models(settings)) or "none in the registry"
        raise UnsupportedFeatureError(
            f"{manifest.id} is a text-only model (no vision projector): it cannot read images",
            f"send images to a vision model ({names}), or send text only",
        )


def require_vision(lease: Lease) -> None:
    """Refuse images for a loaded model whose runtime cannot pass them to it."""
    if not lease.handle.model.capabilities.vision:
        model = lease.handle.resolved.manifest.id
        raise UnsupportedFeatureError(
            f"{model} has a vision projector, but its {lease.handle.backend} runtime "
            "(plan: " + str(lease.handle.plan.runtime) + ") cannot pass images to it yet",
            "send text only; images need the llama-server worker started with --mmproj",
        )
