"""The store's invariants on real files: corruption found and refused, symlinks refused,
read-only blobs, references and GC, removal, adoption from Ollama/HF caches."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.errors import IntegrityError, PinnedModelError, StoreError
from locara.registry.catalog import Registry
from locara.settings import Settings
from locara.store.adopt import add_local_file, add_local_tree, import_ollama
from locara.store.blobs import BlobStore, hash_file
from locara.store.fetch import ensure_artifact
from locara.store.gc import gc, remove_blob, users_of


def _store_default(settings: Settings) -> Path:
    m = Registry(settings).get(DEFAULT_MODEL)
    art = next(a for a in m.artifact_list("llama_cpp") if a.sha256 == DEFAULT_SHA)
    return ensure_artifact(BlobStore(settings), m, art, settings).path


@pytest.fixture
def stored(settings: Settings) -> Path:
    return _store_default(settings)


def _write(path: Path, fn: object) -> None:
    os.chmod(path, 0o644)
    fn(path)  # type: ignore[operator]
    os.chmod(path, 0o444)


def _flip(p: Path) -> None:
    with p.open("r+b") as f:
        f.seek(DEFAULT_SIZE // 2)
        b = f.read(1)
        f.seek(DEFAULT_SIZE // 2)
        f.write(bytes([b[0] ^ 1]))


def _truncate(p: Path) -> None:
    os.truncate(p, DEFAULT_SIZE // 3)


def _empty(p: Path) -> None:
    os.truncate(p, 0)


@pytest.mark.parametrize("damage", [_flip, _truncate, _empty], ids=["flip", "truncate", "empty"])
def test_corruption_is_found_by_deep_verify(home: Path, stored: Path, damage: object) -> None:
    _write(stored, damage)
    res = run_cli("cache", "verify", "--deep", home=home)
    assert res.returncode == 1
    assert "CORRUPT" in res.stdout and DEFAULT_SHA[:12] in res.stdout
    assert "locara cache verify --repair" in res.stderr
    assert not stored.exists()  # wrong bytes never stay under the content name


@pytest.mark.parametrize("damage", [_flip, _truncate, _empty], ids=["flip", "truncate", "empty"])
def test_corruption_is_refused_at_load(settings: Settings, stored: Path, damage: object) -> None:
    from locara.engine.loader import resolve

    mtime = stored.stat().st_mtime_ns
    _write(stored, damage)
    os.utime(stored, ns=(mtime, mtime))  # even with the old mtime put back
    with pytest.raises(IntegrityError) as err:
        resolve(settings, DEFAULT_MODEL)
    assert err.value.expected == DEFAULT_SHA and err.value.actual != DEFAULT_SHA
    assert "locara pull" in (err.value.hint or "")
    assert not stored.exists()


def test_verify_repair_refetches_from_the_recorded_source(home: Path, stored: Path) -> None:
    _write(stored, _flip)
    res = run_cli("cache", "verify", "--deep", "--repair", home=home)
    assert res.returncode == 0, res.stderr
    assert "repaired" in res.stdout
    assert hash_file(stored) == (DEFAULT_SHA, DEFAULT_SIZE)


def test_verify_of_a_healthy_store(home: Path, stored: Path) -> None:
    res = run_cli("cache", "verify", "--deep", home=home)
    assert res.returncode == 0 and f"ok       {DEFAULT_SHA[:12]}" in res.stdout


def test_symlink_planted_at_blob_dir_is_refused(settings: Settings, tmp_path: Path) -> None:
    evil = tmp_path / "evil"
    evil.mkdir()
    (evil / "model.gguf").write_bytes(b"not the model")
    (evil / "meta.json").write_text(json.dumps({"file": "model.gguf", "size_bytes": 13}))
    store = BlobStore(settings)
    store.ensure_writable()
    os.symlink(evil, store.blob_dir(DEFAULT_SHA))
    assert store.find(DEFAULT_SHA) is None
    with pytest.raises(IntegrityError) as err:
        store.verify(DEFAULT_SHA)
    assert "symlink" in err.value.message
    # a pull replaces the link with verified bytes and never writes through it
    path = _store_default(settings)
    assert not store.blob_dir(DEFAULT_SHA).is_symlink()
    assert hash_file(path)[0] == DEFAULT_SHA
    assert (evil / "model.gguf").read_bytes() == b"not the model"


def test_symlink_planted_at_blob_file_is_refused(
    settings: Settings, stored: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other.gguf"
    other.write_bytes(b"x" * 100)
    os.chmod(stored, 0o644)
    stored.unlink()
    os.symlink(other, stored)
    store = BlobStore(settings)
    with pytest.raises(IntegrityError, match="symlink"):
        store.verify(DEFAULT_SHA)
    res = run_cli("cache", "verify", "--repair", home=settings.home)
    assert res.returncode == 0, res.stderr
    assert not stored.is_symlink() and hash_file(stored)[0] == DEFAULT_SHA
    assert other.read_bytes() == b"x" * 100


@pytest.fixture
def open_home() -> Iterator[Path]:
    """A home that an unprivileged user can traverse (pytest's tmp dirs are 0700)."""
    d = Path(tempfile.mkdtemp(prefix="locara-ro-"))
    os.chmod(d, 0o755)
    yield d / "home"
    shutil.rmtree(d, ignore_errors=True)


def test_writing_through_an_app_hardlink_fails(open_home: Path, tmp_path: Path) -> None:
    settings = Settings.from_env({"LOCARA_HOME": str(open_home)})
    blob = _store_default(settings)
    app = tmp_path / "app"
    app.mkdir()
    (app / "locara.app.json").write_text(
        json.dumps(
            {
                "id": "w",
                "name": "W",
                "version": "1",
                "models": [f"{DEFAULT_MODEL}@sha256:{DEFAULT_SHA}"],
            }
        )
    )
    from locara.apps.install import install_app

    install_app(settings, app)
    link = open_home / "apps" / "w" / "models" / f"{DEFAULT_MODEL}.gguf"
    assert link.stat().st_ino == blob.stat().st_ino  # a hardlink, not a copy
    assert link.stat().st_mode & 0o777 == 0o444
    code = (
        "import os,sys\n"
        "if os.getuid()==0: os.setgid(65534); os.setuid(65534)\n"
        "try:\n open(sys.argv[1],'r+b').write(b'x')\nexcept PermissionError:\n sys.exit(7)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(link)], capture_output=True)
    assert proc.returncode == 7, proc.stderr
    assert hash_file(blob)[0] == DEFAULT_SHA


def test_refs_gc_and_in_use(settings: Settings, stored: Path) -> None:
    store = BlobStore(settings)
    later = time.time() + 31 * 86400
    store.index.add_ref(DEFAULT_SHA, "app:notes")
    assert users_of(store, DEFAULT_SHA).apps == ("notes",)
    rep = gc(store, 30, now=later)
    assert rep.removed == [] and "app:notes" in rep.kept[0][1]
    store.index.remove_refs("app:notes")
    # recently used: kept
    assert gc(store, 30).removed == []
    # in use by a live lease (e.g. a loaded model): kept whatever its age
    with store.lease(DEFAULT_SHA):
        assert store.in_use(DEFAULT_SHA)
        rep = gc(store, 30, now=later)
        assert rep.removed == [] and rep.kept == [(DEFAULT_SHA, "in use")]
    assert not store.in_use(DEFAULT_SHA)
    dry = gc(store, 30, dry_run=True, now=later)
    assert dry.removed == [(DEFAULT_SHA, DEFAULT_SIZE)] and stored.exists()
    rep = gc(store, 30, now=later)
    assert rep.freed_bytes == DEFAULT_SIZE and not stored.exists()
    assert store.index.blob(DEFAULT_SHA) is None


def test_gc_cli_validates_days(home: Path) -> None:
    res = run_cli("cache", "gc", "--older-than", "-1", home=home)
    assert res.returncode == 1 and "--older-than" in res.stderr


def test_rm_refuses_a_pinned_model_and_names_the_app(settings: Settings, stored: Path) -> None:
    store = BlobStore(settings)
    store.index.add_ref(DEFAULT_SHA, "app:notes")
    with pytest.raises(PinnedModelError) as err:
        remove_blob(store, DEFAULT_SHA)
    assert err.value.holders == ["notes"] and "locara app uninstall notes" in (err.value.hint or "")
    res = run_cli("rm", DEFAULT_MODEL, home=settings.home)
    assert res.returncode == 1 and "pinned by app notes" in res.stderr
    store.index.remove_refs("app:notes")
    res = run_cli("rm", DEFAULT_MODEL, home=settings.home)
    assert res.returncode == 0 and "freed 98.4 MB" in res.stdout
    assert not stored.exists()


def test_rm_unknown_model_suggests(home: Path) -> None:
    res = run_cli("rm", "smollm2-135m", home=home)
    assert res.returncode == 1 and "did you mean: smollm2-135m-instruct" in res.stderr


def test_import_ollama_store_by_hardlink(
    settings: Settings, default_gguf: Path, tmp_path: Path
) -> None:
    root = tmp_path / "ollama"
    (root / "blobs").mkdir(parents=True)
    src = root / "blobs" / f"sha256-{DEFAULT_SHA}"
    shutil.copyfile(default_gguf, src)
    bad_sha = "0" * 64
    (root / "blobs" / f"sha256-{bad_sha}").write_bytes(b"damaged")
    mdir = root / "manifests" / "registry.ollama.ai" / "library" / "smollm2"
    mdir.mkdir(parents=True)
    layer = "application/vnd.ollama.image.model"
    (mdir / "135m").write_text(
        json.dumps({"layers": [{"mediaType": layer, "digest": f"sha256:{DEFAULT_SHA}"}]})
    )
    (mdir / "bad").write_text(
        json.dumps({"layers": [{"mediaType": layer, "digest": f"sha256:{bad_sha}"}]})
    )
    (mdir / "evil").write_text(
        json.dumps({"layers": [{"mediaType": layer, "digest": "sha256:../../x"}]})
    )
    results = import_ollama(BlobStore(settings), root)
    ok = [r for r in results if r.blob]
    assert len(ok) == 1 and ok[0].mode == "hardlink"
    assert ok[0].blob is not None and ok[0].blob.path.stat().st_ino == src.stat().st_ino
    # known digest: it becomes the registry model, runnable by its id
    assert BlobStore(settings).index.blob(DEFAULT_SHA).model_id == DEFAULT_MODEL  # type: ignore[union-attr]
    errors = sorted(r.error or "" for r in results if r.error)
    assert len(errors) == 2 and any("promised content" in e for e in errors)
    assert any("invalid sha256" in e for e in errors)
    assert BlobStore(settings).find(bad_sha) is None


def test_import_hf_cache_cli(home: Path, default_gguf: Path, tmp_path: Path) -> None:
    repo = tmp_path / "hub" / "models--org--tiny-GGUF"
    (repo / "blobs").mkdir(parents=True)
    shutil.copyfile(default_gguf, repo / "blobs" / DEFAULT_SHA)
    snap = repo / "snapshots" / "abc123"
    snap.mkdir(parents=True)
    os.symlink(f"../../blobs/{DEFAULT_SHA}", snap / "tiny.Q4_1.gguf")
    res = run_cli("cache", "import", "hf", str(tmp_path / "hub"), home=home)
    assert res.returncode == 0, res.stderr
    assert "hardlink" in res.stdout and DEFAULT_MODEL in res.stdout
    again = run_cli("cache", "import", "hf", str(tmp_path / "hub"), home=home)
    assert "already stored" in again.stdout
    assert run_cli("cache", "import", "hf", str(tmp_path / "nope"), home=home).returncode == 1


def test_add_local_file_and_tree_for_converters(settings: Settings, tmp_path: Path) -> None:
    store = BlobStore(settings)
    d = tmp_path / "mlx-model"
    d.mkdir()
    (d / "config.json").write_text('{"a": 1}')
    (d / "model.safetensors").write_bytes(os.urandom(4096))
    tree = add_local_tree(store, d, {"id": "converted", "format": "mlx"}, "model.safetensors")
    assert tree.is_tree and tree.path.name == "model.safetensors"
    assert sorted(p.name for p in tree.files) == ["config.json", "model.safetensors"]
    assert store.verify(tree.sha256).sha256 == tree.sha256
    # the caller's directory stays writable and independent of the store: the store
    # holds copies, so a change there leaves the stored tree whole and unchanged
    (d / "config.json").write_text("changed")
    deep = store.verify(tree.sha256, deep=True)
    assert (deep.sha256, deep.size_bytes) == (tree.sha256, tree.size_bytes)
    stored = {p.name: p for p in deep.files}
    assert stored["config.json"].read_text() == '{"a": 1}'
    assert not stored["config.json"].samefile(d / "config.json")
    f = tmp_path / "x.gguf"
    f.write_bytes(b"abc")
    with pytest.raises(IntegrityError):
        add_local_file(store, f, {}, expected_sha256="1" * 64)
    blob, _ = add_local_file(store, f, {"id": "x"}, copy=True)
    assert blob.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"


def test_cache_ls_json(home: Path, stored: Path) -> None:
    res = run_cli("cache", "ls", "--json", home=home)
    rows = json.loads(res.stdout)
    assert rows[0]["sha256"] == DEFAULT_SHA and rows[0]["size_bytes"] == DEFAULT_SIZE
    assert rows[0]["references"] == [] and rows[0]["model"] == DEFAULT_MODEL


def test_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    f = tmp_path / "file"
    f.write_text("")
    with pytest.raises(StoreError) as err:
        _store_default(Settings.from_env({"LOCARA_HOME": str(f)}))
    assert "LOCARA_HOME" in (err.value.hint or "")


def test_gc_clears_leftovers_of_dead_processes_only(settings: Settings) -> None:
    store = BlobStore(settings)
    store.ensure_writable()
    tmp = settings.tmp_dir
    dead_dir = tmp / f"{DEFAULT_SHA[:16]}-999999999-abcd1234.d"
    dead_dir.mkdir()
    (dead_dir / "model.gguf").write_bytes(b"half")
    live_dir = tmp / f"{DEFAULT_SHA[:16]}-{os.getpid()}-abcd1234.d"
    live_dir.mkdir()
    fresh_part = tmp / f"{DEFAULT_SHA}.999999999-abcd1234.part"
    fresh_part.write_bytes(b"resume me")
    rep = gc(store, 30)
    assert rep.temp_removed == [dead_dir]
    assert live_dir.exists() and fresh_part.exists()  # a recent partial is worth resuming
    old = time.time() - 40 * 86400
    os.utime(fresh_part, (old, old))
    assert gc(store, 30).temp_removed == [fresh_part]


def test_a_file_planted_at_a_blob_dir_is_replaced(settings: Settings) -> None:
    store = BlobStore(settings)
    store.ensure_writable()
    store.blob_dir(DEFAULT_SHA).write_bytes(b"planted")
    assert store.find(DEFAULT_SHA) is None
    path = _store_default(settings)
    assert hash_file(path)[0] == DEFAULT_SHA


@pytest.mark.skipif(not Path("/dev/shm").is_dir(), reason="needs a second filesystem (tmpfs)")
def test_import_across_filesystems_is_a_reported_copy(home: Path) -> None:
    import hashlib

    other_fs = Path(tempfile.mkdtemp(dir="/dev/shm"))
    try:
        data = os.urandom(256 * 1024)
        sha = hashlib.sha256(data).hexdigest()
        (other_fs / "blobs").mkdir()
        (other_fs / "blobs" / f"sha256-{sha}").write_bytes(data)
        mdir = other_fs / "manifests" / "registry.ollama.ai" / "library" / "tiny"
        mdir.mkdir(parents=True)
        layer = {"mediaType": "application/vnd.ollama.image.model", "digest": f"sha256:{sha}"}
        (mdir / "latest").write_text(json.dumps({"layers": [layer]}))
        res = run_cli("cache", "import", "ollama", str(other_fs), home=home)
        assert res.returncode == 0, res.stderr
        assert "COPIED" in res.stdout and "extra disk" in res.stdout
        stored = home / "models" / sha / "model.gguf"
        assert stored.read_bytes() == data
        assert stored.stat().st_dev != (other_fs / "blobs" / f"sha256-{sha}").stat().st_dev
    finally:
        shutil.rmtree(other_fs, ignore_errors=True)


def test_rm_refuses_a_blob_in_use_by_another_process(settings: Settings, stored: Path) -> None:
    store = BlobStore(settings)
    with store.lease(DEFAULT_SHA):  # as a loaded model would hold it
        res = run_cli("rm", DEFAULT_MODEL, home=settings.home)
        assert res.returncode == 1 and "in use" in res.stderr and "hint:" in res.stderr
        assert stored.exists()
    assert run_cli("rm", DEFAULT_MODEL, home=settings.home).returncode == 0
