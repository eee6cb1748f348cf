"""The model manifest as strict pydantic models.

A manifest describes one logical model; ``artifacts`` maps a backend name to one
artifact or a list of them (one per quant). Every name that later becomes part of
a path is validated here, on load, before anything touches the disk.
"""

from __future__ import annotations

import datetime as dt
import hashlib
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, field_validator, model_validator

from locara.registry.names import check_filename, check_model_id, check_quant, check_sha256

Sha256 = Annotated[str, AfterValidator(check_sha256)]
FileName = Annotated[str, AfterValidator(check_filename)]
ModelId = Annotated[str, AfterValidator(check_model_id)]
Quant = Annotated[str, AfterValidator(check_quant)]

Modality = Literal["chat", "embedding", "stt", "ocr", "vision"]
# ctranslate2: a CTranslate2 model directory (faster-whisper); onnx: ONNX Runtime graphs.
ArtifactFormat = Literal["gguf", "mlx", "safetensors", "ggml", "ctranslate2", "onnx"]
# Backends an artifact can be declared for; whisper.cpp reads the GGML speech models,
# faster_whisper the CTranslate2 ones, rapidocr its detection/recognition ONNX graphs.
BACKENDS = ("llama_cpp", "mlx", "whispercpp", "faster_whisper", "rapidocr")

_SOURCE_SCHEMES = ("https://", "http://", "hf://", "package://", "file://", "derived://")


def _check_source(url: str) -> str:
    if not url.startswith(_SOURCE_SCHEMES):
        raise ValueError(f"source {url!r} must start with one of {', '.join(_SOURCE_SCHEMES)}")
    return url


Source = Annotated[str, AfterValidator(_check_source)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)


class ArtifactFile(_Strict):
    """One file of a multi-file artifact (a GGUF part, a projector, an MLX shard)."""

    name: FileName
    url: Source | None = None
    mirrors: tuple[Source, ...] = ()
    sha256: Sha256
    size_bytes: int = Field(gt=0)
    role: Literal[
        "model", "part", "mmproj", "config", "tokenizer", "weights", "vocabulary",
        "detector", "recognizer", "classifier", "other",
    ] = "other"  # fmt: skip

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the bytes can come from, in the order to try them."""
        return ((self.url,) if self.url else ()) + self.mirrors

    @property
    def extension(self) -> str:
        """The blob's file extension, from the file name (``model.<ext>`` in the store)."""
        _, dot, ext = self.name.rpartition(".")
        return ext.lower() if dot and ext.isalnum() else "bin"


def tree_digest(files: list[tuple[str, str]]) -> str:
    """The digest of a multi-file artifact: SHA-256 of its ``sha256sum``-style listing.

    One line ``<sha256>  <name>`` per file, sorted by name, so the digest names the
    exact set of files and their contents; apps pin it like a single file's hash.
    """
    listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(files))
    return hashlib.sha256(listing.encode()).hexdigest()


class Artifact(_Strict):
    """A downloadable form of a model for one backend: a single file or a set of files.

    For a multi-file artifact ``sha256`` is the tree digest of its files (computed
    when absent, checked when present), so every artifact has one content name.
    """

    format: ArtifactFormat
    quant: Quant | None = None
    url: Source | None = None
    mirrors: tuple[Source, ...] = ()
    sha256: Sha256 | None = None
    size_bytes: int | None = Field(default=None, gt=0)
    files: tuple[ArtifactFile, ...] | None = None

    @model_validator(mode="before")
    @classmethod
    def _tree_sha(cls, data: Any) -> Any:
        if not isinstance(data, dict) or not isinstance(data.get("files"), list | tuple):
            return data
        pairs = [
            (f.get("name"), f.get("sha256")) if isinstance(f, dict) else (f.name, f.sha256)
            for f in data["files"]
            if isinstance(f, dict | ArtifactFile)
        ]
        if not pairs or not all(isinstance(n, str) and isinstance(h, str) for n, h in pairs):
            return data  # field validation reports what is wrong
        digest = tree_digest([(str(n), str(h)) for n, h in pairs])
        given = data.get("sha256")
        if given is not None and given != digest:
            raise ValueError(
                f"sha256 of a multi-file artifact must be the tree digest {digest}, not {given}"
            )
        sizes = [
            f.get("size_bytes") if isinstance(f, dict) else f.size_bytes for f in data["files"]
        ]
        extra: dict[str, Any] = {"sha256": digest}
        ints = [n for n in sizes if isinstance(n, int)]
        if data.get("size_bytes") is None and len(ints) == len(sizes):
            extra["size_bytes"] = sum(ints)
        return {**data, **extra}

    @model_validator(mode="after")
    def _one_shape(self) -> Artifact:
        if self.files is not None:
            if not self.files:
                raise ValueError("files must list at least one file")
            names = [f.name for f in self.files]
            if len(set(names)) != len(names):
                raise ValueError("file names in one artifact must be unique")
            if self.url is not None or self.mirrors:
                raise ValueError("a multi-file artifact lists url/mirrors per file, not overall")
            for f in self.files:
                if f.url is None and not f.mirrors:
                    raise ValueError(f"file {f.name} needs a url or at least one mirror")
        elif self.url is None and not self.mirrors:
            raise ValueError("a single-file artifact needs a url or at least one mirror")
        return self

    @property
    def primary_file(self) -> ArtifactFile | None:
        """The file a backend opens (the model or first part); None for single files."""
        if self.files is None:
            return None
        for role in ("model", "part"):
            for f in self.files:
                if f.role == role:
                    return f
        return self.files[0]

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the bytes can come from, in the order to try them."""
        return ((self.url,) if self.url else ()) + self.mirrors

    @property
    def extension(self) -> str:
        return {
            "gguf": "gguf", "mlx": "mlx", "safetensors": "safetensors", "ggml": "bin",
            "ctranslate2": "bin", "onnx": "onnx",
        }[self.format]  # fmt: skip


class ModelConfig(_Strict):
    chat_template: str | None = None
    stop_tokens: tuple[str, ...] = ()
    default_params: dict[str, float | int] = Field(default_factory=dict)


class ModelManifest(_Strict):
    """A curated logical model: identity, license, limits and its artifacts per backend."""

    id: ModelId
    version: str
    display_name: str = Field(alias="displayName")
    description: str = ""
    tags: tuple[str, ...] = ()
    license: str
    license_url: str | None = None
    modality: Modality
    context_length: int = Field(gt=0)
    size_bytes: int | None = Field(default=None, gt=0)
    ram_required_gb: float | None = Field(default=None, gt=0)
    artifacts: dict[str, Artifact | tuple[Artifact, ...]]
    config: ModelConfig = Field(default_factory=ModelConfig)
    validated_at: dt.date | None = None
    validated_by: str | None = None
    # False when any hash was not read from a trusted source or computed from the file.
    curated: bool = True
    signature: str | None = None

    @field_validator("artifacts", mode="before")
    @classmethod
    def _one_name_for_llama_cpp(cls, value: Any) -> Any:
        """Manifests written before llama.cpp had one name here key its artifacts
        "llamacpp": read as "llama_cpp" (a signature covers the file as written)."""
        if isinstance(value, dict) and "llamacpp" in value:
            if "llama_cpp" in value:
                raise ValueError('artifacts has both "llamacpp" and "llama_cpp": keep one')
            value = {("llama_cpp" if k == "llamacpp" else k): v for k, v in value.items()}
        return value

    @model_validator(mode="after")
    def _has_artifacts(self) -> ModelManifest:
        if not self.artifacts:
            raise ValueError("a manifest needs at least one artifact")
        for backend in self.artifacts:
            if backend not in BACKENDS:
                raise ValueError(
                    f"unknown backend {backend!r} in artifacts ({', '.join(BACKENDS)})"
                )
        return self

    def artifact_list(self, backend: str) -> tuple[Artifact, ...]:
        """The artifacts for ``backend`` as a tuple, whatever form the manifest used."""
        entry = self.artifacts.get(backend)
        if entry is None:
            return ()
        return entry if isinstance(entry, tuple) else (entry,)

    def all_artifacts(self) -> list[tuple[str, Artifact]]:
        return [(b, a) for b in self.artifacts for a in self.artifact_list(b)]

    def artifact_by_digest(self, sha256: str) -> tuple[str, Artifact] | None:
        """The (backend, artifact) whose content digest is ``sha256``, if any."""
        for backend, art in self.all_artifacts():
            if art.sha256 == sha256:
                return backend, art
        return None


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of a model manifest (exported to docs/manifest.schema.json)."""
    schema = ModelManifest.model_json_schema(by_alias=True)
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    schema["$id"] = "https://locara.dev/schemas/manifest.schema.json"
    return schema


if __name__ == "__main__":  # regenerate: python -m locara.registry.manifest > docs/...
    import json
    import sys

    sys.stdout.write(json.dumps(manifest_json_schema(), indent=2, sort_keys=True) + "\n")
