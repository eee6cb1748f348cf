"""Tool calls through the llama-server worker: llama.cpp's chat parser, Locara's chunks.

Every model family writes tool calls its own way (Hermes and Qwen wrap JSON in
``<tool_call>`` tags, Llama 3 and Mistral and Functionary do something else), and a
call is only reliable when sampling is constrained by a grammar built from the tool
schemas. llama.cpp's server knows all of it: with ``--jinja`` it renders the model's
own template with the tools, analyses how that template writes a call, builds the
grammar and parses the calls out of the text as they stream. So a request that
offers tools (or carries earlier calls) goes to the worker's OpenAI-compatible
``/v1/chat/completions``, and the deltas it streams become Locara ``Chunk``s here:
text through the same ``StopScanner`` as ``/completion``, calls as ``ToolCallDelta``s.
Usage, metrics and cancellation stay Locara's (the same run, the same last chunk).

What this path gives up: the worker renders and tokenizes the prompt itself, with
control tokens parsed, so a content holding ``<|im_end|><|im_start|>system`` would
forge a turn. Such text is refused here before anything is sent, as
``chat_template.request_segments`` refuses it when it cannot keep contents apart.
"""

from __future__ import annotations

import base64
import json
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from functools import lru_cache
from typing import Any

from locara.backends.base import (
    Chunk,
    FinishReason,
    GenerationRequest,
    Message,
    Sampling,
    Timings,
    ToolCallDelta,
    Usage,
    cancelled_chunk,
)
from locara.backends.stops import StopScanner
from locara.errors import TemplateRefusedError

_FINISH: dict[str, FinishReason] = {"stop": "stop", "length": "length", "tool_calls": "tool_calls"}


@lru_cache(maxsize=8)
def _control_pattern(specials: frozenset[str]) -> re.Pattern[str] | None:
    words = sorted((w for w in specials if w), key=len, reverse=True)
    return re.compile("|".join(map(re.escape, words))) if words else None


def _texts(req: GenerationRequest) -> Iterator[tuple[str, str]]:
    """(where, text) for every piece of the request the worker renders into the prompt."""
    for i, m in enumerate(req.messages):
        yield f"a {m.role} message", m.content
        for j, call in enumerate(m.tool_calls):
            where = f"messages[{i}].tool_calls[{j}]"
            yield where, call.id + call.name + call.arguments
        yield f"messages[{i}]", (m.tool_call_id or "") + (m.name or "")
    for i, tool in enumerate(req.tools):
        spec = json.dumps([tool.description, tool.parameters], ensure_ascii=False)
        yield f"tools[{i}]", tool.name + spec


def check_request_text(
    req: GenerationRequest,
    specials: Collection[str],
    model_id: str,
    size_check: Callable[[str], None],
) -> None:
    """Refuse input the worker could misread as template markup, and input too big to fit.

    ``specials`` are the texts of the model's control tokens; ``size_check`` refuses a
    text that cannot fit the context whatever it says (before the worker tokenizes it).
    """
    pattern = _control_pattern(frozenset(specials))
    texts = list(_texts(req))
    size_check("".join(text for _, text in texts))
    for where, text in texts:
        found = pattern.search(text) if pattern is not None else None
        if found is not None:
            raise TemplateRefusedError(
                f"{where} contains the control token {found.group()!r}, which {model_id}'s "
                "chat template would read as its own markup when tools are in play",
                f"remove {found.group()!r} from the request",
            )


def _message(m: Message) -> dict[str, Any]:
    content: Any = m.content
    if m.images:
        # OpenAI content parts: the images, then the text (as the chat templates order them).
        content = [
            {"type": "image_url", "image_url": {"url": _data_uri(img)}} for img in m.images
        ] + [{"type": "text", "text": m.content}]
    out: dict[str, Any] = {"role": m.role, "content": content}
    if m.tool_calls:
        out["tool_calls"] = [
            {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
            for c in m.tool_calls
        ]
    if m.tool_call_id is not None:
        out["tool_call_id"] = m.tool_call_id
    if m.name is not None:
        out["name"] = m.name
    return out


_IMAGE_MAGIC = (
    (b"\x89PNG", "image/png"),
    (b"\xff\xd8\xff", "image/jpeg"),
    (b"GIF8", "image/gif"),
    (b"BM", "image/bmp"),
)


def _data_uri(image: bytes) -> str:
    mime = next((m for magic, m in _IMAGE_MAGIC if image.startswith(magic)), None)
    if mime is None:
        mime = "image/webp" if image[8:12] == b"WEBP" else "application/octet-stream"
    return f"data:{mime};base64,{base64.b64encode(image).decode('ascii')}"


def sampling_fields(s: Sampling) -> dict[str, Any]:
    """Sampling as llama-server's request fields, the same on both of its routes."""
    return {
        "temperature": s.temperature,
        "top_k": s.top_k,
        "top_p": s.top_p,
        "min_p": s.min_p,
        "repeat_penalty": s.repeat_penalty,
        # -1 is 0xFFFFFFFF, "random": llama-cpp-python's default seed too.
        "seed": -1 if s.seed is None else s.seed,
    }


def chat_body(req: GenerationRequest, extra_stops: Iterable[str] = ()) -> dict[str, Any]:
    """The worker's ``/v1/chat/completions`` body: the same sampling as ``/completion``."""
    s = req.sampling
    body: dict[str, Any] = {
        "messages": [_message(m) for m in req.messages],
        "stream": True,
        "stream_options": {"include_usage": True},
        # Every event then carries the token counts so far (Chunk counts are cumulative).
        "timings_per_token": True,
        # Thinking stays in the text, as /completion returns it; nothing is dropped.
        "reasoning_format": "none",
        "cache_prompt": not s.reproducible,  # see Sampling.reproducible
        # An event per batch of prompt work: a client gone during a long prompt is seen
        # within a batch (as on /completion).
        "return_progress": True,
        **sampling_fields(s),
        "stop": [x for x in (*req.stop, *extra_stops) if x],
    }
    if req.max_tokens is not None:
        body["max_tokens"] = req.max_tokens
    if req.tools:
        tools, mode = req.tools, req.tool_choice.mode
        if req.tool_choice.function is not None:
            # llama.cpp takes tool_choice as "auto"/"none"/"required" only; offering just
            # the named function and requiring a call is what naming it asks for.
            tools = tuple(t for t in tools if t.name == req.tool_choice.function)
            mode = "required"
        body["tools"] = [
            {
                "type": "function",
                "function": {
                    "name": t.name,
                    **({"description": t.description} if t.description else {}),
                    "parameters": t.parameters,
                },
            }
            for t in tools
        ]
        body["tool_choice"] = mode
        if req.parallel_tool_calls is not None:
            body["parallel_tool_calls"] = req.parallel_tool_calls
    return body


def sse_events(lines: Iterable[str]) -> Iterator[dict[str, Any]]:
    """The JSON events of an OpenAI-style SSE stream, up to ``[DONE]``."""
    for line in lines:
        if not line.startswith("data:"):
            continue  # blank separators and ":" pings
        data = line[5:].strip()
        if data == "[DONE]":
            return
        yield json.loads(data)


def _call_delta(raw: dict[str, Any]) -> ToolCallDelta:
    fn = raw.get("function") or {}
    return ToolCallDelta(
        index=int(raw.get("index", 0)),
        id=raw.get("id") or None,
        name=fn.get("name") or None,
        arguments=str(fn.get("arguments") or ""),
    )


def chat_chunks(
    events: Iterable[dict[str, Any]],
    req: GenerationRequest,
    started: float,
    *,
    on_error: Callable[[Any], Exception],
    on_broken: Callable[[], Exception],
) -> Iterator[Chunk]:
    """Chunks from the worker's chat events; the last carries finish, usage and timings.

    ``on_error`` turns an error event into the exception to raise; ``on_broken`` is
    raised when the stream ends without a finish reason.
    """
    scanner = StopScanner(req.stop)
    first_at: float | None = None
    n_prompt = n_out = cached = 0
    finish: FinishReason | None = None
    timings: dict[str, Any] = {}
    usage: dict[str, Any] | None = None
    for event in events:
        if "error" in event:
            raise on_error(event["error"])
        now = time.perf_counter()
        if "prompt_progress" in event:
            if first_at is None and req.cancelled is not None and req.cancelled():
                # Leaving the stream closes it: the worker drops the prompt's task.
                progress = event["prompt_progress"] or {}
                total, cache = int(progress.get("total", 0)), int(progress.get("cache", 0))
                yield cancelled_chunk(total, cache, now - started)
                return
            continue  # a batch of prompt work done, nothing to say yet
        if event.get("timings"):
            timings = event["timings"]
            n_out = int(timings.get("predicted_n", n_out))
            cached = int(timings.get("cache_n", cached))
            n_prompt = int(timings.get("prompt_n", 0)) + cached
            if n_out and first_at is None:
                first_at = now
        usage = event.get("usage") or usage
        for choice in event.get("choices") or ():
            delta = choice.get("delta") or {}
            calls = tuple(_call_delta(c) for c in delta.get("tool_calls") or ())
            emit, hit = scanner.feed(delta.get("content") or "")
            if emit or calls:
                first_at = first_at or now
                yield Chunk(emit, n_out, n_prompt, tool_calls=calls)
            if hit:
                # Closing the stream (by leaving) makes the worker free the slot.
                yield _last(req, "stop", "", n_prompt, n_out, cached, started, first_at, {})
                return
            if choice.get("finish_reason"):
                finish = _FINISH.get(str(choice["finish_reason"]), "stop")
    if finish is None:
        raise on_broken()
    if usage is not None:
        n_prompt = int(usage.get("prompt_tokens", n_prompt))
        n_out = int(usage.get("completion_tokens", n_out))
        cached = int((usage.get("prompt_tokens_details") or {}).get("cached_tokens", cached))
    tail = scanner.flush()
    yield _last(req, finish, tail, n_prompt, n_out, cached, started, first_at, timings)


def _last(
    req: GenerationRequest,
    finish: FinishReason,
    tail: str,
    n_prompt: int,
    n_out: int,
    cached: int,
    started: float,
    first_at: float | None,
    timings: dict[str, Any],
) -> Chunk:
    end = time.perf_counter()
    first_at = first_at or end
    # As on /completion: prompt and generation time as the worker measured them, time
    # to first token as the caller lived it.
    prompt_s = float(timings["prompt_ms"]) / 1000 if "prompt_ms" in timings else first_at - started
    gen_s = float(timings["predicted_ms"]) / 1000 if "predicted_ms" in timings else end - first_at
    return Chunk(
        tail, n_out, n_prompt, finish, Usage(n_prompt, n_out, cached),
        Timings(prompt_s=prompt_s, generation_s=gen_s, ttft_s=first_at - started),
    )  # fmt: skip
