"""Model references: ``id``, ``id:quant`` and ``id@sha256:<hex>`` (what apps pin)."""

from __future__ import annotations

from dataclasses import dataclass

from locara.errors import InvalidReferenceError
from locara.registry.names import check_model_id, check_quant, check_sha256

ACCEPTED_FORMS = "MODEL, MODEL:QUANT or MODEL@sha256:<64 hex>"


@dataclass(frozen=True)
class ModelRef:
    """A parsed reference to a logical model, optionally narrowed to a quant or a digest."""

    id: str
    quant: str | None = None
    sha256: str | None = None

    def __str__(self) -> str:
        if self.sha256:
            return f"{self.id}@sha256:{self.sha256}"
        if self.quant:
            return f"{self.id}:{self.quant}"
        return self.id


def parse_ref(text: str) -> ModelRef:
    """Parse a reference strictly; anything else is an error naming the accepted forms."""
    raw = text.strip()
    try:
        if "@" in raw:
            model, _, digest = raw.partition("@")
            if not digest.startswith("sha256:"):
                raise InvalidReferenceError(f"invalid digest in {text!r}", "")
            return ModelRef(check_model_id(model), sha256=check_sha256(digest[len("sha256:") :]))
        if ":" in raw:
            model, _, quant = raw.partition(":")
            return ModelRef(check_model_id(model), quant=check_quant(quant))
        return ModelRef(check_model_id(raw))
    except InvalidReferenceError as exc:
        raise InvalidReferenceError(
            f"invalid model reference {text!r}: {exc.message}",
            f"use {ACCEPTED_FORMS}",
        ) from None
