"""llama.cpp's own ``llama-server`` as a supervised worker process per loaded model.

The worker does what one in-process model cannot: it decodes many requests at once
(continuous batching over ``n_parallel`` slots, each with its own ``n_ctx``). Locara
keeps everything a user sees: prompts are rendered by Locara's sandboxed template
renderer and tokenized here (from the GGUF's vocabulary, loaded without weights), the
worker receives token ids on its native ``/completion`` route, and stop strings go
through the same ``StopScanner`` as in process, so both backends answer alike.

The worker listens on a Unix socket in a private directory (no TCP port), with a
random per-process API key, and runs with a short OpenMP spin (see ``worker_binary.worker_environment``). A dead
worker is noticed on the next request and started again; a request in flight when it
dies ends with ``BackendError``. Closing a ``generate()`` iterator closes its HTTP
stream, which makes llama-server cancel the task and free the slot.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import enum
import json
import logging
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, ClassVar

import httpx

from locara.backends.base import (
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
from locara.backends.schema_guard import check_schema, refuse
from locara.backends.stops import StopScanner
from locara.backends.worker_binary import WorkerBinary, locate_llama_server, worker_environment
from locara.backends.worker_tools import (
    chat_body,
    chat_chunks,
    check_request_text,
    sampling_fields,
    sse_events,
)
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

log = logging.getLogger(__name__)

_READY_POLL_S = 0.05
_LOG_TAIL_BYTES = 8192
_DEATH_GRACE_S = 2.0
# What llama.cpp says when it cannot parse a template, or parses it but fails to render
# its test conversation at start-up (common/chat.cpp, tools/server).
_TEMPLATE_ERRORS = (
    "failed to initialize chat template",
    "the supplied chat template is not supported",
)


class _TemplateRefused(Exception):
    """llama.cpp's template engine could not parse the model's chat template."""


class WorkerState(enum.Enum):
    STOPPED = "stopped"  # never started, or stopped on purpose
    STARTING = "starting"
    READY = "ready"
    DEAD = "dead"  # exited on its own; the next request starts it again


@dataclass(frozen=True)
class WorkerConfig:
    """What a worker runs: the model and the plan's numbers, nothing decided here."""

    model_path: Path
    alias: str
    n_ctx: int  # per slot; the worker's KV cache holds n_ctx * n_parallel
    n_parallel: int = 1
    n_threads: int = 1
    n_threads_batch: int = 1
    n_gpu_layers: int = 0
    flash_attn: bool = False
    kv_type: str = "f16"
    n_batch: int = 512
    # llama-server's host-memory prompt cache defaults to 8 GiB, which no plan budgets
    # for; off unless the caller gives it a size.
    cache_ram_mib: int = 0
    # The template llama.cpp renders tool requests with: a manifest's override, written
    # to a file; None: the GGUF's own (with its "tool_use" variant, when it has one).
    chat_template_file: Path | None = None
    # llama.cpp could not parse the template: start with its built-in ChatML (which has
    # no tools). Locara renders every other prompt itself, so nothing else changes.
    chatml_fallback: bool = False
    rpc: tuple[str, ...] = ()  # llama.cpp RPC workers that take the offloaded layers
    mmproj: Path | None = None  # a vision projector: images in chat messages
    # LoRA adapters loaded at scale 0 (--lora-init-without-apply): a request names its
    # own stack by index, as llama-server's per-request "lora" list does.
    lora: tuple[Path, ...] = ()
    # Embeddings from the same loaded model (mean-pooled, as in process): one copy of a
    # chat model serves both. llama-server computes an input in one micro-batch, so the
    # micro-batch is the batch (its default, 512, is the plan's) and caps an input.
    embeddings: bool = False

    def argv(self, binary: Path, socket_path: Path) -> list[str]:
        """The command line; the API key travels in the environment, out of ``ps``."""
        total = self.n_ctx * self.n_parallel
        batch = min(self.n_batch, total)
        # A quantized V cache needs flash attention (as in process); "auto" would be a
        # decision made outside the plan, so it is always on or off.
        fa = self.flash_attn or self.kv_type != "f16"

        return [
            str(binary),
            "--model", str(self.model_path),
            "--alias", self.alias,
            # A Unix socket in a directory only this user can enter: no TCP port that
            # another local user could reach, and a cheaper hop per streamed token than
            # loopback TCP (the worker writes one event per token per request).
            "--host", str(socket_path),
            "--threads", str(self.n_threads),
            "--threads-batch", str(self.n_threads_batch),
            "--parallel", str(self.n_parallel),
            "--ctx-size", str(total),
            "--no-kv-unified",  # each slot owns n_ctx: the per-request limit Locara checks
            "--n-gpu-layers", str(self.n_gpu_layers),
            "--flash-attn", "on" if fa else "off",
            "--cache-type-k", self.kv_type,
            "--cache-type-v", self.kv_type,
            "--batch-size", str(batch),
            "--cache-ram", str(self.cache_ram_mib),
            "--fit", "off",  # never shrink the context or offload on its own
            "--metrics",
            "--no-webui",
            "--jinja",  # the model's own template, so llama.cpp can parse its tool calls
        ] + (
            ["--embeddings", "--pooling", "mean", "--ubatch-size", str(batch)]
            if self.embeddings else []
        ) + (["--rpc", ",".join(self.rpc)] if self.rpc else []) + [
            a for path in self.lora for a in ("--lora", str(path))
        ] + (["--lora-init-without-apply"] if self.lora else []) + (
            ["--mmproj", str(self.mmproj)]
            + (["--no-mmproj-offload"] if self.n_gpu_layers == 0 else [])
            if self.mmproj else []
        ) + (
            ["--chat-template", "chatml"] if self.chatml_fallback
            else ["--chat-template-file", str(self.chat_template_file)] if self.chat_template_file
            else []
        )  # fmt: skip


# Linux's parent-death signal goes to a child when the *thread* that started it ends, so
# every worker is started from this one long-lived thread: a worker then ends with the
# Locara process, even one killed with SIGKILL, instead of holding its memory forever.
_spawner = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="locara-spawner")
_SETPRIV = shutil.which("setpriv") if sys.platform == "linux" else None


def _spawn(argv: list[str], log: IO[bytes], env: dict[str, str]) -> subprocess.Popen[bytes]:
    if _SETPRIV is not None:
        argv = [_SETPRIV, "--pdeathsig", "TERM", "--", *argv]

    def start() -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            # Its own session: Ctrl-C in a terminal reaches Locara, which decides (an
            # interactive chat keeps its worker for the next turn).
            start_new_session=True,
        )

    return _spawner.submit(start).result()


def _stop_process(proc: subprocess.Popen[bytes], timeout_s: float, socket_dir: Path) -> None:
    try:
        if proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                proc.kill()
            proc.wait()
    finally:
        shutil.rmtree(socket_dir, ignore_errors=True)


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "still running"
    if code < 0:
        try:
            return f"killed by {signal.Signals(-code).name}"
        except ValueError:
            return f"killed by signal {-code}"
    return f"exit code {code}"


class LlamaServerWorker:
    """One supervised ``llama-server`` process; thread-safe.

    ``start()`` spawns it on a private Unix socket and waits until it serves;
    ``ensure_running()`` starts it again if it died; ``stop()`` ends it (SIGTERM, then
    SIGKILL after ``stop_timeout_s``). Its output goes to ``log_path`` (appended over
    restarts). A worker still running when the interpreter exits is stopped then.
    """

    def __init__(
        self,
        binary: WorkerBinary,
        config: WorkerConfig,
        *,
        log_path: Path | None = None,
        start_timeout_s: float = 300.0,
        stop_timeout_s: float = 10.0,
    ) -> None:
        self.binary = binary
        self.config = config
        if log_path is None:
            fd, name = tempfile.mkstemp(
                prefix=f"locara-llama-server-{config.alias}-", suffix=".log"
            )
            os.close(fd)
            log_path = Path(name)
        self.log_path = log_path
        self.start_timeout_s = start_timeout_s
        self.stop_timeout_s = stop_timeout_s
        self.state = WorkerState.STOPPED
        self.starts = 0
        self.api_key = ""
        self.socket_path: Path | None = None
        self._socket_dir: Path | None = None
        self._proc: subprocess.Popen[bytes] | None = None
        self._client: httpx.Client | None = None
        self._lock = threading.RLock()
        self._finalizer: weakref.finalize[Any, Any] | None = None

    # -- state -----------------------------------------------------------------------
    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def alive(self) -> bool:
        """Whether the process is running (checked now, not remembered)."""
        proc = self._proc
        if proc is None or proc.poll() is not None:
            if self.state is WorkerState.READY:
                self.state = WorkerState.DEAD
            return False
        return True

    def wait_exit(self, timeout_s: float) -> bool:
        """Whether the process exits within ``timeout_s`` (a broken stream often means it
        is dying: the kernel closes its sockets before its exit status is visible)."""
        proc = self._proc
        if proc is None:
            return True
        try:
            proc.wait(timeout_s)
        except subprocess.TimeoutExpired:
            return False
        return not self.alive

    def exit_description(self) -> str:
        proc = self._proc
        return _describe_exit(proc.poll() if proc is not None else None)

    @property
    def client(self) -> httpx.Client:
        """The HTTP client for this worker's current process (authenticated)."""
        if self._client is None:
            raise BackendError("the llama-server worker is not running", "load the model again")
        return self._client

    def log_tail(self, lines: int = 5) -> str:
        """The last ``lines`` non-empty lines of the worker's log, joined with " | "."""
        try:
            with self.log_path.open("rb") as f:
                f.seek(max(0, f.seek(0, os.SEEK_END) - _LOG_TAIL_BYTES))
                text = f.read().decode("utf-8", "replace")
        except OSError:
            return ""
        kept = [x.strip() for x in text.splitlines() if x.strip()]
        return " | ".join(kept[-lines:])

    # -- lifecycle -------------------------------------------------------------------
    def start(self) -> None:
        """Spawn the worker and wait until it serves; BackendError (with its log) if not."""
        with self._lock:
            if self.alive:
                return
            try:
                self._spawn_and_wait()
            except _TemplateRefused:  # raised once at most: ChatML always parses
                log.warning(
                    "llama.cpp cannot parse the chat template of %s; its worker runs with "
                    "ChatML instead (no tools); log: %s", self.config.alias, self.log_path,
                )  # fmt: skip
                self.config = replace(self.config, chatml_fallback=True)
                self._spawn_and_wait()

    def _spawn_and_wait(self) -> None:
        self._discard()
        self.state = WorkerState.STARTING
        self.starts += 1
        self.api_key = secrets.token_urlsafe(24)
        # A new private directory per process (mode 0700; a short path under the temp
        # directory: socket paths are limited to ~100 bytes). Removed with the process.
        self._socket_dir = Path(tempfile.mkdtemp(prefix="locara-w-"))
        self.socket_path = self._socket_dir / "worker.sock"
        argv = self.config.argv(self.binary.path, self.socket_path)
        env = worker_environment(self.binary)
        env["LLAMA_API_KEY"] = self.api_key
        with self.log_path.open("ab") as logf:
            logf.write(f"--- locara: start {self.starts}: {' '.join(argv)}\n".encode())
            logf.flush()
            self._proc = _spawn(argv, logf, env)
        proc = self._proc
        self._finalizer = weakref.finalize(
            self, _stop_process, proc, self.stop_timeout_s, self._socket_dir
        )
        self._client = httpx.Client(
            transport=httpx.HTTPTransport(uds=str(self.socket_path)),
            base_url="http://llama-server",
            headers={"Authorization": f"Bearer {self.api_key}"},
            timeout=httpx.Timeout(connect=10.0, read=None, write=60.0, pool=None),
            # No keep-alive: llama-server sometimes closes a connection after a
            # streamed answer although it announced keep-alive, and the next request
            # on it fails. A new Unix-socket connection per request costs microseconds.
            limits=httpx.Limits(max_connections=None, max_keepalive_connections=0),
        )
        try:
            self._wait_ready(proc)
        except BaseException:
            self._discard()
            self.state = WorkerState.DEAD
            raise
        self.state = WorkerState.READY
        log.info(
            "llama-server for %s ready: pid %d, %s", self.config.alias, proc.pid, self.socket_path
        )

    def _wait_ready(self, proc: subprocess.Popen[bytes]) -> None:
        # /slots, not /health: it needs this worker's key, so whatever else might answer
        # on the port cannot pass, and it answers 503 until the model is loaded.
        deadline = time.monotonic() + self.start_timeout_s
        client = self.client
        while True:
            code = proc.poll()
            if code is not None:
                tail = self.log_tail()
                said = self.log_tail(40)
                if not self.config.chatml_fallback and any(e in said for e in _TEMPLATE_ERRORS):
                    raise _TemplateRefused
                raise BackendError(
                    f"llama-server for {self.config.alias} stopped while starting "
                    f"({_describe_exit(code)}): {tail}",
                    f"see its log: {self.log_path}",
                )
            with contextlib.suppress(httpx.TransportError):
                if client.get("/slots", timeout=5.0).status_code == 200:
                    return
            if time.monotonic() > deadline:
                raise BackendError(
                    f"llama-server for {self.config.alias} did not become ready within "
                    f"{self.start_timeout_s:.0f} s: {self.log_tail()}",
                    f"see its log: {self.log_path}",
                )
            time.sleep(_READY_POLL_S)

    def ensure_running(self) -> None:
        """Start the worker again if it died (or was never started)."""
        if self.alive:
            return
        with self._lock:
            if not self.alive:
                if self._proc is not None:
                    log.warning(
                        "llama-server for %s (pid %s) %s; starting a new one; log: %s",
                        self.config.alias, self.pid, self.exit_description(), self.log_path,
                    )  # fmt: skip
                self.start()

    def _discard(self) -> None:
        if self._client is not None:
            self._client.close()
            self._client = None
        if self._finalizer is not None:
            self._finalizer()  # stops the process if it still runs
            self._finalizer = None

    def template_caps(self) -> dict[str, bool]:
        """What llama.cpp found its chat template can render (``/props``): tools, tool
        calls, system role, ... Empty when the worker does not say."""
        try:
            caps = self.client.get("/props", timeout=10.0).json().get("chat_template_caps")
        except (httpx.HTTPError, ValueError, AttributeError):
            return {}
        return {str(k): bool(v) for k, v in caps.items()} if isinstance(caps, dict) else {}

    def stop(self) -> None:
        """Stop the worker: SIGTERM, then SIGKILL if it has not exited in time."""
        with self._lock:
            self._discard()
            self.state = WorkerState.STOPPED


class _Vocab:
    """The GGUF's tokenizer alone: llama.cpp loads the vocabulary without any weights.

    Read-only after loading, so threads share it; using it after ``close()`` raises
    instead of touching freed memory.
    """

    def __init__(self, path: Path) -> None:
        import llama_cpp
        from llama_cpp._internals import LlamaModel

        params = llama_cpp.llama_model_default_params()
        params.vocab_only = True
        try:
            self._model: Any = LlamaModel(path_model=str(path), params=params, verbose=False)
        except (ValueError, RuntimeError, OSError) as exc:
            raise ModelFormatError(
                f"llama.cpp could not read the vocabulary of {path}: {exc}",
                "check the file with: locara cache verify --deep",
            ) from exc
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self.facts = vocab_facts(self._model)

    @property
    def _live(self) -> Any:
        if self._model is None:
            raise BackendError("the model was unloaded", "load the model again")
        return self._model

    def tokenize(self, text: str, *, add_bos: bool = False, special: bool = True) -> list[int]:
        return list(self._live.tokenize(text.encode("utf-8"), add_bos=add_bos, special=special))

    def is_eog(self, tok: int) -> bool:
        return bool(self._is_eog(self._live.vocab, tok))

    def close(self) -> None:
        model, self._model = self._model, None
        if model is not None:
            model.close()


class LlamaServerBackend:
    """Loads GGUF files into a supervised llama-server worker."""

    name: ClassVar[str] = "llama_server"
    formats: ClassVar[frozenset[str]] = frozenset({"gguf"})

    def __init__(self, log_dir: Path | None = None) -> None:
        self.log_dir = log_dir  # None: a temporary file per worker

    def available(self) -> Availability:
        try:
            locate_llama_server()
        except BackendUnavailableError as exc:
            return Availability(False, exc.message)
        return Availability(True)

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> LlamaServerModel:
        """Start a worker for the GGUF at ``path``; returns once it serves requests.

        Everything it runs with comes from ``opts`` (the plan): ``n_parallel`` slots of
        ``n_ctx`` tokens each, threads, GPU layers, KV type, flash attention, batch.
        """
        from locara.backends.llama_cpp import physical_cores
        from locara.device.gguf_meta import read_gguf

        info = read_gguf(path)  # not-GGUF and truncated files fail here, cleanly
        if opts.embedding:
            raise UnsupportedFeatureError(
                "the llama-server backend does not serve embeddings yet",
                "load embedding models with the llama_cpp backend",
            )
        trained = info.context_length
        if trained and opts.n_ctx > trained:
            raise ModelFormatError(
                f"context {opts.n_ctx} is larger than {manifest.id}'s trained context {trained}",
                f"pass --ctx {trained} or less",
            )
        binary = locate_llama_server()
        log_path = None
        if self.log_dir is not None:
            self.log_dir.mkdir(parents=True, exist_ok=True)
            log_path = self.log_dir / f"llama-server-{manifest.id}.log"
        template_file = None
        if manifest.config.chat_template:
            template_file = _write_template(manifest.config.chat_template, log_path, manifest.id)
        config = WorkerConfig(
            model_path=path,
            alias=manifest.id,
            n_ctx=opts.n_ctx,
            n_parallel=opts.n_parallel,
            n_threads=opts.n_threads or physical_cores(),
            n_threads_batch=opts.n_threads_batch or opts.n_threads or physical_cores(),
            n_gpu_layers=opts.n_gpu_layers,
            flash_attn=opts.flash_attn,
            kv_type=opts.kv_type,
            n_batch=opts.n_batch,
            chat_template_file=template_file,
            rpc=opts.rpc_servers,
            mmproj=_projector(path, manifest),
            lora=tuple(a.path for a in opts.lora),
            # Every worker can embed too: a chat model asked for embeddings is not loaded
            # a second time (scripts/patches: an embedding waits one batch, not for every
            # generation on the worker to end).
            embeddings=True,
        )
        template = manifest.config.chat_template or info.chat_template
        return LlamaServerModel(
            LlamaServerWorker(binary, config, log_path=log_path),
            manifest,
            template,
            lora_ids={a.sha256: i for i, a in enumerate(opts.lora)},
        )


def _projector(path: Path, manifest: ModelManifest) -> Path | None:
    """The vision projector stored beside the model file ``path``, if its artifact has one
    (a multi-file artifact's files sit side by side, under their own names)."""
    for _, art in manifest.all_artifacts():
        primary = art.primary_file
        if primary is None or primary.name != path.name:
            continue
        for f in art.files or ():
            if f.role == "mmproj" and (path.parent / f.name).is_file():
                return path.parent / f.name
    return None


def _write_template(source: str, log_path: Path | None, model_id: str) -> Path:
    """The manifest's chat template in a file beside the worker's log (llama-server reads
    it from a file); written to a unique temporary name, then renamed into place."""
    if log_path is None:
        fd, name = tempfile.mkstemp(prefix=f"locara-template-{model_id}-", suffix=".jinja")
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(source)
        return Path(name)
    target = log_path.with_suffix(".jinja")
    fd, name = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(source)
        os.replace(name, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(name)
        raise
    return target


class LlamaServerModel:
    """A GGUF served by a llama-server worker; ``generate`` may be called from many threads.

    Requests beyond ``n_parallel`` wait inside llama-server for a free slot.
    """

    def __init__(
        self,
        worker: LlamaServerWorker,
        manifest: ModelManifest,
        template: str | None,
        *,
        lora_ids: dict[str, int] | None = None,
        start: bool = True,
    ) -> None:
        self.worker = worker
        self._lora_ids = lora_ids or {}  # adapter digest -> its index in the worker
        self.manifest = manifest
        self.template = template
        self.n_ctx: int = worker.config.n_ctx
        self.n_parallel = worker.config.n_parallel
        embeddings = worker.config.embeddings
        self.embed_ctx = 0
        self.capabilities = Capabilities(
            chat=template is not None,
            completion=True,
            embed=embeddings,
            json_schema=True,
            tools=False,
            logprobs=True,
            lora=True,
            vision=worker.config.mmproj is not None,
        )
        self._closed = False
        self._embed_lock = threading.Lock()
        self._vocab = _Vocab(worker.config.model_path)
        try:
            # llama-server stops at end-of-generation tokens itself (and still sends its
            # final event); only other single-token stop words are watched for here.
            stop_ids = [self._vocab.tokenize(w) for w in manifest.config.stop_tokens]
            self._stop_ids = {
                t[0] for t in stop_ids if len(t) == 1 and not self._vocab.is_eog(t[0])
            }
            if embeddings:
                # The worker adds the BOS token to an input; count_tokens does not count it.
                bos = 1 if self._vocab.facts.add_bos else 0
                self.embed_ctx = min(worker.config.n_batch, self.n_ctx) - bos
            if start:
                worker.start()
                self.capabilities = replace(self.capabilities, **self._tool_support())
        except BaseException:
            self._vocab.close()
            raise

    def _tool_support(self) -> dict[str, Any]:
        """Tools work when llama.cpp says the template renders both the tools and the
        calls; otherwise why not, for the refusal a client sees."""
        fix = (
            "omit tools, or use a model whose chat template renders them "
            "(a manifest's config.chat_template can supply one)"
        )
        if self.template is None:
            return {"no_tools": (f"{self.manifest.id} has no chat template", fix)}
        if self.worker.config.chatml_fallback:
            why = f"llama.cpp cannot parse {self.manifest.id}'s chat template"
            return {"no_tools": (why, f"see the worker's log: {self.worker.log_path}")}
        caps = self.worker.template_caps()
        if caps.get("supports_tools") and caps.get("supports_tool_calls"):
            return {"tools": True}
        return {"no_tools": (f"{self.manifest.id}'s chat template has no tools", fix)}

    # -- tokens --------------------------------------------------------------------
    def tokenize(self, text: str, special: bool = True) -> list[int]:
        return self._vocab.tokenize(text, special=special)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` as a raw prompt; refused untokenized when it cannot fit."""
        self._vocab.facts.check_size(text, self.n_ctx)
        return len(self.tokenize(text))

    def render_prompt(self, req: GenerationRequest) -> str:
        f = self._vocab.facts
        return request_prompt(req, self.template, self.manifest.id, f.bos_text, f.eos_text)

    def prompt_tokens(self, req: GenerationRequest) -> list[int]:
        """The prompt as token ids, built exactly as the in-process backend builds it."""
        v = self._vocab
        return prompt_tokens(v._live, v.facts, req, self.template, self.manifest.id, self.n_ctx)

    # -- generation ----------------------------------------------------------------
    def generate(self, req: GenerationRequest) -> Iterator[Chunk]:
        """Stream the answer; the last chunk has the finish reason, usage and timings.

        Closing the iterator closes the HTTP stream: llama-server then cancels the task
        and frees its slot.
        """
        if self._closed:
            raise BackendError(f"{self.manifest.id} was unloaded", "load the model again")
        req.validate()
        if req.json_schema is not None:
            check_schema(req.json_schema)  # the same bounds as in process (grammar cost)
        if self._on_chat_path(req):
            yield from self._stream_chat(req)
            return
        tokens = self.prompt_tokens(req)
        n_prompt = len(tokens)
        if not tokens:
            raise UsageError("the prompt is empty", "send a non-empty prompt")
        if n_prompt >= self.n_ctx:
            raise ContextOverflowError(n_prompt, req.max_tokens or 0, self.n_ctx)
        budget = req.max_tokens if req.max_tokens is not None else self.n_ctx - n_prompt
        if n_prompt + budget > self.n_ctx:
            raise ContextOverflowError(n_prompt, budget, self.n_ctx)
        yield from self._stream(req, tokens, budget)

    def _body(self, req: GenerationRequest, tokens: list[int], budget: int) -> dict[str, Any]:
        s = req.sampling
        body: dict[str, Any] = {
            "prompt": tokens,
            "n_predict": budget,
            "stream": True,
            # A seed asks for the same answer request after request: the prefix cache would
            # evaluate the prompt's tail in another batch shape than the first time, and
            # llama.cpp's numerics differ with batch shape. So a seeded request evaluates its
            # whole prompt (costs prompt time; see Sampling.reproducible).
            "cache_prompt": not s.reproducible,
            "return_tokens": True,
            # An event per batch of prompt work: a request whose client went away is seen
            # (and its stream closed) within a batch, not after the whole prompt.
            "return_progress": True,
            **sampling_fields(s),
            # The StopScanner below decides what is emitted; the worker also stops on
            # them so the slot is freed at once rather than when the stream is closed.
            "stop": [x for x in req.stop if x],
        }
        if req.json_schema is not None:
            body["json_schema"] = req.json_schema
        if self._lora_ids:
            body["lora"] = self._lora(req)
        if req.logprobs is not None:
            # n_probs 0 would return no probabilities at all, not even the chosen token's.
            body["n_probs"] = max(req.logprobs, 1)
        return body

    def _stream(self, req: GenerationRequest, tokens: list[int], budget: int) -> Iterator[Chunk]:
        self.worker.ensure_running()
        worker = self.worker
        client = worker.client
        pid = worker.pid
        scanner = StopScanner(req.stop)
        started = time.perf_counter()
        first_at: float | None = None
        n_out = 0
        finish: FinishReason = "length"
        final: dict[str, Any] | None = None
        try:
            with client.stream("POST", "/completion", json=self._body(req, tokens, budget)) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise self._refusal(resp, req)
                for line in resp.iter_lines():
                    if not line.startswith("data:"):
                        continue  # blank separators and ":" pings
                    if req.cancelled is not None and req.cancelled() and first_at is None:
                        # Gone during the prompt: leaving the stream closes it and the
                        # worker frees the slot (after the first token, the reader stops).
                        yield cancelled_chunk(len(tokens), 0, time.perf_counter() - started)
                        return
                    event = json.loads(line[5:])
                    if "prompt_progress" in event:
                        continue  # a batch of prompt work done (its "tokens" are not tokens)
                    if "error" in event:
                        raise self._event_error(event["error"], req)
                    now = time.perf_counter()
                    ids = [int(t) for t in event.get("tokens") or ()]
                    if ids and first_at is None:
                        first_at = now
                    if any(t in self._stop_ids for t in ids):
                        finish = "stop"  # a manifest stop token llama.cpp does not call EOG
                        break
                    n_new = sum(1 for t in ids if not self._vocab.is_eog(t))
                    n_out += n_new
                    emit, hit = scanner.feed(event.get("content") or "")
                    # The end-of-generation token arrives as an event of its own; in
                    # process it is never counted nor given a logprob.
                    lps = self._logprobs(event, req.logprobs) if n_new else ()
                    if emit or (lps and not hit):
                        yield Chunk(emit, n_out, len(tokens), logprobs=lps)
                    if hit:
                        finish = "stop"
                        break
                    if event.get("stop"):
                        final = event
                        finish = "length" if event.get("stop_type") == "limit" else "stop"
                        break
                else:
                    raise self._broken(pid, None)
        except httpx.HTTPError as exc:
            raise self._broken(pid, exc) from exc
        except json.JSONDecodeError as exc:
            raise BackendError(
                f"llama-server sent a malformed event: {exc}", f"see its log: {worker.log_path}"
            ) from exc
        tail = scanner.flush() if finish != "stop" else ""
        end = time.perf_counter()
        first_at = first_at or end
        timings = (final or {}).get("timings") or {}
        usage = Usage(len(tokens), n_out, int(timings.get("cache_n", 0)))
        # Prompt and generation time as the worker measured them (no HTTP, no queueing);
        # time to first token as the caller lived it (queueing for a slot included).
        prompt_s = (
            float(timings["prompt_ms"]) / 1000 if "prompt_ms" in timings else first_at - started
        )
        gen_s = (
            float(timings["predicted_ms"]) / 1000 if "predicted_ms" in timings else end - first_at
        )
        yield Chunk(
            tail, n_out, len(tokens), finish, usage,
            Timings(prompt_s=prompt_s, generation_s=gen_s, ttft_s=first_at - started),
        )  # fmt: skip

    def _lora(self, req: GenerationRequest) -> list[dict[str, Any]]:
        """Every loaded adapter's scale for this request: the request's stack, 0 for the
        rest. Always the whole list: llama-server applies a loaded adapter at scale 1 to a
        request that names none (--lora-init-without-apply notwithstanding, measured).
        llama.cpp drops a slot's cached prefix when the list changes."""
        scales = dict.fromkeys(self._lora_ids.values(), 0.0)
        for a in req.adapters:
            index = self._lora_ids.get(a.sha256)
            if index is None:
                raise UsageError(
                    f"adapter {a.id} was added after {self.manifest.id} was loaded",
                    "unload the model (keep_alive 0, or locara stop) and ask again: "
                    "a worker loads every adapter of its base when it starts",
                )
            scales[index] = a.scale
        return [{"id": i, "scale": s} for i, s in sorted(scales.items())]

    def _on_chat_path(self, req: GenerationRequest) -> bool:
        """Tools offered, earlier calls this model's template can render, or images:
        llama.cpp's chat route. (Without tool support, earlier calls are seen as their
        texts only.) Images go there as image_url parts: llama.cpp's projector turns
        them into tokens, which Locara cannot count or render itself."""
        return (
            bool(req.tools)
            or (req.uses_tools and self.capabilities.tools)
            or any(m.images for m in req.messages)
        )

    def _stream_chat(self, req: GenerationRequest) -> Iterator[Chunk]:
        """A request with tools: llama.cpp renders, constrains and parses the calls
        (see ``worker_tools``); the chunks are Locara's as on ``/completion``."""
        if req.tools and not self.capabilities.tools:
            raise UnsupportedFeatureError(*self.capabilities.no_tools)
        if any(m.images for m in req.messages) and not self.capabilities.vision:
            raise UnsupportedFeatureError(
                f"{self.manifest.id} was loaded without a vision projector",
                "send text only, or use a model whose artifact has an mmproj file",
            )
        if req.logprobs is not None:
            raise UsageError(
                "logprobs are not available with tool calls or images", "omit logprobs"
            )
        for tool in req.tools:
            check_schema(tool.parameters)  # its grammar costs what a response format's does
        facts = self._vocab.facts
        check_request_text(
            req, facts.specials, self.manifest.id, lambda t: facts.check_size(t, self.n_ctx)
        )
        self.worker.ensure_running()
        worker = self.worker
        pid = worker.pid
        body = chat_body(req, self.manifest.config.stop_tokens)
        if self._lora_ids:
            body["lora"] = self._lora(req)
        started = time.perf_counter()
        try:
            with worker.client.stream("POST", "/v1/chat/completions", json=body) as resp:
                if resp.status_code != 200:
                    resp.read()
                    raise self._refusal(resp, req)
                yield from chat_chunks(
                    sse_events(resp.iter_lines()),
                    req,
                    started,
                    on_error=lambda err: self._event_error(err, req),
                    on_broken=lambda: self._broken(pid, None),
                )
        except httpx.HTTPError as exc:
            raise self._broken(pid, exc) from exc
        except json.JSONDecodeError as exc:
            raise BackendError(
                f"llama-server sent a malformed event: {exc}", f"see its log: {worker.log_path}"
            ) from exc

    @staticmethod
    def _logprobs(event: dict[str, Any], top: int | None) -> tuple[TokenLogprob, ...]:
        if top is None:
            return ()

        def text(p: dict[str, Any]) -> str:
            # The raw bytes, decoded as in process (a token may hold part of a character).
            raw = p.get("bytes")
            return bytes(raw).decode("utf-8", "replace") if raw is not None else str(p["token"])

        out = []
        for p in event.get("completion_probabilities") or ():
            alts = tuple((text(a), float(a["logprob"])) for a in p.get("top_logprobs", ())[:top])
            out.append(TokenLogprob(text(p), float(p["logprob"]), alts))
        return tuple(out)

    def _refusal(self, resp: httpx.Response, req: GenerationRequest) -> Exception:
        try:
            err = resp.json().get("error", {})
            message = str(err.get("message", "")) or resp.text
        except (ValueError, AttributeError):
            err, message = {}, resp.text
        message = " ".join(message.split())[:300]
        if "json_schema" in message:
            # "Field 'json_schema': ... conversion failed: JSON schema error at #: ..."
            reason = message.rpartition("conversion failed:")[2].strip() or message
            return UnsupportedFeatureError(
                f"this JSON schema cannot be compiled to a grammar: {reason}",
                "simplify the schema (objects, arrays, strings, numbers, enums)",
            )
        if req.json_schema is not None and resp.status_code == 400 and "grammar" in message:
            # "Failed to initialize samplers: failed to parse grammar" (e.g. a pattern
            # like ^(|a)*$): refused like the in-process backend refuses it.
            return refuse("$", f"llama.cpp cannot build a grammar from it ({message})")
        if err.get("type") == "exceed_context_size_error":
            return UsageError(message, "shorten the prompt, lower --max-tokens, or raise --ctx")
        if resp.status_code == 400 and self._on_chat_path(req):
            # The chat path's input (messages, tools) as llama.cpp's template saw it.
            return UsageError(
                f"llama.cpp refused the request: {message}", "check the messages and tools"
            )
        return BackendError(
            f"llama-server refused the request (HTTP {resp.status_code}): {message}",
            f"see its log: {self.worker.log_path}",
        )

    def _event_error(self, err: Any, req: GenerationRequest) -> Exception:
        message = err.get("message", err) if isinstance(err, dict) else err
        message = " ".join(str(message).split())[:300]
        if req.json_schema is not None and "grammar" in message:
            # e.g. {"type": "integer", "minimum": 5, "maximum": 3}: a grammar that no
            # text satisfies fails at the first token. The worker itself is fine.
            return UnsupportedFeatureError(
                f"this JSON schema cannot be satisfied: {message}",
                "check the schema's bounds and required properties",
            )
        return BackendError(
            f"llama-server failed while generating: {message}",
            f"retry; if it persists see its log: {self.worker.log_path}",
        )

    def _broken(self, pid: int | None, exc: Exception | None) -> BackendError:
        worker = self.worker
        # Another request may have restarted it already (then the pid differs).
        if worker.pid != pid or worker.wait_exit(_DEATH_GRACE_S):
            return BackendError(
                f"the llama-server worker (pid {pid}) died while generating "
                f"({worker.exit_description()}); the next request starts a new one",
                f"retry; its log: {worker.log_path}",
            )
        cause = f": {exc}" if exc is not None else " (the stream ended without a final event)"
        return BackendError(
            f"the connection to llama-server broke while generating{cause}",
            f"retry; its log: {worker.log_path}",
        )

    # -- the rest of the protocol --------------------------------------------------
    def embed(self, texts: list[str]) -> list[list[float]]:
        """Mean-pooled, L2-normalised vectors, as the in-process backend computes them;
        inputs of at most ``embed_ctx`` tokens (the caller fits them).

        One input at a time: with a KV cache per slot (``--no-kv-unified``) llama.cpp
        pools wrongly when inputs of different lengths share a batch (cosine 0.91 to the
        input's own vector, measured), so no two inputs ever do.
        """
        if self._closed:
            raise BackendError(f"{self.manifest.id} was unloaded", "load the model again")
        if not self.capabilities.embed:
            raise UnsupportedFeatureError(
                f"{self.manifest.id}'s worker was started without embeddings",
                "load it again (every new worker serves them)",
            )
        with self._embed_lock:
            return [self._embed_one(t) for t in texts]

    def _embed_one(self, text: str) -> list[float]:
        self.worker.ensure_running()
        pid = self.worker.pid
        try:
            resp = self.worker.client.post("/v1/embeddings", json={"input": text})
        except httpx.HTTPError as exc:
            raise self._broken(pid, exc) from exc
        if resp.status_code != 200:
            raise BackendError(
                f"llama-server refused the embedding (HTTP {resp.status_code}): "
                + " ".join(resp.text.split())[:300],
                f"see its log: {self.worker.log_path}",
            )
        try:
            (item,) = resp.json()["data"]
            return [float(x) for x in item["embedding"]]
        except (ValueError, KeyError, TypeError) as exc:
            raise BackendError(
                f"llama-server sent a malformed embedding: {exc}",
                f"see its log: {self.worker.log_path}",
            ) from exc

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        try:
            self.worker.stop()
        finally:
            self._vocab.close()
