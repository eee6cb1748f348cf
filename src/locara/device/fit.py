"""How much memory a model takes at a given context: the fit estimator (SPEC §4).

    total = weights + KV cache + compute buffers + runtime overhead

- weights: the GGUF's tensor bytes (llama.cpp maps the file; after the first decode
  every page is resident, so all of it counts).
- KV cache: ``n_ctx × n_layer × n_head_kv × (key_len + value_len) × bytes/element``,
  f16 = 2 bytes, q8_0 = 34/32, q4_0 = 18/32 (ggml block sizes). llama.cpp clears the
  cache at creation, so all of it is resident from the start.
- compute: ggml's graph buffer for one batch. On CPU without flash attention the
  largest tensors are the attention scores (``n_ctx × n_batch × n_head`` f32) and the
  logits (``n_vocab × n_batch`` f32); the constants were fitted to llama.cpp's own
  "compute buffer size" reports (see bench/fit.py).
- overhead: the Python process with llama.cpp loaded, the tokenizer vocabulary and
  the logits output buffer; measured on this build, per backend.

The numbers are checked against measured peak RSS by ``bench/fit.py`` and by
tests/test_fit_measured.py.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from locara.device.gguf_meta import GGUFInfo
from locara.errors import ModelFormatError, UsageError

KV_BYTES_PER_ELEMENT: dict[str, float] = {"f16": 2.0, "q8_0": 34 / 32, "q4_0": 18 / 32}
BACKENDS = ("llama_cpp", "mlx")

MiB = 2**20
# Resident memory of a Python process that has imported llama_cpp and created a context,
# beyond the model's own buffers (interpreter, ggml/llama.cpp code and small buffers).
_OVERHEAD_BASE = {"llama_cpp": 64 * MiB, "mlx": 160 * MiB}


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

    @property
    def total_bytes(self) -> int:
        return self.weights_bytes + self.kv_bytes + self.compute_bytes + self.overhead_bytes

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
        )


def kv_cache_bytes(shape: ModelShape, n_ctx: int, kv_type: str = "f16") -> int:
    per_elem = _kv_bytes_per_element(kv_type)
    elems = n_ctx * shape.n_layers * shape.n_kv_heads * (shape.key_length + shape.value_length)
    return int(elems * per_elem)


def compute_buffer_bytes(shape: ModelShape, n_ctx: int, n_batch: int = 512) -> int:
    batch = min(n_batch, n_ctx)
    scores = n_ctx * batch * shape.n_heads * 4  # KQ and softmax(KQ), f32, one layer at a time
    logits = shape.n_vocab * batch * 4
    activations = batch * shape.n_embd * 4 * 8
    return scores + logits + activations


def estimate_shape(
    shape: ModelShape,
    n_ctx: int,
    kv_type: str = "f16",
    backend: str = "llama_cpp",
    n_batch: int = 512,
) -> FitEstimate:
    """The estimate for a model shape; see the module docstring for the formula."""
    if n_ctx <= 0:
        raise UsageError(f"invalid context {n_ctx}: must be > 0", "pass --ctx 512 or more")
    if backend not in BACKENDS:
        raise UsageError(f"unknown backend {backend!r}", f"use one of: {', '.join(BACKENDS)}")
    overhead = _OVERHEAD_BASE[backend] + shape.n_vocab * 4 * 2  # vocab tables + output logits
    return FitEstimate(
        backend=backend,
        n_ctx=n_ctx,
        kv_type=kv_type,
        weights_bytes=shape.weights_bytes,
        kv_bytes=kv_cache_bytes(shape, n_ctx, kv_type),
        compute_bytes=compute_buffer_bytes(shape, n_ctx, n_batch),
        overhead_bytes=overhead,
    )


def estimate_fit(
    info: GGUFInfo, n_ctx: int, kv_type: str = "f16", backend: str = "llama_cpp"
) -> FitEstimate:
    """Expected peak RSS of loading ``info``'s model with an ``n_ctx`` context."""
    return estimate_shape(ModelShape.from_gguf(info), n_ctx, kv_type, backend)


def _kv_bytes_per_element(kv_type: str) -> float:
    try:
        return KV_BYTES_PER_ELEMENT[kv_type]
    except KeyError:
        raise UsageError(
            f"unknown KV cache type {kv_type!r}",
            f"use one of: {', '.join(KV_BYTES_PER_ELEMENT)}",
        ) from None
