"""Reading an MLX model for the MLX backend: a directory, or a GGUF file directly.

An MLX directory is what ``mlx_lm`` and ``locara convert --to mlx`` write:
``config.json``, one or more ``*.safetensors`` and ``tokenizer.json`` (plus an
optional ``tokenizer_config.json`` with the chat template). A GGUF is mapped in
memory by :mod:`locara.convert.gguf_to_mlx`. Either way the model is built from
``mlx_lm.models.<model_type>`` and loaded with ``strict=True``, so a missing tensor
or a config that does not match the weights is an error here, not garbage later.
"""

from __future__ import annotations

import codecs
import importlib
import json
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

from locara.convert.gguf_to_mlx import MlxCheckpoint, gguf_to_checkpoint, require_mlx
from locara.errors import ModelFormatError, UnsupportedFeatureError

# model_type values Locara's MLX backend has been run and tested with (the conformance
# suite runs llama); other mlx_lm families are refused rather than guessed at.
SUPPORTED_MODEL_TYPES = ("llama",)


def _dir_error(path: Path, what: str) -> ModelFormatError:
    return ModelFormatError(
        f"{path} is not a usable MLX model directory: {what}",
        "convert the GGUF again with: locara convert MODEL.gguf --to mlx -o DIR",
    )


def read_mlx_dir(path: Path) -> MlxCheckpoint:
    """Read config, weights and tokenizer documents from an MLX model directory."""
    require_mlx()
    import mlx.core as mx

    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _dir_error(path, "config.json is missing") from None
    except (OSError, ValueError) as exc:
        raise _dir_error(path, f"config.json cannot be read ({exc})") from exc
    shards = sorted(path.glob("*.safetensors"))
    if not shards:
        raise _dir_error(path, "it has no *.safetensors weights")
    weights: dict[str, Any] = {}
    for shard in shards:
        try:
            shard_weights: dict[str, Any] = mx.load(str(shard))  # type: ignore[assignment]
            weights.update(shard_weights)
        except (RuntimeError, ValueError) as exc:
            raise _dir_error(path, f"{shard.name} cannot be read ({exc})") from exc
    try:
        tokenizer = json.loads((path / "tokenizer.json").read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise _dir_error(path, "tokenizer.json is missing") from None
    except (OSError, ValueError) as exc:
        raise _dir_error(path, f"tokenizer.json cannot be read ({exc})") from exc
    tok_cfg: dict[str, Any] = {}
    cfg_path = path / "tokenizer_config.json"
    if cfg_path.is_file():
        try:
            tok_cfg = json.loads(cfg_path.read_text(encoding="utf-8"))
        except (OSError, ValueError) as exc:
            raise _dir_error(path, f"tokenizer_config.json cannot be read ({exc})") from exc
    jinja = path / "chat_template.jinja"
    if "chat_template" not in tok_cfg and jinja.is_file():
        tok_cfg["chat_template"] = jinja.read_text(encoding="utf-8")
    return MlxCheckpoint(config, weights, tokenizer, tok_cfg)


def read_checkpoint(path: Path) -> MlxCheckpoint:
    """An MLX directory, or a GGUF file mapped onto MLX."""
    if path.is_dir():
        return read_mlx_dir(path)
    try:
        with path.open("rb") as f:
            magic = f.read(4)
    except OSError as exc:
        raise ModelFormatError(f"cannot open {path}: {exc.strerror or exc}") from exc
    if magic == b"GGUF":
        return gguf_to_checkpoint(path)
    raise ModelFormatError(
        f"{path} is neither an MLX model directory nor a GGUF file",
        "pass a directory written by: locara convert MODEL.gguf --to mlx -o DIR",
    )


def build_model(ckpt: MlxCheckpoint, where: Path) -> Any:
    """The ``mlx_lm`` model for ``ckpt``, quantized as its config says, weights loaded strictly."""
    import mlx.core as mx
    import mlx.nn as nn

    model_type = str(ckpt.config.get("model_type", ""))
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise UnsupportedFeatureError(
            f"{where.name}: model_type {model_type!r} is not supported by Locara's MLX backend "
            f"(supported: {', '.join(SUPPORTED_MODEL_TYPES)})",
            "run it with the llama.cpp backend: --backend llama_cpp",
        )
    module = importlib.import_module(f"mlx_lm.models.{model_type}")
    try:
        args = module.ModelArgs.from_dict(ckpt.config)
        model = module.Model(args)
    except (TypeError, ValueError, KeyError, AssertionError) as exc:
        raise _dir_error(
            where, f"config.json does not describe a {model_type} model ({exc})"
        ) from exc
    weights = ckpt.weights
    if hasattr(model, "sanitize"):
        weights = model.sanitize(weights)
    quant = ckpt.config.get("quantization")
    if isinstance(quant, dict):

        def predicate(name: str, module: Any) -> bool | dict[str, Any]:
            if name in quant:
                spec = quant[name]
                return spec if isinstance(spec, dict) else bool(spec)
            return hasattr(module, "to_quantized") and f"{name}.scales" in weights

        try:
            nn.quantize(  # type: ignore[attr-defined]
                model,
                group_size=quant.get("group_size"),
                bits=quant.get("bits"),
                mode=quant.get("mode", "affine"),
                class_predicate=predicate,
            )
        except (TypeError, ValueError) as exc:
            raise _dir_error(where, f"its quantization settings are invalid ({exc})") from exc
    try:
        model.load_weights(list(weights.items()), strict=True)
    except ValueError as exc:
        detail = str(exc)
        if len(detail) > 300:
            detail = detail[:300] + "…"
        raise _dir_error(where, f"the weights do not match config.json: {detail}") from exc
    mx.eval(model.parameters())
    model.eval()
    return model


@lru_cache(maxsize=1)
def _byte_decoder() -> dict[str, int]:
    # GPT-2's reversible map between bytes and printable characters (byte-level BPE).
    bs = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1)]
    bs += list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return {chr(c): b for b, c in zip(bs, cs, strict=True)}


@dataclass
class TokenizerInfo:
    bos_token: str
    eos_token: str
    add_bos: bool
    chat_template: str | None


def _token_text(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("content", ""))
    return str(value) if value else ""


class MlxTokenizer:
    """``tokenizers.Tokenizer`` plus exact, incremental detokenization for streaming."""

    def __init__(self, doc: dict[str, Any], config: dict[str, Any]) -> None:
        from tokenizers import Tokenizer

        try:
            self._tok = Tokenizer.from_str(json.dumps(doc))
        except Exception as exc:  # tokenizers raises a bare Exception on bad JSON
            raise ModelFormatError(
                f"tokenizer.json is not a valid tokenizer ({exc})",
                "convert the model again with: locara convert MODEL.gguf --to mlx -o DIR",
            ) from exc
        self.info = TokenizerInfo(
            bos_token=_token_text(config.get("bos_token")),
            eos_token=_token_text(config.get("eos_token")),
            add_bos=bool(config.get("add_bos_token", False)),
            chat_template=config.get("chat_template")
            if isinstance(config.get("chat_template"), str)
            else None,
        )
        added = doc.get("added_tokens") or []
        self.special_ids = {int(t["id"]) for t in added if t.get("special")}
        self._added = {int(t["id"]): str(t["content"]) for t in added}
        decoder = doc.get("decoder") or {}
        self.byte_level = decoder.get("type") == "ByteLevel"
        self.vocab_size = int(self._tok.get_vocab_size(with_added_tokens=True))

    def encode(self, text: str) -> list[int]:
        """Token ids of ``text``; special tokens written in the text are recognised."""
        return list(self._tok.encode(text, add_special_tokens=False).ids)

    def token_id(self, text: str) -> int | None:
        i = self._tok.token_to_id(text)
        return int(i) if i is not None else None

    def token_bytes(self, token: int) -> bytes:
        """The bytes a token stands for (empty for special tokens)."""
        if token in self.special_ids:
            return b""
        if token in self._added:
            return self._added[token].encode("utf-8")
        piece = self._tok.id_to_token(token) or ""
        table = _byte_decoder()
        return bytes(table[c] for c in piece if c in table)

    def streamer(self) -> Detokenizer:
        return Detokenizer(self)

    def decode(self, ids: list[int]) -> str:
        return str(self._tok.decode(ids, skip_special_tokens=True))


class Detokenizer:
    """Turns a stream of token ids into text pieces that never split a character."""

    def __init__(self, tok: MlxTokenizer) -> None:
        self._tok = tok
        self._utf8 = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._ids: list[int] = []
        self._emitted = 0

    def feed(self, token: int) -> str:
        if self._tok.byte_level:
            return str(self._utf8.decode(self._tok.token_bytes(token)))
        # Other tokenizers (e.g. SentencePiece "▁" spaces) only decode correctly in context.
        self._ids.append(token)
        text = self._tok.decode(self._ids)
        if text.endswith("\ufffd"):
            return ""
        piece, self._emitted = text[self._emitted :], len(text)
        return piece

    def finish(self) -> str:
        if self._tok.byte_level:
            return str(self._utf8.decode(b"", final=True))
        text = self._tok.decode(self._ids)
        return text[self._emitted :]
