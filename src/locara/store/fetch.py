"""Make an artifact present in the store: reuse a verified blob or fetch it from a source."""

from __future__ import annotations

from collections.abc import Callable

from filelock import FileLock

from locara.errors import FetchError, IntegrityError, LocaraError, StoreError
from locara.registry.manifest import Artifact, ModelManifest
from locara.settings import Settings
from locara.store.blobs import BlobStore, StoredBlob
from locara.store.sources import iter_source

Progress = Callable[[int, int | None], None]  # (bytes just written, total)


def ensure_artifact(
    store: BlobStore,
    manifest: ModelManifest,
    artifact: Artifact,
    settings: Settings,
    progress: Progress | None = None,
) -> StoredBlob:
    """The verified stored blob for ``artifact``, fetching it from its sources if needed."""
    if artifact.files is not None or artifact.sha256 is None:
        raise StoreError(
            f"{manifest.id}: this artifact form is not supported yet",
            "use a single-file artifact with a sha256",
        )
    sha = artifact.sha256
    if store.find(sha) is not None:
        return store.verify(sha)
    store.ensure_writable()
    # The lock only saves duplicate downloads; correctness comes from unique temp
    # files and verification, so a lock that silently fails (NFS) is harmless.
    with FileLock(str(settings.locks_dir / f"{sha}.lock"), timeout=-1):
        if store.find(sha) is not None:
            return store.verify(sha)
        meta = {
            "id": manifest.id,
            "version": manifest.version,
            "quant": artifact.quant,
            "format": artifact.format,
            "sources": list(artifact.sources),
        }
        failures: list[LocaraError] = []
        for source in artifact.sources:
            try:
                return store.ingest(
                    iter_source(source, settings),
                    sha,
                    artifact.size_bytes,
                    artifact.extension,
                    meta,
                    (lambda n: progress(n, artifact.size_bytes)) if progress else None,
                )
            except (FetchError, IntegrityError) as exc:
                failures.append(exc)
        if not failures:
            raise FetchError(f"{manifest.id} has no source to fetch from", "check the manifest")
        if len(failures) == 1:
            raise failures[0]
        detail = "; ".join(f.message for f in failures)
        raise FetchError(f"every source for {manifest.id} failed: {detail}", failures[-1].hint)
