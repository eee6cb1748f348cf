"""Prompt tokens for llama.cpp, built one way for the in-process model and the worker.

Both llama.cpp backends hold the GGUF's vocabulary in this process (the worker only
its vocabulary, never its weights), so Locara decides how a prompt becomes tokens:
the template's markers as special tokens, message contents as plain text (a user
cannot forge a turn with ``<|im_end|><|im_start|>system``), and input that cannot
fit the context refused before it is tokenized at all.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from locara.backends.base import GenerationRequest
from locara.backends.chat_template import request_segments
from locara.errors import ContextOverflowError


@dataclass(frozen=True)
class VocabFacts:
    """What prompt building needs to know about a vocabulary, read once at load."""

    specials: frozenset[str]  # texts of control and user-defined tokens
    max_token_bytes: int  # the most bytes any single token stands for
    add_bos: bool
    bos_id: int
    bos_text: str
    eos_text: str

    def check_size(self, text: str, n_ctx: int) -> None:
        """Refuse text that no tokenization could fit into ``n_ctx`` tokens.

        Tokenizing costs time that grows with the input (quadratically with the number
        of special-token matches); a text longer than ``n_ctx × max_token_bytes`` bytes
        cannot fit whatever it says, so it is refused before any of that is spent.
        """
        size = len(text.encode("utf-8"))
        if size > n_ctx * self.max_token_bytes:
            lower = -(-size // self.max_token_bytes)
            raise ContextOverflowError(lower, 0, n_ctx, input_bytes=size)


def vocab_facts(model: Any) -> VocabFacts:
    """Facts about a loaded ``llama_cpp._internals.LlamaModel`` (vocab-only is enough)."""
    import llama_cpp

    vocab = model.vocab
    special_attrs = llama_cpp.LLAMA_TOKEN_ATTR_CONTROL | llama_cpp.LLAMA_TOKEN_ATTR_USER_DEFINED

    def text(tok: int) -> bytes:
        return bytes(model.detokenize([tok], special=True)) if tok >= 0 else b""

    specials: set[str] = set()
    longest = 1
    for tok in range(int(model.n_vocab())):
        piece = text(tok)
        longest = max(longest, len(piece))
        if piece and llama_cpp.llama_vocab_get_attr(vocab, tok) & special_attrs:
            specials.add(piece.decode("utf-8", "replace"))
    bos, eos = int(model.token_bos()), int(model.token_eos())
    return VocabFacts(
        specials=frozenset(specials),
        max_token_bytes=longest,
        add_bos=bool(model.add_bos_token()),
        bos_id=bos,
        bos_text=text(bos).decode("utf-8", "replace"),
        eos_text=text(eos).decode("utf-8", "replace"),
    )


def prompt_tokens(
    model: Any,
    facts: VocabFacts,
    req: GenerationRequest,
    template: str | None,
    model_id: str,
    n_ctx: int,
) -> list[int]:
    """The request's prompt as token ids: template text special, contents plain.

    A BOS token is added when the model wants one, unless the chat template writes
    ``bos_token`` itself.
    """
    segments = request_segments(
        req, template, model_id, facts.bos_text, facts.eos_text, facts.specials
    )
    facts.check_size("".join(text for text, _ in segments), n_ctx)
    tokens: list[int] = []
    if (
        facts.add_bos
        and facts.bos_id >= 0
        and not (req.prompt is None and template and "bos_token" in template)
    ):
        tokens.append(facts.bos_id)
    for text, special in segments:
        tokens += model.tokenize(text.encode("utf-8"), add_bos=False, special=special)
    return tokens
