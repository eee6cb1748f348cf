"""Adding files that are already on this machine: converted models, Ollama and HF caches.

A file is linked (hardlink, else reflink, else a reported copy) into a staging
directory of the store, hashed *through that link* — so the bytes checked are the
bytes stored — and only then renamed under its content name.
"""

from __future__ import annotations

import contextlib
import json
import re
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.errors import IntegrityError, StoreError
from locara.registry.manifest import tree_digest
from locara.registry.names import check_filename, check_sha256
from locara.store.blobs import BlobStore, StoredBlob, hash_file
from locara.store.links import LinkMode, link_or_copy

_ID_BAD = re.compile(r"[^a-z0-9._-]+")


@dataclass(frozen=True)
class Adopted:
    source: Path
    blob: StoredBlob | None
    mode: LinkMode | None  # None: it was already stored
    error: str | None = None


def safe_model_id(*parts: str) -> str:
    """A valid model id built from foreign names (Ollama tags, HF repo names)."""
    text = _ID_BAD.sub("-", "-".join(parts).lower()).strip("-._")
    return re.sub(r"\.{2,}", ".", text)[:128] or "imported"


def add_local_file(
    store: BlobStore,
    path: Path,
    meta: dict[str, Any],
    expected_sha256: str | None = None,
    ext: str | None = None,
    copy: bool = False,
) -> tuple[StoredBlob, LinkMode | None]:
    """Store the file at ``path`` under its SHA-256; return the blob and how it got there.

    With ``expected_sha256`` the file must hash to it (IntegrityError otherwise, and
    nothing is kept). ``copy=True`` never shares the inode with ``path`` (for files
    the caller will keep modifying). Used by ``cache import`` and by ``convert``.
    """
    if expected_sha256 is not None:
        check_sha256(expected_sha256)
        if store.find(expected_sha256) is not None:
            return store.verify(expected_sha256), None
    if path.is_symlink() or not path.is_file():
        raise StoreError(f"{path} is not a regular file", "pass the real file, not a link")
    suffix = ext or (path.suffix.lstrip(".").lower() or "bin")
    name = check_filename(f"model.{suffix}")
    staging = store.staging_dir(expected_sha256 or "local")
    try:
        target = staging / name
        if copy:
            shutil.copyfile(path, target)
            mode: LinkMode = "copy"
        else:
            mode = link_or_copy(path, target)
        sha, size = hash_file(target)
        if expected_sha256 is not None and sha != expected_sha256:
            raise IntegrityError(
                f"{path} does not have the promised content", expected_sha256, sha,
                hint="nothing was stored; the source file is damaged or is another model",
            )  # fmt: skip
        if store.find(sha) is not None:
            return store.verify(sha), None
        return store._place(staging, target, sha, size, {**meta, "adopted_from": str(path)}), mode
    except OSError as exc:
        if isinstance(exc, StoreError):
            raise
        raise StoreError(
            f"cannot add {path} to the store: {exc.strerror or exc}",
            "check free space and permissions under LOCARA_HOME",
        ) from exc
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def add_local_tree(
    store: BlobStore, directory: Path, meta: dict[str, Any], primary: str | None = None
) -> StoredBlob:
    """Store every file of ``directory`` (e.g. an MLX model) and assemble them as a tree.

    Each file becomes its own blob (copied, since the caller's directory stays
    writable); the tree's digest is the same one a manifest would declare.
    """
    files = sorted(p for p in directory.iterdir() if p.is_file() and not p.is_symlink())
    if not files:
        raise StoreError(f"{directory} has no files to store", "pass a model directory")
    parts = []
    for f in files:
        blob, _ = add_local_file(store, f, {**meta, "file_name": f.name}, copy=True)
        parts.append((check_filename(f.name), blob))
    digest = tree_digest([(n, b.sha256) for n, b in parts])
    return store.assemble_tree(digest, parts, primary or parts[0][0], meta)


def _known_digests(store: BlobStore) -> dict[str, tuple[str, str | None]]:
    from locara.registry.catalog import Registry

    known: dict[str, tuple[str, str | None]] = {}
    with contextlib.suppress(Exception):  # a broken user manifest must not block an import
        for m in Registry(store.settings).all():
            for _, art in m.all_artifacts():
                if art.sha256:
                    known[art.sha256] = (m.id, art.quant)
    return known


def import_ollama(store: BlobStore, root: Path) -> list[Adopted]:
    """Adopt the model layers of an Ollama store (``~/.ollama/models``), verified by digest."""
    manifests = root / "manifests"
    if not manifests.is_dir():
        raise StoreError(
            f"{root} is not an Ollama model store (no manifests/ directory)",
            "pass the directory that holds manifests/ and blobs/ (default ~/.ollama/models)",
        )
    known = _known_digests(store)
    out: list[Adopted] = []
    for mf in sorted(p for p in manifests.rglob("*") if p.is_file()):
        try:
            data = json.loads(mf.read_text(encoding="utf-8"))
            layers = data.get("layers", [])
        except (OSError, ValueError, AttributeError):
            continue
        rel = mf.relative_to(manifests).parts  # host/namespace/model/tag
        for layer in layers:
            if layer.get("mediaType") != "application/vnd.ollama.image.model":
                continue
            digest = str(layer.get("digest", ""))
            blob_path = root / "blobs" / "invalid"
            try:
                if not digest.startswith("sha256:"):
                    raise StoreError(f"unsupported digest {digest!r}", "")
                sha = check_sha256(digest[len("sha256:") :])
                blob_path = root / "blobs" / f"sha256-{sha}"
                model_id, quant = known.get(sha, (safe_model_id("ollama", *rel[-2:]), None))
                meta: dict[str, Any] = {"id": model_id, "quant": quant, "format": "gguf"}
                blob, mode = add_local_file(store, blob_path, meta, sha, "gguf")
                store.index.record_blob(sha, model_id, quant, "gguf", blob.size_bytes)
                out.append(Adopted(blob_path, blob, mode))
            except (StoreError, ValueError) as exc:
                out.append(Adopted(blob_path, None, None, str(exc)))
    return out


def import_hf(store: BlobStore, root: Path) -> list[Adopted]:
    """Adopt GGUF files of a Hugging Face cache (``~/.cache/huggingface/hub``).

    Only files whose cache blob is named by its SHA-256 (Git LFS files, which every
    GGUF is) are adopted, because that name is the hash to verify against.
    """
    if not root.is_dir():
        raise StoreError(
            f"{root} is not a Hugging Face cache directory",
            "pass the hub cache (default ~/.cache/huggingface/hub, or $HF_HUB_CACHE)",
        )
    known = _known_digests(store)
    out: list[Adopted] = []
    for repo in sorted(root.glob("models--*")):
        owner_repo = repo.name[len("models--") :].split("--")
        for f in sorted(repo.glob("snapshots/*/**/*.gguf")):
            try:
                target = f.resolve(strict=True)
                if target.parent != (repo / "blobs").resolve():
                    raise StoreError(f"{f} does not point into the cache's blobs/", "")
                sha = check_sha256(target.name)
                model_id, quant = known.get(sha, (safe_model_id("hf", *owner_repo, f.stem), None))
                meta: dict[str, Any] = {"id": model_id, "quant": quant, "format": "gguf"}
                blob, mode = add_local_file(store, target, meta, sha, "gguf")
                store.index.record_blob(sha, model_id, quant, "gguf", blob.size_bytes)
                out.append(Adopted(f, blob, mode))
            except (StoreError, ValueError, OSError) as exc:
                out.append(Adopted(f, None, None, str(exc)))
    return out
