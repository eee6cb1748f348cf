"""The AdapterPackage manifest: one JSON document per adapter, bound to its base by digest.

A name says nothing about bytes: PEFT's ``base_model_name_or_path`` is a free string and
two quantizations of one model share a name. So the manifest names the base by the
SHA-256 of the exact artifact the adapter was made for, and every load compares it
with the loaded model's digest. The JSON Schema is ``docs/adapter-manifest.schema.json``
(``python -m locara.ecology.adapter_manifest`` writes it).

Scales: llama.cpp multiplies ``B @ A`` by ``scale * alpha / rank``; this manifest
stores the adapter in that convention (``lora.alpha``, ``lora.rank``) and records how
the source's own convention was converted (``lora.source``):

- PEFT: ``lora_alpha / r`` — the same; alpha is kept.
- PEFT with ``use_rslora``: ``lora_alpha / sqrt(r)`` — alpha becomes ``lora_alpha * sqrt(r)``.
- MLX (mlx-lm): a raw ``scale`` — alpha becomes ``scale * r``.
"""

from __future__ import annotations

import json
import sys
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

_SHA = r"^[0-9a-f]{64}$"
_ID = r"^[a-z0-9][a-z0-9._-]{0,127}$"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class AdapterFile(_Strict):
    name: str = Field(pattern=r"^[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}$")
    sha256: str = Field(pattern=_SHA)
    size_bytes: int = Field(ge=1)
    format: Literal["gguf"] = "gguf"


class BaseBinding(_Strict):
    """The exact artifact the adapter applies to."""

    sha256: str = Field(pattern=_SHA, description="SHA-256 of the base model's artifact file")
    model_id: str | None = Field(default=None, description="the catalog id it was added for")
    architecture: str


class ScaleSource(_Strict):
    """The source's own scale convention, before conversion to llama.cpp's alpha/rank."""

    format: Literal["gguf", "peft", "mlx"]
    convention: Literal["alpha/rank", "alpha/sqrt(rank)", "raw"]
    alpha: float | None = None  # the source's alpha (PEFT lora_alpha, GGUF adapter.lora.alpha)
    scale: float | None = None  # MLX's raw scale


class LoraParams(_Strict):
    rank: int = Field(ge=1)
    alpha: float = Field(ge=0, description="llama.cpp's adapter.lora.alpha (0: scale 1)")
    convention: Literal["alpha/rank"] = "alpha/rank"
    source: ScaleSource
    target_modules: list[str]


class AdapterManifest(_Strict):
    schema_version: Literal[1] = 1
    id: str = Field(pattern=_ID)
    version: str = Field(default="1", min_length=1, max_length=64)
    kind: Literal["lora"] = Field(
        default="lora", description="the delta kind; others (e.g. control vectors) may follow"
    )
    base: BaseBinding
    files: list[AdapterFile] = Field(min_length=1)
    lora: LoraParams
    task: str | None = None
    niche: str | None = None
    license: str = "NOASSERTION"
    training_data: str | None = None
    description: str | None = None
    created_at: str

    @property
    def sha256(self) -> str:
        """The adapter's own digest (its GGUF file)."""
        return self.files[0].sha256


def json_schema() -> str:
    return json.dumps(AdapterManifest.model_json_schema(), indent=2, sort_keys=True) + "\n"


if __name__ == "__main__":
    sys.stdout.write(json_schema())
