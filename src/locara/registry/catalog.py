"""The catalog: finds manifests in LOCARA_REGISTRY_PATH directories, then the built-in ones."""

from __future__ import annotations

import difflib
import json
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from locara.errors import ManifestError, UnknownModelError
from locara.registry.manifest import ModelManifest
from locara.registry.names import check_model_id
from locara.settings import Settings

if TYPE_CHECKING:
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey


def builtin_registry_dir() -> Path:
    """The curated manifests shipped with Locara (``registry/models`` in the source tree)."""
    return Path(__file__).resolve().parent / "models"


def describe_validation_error(exc: ValidationError) -> str:
    """The most specific error of a pydantic failure as ``field.path: message``.

    An artifact may be one object or a list, so pydantic reports both union branches;
    the deepest location is the one that names the field the author got wrong.
    """
    best = max(exc.errors(), key=lambda e: len(e["loc"]))
    loc = ".".join(
        str(p)
        for p in best["loc"]
        if not (isinstance(p, str) and ("[" in p or p[:1].isupper()))  # union/model tags
    )
    msg = str(best.get("ctx", {}).get("error", best["msg"]))
    return f"{loc}: {msg}"


def load_manifest(
    path: Path, trusted_keys: dict[str, Ed25519PublicKey] | None = None
) -> ModelManifest:
    """Read and validate one manifest file; a bad one is a ManifestError naming the file.

    With ``trusted_keys`` the file's ed25519 signature is checked first, on the raw
    JSON, so a changed url or sha256 is refused before any field is used.
    """
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ManifestError(
            f"cannot read manifest {path}: {exc}", "fix or remove the file"
        ) from exc
    if not isinstance(data, dict):
        raise ManifestError(f"manifest {path} is not a JSON object", "fix or remove the file")
    if trusted_keys:
        from locara.registry.signing import verify_signature

        verify_signature(data, trusted_keys, str(path))
    try:
        manifest = ModelManifest.model_validate(data)
    except ValidationError as exc:
        raise ManifestError(
            f"invalid manifest {path}: {describe_validation_error(exc)}",
            "fix the field and try again",
        ) from exc
    if manifest.id != path.stem:
        raise ManifestError(
            f"manifest {path} declares id {manifest.id!r} but is named {path.stem!r}",
            f"rename the file to {manifest.id}.json",
        )
    return manifest


class Registry:
    """All manifests visible to this process; user directories shadow built-in entries."""

    def __init__(self, settings: Settings) -> None:
        self.dirs: tuple[Path, ...] = (
            *settings.registry_paths,
            settings.user_registry_dir,
            builtin_registry_dir(),
        )
        self._keys_dir = settings.trusted_keys_dir
        self._keys: dict[str, Ed25519PublicKey] | None = None

    def trusted_keys(self) -> dict[str, Ed25519PublicKey]:
        """The configured trust key set (empty: signatures are not required)."""
        if self._keys is None:
            if self._keys_dir.is_dir() and any(self._keys_dir.glob("*.pub")):
                from locara.registry.signing import load_trusted_keys

                self._keys = load_trusted_keys(self._keys_dir)
            else:
                self._keys = {}
        return self._keys

    def ids(self) -> list[str]:
        seen: dict[str, None] = {}
        for d in self.dirs:
            if d.is_dir():
                for p in sorted(d.glob("*.json")):
                    seen.setdefault(p.stem, None)
        return list(seen)

    def path_of(self, model_id: str) -> Path | None:
        check_model_id(model_id)
        for d in self.dirs:
            p = d / f"{model_id}.json"
            if p.is_file():
                return p
        return None

    def get(self, model_id: str) -> ModelManifest:
        """The manifest for ``model_id``; unknown ids raise with near-match suggestions."""
        path = self.path_of(model_id)
        if path is None:
            raise UnknownModelError(model_id, self.suggest(model_id))
        return load_manifest(path, self.trusted_keys())

    def all(self) -> list[ModelManifest]:
        return [self.get(i) for i in self.ids()]

    def suggest(self, text: str, n: int = 3) -> list[str]:
        ids = self.ids()
        close = difflib.get_close_matches(text, ids, n=n, cutoff=0.5)
        # Prefix/substring matches catch "smollm2" -> "smollm2-135m-instruct".
        extra = [i for i in ids if text and text in i and i not in close]
        return (close + extra)[:n]
