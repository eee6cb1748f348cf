"""The MLX backend on the real default model: tokenizer parity with llama.cpp, GGUF
loaded directly, the CLI's --backend mlx, and every bad input the issue names."""

from __future__ import annotations

import json
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import run_cli
from locara.backends.base import GenerationRequest, LoadOptions, Sampling
from locara.errors import ModelFormatError, UnsupportedFeatureError
from locara.registry.catalog import Registry
from locara.registry.manifest import ModelManifest
from locara.settings import Settings
from mlx_support import (
    CAPITAL_PROMPT,
    converted_minilm_gguf,
    converted_mlx_dir,
    needs_mlx,
)

pytestmark = needs_mlx

GREEDY = Sampling(temperature=0.0, repeat_penalty=1.0)


@pytest.fixture(scope="module")
def manifest() -> ModelManifest:
    return Registry(Settings.from_env({"LOCARA_HOME": "/nonexistent"})).get("smollm2-135m-instruct")


@pytest.fixture(scope="module")
def mlx_dir(tmp_path_factory: pytest.TempPathFactory, default_gguf: Path) -> Path:
    return converted_mlx_dir(tmp_path_factory, default_gguf)


@pytest.fixture(scope="module")
def llama(default_gguf: Path, manifest: ModelManifest) -> Iterator[Any]:
    from locara.backends.llama_cpp import LlamaCppBackend

    m = LlamaCppBackend().load(default_gguf, manifest, LoadOptions(n_ctx=1024))
    yield m
    m.close()


@pytest.fixture(scope="module")
def mlx_from_gguf(default_gguf: Path, manifest: ModelManifest) -> Any:
    from locara.backends.mlx import MlxBackend

    return MlxBackend().load(default_gguf, manifest, LoadOptions(n_ctx=1024))


def _text(model: Any, prompt: str, n: int) -> str:
    req = GenerationRequest(prompt=prompt, max_tokens=n, sampling=GREEDY)
    return "".join(c.text for c in model.generate(req))


TOKENIZER_SAMPLES = [
    "Hello, world!",
    "The year 2024 had 366 days; 12345 is a number.",
    "café naïve — 東京 🙂 ünïcödé",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "   leading spaces and\ttabs\n\nnew lines",
    "def f(x):\n    return x ** 2  # comment",
]


def test_tokenizer_built_from_gguf_matches_llama_cpp(mlx_from_gguf: Any, llama: Any) -> None:
    for text in TOKENIZER_SAMPLES:
        ours = mlx_from_gguf.tokenizer.encode(text)
        theirs = llama.tokenize(text, special=True)
        assert ours == theirs, text


def test_gguf_loaded_directly_answers_like_llama_cpp_and_the_mlx_dir(
    mlx_from_gguf: Any, llama: Any, mlx_dir: Path, manifest: ModelManifest
) -> None:
    from locara.backends.mlx import MlxBackend

    prompt = "The capital of France is"
    direct = _text(mlx_from_gguf, prompt, 6)
    # Same quantized weights, same greedy start. Later tokens may drift: llama.cpp
    # rounds activations to 8 bits for its Q4_1 dot products, MLX keeps them in float.
    assert _text(llama, prompt, 3) == _text(mlx_from_gguf, prompt, 3)
    assert "Paris" in direct
    from_dir = MlxBackend().load(mlx_dir, manifest, LoadOptions(n_ctx=512))
    assert _text(from_dir, prompt, 6) == direct


def test_converted_directory_keeps_the_quantization(mlx_dir: Path) -> None:
    import mlx.core as mx

    config = json.loads((mlx_dir / "config.json").read_text())
    quant = config["quantization"]
    assert quant["group_size"] == 32 and quant["bits"] == 4
    assert quant["model.embed_tokens"]["bits"] == 8  # SmolLM2's Q4_1 keeps an 8-bit embedding
    weights: Any = mx.load(str(mlx_dir / "model.safetensors"))
    q = weights["model.layers.0.self_attn.q_proj.weight"]
    assert q.dtype == mx.uint32 and q.shape == (576, 576 * 4 // 32)
    assert "model.layers.0.self_attn.q_proj.scales" in weights


def test_mlx_lm_itself_reads_the_converted_directory(mlx_dir: Path) -> None:
    from mlx_lm import generate, load

    model, tokenizer = load(str(mlx_dir))
    assert "Paris" in generate(model, tokenizer, "The capital of France is", max_tokens=3)


@pytest.mark.slow
def test_cli_run_with_backend_mlx(cli: Any) -> None:
    res = cli(
        "run", "--backend", "mlx", CAPITAL_PROMPT, "--temperature", "0", "--max-tokens", "12",
        "--json",
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["backend"] == "mlx"
    assert "Paris" in out["text"]
    assert out["usage"]["completion_tokens"] >= 1


# -- bad input ----------------------------------------------------------------------
def _copy_dir(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


def _load_dir(path: Path, manifest: ModelManifest) -> Any:
    from locara.backends.mlx import MlxBackend

    return MlxBackend().load(path, manifest, LoadOptions(n_ctx=512))


def test_mlx_dir_with_a_missing_tensor(
    mlx_dir: Path, tmp_path: Path, manifest: ModelManifest
) -> None:
    import mlx.core as mx

    broken = _copy_dir(mlx_dir, tmp_path / "broken")
    weights: dict[str, Any] = dict(mx.load(str(broken / "model.safetensors")))  # type: ignore[arg-type]
    del weights["model.layers.3.mlp.down_proj.weight"]
    mx.save_safetensors(str(broken / "model.safetensors"), weights)
    with pytest.raises(ModelFormatError) as exc:
        _load_dir(broken, manifest)
    assert "model.layers.3.mlp.down_proj.weight" in exc.value.message
    assert exc.value.hint and "locara convert" in exc.value.hint


@pytest.mark.parametrize(("field", "value"), [("hidden_size", 640), ("num_hidden_layers", 29)])
def test_mlx_dir_whose_config_does_not_match_the_weights(
    mlx_dir: Path, tmp_path: Path, manifest: ModelManifest, field: str, value: int
) -> None:
    broken = _copy_dir(mlx_dir, tmp_path / "broken")
    config = json.loads((broken / "config.json").read_text())
    config[field] = value
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(ModelFormatError) as exc:
        _load_dir(broken, manifest)
    assert "do not match config.json" in exc.value.message


@pytest.mark.parametrize("missing", ["config.json", "tokenizer.json", "model.safetensors"])
def test_mlx_dir_missing_a_file(
    mlx_dir: Path, tmp_path: Path, manifest: ModelManifest, missing: str
) -> None:
    broken = _copy_dir(mlx_dir, tmp_path / "broken")
    (broken / missing).unlink()
    with pytest.raises(ModelFormatError) as exc:
        _load_dir(broken, manifest)
    assert (missing if missing != "model.safetensors" else "safetensors") in exc.value.message


def _tiny_llama_gguf(path: Path, qtype: Any, n_bytes: int, n_values: int) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_block_count(1)
    w.add_embedding_length(n_values)
    w.add_head_count(1)
    w.add_tensor(
        "token_embd.weight",
        np.zeros((1, n_bytes), dtype=np.uint8),  # bytes; gguf derives the value shape
        raw_dtype=qtype,
    )
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_quant_type_mlx_cannot_read(tmp_path: Path, manifest: ModelManifest) -> None:
    import gguf

    # One Q4_K block: 256 values in 144 bytes. A real K-quant type, not a made-up one.
    path = _tiny_llama_gguf(tmp_path / "k.gguf", gguf.GGMLQuantizationType.Q4_K, 144, 256)
    with pytest.raises(UnsupportedFeatureError) as exc:
        _load_dir(path, manifest)
    assert "Q4_K" in exc.value.message
    assert exc.value.hint and "llama.cpp" in exc.value.hint


def test_gguf_architecture_mlx_cannot_run(
    tmp_path_factory: pytest.TempPathFactory, manifest: ModelManifest
) -> None:
    bert = converted_minilm_gguf(tmp_path_factory)  # a real BERT GGUF
    with pytest.raises(UnsupportedFeatureError) as exc:
        _load_dir(bert, manifest)
    assert "'bert'" in exc.value.message and "llama" in exc.value.message
    assert exc.value.hint and "llama_cpp" in exc.value.hint


def test_not_a_model_at_all(tmp_path: Path, manifest: ModelManifest) -> None:
    junk = tmp_path / "notes.txt"
    junk.write_text("hello")
    with pytest.raises(ModelFormatError):
        _load_dir(junk, manifest)


def test_embeddings_are_refused_by_mlx(default_gguf: Path, manifest: ModelManifest) -> None:
    from locara.backends.mlx import MlxBackend

    with pytest.raises(UnsupportedFeatureError) as exc:
        MlxBackend().load(default_gguf, manifest, LoadOptions(embedding=True))
    assert exc.value.hint and "llama_cpp" in exc.value.hint


def _without_mlx(tmp_path: Path) -> dict[str, str]:
    """An environment in which ``import mlx`` fails, as on a machine without the extra."""
    shadow = tmp_path / "no-mlx"
    (shadow / "mlx").mkdir(parents=True)
    (shadow / "mlx" / "__init__.py").write_text(
        "raise ImportError(\"No module named 'mlx' (simulated: the mlx extra is not installed)\")\n"
    )
    return {"PYTHONPATH": str(shadow)}


def test_backend_mlx_without_mlx_installed_names_the_install_command(
    tmp_path: Path, shared_home: Path
) -> None:
    env = _without_mlx(tmp_path)
    res = run_cli("run", "--backend", "mlx", "Hi", "--max-tokens", "2", home=shared_home, env=env)
    assert res.returncode == 1
    assert "mlx backend is not available" in res.stderr
    assert "pip install 'locara[mlx]'" in res.stderr
    # The same simulated environment, through the Python API.
    code = (
        "from locara.backends.registry import get_backend\n"
        "from locara.errors import BackendUnavailableError\n"
        "try:\n    get_backend('mlx')\nexcept BackendUnavailableError as e:\n    print(e.hint)\n"
    )
    import subprocess

    out = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**_env(), **env},
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    assert "pip install 'locara[mlx]'" in out.stdout


def _env() -> dict[str, str]:
    import os

    return dict(os.environ)
