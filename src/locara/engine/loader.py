"""From a reference to a loaded model: registry → store → backend.

The one path every surface (CLI, server, bench) uses to get a model running.
"""

from __future__ import annotations

import contextlib
import time
from dataclasses import dataclass, field

from locara.backends.base import LoadedModel, LoadOptions
from locara.errors import UnsupportedFeatureError
from locara.registry.catalog import Registry
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.refs import ModelRef, parse_ref
from locara.settings import Settings
from locara.store.blobs import BlobStore, StoredBlob
from locara.store.fetch import Progress, ensure_artifact


@dataclass(frozen=True)
class ResolvedModel:
    ref: ModelRef
    manifest: ModelManifest
    artifact: Artifact
    blob: StoredBlob


@dataclass
class ModelHandle:
    resolved: ResolvedModel
    model: LoadedModel
    backend: str
    load_s: float
    # Holds the store lease on the blob while the model is loaded, so gc/rm skip it.
    _lease: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    def close(self) -> None:
        try:
            self.model.close()
        finally:
            self._lease.close()


def resolve(
    settings: Settings, reference: str | None, progress: Progress | None = None
) -> ResolvedModel:
    """Parse the reference, find its manifest and artifact, and make the blob present."""
    from locara.planner.select import select_artifact

    ref = parse_ref(reference or settings.default_model)
    manifest = Registry(settings).get(ref.id)
    store = BlobStore(settings)
    artifact = select_artifact(manifest, ref, store)
    blob = ensure_artifact(store, manifest, artifact, settings, progress)
    if any(src.startswith("derived://") for src in artifact.sources):
        from locara.convert.derived import record_derivation

        record_derivation(settings, artifact.sources, blob.sha256)
    return ResolvedModel(ref, manifest, artifact, blob)


def load(
    settings: Settings,
    resolved: ResolvedModel,
    opts: LoadOptions,
    backend: str | None = None,
) -> ModelHandle:
    """Load a resolved model and record that it was used.

    ``backend`` is a name from ``locara.backends.registry`` ("llama_cpp", "mlx");
    None means llama.cpp, the default on every platform until the planner says
    otherwise. A backend that is not installed raises BackendUnavailableError with
    the install command; one that cannot read the artifact's format is refused.
    """
    from locara.backends.registry import canonical_name, get_backend

    name = canonical_name(backend or "llama_cpp")
    engine = get_backend(name)
    if resolved.artifact.format not in engine.formats:
        raise UnsupportedFeatureError(
            f"the {name} backend cannot load {resolved.artifact.format} artifacts "
            f"(it reads {', '.join(sorted(engine.formats))})",
            f"choose another backend, or convert the model: locara convert {resolved.manifest.id}",
        )
    store = BlobStore(settings)
    lease = contextlib.ExitStack()
    lease.enter_context(store.lease(resolved.blob.sha256))
    started = time.perf_counter()
    try:
        model = engine.load(resolved.blob.path, resolved.manifest, opts)
    except BaseException:
        lease.close()
        raise
    load_s = time.perf_counter() - started
    store.touch(resolved.blob.sha256)
    return ModelHandle(resolved, model, name, load_s, lease)
