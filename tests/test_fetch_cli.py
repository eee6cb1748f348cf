"""`locara pull` and `locara search` as a user runs them, against a loopback server."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.apps.install import install_app
from locara.registry.manifest import tree_digest
from locara.settings import Settings
from locara.store.blobs import BlobStore, hash_file
from locara.store.gc import remove_blob
from loopback_server import LoopbackServer, write_manifest

PATH = "/org/repo/resolve/main/model.gguf"


@pytest.fixture
def server(default_gguf: Path) -> Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    srv.add(PATH, default_gguf)
    yield srv
    srv.stop()


def test_pull_json_prints_the_pin(home: Path, tmp_path: Path, server: LoopbackServer) -> None:
    reg = tmp_path / "reg"
    write_manifest(
        reg, "loop", {"url": server.url + PATH, "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE}
    )
    res = run_cli("pull", "loop:Q4_1", "--json", home=home, env={"LOCARA_REGISTRY_PATH": str(reg)})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["pin"] == f"loop@sha256:{DEFAULT_SHA}" and out["size_bytes"] == DEFAULT_SIZE
    assert hash_file(Path(out["path"]))[0] == DEFAULT_SHA
    # unknown quant and unknown digest are clear errors with the valid choices
    bad = run_cli("pull", "loop:Q8_0", home=home, env={"LOCARA_REGISTRY_PATH": str(reg)})
    assert bad.returncode == 1 and "loop:Q4_1" in bad.stderr
    bad = run_cli(
        "pull", f"loop@sha256:{'1' * 64}", home=home, env={"LOCARA_REGISTRY_PATH": str(reg)}
    )
    assert bad.returncode == 1 and f"loop@sha256:{DEFAULT_SHA}" in bad.stderr


def test_uncurated_entry_without_hash_warns_then_trusts_first_use(
    home: Path, tmp_path: Path, server: LoopbackServer
) -> None:
    reg = tmp_path / "reg"
    write_manifest(reg, "unsure", {"url": server.url + PATH}, curated=False)
    env = {"LOCARA_REGISTRY_PATH": str(reg)}
    res = run_cli("pull", "unsure", "--json", home=home, env=env)
    assert res.returncode == 0, res.stderr
    assert "warning: unsure is not curated" in res.stderr
    out = json.loads(res.stdout)
    assert out["sha256"] == DEFAULT_SHA  # the digest computed while downloading
    # the recorded digest is used from now on: no new download, the bytes re-verified
    server.fault(PATH, "wrong_bytes")
    res = run_cli("pull", "unsure", "--json", home=home, env=env)
    assert res.returncode == 0 and json.loads(res.stdout)["sha256"] == DEFAULT_SHA
    assert len(server.requests(PATH)) == 1


def test_pull_hash_mismatch_cli_names_expected_and_actual(
    home: Path, tmp_path: Path, server: LoopbackServer
) -> None:
    server.fault(PATH, "wrong_bytes")
    reg = tmp_path / "reg"
    write_manifest(
        reg, "loop", {"url": server.url + PATH, "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE}
    )
    res = run_cli("pull", "loop", home=home, env={"LOCARA_REGISTRY_PATH": str(reg)})
    assert res.returncode == 1
    assert f"expected {DEFAULT_SHA}, got " in res.stderr and "hint:" in res.stderr
    assert not (home / "models" / DEFAULT_SHA).exists()


def test_multi_file_artifact_is_a_directory_of_links(
    home: Path, tmp_path: Path, server: LoopbackServer
) -> None:
    proj = tmp_path / "mmproj.gguf"
    proj.write_bytes(os.urandom(300_000))
    proj_sha, proj_size = hash_file(proj)
    server.add("/mmproj.gguf", proj)
    files = [
        {"name": "model-q4.gguf", "url": server.url + PATH, "sha256": DEFAULT_SHA,
         "size_bytes": DEFAULT_SIZE, "role": "model"},
        {"name": "mmproj-f16.gguf", "url": server.url + "/mmproj.gguf", "sha256": proj_sha,
         "size_bytes": proj_size, "role": "mmproj"},
    ]  # fmt: skip
    reg = tmp_path / "reg"
    write_manifest(reg, "vis", {"files": files}, modality="vision")
    digest = tree_digest([("model-q4.gguf", DEFAULT_SHA), ("mmproj-f16.gguf", proj_sha)])
    res = run_cli("pull", "vis", "--json", home=home, env={"LOCARA_REGISTRY_PATH": str(reg)})
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert out["sha256"] == digest and out["size_bytes"] == DEFAULT_SIZE + proj_size
    tree = home / "models" / digest
    assert Path(out["path"]) == tree / "model-q4.gguf"
    # each file is stored under its own hash; the tree links them side by side
    assert (tree / "model-q4.gguf").stat().st_ino == (
        home / "models" / DEFAULT_SHA / "model.gguf"
    ).stat().st_ino
    assert (tree / "mmproj-f16.gguf").stat().st_ino == (
        home / "models" / proj_sha / "model.gguf"
    ).stat().st_ino
    settings = Settings.from_env({"LOCARA_HOME": str(home), "LOCARA_REGISTRY_PATH": str(reg)})
    store = BlobStore(settings)
    assert sorted(f.name for f in store.verify(digest, deep=True).files) == [
        "mmproj-f16.gguf",
        "model-q4.gguf",
    ]
    # an app pins the tree digest and gets the directory
    app = tmp_path / "app"
    app.mkdir()
    (app / "locara.app.json").write_text(
        json.dumps({"id": "seer", "name": "S", "version": "1", "models": [f"vis@sha256:{digest}"]})
    )
    install_app(settings, app)
    assert sorted(p.name for p in (settings.apps_dir / "seer" / "models" / "vis").iterdir()) == [
        "mmproj-f16.gguf",
        "model-q4.gguf",
    ]
    # removing the tree (once unpinned) removes its files no other tree uses
    store.index.remove_refs("app:seer")
    assert sorted(remove_blob(store, digest)) == sorted([digest, DEFAULT_SHA, proj_sha])
    assert not tree.exists() and store.find(DEFAULT_SHA) is None


def test_corrupt_file_of_a_tree_takes_the_tree_down(
    home: Path, tmp_path: Path, server: LoopbackServer
) -> None:
    proj = tmp_path / "mmproj.gguf"
    proj.write_bytes(os.urandom(300_000))
    proj_sha, proj_size = hash_file(proj)
    server.add("/mmproj.gguf", proj)
    files = [
        {"name": "a.gguf", "url": server.url + PATH, "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE},
        {"name": "b.gguf", "url": server.url + "/mmproj.gguf", "sha256": proj_sha, "size_bytes": proj_size},
    ]  # fmt: skip
    reg = tmp_path / "reg"
    write_manifest(reg, "vis", {"files": files})
    env = {"LOCARA_REGISTRY_PATH": str(reg)}
    out = json.loads(run_cli("pull", "vis", "--json", home=home, env=env).stdout)
    part = home / "models" / proj_sha / "model.gguf"
    os.chmod(part, 0o644)
    part.write_bytes(b"\0" * proj_size)  # same size, different bytes
    res = run_cli("cache", "verify", home=home, env=env)
    assert res.returncode == 1 and "CORRUPT" in res.stdout
    # neither the file nor the tree that linked it is left under a content name
    assert not (home / "models" / proj_sha).exists()
    assert not (home / "models" / out["sha256"]).exists()
    # and a new pull rebuilds both, fetching only what is missing
    before = len(server.log)
    assert run_cli("pull", "vis", home=home, env=env).returncode == 0
    assert [e.path for e in server.log[before:]] == ["/mmproj.gguf"]
    # --repair does the same by itself: the file from its source, the tree via its manifest
    os.chmod(part, 0o644)
    part.write_bytes(b"\1" * proj_size)
    res = run_cli("cache", "verify", "--repair", home=home, env=env)
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.count("repaired") >= 1
    res = run_cli("cache", "verify", "--deep", home=home, env=env)
    assert res.returncode == 0 and f"ok       {out['sha256'][:12]}" in res.stdout


def test_search_uses_hf_endpoint(home: Path) -> None:
    srv = LoopbackServer().start()
    try:
        srv.hf_models = [
            {"id": "org/Qwen2.5-3B-GGUF", "downloads": 500, "likes": 5, "tags": ["gguf"]},
            {"id": "mlx-community/Qwen2.5-3B-4bit", "downloads": 900, "likes": 9, "tags": ["mlx"]},
            {"id": "org/other-GGUF", "downloads": 1, "likes": 0, "tags": ["gguf"]},
        ]
        res = run_cli("search", "qwen", "--json", home=home, env={"HF_ENDPOINT": srv.url})
        assert res.returncode == 0, res.stderr
        rows = json.loads(res.stdout)
        assert [(r["id"], r["format"]) for r in rows] == [
            ("mlx-community/Qwen2.5-3B-4bit", "mlx"),
            ("org/Qwen2.5-3B-GGUF", "gguf"),
        ]
        queries = [e.query for e in srv.log if e.path == "/api/models"]
        assert any("filter=gguf" in q for q in queries) and any("filter=mlx" in q for q in queries)
        res = run_cli("search", "qwen", "--format", "gguf", home=home, env={"HF_ENDPOINT": srv.url})
        assert "org/Qwen2.5-3B-GGUF" in res.stdout and "mlx-community" not in res.stdout
    finally:
        srv.stop()


def test_search_offline_and_bad_input(home: Path) -> None:
    res = run_cli("search", "qwen", home=home, env={"LOCARA_OFFLINE": "1"})
    assert res.returncode == 1 and "offline" in res.stderr and "hint:" in res.stderr
    res = run_cli("search", "  ", home=home)
    assert res.returncode == 2


def test_search_unreachable_endpoint_is_a_clear_error(home: Path) -> None:
    res = run_cli(
        "search", "qwen", home=home, env={"HF_ENDPOINT": "http://127.0.0.1:9"}, timeout=120
    )
    assert res.returncode == 1
    assert "error:" in res.stderr and "hint:" in res.stderr and "unexpected" not in res.stderr


def test_pull_hf_shorthand_registers_and_pins(home: Path, server: LoopbackServer) -> None:
    env = {"HF_ENDPOINT": server.url}
    res = run_cli("pull", "hf://org/repo/model.gguf", "--json", home=home, env=env)
    assert res.returncode == 0, res.stderr
    assert "not curated" in res.stderr and "registered hf://org/repo/model.gguf as" in res.stderr
    out = json.loads(res.stdout)
    assert out["sha256"] == DEFAULT_SHA and out["id"] == "org-repo-model"
    manifest = json.loads((home / "registry" / "org-repo-model.json").read_text())
    art = manifest["artifacts"]["llama_cpp"][0]
    assert (art["sha256"], art["size_bytes"]) == (DEFAULT_SHA, DEFAULT_SIZE)
    assert manifest["curated"] is False
    # from now on it is pinned: a changed upstream file is refused, not re-trusted
    res = run_cli("rm", "org-repo-model", home=home, env=env)
    assert res.returncode == 0, res.stderr
    server.fault(PATH, "wrong_bytes")
    res = run_cli("pull", "org-repo-model", home=home, env=env)
    assert res.returncode == 1 and f"expected {DEFAULT_SHA}" in res.stderr
    for bad, error, hint in (
        (
            "hf://org/repo/notes.txt",
            "hf://org/repo/notes.txt is not a .gguf file",
            "pull a GGUF file: hf://owner/repo/model.Q4_K_M.gguf",
        ),
        *(
            (src, f"invalid hf:// source {src!r}", "use hf://owner/repo/file or hf://owner/")
            for src in ("hf://org/../etc/x.gguf", "hf://org")
        ),
    ):
        res = run_cli("pull", bad, home=home, env=env)
        assert res.returncode == 1, bad
        assert f"error: {error}\n  hint: {hint}" in res.stderr, bad
    # A command-line mistake is exit 2, as the README promises.
    res = run_cli("pull", home=home, env=env)
    assert res.returncode == 2 and "Missing argument 'MODEL'" in res.stderr
