"""Embedding inputs fitted to a model's context: cut (Ollama's default) or refused (OpenAI)."""

from __future__ import annotations

from locara.backends.base import LoadedModel
from locara.errors import ContextOverflowError
from locara.server.errors import HTTPError


def fit_embedding_inputs(
    model: LoadedModel, model_id: str, texts: list[str], *, truncate: bool
) -> list[str]:
    """``texts``, each cut to the model's context when ``truncate``, else refused if longer.

    Tokenizes (more than once when cutting): call it in a thread, never on the event loop.
    """
    limit = model.embed_ctx  # count_tokens includes the tokens added around each input
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
                "input (counting the special tokens added around each input)",
                "split the text into shorter chunks, "
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
