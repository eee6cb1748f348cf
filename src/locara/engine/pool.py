"""The models a server keeps loaded: load on demand, keep alive, evict LRU, bound each queue.

A ``ModelPool`` owns every loaded model. ``acquire()`` hands out a ``Lease`` (the
model plus a slot in its queue); ``Lease.release()`` gives the slot back and starts
the keep-alive clock. ``sweep()`` unloads models whose keep-alive ran out.

Every load runs its plan (``engine.loader.resolve``): backend, context, KV type, GPU
layers, threads, batch and slots come from the planner, with the request's ``num_ctx``
and the operator's budget handed to it as explicit options. Memory admission is the
planner's rule: a plan fits when its ``ram_bytes`` fit the RAM budget, and loading a
model first evicts idle ones, least recently used first, until the ``ram_bytes`` of
everything loaded fit that same budget.

A model stays memory-mapped from its blob. Each acquire verifies the blob again (the
store's stat-signature check), and a model whose file is no longer the one it was
loaded from (rewritten, truncated, replaced) is unloaded and loaded again. When the
store refuses the blob, models loaded from it are unloaded at once (touching a page of
a truncated mapping kills the process with SIGBUS) and the blob is fetched again.

A loaded model runs as many requests at once as its plan has parallel slots (a
llama-server worker batches them; llama.cpp in process runs one), requests to
different models run in parallel. Its queue is bounded: beyond ``queue_depth``
requests waiting for a slot, ``acquire()`` raises ``ServerBusyError`` at once instead
of letting clients pile up.

All methods are thread-safe and blocking (loading takes seconds); the server calls
them from worker threads.
"""

from __future__ import annotations

import logging
import math
import threading
import time
from dataclasses import dataclass, field, replace

from locara.backends.base import LoadOptions
from locara.device.profile import DeviceProfile
from locara.engine.loader import (
    FileIdentity,
    ModelHandle,
    ResolvedModel,
    check_fits,
    file_identity,
    load,
    resolve,
)
from locara.errors import IntegrityError, ServerBusyError, StoreError
from locara.planner.plan import Plan, PlanRequest
from locara.settings import Settings

log = logging.getLogger("locara.engine")

FOREVER = math.inf
MAX_KEEP_ALIVE_S = 365 * 86400.0


@dataclass(frozen=True)
class PoolConfig:
    """How long models stay loaded, how many requests may wait, how much memory to use."""

    keep_alive_s: float = 300.0  # Ollama's default; < 0 means forever
    queue_depth: int = 16  # requests waiting per model for a free slot
    budget_bytes: int | None = None  # None: the planner's RAM budget for this device
    default_ctx: int = 4096  # the context of a request without num_ctx (the plan may lower it)
    n_parallel: int | None = None  # slots per model (Ollama's NUM_PARALLEL); None: the plan's
    retry_after_s: int = 2


@dataclass(frozen=True)
class PoolCounters:
    """Since the pool was made: loads, reloads (context grew, file changed), evictions (LRU)."""

    loads: int
    reloads: int
    evictions: int


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
    plan: Plan  # what the planner decided, and why
    options: LoadOptions  # what the backend was given


@dataclass
class _Entry:
    key: tuple[str, bool]
    handle: ModelHandle
    n_ctx: int
    estimated_bytes: int
    ram_bytes: int  # what counts against the budget (the plan's)
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
            plan=self.handle.plan,
            options=self.handle.options,
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
        self._device: DeviceProfile | None = None
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
        media: bool = False,
        keep_alive_s: float | None = None,
    ) -> Lease:
        """A lease on ``reference`` loaded as planned, with at least ``n_ctx`` context.

        ``embedding``: for embeddings; ``media``: for transcription or OCR; else for
        generation (a model that cannot generate is refused before it is loaded).

        Raises ServerBusyError when the model's queue is full, UsageError for a context
        the model cannot have, NoFitError when its plan does not fit the memory budget.
        """
        self._drop_lost_remote()
        request = PlanRequest(
            n_ctx=n_ctx,
            features=(
                frozenset({"embeddings"})
                if embedding
                else frozenset()
                if media
                else frozenset({"generation"})
            ),
            default_ctx=self.config.default_ctx,
            memory_budget_bytes=self.config.budget_bytes,
            n_parallel=None if embedding else self.config.n_parallel,
        )
        resolved = self._resolve(reference, request)
        if embedding and resolved.manifest.modality != "embedding":
            # A chat model's embeddings come from its own llama-server worker, loaded for
            # generation as for any chat: one copy serves both, listed once.
            shared = self._resolve(
                reference,
                replace(
                    request,
                    n_ctx=None,  # an input is capped by the batch, not by the context
                    features=frozenset({"generation"}),
                    n_parallel=self.config.n_parallel,
                ),
            )
            if shared.plan.runtime == "llama-server":
                resolved, embedding, n_ctx = shared, False, None
        plan = resolved.plan
        # The plan may give less than asked (memory); a loaded context that large will do.
        want = (plan.n_ctx or n_ctx) if n_ctx is not None else None
        # Two manifests may name one blob with different chat templates and stop tokens,
        # which the loaded model carries: each manifest gets its own loaded copy.
        key = (f"{resolved.manifest.id}@{resolved.blob.sha256}", embedding)
        current = file_identity(resolved.blob.path)
        with self._lock:
            lease = self._try_lease(key, want, current, keep_alive_s)
            if lease is not None:
                return lease
            load_lock = self._loading.setdefault(key, threading.Lock())
        with load_lock:  # one load per model at a time; others wait for it, then reuse it
            with self._lock:
                lease = self._try_lease(key, want, current, keep_alive_s)
                if lease is not None:
                    return lease
                old = self._entries.get(key)
                reason = None
                if old is not None:
                    model = resolved.manifest.id
                    changed = old.handle.file_id != current
                    if old.in_flight:
                        why = (
                            "its file in the store changed"
                            if changed
                            else f"it is loaded with context {old.n_ctx}"
                        )
                        raise ServerBusyError(
                            f"{model} is busy and {why}; reloading it must wait",
                            self.config.retry_after_s,
                        )
                    reason = (
                        f"reloading {model}: its file in the store changed since it was loaded"
                        if changed
                        else f"reloading {model}: loaded context {old.n_ctx} is "
                        f"smaller than the requested {n_ctx}"
                    )
                    del self._entries[key]
                    self.reloads += 1
            if old is not None:
                log.info("%s", reason)
                old.handle.close()
            check_fits(resolved)
            self._make_room(resolved, plan.ram_bytes)
            handle = load(self.settings, resolved)
            now = time.monotonic()
            entry = _Entry(
                key=key,
                handle=handle,
                n_ctx=handle.model.n_ctx,
                estimated_bytes=plan.estimate.total_bytes if plan.estimate else plan.ram_bytes,
                ram_bytes=plan.ram_bytes,
                loaded_at=time.time(),
                last_used=now,
                keep_alive_s=self._keep_alive(keep_alive_s),
                in_flight=1,
                requests=1,
            )
            with self._lock:
                self._entries[key] = entry
                self.loads += 1
            opts = handle.options
            log.info(
                "loaded %s (%s) on %s in %.2f s: ctx %d x %d slot(s), KV %s, %d/%s GPU layers, "
                "%s threads, batch %d, ~%d MB",
                resolved.manifest.id,
                "embedding" if embedding else "generation",
                handle.backend,
                handle.load_s,
                entry.n_ctx,
                opts.n_parallel,
                opts.kv_type,
                opts.n_gpu_layers,
                plan.n_layers,
                opts.n_threads,
                opts.n_batch,
                plan.ram_bytes // 2**20,
            )
            for warning in plan.warnings:
                log.warning("%s: %s", resolved.manifest.id, warning)
            return Lease(self, entry, keep_alive_s, handle.load_s, reason)

    def expired(self) -> bool:
        """Whether an idle model's keep-alive has run out (cheap: no unloading here)."""
        now = time.monotonic()
        with self._lock:
            return any(self._is_expired(e, now) for e in self._entries.values())

    @staticmethod
    def _is_expired(e: _Entry, now: float) -> bool:
        return e.in_flight == 0 and e.expires_at is not None and e.expires_at <= now

    def sweep(self) -> list[str]:
        """Unload every idle model whose keep-alive has run out; return their ids."""
        now = time.monotonic()
        with self._lock:
            gone = [e for e in self._entries.values() if self._is_expired(e, now)]
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
                    self._retire(e, closing)
        for e in closing:
            e.handle.close()
        return len(closing)

    def loaded(self) -> list[LoadedInfo]:
        with self._lock:
            return [e.info() for e in self._entries.values()]

    def counters(self) -> PoolCounters:
        """Loads, reloads and evictions so far (``/metrics``)."""
        with self._lock:
            return PoolCounters(self.loads, self.reloads, self.evictions)

    def queue_depths(self) -> dict[str, int]:
        """Requests waiting (not running) per loaded model id."""
        with self._lock:
            out: dict[str, int] = {}
            for e in self._entries.values():
                mid = e.handle.resolved.manifest.id
                out[mid] = out.get(mid, 0) + max(e.in_flight - e.handle.options.n_parallel, 0)
            return out

    def device(self) -> DeviceProfile:
        """The device every plan of this pool is made for, read once (again after an RPC
        worker was lost: then without the workers that no longer answer)."""
        with self._lock:
            if self._device is None:
                from locara.device.profile import current_device

                self._device = current_device(self.settings)
            return self._device

    def _drop_lost_remote(self) -> None:
        """Unload models whose RPC workers went away, and keep only workers that answer."""
        with self._lock:
            lost = [e for e in self._entries.values() if e.handle.remote_lost]
            for e in lost:
                del self._entries[e.key]
            if not lost:
                return
            from locara.backends.rpc import probe
            from locara.errors import BackendUnavailableError

            alive: list[str] = []
            for endpoint in self.settings.rpc:
                try:
                    probe(endpoint)
                    alive.append(endpoint)
                except BackendUnavailableError as exc:
                    log.warning("RPC worker left out of new plans: %s", exc.message)
            self.settings = replace(self.settings, rpc=tuple(alive))
            self._device = None
        for e in lost:
            log.warning(
                "%s lost its RPC worker(s); it is planned again", e.handle.resolved.manifest.id
            )
            e.handle.close()

    def budget_bytes(self) -> int:
        """The RAM budget the plans fit and every loaded model's ``ram_bytes`` share."""
        if self.config.budget_bytes is not None:
            return self.config.budget_bytes
        from locara.planner.budget import ram_budget

        return ram_budget(self.device())

    def close(self) -> None:
        with self._lock:
            entries = list(self._entries.values())
            self._entries.clear()
        for e in entries:
            e.handle.close()

    # -- internals -------------------------------------------------------------------
    def _resolve(self, reference: str | None, request: PlanRequest) -> ResolvedModel:
        try:
            return resolve(self.settings, reference, request=request, device=self.device())
        except StoreError as exc:
            # The store refused a blob (corrupt, truncated, gone). A model mapped from that
            # file dies (SIGBUS) on its next page fault, so unload every such model now.
            self._unload_changed_files()
            if not isinstance(exc, IntegrityError):
                raise
        # The store deleted the bad blob; fetching it again is what a first request for
        # an unstored model does too (and offline, a clear OfflineError).
        return resolve(self.settings, reference, request=request, device=self.device())

    def _unload_changed_files(self) -> None:
        closing: list[_Entry] = []
        with self._lock:
            for e in list(self._entries.values()):
                try:
                    same = file_identity(e.handle.resolved.blob.path) == e.handle.file_id
                except OSError:
                    same = False
                if not same:
                    self._retire(e, closing)
        for e in closing:
            log.warning(
                "unloading %s: the file it was loaded from failed verification",
                e.handle.resolved.manifest.id,
            )
            e.handle.close()

    def _retire(self, e: _Entry, closing: list[_Entry]) -> None:
        """Unload ``e`` now (into ``closing``), or when its last request ends; lock held."""
        if e.in_flight:
            e.keep_alive_s = 0.0  # unloaded by _release when its last request ends
        else:
            del self._entries[e.key]
            closing.append(e)

    def _keep_alive(self, requested: float | None) -> float:
        value = self.config.keep_alive_s if requested is None else requested
        # Negative means forever, and so does anything beyond a year (or not a number).
        return FOREVER if not 0 <= value <= MAX_KEEP_ALIVE_S else value

    def _try_lease(
        self,
        key: tuple[str, bool],
        n_ctx: int | None,
        current: FileIdentity,
        keep_alive_s: float | None,
    ) -> Lease | None:
        # Called with self._lock held.
        e = self._entries.get(key)
        if e is None or (n_ctx is not None and e.n_ctx < n_ctx) or e.handle.file_id != current:
            return None
        waiting = e.in_flight - e.handle.options.n_parallel
        if waiting >= self.config.queue_depth:
            raise ServerBusyError(
                f"{e.handle.resolved.manifest.id} has {waiting} requests waiting "
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
        """Evict idle models, least recently used first, until ``need`` more bytes fit.

        ``need`` is a plan's ``ram_bytes``, which the planner already fitted to this same
        budget; here only the other loaded models' ``ram_bytes`` can be in the way.
        """
        budget = self.budget_bytes()
        evicted: list[_Entry] = []
        with self._lock:
            used = sum(e.ram_bytes for e in self._entries.values())
            for e in sorted(self._entries.values(), key=lambda e: e.last_used):
                if used + need <= budget:
                    break
                if e.in_flight == 0:
                    del self._entries[e.key]
                    used -= e.ram_bytes
                    evicted.append(e)
                    self.evictions += 1
            busy = used + need > budget
        for e in evicted:
            log.info(
                "evicting %s (least recently used) to make room for %s",
                e.handle.resolved.manifest.id,
                resolved.manifest.id,
            )
            e.handle.close()
        if busy:
            raise ServerBusyError(
                f"no memory for {resolved.manifest.id} until a busy model finishes",
                self.config.retry_after_s,
            )
