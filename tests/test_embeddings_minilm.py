"""The default embedding model: all-MiniLM-L6-v2 made from its package on first use,
run by llama.cpp, checked against a BERT forward pass written here in numpy."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from locara.backends.base import LoadOptions
from locara.engine.loader import ModelHandle, load, resolve
from locara.errors import IntegrityError
from locara.registry.catalog import Registry
from locara.settings import Settings
from mlx_support import minilm_dir

PARENT_SHA = "53aa51172d142c89d9012cce15ae4d6cc0ca6895895114379cacb4fab128d9db"

# Each anchor's paraphrase must be its nearest neighbour among all candidates.
LABELLED = [
    ("A man is playing a guitar.", "Someone is strumming a guitar."),
    ("The cat sits on the mat.", "A cat is sitting on a rug."),
    ("How do I reset my password?", "I forgot my password and need to change it."),
    ("The stock market fell sharply today.", "Share prices dropped steeply this afternoon."),
    ("She is cooking pasta in the kitchen.", "A woman prepares spaghetti at the stove."),
    ("It is raining heavily outside.", "There is a downpour out there."),
]
UNRELATED = ["Quantum chromodynamics describes the strong force.", "Bananas are rich in potassium."]


@pytest.fixture(scope="module")
def embed_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("embed-home")


@pytest.fixture(scope="module")
def handle(embed_home: Path) -> Iterator[ModelHandle]:
    """Resolved the way the server does: the default embedding model, converted on first use."""
    settings = Settings.from_env({"LOCARA_HOME": str(embed_home)})
    resolved = resolve(settings, settings.default_embedding_model)
    h = load(settings, resolved, LoadOptions(n_ctx=512, embedding=True))
    yield h
    h.close()


def test_first_use_converts_stores_and_records_lineage(
    handle: ModelHandle, embed_home: Path
) -> None:
    manifest = handle.resolved.manifest
    art = manifest.artifact_list("llama_cpp")[0]
    assert manifest.modality == "embedding"
    assert any(s.startswith("derived://") for s in art.sources)
    # The store verified the converter's output against the pinned digest.
    assert handle.resolved.blob.sha256 == art.sha256
    from locara.ecology.lineage import read_lineage

    settings = Settings.from_env({"LOCARA_HOME": str(embed_home)})
    assert art.sha256 is not None
    rec = read_lineage(settings, art.sha256)
    assert rec is not None
    assert rec.parents == (PARENT_SHA,) and rec.operator == "convert"
    assert "gguf 0.19.0" in rec.tool and rec.created_at


def test_vectors_are_384_dimensional_and_unit_norm(handle: ModelHandle) -> None:
    vecs = handle.model.embed(["hello world", "A much longer sentence about embeddings."])
    assert [len(v) for v in vecs] == [384, 384]
    for v in vecs:
        assert math.isclose(math.sqrt(sum(x * x for x in v)), 1.0, rel_tol=1e-4)


def test_paraphrases_rank_above_unrelated_sentences(handle: ModelHandle) -> None:
    anchors = [a for a, _ in LABELLED]
    candidates = [p for _, p in LABELLED] + UNRELATED
    a = np.array(handle.model.embed(anchors))
    c = np.array(handle.model.embed(candidates))
    sims = a @ c.T
    for i, (anchor, para) in enumerate(LABELLED):
        best = int(np.argmax(sims[i]))
        assert best == i, f"{anchor!r} matched {candidates[best]!r}, not {para!r}"
        assert sims[i, i] > 0.5


# -- a reference BERT in numpy, straight from the safetensors ------------------------
def _layer_norm(x: Any, w: Any, b: Any, eps: float) -> Any:
    mu = x.mean(-1, keepdims=True)
    var = ((x - mu) ** 2).mean(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def _gelu(x: Any) -> Any:
    erf = np.vectorize(math.erf)
    return 0.5 * x * (1.0 + erf(x / math.sqrt(2.0)))


def reference_embedding(ids: list[int]) -> Any:
    from safetensors.numpy import load_file

    d = minilm_dir()
    cfg = json.loads((d / "config.json").read_text())
    w = {k: v.astype(np.float64) for k, v in load_file(str(d / "model.safetensors")).items()}
    p = "" if "embeddings.word_embeddings.weight" in w else "bert."
    eps = cfg["layer_norm_eps"]
    n = len(ids)
    x = (
        w[f"{p}embeddings.word_embeddings.weight"][ids]
        + w[f"{p}embeddings.position_embeddings.weight"][:n]
        + w[f"{p}embeddings.token_type_embeddings.weight"][0]
    )
    x = _layer_norm(
        x, w[f"{p}embeddings.LayerNorm.weight"], w[f"{p}embeddings.LayerNorm.bias"], eps
    )
    heads = cfg["num_attention_heads"]
    hd = cfg["hidden_size"] // heads
    for i in range(cfg["num_hidden_layers"]):
        L = f"{p}encoder.layer.{i}."

        def lin(h: Any, name: str, L: str = L) -> Any:
            return h @ w[L + name + ".weight"].T + w[L + name + ".bias"]

        q, k, v = (
            lin(x, f"attention.self.{m}").reshape(n, heads, hd).transpose(1, 0, 2)
            for m in ("query", "key", "value")
        )
        s = q @ k.transpose(0, 2, 1) / math.sqrt(hd)
        s = np.exp(s - s.max(-1, keepdims=True))
        s /= s.sum(-1, keepdims=True)
        ctx = (s @ v).transpose(1, 0, 2).reshape(n, heads * hd)
        x = _layer_norm(
            x + lin(ctx, "attention.output.dense"),
            w[L + "attention.output.LayerNorm.weight"],
            w[L + "attention.output.LayerNorm.bias"],
            eps,
        )
        h = lin(_gelu(lin(x, "intermediate.dense")), "output.dense")
        x = _layer_norm(
            x + h, w[L + "output.LayerNorm.weight"], w[L + "output.LayerNorm.bias"], eps
        )
    pooled = x.mean(0)  # sentence-transformers' mean pooling (no padding here)
    return pooled / np.linalg.norm(pooled)


def test_matches_a_numpy_reference_from_the_safetensors(handle: ModelHandle) -> None:
    from tokenizers import Tokenizer

    hf = Tokenizer.from_file(str(minilm_dir() / "tokenizer.json"))
    hf.no_padding()  # the packaged tokenizer.json pads to 128; one text needs no padding
    texts = ["A man is playing a guitar.", "Embeddings map sentences to vectors!"]
    ours = np.array(handle.model.embed(texts))
    for text, vec in zip(texts, ours, strict=True):
        ids = hf.encode(text).ids  # [CLS] ... [SEP], as sentence-transformers feeds BERT
        ref = reference_embedding(ids)
        assert float(vec @ ref) > 0.999, text
        # llama.cpp's WordPiece tokenizer over the converted vocabulary agrees with HF's.
        assert handle.model.count_tokens(text) in (len(ids), len(ids) - 2)


def test_a_package_of_another_version_is_refused(tmp_path: Path) -> None:
    """The derivation pins its parent: different weights are not silently converted."""
    builtin = Registry(Settings.from_env({"LOCARA_HOME": str(tmp_path)})).get("all-minilm-l6-v2")
    data = json.loads(builtin.model_dump_json(by_alias=True, exclude_none=True))
    art = data["artifacts"]["llama_cpp"][0]
    art["mirrors"] = [m.replace(PARENT_SHA, "0" * 64) for m in art["mirrors"]]
    reg = tmp_path / "registry"
    reg.mkdir()
    (reg / "all-minilm-l6-v2.json").write_text(json.dumps(data))
    settings = Settings.from_env(
        {"LOCARA_HOME": str(tmp_path / "home"), "LOCARA_REGISTRY_PATH": str(reg)}
    )
    with pytest.raises(IntegrityError) as exc:
        resolve(settings, "all-minilm-l6-v2")
    assert "not the version this manifest was built from" in exc.value.message


def test_an_input_of_exactly_the_context_embeds(handle: ModelHandle) -> None:
    """count_tokens counts what embed hands llama.cpp, [CLS] and [SEP] included."""
    from locara.errors import ContextOverflowError

    model = handle.model
    assert model.count_tokens("hello") == 3  # [CLS] hello [SEP]
    words = model.n_ctx - 2
    exact = " ".join(["hello"] * words)
    assert model.count_tokens(exact) == model.n_ctx
    assert len(model.embed([exact])[0]) == 384
    with pytest.raises(ContextOverflowError):
        model.embed([exact + " hello"])
