"""The OpenAI-compatible API: chat and text completions (SSE streaming), embeddings, models."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import AsyncIterator, Callable
from functools import partial
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse, Response

from locara.backends.base import Chunk, GenerationRequest, TokenLogprob
from locara.engine.pool import Lease
from locara.engine.runner import ThreadedRun, batches, in_thread
from locara.errors import LocaraError, UnknownModelError, UnsupportedFeatureError, UsageError
from locara.server import vision
from locara.server.adapters import request_adapters
from locara.server.common import (
    app_name,
    check_sampling,
    parse_keep_alive,
    sampling_from,
    service,
    stop_tuple,
    to_messages,
)
from locara.server.errors import error_body
from locara.server.listing import available_models
from locara.server.openai_schema import (
    ChatCompletionRequest,
    ChatMessage,
    CompletionRequest,
    EmbeddingRequest,
    ImagePart,
    RefusalPart,
    ResponseFormatJSONObject,
    ResponseFormatJSONSchema,
    TextPart,
)
from locara.server.rag_routes import rag_context
from locara.server.router_routes import policy_router, routed_chat
from locara.server.service import Caller
from locara.server.streaming import CancellableStream, sse
from locara.server.tool_calls import (
    check_tools,
    openai_calls,
    openai_delta,
    openai_messages,
    openai_tool_choice,
    openai_tools,
)

router = APIRouter(tags=["openai"])


def _unsupported_common(body: ChatCompletionRequest | CompletionRequest) -> None:
    if body.n not in (None, 1):
        raise UsageError(
            f"n={body.n} is not supported: Locara returns one choice per request",
            "omit n (or pass n=1) and send several requests",
        )
    for name in ("frequency_penalty", "presence_penalty"):
        if getattr(body, name):
            raise UsageError(f"{name} is not supported", "omit it, or use repeat_penalty")
    if body.logit_bias:
        raise UsageError("logit_bias is not supported", "omit logit_bias")
    check_sampling(
        temperature=body.temperature,
        top_p=body.top_p,
        top_k=body.top_k,
        min_p=body.min_p,
        repeat_penalty=body.repeat_penalty,
        seed=body.seed,
    )


def _text_of(msg: ChatMessage) -> str:
    """The text the model sees; a refusal is what the assistant said in its turn."""
    if msg.content is None or msg.content == []:
        return msg.refusal or ""
    if isinstance(msg.content, str):
        return msg.content
    parts: list[str] = []
    for part in msg.content:
        if isinstance(part, TextPart):
            parts.append(part.text)
        elif isinstance(part, RefusalPart):
            parts.append(part.refusal)
        elif not isinstance(part, ImagePart):  # images travel beside the text (vision.py)
            kind = {"input_audio": "audio", "file": "file"}[part.type]
            raise UnsupportedFeatureError(
                f"{kind} inputs are not supported by this model", "send text content only"
            )
    return "".join(parts)


def _unsupported_chat(body: ChatCompletionRequest) -> None:
    """Refuse what Locara cannot do instead of answering as if it had been done."""
    if body.audio is not None or any(m != "text" for m in body.modalities or ()):
        raise UsageError("audio output is not supported", 'omit audio, or pass modalities ["text"]')
    if body.web_search_options is not None:
        raise UsageError("web search is not supported", "omit web_search_options")
    if body.moderation is not None:
        raise UsageError("moderation is not supported", "omit moderation")
    if body.functions or body.function_call is not None:
        raise UsageError(
            "functions and function_call (deprecated by OpenAI) are not supported",
            "pass tools and tool_choice instead",
        )


def _schema_of(body: ChatCompletionRequest) -> dict[str, Any] | None:
    fmt = body.response_format
    if isinstance(fmt, ResponseFormatJSONObject):
        return {}
    if isinstance(fmt, ResponseFormatJSONSchema):
        return fmt.json_schema.schema_ or {}
    return None


def _sampling_kwargs(body: ChatCompletionRequest | CompletionRequest) -> dict[str, Any]:
    return {
        "temperature": body.temperature,
        "top_p": body.top_p,
        "top_k": body.top_k,
        "min_p": body.min_p,
        "repeat_penalty": body.repeat_penalty,
        "seed": body.seed,
    }


def _is_last(c: Chunk) -> bool:
    return c.finish_reason is not None


def _chat_logprobs(items: tuple[TokenLogprob, ...]) -> list[dict[str, Any]]:
    def entry(tok: str, lp: float) -> dict[str, Any]:
        return {"token": tok, "logprob": lp, "bytes": list(tok.encode("utf-8"))}

    return [
        {**entry(t.token, t.logprob), "top_logprobs": [entry(a, b) for a, b in t.top]}
        for t in items
    ]


def _usage(last: Chunk) -> dict[str, Any]:
    u = last.usage
    if u is None:
        return {"prompt_tokens": last.prompt_tokens, "completion_tokens": 0, "total_tokens": 0}
    return {
        "prompt_tokens": u.prompt_tokens,
        "completion_tokens": u.completion_tokens,
        "total_tokens": u.total_tokens,
        "prompt_tokens_details": {"cached_tokens": u.cached_tokens},
    }


def _headers(lease: Lease) -> dict[str, str]:
    headers = {"X-Locara-Model": lease.handle.resolved.manifest.id}
    if lease.reload_reason:
        headers["X-Locara-Reload"] = lease.reload_reason
    return headers


def _stream_error(exc: BaseException) -> bytes:
    if isinstance(exc, LocaraError):
        return sse(error_body(exc, ollama=False)[1])
    return sse({"error": {"message": "internal error while generating", "type": "server_error"}})


def _usage_event(cid: str, obj: str, created: int, model: str, last: Chunk) -> bytes:
    """The final ``include_usage`` event: no choices, the request's token counts."""
    return sse(
        {
            "id": cid,
            "object": obj,
            "created": created,
            "model": model,
            "choices": [],
            "usage": _usage(last),
        }
    )


async def _sse_events(
    run: ThreadedRun[Chunk],
    first: Chunk,
    content: Callable[[Chunk], bytes],
    *,
    opening: bytes | None,
    closing: Callable[[Chunk], bytes],
    usage: Callable[[Chunk], bytes] | None,
) -> AsyncIterator[bytes]:
    """The SSE body shared by chat and text completions: tokens in batches, then the end.

    An error after streaming began cannot change the HTTP status any more, so it is
    sent as an error event and the stream ends.
    """
    if opening is not None:
        yield opening
    last = first
    try:
        async for group in batches(run, first, _is_last):
            last = group[-1]
            data = b"".join(content(c) for c in group if c.text or c.logprobs or c.tool_calls)
            if data:
                yield data
    except Exception as exc:
        yield _stream_error(exc)
        return
    yield closing(last)
    if usage is not None:
        yield usage(last)
    yield sse("[DONE]")


@router.post("/v1/chat/completions", response_model=None)
async def chat_completions(body: ChatCompletionRequest, request: Request) -> Response:
    """Chat completion; ``stream: true`` streams server-sent events."""
    svc = service(request)
    caller = Caller(app_name(request), "openai")
    _unsupported_common(body)
    _unsupported_chat(body)
    messages = to_messages([(m.role, _text_of(m)) for m in body.messages])
    messages = openai_messages(messages, body.messages)
    images = [
        (i, j, part.image_url.url)
        for i, m in enumerate(body.messages)
        for j, part in enumerate(m.content if isinstance(m.content, list) else ())
        if isinstance(part, ImagePart)
    ]
    if images:  # refused for a text-only model before anything is decoded or loaded
        vision.check_vision_model(svc.settings, body.model)
        found = await in_thread(vision.openai_images, images, svc.settings, name="locara-image")
        messages = vision.attach(messages, found)
    messages = await rag_context(request, body.locara, messages)  # "locara": {"rag": ...}
    tools, tool_choice = openai_tools(body.tools), openai_tool_choice(body.tool_choice)
    check_tools(messages, tools, tool_choice)
    schema = _schema_of(body)
    keep_alive = parse_keep_alive(body.keep_alive)
    max_tokens = body.max_completion_tokens or body.max_tokens
    if (router := policy_router(request, body.model)) is not None:  # locara serve --policy
        if tools or images or body.adapters or body.logprobs:
            raise UsageError(
                "tools, images, adapters and logprobs are not routed by a policy",
                "name a model instead of the policy's",
            )
        return await routed_chat(
            request, router, messages, max_tokens=max_tokens, json_schema=schema,
            sampling=_sampling_kwargs(body), stream=bool(body.stream),
        )  # fmt: skip

    def build(lease: Lease) -> GenerationRequest:
        if images:
            vision.require_vision(lease)
        return GenerationRequest(
            messages=messages,
            max_tokens=svc.cap_tokens(max_tokens, lease),
            sampling=sampling_from(lease.handle.resolved.manifest, **_sampling_kwargs(body)),
            stop=stop_tuple(body.stop),
            json_schema=schema,
            logprobs=(body.top_logprobs or 0) if body.logprobs else None,
            tools=tools,
            tool_choice=tool_choice,
            parallel_tool_calls=body.parallel_tool_calls,
            adapters=request_adapters(svc.settings, body.adapters, lease),
        ).validate()

    lease, req, run = await svc.start(
        body.model, caller, build, n_ctx=body.num_ctx, keep_alive_s=keep_alive
    )
    first = await svc.first_chunk(run, request)
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model_name = body.model or lease.handle.resolved.manifest.id

    if not body.stream:
        chunks = await svc.collect(run, first, request)
        last = chunks[-1]
        lps = tuple(t for c in chunks for t in c.logprobs)
        calls = openai_calls([d for c in chunks for d in c.tool_calls])
        text = "".join(c.text for c in chunks)
        message: dict[str, Any] = {
            "role": "assistant",
            "content": text if text or not calls else None,  # null beside calls, as OpenAI
            "refusal": None,
        }
        if calls:
            message["tool_calls"] = calls
        choice: dict[str, Any] = {
            "index": 0,
            "message": message,
            "finish_reason": last.finish_reason or "stop",
            "logprobs": {"content": _chat_logprobs(lps), "refusal": None}
            if req.logprobs is not None
            else None,
        }
        return JSONResponse(
            {
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model_name,
                "system_fingerprint": f"locara-{lease.handle.backend}",
                "choices": [choice],
                "usage": _usage(last),
            },
            headers=_headers(lease),
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def event(delta: dict[str, Any], finish: str | None, c: Chunk | None) -> bytes:
        choice = {"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}
        if c is not None and req.logprobs is not None:
            choice["logprobs"] = {"content": _chat_logprobs(c.logprobs), "refusal": None}
        data: dict[str, Any] = {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model_name,
            "system_fingerprint": f"locara-{lease.handle.backend}",
            "choices": [choice],
        }
        if include_usage:
            data["usage"] = None
        return sse(data)

    # The per-token event, serialised once around a placeholder: on a small machine the
    # server's own CPU time per token competes with the decoding threads.
    head, _, tail = event({"content": "\x00"}, None, None).partition(b'"\\u0000"')

    def content(c: Chunk) -> bytes:
        if c.tool_calls:
            text = event({"content": c.text}, None, None) if c.text else b""
            return text + event({"tool_calls": openai_delta(c.tool_calls)}, None, None)
        if req.logprobs is not None:
            return event({"content": c.text}, None, c)
        return head + json.dumps(c.text).encode() + tail

    events = _sse_events(
        run,
        first,
        content,
        opening=event({"role": "assistant", "content": ""}, None, None),
        closing=lambda last: event({}, last.finish_reason or "stop", None),
        usage=partial(_usage_event, cid, "chat.completion.chunk", created, model_name)
        if include_usage
        else None,
    )
    return CancellableStream(events, run.cancel, "text/event-stream", _headers(lease))


def _completion_logprobs(items: tuple[TokenLogprob, ...], offset: int) -> dict[str, Any]:
    offsets = []
    for t in items:
        offsets.append(offset)
        offset += len(t.token)
    return {
        "tokens": [t.token for t in items],
        "token_logprobs": [t.logprob for t in items],
        "top_logprobs": [dict(t.top) for t in items],
        "text_offset": offsets,
    }


@router.post("/v1/completions", response_model=None)
async def completions(body: CompletionRequest, request: Request) -> Response:
    """Raw text completion (the prompt is not wrapped in a chat template)."""
    svc = service(request)
    caller = Caller(app_name(request), "openai")
    _unsupported_common(body)
    prompt = body.prompt
    if isinstance(prompt, list):
        if len(prompt) != 1 or not isinstance(prompt[0], str):
            raise UsageError(
                "prompt must be one string (batches and token ids are not supported)",
                "send one text prompt per request",
            )
        prompt = prompt[0]
    assert isinstance(prompt, str)
    if body.suffix:
        raise UsageError("suffix (fill-in-the-middle) is not supported", "omit suffix")
    if body.best_of not in (None, 1):
        raise UsageError("best_of > 1 is not supported", "omit best_of")
    keep_alive = parse_keep_alive(body.keep_alive)

    def build(lease: Lease) -> GenerationRequest:
        return GenerationRequest(
            prompt=prompt,
            max_tokens=svc.cap_tokens(body.max_tokens, lease),
            sampling=sampling_from(lease.handle.resolved.manifest, **_sampling_kwargs(body)),
            stop=stop_tuple(body.stop),
            logprobs=body.logprobs,
            adapters=request_adapters(svc.settings, body.adapters, lease),
        ).validate()

    lease, req, run = await svc.start(
        body.model, caller, build, n_ctx=body.num_ctx, keep_alive_s=keep_alive
    )
    first = await svc.first_chunk(run, request)
    cid = f"cmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model_name = body.model or lease.handle.resolved.manifest.id
    echo = prompt if body.echo else ""

    if not body.stream:
        chunks = await svc.collect(run, first, request)
        last = chunks[-1]
        lps = tuple(t for c in chunks for t in c.logprobs)
        return JSONResponse(
            {
                "id": cid,
                "object": "text_completion",
                "created": created,
                "model": model_name,
                "system_fingerprint": f"locara-{lease.handle.backend}",
                "choices": [
                    {
                        "index": 0,
                        "text": echo + "".join(c.text for c in chunks),
                        "finish_reason": last.finish_reason or "stop",
                        "logprobs": _completion_logprobs(lps, len(echo))
                        if req.logprobs is not None
                        else None,
                    }
                ],
                "usage": _usage(last),
            },
            headers=_headers(lease),
        )

    include_usage = bool(body.stream_options and body.stream_options.include_usage)

    def event(text: str, finish: str | None, c: Chunk | None) -> bytes:
        lp = None
        if c is not None and req.logprobs is not None:
            lp = _completion_logprobs(c.logprobs, 0)
        data: dict[str, Any] = {
            "id": cid,
            "object": "text_completion",
            "created": created,
            "model": model_name,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": lp}],
        }
        return sse(data)

    head, _, tail = event("\x00", None, None).partition(b'"\\u0000"')

    def content(c: Chunk) -> bytes:
        if req.logprobs is not None:
            return event(c.text, None, c)
        return head + json.dumps(c.text).encode() + tail

    events = _sse_events(
        run,
        first,
        content,
        opening=event(echo, None, None) if echo else None,
        closing=lambda last: event("", last.finish_reason or "stop", None),
        usage=partial(_usage_event, cid, "text_completion", created, model_name)
        if include_usage
        else None,
    )
    return CancellableStream(events, run.cancel, "text/event-stream", _headers(lease))


def embedding_inputs(raw: str | list[str] | list[int] | list[list[int]]) -> list[str]:
    texts = [raw] if isinstance(raw, str) else raw
    if not texts:
        raise UsageError("input is empty", "send a string or a non-empty list of strings")
    if not all(isinstance(t, str) for t in texts):
        raise UsageError("token-id inputs are not supported", "send text")
    out = [t for t in texts if isinstance(t, str)]
    if any(not t for t in out):
        raise UsageError("input contains an empty string", "remove empty strings")
    if len(out) > 2048:
        raise UsageError(f"{len(out)} inputs; at most 2048 per request", "split the batch")
    return out


@router.post("/v1/embeddings", response_model=None)
async def embeddings(body: EmbeddingRequest, request: Request) -> Response:
    """Embeddings; without ``model``, the default embedding model."""
    svc = service(request)
    caller = Caller(app_name(request), "openai")
    texts = embedding_inputs(body.input)
    reference = body.model or svc.settings.default_embedding_model
    # OpenAI refuses over-long input (no truncation): so does this route.
    vectors, n_tokens, lease = await svc.embed(
        reference,
        texts,
        caller,
        truncate=False,
        n_ctx=body.num_ctx,
        keep_alive_s=parse_keep_alive(body.keep_alive),
    )
    model_name = body.model or lease.handle.resolved.manifest.id
    if body.dimensions is not None and vectors and body.dimensions != len(vectors[0]):
        raise UsageError(
            f"this model's embeddings have {len(vectors[0])} dimensions, not {body.dimensions}",
            "omit dimensions",
        )
    data = []
    for i, v in enumerate(vectors):
        emb: Any = v
        if body.encoding_format == "base64":
            import numpy as np

            emb = base64.b64encode(np.asarray(v, dtype="<f4").tobytes()).decode("ascii")
        data.append({"object": "embedding", "index": i, "embedding": emb})
    return JSONResponse(
        {
            "object": "list",
            "data": data,
            "model": model_name,
            "usage": {"prompt_tokens": n_tokens, "total_tokens": n_tokens},
        }
    )


async def _model_entries(request: Request) -> list[dict[str, Any]]:
    """One entry per model id: stored ones, and bundled ones that run without a download
    (``stored`` says which; a bundled model is copied into the store on first use)."""
    svc = service(request)
    seen: dict[str, dict[str, Any]] = {}
    for m in await in_thread(available_models, svc.settings, name="locara-models"):
        entry = seen.setdefault(
            m.model_id,
            {
                "id": m.model_id,
                "object": "model",
                "created": int(m.modified_at),
                "owned_by": "locara",
                "stored": m.stored,
            },
        )
        entry["stored"] = entry["stored"] or m.stored
    for loaded in svc.pool.loaded():
        seen.setdefault(
            loaded.model_id,
            {
                "id": loaded.model_id,
                "object": "model",
                "created": int(loaded.loaded_at),
                "owned_by": "locara",
                "stored": True,
            },
        )
    return list(seen.values())


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    """Models in the store, models bundled in installed packages, and any loaded ones."""
    return {"object": "list", "data": await _model_entries(request)}


@router.get("/v1/models/{model}")
async def get_model(model: str, request: Request) -> dict[str, Any]:
    """One model of the list above; 404 for any other."""
    for entry in await _model_entries(request):
        if entry["id"] == model:
            return entry
    raise UnknownModelError(model)
