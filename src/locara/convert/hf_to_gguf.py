"""Hugging Face safetensors directory → GGUF (f16 or q8_0), for llama.cpp.

Two families are covered, following the conventions of llama.cpp's own
``convert_hf_to_gguf.py`` so llama.cpp runs the result unchanged:

* BERT-style encoders (``BertModel``: all-MiniLM, bge, …): WordPiece vocabulary as
  llama.cpp's "bert" (WPM) tokenizer with phantom-space tokens, non-causal
  attention, the pooling type read from sentence-transformers' ``1_Pooling``;
* llama-architecture decoders (``LlamaForCausalLM``): Q/K rows permuted for
  llama.cpp's interleaved RoPE, byte-level BPE tokenizer from ``tokenizer.json``.

Norms, biases and position/token-type embeddings stay float32 (as llama.cpp's
converter keeps them); matrices become f16 or q8_0. Output is deterministic.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np

from locara.convert.safetensors_np import read_safetensors
from locara.errors import ModelFormatError, UnsupportedFeatureError

OutType = Literal["f16", "q8_0"]
OUT_TYPES: tuple[str, ...] = ("f16", "q8_0")

# config.json "architectures"[0] -> (GGUF architecture, family)
SUPPORTED_ARCHITECTURES: dict[str, str] = {
    "BertModel": "bert",
    "BertForMaskedLM": "bert",
    "LlamaForCausalLM": "llama",
}


@dataclass(frozen=True)
class HfModelDir:
    path: Path
    config: dict[str, Any]
    architecture: str  # the HF class name
    family: str  # "bert" | "llama"


def inspect_hf_dir(path: Path) -> HfModelDir:
    """Read ``config.json`` and decide whether this directory can be converted."""
    cfg_path = path / "config.json"
    if not path.is_dir() or not cfg_path.is_file():
        raise ModelFormatError(
            f"{path} is not a Hugging Face model directory (no config.json)",
            "pass the directory that holds config.json and *.safetensors",
        )
    try:
        config = json.loads(cfg_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {cfg_path}: {exc}") from exc
    archs = config.get("architectures") or [str(config.get("model_type", "unknown"))]
    arch = str(archs[0])
    family = SUPPORTED_ARCHITECTURES.get(arch)
    if family is None:
        raise UnsupportedFeatureError(
            f"cannot convert architecture {arch!r} to GGUF "
            f"(supported: {', '.join(SUPPORTED_ARCHITECTURES)})",
            "use llama.cpp's convert_hf_to_gguf.py for other architectures, "
            "or download a ready-made GGUF",
        )
    if not sorted(path.glob("*.safetensors")):
        raise ModelFormatError(
            f"{path} has no *.safetensors weights",
            "convert PyTorch .bin checkpoints to safetensors first",
        )
    return HfModelDir(path, config, arch, family)


def _tensors(d: HfModelDir) -> dict[str, np.ndarray[Any, Any]]:
    out: dict[str, np.ndarray[Any, Any]] = {}
    for shard in sorted(d.path.glob("*.safetensors")):
        out.update(read_safetensors(shard))
    return out


def _json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise ModelFormatError(f"cannot read {path}: {exc}") from exc
    return data if isinstance(data, dict) else {}


def convert_hf_to_gguf(
    src: Path, out: Path, outtype: OutType = "f16", name: str | None = None
) -> Path:
    """Write ``src`` (a Hugging Face directory) as a GGUF file at ``out``."""
    import gguf

    if outtype not in OUT_TYPES:
        raise UnsupportedFeatureError(
            f"unsupported output type {outtype!r}", f"choose one of: {', '.join(OUT_TYPES)}"
        )
    d = inspect_hf_dir(src)
    writer = gguf.GGUFWriter(str(out), d.family)
    writer.add_name(name or src.name)
    ftype = gguf.LlamaFileType.MOSTLY_F16 if outtype == "f16" else gguf.LlamaFileType.MOSTLY_Q8_0
    writer.add_file_type(int(ftype))
    writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    tensors = _bert(d, writer, gguf) if d.family == "bert" else _llama(d, writer, gguf)
    for gname, arr, keep_f32 in tensors:
        _add_tensor(writer, gguf, gname, arr, outtype, keep_f32)
    try:
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_tensors_to_file()
    finally:
        writer.close()
    return out


def _add_tensor(
    writer: Any, gguf: Any, name: str, arr: np.ndarray[Any, Any], outtype: str, keep_f32: bool
) -> None:
    data = np.ascontiguousarray(arr, dtype=np.float32)
    if keep_f32 or data.ndim <= 1:
        writer.add_tensor(name, data)
    elif outtype == "q8_0" and data.shape[-1] % 32 == 0:
        q = gguf.quants.quantize(data, gguf.GGMLQuantizationType.Q8_0)
        writer.add_tensor(name, q, raw_shape=q.shape, raw_dtype=gguf.GGMLQuantizationType.Q8_0)
    else:
        writer.add_tensor(name, data.astype(np.float16))


# -- BERT ---------------------------------------------------------------------------
def _bert(d: HfModelDir, writer: Any, gguf: Any) -> list[tuple[str, Any, bool]]:
    c = d.config
    n_layer = int(c["num_hidden_layers"])
    writer.add_context_length(int(c["max_position_embeddings"]))
    writer.add_embedding_length(int(c["hidden_size"]))
    writer.add_feed_forward_length(int(c["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(int(c["num_attention_heads"]))
    writer.add_layer_norm_eps(float(c.get("layer_norm_eps", 1e-12)))
    writer.add_causal_attention(False)
    writer.add_pooling_type(_pooling(d, gguf))

    tokens, types = _wordpiece_vocab(d, gguf)
    writer.add_token_type_count(int(c.get("type_vocab_size", 1)))
    writer.add_tokenizer_model("bert")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    gguf.SpecialVocab(d.path, n_vocab=len(tokens)).add_to_gguf(writer, quiet=True)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.BERT, n_layer)
    keep_f32 = {"position_embd.weight", "token_types.weight"}
    out: list[tuple[str, Any, bool]] = []
    for hf_name, arr in sorted(_tensors(d).items()):
        name = hf_name.removeprefix("bert.")
        if name.endswith(".gamma"):
            name = name[: -len(".gamma")] + ".weight"
        if name.endswith(".beta"):
            name = name[: -len(".beta")] + ".bias"
        if name == "embeddings.position_ids" or name.startswith(("pooler.", "cls.")):
            continue  # embeddings only: no pooler, no masked-LM head
        gname = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ModelFormatError(
                f"{d.path}: tensor {hf_name!r} has no place in llama.cpp's BERT",
                "this checkpoint is not a plain BERT encoder",
            )
        out.append((gname, arr, gname in keep_f32))
    return out


def _pooling(d: HfModelDir, gguf: Any) -> Any:
    pool = _json(d.path / "1_Pooling" / "config.json")
    if pool.get("pooling_mode_cls_token"):
        return gguf.PoolingType.CLS
    if pool and not pool.get("pooling_mode_mean_tokens"):
        raise UnsupportedFeatureError(
            f"{d.path}: only mean or CLS pooling is supported, not {pool}",
            "use a sentence-transformers model with mean pooling",
        )
    return gguf.PoolingType.MEAN


def _wordpiece_vocab(d: HfModelDir, gguf: Any) -> tuple[list[str], list[int]]:
    vocab_txt = d.path / "vocab.txt"
    if vocab_txt.is_file():
        words = vocab_txt.read_text(encoding="utf-8").split("\n")
        if words and words[-1] == "":
            words.pop()
    else:
        model = _json(d.path / "tokenizer.json").get("model", {})
        if model.get("type") != "WordPiece":
            raise UnsupportedFeatureError(
                f"{d.path}: a BERT model needs a WordPiece vocabulary (vocab.txt)",
                "add vocab.txt next to config.json",
            )
        vocab = model["vocab"]
        words = [w for w, _ in sorted(vocab.items(), key=lambda kv: kv[1])]
    special = {
        str(t["content"])
        for t in _json(d.path / "tokenizer.json").get("added_tokens", [])
        if t.get("special")
    }
    for v in _json(d.path / "special_tokens_map.json").values():
        special.add(str(v["content"]) if isinstance(v, dict) else str(v))
    control = int(gguf.TokenType.CONTROL)
    normal = int(gguf.TokenType.NORMAL)
    tokens: list[str] = []
    types: list[int] = []
    for w in words:
        if w in special:
            tokens.append(w)
            types.append(control)
        else:
            # llama.cpp's WPM tokenizer marks word starts with "▁" instead of "##" continuations.
            tokens.append(w[2:] if w.startswith("##") else "\u2581" + w)
            types.append(normal)
    return tokens, types


# -- llama --------------------------------------------------------------------------
def _permute(w: np.ndarray[Any, Any], n_head: int) -> np.ndarray[Any, Any]:
    rows = w.shape[0]
    return w.reshape(n_head, 2, rows // n_head // 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _bpe_pre_name(pre: dict[str, Any] | None) -> str:
    from locara.convert.gguf_tokenizer import PRE_TOKENIZERS

    for name, doc in PRE_TOKENIZERS.items():
        if doc == pre or (
            isinstance(pre, dict) and pre.get("type") == "ByteLevel" and name == "gpt2"
        ):
            return name
    raise UnsupportedFeatureError(
        f"this tokenizer's pre-tokenizer is not one Locara can name for llama.cpp: {pre}",
        "use llama.cpp's convert_hf_to_gguf.py for this model",
    )


def _llama(d: HfModelDir, writer: Any, gguf: Any) -> list[tuple[str, Any, bool]]:
    c = d.config
    n_layer = int(c["num_hidden_layers"])
    n_head = int(c["num_attention_heads"])
    n_kv = int(c.get("num_key_value_heads") or n_head)
    hidden = int(c["hidden_size"])
    head_dim = int(c.get("head_dim") or hidden // n_head)
    writer.add_context_length(int(c.get("max_position_embeddings", 2048)))
    writer.add_embedding_length(hidden)
    writer.add_feed_forward_length(int(c["intermediate_size"]))
    writer.add_block_count(n_layer)
    writer.add_head_count(n_head)
    writer.add_head_count_kv(n_kv)
    writer.add_layer_norm_rms_eps(float(c.get("rms_norm_eps", 1e-5)))
    writer.add_rope_freq_base(float(c.get("rope_theta", 10000.0)))
    writer.add_rope_dimension_count(head_dim)
    if c.get("rope_scaling"):
        raise UnsupportedFeatureError(
            f"{d.path}: rope_scaling {c['rope_scaling']} is not supported by this converter",
            "use llama.cpp's convert_hf_to_gguf.py for this model",
        )

    tok = _json(d.path / "tokenizer.json")
    model = tok.get("model", {})
    if model.get("type") != "BPE":
        raise UnsupportedFeatureError(
            f"{d.path}: only byte-level BPE tokenizers are supported for llama models",
            "use llama.cpp's convert_hf_to_gguf.py for SentencePiece models",
        )
    vocab: dict[str, int] = dict(model["vocab"])
    added = {
        str(t["content"]): (int(t["id"]), bool(t.get("special")))
        for t in tok.get("added_tokens", [])
    }
    n_vocab = max([*vocab.values(), *(i for i, _ in added.values())]) + 1
    tokens = [f"[PAD{i}]" for i in range(n_vocab)]
    types = [int(gguf.TokenType.UNUSED)] * n_vocab
    for w, i in vocab.items():
        tokens[i], types[i] = w, int(gguf.TokenType.NORMAL)
    for w, (i, special) in added.items():
        tokens[i] = w
        types[i] = int(gguf.TokenType.CONTROL if special else gguf.TokenType.USER_DEFINED)
    merges = [m if isinstance(m, str) else " ".join(m) for m in model.get("merges", [])]
    writer.add_vocab_size(n_vocab)
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(_bpe_pre_name(tok.get("pre_tokenizer")))
    writer.add_token_list(tokens)
    writer.add_token_types(types)
    writer.add_token_merges(merges)
    special_vocab = gguf.SpecialVocab(d.path, load_merges=False, n_vocab=n_vocab)
    special_vocab.add_to_gguf(writer, quiet=True)

    tmap = gguf.get_tensor_name_map(gguf.MODEL_ARCH.LLAMA, n_layer)
    out: list[tuple[str, Any, bool]] = []
    for hf_name, arr in sorted(_tensors(d).items()):
        if hf_name.endswith("rotary_emb.inv_freq"):
            continue
        gname = tmap.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        if gname is None:
            raise ModelFormatError(
                f"{d.path}: tensor {hf_name!r} has no place in llama.cpp's llama",
                "this checkpoint is not a plain llama model",
            )
        if hf_name.endswith("self_attn.q_proj.weight"):
            arr = _permute(np.asarray(arr), n_head)
        elif hf_name.endswith("self_attn.k_proj.weight"):
            arr = _permute(np.asarray(arr), n_kv)
        out.append((gname, arr, False))
    return out


def iter_file(path: Path, chunk: int = 1 << 20) -> Iterator[bytes]:
    """Chunks of a file (for handing a converted artifact to the store)."""
    with path.open("rb") as f:
        while b := f.read(chunk):
            yield b
