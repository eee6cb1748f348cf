"""The fit estimator from real GGUF headers: KV arithmetic, KV types, repack, bad input."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from locara.device.fit import (
    ModelShape,
    approximate_shape,
    cpu_repack_types,
    estimate_fit,
    kv_cache_bytes,
)
from locara.device.gguf_meta import read_gguf
from locara.device.measure import write_synthetic_llama
from locara.errors import ModelFormatError, UsageError
from locara.planner.plan import PlanRequest, plan_model
from locara.registry.catalog import load_manifest


@pytest.fixture(scope="module")
def small_q4_0(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small llama with random Q4_0 weights (a type llama.cpp repacks on AVX2 CPUs)."""
    path = tmp_path_factory.mktemp("synth") / "small-q4_0.gguf"
    return write_synthetic_llama(
        path, n_embd=512, n_layer=4, n_head=8, n_kv=4, n_ff=1536, n_vocab=2048, n_ctx_train=2048
    )


def test_shape_from_the_default_model(default_gguf: Path) -> None:
    shape = ModelShape.from_gguf(read_gguf(default_gguf))
    # SmolLM2-135M per its GGUF header: 30 layers, 9 heads, 3 KV heads, embedding 576, context 8192.
    assert (shape.n_layers, shape.n_heads, shape.n_kv_heads, shape.n_embd) == (30, 9, 3, 576)
    assert shape.key_length == shape.value_length == 576 // 9
    assert shape.context_length == 8192
    assert shape.n_vocab == 49152
    assert shape.n_ff == 1536  # llama.feed_forward_length
    assert 90e6 < shape.weights_bytes <= default_gguf.stat().st_size


def test_kv_cache_formula_and_types(default_gguf: Path) -> None:
    info = read_gguf(default_gguf)
    f16 = estimate_fit(info, 2048, "f16")
    # ctx x layers x kv_heads x (key_len + value_len) x 2 bytes
    assert f16.kv_bytes == 2048 * 30 * 3 * (64 + 64) * 2
    q8 = estimate_fit(info, 2048, "q8_0")
    q4 = estimate_fit(info, 2048, "q4_0")
    assert q8.kv_bytes == f16.kv_bytes * 34 // 64  # 34-byte blocks of 32 vs 2 bytes each
    assert q4.kv_bytes == f16.kv_bytes * 18 // 64
    # Doubling the context doubles the KV cache and grows the estimate.
    assert estimate_fit(info, 4096).kv_bytes == 2 * f16.kv_bytes
    assert estimate_fit(info, 4096).total_bytes > f16.total_bytes
    assert f16.total_bytes == (
        f16.weights_bytes + f16.repack_bytes + f16.kv_bytes + f16.compute_bytes + f16.overhead_bytes
    )
    assert json.loads(json.dumps(f16.to_dict()))["total_bytes"] == f16.total_bytes


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"n_ctx": 0}, "invalid context 0"),
        ({"n_ctx": 512, "kv_type": "q5_1"}, "unknown KV cache type 'q5_1'"),
        ({"n_ctx": 512, "backend": "vllm"}, "unknown backend 'vllm'"),
    ],
)
def test_bad_arguments(default_gguf: Path, kwargs: dict[str, object], message: str) -> None:
    with pytest.raises(UsageError, match=message) as err:
        estimate_fit(read_gguf(default_gguf), **kwargs)  # type: ignore[arg-type]
    assert err.value.hint


def test_repack_counts_q4_0_matrices_twice_on_avx2(small_q4_0: Path, default_gguf: Path) -> None:
    info = read_gguf(small_q4_0)
    x86 = cpu_repack_types("x86_64", ("avx2", "fma"))
    est = estimate_fit(info, 512, repack_types=x86)
    matrices = sum(
        t.n_bytes for t in info.tensors if len(t.shape) == 2 and t.name != "token_embd.weight"
    )
    assert est.repack_bytes == matrices > 0
    assert estimate_fit(info, 512, repack_types=frozenset()).repack_bytes == 0
    # Q4_1 (the default model) is never repacked.
    assert estimate_fit(read_gguf(default_gguf), 512, repack_types=x86).repack_bytes == 0
    assert cpu_repack_types("arm64", ("neon",)) == frozenset()
    assert "Q8_0" in cpu_repack_types("arm64", ("neon", "dotprod"))


def _gguf_without_shape(path: Path) -> Path:
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("no-shape")  # no block_count, head_count or embedding_length
    w.add_tensor("token_embd.weight", np.zeros((8, 32), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def test_gguf_lacking_metadata(tmp_path: Path) -> None:
    path = _gguf_without_shape(tmp_path / "bare.gguf")
    info = read_gguf(path)
    with pytest.raises(ModelFormatError) as err:
        estimate_fit(info, 512)
    msg = err.value.message
    assert "lacks GGUF metadata" in msg and "llama.block_count" in msg
    assert "llama.attention.head_count" in msg and "llama.embedding_length" in msg
    assert err.value.hint and "locara ls --all" in err.value.hint


def test_plan_rejects_an_artifact_whose_gguf_lacks_metadata(tmp_path: Path) -> None:
    from locara.device.profile import DeviceProfile

    bare = _gguf_without_shape(tmp_path / "bare.gguf")
    sha = "ab" * 32
    manifest_path = tmp_path / "bare-model.json"
    manifest_path.write_text(
        json.dumps(
            {
                "id": "bare-model",
                "version": "1",
                "displayName": "Bare",
                "license": "MIT",
                "modality": "chat",
                "context_length": 2048,
                "curated": False,
                "artifacts": {
                    "llama_cpp": {
                        "format": "gguf",
                        "quant": "F32",
                        "url": "https://example.org/bare.gguf",
                        "sha256": sha,
                        "size_bytes": bare.stat().st_size,
                    }
                },
            }
        )
    )
    device = DeviceProfile("Linux", "6", "x86_64", 8 * 2**30, 6 * 2**30, cpu_features=("avx2",))
    plan = plan_model(load_manifest(manifest_path), device, PlanRequest(), gguf_path_of={sha: bare})
    assert not plan.ok
    assert "lacks GGUF metadata" in plan.rejected[0].reason
    assert plan.alternatives  # still an answer, not an exception


def test_approximate_shape_grows_with_size() -> None:
    small = approximate_shape(500_000_000, "Q4_K_M", 32768)
    big = approximate_shape(40_000_000_000, "Q4_K_M", 131072)
    assert kv_cache_bytes(big, 4096) > kv_cache_bytes(small, 4096)
    assert big.n_layers > small.n_layers
