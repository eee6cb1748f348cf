"""Tools on the HTTP surfaces: OpenAI's and Ollama's shapes to and from the engine's.

The routes parse a body with pydantic (``openai_schema``, ``ollama_schema``); this
module turns its tools, tool choice and tool-carrying messages into the backend's
values (``Tool``, ``ToolChoice``, ``Message.tool_calls``), checks them before any
model is loaded, and formats the calls a model made the way each API returns them.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

from locara.backends.base import (
    GenerationRequest,
    Message,
    Tool,
    ToolCall,
    ToolCallDelta,
    ToolChoice,
    collect_tool_calls,
)
from locara.errors import UsageError
from locara.server import ollama_schema as ollama
from locara.server import openai_schema as openai

_ANY_OBJECT: dict[str, Any] = {"type": "object", "properties": {}}


def check_tools(messages: tuple[Message, ...], tools: tuple[Tool, ...], choice: ToolChoice) -> None:
    """Refuse bad tools, tool choices and tool calls before a model is loaded for them."""
    GenerationRequest(messages=messages, tools=tools, tool_choice=choice).validate()


# -- OpenAI -----------------------------------------------------------------------------


def openai_tools(raw: Sequence[openai.Tool] | None) -> tuple[Tool, ...]:
    return tuple(
        Tool(t.function.name, t.function.description, t.function.parameters or dict(_ANY_OBJECT))
        for t in raw or ()
    )


def openai_tool_choice(raw: openai.ToolChoiceParam) -> ToolChoice:
    if raw is None:
        return ToolChoice()
    if isinstance(raw, openai.NamedToolChoice):
        return ToolChoice("required", raw.function.name)
    return ToolChoice(raw)


def openai_messages(
    messages: tuple[Message, ...], raw: Sequence[openai.ChatMessage]
) -> tuple[Message, ...]:
    """``messages`` (roles and texts) with the calls and call ids their sources carry."""
    out = []
    for i, (m, src) in enumerate(zip(messages, raw, strict=True)):
        if m.role == "tool" and not src.tool_call_id:
            raise UsageError(
                f"messages[{i}] is a tool result without tool_call_id",
                "pass the id of the assistant's tool call it answers",
            )
        calls = tuple(
            ToolCall(c.id, c.function.name, c.function.arguments) for c in src.tool_calls or ()
        )
        out.append(replace(m, tool_calls=calls, tool_call_id=src.tool_call_id or None))
    return tuple(out)


def openai_calls(deltas: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """A reply's ``message.tool_calls``."""
    return [
        {"id": c.id, "type": "function", "function": {"name": c.name, "arguments": c.arguments}}
        for c in collect_tool_calls(deltas)
    ]


def openai_delta(deltas: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """A streamed ``delta.tool_calls``: a call's first piece has its id and name."""
    out = []
    for d in deltas:
        fn: dict[str, Any] = {"arguments": d.arguments}
        piece: dict[str, Any] = {"index": d.index, "function": fn}
        if d.id is not None:
            piece["id"] = d.id
            piece["type"] = "function"
        if d.name is not None:
            fn["name"] = d.name
        out.append(piece)
    return out


# -- Ollama -----------------------------------------------------------------------------


def ollama_tools(raw: Sequence[ollama.Tool] | None) -> tuple[Tool, ...]:
    return tuple(
        Tool(t.function.name, t.function.description, t.function.parameters or dict(_ANY_OBJECT))
        for t in raw or ()
    )


def ollama_messages(
    messages: tuple[Message, ...], raw: Sequence[ollama.OllamaMessage]
) -> tuple[Message, ...]:
    """``messages`` with their tool calls; Ollama's calls carry no ids, so they get some
    (``call_<message>_<call>``), and a tool result names its function (``tool_name``)."""
    out = []
    for i, (m, src) in enumerate(zip(messages, raw, strict=True)):
        calls = tuple(
            ToolCall(
                c.id or f"call_{i}_{j}",
                c.function.name,
                json.dumps(c.function.arguments, ensure_ascii=False),
            )
            for j, c in enumerate(src.tool_calls or ())
        )
        out.append(replace(m, tool_calls=calls, name=src.tool_name or None))
    return tuple(out)


def ollama_calls(deltas: Sequence[ToolCallDelta]) -> list[dict[str, Any]]:
    """A reply's ``message.tool_calls``, arguments as objects (Ollama's shape).

    A call whose arguments are not a complete JSON object was cut off by the token limit
    (the worker's grammar allows nothing else): it is left out, and done_reason says
    "length".
    """
    out = []
    for i, c in enumerate(collect_tool_calls(deltas)):
        try:
            args = json.loads(c.arguments)
        except ValueError:
            continue
        if isinstance(args, dict):
            out.append({"id": c.id, "function": {"index": i, "name": c.name, "arguments": args}})
    return out
