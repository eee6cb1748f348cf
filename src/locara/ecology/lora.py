"""LoRA adapters in GGUF: what one holds, and whether it fits a base model.

llama.cpp loads an adapter whose architecture and tensor shapes match the model, and
never asks which checkpoint it was trained on. These checks are the shape half of
Locara's binding (the digest half is in ``locara.ecology.adapters``): each runs on the
GGUF headers alone, before llama.cpp sees either file.

A GGUF LoRA holds, per adapted weight ``W`` (GGUF shape ``(n_in, n_out)``), a pair
``<W>.lora_a`` of GGUF shape ``(n_in, rank)`` and ``<W>.lora_b`` of ``(rank, n_out)``;
llama.cpp adds ``scale * alpha / rank * B @ A`` to ``W x`` (``alpha`` 0 means 1).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from locara.device.gguf_meta import GGUFInfo, read_gguf
from locara.errors import AdapterMismatchError, ModelFormatError, UsageError

A_SUFFIX, B_SUFFIX = ".lora_a", ".lora_b"
# llama.cpp accepts any float; beyond this an adapter's delta swamps the weights it
# adapts, which is a typo (a scale of 50 for 0.5), not a use.
MAX_SCALE = 8.0


@dataclass(frozen=True)
class LoraTarget:
    """One adapted weight: its base tensor, rank and the base shape it expects."""

    tensor: str  # the base tensor, e.g. "blk.0.attn_v.weight"
    rank: int
    n_in: int
    n_out: int


@dataclass(frozen=True)
class LoraInfo:
    """What a GGUF LoRA adapter's header says."""

    path: Path
    architecture: str
    alpha: float  # adapter.lora.alpha; 0 means "no alpha": llama.cpp then scales by 1
    targets: tuple[LoraTarget, ...]

    @property
    def rank(self) -> int:
        """The largest rank (adapters made by one trainer have one rank everywhere)."""
        return max(t.rank for t in self.targets)

    @property
    def modules(self) -> tuple[str, ...]:
        """The adapted module kinds, e.g. ("attn_v", "ffn_down")."""
        kinds = {
            t.tensor.split(".")[-2] if t.tensor.count(".") >= 2 else t.tensor for t in self.targets
        }
        return tuple(sorted(kinds))


def read_lora(path: Path) -> LoraInfo:
    """Parse an adapter GGUF; anything that is not a complete LoRA adapter raises."""
    info = read_gguf(path)  # not GGUF, truncated: ModelFormatError naming the file
    kind = info.get("general.type")
    if kind != "adapter" or info.get("adapter.type") != "lora":
        what = "a model" if kind in (None, "model") else f"general.type {kind!r}"
        raise ModelFormatError(
            f"{path.name} is {what}, not a LoRA adapter (general.type 'adapter', "
            "adapter.type 'lora')",
            "pass a LoRA GGUF (llama.cpp's convert_lora_to_gguf.py writes one) or a PEFT directory",
        )
    alpha = float(info.get("adapter.lora.alpha", 0.0))
    if not math.isfinite(alpha) or alpha < 0:
        raise ModelFormatError(
            f"{path.name}: adapter.lora.alpha {alpha} is not a finite number >= 0",
            "rewrite the adapter with a sane alpha",
        )
    shapes = {t.name: t.shape for t in info.tensors}
    targets: list[LoraTarget] = []
    for name, a_shape in shapes.items():
        if not name.endswith(A_SUFFIX):
            continue
        base = name[: -len(A_SUFFIX)]
        b_shape = shapes.get(base + B_SUFFIX)
        if b_shape is None:
            raise ModelFormatError(
                f"{path.name}: {name} has no {base}{B_SUFFIX}", "the adapter file is incomplete"
            )
        if len(a_shape) != 2 or len(b_shape) != 2 or a_shape[1] != b_shape[0]:
            raise ModelFormatError(
                f"{path.name}: {base} has lora_a {a_shape} and lora_b {b_shape}, whose ranks "
                "differ",
                "the adapter file is corrupt: convert it again",
            )
        targets.append(LoraTarget(base, a_shape[1], a_shape[0], b_shape[1]))
    orphans = [
        n for n in shapes if n.endswith(B_SUFFIX) and n[: -len(B_SUFFIX)] + A_SUFFIX not in shapes
    ]
    if orphans or not targets:
        raise ModelFormatError(
            f"{path.name}: "
            + (f"{orphans[0]} has no lora_a" if orphans else "no lora_a/lora_b tensor pairs"),
            "the adapter file is incomplete: convert it again",
        )
    return LoraInfo(path, info.architecture, alpha, tuple(sorted(targets, key=lambda t: t.tensor)))


def check_fits_base(lora: LoraInfo, base: GGUFInfo, adapter_id: str) -> None:
    """Refuse an adapter whose architecture, tensors or shapes differ from ``base``'s."""
    if lora.architecture != base.architecture:
        raise AdapterMismatchError(
            f"adapter {adapter_id} is for the {lora.architecture} architecture, but the model is "
            f"{base.architecture}",
            "use an adapter trained on this model (list them: locara adapter ls)",
        )
    shapes = {t.name: t.shape for t in base.tensors}
    for t in lora.targets:
        shape = shapes.get(t.tensor)
        if shape is None:
            raise AdapterMismatchError(
                f"adapter {adapter_id} adapts {t.tensor}, which the model does not have",
                "use an adapter trained on this model (list them: locara adapter ls)",
            )
        if tuple(shape) != (t.n_in, t.n_out):
            raise AdapterMismatchError(
                f"adapter {adapter_id} expects {t.tensor} of shape {(t.n_in, t.n_out)}, but the "
                f"model's is {tuple(shape)}",
                "use an adapter trained on this model (list them: locara adapter ls)",
            )


def check_scale(scale: float, adapter_id: str) -> float:
    """A per-use scale must be finite and within ``±MAX_SCALE``."""
    if not math.isfinite(scale) or abs(scale) > MAX_SCALE:
        raise UsageError(
            f"adapter {adapter_id}: scale {scale} is outside [-{MAX_SCALE:g}, {MAX_SCALE:g}]",
            f"pass a scale such as {adapter_id}:0.5 (1 applies the adapter as trained)",
        )
    return scale
