"""Make an artifact present in the store: reuse a verified blob or fetch it from a source.

Sources are tried in order (the url, then each mirror). One process per blob downloads
while the others wait on a file lock and then find the blob stored; the lock only saves
duplicate downloads. Correctness comes from elsewhere: each process writes its own
uniquely named partial file, claims an orphaned one by an atomic rename, and nothing
reaches a content name before its size and SHA-256 are checked.
"""

from __future__ import annotations

import contextlib
import os
import threading
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from locara.errors import FetchError, IntegrityError, LocaraError, OfflineError, StoreError
from locara.procs import pid_alive
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.names import check_filename, check_sha256
from locara.settings import Settings
from locara.store.blobs import BlobStore, StoredBlob
from locara.store.derived import SCHEME as DERIVED
from locara.store.derived import iter_derived
from locara.store.http import HttpOptions
from locara.store.locks import exclusive_lock
from locara.store.sources import is_local, iter_local

Progress = Callable[[int, int | None], None]  # (bytes just written, total)


def partial_files(settings: Settings, sha256: str) -> list[Path]:
    """Partial downloads of ``sha256`` left in the store's temp directory."""
    tmp = settings.tmp_dir
    return sorted(tmp.glob(f"{check_sha256(sha256)}.*.part")) if tmp.is_dir() else []


def _part_owner(path: Path) -> int | None:
    # <sha>.<pid>-<random>.part
    middle = path.name.split(".")[1] if path.name.count(".") >= 2 else ""
    pid = middle.partition("-")[0]
    return int(pid) if pid.isdigit() else None


# Partial files this process is writing right now (one per download thread): a thread
# must never take over another live thread's file, even if the file lock failed.
_ACTIVE: set[str] = set()
_ACTIVE_LOCK = threading.Lock()


def release_partial(path: Path) -> None:
    with _ACTIVE_LOCK:
        _ACTIVE.discard(path.name)


def claim_partial(settings: Settings, sha256: str) -> Path:
    """A partial-file path unique to this process, holding the longest orphaned prefix.

    An orphan (its writer is dead) is taken over by rename, which is atomic: if two
    processes race for it, one wins and the other starts from zero. A partial whose
    writer is alive is left alone.
    """
    mine = settings.tmp_dir / f"{sha256}.{os.getpid()}-{uuid.uuid4().hex[:8]}.part"
    with _ACTIVE_LOCK:
        _ACTIVE.add(mine.name)
        active = set(_ACTIVE)
    orphans = []
    for p in partial_files(settings, sha256):
        owner = _part_owner(p)
        if p.name in active or (owner is not None and owner != os.getpid() and pid_alive(owner)):
            continue
        if p.is_symlink():  # planted: taking it over would append the download to its target
            with contextlib.suppress(OSError):
                p.unlink()
            continue
        with contextlib.suppress(OSError):
            orphans.append((p.stat().st_size, p))
    orphans.sort(reverse=True)
    for i, (_, p) in enumerate(orphans):
        if i == 0:
            with contextlib.suppress(OSError):
                os.rename(p, mine)
        else:
            with contextlib.suppress(OSError):
                p.unlink()
    return mine


def fetch_blob(
    store: BlobStore,
    sha256: str,
    size_bytes: int | None,
    ext: str,
    sources: Sequence[str],
    meta: dict[str, Any],
    settings: Settings,
    progress: Progress | None = None,
    http: HttpOptions | None = None,
) -> StoredBlob:
    """The verified blob ``sha256``: from the store, else from the first source that works."""
    check_sha256(sha256)
    check_filename(f"model.{ext}")
    if store.find(sha256) is not None:
        return store.verify(sha256)
    store.ensure_writable()
    network = [s for s in sources if not is_local(s)]
    if settings.offline and network and not any(is_local(s) for s in sources):
        raise OfflineError(
            f"Locara is offline and {meta.get('id') or sha256[:12]} is not cached",
            "unset LOCARA_OFFLINE to download it, or use a model that is already stored (locara ls)",
            network[0],
        )
    with exclusive_lock(settings.locks_dir / f"{sha256}.lock"):
        if store.find(sha256) is not None:
            return store.verify(sha256)
        blob_meta = {**meta, "sources": list(sources)}
        tick = (lambda n: progress(n, size_bytes)) if progress else None
        failures: list[LocaraError] = []
        for source in sources:
            try:
                if is_local(source):
                    chunks = (
                        iter_derived(source)  # converted here, only when a conversion is due
                        if source.startswith(DERIVED)
                        else iter_local(source)
                    )
                    return store.ingest(chunks, sha256, size_bytes, ext, blob_meta, tick)
                if settings.offline:
                    raise OfflineError(
                        f"Locara is offline; not fetching {source}", "unset LOCARA_OFFLINE", source
                    )
                return _download(
                    store, sha256, size_bytes, ext, source, blob_meta, settings, tick, http
                )
            except (FetchError, IntegrityError) as exc:
                failures.append(exc)
    if not failures:
        raise FetchError(
            f"{meta.get('id') or sha256[:12]} has no source to fetch from",
            "add a url or mirror to the manifest",
        )
    if len(failures) == 1:
        raise failures[0]
    detail = "; ".join(f.message for f in failures)
    raise FetchError(
        f"every source for {meta.get('id') or sha256[:12]} failed: {detail}", failures[-1].hint
    )


def _download(
    store: BlobStore,
    sha256: str,
    size_bytes: int | None,
    ext: str,
    url: str,
    meta: dict[str, Any],
    settings: Settings,
    progress: Callable[[int], None] | None,
    http: HttpOptions | None,
) -> StoredBlob:

    part = claim_partial(settings, sha256)
    try:
        return _download_into(
            store, sha256, size_bytes, ext, url, meta, settings, part, progress, http
        )
    finally:
        release_partial(part)


def _download_into(
    store: BlobStore,
    sha256: str,
    size_bytes: int | None,
    ext: str,
    url: str,
    meta: dict[str, Any],
    settings: Settings,
    part: Path,
    progress: Callable[[int], None] | None,
    http: HttpOptions | None,
) -> StoredBlob:
    from locara.store.http import download  # httpx only when a download happens

    try:
        actual, size = download(url, settings, part, size_bytes, progress, http)
    except FetchError:
        # Keep the bytes for a resume, unless there are none worth keeping.
        with contextlib.suppress(OSError):
            if part.stat().st_size == 0:
                part.unlink()
        raise
    except (IntegrityError, StoreError, OSError):
        # Wrong bytes, or a full disk: nothing of this download is kept.
        with contextlib.suppress(OSError):
            part.unlink()
        raise
    if (size_bytes is not None and size != size_bytes) or actual != sha256:
        with contextlib.suppress(OSError):
            part.unlink()
        if size_bytes is not None and size != size_bytes:
            raise IntegrityError(
                f"download of {url} has the wrong size", f"{size_bytes} bytes", f"{size} bytes"
            )
        raise IntegrityError(
            f"download of {url} has the wrong sha256 (deleted)",
            sha256,
            actual,
            hint="the source served different bytes; try again later, or a mirror",
        )
    try:
        return store.place_file(part, sha256, size, ext, meta)
    finally:
        with contextlib.suppress(OSError):
            part.unlink()


def _artifact_meta(manifest: ModelManifest, artifact: Artifact) -> dict[str, Any]:
    return {
        "id": manifest.id,
        "version": manifest.version,
        "quant": artifact.quant,
        "format": artifact.format,
    }


def ensure_artifact(
    store: BlobStore,
    manifest: ModelManifest,
    artifact: Artifact,
    settings: Settings,
    progress: Progress | None = None,
    http: HttpOptions | None = None,
) -> StoredBlob:
    """The verified stored blob for ``artifact``, fetching it from its sources if needed.

    A multi-file artifact fetches each file as its own blob, then assembles the
    directory of links under the artifact's tree digest; ``path`` of the result is
    the file a backend opens.
    """
    meta = _artifact_meta(manifest, artifact)
    if artifact.sha256 is None:
        return _fetch_unverified(store, manifest, artifact, meta, settings, progress, http)
    if artifact.files is None:
        return fetch_blob(
            store, artifact.sha256, artifact.size_bytes, artifact.extension,
            artifact.sources, meta, settings, progress, http,
        )  # fmt: skip
    if store.find(artifact.sha256) is not None:
        return store.verify(artifact.sha256)
    total = artifact.size_bytes
    tick: Progress | None = (lambda n, _t: progress(n, total)) if progress else None
    parts = []
    for f in artifact.files:
        part_meta = {**meta, "file_name": f.name, "role": f.role, "part_of": artifact.sha256}
        blob = fetch_blob(
            store, f.sha256, f.size_bytes, f.extension, f.sources, part_meta, settings, tick, http
        )
        parts.append((f.name, blob))
    primary = artifact.primary_file
    assert primary is not None
    return store.assemble_tree(artifact.sha256, parts, primary.name, meta)


def _fetch_unverified(
    store: BlobStore,
    manifest: ModelManifest,
    artifact: Artifact,
    meta: dict[str, Any],
    settings: Settings,
    progress: Progress | None,
    http: HttpOptions | None,
) -> StoredBlob:
    """Trust on first use, for a non-curated artifact without a sha256.

    The bytes are hashed while downloading and stored under that digest, which is
    remembered for the source URL: later uses verify against it, so the file cannot
    change silently after the first download (the CLI warns before this happens).
    """
    import hashlib

    sources = artifact.sources
    for rec in store.index.blobs() if settings.db_path.exists() else []:
        if rec.model_id == manifest.id:
            m = store.read_meta(rec.sha256) or {}
            if m.get("trust_on_first_use") in sources and store.find(rec.sha256) is not None:
                return store.verify(rec.sha256)
    if settings.offline:
        raise OfflineError(
            f"Locara is offline and {manifest.id} is not cached",
            "unset LOCARA_OFFLINE to download it, or use a model that is already stored",
        )
    from locara.store.http import download  # httpx only when a download happens

    store.ensure_writable()
    tick = (lambda n: progress(n, artifact.size_bytes)) if progress else None
    failures: list[LocaraError] = []
    for url in sources:
        if is_local(url):
            continue
        key = hashlib.sha256(url.encode()).hexdigest()  # names the partial file and lock
        with exclusive_lock(settings.locks_dir / f"{key}.lock"):
            part = claim_partial(settings, key)
            try:
                actual, size = download(url, settings, part, artifact.size_bytes, tick, http)
                full = {**meta, "sources": [url], "trust_on_first_use": url, "curated": False}
                return store.place_file(part, actual, size, artifact.extension, full)
            except FetchError as exc:
                failures.append(exc)
                continue
            except (IntegrityError, StoreError, OSError):
                with contextlib.suppress(OSError):
                    part.unlink()
                raise
            finally:
                release_partial(part)
    if failures:
        raise failures[-1]
    raise FetchError(f"{manifest.id} has no network source", "add a url to the manifest")
