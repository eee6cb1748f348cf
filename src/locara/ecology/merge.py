"""Bake a LoRA adapter into its base: ``W += scale * alpha / rank * B @ A``, with numpy.

The merged model is the base file with the adapted tensors rewritten in place (same
types, same offsets), so every other byte — metadata, vocabulary, untouched tensors —
is the base's. Only F32 and F16 tensors can take the delta exactly; a quantized target
is refused (requantizing would change the rest of the block). The new file's lineage
names both parents (base and adapter digests), the operator and its parameters.
"""

from __future__ import annotations

import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from locara.backends.base import AdapterUse
from locara.ecology.lineage import LineageRecord, record_lineage, tool_version
from locara.ecology.lora import read_lora
from locara.errors import UnsupportedFeatureError, UsageError
from locara.settings import Settings
from locara.store.blobs import hash_file

if TYPE_CHECKING:
    from locara.registry.manifest import ModelManifest

_FLOAT_TYPES = {"F32": np.float32, "F16": np.float16}


@dataclass(frozen=True)
class MergeResult:
    path: Path
    sha256: str
    size_bytes: int
    tensors: int  # tensors rewritten


def merge_adapter(
    settings: Settings, base_path: Path, base_sha256: str, use: AdapterUse, out: Path
) -> MergeResult:
    """Write ``base`` with ``use`` baked in to ``out`` and record the lineage edge.

    ``use`` must already be bound to the base (``AdapterRegistry.bind``). ``out`` is
    written beside itself first and renamed into place, so a failure leaves nothing.
    """
    import gguf

    if out.exists():
        raise UsageError(f"{out} already exists", "pass another -o, or remove the file first")
    lora = read_lora(use.path)
    adapter = gguf.GGUFReader(str(use.path))
    factors = {t.name: np.asarray(t.data, dtype=np.float32) for t in adapter.tensors}
    tmp = out.with_name(f".{out.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        shutil.copyfile(base_path, tmp)
        base = gguf.GGUFReader(str(tmp), "r+")
        tensors = {t.name: t for t in base.tensors}
        for target in lora.targets:
            t = tensors[target.tensor]
            dtype = _FLOAT_TYPES.get(t.tensor_type.name)
            if dtype is None:
                raise UnsupportedFeatureError(
                    f"{target.tensor} is {t.tensor_type.name} in the base; merging needs F32 or "
                    "F16 weights",
                    "merge into an F16 or F32 build of the base, or apply the adapter at run "
                    f"time: locara run MODEL --adapter {use.id}",
                )
            a = factors[target.tensor + ".lora_a"]  # (rank, n_in)
            b = factors[target.tensor + ".lora_b"]  # (n_out, rank)
            weights = t.data  # a writable view into the file, numpy shape (n_out, n_in)
            scale = use.scale * lora.alpha / target.rank if lora.alpha else use.scale
            delta = scale * (b @ a)
            weights[...] = (weights.astype(np.float32) + delta).astype(dtype)
        base.data.flush()
        del base
        sha, size = hash_file(tmp)
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    record_lineage(
        settings,
        LineageRecord(
            sha256=sha,
            parents=(base_sha256, use.sha256),
            operator="merge",
            tool=tool_version("gguf", "numpy"),
            params={
                "adapter": use.id,
                "scale": use.scale,
                "alpha": lora.alpha,
                "rank": lora.rank,
                "formula": "W + scale * alpha / rank * B @ A",
            },
        ),
    )
    return MergeResult(out, sha, size, len(lora.targets))


def register_merged(
    settings: Settings, base: ModelManifest, model_id: str, result: MergeResult, about: str
) -> Path:
    """A user manifest for the merged file (``locara run MODEL_ID`` then stores and runs it)."""
    import json

    from locara.registry.names import check_model_id

    data = base.model_dump(by_alias=True, exclude_none=True, mode="json")
    quant = next((a.quant for a in base.artifact_list("llama_cpp") if a.quant), None)
    data.update(
        id=check_model_id(model_id),
        displayName=model_id,
        description=about,
        tags=[*data.get("tags", []), "merged"],
        curated=False,
        artifacts={
            "llama_cpp": [
                {
                    "format": "gguf",
                    **({"quant": quant} if quant else {}),
                    "mirrors": [result.path.resolve().as_uri()],
                    "sha256": result.sha256,
                    "size_bytes": result.size_bytes,
                }
            ]
        },
    )
    for key in ("validated_at", "validated_by", "size_bytes"):
        data.pop(key, None)
    path = settings.user_registry_dir / f"{model_id}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    return path
