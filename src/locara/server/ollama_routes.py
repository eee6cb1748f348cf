"""The Ollama-compatible API: chat, generate, embed, tags, ps, show, pull, delete, version.

Streaming is NDJSON (one JSON object per line), on by default as in Ollama. Durations
are nanoseconds. Model names may carry Ollama's ``:latest`` tag, which means "the
default artifact"; any other tag is a Locara quant (``smollm2-135m-instruct:Q8_0``).
``/api/tags`` names every model with its tag (clients match on NAME:TAG), and requests
take the name with or without it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from locara import __version__
from locara.backends.base import (
    AdapterUse,
    Chunk,
    GenerationRequest,
    Message,
    TokenLogprob,
    Tool,
    ToolCallDelta,
    ToolChoice,
)
from locara.backends.registry import llama_server_installed
from locara.engine.loader import resolve
from locara.engine.pool import Lease, LoadedInfo
from locara.engine.runner import batches, in_thread
from locara.errors import (
    LocaraError,
    PinnedModelError,
    StoreError,
    UnknownModelError,
    UsageError,
)
from locara.registry.catalog import Registry
from locara.registry.manifest import ModelManifest
from locara.registry.refs import parse_ref
from locara.server import vision
from locara.server.adapters import AdapterList, request_adapters
from locara.server.common import (
    app_name,
    check_sampling,
    parse_keep_alive,
    sampling_from,
    service,
    to_messages,
)
from locara.server.errors import HTTPError, error_body
from locara.server.listing import (
    ModelFacts,
    available_models,
    local_source,
    model_facts,
    ollama_capabilities,
    ollama_tag,
)
from locara.server.listing import ollama_details as _details
from locara.server.ollama_schema import (
    ChatRequest,
    DeleteRequest,
    EmbedRequest,
    Format,
    GenerateRequest,
    LegacyEmbeddingsRequest,
    Options,
    PullRequest,
    ShowRequest,
)
from locara.server.openai_routes import embedding_inputs
from locara.server.router_routes import policy_router, routed_chat
from locara.server.service import Caller
from locara.server.streaming import CancellableStream, ndjson
from locara.server.tool_calls import check_tools, ollama_calls, ollama_messages, ollama_tools
from locara.store.blobs import BlobStore

router = APIRouter(tags=["ollama"])

NS = 1_000_000_000


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).isoformat().replace("+00:00", "Z")


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")


def _reference(name: str | None, required: bool = False) -> str | None:
    if not name:
        if required:
            raise UsageError("model is required", 'pass "model": "<name>" (see GET /api/tags)')
        return None
    return name[: -len(":latest")] if name.endswith(":latest") else name


def _schema(fmt: Format) -> dict[str, Any] | None:
    if fmt is None or fmt == "":
        return None
    if fmt == "json":
        return {}
    assert isinstance(fmt, dict)
    return fmt


def _check_options(opts: Options | None) -> Options:
    opts = opts or Options()
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(opts, name):
            raise UsageError(f"option {name} is not supported", "omit it, or use repeat_penalty")
    check_sampling(
        temperature=opts.temperature,
        top_p=opts.top_p or None,
        top_k=opts.top_k,
        min_p=opts.min_p,
        repeat_penalty=opts.repeat_penalty or None,
        seed=opts.seed,
    )
    return opts


def _max_tokens(opts: Options) -> int | None:
    # Ollama: -1 is "until done", -2 is "fill the context"; both mean no limit here.
    n = opts.num_predict
    if n is None or n < 0:
        return None
    if n == 0:
        raise UsageError("num_predict 0 generates nothing", "pass num_predict >= 1, or -1")
    return n


def _logprobs(logprobs: bool | None, top_logprobs: int | None) -> int | None:
    """The engine's ``logprobs`` (None: off; N: N alternatives) from Ollama's two fields."""
    return (top_logprobs or 0) if logprobs else None


def _logprob_entries(items: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    """Ollama's shape: token, logprob, bytes, and top_logprobs when alternatives were asked."""

    def entry(token: str, logprob: float) -> dict[str, Any]:
        return {"token": token, "logprob": logprob, "bytes": list(token.encode("utf-8"))}

    out = []
    for t in items:
        e = entry(t.token, t.logprob)
        if t.top:
            e["top_logprobs"] = [entry(a, b) for a, b in t.top]
        out.append(e)
    return out


def _request(
    lease: Lease,
    opts: Options,
    max_tokens: int | None,
    fmt: Format,
    messages: tuple[Message, ...] = (),
    prompt: str | None = None,
    logprobs: int | None = None,
    tools: tuple[Tool, ...] = (),
    adapters: tuple[AdapterUse, ...] = (),
) -> GenerationRequest:
    sampling = sampling_from(
        lease.handle.resolved.manifest,
        temperature=opts.temperature,
        top_p=opts.top_p or None,
        top_k=opts.top_k,
        min_p=opts.min_p,
        repeat_penalty=opts.repeat_penalty or None,
        seed=opts.seed,
    )
    return GenerationRequest(
        messages=messages,
        prompt=prompt,
        max_tokens=max_tokens,
        sampling=sampling,
        stop=tuple(s for s in (opts.stop or ()) if s),
        json_schema=_schema(fmt),
        logprobs=logprobs,
        tools=tools,
        adapters=adapters,
    ).validate()


def _final_stats(last: Chunk, lease: Lease, started: float) -> dict[str, Any]:
    usage, timings = last.usage, last.timings
    # Ollama says "stop" when the model ends by calling tools.
    reason = "stop" if last.finish_reason == "tool_calls" else last.finish_reason
    return {
        "done_reason": reason or "stop",
        "total_duration": int((time.perf_counter() - started) * NS),
        "load_duration": int(lease.load_s * NS),
        "prompt_eval_count": usage.prompt_tokens if usage else last.prompt_tokens,
        "prompt_eval_duration": int(timings.prompt_s * NS) if timings else 0,
        "eval_count": usage.completion_tokens if usage else last.completion_tokens,
        "eval_duration": int(timings.generation_s * NS) if timings else 0,
    }


async def _load_only(
    request: Request, reference: str | None, keep_alive: float | None, key: str
) -> Response:
    """Ollama's "empty request": load the model (or unload it with keep_alive 0)."""
    svc = service(request)
    name = reference or svc.settings.default_model
    if keep_alive is not None and keep_alive == 0:
        manifest = Registry(svc.settings).get(parse_ref(name).id)
        await asyncio.to_thread(svc.pool.unload, manifest.id)
        reason = "unload"
    else:
        await svc.preload(reference, Caller(app_name(request), "ollama"), keep_alive)
        reason = "load"
    body: dict[str, Any] = {"model": name, "created_at": _now_iso(), "done": True}
    body["done_reason"] = reason
    body[key] = {"role": "assistant", "content": ""} if key == "message" else ""
    return JSONResponse(body)


async def _generation_response(
    request: Request,
    reference: str | None,
    build: Callable[[Lease], GenerationRequest],
    opts: Options,
    keep_alive: float | None,
    stream: bool,
    asked_name: str | None,
    key: str,
) -> Response:
    svc = service(request)
    caller = Caller(app_name(request), "ollama")
    started = time.perf_counter()
    lease, req, run = await svc.start(
        reference, caller, build, n_ctx=opts.num_ctx, keep_alive_s=keep_alive
    )
    model_name = asked_name or lease.handle.resolved.manifest.id
    first = await svc.first_chunk(run, request)

    def piece(text: str, calls: list[ToolCallDelta] | None = None) -> Any:
        if key != "message":
            return text
        message: dict[str, Any] = {"role": "assistant", "content": text}
        if calls and (tool_calls := ollama_calls(calls)):
            message["tool_calls"] = tool_calls
        return message

    want_logprobs = req.logprobs is not None

    if not stream:
        chunks = await svc.collect(run, first, request)
        last = chunks[-1]
        body = {
            "model": model_name,
            "created_at": _now_iso(),
            key: piece("".join(c.text for c in chunks), [d for c in chunks for d in c.tool_calls]),
            "done": True,
            **_final_stats(last, lease, started),
        }
        if key == "response":
            body["context"] = []
        if want_logprobs:
            body["logprobs"] = _logprob_entries(tuple(t for c in chunks for t in c.logprobs))
        return JSONResponse(body)

    def line(c: Chunk) -> bytes:
        data = {"model": model_name, "created_at": _now_iso(), key: piece(c.text), "done": False}
        if want_logprobs:
            data["logprobs"] = _logprob_entries(c.logprobs)
        return ndjson(data)

    async def lines() -> AsyncIterator[bytes]:
        last = first
        calls: list[ToolCallDelta] = []
        try:
            async for group in batches(run, first, lambda c: c.finish_reason is not None):
                last = group[-1]
                calls += (d for c in group for d in c.tool_calls)
                data = b"".join(line(c) for c in group if c.text or c.logprobs)
                if data:
                    yield data
            if calls:
                # As Ollama streams them: whole calls, in a message of their own.
                yield ndjson(
                    {
                        "model": model_name,
                        "created_at": _now_iso(),
                        key: piece("", calls),
                        "done": False,
                    }
                )
        except LocaraError as exc:
            yield ndjson(error_body(exc, ollama=True)[1])
            return
        except Exception:
            yield ndjson({"error": "internal error while generating"})
            return
        yield ndjson(
            {
                "model": model_name,
                "created_at": _now_iso(),
                key: piece(""),
                "done": True,
                **_final_stats(last, lease, started),
            }
        )

    return CancellableStream(lines(), run.cancel, "application/x-ndjson")


def _builder(
    request: Request,
    opts: Options,
    fmt: Format,
    messages: tuple[Message, ...] = (),
    prompt: str | None = None,
    logprobs: int | None = None,
    tools: tuple[Tool, ...] = (),
    adapters: AdapterList = None,
) -> Callable[[Lease], GenerationRequest]:
    """How to build the request once the model is leased (Service.start owns the lease)."""
    max_tokens = _max_tokens(opts)  # a bad num_predict is refused before any loading
    svc = service(request)

    def build(lease: Lease) -> GenerationRequest:
        if any(m.images for m in messages):
            vision.require_vision(lease)
        capped = svc.cap_tokens(max_tokens, lease)
        return _request(
            lease,
            opts,
            capped,
            fmt,
            messages=messages,
            prompt=prompt,
            logprobs=logprobs,
            tools=tools,
            adapters=request_adapters(svc.settings, adapters, lease),
        )

    return build


@router.post("/api/chat", response_model=None)
async def chat(body: ChatRequest, request: Request) -> Response:
    """Chat; streams NDJSON unless ``stream`` is false."""
    reference = _reference(body.model)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.messages:
        return await _load_only(request, reference, keep_alive, "message")
    messages = to_messages([(m.role, m.content) for m in body.messages])
    messages = ollama_messages(messages, body.messages)
    images = any(m.images for m in body.messages)
    if images:  # refused for a text-only model before anything is decoded or loaded
        settings = service(request).settings
        vision.check_vision_model(settings, reference)
        found = await in_thread(
            lambda: {
                i: vision.ollama_images(m.images, f"messages[{i}]", settings)
                for i, m in enumerate(body.messages)
                if m.images
            },
            name="locara-image",
        )
        messages = vision.attach(messages, found)
    tools = ollama_tools(body.tools)
    check_tools(messages, tools, ToolChoice())
    opts = _check_options(body.options)
    if (router := policy_router(request, body.model)) is not None:  # locara serve --policy
        if tools or images or body.adapters or body.logprobs:
            raise UsageError(
                "tools, images, adapters and logprobs are not routed by a policy",
                "name a model instead of the policy's",
            )
        sampling = {
            k: getattr(opts, k)
            for k in ("temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed")
        }
        return await routed_chat(
            request, router, messages, max_tokens=_max_tokens(opts), json_schema=_schema(body.format),
            sampling=sampling, stream=body.stream is not False, surface="ollama",
        )  # fmt: skip
    build = _builder(
        request,
        opts,
        body.format,
        messages=messages,
        logprobs=_logprobs(body.logprobs, body.top_logprobs),
        tools=tools,
        adapters=body.adapters,
    )
    return await _generation_response(
        request, reference, build, opts, keep_alive, body.stream is not False, body.model, "message"
    )


@router.post("/api/generate", response_model=None)
async def generate(body: GenerateRequest, request: Request) -> Response:
    """Completion of ``prompt`` (wrapped in the chat template unless ``raw``)."""
    reference = _reference(body.model)
    keep_alive = parse_keep_alive(body.keep_alive)
    if not body.prompt and not body.suffix:
        return await _load_only(request, reference, keep_alive, "response")
    if body.images:
        # /api/generate wraps the prompt in the chat template: send images with /api/chat,
        # where each belongs to a message.
        vision.check_vision_model(service(request).settings, reference)
        raise UsageError(
            "images on /api/generate are not supported", "send them with /api/chat messages"
        )
    if body.template:
        raise UsageError("custom templates are not supported", "omit template, or use raw: true")
    if body.suffix:
        raise UsageError("suffix (fill-in-the-middle) is not supported", "omit suffix")
    if body.context:
        raise UsageError("context (the deprecated token memory) is not supported", "use /api/chat")
    opts = _check_options(body.options)
    logprobs = _logprobs(body.logprobs, body.top_logprobs)
    if body.raw:
        build = _builder(
            request, opts, body.format, prompt=body.prompt, logprobs=logprobs,
            adapters=body.adapters,
        )  # fmt: skip
    else:
        msgs = ((Message("system", body.system),) if body.system else ()) + (
            Message("user", body.prompt),
        )
        build = _builder(
            request, opts, body.format, messages=msgs, logprobs=logprobs, adapters=body.adapters
        )
    return await _generation_response(
        request, reference, build, opts, keep_alive, body.stream is not False, body.model,
        "response",
    )  # fmt: skip


async def _embed(
    request: Request,
    reference: str | None,
    texts: list[str],
    opts: Options | None,
    keep_alive: float | None,
    truncate: bool,
) -> tuple[list[list[float]], int, Lease, float]:
    svc = service(request)
    started = time.perf_counter()
    vectors, n, lease = await svc.embed(
        reference or svc.settings.default_embedding_model,
        texts,
        Caller(app_name(request), "ollama"),
        truncate=truncate,
        n_ctx=opts.num_ctx if opts else None,
        keep_alive_s=keep_alive,
    )
    return vectors, n, lease, started


@router.post("/api/embed", response_model=None)
async def embed(body: EmbedRequest, request: Request) -> Response:
    """Embeddings for one string or a list; without ``model``, the default embedding model.

    As in Ollama, an input longer than the model's context is cut to fit unless
    ``truncate`` is false (then it is a 400).
    """
    texts = embedding_inputs(body.input)
    vectors, n, lease, started = await _embed(
        request,
        _reference(body.model),
        texts,
        body.options,
        parse_keep_alive(body.keep_alive),
        truncate=body.truncate is not False,
    )
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise UsageError(
            f"this model's embeddings have {len(vectors[0])} dimensions, not {body.dimensions}",
            "omit dimensions",
        )
    return JSONResponse(
        {
            "model": body.model or lease.handle.resolved.manifest.id,
            "embeddings": vectors,
            "total_duration": int((time.perf_counter() - started) * NS),
            "load_duration": int(lease.load_s * NS),
            "prompt_eval_count": n,
        }
    )


@router.post("/api/embeddings", response_model=None)
async def embeddings_legacy(body: LegacyEmbeddingsRequest, request: Request) -> Response:
    """The older single-text embedding endpoint (cuts over-long input like /api/embed)."""
    texts = embedding_inputs(body.prompt)
    vectors, _, _, _ = await _embed(
        request,
        _reference(body.model),
        texts,
        body.options,
        parse_keep_alive(body.keep_alive),
        truncate=True,
    )
    return JSONResponse({"embedding": vectors[0]})


@router.get("/api/tags")
async def tags(request: Request) -> dict[str, Any]:
    """Models in the store, and bundled models that run without a download."""
    svc = service(request)

    def entries() -> list[dict[str, Any]]:
        return [ollama_tag(e) for e in available_models(svc.settings)]

    return {"models": await in_thread(entries, name="locara-tags")}


def _ps_entry(m: LoadedInfo, registry: Registry, store: BlobStore) -> dict[str, Any]:
    """One loaded model, in Ollama's shape plus the plan behind it. Blocking (reads GGUF)."""
    from dataclasses import asdict

    try:
        manifest: ModelManifest | None = registry.get(m.model_id)
    except LocaraError:
        manifest = None
    expires = m.expires_at if m.expires_at is not None else time.time() + 10 * 365 * 86400
    plan = m.plan
    fmt = plan.artifact.format if plan.artifact else "gguf"
    blob = store.find(m.sha256)
    facts = model_facts(blob.path if blob is not None and not blob.is_tree else None, None, fmt)
    return {
        "name": f"{m.model_id}:latest",
        "model": f"{m.model_id}:latest",
        "size": m.estimated_bytes,
        "digest": m.sha256,
        "details": _details(manifest, m.quant, fmt, facts or ModelFacts("", "")),
        "expires_at": _iso(expires),
        "size_vram": plan.gpu_bytes,
        "context_length": m.n_ctx,
        # Beyond Ollama's fields: what the plan decided for this load, and why.
        "locara": {
            "backend": m.backend,
            "runtime": plan.runtime,
            "embedding": m.embedding,
            "options": asdict(m.options),
            "n_layers": plan.n_layers,
            "ram_bytes": plan.ram_bytes,
            "gpu_bytes": plan.gpu_bytes,
            "budget_bytes": plan.budget_bytes,
            "in_flight": m.in_flight,
            "requests": m.requests,
            "loaded_at": _iso(m.loaded_at),
            "expires_at": _iso(m.expires_at) if m.expires_at is not None else None,
            "reasons": list(plan.reasons),
            "warnings": list(plan.warnings),
            "overrides": list(plan.overrides),
        },
    }


@router.get("/api/ps")
async def ps(request: Request) -> dict[str, Any]:
    """Models loaded now: memory, offload, context, expiry, and the plan behind each."""
    svc = service(request)
    registry, store = Registry(svc.settings), BlobStore(svc.settings)
    loaded = svc.pool.loaded()
    entries = await asyncio.to_thread(lambda: [_ps_entry(m, registry, store) for m in loaded])
    return {"models": entries}


@router.post("/api/show")
async def show(body: ShowRequest, request: Request) -> dict[str, Any]:
    """A model's manifest, template, parameters and GGUF metadata."""
    from locara.device.gguf_meta import read_gguf
    from locara.planner.select import select_artifact

    svc = service(request)
    ref = parse_ref(_reference(body.model, required=True) or "")
    manifest = Registry(svc.settings).get(ref.id)
    store = BlobStore(svc.settings)
    artifact = await asyncio.to_thread(select_artifact, manifest, ref, store)
    blob = store.find(artifact.sha256) if artifact.sha256 else None
    path: Path | None = blob.path if blob is not None and not blob.is_tree else None
    source = None
    if blob is None:  # not stored yet: a bundled model shows what its package holds
        local = await asyncio.to_thread(local_source, artifact)
        if local is not None:
            source, path = local.url, local.file
    model_info: dict[str, Any] = {}
    template = manifest.config.chat_template
    if path is not None and artifact.format == "gguf":
        info = await asyncio.to_thread(read_gguf, path)
        model_info = {
            k: v
            for k, v in info.metadata.items()
            if isinstance(v, (int, float, str, bool)) and k != "tokenizer.chat_template"
        }
        template = template or info.chat_template
    facts = await asyncio.to_thread(model_facts, path, source, artifact.format)
    tools = (
        artifact.format == "gguf"
        and "tools" in (template or "")
        and await asyncio.to_thread(llama_server_installed)
    )
    params = "\n".join(f"{k} {v}" for k, v in manifest.config.default_params.items())
    params += "".join(f'\nstop "{s}"' for s in manifest.config.stop_tokens)
    return {
        "license": manifest.license,
        "modelfile": f"# Locara manifest {manifest.id} {manifest.version}\nFROM {ref}\n",
        "parameters": params.strip(),
        "template": template or "",
        "details": {
            **_details(manifest, artifact.quant, artifact.format, facts or ModelFacts("", "")),
            "stored": blob is not None,
        },
        "model_info": model_info,
        "capabilities": ollama_capabilities(manifest, tools),
        "modified_at": _now_iso(),
    }


@router.post("/api/pull", response_model=None)
async def pull(body: PullRequest, request: Request) -> Response:
    """Fetch and verify a model into the store; progress as NDJSON unless ``stream`` is false."""
    svc = service(request)
    reference = _reference(body.model, required=True) or ""
    ref = parse_ref(reference)
    Registry(svc.settings).get(ref.id)  # unknown models fail before the stream starts
    if body.stream is False:
        blob = await asyncio.to_thread(resolve, svc.settings, reference)
        return JSONResponse({"status": "success", "digest": f"sha256:{blob.blob.sha256}"})

    loop = asyncio.get_running_loop()
    queue: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    done = 0

    def progress(n: int, total: int | None) -> None:
        nonlocal done
        done += n
        event = {"status": "downloading", "total": total, "completed": done}
        loop.call_soon_threadsafe(queue.put_nowait, event)

    async def lines() -> AsyncIterator[bytes]:
        yield ndjson({"status": "pulling manifest"})
        task = asyncio.create_task(asyncio.to_thread(resolve, svc.settings, reference, progress))
        while not task.done() or not queue.empty():
            getter = asyncio.create_task(queue.get())
            finished, _ = await asyncio.wait({task, getter}, return_when=asyncio.FIRST_COMPLETED)
            if getter in finished:
                yield ndjson(getter.result())
            else:
                getter.cancel()
        try:
            resolved = task.result()
        except LocaraError as exc:
            yield ndjson(error_body(exc, ollama=True)[1])
            return
        digest = f"sha256:{resolved.blob.sha256}"
        yield ndjson({"status": "verifying sha256 digest", "digest": digest})
        yield ndjson({"status": "success", "digest": digest})

    return CancellableStream(lines(), lambda: None, "application/x-ndjson")


@router.delete("/api/delete", response_model=None)
async def delete(body: DeleteRequest, request: Request) -> Response:
    """Remove a model's stored blobs with ``locara rm``'s checks (apps, other processes)."""
    from locara.store.gc import remove_blob, stored_shas

    svc = service(request)
    ref = parse_ref(_reference(body.model, required=True) or "")
    Registry(svc.settings).get(ref.id)  # an unknown id is a 404 naming near matches
    store = BlobStore(svc.settings)
    targets = await asyncio.to_thread(stored_shas, store, ref)
    if not targets:
        raise UnknownModelError(str(ref), [])
    for sha in targets:
        # This server's own idle copy lets go first; one still serving keeps its lease,
        # and remove_blob then refuses like it refuses any other process's.
        await asyncio.to_thread(svc.pool.unload, None, sha)
        try:
            await asyncio.to_thread(remove_blob, store, sha)
        except (PinnedModelError, StoreError) as exc:
            raise HTTPError(409, f"{ref}: {exc.message}", exc.hint, code="model_in_use") from exc
    return Response(status_code=200)


@router.get("/api/version")
async def version() -> dict[str, str]:
    return {"version": __version__}
