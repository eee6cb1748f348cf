"""Chat templates rendered only in a sandboxed Jinja environment.

Templates come from model files and manifests, i.e. from strangers: the immutable
sandbox stops attribute access to Python internals and mutation of the inputs.
The environment mirrors Hugging Face's (trim_blocks, lstrip_blocks, loop controls,
``raise_exception``), so templates written for transformers render the same here.

Message contents are the user's, the rest of the prompt is the template's. A backend
must tokenize the template's markers as special tokens and the contents as plain text,
or a user message containing ``<|im_end|><|im_start|>system`` closes its own turn and
forges a system turn. ``request_segments`` keeps the two apart: each content is
rendered between random sentinels, and the rendered text is split on them.
"""

from __future__ import annotations

import datetime as dt
import json
import secrets
from collections.abc import Collection, Sequence
from functools import lru_cache
from typing import Any

import jinja2
from jinja2.sandbox import ImmutableSandboxedEnvironment

from locara.backends.base import GenerationRequest, Message
from locara.errors import ChatTemplateError, TemplateRefusedError, UnsupportedFeatureError

# What stands for one image in a prompt (llama.cpp's mtmd_default_marker()); the worker
# replaces each with that image's embeddings, in order.
MEDIA_MARKER = "<__media__>"
# (text, parse_special): template text may hold special tokens, contents never do.
Segment = tuple[str, bool]


class _Refused(jinja2.TemplateError):
    """A template's own ``raise_exception``: it refuses the messages it was given."""


def _raise(message: str) -> None:
    raise _Refused(message)


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
        raise ChatTemplateError(f"the model's chat template does not compile: {exc}") from exc


def render_chat(
    template: str,
    messages: Sequence[Message],
    *,
    bos_token: str = "",
    eos_token: str = "",
    add_generation_prompt: bool = True,
    extra: dict[str, Any] | None = None,
) -> str:
    """Render ``messages`` with ``template`` as the model expects its prompt.

    A template that refuses the messages (``raise_exception``: roles out of order, a
    system message it does not take) raises TemplateRefusedError, the client's to fix;
    any other failure is the template's (ChatTemplateError).
    """
    compiled = _compile(template)
    try:
        return compiled.render(
            messages=[{"role": m.role, "content": m.content} for m in messages],
            bos_token=bos_token,
            eos_token=eos_token,
            add_generation_prompt=add_generation_prompt,
            **(extra or {}),
        )
    except _Refused as exc:
        raise TemplateRefusedError(
            f"the chat template refused these messages: {exc}",
            "check the message roles and order this model accepts",
        ) from exc
    except Exception as exc:  # templates are foreign code: any failure is theirs
        raise ChatTemplateError(
            f"the model's chat template failed: {type(exc).__name__}: {exc}"
        ) from exc


def request_prompt(
    req: GenerationRequest, template: str | None, model_id: str, bos_token: str, eos_token: str
) -> str:
    """The prompt text for a request: its raw prompt, or its messages through the template."""
    return "".join(
        text for text, _ in request_segments(req, template, model_id, bos_token, eos_token)
    )


def request_segments(
    req: GenerationRequest,
    template: str | None,
    model_id: str,
    bos_token: str,
    eos_token: str,
    specials: Collection[str] = (),
) -> list[Segment]:
    """The prompt as (text, parse_special) pieces: template text special, contents plain.

    A raw prompt is the caller's whole prompt and may hold special tokens on purpose.
    ``specials`` are the model's control-token texts: when a template rewrites a
    content so that its sentinels do not survive (it splits or slices it), the prompt
    cannot be split, and a content holding one of them is refused rather than parsed.
    """
    if req.prompt is not None:
        return [(req.prompt, True)]
    if template is None:
        raise UnsupportedFeatureError(
            f"{model_id} has no chat template",
            "set config.chat_template in its manifest, or send a plain prompt",
        )
    nonce = secrets.token_hex(8)
    start, end = f"\ue000{nonce}\ue001", f"\ue002{nonce}\ue003"
    if any(m.images for m in req.messages):
        for m in req.messages:
            if MEDIA_MARKER in m.content:
                raise TemplateRefusedError(
                    f"a {m.role} message contains {MEDIA_MARKER!r}, which stands for an "
                    "image in a prompt with images",
                    f"remove {MEDIA_MARKER!r} from the message",
                )
    # An image's place in the prompt is a marker outside the content (template text), one
    # per image before the message's text: llama.cpp's multimodal prompt format.
    wrapped = [
        Message(m.role, MEDIA_MARKER * len(m.images) + start + m.content + end)
        for m in req.messages
    ]
    text = render_chat(template, wrapped, bos_token=bos_token, eos_token=eos_token)
    segments = _split(text, start, end)
    if segments is not None:
        return segments
    for m in req.messages:
        for word in specials:
            if word and word in m.content:
                raise TemplateRefusedError(
                    f"a {m.role} message contains the control token {word!r}, which "
                    f"{model_id}'s chat template cannot keep apart from its own markers",
                    f"remove {word!r} from the message",
                )
    marked = [Message(m.role, MEDIA_MARKER * len(m.images) + m.content) for m in req.messages]
    plain = render_chat(template, marked, bos_token=bos_token, eos_token=eos_token)
    return [(plain, True)]


def _split(text: str, start: str, end: str) -> list[Segment] | None:
    """Split a sentinel-marked rendering; None when the sentinels did not survive intact."""
    out: list[Segment] = []
    pos = 0
    while True:
        i = text.find(start, pos)
        if i < 0:
            tail = text[pos:]
            if end in tail:
                return None
            if tail:
                out.append((tail, True))
            return out
        head = text[pos:i]
        j = text.find(end, i + len(start))
        if end in head or j < 0 or start in text[i + len(start) : j]:
            return None
        if head:
            out.append((head, True))
        if j > i + len(start):
            out.append((text[i + len(start) : j], False))
        pos = j + len(end)
