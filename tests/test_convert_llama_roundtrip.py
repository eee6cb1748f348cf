"""A llama-architecture Hugging Face checkpoint → GGUF, run by llama.cpp.

No llama checkpoint ships in a package here, so one is made from the real default
model: its GGUF mapped to MLX, dequantized to float16 and written the way Hugging
Face lays out a llama checkpoint (config.json, model.safetensors, tokenizer.json).
Converting that back to GGUF must give a file llama.cpp runs with the same
tokenizer and the same greedy answer as the original.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from locara.backends.base import GenerationRequest, LoadOptions, Sampling
from locara.convert.hf_to_gguf import convert_hf_to_gguf
from locara.device.gguf_meta import read_gguf
from locara.registry.catalog import Registry
from locara.settings import Settings
from mlx_support import needs_mlx

pytestmark = [needs_mlx, pytest.mark.slow]

SAMPLES = ["Hello, world! 12345", "café 東京 🙂", "<|im_start|>user\nHi<|im_end|>\n"]


def _hf_checkpoint(gguf_path: Path, out: Path) -> Path:
    import mlx.core as mx

    from locara.convert.gguf_to_mlx import gguf_to_checkpoint

    ck = gguf_to_checkpoint(gguf_path)
    weights: dict[str, Any] = {}
    for name, arr in ck.weights.items():
        if name.endswith((".scales", ".biases")):
            continue
        module = name.removesuffix(".weight")
        scales = ck.weights.get(f"{module}.scales")
        if scales is not None:
            bits = arr.shape[-1] // scales.shape[-1]
            arr = mx.dequantize(
                arr, scales, ck.weights[f"{module}.biases"], group_size=32, bits=bits
            ).astype(mx.float16)
        weights[name] = arr
    out.mkdir()
    mx.save_safetensors(str(out / "model.safetensors"), weights)
    config = {k: v for k, v in ck.config.items() if k != "quantization"}
    (out / "config.json").write_text(json.dumps(config))
    (out / "tokenizer.json").write_text(json.dumps(ck.tokenizer))
    (out / "tokenizer_config.json").write_text(json.dumps(ck.tokenizer_config))
    return out


def _greedy(model: Any, n: int) -> str:
    req = GenerationRequest(prompt="The capital of France is", max_tokens=n, sampling=Sampling(0.0))
    return "".join(c.text for c in model.generate(req))


def test_llama_checkpoint_to_gguf_runs_in_llama_cpp(default_gguf: Path, tmp_path: Path) -> None:
    from locara.backends.llama_cpp import LlamaCppBackend

    hf = _hf_checkpoint(default_gguf, tmp_path / "smollm2-hf")
    out = convert_hf_to_gguf(hf, tmp_path / "smollm2-f16.gguf", "f16")
    info = read_gguf(out)
    assert info.architecture == "llama" and info.quant == "F16"
    assert info.get("tokenizer.ggml.pre") == "smollm"
    assert (info.n_layers, info.n_heads, info.n_kv_heads) == (30, 9, 3)
    assert info.chat_template == read_gguf(default_gguf).chat_template

    manifest = Registry(Settings.from_env({"LOCARA_HOME": "/nonexistent"})).get(
        "smollm2-135m-instruct"
    )
    backend = LlamaCppBackend()
    original = backend.load(default_gguf, manifest, LoadOptions(n_ctx=256))
    converted = backend.load(out, manifest, LoadOptions(n_ctx=256))
    try:
        for text in SAMPLES:
            assert converted.tokenize(text) == original.tokenize(text), text
        answer = _greedy(converted, 4)
        assert "Paris" in answer
        assert answer[:6] == _greedy(original, 4)[:6]
    finally:
        original.close()
        converted.close()
