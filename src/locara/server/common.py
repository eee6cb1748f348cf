"""Small helpers shared by the OpenAI and Ollama routes."""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import Request

from locara.backends.base import LoadedModel, Message, Sampling
from locara.engine.pool import Lease
from locara.engine.runner import in_thread
from locara.errors import ContextOverflowError, UnsupportedFeatureError, UsageError
from locara.registry.manifest import ModelManifest
from locara.server.errors import HTTPError
from locara.server.service import Service

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def service(request: Request) -> Service:
    svc = request.app.state.service
    assert isinstance(svc, Service)
    return svc


def app_name(request: Request) -> str:
    return str(getattr(request.state, "app_name", "local"))


def parse_keep_alive(value: float | int | str | None) -> float | None:
    """Seconds from Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m").

    Negative means forever; 0 means unload right after this request.
    """
    seconds = _parse_duration(value)
    if seconds is not None and not math.isfinite(seconds):
        raise UsageError(
            f"invalid keep_alive {value!r}: not a finite duration",
            'pass seconds (300), a duration ("5m"), 0 to unload, or -1 to keep loaded',
        )
    return seconds


def _parse_duration(value: float | int | str | None) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise UsageError("invalid keep_alive: a boolean", 'pass seconds or a duration like "5m"')
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise UsageError(
            f"invalid keep_alive {value!r}",
            'pass seconds (300), a duration ("5m", "1h30m"), 0 to unload, or -1 to keep loaded',
        )
    return sign * total


def sampling_from(manifest: ModelManifest, **given: Any) -> Sampling:
    """The manifest's defaults, then what the request set; validated."""
    return Sampling.of(manifest.config.default_params, **given)


def check_sampling(**given: Any) -> None:
    """Reject bad sampling values before spending time loading a model."""
    Sampling.of(None, **given)


def stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 16:
        raise UsageError(f"{len(stops)} stop strings; at most 16 are allowed", "send fewer")
    return tuple(s for s in stops if s)


def require_tools(lease: Lease) -> None:
    """Refuse ``tools`` for a model whose backend or template cannot call them (the
    backend says why: its chat template has no tools, it runs in process, ...)."""
    caps = lease.handle.model.capabilities
    if not caps.tools:
        raise UnsupportedFeatureError(*caps.no_tools)


def to_messages(raw: list[tuple[str, str]]) -> tuple[Message, ...]:
    out: list[Message] = []
    for role, content in raw:
        if role == "developer":
            role = "system"
        elif role == "function":  # OpenAI's deprecated name for a tool result
            role = "tool"
        if role not in ("system", "user", "assistant", "tool"):
            raise UsageError(
                f"unknown message role {role!r}", "use system, user, assistant or tool"
            )
        out.append(Message(role, content))  # type: ignore[arg-type]
    return tuple(out)


# -- embedding input that fits the context ----------------------------------------------


async def fitted_inputs(lease: Lease, texts: list[str], *, truncate: bool) -> list[str]:
    """``texts`` cut (or refused) to the leased model's context, off the event loop.

    The lease is released when this fails: no work was done on it.
    """
    model, model_id = lease.handle.model, lease.handle.resolved.manifest.id
    try:
        return await in_thread(
            lambda: fit_embedding_inputs(model, model_id, texts, truncate=truncate),
            name="locara-embed-fit",
        )
    except BaseException:
        lease.release()
        raise


def fit_embedding_inputs(
    model: LoadedModel, model_id: str, texts: list[str], *, truncate: bool
) -> list[str]:
    """``texts``, each cut to the model's context when ``truncate``, else refused if longer.

    Tokenizes (more than once when cutting): call it in a thread, never on the event loop.
    """
    limit = model.n_ctx  # count_tokens includes the tokens added around each input
    out: list[str] = []
    for i, text in enumerate(texts):
        n = _tokens(model, text)
        if n is not None and n <= limit:
            out.append(text)
        elif truncate:
            out.append(truncate_to_tokens(model, text, limit))
        else:
            size = f"{n} tokens" if n is not None else f"{len(text.encode())} bytes"
            raise HTTPError(
                400,
                f"input {i} is {size}, more than the {limit} tokens {model_id} embeds per "
                "input (its context, counting the special tokens added around each input)",
                "split the text into shorter chunks, raise num_ctx, "
                "or (Ollama's /api/embed) leave truncate at its default, true",
                code="context_length_exceeded",
                param="input",
            )
    return out


def truncate_to_tokens(model: LoadedModel, text: str, limit: int) -> str:
    """The longest prefix of ``text`` that is at most ``limit`` tokens.

    The backend protocol counts tokens but does not detokenize, so this is a binary
    search over character positions with ``count_tokens`` (about log2(len) calls); the
    cut lands where Ollama's token cut would, give or take a token's characters.
    """
    lo, hi = 0, len(text)  # text[:lo] fits; text[:hi + 1] does not (or is all of it)
    while lo < hi:
        mid = (lo + hi + 1) // 2
        n = _tokens(model, text[:mid])
        if n is not None and n <= limit:
            lo = mid
        else:
            hi = mid - 1
    return text[:lo]


def _tokens(model: LoadedModel, text: str) -> int | None:
    """Tokens in ``text``; None when the backend refuses it untokenized as far too long."""
    try:
        return model.count_tokens(text)
    except ContextOverflowError:
        return None
