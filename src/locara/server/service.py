"""What every route does, once: take a lease on a model, run it in a thread, account for it.

Each request ends in exactly one usage record (ledger) and one metrics observation,
whether it finished, failed or was cancelled by a client that went away.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from concurrent.futures import Future
from dataclasses import dataclass, replace
from typing import Any, TypeVar

from fastapi import Request

from locara.backends.base import Chunk, GenerationRequest
from locara.engine.accounting import generation_record
from locara.engine.forced_call import as_call, as_schema_request, forced_tool
from locara.engine.pool import Lease, ModelPool
from locara.engine.runner import RunResult, ThreadedRun, in_thread
from locara.errors import ContextOverflowError, LocaraError, UnsupportedFeatureError
from locara.ledger import RouteUsage, UsageRecord, record_usage
from locara.server.config import ServerConfig
from locara.server.embed_inputs import fit_embedding_inputs
from locara.server.errors import HTTPError
from locara.server.metrics import Metrics
from locara.server.tokens import TokenStore
from locara.settings import Settings

log = logging.getLogger("locara.server")
T = TypeVar("T")


async def client_gone(request: Request) -> None:
    """Returns when the client has closed its connection.

    The request's body has been read, so the server's next message is the disconnect:
    waiting for it costs nothing, where polling ``is_disconnected`` costs every waiting
    request a task and a cancel scope a few times a second.
    """
    while (await request.receive())["type"] != "http.disconnect":
        pass


@dataclass(frozen=True)
class Caller:
    app: str  # the token's app, or "local"
    surface: str  # "openai" | "ollama"


class Service:
    def __init__(self, settings: Settings, config: ServerConfig) -> None:
        self.settings = settings
        self.config = config
        self.pool = ModelPool(settings, config.pool)
        self.metrics = Metrics()
        self.tokens = TokenStore(settings)
        self.started_at = time.time()

    async def lease(
        self,
        reference: str | None,
        caller: Caller,
        *,
        n_ctx: int | None = None,
        embedding: bool = False,
        media: bool = False,
        keep_alive_s: float | None = None,
    ) -> Lease:
        """A lease on a loaded model; failures are counted before they propagate."""
        try:
            return await in_thread(
                lambda: self.pool.acquire(
                    reference,
                    n_ctx=n_ctx,
                    embedding=embedding,
                    media=media,
                    keep_alive_s=keep_alive_s,
                ),
                name="locara-acquire",
            )
        except LocaraError as exc:
            from locara.registry.catalog import Registry
            from locara.registry.refs import parse_ref

            # Label with a catalog id only: a raw client string would add a metrics
            # series (and a ledger model) per distinct name, forever.
            model = "(unresolved)"
            try:
                ref_id = parse_ref(reference or self.settings.default_model).id
                known = Registry(self.settings).path_of(ref_id) is not None
            except LocaraError:
                known = False
            if known:
                model = ref_id
            self.metrics.observe(caller.surface, model, "error")
            # The ledger is SQLite: written from a thread, never on the event loop.
            error = exc.message
            await in_thread(
                lambda: self._record(caller, model, None, "", status="error", error=error)
            )
            raise

    async def first_chunk(self, run: ThreadedRun[Chunk], request: Request) -> Chunk:
        """The run's first chunk; errors found before any token (bad schema, overflow) raise.

        Until it comes the model is evaluating the prompt, which takes seconds for a long
        one: a client that goes away meanwhile cancels the run instead of leaving that
        work to finish for nobody.
        """
        nxt: asyncio.Future[Chunk] = asyncio.ensure_future(run.__anext__())
        gone = asyncio.ensure_future(client_gone(request))
        either: set[asyncio.Future[Any]] = {nxt, gone}
        try:
            await asyncio.wait(either, return_when=asyncio.FIRST_COMPLETED)
        finally:
            gone.cancel()
        if not nxt.done():
            run.cancel()
        try:
            return await nxt
        except StopAsyncIteration:  # cancelled before the first token; nobody will read this
            raise HTTPError(
                499,
                "the client closed the connection before the answer began",
                code="client_closed_request",
            ) from None

    async def collect(self, run: ThreadedRun[Chunk], first: Chunk, request: Request) -> list[Chunk]:
        """All chunks of a non-streamed answer; stops generating if the client goes away."""
        chunks = [first]
        gone = asyncio.ensure_future(client_gone(request))
        try:
            async for c in run:
                chunks.append(c)
                if gone.done():
                    run.cancel()
        finally:
            gone.cancel()
        return chunks

    def cap_tokens(self, max_tokens: int | None, lease: Lease) -> int | None:
        """Apply the operator's LOCARA_MAX_TOKENS cap; a request beyond the context is left
        alone so that it fails with the token counts, as it would without a cap."""
        cap = self.config.max_tokens_cap
        if cap is None or (max_tokens is not None and max_tokens > lease.handle.model.n_ctx):
            return max_tokens
        return cap if max_tokens is None else min(max_tokens, cap)

    async def start(
        self,
        reference: str | None,
        caller: Caller,
        build: Callable[[Lease], GenerationRequest],
        *,
        n_ctx: int | None = None,
        keep_alive_s: float | None = None,
        route: Future[RouteUsage] | None = None,
    ) -> tuple[Lease, GenerationRequest, ThreadedRun[Chunk]]:
        """Lease the model, build the request on it, start generating in a thread.

        The one owner of a generation's lease: released here if building the request
        fails, else when the generation thread is done, whatever the outcome. Routes read
        the returned lease (model id, load time) and never release it.

        ``route`` is a router policy's verdict on this generation (``serve --policy``):
        whether its answer was kept or escalated is known only after it was judged, so
        its usage record waits for the verdict; the lease does not.
        """
        lease = await self.lease(reference, caller, n_ctx=n_ctx, keep_alive_s=keep_alive_s)
        try:
            req = build(lease)
            model = lease.handle.model
            caps, model_id = model.capabilities, lease.handle.resolved.manifest.id
            if req.messages and not caps.chat:
                raise UnsupportedFeatureError(
                    f"{model_id} cannot chat (its model file has no chat template)",
                    "send a raw prompt (/v1/completions, /api/generate with raw), or give its "
                    "manifest a config.chat_template",
                )
            if req.prompt is not None and not caps.completion:
                raise UnsupportedFeatureError(
                    f"{model_id} does not complete raw prompts", "chat with it instead"
                )
            forced = None
            if req.tools and not caps.tools:
                # A call the request forces can be generated under its schema instead.
                forced = forced_tool(req) if caps.json_schema else None
                if forced is None:
                    raise UnsupportedFeatureError(*caps.no_tools)
                req = as_schema_request(req, forced)
            if req.json_schema is not None and not model.capabilities.json_schema:
                raise UnsupportedFeatureError(
                    f"{lease.handle.resolved.manifest.id} cannot enforce a JSON schema",
                    "use a llama.cpp (GGUF) model for response_format/format",
                )
        except BaseException:
            lease.release()
            raise

        def make() -> Iterator[Chunk]:
            chunks = model.generate(replace(req, cancelled=lambda: run.cancelled))
            return chunks if forced is None else as_call(chunks, forced)

        def done(result: RunResult[Chunk]) -> None:
            lease.release()
            if route is None:
                self._account_generation(lease, caller, result)
            else:
                route.add_done_callback(
                    lambda v: self._account_generation(lease, caller, result, v.result())
                )

        run = ThreadedRun(make, done, is_last=lambda c: c.finish_reason is not None)
        return lease, req, run.start()

    async def preload(
        self, reference: str | None, caller: Caller, keep_alive_s: float | None
    ) -> None:
        """Load the model (Ollama's empty request) and let its keep-alive clock start."""
        (await self.lease(reference, caller, keep_alive_s=keep_alive_s)).release()

    async def media(
        self,
        reference: str,
        caller: Caller,
        work: Callable[[Lease], T],
        *,
        name: str,
        tokens: Callable[[T], int] = lambda _: 0,
    ) -> tuple[T, str]:
        """Run ``work`` on a leased speech or OCR model in a thread; return what it gave
        and the model id. The one owner of a media lease (released on every way out) and
        of its metrics observation; ``work`` writes the usage record (engine.media does).
        """
        lease = await self.lease(reference, caller, media=True)
        model_id = lease.handle.resolved.manifest.id
        try:
            out = await in_thread(lambda: work(lease), name=name)
        except Exception:
            self.metrics.observe(caller.surface, model_id, "error")
            raise
        finally:
            lease.release()
        self.metrics.observe(caller.surface, model_id, "ok", 0, tokens(out))
        return out, model_id

    async def embed(
        self,
        reference: str,
        texts: list[str],
        caller: Caller,
        *,
        truncate: bool,
        n_ctx: int | None = None,
        keep_alive_s: float | None = None,
    ) -> tuple[list[list[float]], int, Lease]:
        """Vectors for ``texts``, the tokens they took, and the (released) lease.

        Over-long inputs are cut to the context when ``truncate``, else refused. The
        lease is this method's alone: released on every way out.
        """
        lease = await self.lease(
            reference, caller, n_ctx=n_ctx, embedding=True, keep_alive_s=keep_alive_s
        )
        started = time.perf_counter()
        model, model_id = lease.handle.model, lease.handle.resolved.manifest.id

        def work() -> tuple[list[int], list[list[float]]]:
            # Tokenizing costs time too (it grows with the input): never on the event loop.
            fitted = fit_embedding_inputs(model, model_id, texts, truncate=truncate)
            counts = [model.count_tokens(t) for t in fitted]
            for n in counts:
                if n > model.embed_ctx:
                    raise ContextOverflowError(n, 0, model.embed_ctx)
            return counts, model.embed(fitted)

        try:
            counts, vectors = await in_thread(work, name="locara-embed")
        except LocaraError as exc:
            await in_thread(self._account_simple, lease, caller, "error", 0, exc.message)
            raise
        finally:
            lease.release()
        elapsed = time.perf_counter() - started
        await in_thread(self._account_simple, lease, caller, "ok", sum(counts), None, elapsed)
        return vectors, sum(counts), lease

    # -- accounting ------------------------------------------------------------------
    def _account_generation(
        self,
        lease: Lease,
        caller: Caller,
        result: RunResult[Chunk],
        route: RouteUsage | None = None,
    ) -> None:
        status = result.outcome
        error = None
        if result.error is not None and status == "error":
            error = getattr(result.error, "message", None) or repr(result.error)
        rec = generation_record(
            lease.handle,
            app=caller.app,
            surface=caller.surface,
            last=result.last,
            status=status,
            error=error,
            load_s=lease.load_s,
            route=route,
        )
        usage = result.last.usage if result.last is not None else None
        self.metrics.observe(
            caller.surface,
            rec.model_id,
            rec.status,  # the record's: a run the backend ended as cancelled counts so
            rec.prompt_tokens,
            rec.completion_tokens,
            usage.cached_tokens if usage else 0,
            rec.ttft_s,
        )
        record_usage(self.settings, rec)

    def _account_simple(
        self,
        lease: Lease,
        caller: Caller,
        status: str,
        tokens_in: int,
        error: str | None,
        elapsed: float | None = None,
    ) -> None:
        res = lease.handle.resolved
        self.metrics.observe(caller.surface, res.manifest.id, status, tokens_in)
        self._record(
            caller,
            res.manifest.id,
            res.blob.sha256,
            lease.handle.backend,
            prompt_tokens=tokens_in,
            load_s=lease.load_s,
            status="ok" if status == "ok" else "error",
            error=error,
            ttft_s=elapsed,
        )

    def _record(
        self,
        caller: Caller,
        model: str,
        sha256: str | None,
        backend: str,
        *,
        prompt_tokens: int = 0,
        completion_tokens: int = 0,
        ttft_s: float | None = None,
        generation_tps: float | None = None,
        load_s: float | None = None,
        status: str = "ok",
        error: str | None = None,
    ) -> None:
        record_usage(
            self.settings,
            UsageRecord(
                model_id=model,
                sha256=sha256,
                backend=backend,
                app=caller.app,
                surface=caller.surface,
                prompt_tokens=prompt_tokens,
                completion_tokens=completion_tokens,
                ttft_s=ttft_s,
                generation_tps=generation_tps,
                load_s=load_s,
                status="ok"
                if status == "ok"
                else ("cancelled" if status == "cancelled" else "error"),
                error=error,
            ),
        )
