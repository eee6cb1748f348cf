"""A Hugging Face ``tokenizer.json`` rebuilt from a GGUF's vocabulary.

GGUF files carry the tokenizer as arrays (tokens, token types, merges) plus a name
for the pre-tokenizer. This module writes the equivalent ``tokenizers`` JSON so the
MLX backend (and any transformers user) tokenizes exactly as llama.cpp does. Only
byte-level BPE (``tokenizer.ggml.model == "gpt2"``) is covered, with the
pre-tokenizers we can name precisely; anything else is refused, never guessed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from locara.errors import UnsupportedFeatureError

CONTROL, USER_DEFINED = 3, 4

# GGUF pre-tokenizer name -> tokenizers pre_tokenizer JSON. The regexes are the ones
# llama.cpp's llama-vocab.cpp uses for the same names.
_GPT2_BYTE_LEVEL = {
    "type": "ByteLevel",
    "add_prefix_space": False,
    "trim_offsets": True,
    "use_regex": True,
}
_LLAMA3_REGEX = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
    r"|\s*[\r\n]+|\s+(?!\S)|\s+"
)
PRE_TOKENIZERS: dict[str, dict[str, Any]] = {
    "default": _GPT2_BYTE_LEVEL,
    "gpt2": _GPT2_BYTE_LEVEL,
    "smollm": {
        "type": "Sequence",
        "pretokenizers": [{"type": "Digits", "individual_digits": True}, _GPT2_BYTE_LEVEL],
    },
    "llama-bpe": {
        "type": "Sequence",
        "pretokenizers": [
            {
                "type": "Split",
                "pattern": {"Regex": _LLAMA3_REGEX},
                "behavior": "Isolated",
                "invert": False,
            },
            {**_GPT2_BYTE_LEVEL, "use_regex": False},
        ],
    },
}

SUPPORTED_PRE_TOKENIZERS = tuple(sorted(PRE_TOKENIZERS))


def tokenizer_json_from_gguf(meta: Mapping[str, Any]) -> dict[str, Any]:
    """The ``tokenizer.json`` document equivalent to the GGUF tokenizer in ``meta``."""
    model = str(meta.get("tokenizer.ggml.model", ""))
    if model != "gpt2":
        raise UnsupportedFeatureError(
            f"the GGUF tokenizer type {model!r} cannot be converted for MLX "
            "(only byte-level BPE, 'gpt2', is supported)",
            "run this model with the llama.cpp backend: --backend llama_cpp",
        )
    pre_name = str(meta.get("tokenizer.ggml.pre", "default"))
    pre = PRE_TOKENIZERS.get(pre_name)
    if pre is None:
        raise UnsupportedFeatureError(
            f"the GGUF pre-tokenizer {pre_name!r} is not supported for MLX "
            f"(supported: {', '.join(SUPPORTED_PRE_TOKENIZERS)})",
            "run this model with the llama.cpp backend: --backend llama_cpp",
        )
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]
    types = [int(t) for t in meta.get("tokenizer.ggml.token_type", [1] * len(tokens))]
    merges = [str(m).split(" ", 1) for m in meta.get("tokenizer.ggml.merges", [])]
    added = [
        {
            "id": i,
            "content": tok,
            "single_word": False,
            "lstrip": False,
            "rstrip": False,
            "normalized": False,
            "special": ty == CONTROL,
        }
        for i, (tok, ty) in enumerate(zip(tokens, types, strict=True))
        if ty in (CONTROL, USER_DEFINED)
    ]
    return {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": pre,
        "post_processor": None,
        "decoder": {
            "type": "ByteLevel",
            "add_prefix_space": True,
            "trim_offsets": True,
            "use_regex": True,
        },
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            "merges": merges,
        },
    }


def tokenizer_config_from_gguf(meta: Mapping[str, Any]) -> dict[str, Any]:
    """A ``tokenizer_config.json`` with the special tokens and the chat template."""
    tokens = [str(t) for t in meta["tokenizer.ggml.tokens"]]

    def tok(key: str) -> str | None:
        i = meta.get(f"tokenizer.ggml.{key}_token_id")
        return tokens[int(i)] if i is not None and 0 <= int(i) < len(tokens) else None

    cfg: dict[str, Any] = {
        "bos_token": tok("bos"),
        "eos_token": tok("eos"),
        "unk_token": tok("unknown"),
        "pad_token": tok("padding"),
        "add_bos_token": bool(meta.get("tokenizer.ggml.add_bos_token", False)),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "model_max_length": int(meta.get(f"{meta.get('general.architecture')}.context_length", 0))
        or None,
    }
    template = meta.get("tokenizer.chat_template")
    if isinstance(template, str):
        cfg["chat_template"] = template
    return cfg
