"""Fitness vectors, scorecards, release packets and validation (issue #11 items 3, 5, 6).

The bundled model scores on the shipped suite; a tiny adapter is its descendant; the
packet's BOM is validated against CycloneDX 1.6 and its SPDX document parsed back.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
import re
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest

from adapter_material import base_shapes, factors, target_names, write_lora
from conftest import DEFAULT_MODEL, DEFAULT_SHA, packaged_gguf, run_cli
from locara.ecology.adapters import AdapterRegistry, BaseArtifact
from locara.engine.loader import resolve
from locara.settings import Settings
from locara.store.blobs import BlobStore

REPO = Path(__file__).resolve().parent.parent
TWO = [
    {"id": "capital-france", "prompt": "Name the capital city of France.", "check": "contains",
     "expected": "Paris", "max_tokens": 12},
    {"id": "add", "prompt": "What is 2 + 2? Answer with the number only.", "check": "regex",
     "expected": "(?<![0-9])4(?![0-9])", "max_tokens": 8},
]  # fmt: skip


class Home:
    def __init__(self, root: Path) -> None:
        self.home = root / "home"
        self.root = root
        self.settings = Settings.from_env({"LOCARA_HOME": str(self.home)})

    def cli(self, *args: str, cwd: Path | None = None) -> Any:
        return run_cli(*args, home=self.home)


@pytest.fixture(scope="module")
def h(tmp_path_factory: pytest.TempPathFactory) -> Home:
    home = Home(tmp_path_factory.mktemp("fitness"))
    resolve(home.settings, None)
    pairs = factors(base_shapes(packaged_gguf()), target_names(), rank=4, seed=1)
    adapter = write_lora(home.root / "tiny.gguf", pairs, alpha=8.0)
    AdapterRegistry(home.settings).add(
        adapter, BaseArtifact(DEFAULT_SHA, packaged_gguf(), DEFAULT_MODEL), adapter_id="tiny",
        task="demo", license="MIT",
    )  # fmt: skip
    suite = home.root / "two.jsonl"
    suite.write_text("\n".join(json.dumps(x) for x in TWO) + "\n")
    return home


@pytest.fixture(scope="module")
def evaluated(h: Home) -> dict[str, Any]:
    """The base and base+tiny, each evaluated on the two-item suite."""
    suite = str(h.root / "two.jsonl")
    out = {}
    for cand in (DEFAULT_MODEL, f"{DEFAULT_MODEL}+tiny:1"):
        r = h.cli("eval", cand, "--suite", suite, "--json")
        assert r.returncode == 0, r.stderr
        out[cand] = json.loads(r.stdout)
    return out


@pytest.mark.slow
def test_the_shipped_suite_scores_the_bundled_model(h: Home) -> None:
    r = h.cli("eval", DEFAULT_MODEL, "--json")
    assert r.returncode == 0, r.stderr
    v = json.loads(r.stdout)
    shipped = files("locara.ecology").joinpath("suites/basic.jsonl").read_bytes()
    assert v["suite"] == "basic" and v["suite_sha256"] == hashlib.sha256(shipped).hexdigest()
    assert v["base_sha256"] == DEFAULT_SHA and v["adapters"] == []
    u = v["utility"]
    assert u["n"] == len(shipped.splitlines()) and 0 < u["acc"] <= 1
    assert u["ci95"][0] <= u["acc"] <= u["ci95"][1] and u["ci_method"] == "wilson"
    assert v["latency"]["ttft_s"] > 0 and v["latency"]["avg_ts"] > 0
    assert v["memory"]["peak_rss_bytes"] > 50_000_000
    assert v["privacy"] == {"local_only": True, "escalations": 0}
    assert v["size"]["model_size"] == 98_362_432
    assert v["build"]["build_commit"] and v["build"]["runtime"] == "in-process"
    assert {r["id"] for r in v["results"] if r["passed"]} >= {"capital-france"}
    # The suite's bytes are in the store under that digest.
    assert BlobStore(h.settings).verify(v["suite_sha256"]).path.read_bytes() == shipped


def test_eval_records_vectors_bound_to_hashes(h: Home, evaluated: dict[str, Any]) -> None:
    base, tuned = evaluated[DEFAULT_MODEL], evaluated[f"{DEFAULT_MODEL}+tiny:1"]
    tiny = AdapterRegistry(h.settings).get("tiny")
    assert tuned["adapters"] == [{"id": "tiny", "sha256": tiny.sha256, "scale": 1.0}]
    assert tuned["candidate"] == f"{DEFAULT_MODEL}+tiny:1"
    assert base["suite_sha256"] == tuned["suite_sha256"]
    assert tuned["size"]["adapters_size"] == tiny.files[0].size_bytes
    rows = json.loads(h.cli("scorecard", "--json", "--suite", str(h.root / "two.jsonl")).stdout)
    assert {r["candidate"] for r in rows} == {DEFAULT_MODEL, f"{DEFAULT_MODEL}+tiny:1"}


def test_scorecard_table_and_plot(h: Home, evaluated: dict[str, Any]) -> None:
    plot = h.root / "scorecard.png"
    r = h.cli("scorecard", "--plot", str(plot))
    assert r.returncode == 0, r.stderr
    assert "CANDIDATE" in r.stdout and f"{DEFAULT_MODEL}+tiny:1" in r.stdout
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize(
    ("line", "why"),
    [
        ("not json", "line 2: "),
        ('{"id": "x", "prompt": "p", "check": "fuzzy", "expected": "a"}', "line 2: check"),
        ('{"id": "x", "prompt": "p", "check": "regex", "expected": "("}', "not a valid regular"),
        ('{"id": "x", "prompt": "p", "check": "json_schema", "expected": {"type": 3}}',
         "not a valid JSON Schema"),
        ('{"id": "x", "prompt": "p", "check": "exact", "expected": "a", "extra": 1}',
         "line 2: extra"),
        ('{"id": "capital-france", "prompt": "p", "check": "exact", "expected": "a"}',
         "used twice"),
    ],
)  # fmt: skip
def test_a_suite_with_a_malformed_line_names_it(h: Home, line: str, why: str) -> None:
    bad = h.root / "bad.jsonl"
    bad.write_text(json.dumps(TWO[0]) + "\n" + line + "\n")
    before = BlobStore(h.settings).index.blobs()
    r = h.cli("eval", DEFAULT_MODEL, "--suite", str(bad))
    assert r.returncode == 1
    lines = r.stderr.strip().splitlines()
    assert lines[0].startswith("error: suite bad, line 2") and why in lines[0], r.stderr
    assert len(lines) == 2 and lines[1].startswith("  hint: ")
    assert BlobStore(h.settings).index.blobs() == before


def test_a_release_needs_a_scorecard(h: Home, tmp_path: Path) -> None:
    r = h.cli("release", f"{DEFAULT_MODEL}+tiny:0.5", "--niche", "x", "-o", str(tmp_path / "p"))
    assert r.returncode == 1
    assert "has no scorecard" in r.stderr
    assert f"hint: evaluate it first: locara eval {DEFAULT_MODEL}+tiny:0.5" in r.stderr
    assert not (tmp_path / "p").exists()


def test_the_release_packet(h: Home, evaluated: dict[str, Any], tmp_path: Path) -> None:
    from cyclonedx.schema import SchemaVersion
    from cyclonedx.validation.json import JsonStrictValidator
    from spdx_python_model import v3_0_1 as spdx

    out = tmp_path / "packet"
    r = h.cli("release", f"{DEFAULT_MODEL}+tiny:1", "--niche", "terse demo answers", "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert sorted(p.name for p in out.iterdir()) == [
        "RELEASE.md", "bom.cdx.json", "fitness.json", "spdx.json"
    ]  # fmt: skip
    tiny = AdapterRegistry(h.settings).get("tiny")

    bom_text = (out / "bom.cdx.json").read_text()
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(bom_text) is None
    bom = json.loads(bom_text)
    assert bom["specVersion"] == "1.6"
    comp = bom["metadata"]["component"]
    assert comp["type"] == "machine-learning-model" and "terse demo answers" in comp["description"]
    card = comp["modelCard"]
    acc = card["quantitativeAnalysis"]["performanceMetrics"][0]
    assert acc["type"] == "accuracy" and float(acc["value"]) == evaluated[
        f"{DEFAULT_MODEL}+tiny:1"]["utility"]["acc"]  # fmt: skip
    ancestors = {a["hashes"][0]["content"] for a in comp["pedigree"]["ancestors"]}
    assert ancestors == {DEFAULT_SHA, tiny.sha256}
    broken = dict(bom, specVersion="1.6")
    broken["metadata"]["component"]["modelCard"]["quantitativeAnalysis"] = "nope"
    assert JsonStrictValidator(SchemaVersion.V1_6).validate_str(json.dumps(broken)) is not None

    objects = spdx.SHACLObjectSet()
    with (out / "spdx.json").open("rb") as f:
        spdx.JSONLDDeserializer().read(f, objects)
    packages = {p.name: p for p in objects.foreach_type(spdx.ai_AIPackage)}
    release = packages[f"{DEFAULT_MODEL}+tiny:1"]
    assert list(release.ai_domain) == ["terse demo answers"]
    assert {h.hashValue for p in packages.values() for h in p.verifiedUsing} == {
        DEFAULT_SHA, tiny.sha256
    }  # fmt: skip
    rels = list(objects.foreach_type(spdx.Relationship))
    assert sum(r.relationshipType == spdx.RelationshipType.descendantOf for r in rels) == 2

    vectors = json.loads((out / "fitness.json").read_text())
    assert [v["candidate"] for v in vectors] == [f"{DEFAULT_MODEL}+tiny:1", DEFAULT_MODEL]

    note = (out / "RELEASE.md").read_text()
    assert "terse demo answers" in note and "Against its parent: accuracy" in note
    assert "license MIT" in note and "task: demo" in note

    # Every digest anywhere in the packet resolves (and verifies) in the store.
    text = "".join(p.read_text() for p in out.iterdir())
    digests = set(re.findall(r"(?<![0-9a-f])[0-9a-f]{64}(?![0-9a-f])", text))
    assert {DEFAULT_SHA, tiny.sha256} <= digests
    store = BlobStore(h.settings)
    for d in digests:
        store.verify(d)


def test_validate_stamps_a_user_manifest_and_leaves_curated_ones(h: Home) -> None:
    curated = REPO / f"registry/models/{DEFAULT_MODEL}.json"
    before = curated.read_bytes()
    r = h.cli("validate", DEFAULT_MODEL)
    assert r.returncode == 0, r.stderr
    assert "ok    stop token '<|im_end|>'" in r.stdout and "curated: manifest unchanged" in r.stderr
    assert curated.read_bytes() == before

    mine = json.loads(before)
    mine.update(id="my-smol", displayName="my-smol", curated=False)
    mine.pop("validated_at"), mine.pop("validated_by")
    user = h.home / "registry" / "my-smol.json"
    user.parent.mkdir(parents=True, exist_ok=True)
    user.write_text(json.dumps(mine))
    r = h.cli("validate", "my-smol", "--by", "tester", "--json")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["ok"] is True
    stamped = json.loads(user.read_text())
    assert stamped["validated_by"] == "tester"
    assert stamped["validated_at"] == dt.datetime.now(dt.UTC).date().isoformat()


def test_validate_refuses_a_stop_token_outside_the_vocabulary(h: Home) -> None:
    bad = json.loads((REPO / f"registry/models/{DEFAULT_MODEL}.json").read_text())
    bad.update(id="bad-stop", displayName="bad-stop", curated=False)
    bad["config"]["stop_tokens"] = ["<|im_end|>", "<|no_such_token|>"]
    bad.pop("validated_at"), bad.pop("validated_by")
    path = h.home / "registry" / "bad-stop.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(bad))
    r = h.cli("validate", "bad-stop")
    assert r.returncode == 1
    assert "FAIL  stop token '<|no_such_token|>'" in r.stdout
    err = r.stderr.strip().splitlines()
    assert err[0].startswith("error: bad-stop failed validation: stop token '<|no_such_token|>'")
    assert err[1].startswith("  hint: ") and len(err) == 2
    assert "validated_at" not in json.loads(path.read_text())
