"""Install, verify and uninstall apps: resolve pins, fetch, verify, hardlink into the bundle.

An installed app's models live at ``$LOCARA_HOME/apps/<app>/models/`` as hardlinks to
the store's read-only blobs (reflink or a reported copy across filesystems), so ten
apps that pin one model use one copy of it, and the app itself never fetches anything.
References are recorded in Locara's database; uninstall removes the links and the
references, and GC decides later about the blobs.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shutil
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.apps.license import license_warning
from locara.apps.manifest import AppManifest, BundledModel, load_app_manifest
from locara.errors import (
    BackendUnavailableError,
    IntegrityError,
    LicenseNotAcceptedError,
    UnknownAppError,
    UnknownModelError,
)
from locara.registry.catalog import Registry
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.names import check_model_id
from locara.registry.refs import parse_ref
from locara.settings import Settings
from locara.store.blobs import BlobStore, StoredBlob
from locara.store.fetch import Progress, ensure_artifact
from locara.store.index import AppRecord
from locara.store.links import LinkMode, link_or_copy, worst

LOCK_FILE = "locara.app.lock.json"


def mlx_available() -> bool:
    """Whether MLX can run here: the ``mlx`` package is importable (Apple Silicon or CPU)."""
    import importlib.util

    return importlib.util.find_spec("mlx") is not None


@dataclass(frozen=True)
class AppModel:
    """One model of an app, resolved: what it is, which bytes, and its license."""

    model_id: str
    sha256: str
    backend: str | None  # None for a bundled file
    manifest: ModelManifest | None
    artifact: Artifact | None
    bundled_path: Path | None
    license: str | None

    @property
    def warning(self) -> str:
        return license_warning(self.model_id, self.license) if self.license else ""


def resolve_app(settings: Settings, app: AppManifest, app_dir: Path) -> list[AppModel]:
    """Resolve every pin against the registry; refuse what cannot run on this device."""
    registry = Registry(settings)
    out: list[AppModel] = []
    for entry in app.models:
        if isinstance(entry, BundledModel):
            path = (app_dir / entry.path).resolve()
            if not path.is_relative_to(app_dir.resolve()):
                raise IntegrityError(
                    f"bundled model {entry.id} points outside the app ({entry.path})",
                    "a path inside the app",
                    str(path),
                    hint="keep bundled models inside the app directory",
                )
            out.append(AppModel(entry.id, entry.sha256, None, None, None, path, None))
            continue
        ref = parse_ref(entry)
        assert ref.sha256 is not None  # the manifest validator insists on pins
        manifest = registry.get(ref.id)
        found = manifest.artifact_by_digest(ref.sha256)
        if found is None:
            raise UnknownModelError(
                entry, [f"{manifest.id}@sha256:{a.sha256}" for _, a in manifest.all_artifacts()]
            )
        backend, art = found
        if backend == "mlx" and not mlx_available():
            others = [a for b, a in manifest.all_artifacts() if b != "mlx" and a.sha256]
            hint = (
                f"pin the llama.cpp artifact instead: {manifest.id}@sha256:{others[0].sha256}"
                if others
                else "install this app on Apple Silicon (or where `pip install mlx` works)"
            )
            raise BackendUnavailableError(
                f"app {app.id} pins only the MLX artifact of {manifest.id}, and MLX is not "
                f"available on this device ({platform.system()} {platform.machine()}, "
                "no mlx package)",
                hint,
            )
        out.append(
            AppModel(manifest.id, ref.sha256, backend, manifest, art, None, manifest.license)
        )
    return out


def license_gate(
    models: list[AppModel], accept_license: bool, confirm: Callable[[str], bool] | None
) -> list[str]:
    """Warn about non-permissive licenses; ask, or refuse when nobody can be asked."""
    warnings = [m.warning for m in models if m.warning]
    if not warnings or accept_license:
        return warnings
    text = "\n".join(warnings)
    if confirm is None:
        raise LicenseNotAcceptedError(
            text.replace("\n", " "),
            "read the license, then re-run with --accept-license to accept it",
        )
    if not confirm(text):
        raise LicenseNotAcceptedError("license not accepted; nothing was installed", None)
    return warnings


def _link_name(m: AppModel, blob: StoredBlob) -> str:
    if blob.is_tree:
        return m.model_id
    ext = blob.path.name.rpartition(".")[2]
    return f"{m.model_id}.{ext}"


@dataclass(frozen=True)
class InstalledApp:
    id: str
    directory: Path
    models: list[dict[str, Any]]
    link_mode: LinkMode
    warnings: list[str]


@contextlib.contextmanager
def _leases(store: BlobStore, shas: list[str]) -> Iterator[None]:
    with ExitStack() as stack:
        for sha in shas:
            stack.enter_context(store.lease(sha))
        yield


def install_app(
    settings: Settings,
    path: Path,
    accept_license: bool = False,
    confirm: Callable[[str], bool] | None = None,
    progress: Progress | None = None,
) -> InstalledApp:
    """Install the app at ``path``: resolve, license gate, fetch, verify, link, record."""
    app, app_dir = load_app_manifest(path)
    models = resolve_app(settings, app, app_dir)
    warnings = license_gate(models, accept_license, confirm)
    store = BlobStore(settings)
    store.ensure_writable()
    # Every blob this install needs (and each file of a multi-file artifact) is held as
    # in use from before it is fetched until it is linked, so a concurrent gc, even with
    # --older-than 0, cannot take it in between.
    needed = [m.sha256 for m in models] + [
        f.sha256 for m in models if m.artifact is not None for f in (m.artifact.files or ())
    ]
    with _leases(store, needed):
        return _fetch_and_link(settings, store, app, app_dir, models, warnings, progress)


def _fetch_and_link(
    settings: Settings,
    store: BlobStore,
    app: AppManifest,
    app_dir: Path,
    models: list[AppModel],
    warnings: list[str],
    progress: Progress | None,
) -> InstalledApp:
    blobs: list[StoredBlob] = []
    for m in models:
        if m.bundled_path is not None:
            from locara.store.adopt import add_local_file

            meta = {"id": m.model_id, "bundled_in": app.id, "format": "gguf"}
            blob, _ = add_local_file(store, m.bundled_path, meta, m.sha256, copy=True)
            blobs.append(store.verify(blob.sha256))
        else:
            assert m.manifest is not None and m.artifact is not None
            blobs.append(ensure_artifact(store, m.manifest, m.artifact, settings, progress))
    shas = [b.sha256 for b in blobs]
    settings.apps_dir.mkdir(parents=True, exist_ok=True)
    final = settings.apps_dir / check_model_id(app.id)
    staging = settings.apps_dir / f".{app.id}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    try:
        bundle = staging / "models"
        bundle.mkdir(parents=True)
        modes: list[LinkMode] = []
        listing: list[dict[str, Any]] = []
        for m, blob in zip(models, blobs, strict=True):
            blob = store.verify(blob.sha256)
            name = _link_name(m, blob)
            if blob.is_tree:
                (bundle / name).mkdir()
                for f in blob.files:
                    modes.append(link_or_copy(f, bundle / name / f.name))
                for entry in blob.meta.get("files", []):
                    store.refresh_signature(str(entry["sha256"]))
                target = bundle / name / blob.path.name
            else:
                modes.append(link_or_copy(blob.path, bundle / name))
                target = bundle / name
                store.refresh_signature(blob.sha256)
            listing.append(
                {
                    "id": m.model_id,
                    "sha256": blob.sha256,
                    "path": str(final / "models" / target.relative_to(bundle)),
                    "backend": m.backend,
                    "license": m.license,
                    "bundled": m.bundled_path is not None,
                }
            )
        mode = worst(modes)
        lock = {"id": app.id, "version": app.version, "link_mode": mode, "models": listing}
        (staging / LOCK_FILE).write_text(json.dumps(lock, indent=2), encoding="utf-8")
        _swap_in(staging, final)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    record = AppRecord(app.id, app.name, app.version, str(app_dir), time.time(), mode)
    store.index.record_app(record, shas)
    return InstalledApp(app.id, final, listing, mode, warnings)


def _swap_in(staging: Path, final: Path) -> None:
    # A reinstall replaces the bundle in two renames; readers see the old or the new one.
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old-{uuid.uuid4().hex[:8]}")
        os.rename(final, old)
    os.rename(staging, final)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def uninstall_app(settings: Settings, app_id: str) -> AppRecord:
    """Remove an app's links and references; the blobs stay until GC decides."""
    check_model_id(app_id)
    store = BlobStore(settings)
    record = store.index.app(app_id) if settings.db_path.exists() else None
    directory = settings.apps_dir / app_id
    if record is None:
        raise UnknownAppError(f"no installed app {app_id!r}", "list installed apps: locara app ls")
    if directory.is_symlink():
        directory.unlink()
    else:
        shutil.rmtree(directory, ignore_errors=True)
    store.index.forget_app(app_id)
    return record


@dataclass(frozen=True)
class PinStatus:
    model: AppModel
    stored: bool
    verified: bool
    problem: str | None


def verify_app(
    settings: Settings, path: Path, deep: bool = False
) -> tuple[AppManifest, list[PinStatus]]:
    """Check every pin of the app at ``path``: known, runnable here, stored and intact."""
    app, app_dir = load_app_manifest(path)
    models = resolve_app(settings, app, app_dir)
    store = BlobStore(settings)
    out: list[PinStatus] = []
    for m in models:
        if m.bundled_path is not None and not m.bundled_path.is_file():
            out.append(PinStatus(m, False, False, f"bundled file {m.bundled_path} is missing"))
            continue
        if store.find(m.sha256) is None:
            out.append(PinStatus(m, False, False, None))
            continue
        try:
            store.verify(m.sha256, deep=deep)
            out.append(PinStatus(m, True, True, None))
        except IntegrityError as exc:
            out.append(PinStatus(m, False, False, exc.message))
    return app, out
