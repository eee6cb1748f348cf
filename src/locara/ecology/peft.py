"""A PEFT LoRA directory (``adapter_config.json`` + ``adapter_model.safetensors``) to GGUF.

What llama.cpp's ``convert_lora_to_gguf.py`` does for llama models, for the cases
Locara can check: tensor names through gguf's own name map, F32 data, and the rows of
``q_proj``/``k_proj``'s ``lora_B`` permuted exactly as the base converter permutes
those weights (GGUF stores Q/K for interleaved RoPE; ``W = B @ A``, so permuting the
rows of ``W`` is permuting the rows of ``B``). Scales are made explicit: rsLoRA's
``alpha / sqrt(r)`` becomes a GGUF alpha of ``lora_alpha * sqrt(r)``. What cannot be
converted faithfully (DoRA, per-module ranks, fan-in-fan-out layouts, other PEFT
types) is refused with the reason, never converted approximately.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from locara.device.gguf_meta import GGUFInfo
from locara.ecology.adapter_manifest import ScaleSource
from locara.errors import ModelFormatError, UnsupportedFeatureError

CONFIG = "adapter_config.json"
WEIGHTS = "adapter_model.safetensors"
_PREFIX = "base_model.model."


@dataclass(frozen=True)
class PeftAdapter:
    path: Path
    rank: int
    alpha: float  # in llama.cpp's alpha/rank convention
    source: ScaleSource
    base_name: str | None  # PEFT's base_model_name_or_path: a hint only, never trusted


def read_peft_config(path: Path) -> PeftAdapter:
    """Parse and check ``adapter_config.json``; refuse what cannot convert faithfully."""
    cfg_path = path / CONFIG
    if not cfg_path.is_file():
        raise ModelFormatError(
            f"{path} has no {CONFIG}, so it is not a PEFT adapter directory",
            f"pass a directory with {CONFIG} and {WEIGHTS}, or a LoRA .gguf file",
        )
    if not (path / WEIGHTS).is_file():
        raise ModelFormatError(
            f"{path} has no {WEIGHTS}", f"save the adapter with safetensors ({WEIGHTS})"
        )
    try:
        cfg: dict[str, Any] = json.loads(cfg_path.read_text(encoding="utf-8"))
        rank = int(cfg["r"])
        lora_alpha = float(cfg.get("lora_alpha", rank))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ModelFormatError(
            f"{cfg_path} is not a valid PEFT LoRA config: {exc}", "check r and lora_alpha"
        ) from exc

    def refuse(why: str) -> UnsupportedFeatureError:
        return UnsupportedFeatureError(
            f"{path.name}: {why}, which llama.cpp's LoRA format cannot express",
            "merge the adapter into the base with PEFT (merge_and_unload) and convert the model",
        )

    if str(cfg.get("peft_type", "LORA")).upper() != "LORA":
        raise refuse(f"peft_type {cfg.get('peft_type')!r} is not LORA")
    if cfg.get("use_dora"):
        raise refuse("it is a DoRA adapter (use_dora)")
    if cfg.get("rank_pattern") or cfg.get("alpha_pattern"):
        raise refuse("it sets per-module ranks or alphas (rank_pattern/alpha_pattern)")
    if cfg.get("fan_in_fan_out"):
        raise refuse("its weights are stored fan-in-fan-out (Conv1D layout)")
    if cfg.get("modules_to_save"):
        raise refuse("it also trains whole modules (modules_to_save)")
    if rank < 1 or not math.isfinite(lora_alpha) or lora_alpha <= 0:
        raise ModelFormatError(
            f"{cfg_path}: r {rank} and lora_alpha {lora_alpha} must be positive",
            "check adapter_config.json",
        )
    if cfg.get("use_rslora"):
        # rsLoRA scales by alpha/sqrt(r); llama.cpp by alpha/r: the same delta needs
        # alpha * sqrt(r) in the GGUF.
        alpha = lora_alpha * math.sqrt(rank)
        source = ScaleSource(format="peft", convention="alpha/sqrt(rank)", alpha=lora_alpha)
    else:
        alpha = lora_alpha
        source = ScaleSource(format="peft", convention="alpha/rank", alpha=lora_alpha)
    base = cfg.get("base_model_name_or_path")
    return PeftAdapter(path, rank, alpha, source, str(base) if base else None)


def convert_peft(adapter: PeftAdapter, base: GGUFInfo, out: Path) -> None:
    """Write ``adapter`` as a GGUF LoRA for ``base`` (a llama-architecture GGUF) at ``out``."""
    import gguf
    from safetensors import SafetensorError
    from safetensors.numpy import load_file

    from locara.convert.hf_to_gguf import _permute

    if base.architecture != "llama":
        raise UnsupportedFeatureError(
            f"converting PEFT adapters for the {base.architecture} architecture is not supported",
            "convert it with llama.cpp's convert_lora_to_gguf.py and add the .gguf",
        )
    n_layer = base.n_layers or 0
    n_head = base.n_heads or 0
    n_kv = base.n_kv_heads or n_head
    try:
        tensors = load_file(str(adapter.path / WEIGHTS))
    except (SafetensorError, OSError, ValueError) as exc:
        raise ModelFormatError(
            f"{adapter.path / WEIGHTS} cannot be read: {exc}", "save the adapter again"
        ) from exc
    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    pairs: dict[str, dict[str, np.ndarray[Any, Any]]] = {}
    for name, arr in tensors.items():
        for part in ("lora_A", "lora_B"):
            marker = f".{part}."
            if marker in name:
                hf = name.removeprefix(_PREFIX).replace(marker, ".", 1)
                pairs.setdefault(hf, {})[part] = np.asarray(arr, dtype=np.float32)
                break
        else:
            raise ModelFormatError(
                f"{WEIGHTS}: tensor {name!r} is neither lora_A nor lora_B",
                "only plain LoRA weights can be converted",
            )
    if not pairs:
        raise ModelFormatError(f"{WEIGHTS} holds no LoRA tensors", "save the adapter again")
    writer = gguf.GGUFWriter(str(out), arch=base.architecture)
    writer.add_type(gguf.GGUFType.ADAPTER)
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_float32(gguf.Keys.Adapter.LORA_ALPHA, adapter.alpha)
    for hf, ab in sorted(pairs.items()):
        gname = tmap.get_name(hf, try_suffixes=(".weight",))
        if gname is None or set(ab) != {"lora_A", "lora_B"}:
            raise ModelFormatError(
                f"{WEIGHTS}: {hf} "
                + ("has no place in a llama model" if gname is None else "lacks lora_A or lora_B"),
                "the adapter does not belong to a llama model",
            )
        a, b = ab["lora_A"], ab["lora_B"]
        if a.shape[0] != adapter.rank or b.shape[1] != adapter.rank:
            raise ModelFormatError(
                f"{WEIGHTS}: {hf} has rank {a.shape[0]}, but adapter_config.json says r "
                f"{adapter.rank}",
                "the directory mixes two adapters: save it again",
            )
        if hf.endswith("self_attn.q_proj.weight"):
            b = _permute(b, n_head)
        elif hf.endswith("self_attn.k_proj.weight"):
            b = _permute(b, n_kv)
        writer.add_tensor(f"{gname}.lora_a", np.ascontiguousarray(a))
        writer.add_tensor(f"{gname}.lora_b", np.ascontiguousarray(b))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
