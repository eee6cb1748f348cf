"""The llama.cpp backend, on llama-cpp-python.

The token loop is Locara's own (``Llama.generate`` yields one token at a time), so
stop strings, token counts, timings and cancellation are exact and identical for
every surface. Chat prompts are rendered by Locara's sandboxed template renderer,
never by llama-cpp-python's chat handlers. llama.cpp's KV cache keeps the longest
common prefix between calls, which is what makes a repeated system prompt cheap.
"""

from __future__ import annotations

import codecs
import json
import os
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from locara.backends.base import (
    AdapterUse,
    Availability,
    Capabilities,
    Chunk,
    FinishReason,
    GenerationRequest,
    LoadOptions,
    Timings,
    TokenLogprob,
    Usage,
    cancelled_chunk,
)
from locara.backends.chat_template import request_prompt
from locara.backends.llama_vocab import prompt_tokens, vocab_facts
from locara.backends.schema_guard import MAX_GRAMMAR_BYTES, check_schema, refuse
from locara.backends.stops import StopScanner
from locara.errors import (
    BackendError,
    BackendUnavailableError,
    ContextOverflowError,
    ModelFormatError,
    UnsupportedFeatureError,
    UsageError,
)

if TYPE_CHECKING:
    from locara.registry.manifest import ModelManifest

_KV_TYPES = {"f16": 1, "q8_0": 8, "q4_0": 2}  # ggml_type ids


def physical_cores() -> int:
    """Threads for decoding: physical cores (hyperthreads only add contention)."""
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class LlamaCppBackend:
    """Loads GGUF files with llama-cpp-python."""

    name: ClassVar[str] = "llama_cpp"
    formats: ClassVar[frozenset[str]] = frozenset({"gguf"})

    def available(self) -> Availability:
        try:
            import llama_cpp  # noqa: F401
        except ImportError as exc:
            return Availability(False, f"llama-cpp-python is not installed ({exc})")
        return Availability(True)

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> LlamaCppModel:
        """Load the GGUF at ``path``; bad files raise ModelFormatError before llama.cpp sees them."""
        from locara.device.gguf_meta import read_gguf

        info = read_gguf(path)  # not-GGUF and truncated files fail here, cleanly
        try:
            import llama_cpp
        except ImportError as exc:
            raise BackendUnavailableError(
                "llama-cpp-python is not installed", "run ./scripts/install.sh"
            ) from exc
        n_ctx = opts.n_ctx
        trained = info.context_length
        if trained and n_ctx > trained:
            raise ModelFormatError(
                f"context {n_ctx} is larger than {manifest.id}'s trained context {trained}",
                f"pass --ctx {trained} or less",
            )
        threads = opts.n_threads or physical_cores()
        threads_batch = opts.n_threads_batch or threads
        try:
            llm = llama_cpp.Llama(
                model_path=str(path),
                n_ctx=n_ctx,
                n_batch=min(opts.n_batch, n_ctx),
                n_threads=threads,
                n_threads_batch=threads_batch,
                n_gpu_layers=opts.n_gpu_layers,
                embedding=opts.embedding,
                # llama.cpp cannot create a context with a quantized V cache unless
                # flash attention is on, so a quantized KV type turns it on.
                flash_attn=opts.flash_attn or opts.kv_type != "f16",
                type_k=_KV_TYPES[opts.kv_type],
                type_v=_KV_TYPES[opts.kv_type],
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelFormatError(
                f"llama.cpp could not load {path}: {exc}",
                "check the file with: locara cache verify --deep",
            ) from exc
        template = manifest.config.chat_template or info.chat_template
        return LlamaCppModel(llm, manifest, template, opts, threads)


class LlamaCppModel:
    """A loaded GGUF. Not thread-safe: the engine serialises calls per model."""

    def __init__(
        self,
        llm: Any,
        manifest: ModelManifest,
        template: str | None,
        opts: LoadOptions,
        threads: int,
    ) -> None:
        self._llm = llm
        self.manifest = manifest
        self.template = template
        self.opts = opts
        self.n_threads = threads
        self.n_ctx: int = int(llm.n_ctx())
        self.embed_ctx = self.n_ctx if opts.embedding else 0
        self.capabilities = Capabilities(
            chat=template is not None,
            completion=True,
            embed=opts.embedding,
            json_schema=True,
            tools=False,
            logprobs=True,
            lora=not opts.embedding,
            # Tool calls are parsed by llama.cpp's server (see worker_tools), not in process.
            no_tools=(
                f"{manifest.id} runs in process (not in a llama-server worker), which cannot "
                "call tools",
                "install llama-server with ./scripts/install.sh (without "
                "LOCARA_SKIP_LLAMA_SERVER), then load the model again",
            ),
        )
        self._lock = threading.Lock()
        self._stop_ids = self._single_token_ids(manifest.config.stop_tokens)
        self._facts = vocab_facts(llm._model)
        self._adapters: dict[str, Any] = {}  # sha256 -> llama_adapter_lora handle
        self._stack: tuple[tuple[str, float], ...] = ()  # the context's adapters and scales

    # -- tokens --------------------------------------------------------------------
    def check_input_size(self, text: str) -> None:
        """Refuse text that no tokenization could fit into the context, before tokenizing."""
        self._facts.check_size(text, self.n_ctx)

    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return list(self._llm.tokenize(text.encode("utf-8"), add_bos=False, special=special))

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as this load uses it; refused untokenized when it cannot fit.

        Loaded for embeddings: exactly what ``embed`` hands llama.cpp (the text as plain
        text, with the BOS or BERT's [CLS] ... [SEP] added). Else: as a raw prompt.
        """
        self.check_input_size(text)
        if self.opts.embedding:
            return len(self._llm.tokenize(text.encode("utf-8"), add_bos=True, special=False))
        return len(self.tokenize(text))

    def _single_token_ids(self, words: tuple[str, ...]) -> set[int]:
        ids: set[int] = set()
        for w in words:
            toks = self.tokenize(w)
            if len(toks) == 1:
                ids.add(toks[0])
        return ids

    def render_prompt(self, req: GenerationRequest) -> str:
        f = self._facts
        return request_prompt(req, self.template, self.manifest.id, f.bos_text, f.eos_text)

    def prompt_tokens(self, req: GenerationRequest) -> list[int]:
        """The request's prompt as tokens: the template's markers special, contents plain."""
        model = self._llm._model
        return prompt_tokens(model, self._facts, req, self.template, self.manifest.id, self.n_ctx)

    # -- generation ----------------------------------------------------------------
    def generate(self, req: GenerationRequest) -> Iterator[Chunk]:
        """Stream the answer; the last chunk has the finish reason, usage and timings.

        Closing the iterator (a client went away, Ctrl-C) stops decoding before the
        next token: the loop holds no buffered work.
        """
        req.validate()
        tokens = self.prompt_tokens(req)
        n_prompt = len(tokens)
        if not tokens:  # llama.cpp cannot start from nothing (no BOS for this model)
            raise UsageError("the prompt is empty", "send a non-empty prompt")
        if n_prompt >= self.n_ctx:
            raise ContextOverflowError(n_prompt, req.max_tokens or 0, self.n_ctx)
        budget = req.max_tokens if req.max_tokens is not None else self.n_ctx - n_prompt
        if n_prompt + budget > self.n_ctx:
            raise ContextOverflowError(n_prompt, budget, self.n_ctx)
        grammar = self._grammar(req.json_schema) if req.json_schema is not None else None
        with self._lock:
            yield from self._generate_locked(req, tokens, budget, grammar)

    def _prefill(self, tokens: list[int], req: GenerationRequest) -> bool:
        """Evaluate the prompt but its last token in batches; False when cancelled meanwhile.

        ``Llama.generate`` evaluates a whole prompt before it yields, which nothing can
        interrupt; a client that went away during a long prompt would keep the model busy
        for seconds. Evaluated here batch by batch, the work stops at the next batch, and
        ``generate`` then finds everything but the last token cached.
        """
        llm = self._llm
        start = self._reusable_prefix(tokens)
        end = len(tokens) - 1
        if req.cancelled is None or end - start <= llm.n_batch:
            return True
        llm.n_tokens = start  # eval() drops the cache beyond this point first
        for i in range(start, end, llm.n_batch):
            if req.cancelled():
                return False
            llm.eval(tokens[i : min(i + llm.n_batch, end)])
        return not req.cancelled()

    def _generate_locked(
        self, req: GenerationRequest, tokens: list[int], budget: int, grammar: Any
    ) -> Iterator[Chunk]:
        import llama_cpp

        llm = self._llm
        s = req.sampling
        self._use_adapters(req.adapters)
        llm.set_seed(s.seed if s.seed is not None else llama_cpp.LLAMA_DEFAULT_SEED)
        if s.reproducible:
            llm.reset()  # no prefix reuse: the whole prompt in the same batches every time
        cached = self._reusable_prefix(tokens)
        started = time.perf_counter()
        if not self._prefill(tokens, req):
            yield cancelled_chunk(len(tokens), cached, time.perf_counter() - started)
            return
        scanner = StopScanner(req.stop)
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        vocab = llm._model.vocab
        first_at: float | None = None
        n_out = 0
        finish: FinishReason = "length"
        pending: list[TokenLogprob] = []
        gen = llm.generate(
            tokens,
            top_k=s.top_k,
            top_p=s.top_p,
            min_p=s.min_p,
            temp=s.temperature,
            repeat_penalty=s.repeat_penalty,
            grammar=grammar,
        )
        try:
            for tok in gen:
                now = time.perf_counter()
                if first_at is None:
                    first_at = now
                if tok in self._stop_ids or llama_cpp.llama_vocab_is_eog(vocab, tok):
                    finish = "stop"
                    break
                n_out += 1
                piece = decoder.decode(bytes(llm.detokenize([tok], special=False)))
                if req.logprobs is not None:
                    pending.append(self._logprob(tok, req.logprobs))
                emit, hit = scanner.feed(piece)
                if emit:
                    yield Chunk(emit, n_out, len(tokens), logprobs=tuple(pending))
                    pending = []
                if hit:
                    finish = "stop"
                    break
                if n_out >= budget:
                    break
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(
                f"llama.cpp failed while generating: {exc}",
                "retry; if it persists, reload the model",
            ) from exc
        finally:
            gen.close()
        tail = scanner.flush(decoder.decode(b"", final=True)) if finish != "stop" else ""
        end = time.perf_counter()
        first_at = first_at or end
        usage = Usage(len(tokens), n_out, cached)
        timings = Timings(
            prompt_s=first_at - started, generation_s=end - first_at, ttft_s=first_at - started
        )
        yield Chunk(tail, n_out, len(tokens), finish, usage, timings, logprobs=tuple(pending))

    def _use_adapters(self, adapters: tuple[AdapterUse, ...]) -> None:
        """Make ``adapters`` the context's LoRA stack; any change drops the cached prefix.

        llama-cpp-python's ``generate`` silently reuses the longest common token prefix
        of the previous call, whatever adapters computed its KV: after a swap that prefix
        belongs to another model, so the cache is dropped and the prompt evaluated again.
        """
        import ctypes

        import llama_cpp

        stack = tuple((a.sha256, a.scale) for a in adapters)
        if stack == self._stack:
            return
        handles = [self._adapter(a) for a in adapters]
        n = len(handles)
        array = (llama_cpp.llama_adapter_lora_p_ctypes * n)(*handles) if n else None
        scales = (ctypes.c_float * n)(*(a.scale for a in adapters)) if n else None
        if llama_cpp.llama_set_adapters_lora(self._llm._ctx.ctx, array, n, scales):
            raise BackendError(
                "llama.cpp refused the adapter stack " + ", ".join(a.id for a in adapters),
                "check the adapters with: locara adapter show ID",
            )
        self._llm.reset()
        self._stack = stack

    def _adapter(self, use: AdapterUse) -> Any:
        import llama_cpp

        handle = self._adapters.get(use.sha256)
        if handle is None:
            handle = llama_cpp.llama_adapter_lora_init(
                self._llm._model.model, str(use.path).encode()
            )
            if not handle:
                raise BackendError(
                    f"llama.cpp could not load adapter {use.id} ({use.path})",
                    f"check it with: locara adapter show {use.id}",
                )
            self._adapters[use.sha256] = handle
        return handle

    def _logprob(self, tok: int, top: int) -> TokenLogprob:
        # The logits the token was just sampled from are still the context's last row
        # (Llama.generate evaluates the next token only when asked for it).
        import llama_cpp
        import numpy as np

        llm = self._llm
        n_vocab = int(llm.n_vocab())
        ptr = llama_cpp.llama_get_logits_ith(llm._ctx.ctx, -1)
        logits = np.ctypeslib.as_array(ptr, shape=(n_vocab,)).astype(np.float64)
        peak = float(logits.max())
        lse = peak + float(np.log(np.exp(logits - peak).sum()))

        def text(t: int) -> str:
            return bytes(llm.detokenize([t], special=False)).decode("utf-8", "replace")

        alts: tuple[tuple[str, float], ...] = ()
        if top > 0:
            idx = np.argpartition(-logits, top)[:top]
            idx = idx[np.argsort(-logits[idx])]
            alts = tuple((text(int(i)), float(logits[i]) - lse) for i in idx)
        return TokenLogprob(text(tok), float(logits[tok]) - lse, alts)

    def _reusable_prefix(self, tokens: list[int]) -> int:
        # Mirrors Llama.generate's prefix reuse so usage can report cached tokens.
        llm = self._llm
        n = 0
        for a, b in zip(llm._input_ids, tokens, strict=False):
            if a != b:
                break
            n += 1
        return n - 1 if n == len(tokens) and n > 0 else n

    def _grammar(self, schema: dict[str, Any]) -> Any:
        """A grammar for ``schema`` that llama.cpp has been seen to build.

        llama-cpp-python 0.3.36 hands whatever ``llama_sampler_init_grammar`` returns to
        the sampler chain, NULL included, and the next token then segfaults the process:
        so the grammar is built once here and a NULL is refused with a 400.
        """
        import llama_cpp
        from llama_cpp.llama_grammar import JSON_GBNF, LlamaGrammar

        check_schema(schema)
        try:
            if not schema:
                grammar = LlamaGrammar.from_string(JSON_GBNF, verbose=False)
            else:
                grammar = LlamaGrammar.from_json_schema(json.dumps(schema), verbose=False)
        except Exception as exc:  # the converter asserts and trips over odd schemas
            raise UnsupportedFeatureError(
                f"this JSON schema cannot be compiled to a grammar: {exc}",
                "simplify the schema (objects, arrays, strings, numbers, enums)",
            ) from exc
        text: str = grammar._grammar
        if len(text.encode("utf-8")) > MAX_GRAMMAR_BYTES:
            raise refuse("$", f"its grammar is larger than {MAX_GRAMMAR_BYTES} bytes")
        sampler = llama_cpp.llama_sampler_init_grammar(
            self._llm._model.vocab, text.encode("utf-8"), grammar._root.encode("utf-8")
        )
        if not sampler:
            raise refuse("$", "llama.cpp cannot build a grammar from it (see the patterns)")
        llama_cpp.llama_sampler_free(sampler)
        return grammar

    # -- embeddings ----------------------------------------------------------------
    def embed(self, texts: list[str]) -> list[list[float]]:
        if not self.opts.embedding:
            raise UnsupportedFeatureError(
                f"{self.manifest.id} was not loaded for embeddings",
                "load it with embeddings enabled, or use an embedding model",
            )
        for t in texts:
            n = self.count_tokens(t)
            if n > self.n_ctx:
                raise ContextOverflowError(n, 0, self.n_ctx)
        import numpy as np

        with self._lock:
            try:
                # One text per call: with per-token output (no pooling) llama-cpp-python
                # 0.3.36 mis-offsets every sequence after the first in a batch.
                out = [self._llm.embed([t], normalize=False, truncate=False)[0] for t in texts]
            except (RuntimeError, ValueError) as exc:
                raise BackendError(f"llama.cpp failed to embed: {exc}") from exc
        vectors: list[list[float]] = []
        for v in out:
            arr = np.asarray(v, dtype=np.float64)
            if arr.ndim == 2:
                # Decoder models have no pooling of their own: llama.cpp returns one
                # vector per token, and the mean is the sentence embedding.
                arr = arr.mean(axis=0)
            norm = float(np.linalg.norm(arr))
            vectors.append((arr / norm if norm > 0 else arr).tolist())
        return vectors

    def close(self) -> None:
        import llama_cpp

        for handle in self._adapters.values():
            llama_cpp.llama_adapter_lora_free(handle)
        self._adapters.clear()
        self._llm.close()
