"""GGUF → MLX: a llama-architecture GGUF as an ``mlx_lm`` llama model, quantization kept.

``mlx.core.load`` reads Q4_0/Q4_1/Q8_0 tensors straight into MLX's affine layout
(``weight``/``scales``/``biases``, group size 32), so no weight is re-quantized:
the MLX model computes with the very numbers the GGUF holds. Two things differ
from a Hugging Face checkpoint and are undone here:

* names: ``blk.N.attn_q`` → ``model.layers.N.self_attn.q_proj`` and so on;
* Q/K row order: llama.cpp's converter permutes the rows of Q and K for its
  interleaved RoPE. Rows are whole quantization groups, so the permutation is
  reversed on ``weight``, ``scales`` and ``biases`` alike and the result is an
  ordinary MLX checkpoint (standard RoPE) that ``mlx_lm.load`` could read too.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.convert.gguf_tokenizer import tokenizer_config_from_gguf, tokenizer_json_from_gguf
from locara.errors import BackendUnavailableError, ModelFormatError, UnsupportedFeatureError

# Tensor types mlx.core.load turns into MLX arrays (quantized ones into affine groups of 32).
MLX_READABLE_TYPES = ("F32", "F16", "Q4_0", "Q4_1", "Q8_0")
SUPPORTED_ARCHITECTURES = ("llama",)
GROUP_SIZE = 32

_BLOCK_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}


@dataclass
class MlxCheckpoint:
    """An MLX model in memory: ``config.json``, weights and tokenizer documents."""

    config: dict[str, Any]
    weights: dict[str, Any]  # name -> mx.array
    tokenizer: dict[str, Any]
    tokenizer_config: dict[str, Any]


def require_mlx() -> None:
    """Import mlx, or explain how to install it."""
    try:
        import mlx.core  # noqa: F401
        import mlx_lm.models.llama  # noqa: F401
        import tokenizers  # noqa: F401
    except ImportError as exc:
        raise BackendUnavailableError(
            f"MLX is not installed ({exc})", "install it with: pip install 'locara[mlx]'"
        ) from exc


def check_gguf_for_mlx(path: Path) -> None:
    """Refuse, with the reason, a GGUF whose architecture or tensor types MLX cannot use."""
    from locara.device.gguf_meta import read_gguf

    info = read_gguf(path)
    if info.architecture not in SUPPORTED_ARCHITECTURES:
        raise UnsupportedFeatureError(
            f"{path.name}: architecture {info.architecture!r} cannot be run by MLX from GGUF "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            "run it with the llama.cpp backend: --backend llama_cpp",
        )
    bad = sorted({t.type_name for t in info.tensors} - set(MLX_READABLE_TYPES))
    if bad:
        raise UnsupportedFeatureError(
            f"{path.name}: MLX cannot read GGUF tensor type(s) {', '.join(bad)} "
            f"(it reads {', '.join(MLX_READABLE_TYPES)})",
            "run it with the llama.cpp backend (--backend llama_cpp), or use a Q4_0/Q4_1/Q8_0 file",
        )


def _plain(value: Any) -> Any:
    # mx.load returns numbers as 0-d arrays and arrays as mx.array; JSON wants Python.
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def _unpermute(w: Any, n_head: int) -> Any:
    """Undo llama.cpp's Q/K row permutation (see the module docstring)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _hf_name(gguf_name: str) -> str | None:
    base, _, suffix = gguf_name.rpartition(".")
    if base.startswith("blk."):
        _, n, part = base.split(".", 2)
        mapped = _BLOCK_NAMES.get(part)
        return f"model.layers.{n}.{mapped}.{suffix}" if mapped else None
    mapped = _TOP_NAMES.get(base)
    return f"{mapped}.{suffix}" if mapped else None


def gguf_to_checkpoint(path: Path) -> MlxCheckpoint:
    """Read the GGUF at ``path`` into an in-memory MLX checkpoint (weights stay quantized)."""
    require_mlx()
    check_gguf_for_mlx(path)
    import mlx.core as mx

    try:
        loaded: Any = mx.load(str(path), return_metadata=True)
    except (RuntimeError, ValueError) as exc:
        raise ModelFormatError(
            f"MLX could not read {path.name}: {exc}",
            "run it with the llama.cpp backend: --backend llama_cpp",
        ) from exc
    raw: dict[str, Any] = loaded[0]
    meta = {k: _plain(v) for k, v in loaded[1].items()}
    arch = str(meta["general.architecture"])

    def hp(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    n_head = int(hp("attention.head_count"))
    n_kv = int(hp("attention.head_count_kv", n_head))
    unknown = [n for n in raw if _hf_name(n) is None]
    if unknown:
        raise UnsupportedFeatureError(
            f"{path.name}: tensors MLX's llama model has no place for: {', '.join(unknown[:5])}",
            "run it with the llama.cpp backend: --backend llama_cpp",
        )
    weights: dict[str, Any] = {}
    for name, arr in raw.items():
        hf = _hf_name(name)
        assert hf is not None
        if ".self_attn.q_proj." in hf:
            arr = _unpermute(arr, n_head)
        elif ".self_attn.k_proj." in hf:
            arr = _unpermute(arr, n_kv)
        weights[hf] = arr

    # Bits per quantized module follow from the packed width: 32/bits values per uint32.
    bits: dict[str, int] = {}
    for name, arr in weights.items():
        if name.endswith(".scales"):
            module = name.removesuffix(".scales")
            bits[module] = weights[f"{module}.weight"].shape[-1] // arr.shape[-1]
    quantization: dict[str, Any] = {}
    if bits:
        common = max(set(bits.values()), key=list(bits.values()).count)
        quantization = {"group_size": GROUP_SIZE, "bits": common, "mode": "affine"}
        for module, b in sorted(bits.items()):
            if b != common:
                quantization[module] = {"group_size": GROUP_SIZE, "bits": b}

    tokens = meta["tokenizer.ggml.tokens"]
    hidden = int(hp("embedding_length"))
    config: dict[str, Any] = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "num_hidden_layers": int(hp("block_count")),
        "intermediate_size": int(hp("feed_forward_length")),
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv,
        "head_dim": int(hp("attention.key_length", hidden // n_head)),
        "rms_norm_eps": float(hp("attention.layer_norm_rms_epsilon", 1e-5)),
        "rope_theta": float(hp("rope.freq_base", 10000.0)),
        "max_position_embeddings": int(hp("context_length", 2048)),
        "vocab_size": len(tokens),
        "tie_word_embeddings": "lm_head.weight" not in weights,
        "bos_token_id": meta.get("tokenizer.ggml.bos_token_id"),
        "eos_token_id": meta.get("tokenizer.ggml.eos_token_id"),
    }
    if quantization:
        config["quantization"] = quantization
    scaling = hp("rope.scaling.type")
    if scaling not in (None, "none"):
        raise UnsupportedFeatureError(
            f"{path.name}: RoPE scaling {scaling!r} is not mapped to MLX yet",
            "run it with the llama.cpp backend: --backend llama_cpp",
        )
    return MlxCheckpoint(
        config, weights, tokenizer_json_from_gguf(meta), tokenizer_config_from_gguf(meta)
    )


def write_checkpoint(ckpt: MlxCheckpoint, out_dir: Path) -> list[Path]:
    """Write ``config.json``, ``model.safetensors`` and the tokenizer files into ``out_dir``."""
    import mlx.core as mx

    out_dir.mkdir(parents=True, exist_ok=True)
    files: list[Path] = []

    def dump(name: str, doc: dict[str, Any]) -> None:
        p = out_dir / name
        p.write_text(json.dumps(doc, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
        files.append(p)

    dump("config.json", ckpt.config)
    weights_path = out_dir / "model.safetensors"
    # Sorted names: the same GGUF always gives the same bytes (and the same SHA-256).
    mx.save_safetensors(
        str(weights_path), dict(sorted(ckpt.weights.items())), metadata={"format": "mlx"}
    )
    files.append(weights_path)
    dump("tokenizer.json", ckpt.tokenizer)
    dump("tokenizer_config.json", ckpt.tokenizer_config)
    return files
