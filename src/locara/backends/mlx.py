"""The MLX backend, on ``mlx`` + ``mlx-lm`` (Apple Silicon GPU; the CPU on Linux).

It loads an MLX model directory or a GGUF file directly (Q4_0/Q4_1/Q8_0, mapped
onto ``mlx_lm``'s llama model, quantization kept). As in the llama.cpp backend the
token loop is Locara's own: chat prompts come from the sandboxed template renderer,
stop strings go through the same ``StopScanner``, and every chunk carries counts and
timings. What MLX cannot do is declared in ``capabilities`` and refused loudly:
a JSON schema is never silently ignored (Ollama's MLX path and mlx_lm.server do
that), embeddings and logprobs are not offered.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from locara.backends.base import (
    Availability,
    Capabilities,
    Chunk,
    FinishReason,
    GenerationRequest,
    LoadOptions,
    Sampling,
    Timings,
    Usage,
)
from locara.backends.chat_template import request_prompt
from locara.backends.stops import StopScanner
from locara.errors import (
    BackendError,
    ContextOverflowError,
    ModelFormatError,
    UnsupportedFeatureError,
)

if TYPE_CHECKING:
    import numpy as np

    from locara.backends.mlx_checkpoint import MlxTokenizer
    from locara.registry.manifest import ModelManifest

_PENALTY_LAST_N = 64  # llama.cpp's default window for the repetition penalty


class MlxBackend:
    """Loads MLX directories and GGUF files with mlx-lm's model definitions."""

    name: ClassVar[str] = "mlx"
    formats: ClassVar[frozenset[str]] = frozenset({"mlx", "gguf"})

    def available(self) -> Availability:
        try:
            import mlx.core  # noqa: F401
            import mlx_lm.models.llama  # noqa: F401
            import tokenizers  # noqa: F401
        except ImportError as exc:
            return Availability(
                False, f"MLX is not installed ({exc}); install it with: pip install 'locara[mlx]'"
            )
        return Availability(True)

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> MlxModel:
        """Load the MLX directory or GGUF file at ``path``."""
        from locara.backends.mlx_checkpoint import MlxTokenizer, build_model, read_checkpoint
        from locara.convert.gguf_to_mlx import require_mlx

        require_mlx()
        if opts.embedding:
            raise UnsupportedFeatureError(
                "the MLX backend does not compute embeddings",
                "load embedding models with the llama.cpp backend: --backend llama_cpp",
            )
        ckpt = read_checkpoint(path)
        trained = int(ckpt.config.get("max_position_embeddings") or 0)
        if trained and opts.n_ctx > trained:
            raise ModelFormatError(
                f"context {opts.n_ctx} is larger than {manifest.id}'s trained context {trained}",
                f"pass --ctx {trained} or less",
            )
        model = build_model(ckpt, path)
        tokenizer = MlxTokenizer(ckpt.tokenizer, ckpt.tokenizer_config)
        eos = ckpt.config.get("eos_token_id")
        eos_ids = {int(e) for e in (eos if isinstance(eos, list) else [eos]) if e is not None}
        template = manifest.config.chat_template or tokenizer.info.chat_template
        return MlxModel(model, tokenizer, manifest, template, opts, eos_ids)


class MlxModel:
    """A loaded MLX model. Not thread-safe: the engine serialises calls per model."""

    def __init__(
        self,
        model: Any,
        tokenizer: MlxTokenizer,
        manifest: ModelManifest,
        template: str | None,
        opts: LoadOptions,
        eos_ids: set[int],
    ) -> None:
        self._model = model
        self.tokenizer = tokenizer
        self.manifest = manifest
        self.template = template
        self.opts = opts
        self.n_ctx: int = opts.n_ctx
        self.embed_ctx = 0
        self.capabilities = Capabilities(
            chat=template is not None,
            completion=True,
            embed=False,
            json_schema=False,
            tools=False,
            logprobs=False,
            no_tools=(
                f"{manifest.id} runs on MLX, which cannot call tools",
                "run a GGUF of it with llama.cpp: --backend llama_cpp",
            ),
        )
        self._lock = threading.Lock()
        self._stop_ids = set(eos_ids)
        eos_id = tokenizer.token_id(tokenizer.info.eos_token) if tokenizer.info.eos_token else None
        if eos_id is not None:
            self._stop_ids.add(eos_id)
        for word in manifest.config.stop_tokens:
            ids = tokenizer.encode(word)
            if len(ids) == 1:
                self._stop_ids.add(ids[0])

    # -- tokens --------------------------------------------------------------------
    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer.encode(text))

    def render_prompt(self, req: GenerationRequest) -> str:
        info = self.tokenizer.info
        return request_prompt(
            req, self.template, self.manifest.id, info.bos_token or "", info.eos_token or ""
        )

    def prompt_tokens(self, req: GenerationRequest) -> list[int]:
        text = self.render_prompt(req)
        ids = self.tokenizer.encode(text)
        info = self.tokenizer.info
        template_has_bos = req.prompt is None and bool(
            self.template and "bos_token" in self.template
        )
        bos = self.tokenizer.token_id(info.bos_token) if info.bos_token else None
        if info.add_bos and bos is not None and not template_has_bos:
            ids = [bos, *ids]
        return ids

    # -- generation ----------------------------------------------------------------
    def _refuse_unsupported(self, req: GenerationRequest) -> None:
        if req.json_schema is not None:
            raise UnsupportedFeatureError(
                "the MLX backend cannot constrain output to a JSON schema "
                "(it has no grammar sampler) and will not ignore the request",
                "use the llama.cpp backend for response_format / JSON schema: --backend llama_cpp",
            )
        if req.logprobs is not None:
            raise UnsupportedFeatureError(
                "the MLX backend does not return logprobs",
                "use the llama.cpp backend, or drop logprobs from the request",
            )

    def generate(self, req: GenerationRequest) -> Iterator[Chunk]:
        """Stream the answer; the last chunk has the finish reason, usage and timings."""
        req.validate()
        self._refuse_unsupported(req)
        if self._model is None:
            raise BackendError(f"{self.manifest.id} was closed", "load the model again")
        tokens = self.prompt_tokens(req)
        n_prompt = len(tokens)
        if n_prompt >= self.n_ctx:
            raise ContextOverflowError(n_prompt, req.max_tokens or 0, self.n_ctx)
        budget = req.max_tokens if req.max_tokens is not None else self.n_ctx - n_prompt
        if n_prompt + budget > self.n_ctx:
            raise ContextOverflowError(n_prompt, budget, self.n_ctx)
        with self._lock:
            yield from self._generate_locked(req, tokens, budget)

    def _logits(self, tokens: list[int], cache: list[Any]) -> np.ndarray[Any, Any]:
        """Feed ``tokens`` through the model (in batches) and return the last logits."""
        import mlx.core as mx
        import numpy as np

        step = max(1, self.opts.n_batch)
        out: Any = None
        for i in range(0, len(tokens), step):
            out = self._model(mx.array(tokens[i : i + step])[None], cache=cache)
            mx.eval(out)
        last = out[0, -1].astype(mx.float32)
        return np.array(last)

    def _generate_locked(
        self, req: GenerationRequest, tokens: list[int], budget: int
    ) -> Iterator[Chunk]:
        from mlx_lm.models.cache import make_prompt_cache

        sampler = _Sampler(req.sampling)
        scanner = StopScanner(req.stop)
        detok = self.tokenizer.streamer()
        history = list(tokens)
        started = time.perf_counter()
        first_at: float | None = None
        n_out = 0
        finish: FinishReason = "length"
        try:
            cache = make_prompt_cache(self._model)
            logits = self._logits(tokens, cache)
            while True:
                tok = sampler.sample(logits, history)
                now = time.perf_counter()
                if first_at is None:
                    first_at = now
                if tok in self._stop_ids:
                    finish = "stop"
                    break
                n_out += 1
                history.append(tok)
                emit, hit = scanner.feed(detok.feed(tok))
                if emit:
                    yield Chunk(emit, n_out, len(tokens))
                if hit:
                    finish = "stop"
                    break
                if n_out >= budget:
                    break
                logits = self._logits([tok], cache)
        except (RuntimeError, ValueError, MemoryError) as exc:
            raise BackendError(
                f"MLX failed while generating: {exc}", "retry; if it persists, reload the model"
            ) from exc
        tail = scanner.flush(detok.finish()) if finish != "stop" else ""
        end = time.perf_counter()
        first_at = first_at or end
        usage = Usage(len(tokens), n_out, 0)
        timings = Timings(
            prompt_s=first_at - started, generation_s=end - first_at, ttft_s=first_at - started
        )
        yield Chunk(tail, n_out, len(tokens), finish, usage, timings)

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise UnsupportedFeatureError(
            "the MLX backend does not compute embeddings",
            "use an embedding model on the llama.cpp backend (e.g. all-minilm-l6-v2)",
        )

    def close(self) -> None:
        self._model = None


class _Sampler:
    """llama.cpp's default chain on numpy: penalties, top-k, top-p, min-p, temperature.

    Greedy (temperature 0) is an argmax; otherwise draws come from a generator seeded
    once per request, so a fixed seed gives the same answer every time.
    """

    def __init__(self, s: Sampling) -> None:
        import numpy as np

        self.s = s
        self.rng = np.random.default_rng(s.seed)

    def sample(self, logits: np.ndarray[Any, Any], history: list[int]) -> int:
        import numpy as np

        s = self.s
        logits = logits.astype(np.float64, copy=True)
        if s.repeat_penalty != 1.0 and history:
            recent = np.unique(np.asarray(history[-_PENALTY_LAST_N:], dtype=np.int64))
            vals = logits[recent]
            logits[recent] = np.where(vals > 0, vals / s.repeat_penalty, vals * s.repeat_penalty)
        if s.temperature <= 0:
            return int(np.argmax(logits))
        order = np.argsort(-logits, kind="stable")
        if s.top_k > 0:
            order = order[: s.top_k]
        kept = logits[order]
        probs = np.exp(kept - kept[0])
        probs /= probs.sum()
        if s.top_p < 1.0:
            cut = int(np.searchsorted(np.cumsum(probs), s.top_p)) + 1
            order, kept, probs = order[:cut], kept[:cut], probs[:cut]
        if s.min_p > 0.0:
            keep = probs >= s.min_p * probs[0]
            order, kept = order[keep], kept[keep]
        scaled = (kept - kept[0]) / s.temperature
        p = np.exp(scaled)
        p /= p.sum()
        return int(order[self.rng.choice(len(order), p=p)])
