"""Hugging Face safetensors → GGUF: the real all-MiniLM-L6-v2 package, run by llama.cpp."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from conftest import run_cli
from locara.convert.hf_to_gguf import SUPPORTED_ARCHITECTURES, convert_hf_to_gguf
from locara.device.gguf_meta import read_gguf
from locara.errors import ModelFormatError, UnsupportedFeatureError
from locara.registry.catalog import Registry
from locara.settings import Settings
from locara.store.blobs import hash_file
from mlx_support import converted_minilm_gguf, minilm_dir

SENTENCES = ["A man is playing a guitar.", "The weather is lovely today.", "Stocks fell."]


def _embed(path: Path) -> np.ndarray:
    import llama_cpp

    llm = llama_cpp.Llama(model_path=str(path), embedding=True, n_ctx=512, verbose=False)
    try:
        return np.array(llm.embed(SENTENCES, normalize=True))
    finally:
        llm.close()


def test_f16_output_is_the_pinned_default_embedding_model(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    out = converted_minilm_gguf(tmp_path_factory, "f16")
    manifest = Registry(Settings.from_env({"LOCARA_HOME": "/nonexistent"})).get("all-minilm-l6-v2")
    art = manifest.artifact_list("llama_cpp")[0]
    sha, size = hash_file(out)
    assert (sha, size) == (art.sha256, art.size_bytes)  # deterministic: pinned from the file


def test_gguf_metadata_follows_llama_cpp_conventions(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    info = read_gguf(converted_minilm_gguf(tmp_path_factory, "f16"))
    assert info.architecture == "bert"
    assert info.get("bert.pooling_type") == 1  # mean
    assert info.get("bert.attention.causal") is False
    assert info.get("tokenizer.ggml.model") == "bert"
    assert (info.n_layers, info.n_embd, info.n_heads) == (6, 384, 12)
    assert info.context_length == 512
    assert info.vocab_size == 30522
    types = {t.name: t.type_name for t in info.tensors}
    assert types["token_embd.weight"] == "F16"
    assert types["position_embd.weight"] == "F32" and types["blk.0.attn_q.bias"] == "F32"
    assert "pooler.dense.weight" not in types


def test_q8_0_runs_in_llama_cpp_and_agrees_with_f16(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    f16 = converted_minilm_gguf(tmp_path_factory, "f16")
    q8 = converted_minilm_gguf(tmp_path_factory, "q8_0")
    assert read_gguf(q8).quant == "Q8_0"
    assert q8.stat().st_size < 0.6 * f16.stat().st_size
    a, b = _embed(f16), _embed(q8)
    assert a.shape == (3, 384)
    assert np.all(np.sum(a * b, axis=1) > 0.99)


def test_unsupported_architecture_is_named_with_the_supported_ones(tmp_path: Path) -> None:
    d = tmp_path / "gpt2"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    shutil.copy(minilm_dir() / "model.safetensors", d / "model.safetensors")
    with pytest.raises(UnsupportedFeatureError) as exc:
        convert_hf_to_gguf(d, tmp_path / "out.gguf")
    assert "GPT2LMHeadModel" in exc.value.message
    for arch in SUPPORTED_ARCHITECTURES:
        assert arch in exc.value.message
    assert not (tmp_path / "out.gguf").exists()


def test_cli_reports_unsupported_architecture(tmp_path: Path, home: Path) -> None:
    d = tmp_path / "t5"
    d.mkdir()
    (d / "config.json").write_text(json.dumps({"architectures": ["T5ForConditionalGeneration"]}))
    res = run_cli("convert", str(d), "--to", "gguf", "-o", str(tmp_path / "x.gguf"), home=home)
    assert res.returncode == 1
    assert "T5ForConditionalGeneration" in res.stderr and "BertModel" in res.stderr
    assert "hint:" in res.stderr


def test_not_a_model_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelFormatError) as exc:
        convert_hf_to_gguf(tmp_path, tmp_path / "out.gguf")
    assert "no config.json" in exc.value.message


def test_truncated_safetensors_is_refused(tmp_path: Path) -> None:
    d = tmp_path / "minilm"
    shutil.copytree(minilm_dir(), d)
    weights = d / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelFormatError) as exc:
        convert_hf_to_gguf(d, tmp_path / "out.gguf")
    assert "truncated" in exc.value.message


def test_cli_converts_and_stores_with_lineage(tmp_path: Path, home: Path) -> None:
    out = tmp_path / "minilm-q8.gguf"
    res = run_cli(
        "convert", str(minilm_dir()), "--to", "gguf", "--type", "q8_0", "-o", str(out), "--json",
        home=home,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    result = json.loads(res.stdout)
    assert result["sha256"] == hash_file(out)[0]
    lineage = json.loads(Path(result["lineage"]).read_text())
    assert lineage["parents"] == [hash_file(minilm_dir() / "model.safetensors")[0]]
    assert lineage["params"] == {"to": "gguf", "type": "q8_0", "architecture": "BertModel"}
    assert (home / "models" / result["sha256"]).is_dir()
