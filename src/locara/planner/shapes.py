"""The model shapes the planner estimates memory from: a stored GGUF's header, else a guess.

An artifact already in the store is planned from its real GGUF header (exact layer,
head and tensor sizes); one that is not downloaded yet from its size and quant
(``approximate_shape``), and plans built on that say so.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from pathlib import Path

from locara.device.fit import ModelShape, approximate_shape
from locara.errors import LocaraError
from locara.registry.manifest import Artifact, ModelManifest
from locara.settings import Settings


@functools.lru_cache(maxsize=64)
def _gguf_shape(path: Path, identity: tuple[int, int, int]) -> ModelShape:
    # Keyed on the file's identity as well as its path: a replaced file is read again.
    from locara.device.gguf_meta import read_gguf

    return ModelShape.from_gguf(read_gguf(path))


def shape_for(
    art: Artifact, manifest: ModelManifest, gguf_path: Path | None
) -> tuple[ModelShape | None, bool, str]:
    if gguf_path is not None and art.format == "gguf":
        try:
            st = gguf_path.stat()
            return _gguf_shape(gguf_path, (st.st_ino, st.st_size, st.st_mtime_ns)), True, ""
        except OSError as exc:
            return None, False, f"cannot read {gguf_path}: {exc}"
        except LocaraError as exc:
            return None, False, exc.message
    size = (
        art.size_bytes
        or (sum(f.size_bytes for f in art.files) if art.files else None)
        or manifest.size_bytes
    )
    if size is None:
        return None, False, "no size known for this artifact (manifest lacks size_bytes)"
    return approximate_shape(size, art.quant, manifest.context_length), False, ""


def local_gguf_paths(settings: Settings, manifests: Iterable[ModelManifest]) -> dict[str, Path]:
    """sha256 -> GGUF path for the artifacts of ``manifests`` already in the store."""
    from locara.store.blobs import BlobStore

    store = BlobStore(settings)
    out: dict[str, Path] = {}
    for m in manifests:
        for _, art in m.all_artifacts():
            if art.format == "gguf" and art.sha256:
                blob = store.find(art.sha256)
                if blob is not None:
                    out[art.sha256] = blob.path
    return out


def has_local_source(art: Artifact) -> bool:
    from locara.store.sources import is_local

    return any(is_local(src) for src in art.sources) or any(
        is_local(src) for f in (art.files or ()) for src in ((f.url,) if f.url else ()) + f.mirrors
    )
