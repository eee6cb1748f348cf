"""Chat templates rendered only in a sandboxed Jinja environment.

Templates come from model files and manifests, i.e. from strangers: the immutable
sandbox stops attribute access to Python internals and mutation of the inputs.
The environment mirrors Hugging Face's (trim_blocks, lstrip_blocks, loop controls,
``raise_exception``), so templates written for transformers render the same here.
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Sequence
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from locara.backends.base import GenerationRequest, Message
from locara.errors import ModelFormatError, UnsupportedFeatureError


def _raise(message: str) -> None:
    raise jinja2.TemplateError(message)


@lru_cache(maxsize=1)
def _environment() -> ImmutableSandboxedEnvironment:
    env = ImmutableSandboxedEnvironment(
        trim_blocks=True,
        lstrip_blocks=True,
        extensions=["jinja2.ext.loopcontrols"],
        undefined=jinja2.Undefined,
        autoescape=False,
    )
    env.globals["raise_exception"] = _raise
    env.globals["strftime_now"] = lambda fmt: dt.datetime.now().strftime(fmt)
    env.filters["tojson"] = lambda v, indent=None: json.dumps(v, indent=indent, ensure_ascii=False)
    return env


@lru_cache(maxsize=32)
def _compile(source: str) -> jinja2.Template:
    try:
        return _environment().from_string(source)
    except jinja2.TemplateError as exc:
        raise ModelFormatError(
            f"the model's chat template does not compile: {exc}",
            "set config.chat_template in the manifest to a working template",
        ) from exc


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    extra: dict[str, Any] | None = None,
) -> str:
    """Render ``messages`` with ``template`` as the model expects its prompt."""
    try:
        return _compile(template).render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **(extra or {}),
        )
    except jinja2.TemplateError as exc:
        raise ModelFormatError(
            f"the chat template refused these messages: {exc}",
            "check the message roles and order this model accepts",
        ) from exc


def request_prompt(
    req: GenerationRequest, template: str | None, model_id: str, bos_token: str, eos_token: str
) -> str:
    """The prompt text for a request: its raw prompt, or its messages through the template."""
    if req.prompt is not None:
        return req.prompt
    if template is None:
        raise UnsupportedFeatureError(
            f"{model_id} has no chat template",
            "set config.chat_template in its manifest, or send a plain prompt",
        )
    return render_chat(template, req.messages, bos_token=bos_token, eos_token=eos_token)
