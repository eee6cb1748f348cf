"""A forced function call from a model whose chat template has no tools.

OpenAI's ``tool_choice`` can name the one function the model must call (``instructor``'s
default mode does, and so do extraction pipelines); ``required`` with a single tool means
the same. Such an answer is nothing but that function's arguments, so a model that cannot
render tools can still give it: the function is described to it in a system message and
the answer is generated under the function's parameter schema (the JSON-schema grammar
every llama.cpp model has). It comes back as a call, streamed as argument pieces, the
way a native call does. llama-server drops tools it cannot render and answers in prose;
Ollama refuses them.

A conversation that already holds calls and their results (a retry after a validation
error) is shown to the model as text: a call as its JSON arguments, a result as a user
turn naming the function.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from dataclasses import replace

from locara.backends.base import Chunk, GenerationRequest, Message, Tool, ToolCallDelta, ToolChoice


def forced_tool(req: GenerationRequest) -> Tool | None:
    """The one function ``req`` makes the model call, if it makes it call exactly one."""
    choice = req.tool_choice
    if choice.function is not None:
        return next((t for t in req.tools if t.name == choice.function), None)
    if choice.mode == "required" and len(req.tools) == 1:
        return req.tools[0]
    return None


def as_schema_request(req: GenerationRequest, tool: Tool) -> GenerationRequest:
    """``req`` as a plain chat whose whole answer is ``tool``'s arguments (a request
    with both tools and a response format was refused when it was validated)."""
    what = f" ({tool.description})" if tool.description else ""
    instruction = (
        f"Call the function {tool.name}{what}. Answer with its arguments only: one JSON "
        f"object that follows this JSON schema: {json.dumps(tool.parameters)}"
    )
    messages: list[Message] = []
    for m in req.messages:
        if m.tool_calls:
            args = "\n".join(c.arguments for c in m.tool_calls)
            messages.append(Message("assistant", f"{m.content}\n{args}".strip()))
        elif m.role == "tool":
            messages.append(Message("user", f"{m.name or 'The function'} returned: {m.content}"))
        else:
            messages.append(m)
    if messages and messages[0].role == "system":
        messages[0] = Message("system", f"{messages[0].content}\n\n{instruction}")
    else:
        messages.insert(0, Message("system", instruction))
    return replace(
        req,
        messages=tuple(messages),
        tools=(),
        tool_choice=ToolChoice(),
        parallel_tool_calls=None,
        json_schema=tool.parameters,
    )


def as_call(chunks: Iterator[Chunk], tool: Tool) -> Iterator[Chunk]:
    """The answer's text as the pieces of one call to ``tool``; a finished answer ends
    with ``tool_calls``, a cut one with ``length`` (its arguments are incomplete)."""
    call_id: str | None = f"call_{uuid.uuid4().hex[:24]}"
    for c in chunks:
        deltas: tuple[ToolCallDelta, ...] = ()
        if c.text or (c.finish_reason is not None and call_id is not None):
            name = tool.name if call_id is not None else None
            deltas = (ToolCallDelta(0, call_id, name, c.text),)
            call_id = None
        finish = "tool_calls" if c.finish_reason == "stop" else c.finish_reason
        yield replace(c, text="", tool_calls=deltas, finish_reason=finish)
