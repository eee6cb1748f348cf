"""The model manifest (SPEC §1) as strict pydantic models.

A manifest describes one logical model; ``artifacts`` maps a backend name to one
artifact or a list of them (one per quant). Every name that later becomes part of
a path is validated here, on load, before anything touches the disk.
"""

from __future__ import annotations

import datetime as dt
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field, model_validator

from locara.registry.names import check_filename, check_model_id, check_quant, check_sha256

Sha256 = Annotated[str, AfterValidator(check_sha256)]
FileName = Annotated[str, AfterValidator(check_filename)]
ModelId = Annotated[str, AfterValidator(check_model_id)]
Quant = Annotated[str, AfterValidator(check_quant)]

Modality = Literal["chat", "embedding", "stt", "ocr", "vision"]
ArtifactFormat = Literal["gguf", "mlx", "safetensors"]

_SOURCE_SCHEMES = ("https://", "http://", "hf://", "package://", "file://")


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
    role: Literal["model", "part", "mmproj", "config", "tokenizer", "weights", "other"] = "other"


class Artifact(_Strict):
    """A downloadable form of a model for one backend: a single file or a set of files."""

    format: ArtifactFormat
    quant: Quant | None = None
    url: Source | None = None
    mirrors: tuple[Source, ...] = ()
    sha256: Sha256 | None = None
    size_bytes: int | None = Field(default=None, gt=0)
    files: tuple[ArtifactFile, ...] | None = None

    @model_validator(mode="after")
    def _one_shape(self) -> Artifact:
        if self.files is not None:
            if not self.files:
                raise ValueError("files must list at least one file")
            names = [f.name for f in self.files]
            if len(set(names)) != len(names):
                raise ValueError("file names in one artifact must be unique")
        elif self.url is None and not self.mirrors:
            raise ValueError("a single-file artifact needs a url or at least one mirror")
        return self

    @property
    def sources(self) -> tuple[str, ...]:
        """Where the bytes can come from, in the order to try them."""
        return ((self.url,) if self.url else ()) + self.mirrors

    @property
    def extension(self) -> str:
        return {"gguf": "gguf", "mlx": "mlx", "safetensors": "safetensors"}[self.format]


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

    @model_validator(mode="after")
    def _has_artifacts(self) -> ModelManifest:
        if not self.artifacts:
            raise ValueError("a manifest needs at least one artifact")
        for backend in self.artifacts:
            if backend not in ("llamacpp", "mlx"):
                raise ValueError(f"unknown backend {backend!r} in artifacts (llamacpp, mlx)")
        return self

    def artifact_list(self, backend: str) -> tuple[Artifact, ...]:
        """The artifacts for ``backend`` as a tuple, whatever form the manifest used."""
        entry = self.artifacts.get(backend)
        if entry is None:
            return ()
        return entry if isinstance(entry, tuple) else (entry,)

    def all_artifacts(self) -> list[tuple[str, Artifact]]:
        return [(b, a) for b in self.artifacts for a in self.artifact_list(b)]


def manifest_json_schema() -> dict[str, Any]:
    """The JSON Schema of a model manifest (exported to docs/)."""
    return ModelManifest.model_json_schema(by_alias=True)
