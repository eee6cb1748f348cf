"""Real LoRA adapters for the bundled SmolLM2, written with ``gguf`` (and PEFT with numpy).

Dimensions come from the base GGUF. A second base with identical shapes — the same
model with a few target tensors dequantized to F32 — is what an adapter must be refused
on by digest, and what ``adapter merge`` bakes into.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import gguf
import numpy as np
from safetensors.numpy import save_file

from locara.device.gguf_meta import read_gguf

LAYERS = range(4)
TARGETS = ("attn_v", "ffn_down")


def base_shapes(base: Path) -> dict[str, tuple[int, ...]]:
    return {t.name: t.shape for t in read_gguf(base).tensors}


def factors(
    shapes: dict[str, tuple[int, ...]],
    names: Iterable[str],
    rank: int,
    seed: int,
    std: float = 0.15,
) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Per base tensor: (A of numpy shape (rank, n_in), B of (n_out, rank))."""
    rng = np.random.default_rng(seed)
    out = {}
    for name in names:
        n_in, n_out = shapes[name]
        a = rng.normal(0, std, (rank, n_in)).astype(np.float32)
        b = rng.normal(0, std, (n_out, rank)).astype(np.float32)
        out[name] = (a, b)
    return out


def target_names(targets: Iterable[str] = TARGETS, layers: Iterable[int] = LAYERS) -> list[str]:
    return [f"blk.{i}.{t}.weight" for i in layers for t in targets]


def write_lora(
    path: Path,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    alpha: float,
    arch: str = "llama",
) -> Path:
    w = gguf.GGUFWriter(str(path), arch=arch)
    w.add_type(gguf.GGUFType.ADAPTER)
    w.add_string(gguf.Keys.Adapter.TYPE, "lora")
    w.add_float32(gguf.Keys.Adapter.LORA_ALPHA, alpha)
    for name, (a, b) in pairs.items():
        w.add_tensor(f"{name}.lora_a", a)
        w.add_tensor(f"{name}.lora_b", b)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


HF = {"attn_q": "self_attn.q_proj", "attn_k": "self_attn.k_proj", "attn_v": "self_attn.v_proj",
      "ffn_down": "mlp.down_proj"}  # fmt: skip


def write_peft(
    directory: Path,
    pairs: dict[str, tuple[np.ndarray, np.ndarray]],
    rank: int,
    alpha: float,
    **config: object,
) -> Path:
    """A PEFT directory whose tensors are ``pairs`` (given in Hugging Face row order)."""
    directory.mkdir(parents=True)
    tensors = {}
    modules = set()
    for name, (a, b) in pairs.items():
        _, layer, kind, _ = name.split(".")
        hf = f"base_model.model.model.layers.{layer}.{HF[kind]}"
        modules.add(HF[kind].split(".")[-1])
        tensors[f"{hf}.lora_A.weight"] = a
        tensors[f"{hf}.lora_B.weight"] = b
    save_file(tensors, str(directory / "adapter_model.safetensors"))
    cfg = {"peft_type": "LORA", "r": rank, "lora_alpha": alpha, "target_modules": sorted(modules),
           "base_model_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct", **config}  # fmt: skip
    (directory / "adapter_config.json").write_text(json.dumps(cfg))
    return directory


def write_f32_variant(base: Path, out: Path, names: Iterable[str]) -> Path:
    """``base`` with ``names`` dequantized to F32: the same shapes, other bytes."""
    reader = gguf.GGUFReader(str(base))
    w = gguf.GGUFWriter(str(out), arch=str(read_gguf(base).architecture))
    for f in reader.fields.values():
        if f.name.startswith("GGUF.") or f.name == "general.architecture":
            continue
        vtype = f.types[0]
        sub = f.types[-1] if vtype == gguf.GGUFValueType.ARRAY else None
        w.add_key_value(f.name, f.contents(), vtype, sub_type=sub)
    wanted = set(names)
    for t in reader.tensors:
        if t.name in wanted:
            w.add_tensor(t.name, gguf.quants.dequantize(t.data, t.tensor_type).astype(np.float32))
        else:
            w.add_tensor(t.name, t.data, raw_shape=t.data.shape, raw_dtype=t.tensor_type)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return out
