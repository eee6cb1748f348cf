"""How much memory a model takes at a given context: the fit estimator.

    total = weights + KV cache + compute buffers + runtime overhead

- weights: the GGUF's tensor bytes (llama.cpp maps the file; after the first decode
  every page is resident, so all of it counts).
- KV cache: ``n_ctx × n_layer × n_head_kv × (key_len + value_len) × bytes/element``,
  f16 = 2 bytes, q8_0 = 34/32, q4_0 = 18/32 (ggml block sizes). llama.cpp clears the
  cache at creation, so all of it is resident from the start.
- compute: the part of ggml's graph buffer a batch touches when the context is full
  (the worst case). On CPU without flash attention it is dominated by the attention
  scores of one layer (``n_ctx × n_batch × n_head``, f32 plus copies) and the batch's
  activations; llama.cpp reserves more (logits for every batch token) but only the
  last token's logits are computed, so those pages never become resident. The
  constants were fitted to measured peak RSS (bench/fit.py).
- overhead: the Python process with llama.cpp loaded, the tokenizer vocabulary and
  the logits output buffer; measured on this build, per backend.
- repack (llama.cpp on CPU): with AVX2 (or ARM dot-product) llama.cpp copies Q4_0,
  Q4_K and IQ4_NL matrices into an interleaved layout ("CPU_REPACK" buffer) while the
  mapped file pages stay resident, so those weights count twice. Measured: a 1.1B
  Q4_0 model peaks at ~1.27 GB, not ~0.7 GB (bench/fit.py).

The numbers are checked against measured peak RSS by ``bench/fit.py`` and by
tests/test_fit_measured.py.
"""

from __future__ import annotations

import functools
import platform
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from pathlib import Path

from locara.device.gguf_meta import GGUFInfo
from locara.errors import ModelFormatError, UsageError

KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
BACKENDS = ("llama_cpp", "mlx")

MiB = 2**20
# Resident memory of a Python process that has imported llama_cpp and created a context,
# beyond the model's own buffers (interpreter, ggml/llama.cpp code and small buffers).
_OVERHEAD_BASE = {"llama_cpp": 43 * MiB, "mlx": 160 * MiB}
# llama.cpp's vocabulary (token strings, scores, lookup maps), per token.
_VOCAB_BYTES_PER_TOKEN = 330


@dataclass(frozen=True)
class FitEstimate:
    """Expected peak memory of one loaded model, broken down. All values are bytes."""

    backend: str
    n_ctx: int
    kv_type: str
    weights_bytes: int
    kv_bytes: int
    compute_bytes: int
    overhead_bytes: int
    repack_bytes: int = 0  # a second, CPU-friendly copy of some weights (see module doc)

    @property
    def total_bytes(self) -> int:
        return (
            self.weights_bytes
            + self.repack_bytes
            + self.kv_bytes
            + self.compute_bytes
            + self.overhead_bytes
        )

    def to_dict(self) -> dict[str, int | str]:
        data: dict[str, int | str] = dict(asdict(self))
        data["total_bytes"] = self.total_bytes
        return data


@dataclass(frozen=True)
class ModelShape:
    """The numbers the estimator needs, from a GGUF header (or a manifest's arch facts)."""

    weights_bytes: int
    n_layers: int
    n_heads: int
    n_kv_heads: int
    key_length: int
    value_length: int
    n_embd: int
    n_vocab: int
    context_length: int | None
    n_ff: int = 0
    # Bytes of 2-D weight tensors by ggml type, excluding the token embedding (read by row,
    # never repacked) and matrices whose row count is not a multiple of 8.
    repackable_by_type: tuple[tuple[str, int], ...] = ()

    def repack_bytes(self, types: frozenset[str]) -> int:
        return sum(n for t, n in self.repackable_by_type if t in types)

    @property
    def n_head_bytes_per_score(self) -> int:
        return self.n_heads * 6 + 4

    @classmethod
    def from_gguf(cls, info: GGUFInfo) -> ModelShape:
        """Read the shape; a GGUF without the metadata the estimate needs is a ModelFormatError."""
        missing = [
            name
            for name, value in (
                ("block_count", info.n_layers),
                ("attention.head_count", info.n_heads),
                ("embedding_length", info.n_embd),
            )
            if not value
        ]
        if missing:
            raise ModelFormatError(
                f"{info.path.name} lacks GGUF metadata the memory estimate needs: "
                + ", ".join(f"{info.architecture}.{m}" for m in missing),
                "re-convert the model with a current llama.cpp convert script, "
                "or use a curated build (locara ls --all)",
            )
        assert info.n_layers and info.n_heads and info.n_embd  # for mypy; checked above
        by_type: dict[str, int] = {}
        for t in info.tensors:
            if len(t.shape) == 2 and t.shape[1] % 8 == 0 and t.name != "token_embd.weight":
                by_type[t.type_name] = by_type.get(t.type_name, 0) + t.n_bytes
        n_kv = info.n_kv_heads or info.n_heads
        key_len = info.key_length or info.n_embd // info.n_heads
        return cls(
            weights_bytes=info.tensor_bytes,
            n_layers=info.n_layers,
            n_heads=info.n_heads,
            n_kv_heads=n_kv,
            key_length=key_len,
            value_length=info.value_length or key_len,
            n_embd=info.n_embd,
            n_vocab=info.vocab_size or 32000,
            context_length=info.context_length,
            n_ff=info.feed_forward_length or 4 * info.n_embd,
            repackable_by_type=tuple(sorted(by_type.items())),
        )


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str = "f16") -> int:
    per_elem = _kv_bytes_per_element(kv_type)
    elems = n_ctx * shape.n_layers * shape.n_kv_heads * (shape.key_length + shape.value_length)
    return int(elems * per_elem)


def compute_buffer_bytes(shape: ModelShape, n_ctx: int, n_batch: int = 512) -> int:
    """The part of ggml's compute buffer that a full-context batch actually touches."""
    batch = min(n_batch, n_ctx)
    # Attention scores for one layer (f32 KQ, its softmax and the f16 copy, about 6 bytes
    # per element) plus the mask: n_ctx x batch x (6 n_head + 4). Fitted to measured RSS.
    scores = n_ctx * batch * (shape.n_head_bytes_per_score)
    # Activations of one batch: residual stream and attention projections (6 x n_embd f32)
    # and the feed-forward (3 x n_ff f32). Only the last token's logits are computed.
    activations = batch * (shape.n_embd * 4 * 6 + shape.n_ff * 4 * 3)
    return scores + activations + shape.n_vocab * 4


def estimate_shape(
    shape: ModelShape,
    n_ctx: int,
    kv_type: str = "f16",
    backend: str = "llama_cpp",
    n_batch: int = 512,
    repack_types: frozenset[str] = frozenset(),
) -> FitEstimate:
    """The estimate for a model shape; see the module docstring for the formula.

    ``repack_types``: ggml types llama.cpp's CPU backend copies into an interleaved
    layout on this device (``cpu_repack_types``); empty when the layers run on a GPU.
    """
    if n_ctx <= 0:
        raise UsageError(f"invalid context {n_ctx}: must be > 0", "pass --ctx 512 or more")
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    overhead = _OVERHEAD_BASE[backend] + shape.n_vocab * _VOCAB_BYTES_PER_TOKEN
    return FitEstimate(
        backend=backend,
        n_ctx=n_ctx,
        kv_type=kv_type,
        weights_bytes=shape.weights_bytes,
        kv_bytes=kv_cache_bytes(shape, n_ctx, kv_type),
        compute_bytes=compute_buffer_bytes(shape, n_ctx, n_batch),
        overhead_bytes=overhead,
        repack_bytes=shape.repack_bytes(repack_types) if backend == "llama_cpp" else 0,
    )


def estimate_fit(
    info: GGUFInfo,
    n_ctx: int,
    kv_type: str = "f16",
    backend: str = "llama_cpp",
    *,
    repack_types: frozenset[str] | None = None,
) -> FitEstimate:
    """Expected peak RSS of loading ``info``'s model with an ``n_ctx`` context on CPU.

    ``repack_types`` defaults to what llama.cpp repacks on this machine's CPU; pass
    ``cpu_repack_types(profile.arch, profile.cpu_features)`` for another device, or
    ``frozenset()`` when every layer is offloaded to a GPU.
    """
    if repack_types is None:
        repack_types = cpu_repack_types(platform.machine(), _local_cpu_features())
    return estimate_shape(
        ModelShape.from_gguf(info), n_ctx, kv_type, backend, repack_types=repack_types
    )


def cpu_repack_types(arch: str, cpu_features: Iterable[str]) -> frozenset[str]:
    """Weight types llama.cpp's CPU backend repacks (keeps a second copy of) here.

    Observed on llama-cpp-python 0.3.36 (ggml "CPU_REPACK" buffer): with AVX2, Q4_0,
    Q4_K and IQ4_NL matrices are repacked to 8x8 interleaved blocks; on ARM with
    dot-product instructions Q4_0, IQ4_NL and Q8_0 (and Q4_K with i8mm). The mapped
    file pages stay resident too, so those weights count twice in RSS.
    """
    feats = set(cpu_features)
    if arch in ("x86_64", "AMD64", "amd64", "i686"):
        return frozenset({"Q4_0", "Q4_K", "IQ4_NL"}) if "avx2" in feats else frozenset()
    if arch in ("arm64", "aarch64"):
        types = {"Q4_0", "IQ4_NL", "Q8_0"} if "dotprod" in feats else set()
        if "i8mm" in feats:
            types.add("Q4_K")
        return frozenset(types)
    return frozenset()


@functools.lru_cache(maxsize=1)
def _local_cpu_features() -> tuple[str, ...]:
    try:
        text = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace")
    except OSError:
        return ("neon", "dotprod") if platform.machine() == "arm64" else ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            flags = set(value.split())
            if "asimddp" in flags:
                flags.add("dotprod")
            return tuple(sorted(flags))
    return ()


def _kv_bytes_per_element(kv_type: str) -> float:
    try:
        return KV_BYTES_PER_ELEMENT[kv_type]
    except KeyError:
        raise UsageError(
            f"unknown KV cache type {kv_type!r}",
            f"use one of: {', '.join(KV_BYTES_PER_ELEMENT)}",
        ) from None


# Typical transformer shapes by parameter count (llama/qwen/gemma families), for models
# whose GGUF is not on disk yet: (max params, layers, n_embd, heads, kv_heads, n_vocab).
_TYPICAL_SHAPES = (
    (0.2e9, 30, 576, 9, 3, 49152),
    (0.6e9, 24, 896, 14, 2, 151936),
    (2.0e9, 28, 1536, 12, 2, 151936),
    (4.0e9, 28, 3072, 24, 8, 128256),
    (9.0e9, 32, 4096, 32, 8, 128256),
    (16e9, 48, 5120, 40, 8, 152064),
    (40e9, 64, 5120, 40, 8, 152064),
    (float("inf"), 80, 8192, 64, 8, 128256),
)
# Bits per weight of common GGUF/MLX quantizations (including their scales).
QUANT_BITS: dict[str, float] = {
    "F32": 32,
    "F16": 16,
    "BF16": 16,
    "Q8_0": 8.5,
    "Q6_K": 6.56,
    "Q5_K_M": 5.69,
    "Q5_K_S": 5.54,
    "Q5_1": 6.0,
    "Q5_0": 5.5,
    "Q4_K_M": 4.85,
    "Q4_K_S": 4.58,
    "Q4_1": 5.0,
    "Q4_0": 4.5,
    "IQ4_XS": 4.25,
    "Q3_K_L": 4.27,
    "Q3_K_M": 3.91,
    "Q3_K_S": 3.5,
    "Q2_K": 3.35,
    "8BIT": 8.5,
    "6BIT": 6.5,
    "4BIT": 4.5,
    "3BIT": 3.5,
}


def approximate_shape(
    weights_bytes: int, quant: str | None, context_length: int | None
) -> ModelShape:
    """A plausible shape from a file size and quant, when no GGUF header is at hand.

    Used to plan models that are not downloaded yet; plans built on it say so.
    """
    bits = QUANT_BITS.get((quant or "").upper(), 4.85)
    params = weights_bytes * 8 / bits
    for max_params, layers, embd, heads, kv, vocab in _TYPICAL_SHAPES:
        if params <= max_params:
            head = embd // heads
            return ModelShape(
                weights_bytes=weights_bytes,
                n_layers=layers,
                n_heads=heads,
                n_kv_heads=kv,
                key_length=head,
                value_length=head,
                n_embd=embd,
                n_vocab=vocab,
                context_length=context_length,
                n_ff=embd * 4,
                repackable_by_type=_approx_repackable(weights_bytes, quant, embd, vocab),
            )
    raise AssertionError("unreachable: the last shape has no upper bound")


# Share of a quant's weight bytes in each ggml type (the rest: Q6_K/F32 tensors).
_QUANT_MIX: dict[str, tuple[tuple[str, float], ...]] = {
    "Q4_K_M": (("Q4_K", 0.75), ("Q6_K", 0.25)),
    "Q4_K_S": (("Q4_K", 0.95),),
    "Q4_0": (("Q4_0", 1.0),),
    "IQ4_NL": (("IQ4_NL", 1.0),),
    "Q8_0": (("Q8_0", 1.0),),
}


def _approx_repackable(
    weights_bytes: int, quant: str | None, n_embd: int, n_vocab: int
) -> tuple[tuple[str, int], ...]:
    mix = _QUANT_MIX.get((quant or "").upper())
    if not mix:
        return ()
    embd = int(n_embd * n_vocab * QUANT_BITS.get((quant or "").upper(), 4.85) / 8)
    matrices = max(weights_bytes - embd, 0)
    return tuple((t, int(matrices * share)) for t, share in mix)
