"""The models a server keeps loaded: load on demand, keep alive, evict LRU, bound each queue.

A ``ModelPool`` owns every loaded model. ``acquire()`` hands out a ``Lease`` (the
model plus a slot in its queue); ``Lease.release()`` gives the slot back and starts
the keep-alive clock. ``sweep()`` unloads models whose keep-alive ran out, and loading
a new model first evicts idle models, least recently used first, until the estimated
memory of everything loaded stays inside the budget.

A loaded model is one llama.cpp context: requests to it run one at a time (the
backend serialises them), requests to different models run in parallel. Its queue
is bounded: beyond ``queue_depth`` waiting requests, ``acquire()`` raises
``ServerBusyError`` at once instead of letting clients pile up.

All methods are thread-safe and blocking (loading takes seconds); the server calls
them from worker threads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field

from locara.backends.base import LoadOptions
from locara.engine.loader import ModelHandle, ResolvedModel, load, resolve
from locara.errors import LocaraError, NoFitError, ServerBusyError, UsageError
from locara.settings import Settings

log = logging.getLogger("locara.engine")

MIN_CTX = 16
FOREVER = math.inf
MAX_KEEP_ALIVE_S = 365 * 86400.0


@dataclass(frozen=True)
class PoolConfig:
    """How long models stay loaded, how many requests may wait, how much memory to use."""

    keep_alive_s: float = 300.0  # Ollama's default; < 0 means forever
    queue_depth: int = 16  # requests waiting per model behind the running one
    budget_bytes: int | None = None  # None: 75 % of available RAM when first needed
    default_ctx: int = 4096
    retry_after_s: int = 2


@dataclass(frozen=True)
class LoadedInfo:
    """What ``/api/ps``, ``/metrics`` and ``locara status`` show about one loaded model."""

    model_id: str
    sha256: str
    quant: str | None
    backend: str
    embedding: bool
    n_ctx: int
    size_bytes: int
    estimated_bytes: int
    in_flight: int
    requests: int
    loaded_at: float  # wall clock
    expires_at: float | None  # wall clock; None while in use or kept forever


@dataclass
class _Entry:
    key: tuple[str, bool]
    handle: ModelHandle
    n_ctx: int
    estimated_bytes: int
    loaded_at: float
    last_used: float
    keep_alive_s: float
    in_flight: int = 0
    requests: int = 0
    expires_at: float | None = None  # monotonic

    def info(self) -> LoadedInfo:
        res = self.handle.resolved
        expires: float | None = None
        if self.in_flight == 0 and self.expires_at is not None and math.isfinite(self.expires_at):
            expires = time.time() + (self.expires_at - time.monotonic())
        return LoadedInfo(
            model_id=res.manifest.id,
            sha256=res.blob.sha256,
            quant=res.artifact.quant,
            backend=self.handle.backend,
            embedding=self.key[1],
            n_ctx=self.n_ctx,
            size_bytes=res.blob.size_bytes,
            estimated_bytes=self.estimated_bytes,
            in_flight=self.in_flight,
            requests=self.requests,
            loaded_at=self.loaded_at,
            expires_at=expires,
        )


@dataclass
class Lease:
    """One request's hold on a loaded model; release it exactly once."""

    pool: ModelPool
    entry: _Entry
    keep_alive_s: float | None
    load_s: float = 0.0  # time this request spent loading the model (0 when it was loaded)
    reload_reason: str | None = None
    _released: bool = field(default=False, repr=False)

    @property
    def handle(self) -> ModelHandle:
        return self.entry.handle

    def release(self) -> None:
        if not self._released:
            self._released = True
            self.pool._release(self.entry, self.keep_alive_s)


class ModelPool:
    """Loaded models keyed by (blob SHA-256, embedding mode)."""

    def __init__(self, settings: Settings, config: PoolConfig | None = None) -> None:
        self.settings = settings
        self.config = config or PoolConfig()
        self._lock = threading.Lock()
        self._entries: dict[tuple[str, bool], _Entry] = {}
        self._loading: dict[tuple[str, bool], threading.Lock] = {}
        self._budget: int | None = self.config.budget_bytes
        self.loads = 0
        self.reloads = 0
        self.evictions = 0

    # -- public face -----------------------------------------------------------------
    def acquire(
        self,
        reference: str | None,
        *,
        n_ctx: int | None = None,
        embedding: bool = False,
        keep_alive_s: float | None = None,
    ) -> Lease:
        """A lease on ``reference`` loaded with at least ``n_ctx`` context, loading it if needed.

        Raises ServerBusyError when the model's queue is full, UsageError for a context
        the model cannot have, NoFitError when it cannot fit the memory budget.
        """
        resolved = resolve(self.settings, reference)
        trained = resolved.manifest.context_length
        if n_ctx is not None and not MIN_CTX <= n_ctx <= trained:
            raise UsageError(
                f"invalid context size {n_ctx}: {resolved.manifest.id} supports "
                f"{MIN_CTX}..{trained} tokens",
                f"pass num_ctx between {MIN_CTX} and {trained}",
            )
        # Two manifests may name one blob with different chat templates and stop tokens,
        # which the loaded model carries: each manifest gets its own loaded copy.
        key = (f"{resolved.manifest.id}@{resolved.blob.sha256}", embedding)
        with self._lock:
            lease = self._try_lease(key, n_ctx, keep_alive_s)
            if lease is not None:
                return lease
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one load per model at a time; others wait for it, then reuse it
            with self._lock:
                lease = self._try_lease(key, n_ctx, keep_alive_s)
                if lease is not None:
                    return lease
                old = self._entries.get(key)
                reason = None
                if old is not None:
                    if old.in_flight:
                        raise ServerBusyError(
                            f"{resolved.manifest.id} is loaded with context {old.n_ctx} and busy; "
                            f"reloading it with context {n_ctx} must wait",
                            self.config.retry_after_s,
                        )
                    reason = (
                        f"reloading {resolved.manifest.id}: loaded context {old.n_ctx} is "
                        f"smaller than the requested {n_ctx}"
                    )
                    del self._entries[key]
            if old is not None:
                log.info("%s", reason)
                old.handle.close()
                self.reloads += 1
            ctx = n_ctx or min(self.config.default_ctx, trained)
            estimate = estimate_bytes(resolved, ctx)
            self._make_room(resolved, estimate)
            opts = LoadOptions(n_ctx=ctx, embedding=embedding, n_batch=ctx if embedding else 512)
            handle = load(self.settings, resolved, opts)
            now = time.monotonic()
            entry = _Entry(
                key=key,
                handle=handle,
                n_ctx=handle.model.n_ctx,
                estimated_bytes=estimate,
                loaded_at=time.time(),
                last_used=now,
                keep_alive_s=self._keep_alive(keep_alive_s),
                in_flight=1,
                requests=1,
            )
            with self._lock:
                self._entries[key] = entry
                self.loads += 1
            log.info(
                "loaded %s (%s, ctx %d, ~%d MB) in %.2f s",
                resolved.manifest.id,
                "embedding" if embedding else "generation",
                entry.n_ctx,
                estimate // 2**20,
                handle.load_s,
            )
            return Lease(self, entry, keep_alive_s, handle.load_s, reason)

    def sweep(self) -> list[str]:
        """Unload every idle model whose keep-alive has run out; return their ids."""
        now = time.monotonic()
        with self._lock:
            gone = [
                e
                for e in self._entries.values()
                if e.in_flight == 0 and e.expires_at is not None and e.expires_at <= now
            ]
            for e in gone:
                del self._entries[e.key]
        for e in gone:
            log.info("keep-alive expired: unloading %s", e.handle.resolved.manifest.id)
            e.handle.close()
        return [e.handle.resolved.manifest.id for e in gone]

    def unload(self, model_id: str | None = None, sha256: str | None = None) -> int:
        """Unload idle models matching ``model_id``/``sha256`` now (busy ones when they finish)."""
        closing: list[_Entry] = []
        with self._lock:
            for e in list(self._entries.values()):
                res = e.handle.resolved
                if (model_id is None or res.manifest.id == model_id) and (
                    sha256 is None or res.blob.sha256 == sha256
                ):
                    if e.in_flight:
                        e.keep_alive_s = 0.0  # unloaded by _release when its last request ends
                    else:
                        del self._entries[e.key]
                        closing.append(e)
        for e in closing:
            e.handle.close()
        return len(closing)

    def loaded(self) -> list[LoadedInfo]:
        with self._lock:
            return [e.info() for e in self._entries.values()]

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting (not running) per loaded model id."""
        with self._lock:
            out: dict[str, int] = {}
            for e in self._entries.values():
                mid = e.handle.resolved.manifest.id
                out[mid] = out.get(mid, 0) + max(e.in_flight - 1, 0)
            return out

    def budget_bytes(self) -> int:
        if self._budget is None:
            self._budget = default_budget(self.settings)
        return self._budget

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for e in entries:
            e.handle.close()

    # -- internals -------------------------------------------------------------------
    def _keep_alive(self, requested: float | None) -> float:
        value = self.config.keep_alive_s if requested is None else requested
        # Negative means forever, and so does anything beyond a year (or not a number).
        return FOREVER if not 0 <= value <= MAX_KEEP_ALIVE_S else value

    def _try_lease(
        self, key: tuple[str, bool], n_ctx: int | None, keep_alive_s: float | None
    ) -> Lease | None:
        # Called with self._lock held.
        e = self._entries.get(key)
        if e is None or (n_ctx is not None and e.n_ctx < n_ctx):
            return None
        if e.in_flight > self.config.queue_depth:
            raise ServerBusyError(
                f"{e.handle.resolved.manifest.id} has {e.in_flight - 1} requests waiting "
                f"(limit {self.config.queue_depth})",
                self.config.retry_after_s,
            )
        e.in_flight += 1
        e.requests += 1
        e.expires_at = None
        if keep_alive_s is not None:
            e.keep_alive_s = self._keep_alive(keep_alive_s)
        return Lease(self, e, keep_alive_s)

    def _release(self, entry: _Entry, keep_alive_s: float | None) -> None:
        close = False
        with self._lock:
            entry.in_flight -= 1
            now = time.monotonic()
            entry.last_used = now
            if keep_alive_s is not None:
                entry.keep_alive_s = self._keep_alive(keep_alive_s)
            if entry.in_flight == 0:
                entry.expires_at = now + entry.keep_alive_s
                if entry.keep_alive_s <= 0 and self._entries.get(entry.key) is entry:
                    del self._entries[entry.key]
                    close = True
        if close:
            log.info("keep_alive 0: unloading %s", entry.handle.resolved.manifest.id)
            entry.handle.close()

    def _make_room(self, resolved: ResolvedModel, need: int) -> None:
        """Evict idle models, least recently used first, until ``need`` more bytes fit."""
        budget = self.budget_bytes()
        if need > budget:
            raise NoFitError(
                f"{resolved.manifest.id} needs about {need // 2**20} MB but the server's "
                f"memory budget is {budget // 2**20} MB",
                [f"estimated {need} bytes > budget {budget} bytes"],
                "use a smaller context (num_ctx) or quant, or raise LOCARA_MEMORY_BUDGET",
            )
        evicted: list[_Entry] = []
        with self._lock:
            used = sum(e.estimated_bytes for e in self._entries.values())
            for e in sorted(self._entries.values(), key=lambda e: e.last_used):
                if used + need <= budget:
                    break
                if e.in_flight == 0:
                    del self._entries[e.key]
                    used -= e.estimated_bytes
                    evicted.append(e)
            busy = used + need > budget
        for e in evicted:
            log.info(
                "evicting %s (least recently used) to make room for %s",
                e.handle.resolved.manifest.id,
                resolved.manifest.id,
            )
            e.handle.close()
            self.evictions += 1
        if busy:
            raise ServerBusyError(
                f"no memory for {resolved.manifest.id} until a busy model finishes",
                self.config.retry_after_s,
            )


def estimate_bytes(resolved: ResolvedModel, n_ctx: int) -> int:
    """Expected memory of ``resolved`` loaded with ``n_ctx``: the fit estimate, else file size."""
    try:
        from locara.device.fit import estimate_fit
        from locara.device.gguf_meta import read_gguf

        return int(estimate_fit(read_gguf(resolved.blob.path), n_ctx).total_bytes)
    except (ImportError, LocaraError, OSError, ValueError) as exc:
        log.debug("fit estimate unavailable (%s); using the file size", exc)
        return resolved.blob.size_bytes


def default_budget(settings: Settings) -> int:
    """75 % of the RAM available now: room for the models, with the OS and apps left alone."""
    try:
        from locara.device.profile import detect_profile

        available = detect_profile(settings).ram_available_bytes
    except (ImportError, LocaraError, OSError) as exc:
        import psutil

        log.debug("device profile unavailable (%s); using psutil", exc)
        available = psutil.virtual_memory().available
    return int(available * 0.75)
