"""The app manifest ``locara.app.json``: an app and the exact models it pins.

    {"id": "notes", "name": "Notes", "version": "1.2.0",
     "models": ["smollm2-135m-instruct@sha256:<64 hex>",
                {"id": "tiny", "bundled": true, "path": "models/tiny.gguf", "sha256": "<hex>"}]}

A pin names one artifact by digest, so an app gets the same bytes on every machine.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError

from locara.errors import InvalidReferenceError, ManifestError
from locara.registry.names import check_model_id, check_sha256
from locara.registry.refs import ModelRef, parse_ref

APP_MANIFEST = "locara.app.json"

Sha256 = Annotated[str, AfterValidator(check_sha256)]
AppId = Annotated[str, AfterValidator(check_model_id)]


def _check_pin(text: str) -> str:
    ref = parse_ref(text)
    if ref.sha256 is None:
        raise InvalidReferenceError(
            f"app model {text!r} is not pinned",
            f"pin an exact artifact: {ref.id}@sha256:<hex> (locara pull {ref.id} prints it)",
        )
    return text


def _check_relpath(text: str) -> str:
    p = Path(text)
    if not text or p.is_absolute() or ".." in p.parts or "\0" in text or "\\" in text:
        raise ValueError(f"bundled path {text!r} must be a relative path inside the app")
    return text


Pin = Annotated[str, AfterValidator(_check_pin)]
RelPath = Annotated[str, AfterValidator(_check_relpath)]


class BundledModel(BaseModel):
    """A small model file shipped inside the app; verified and stored like any other."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    id: AppId
    bundled: Literal[True]
    path: RelPath
    sha256: Sha256


class AppManifest(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    id: AppId
    name: str = Field(min_length=1)
    version: str = Field(min_length=1)
    models: tuple[Pin | BundledModel, ...] = Field(min_length=1)

    def pins(self) -> list[ModelRef]:
        return [parse_ref(m) for m in self.models if isinstance(m, str)]


def load_app_manifest(path: Path) -> tuple[AppManifest, Path]:
    """Read ``path`` (the manifest or the app directory holding it); return it and the app dir."""
    file = path / APP_MANIFEST if path.is_dir() else path
    try:
        data = json.loads(file.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ManifestError(
            f"no app manifest at {file}", f"create {APP_MANIFEST} in the app directory"
        ) from exc
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ManifestError(f"cannot read app manifest {file}: {exc}", "fix the JSON") from exc
    try:
        return AppManifest.model_validate(data), file.parent
    except ValidationError as exc:
        from locara.registry.catalog import describe_validation_error

        raise ManifestError(
            f"invalid app manifest {file}: {describe_validation_error(exc)}",
            'models are "<id>@sha256:<hex>" pins or {"id","bundled":true,"path","sha256"}',
        ) from exc
