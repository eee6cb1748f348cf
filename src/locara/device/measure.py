"""Measure the real peak RSS of one llama.cpp load, for checking the fit estimator.

Run in a fresh process (``python -m locara.device.measure GGUF N_CTX [KV_TYPE]``) so
nothing else in the process inflates the number: it loads the model the way the
llama.cpp backend does, evaluates a prompt that fills one batch and decodes a few
tokens (so every weight page and the compute buffers are touched), then prints one
JSON line with the peak RSS (``ru_maxrss``) and the RSS before the model was loaded.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids, as in the backend


@dataclass(frozen=True)
class Measurement:
    peak_rss_bytes: int
    n_ctx: int
    kv_type: str


def _child(path: str, n_ctx: int, kv_type: str, n_threads: int) -> None:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=path,
        n_ctx=n_ctx,
        n_batch=min(512, n_ctx),
        n_threads=n_threads,
        n_threads_batch=n_threads,
        type_k=_KV_TYPES[kv_type],
        type_v=_KV_TYPES[kv_type],
        verbose=False,
    )
    # Fill the context (the worst case: every KV cell live, attention over all of them),
    # then decode a few tokens.
    n_prompt = n_ctx - 8
    vocab = llm.n_vocab()
    tokens = [llm.token_bos()] + [100 + (i * 7919) % (vocab - 200) for i in range(n_prompt - 1)]
    llm.eval(tokens)
    for _ in range(4):
        tok = llm.sample(temp=0.0)
        llm.eval([tok])
    print(json.dumps({"peak_rss_bytes": _peak_rss()}))


def _peak_rss() -> int:
    # VmHWM belongs to this process image; ru_maxrss on Linux survives exec and would
    # report a large parent's RSS at fork time.
    status = Path("/proc/self/status")
    if status.exists():
        for line in status.read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    # macOS reports ru_maxrss in bytes, Linux in KiB.
    scale = 1 if sys.platform == "darwin" else 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def measure_load(
    path: Path, n_ctx: int, kv_type: str = "f16", n_threads: int = 2, timeout: float = 600
) -> Measurement:
    """Load ``path`` with ``n_ctx`` in a fresh Python process and return its peak RSS."""
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "locara.device.measure",
            str(path),
            str(n_ctx),
            kv_type,
            str(n_threads),
        ],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if proc.returncode != 0:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-3:]
        raise RuntimeError(f"measurement of {path} at n_ctx={n_ctx} failed: {' | '.join(tail)}")
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return Measurement(int(data["peak_rss_bytes"]), n_ctx, kv_type)


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
    """A llama-architecture GGUF with random Q4_0 weights (about 1.1B parameters by default).

    For measuring memory without downloading a model: the weights are random bytes with a
    small finite scale in every block, so loads and decodes behave like a real model's.
    """
    import gguf
    import numpy as np

    rng = np.random.default_rng(0)
    scale = np.frombuffer(np.float16(0.02).tobytes(), dtype=np.uint8)
    q4 = gguf.GGMLQuantizationType.Q4_0
    block, type_size = gguf.GGML_QUANT_SIZES[q4]

    def q4_tensor(rows: int, cols: int) -> Any:
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


if __name__ == "__main__":
    _child(
        sys.argv[1],
        int(sys.argv[2]),
        sys.argv[3] if len(sys.argv) > 3 else "f16",
        int(sys.argv[4]) if len(sys.argv) > 4 else 2,
    )
