"""LoRA adapters bound to their base by digest: add, apply, refuse, merge, lineage (issue #11).

Real adapters for the bundled SmolLM2 (tests/adapter_material.py), the real model in
process, the real CLI in a subprocess and a real server on loopback.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest

from adapter_material import (
    base_shapes,
    factors,
    target_names,
    write_f32_variant,
    write_lora,
    write_peft,
)
from conftest import DEFAULT_MODEL, DEFAULT_SHA, packaged_gguf, run_cli
from locara.backends.base import AdapterUse, GenerationRequest, LoadOptions, Message, Sampling
from locara.ecology.adapters import AdapterRegistry, AdapterSpec, BaseArtifact
from locara.engine.loader import ModelHandle, load, resolve
from locara.errors import AdapterMismatchError, UnknownAdapterError, UsageError
from locara.settings import Settings
from server_harness import running_server

REPO = Path(__file__).resolve().parent.parent
OTHER = "smollm2-f32-targets"  # same shapes as the default model, other bytes
STD = 0.15  # strong enough to change the greedy answer
ASK = (Message("user", "Name the capital city of France."),)


@dataclass
class Eco:
    home: Path
    registry: Path
    settings: Settings
    material: Path
    other_sha: str
    shapes: dict[str, tuple[int, ...]]

    def env(self) -> dict[str, str]:
        return {"LOCARA_REGISTRY_PATH": str(self.registry)}

    def cli(self, *args: str) -> Any:
        return run_cli(*args, home=self.home, env=self.env())


@pytest.fixture(scope="module")
def eco(tmp_path_factory: pytest.TempPathFactory) -> Eco:
    root = tmp_path_factory.mktemp("adapters")
    material, registry = root / "material", root / "registry"
    material.mkdir()
    registry.mkdir()
    base = packaged_gguf()
    shapes = base_shapes(base)
    other = write_f32_variant(base, material / "f32-targets.gguf", target_names())
    other_sha = hashlib.sha256(other.read_bytes()).hexdigest()
    manifest = json.loads((REPO / f"registry/models/{DEFAULT_MODEL}.json").read_text())
    manifest.update(id=OTHER, displayName=OTHER, curated=False, tags=["chat"])
    manifest["artifacts"] = {
        "llama_cpp": [
            {
                "format": "gguf",
                "quant": "Q4_1",
                "mirrors": [other.as_uri()],
                "sha256": other_sha,
                "size_bytes": other.stat().st_size,
            }
        ]
    }
    (registry / f"{OTHER}.json").write_text(json.dumps(manifest))
    home = root / "home"
    settings = Settings.from_env({"LOCARA_HOME": str(home), "LOCARA_REGISTRY_PATH": str(registry)})
    resolve(settings, None)
    resolve(settings, OTHER)
    pairs = factors(shapes, target_names(), rank=4, seed=1, std=STD)
    write_lora(material / "tiny.gguf", pairs, alpha=8.0)
    write_lora(material / "tiny-alpha16.gguf", pairs, alpha=16.0)
    reg = AdapterRegistry(settings)
    base_art = BaseArtifact(DEFAULT_SHA, base, DEFAULT_MODEL)
    other_art = BaseArtifact(other_sha, other, OTHER)
    reg.add(material / "tiny.gguf", base_art, adapter_id="tiny", task="test")
    reg.add(material / "tiny-alpha16.gguf", base_art, adapter_id="tiny-alpha16")
    reg.add(material / "tiny.gguf", other_art, adapter_id="tiny-f32")
    return Eco(home, registry, settings, material, other_sha, shapes)


@pytest.fixture(scope="module")
def model(eco: Eco) -> Iterator[ModelHandle]:
    """The default model in process (pinned options: llama-cpp-python, not a worker)."""
    handle = load(eco.settings, resolve(eco.settings, None), LoadOptions(n_ctx=256, n_threads=1))
    yield handle
    handle.close()


def bind(eco: Eco, handle: ModelHandle, *specs: str) -> tuple[AdapterUse, ...]:
    res = handle.resolved
    base = BaseArtifact(res.blob.sha256, res.blob.path, res.manifest.id)
    return AdapterRegistry(eco.settings).bind([AdapterSpec.parse(s) for s in specs], base)


def greedy(
    handle: ModelHandle,
    adapters: tuple[AdapterUse, ...] = (),
    seed: int | None = 0,
    chat: bool = False,
) -> tuple[str, Any, list[float]]:
    """Greedy answer, usage, and every logprob; seeded: the whole prompt is evaluated.

    A short raw prompt unless ``chat`` (the CPU here is shared: keep the work small).
    """
    req = GenerationRequest(
        messages=ASK if chat else (),
        prompt=None if chat else "The capital of France is",
        max_tokens=8 if chat else 5,
        sampling=Sampling(temperature=0.0, top_k=1, seed=seed),
        logprobs=3,
        adapters=adapters,
    )
    chunks = list(handle.model.generate(req))
    logprobs = [lp.logprob for c in chunks for lp in c.logprobs]
    alts = [a[1] for c in chunks for lp in c.logprobs for a in lp.top]
    return "".join(c.text for c in chunks), chunks[-1].usage, logprobs + alts


# -- the registry ------------------------------------------------------------------------


def test_add_binds_the_manifest_to_the_base_digest(eco: Eco) -> None:
    r = eco.cli("adapter", "show", "tiny", "--json")
    assert r.returncode == 0, r.stderr
    m = json.loads(r.stdout)
    assert m["base"] == {"sha256": DEFAULT_SHA, "model_id": DEFAULT_MODEL, "architecture": "llama"}
    f = m["files"][0]
    stored = eco.home / "models" / f["sha256"] / "model.gguf"
    assert hashlib.sha256(stored.read_bytes()).hexdigest() == f["sha256"]
    assert f["size_bytes"] == stored.stat().st_size
    assert m["lora"]["rank"] == 4 and m["lora"]["alpha"] == 8.0
    assert m["lora"]["target_modules"] == ["attn_v", "ffn_down"]
    assert m["lora"]["source"] == {"format": "gguf", "convention": "alpha/rank", "alpha": 8.0,
                                   "scale": None}  # fmt: skip
    listed = json.loads(eco.cli("adapter", "ls", "--json").stdout)
    assert {x["id"] for x in listed} >= {"tiny", "tiny-alpha16", "tiny-f32"}
    text = eco.cli("adapter", "ls").stdout
    assert "tiny" in text and DEFAULT_SHA[:12] in text


def test_manifest_json_schema_in_docs_is_current() -> None:
    from locara.ecology.adapter_manifest import json_schema

    assert (REPO / "docs/adapter-manifest.schema.json").read_text() == json_schema()


# -- applied, exactly ----------------------------------------------------------------------


def test_scale_zero_reproduces_the_base_answer_and_logits(eco: Eco, model: ModelHandle) -> None:
    base_text, _, base_lp = greedy(model)
    text, _, lp = greedy(model, bind(eco, model, "tiny:0"))
    assert text == base_text and "Paris" in text, text
    assert lp == base_lp


def test_a_nonzero_scale_changes_the_answer_deterministically(eco: Eco, model: ModelHandle) -> None:
    base_text, _, _ = greedy(model)
    uses = bind(eco, model, "tiny:1")
    first, second = greedy(model, uses), greedy(model, uses)
    assert first[0] != base_text
    assert first[0] == second[0] and first[2] == second[2]


def test_doubling_alpha_while_halving_the_scale_gives_the_same_logits(
    eco: Eco, model: ModelHandle
) -> None:
    a = greedy(model, bind(eco, model, "tiny:1"))
    b = greedy(model, bind(eco, model, "tiny-alpha16:0.5"))
    assert a[0] == b[0]
    assert np.allclose(a[2], b[2], atol=1e-4)


def test_switching_adapters_never_serves_a_stale_prefix(eco: Eco, model: ModelHandle) -> None:
    """Unseeded requests reuse the KV prefix; a swap must evaluate the prompt afresh."""
    uses = bind(eco, model, "tiny:1")
    fresh_base = greedy(model, seed=None)
    assert greedy(model, seed=None)[1].cached_tokens > 0  # the same prompt: prefix reused
    with_adapter = greedy(model, uses, seed=None)
    assert with_adapter[1].cached_tokens == 0  # the base's KV was not reused
    assert greedy(model, uses, seed=None)[1].cached_tokens > 0  # same stack: reused again
    back = greedy(model, seed=None)
    assert back[1].cached_tokens == 0
    assert back[0] == fresh_base[0] and back[2] == fresh_base[2]
    again = greedy(model, uses, seed=None)
    assert again[1].cached_tokens == 0
    assert again[0] == with_adapter[0] and again[2] == with_adapter[2]


def test_a_stack_of_two_is_applied_deterministically_in_any_order(
    eco: Eco, model: ModelHandle
) -> None:
    one = greedy(model, bind(eco, model, "tiny:0.5"))
    other = greedy(model, bind(eco, model, "tiny-alpha16:0.25"))
    both = greedy(model, bind(eco, model, "tiny:0.5", "tiny-alpha16:0.25"))
    assert both[2] != one[2] and both[2] != other[2]
    assert greedy(model, bind(eco, model, "tiny-alpha16:0.25", "tiny:0.5"))[2] == both[2]
    assert greedy(model, bind(eco, model, "tiny:0.5", "tiny-alpha16:0"))[2] == one[2]


# -- refused before load ---------------------------------------------------------------------


def test_another_base_with_identical_shapes_is_refused_by_digest(eco: Eco) -> None:
    r = eco.cli("run", OTHER, "Say hi", "--adapter", "tiny", "--max-tokens", "4")
    assert r.returncode == 1
    assert f"adapter tiny was made for base sha256:{DEFAULT_SHA}" in r.stderr
    assert f"sha256:{eco.other_sha}" in r.stderr
    assert f"hint: run it on its base: locara run {DEFAULT_MODEL}@sha256:{DEFAULT_SHA}" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 2


def test_bind_refuses_before_llama_cpp_sees_the_adapter(eco: Eco) -> None:
    reg = AdapterRegistry(eco.settings)
    other = BaseArtifact(eco.other_sha, eco.material / "f32-targets.gguf", OTHER)
    with pytest.raises(AdapterMismatchError, match=eco.other_sha):
        reg.bind([AdapterSpec("tiny")], other)
    with pytest.raises(UnknownAdapterError, match="unknown adapter 'nope'") as err:
        reg.bind([AdapterSpec("nope")], other)
    assert err.value.hint and "locara adapter ls" in err.value.hint
    for bad in ("tiny:9", "tiny:nan", "tiny:-inf"):
        with pytest.raises(UsageError, match="outside"):
            reg.bind([AdapterSpec.parse(bad)], other)
    for bad in ("Tiny", "tiny:", "a:b:c", "../x"):
        with pytest.raises(UsageError, match="invalid adapter"):
            AdapterSpec.parse(bad)


def test_the_cli_runs_an_adapter_on_its_base(eco: Eco, model: ModelHandle) -> None:
    expected = greedy(model, bind(eco, model, "tiny:1"), chat=True)[0]
    r = eco.cli(
        "run", DEFAULT_MODEL, "Name the capital city of France.", "--adapter", "tiny",
        "--temperature", "0", "--top-k", "1", "--max-tokens", "8", "--json",
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["text"] == expected
    assert out["adapters"][0]["id"] == "tiny" and out["adapters"][0]["scale"] == 1.0
    assert out["plan"]["runtime"] == "in-process"
    r = eco.cli("run", DEFAULT_MODEL, "hi", "--adapter", "nope")
    assert r.returncode == 1 and "unknown adapter 'nope'" in r.stderr


# -- bad adapters are refused at add, and nothing stays ---------------------------------------


def _store_state(eco: Eco) -> tuple[set[str], set[str], list[str]]:
    models = {p.name for p in (eco.home / "models").iterdir()}
    adapters = {p.name for p in (eco.home / "adapters").iterdir()}
    tmp = [p.name for p in (eco.home / "models" / ".tmp").iterdir()]
    return models, adapters, tmp


def _bad_add(eco: Eco, source: Path, *extra: str) -> str:
    before = _store_state(eco)
    r = eco.cli("adapter", "add", str(source), "--base", DEFAULT_MODEL, "--id", "bad", *extra)
    assert r.returncode == 1, r.stdout
    assert _store_state(eco) == before
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 2 and lines[1].startswith("  hint: "), r.stderr
    return lines[0]


def test_bad_adapter_files_are_refused_with_one_line_and_a_hint(eco: Eco, tmp_path: Path) -> None:
    pairs = factors(eco.shapes, target_names(layers=[0]), rank=2, seed=3)
    other_arch = write_lora(tmp_path / "qwen.gguf", pairs, 8.0, arch="qwen2")
    assert "is for the qwen2 architecture, but the model is llama" in _bad_add(eco, other_arch)

    missing = {"blk.99.attn_v.weight": next(iter(pairs.values()))}
    no_tensor = write_lora(tmp_path / "missing.gguf", missing, 8.0)
    assert "adapts blk.99.attn_v.weight, which the model does not have" in _bad_add(eco, no_tensor)

    a, _ = pairs["blk.0.attn_v.weight"]
    wrong = write_lora(
        tmp_path / "shape.gguf", {"blk.0.attn_v.weight": (a, np.zeros((100, 2), np.float32))}, 8.0
    )
    assert "expects blk.0.attn_v.weight of shape (576, 100)" in _bad_add(eco, wrong)

    whole = (eco.material / "tiny.gguf").read_bytes()
    truncated = tmp_path / "truncated.gguf"
    truncated.write_bytes(whole[: len(whole) // 2])
    assert "is truncated" in _bad_add(eco, truncated)

    not_gguf = tmp_path / "adapter.bin"
    not_gguf.write_bytes(b"PK\x03\x04 not a gguf at all")
    assert "is not a GGUF file" in _bad_add(eco, not_gguf)

    assert "is a model, not a LoRA adapter" in _bad_add(eco, packaged_gguf())

    empty_dir = tmp_path / "peft-empty"
    empty_dir.mkdir()
    (empty_dir / "adapter_model.safetensors").write_bytes(b"")
    assert "has no adapter_config.json" in _bad_add(eco, empty_dir)

    dora = write_peft(tmp_path / "dora", {}, rank=2, alpha=4, use_dora=True)
    assert "it is a DoRA adapter (use_dora)" in _bad_add(eco, dora)

    assert "does not exist" in _bad_add(eco, tmp_path / "nowhere.gguf")


def test_unknown_ids_and_duplicates(eco: Eco) -> None:
    r = eco.cli("adapter", "show", "nope")
    assert r.returncode == 1 and "unknown adapter 'nope'" in r.stderr and "hint:" in r.stderr
    r = eco.cli("adapter", "rm", "nope")
    assert r.returncode == 1 and "unknown adapter 'nope'" in r.stderr
    r = eco.cli(
        "adapter", "add", str(eco.material / "tiny.gguf"), "--base", DEFAULT_MODEL, "--id", "tiny"
    )
    assert r.returncode == 1 and "adapter 'tiny' already exists" in r.stderr


def test_rm_removes_the_manifest_and_its_blob(eco: Eco) -> None:
    r = eco.cli(
        "adapter", "add", str(eco.material / "tiny.gguf"), "--base", DEFAULT_MODEL, "--id", "gone"
    )
    assert r.returncode == 0, r.stderr
    # Another adapter id holds the same bytes: the blob stays until the last one goes.
    sha = json.loads(eco.cli("adapter", "show", "gone", "--json").stdout)["files"][0]["sha256"]
    assert eco.cli("adapter", "rm", "gone").returncode == 0
    assert (eco.home / "models" / sha).is_dir()  # "tiny" still holds it
    assert not (eco.home / "adapters" / "gone.json").exists()


# -- PEFT --------------------------------------------------------------------------------------


def test_peft_q_and_k_rows_are_permuted_like_llama_cpp(eco: Eco, tmp_path: Path) -> None:
    """GGUF row 2j of head h is Hugging Face row j of that head, row 2j+1 is row j + d/2."""
    from gguf import GGUFReader

    from locara.device.gguf_meta import read_gguf

    names = target_names(("attn_q", "attn_k", "attn_v"), layers=[0])
    pairs = factors(eco.shapes, names, rank=2, seed=5)
    peft = write_peft(tmp_path / "peft", pairs, rank=2, alpha=4)
    m = AdapterRegistry(eco.settings).add(
        peft, BaseArtifact(DEFAULT_SHA, packaged_gguf(), DEFAULT_MODEL), adapter_id="peft-qk"
    )
    assert m.lora.target_modules == ["attn_k", "attn_q", "attn_v"]
    stored = AdapterRegistry(eco.settings).blob_path(m)
    got = {t.name: np.asarray(t.data) for t in GGUFReader(str(stored)).tensors}
    info = read_gguf(packaged_gguf())
    head_dim = info.n_embd // info.n_heads
    for kind, heads in (("attn_q", info.n_heads), ("attn_k", info.n_kv_heads)):
        a, b = pairs[f"blk.0.{kind}.weight"]
        gb = got[f"blk.0.{kind}.weight.lora_b"]
        assert np.array_equal(got[f"blk.0.{kind}.weight.lora_a"], a)
        for h in range(heads):
            for j in range(head_dim // 2):
                assert np.array_equal(gb[h * head_dim + 2 * j], b[h * head_dim + j])
                assert np.array_equal(
                    gb[h * head_dim + 2 * j + 1], b[h * head_dim + head_dim // 2 + j]
                )
    a, b = pairs["blk.0.attn_v.weight"]
    assert np.array_equal(got["blk.0.attn_v.weight.lora_b"], b)  # V is not permuted


def test_rslora_is_converted_to_the_same_delta(
    eco: Eco, model: ModelHandle, tmp_path: Path
) -> None:
    """rsLoRA scales by alpha/sqrt(r): as GGUF, alpha*sqrt(r) under llama.cpp's alpha/r."""
    pairs = factors(eco.shapes, target_names(), rank=4, seed=1, std=STD)
    rs = write_peft(tmp_path / "rs", pairs, rank=4, alpha=4, use_rslora=True)
    m = AdapterRegistry(eco.settings).add(
        rs, BaseArtifact(DEFAULT_SHA, packaged_gguf(), DEFAULT_MODEL), adapter_id="rs"
    )
    assert m.lora.alpha == pytest.approx(8.0)  # 4 * sqrt(4)
    assert m.lora.source.convention == "alpha/sqrt(rank)" and m.lora.source.alpha == 4
    a = greedy(model, bind(eco, model, "rs:1"))
    b = greedy(model, bind(eco, model, "tiny:1"))  # the same factors, alpha 8
    assert a[0] == b[0] and np.allclose(a[2], b[2], atol=1e-4)
    lineage = eco.cli("lineage", f"sha256:{m.sha256}", "--json")
    rec = json.loads(lineage.stdout)["records"][0]
    assert rec["operator"] == "attach" and rec["params"]["from"] == "peft"
    peft_sha = hashlib.sha256((rs / "adapter_model.safetensors").read_bytes()).hexdigest()
    assert rec["parents"] == [DEFAULT_SHA, peft_sha]


# -- merge and lineage -------------------------------------------------------------------------


def test_merge_then_run_equals_run_with_adapter(eco: Eco, tmp_path: Path) -> None:
    merged = tmp_path / "merged.gguf"
    r = eco.cli(
        "adapter", "merge", OTHER, "tiny-f32", "-o", str(merged), "--register", "tiny-merged"
    )
    assert r.returncode == 0, r.stderr
    settings = eco.settings
    opts = LoadOptions(n_ctx=256, n_threads=1)
    base = load(settings, resolve(settings, OTHER), opts)
    try:
        applied = greedy(base, bind(eco, base, "tiny-f32:1"))
        plain = greedy(base)
    finally:
        base.close()
    baked = load(settings, resolve(settings, "tiny-merged"), opts)
    try:
        assert baked.resolved.blob.sha256 == hashlib.sha256(merged.read_bytes()).hexdigest()
        got = greedy(baked)
    finally:
        baked.close()
    assert got[0] == applied[0] != plain[0]
    # (W + s B A) x against W x + s B (A x): equal up to float rounding, which this strong
    # adapter amplifies along the answer (measured: 0.025 on the first token's logprob).
    assert abs(got[2][0] - applied[2][0]) < 0.05
    assert float(np.abs(np.subtract(got[2], applied[2])).mean()) < 0.15

    # The chain from the merged model to its root base, by digest.
    out = json.loads(eco.cli("lineage", "tiny-merged", "--json").stdout)
    rec = out["records"][0]
    adapter_sha = AdapterRegistry(settings).get("tiny-f32").sha256
    assert rec["operator"] == "merge" and rec["parents"] == [eco.other_sha, adapter_sha]
    assert rec["params"]["adapter"] == "tiny-f32" and rec["params"]["alpha"] == 8.0
    text = eco.cli("lineage", "tiny-merged").stdout
    assert "<- merge" in text and "<- attach" in text
    assert f"{OTHER} ({eco.other_sha[:12]})  [root]" in text  # merged → adapter → base
    dot = eco.cli("lineage", "tiny-merged", "--dot").stdout
    assert dot.startswith("digraph lineage {") and f'"{eco.other_sha[:12]}" ->' in dot


def test_merge_refuses_a_quantized_target_and_writes_nothing(eco: Eco, tmp_path: Path) -> None:
    out = tmp_path / "never.gguf"
    r = eco.cli("adapter", "merge", DEFAULT_MODEL, "tiny", "-o", str(out))
    assert r.returncode == 1
    assert "is Q4_1 in the base; merging needs F32 or F16 weights" in r.stderr
    assert not out.exists() and not list(tmp_path.iterdir())


# -- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(eco: Eco) -> Iterator[str]:
    with running_server(eco.home, eco.env()) as s:
        yield s.url


def _chat(url: str, model: str, adapters: Any) -> httpx.Response:
    body = {"model": model, "messages": [{"role": "user", "content": ASK[0].content}],
            "temperature": 0, "top_k": 1, "max_tokens": 8, "adapters": adapters}  # fmt: skip
    return httpx.post(f"{url}/v1/chat/completions", json=body, timeout=120)


def test_the_server_refuses_an_adapter_for_another_base(server: str, eco: Eco) -> None:
    r = _chat(server, OTHER, ["tiny"])
    assert r.status_code == 400
    err = r.json()["error"]
    assert DEFAULT_SHA in err["message"] and eco.other_sha in err["message"]
    assert err["hint"].startswith("run it on its base")
    r = httpx.post(f"{server}/api/chat", json={"model": OTHER, "stream": False,
                   "messages": [{"role": "user", "content": "hi"}], "adapters": ["tiny"]},
                   timeout=120)  # fmt: skip
    assert r.status_code == 400 and eco.other_sha in r.json()["error"]
    r = _chat(server, DEFAULT_MODEL, [{"id": "nope"}])
    assert r.status_code == 400 and "unknown adapter 'nope'" in r.json()["error"]["message"]
    r = _chat(server, DEFAULT_MODEL, ["tiny:50"])
    assert r.status_code == 400 and "outside" in r.json()["error"]["message"]


def test_the_server_applies_adapters_per_request(server: str, eco: Eco, model: ModelHandle) -> None:
    """The server's llama-server worker loads the base's adapters and applies the ones a
    request names. Its numerics are not the in-process run's (another batch shape), so the
    check against in process is on the first answer token's distribution, not on text: a
    random adapter this strong turns small differences into other words."""
    _, _, in_process = greedy(model, bind(eco, model, "tiny:1"))
    _, _, plain = greedy(model)

    def first_logprob(adapters: Any) -> tuple[float, str]:
        r = httpx.post(f"{server}/v1/completions", json={
            "model": DEFAULT_MODEL, "prompt": "The capital of France is", "max_tokens": 5,
            "temperature": 0, "top_k": 1, "seed": 0, "logprobs": 1, "adapters": adapters,
        }, timeout=120)  # fmt: skip
        assert r.status_code == 200, r.text
        choice = r.json()["choices"][0]
        return choice["logprobs"]["token_logprobs"][0], choice["text"]

    lp, with_adapter = first_logprob(["tiny:1"])
    assert lp == pytest.approx(in_process[0], abs=0.05)  # the adapter is applied, at its scale
    base_lp, base = first_logprob(None)
    assert base_lp == pytest.approx(plain[0], abs=0.05) and abs(base_lp - lp) > 0.2
    assert with_adapter != base
    # Deterministic, and the next request without adapters gets the base: no stale prefix.
    assert first_logprob(["tiny:1"])[1] == with_adapter
    assert first_logprob([])[1] == base
    r = httpx.post(f"{server}/api/generate", json={"model": DEFAULT_MODEL, "stream": False,
                   "prompt": "The capital of France is", "raw": True, "adapters": ["tiny:1"],
                   "options": {"temperature": 0, "top_k": 1, "num_predict": 5, "seed": 0}},
                   timeout=120)  # fmt: skip
    assert r.status_code == 200 and r.json()["response"] == with_adapter
    ps = httpx.get(f"{server}/api/ps").json()["models"]
    assert ps[0]["locara"]["runtime"] == "llama-server"  # the worker applies them


def test_removing_the_base_of_an_adapter_is_refused(eco: Eco) -> None:
    r = eco.cli("rm", OTHER)
    assert r.returncode == 1 and "adapter-base:tiny-f32" in r.stderr


def test_adapters_share_the_store_but_are_not_listed_as_models(server: str, eco: Eco) -> None:
    models = {m["id"] for m in httpx.get(f"{server}/v1/models").json()["data"]}
    tags = {m["name"] for m in httpx.get(f"{server}/api/tags").json()["models"]}
    assert DEFAULT_MODEL in models and f"{DEFAULT_MODEL}:latest" in tags
    assert not {"tiny", "tiny-f32"} & models and not {"tiny:latest"} & tags
    names = {line.split()[0] for line in eco.cli("ls").stdout.splitlines()[1:] if line.strip()}
    # (a model merged from an adapter, tiny-merged, is a model: listed.)
    assert DEFAULT_MODEL in names and not {"tiny", "tiny-f32"} & names
