"""``rag add``: files and directories into a collection, one document at a time.

For each file: refuse what cannot be indexed (type, size, emptiness) before reading it;
hash it (streamed) and stop if the collection already holds these bytes at this path;
store the bytes by SHA-256; extract text views; chunk, embed in batches and replace the
document's chunks in one transaction. A file that fails is reported on one line and
the others go on: nothing already in the collection is lost.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np

from locara.errors import LocaraError
from locara.rag.chunking import ChunkConfig, TextChunk, TextView, chunk_views
from locara.rag.collection import Collection, adding_blobs, documents_store
from locara.rag.docstore import BLOCK, DocumentStore
from locara.rag.embedder import BATCH, Embedder
from locara.rag.extract import DocumentError, html_view, kind_of, pdf_text, text_views
from locara.settings import Settings
from locara.store.blobs import hash_file

DEFAULT_MAX_BYTES = 64 * 1024 * 1024


@dataclass
class AddReport:
    added: list[tuple[str, int]] = field(default_factory=list)  # (path, chunks)
    updated: list[tuple[str, int]] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # one line each: why
    failed: list[LocaraError] = field(default_factory=list)


Progress = Callable[[str], None]


def walk(paths: Iterable[Path], report: AddReport) -> Iterator[tuple[Path, bool]]:
    """(file, named explicitly) for every file under ``paths``; directories recursively.

    Symbolic links are followed, but a directory already visited (a link loop, or two
    links to one place) is skipped with a note, so a loop ends.
    """
    seen: set[tuple[int, int]] = set()
    for p in paths:
        if p.is_dir():
            yield from _walk_dir(p, seen, report)
        else:
            yield p, True


def _walk_dir(
    root: Path, seen: set[tuple[int, int]], report: AddReport
) -> Iterator[tuple[Path, bool]]:
    try:
        st = root.stat()
    except OSError as exc:
        report.skipped.append(f"{root}: {exc.strerror or exc}")
        return
    key = (st.st_dev, st.st_ino)
    if key in seen:
        report.skipped.append(f"{root}: already visited (a symbolic link loop?)")
        return
    seen.add(key)
    try:
        entries = sorted(os.scandir(root), key=lambda e: e.name)
    except OSError as exc:
        report.skipped.append(f"{root}: cannot list it: {exc.strerror or exc}")
        return
    for e in entries:
        if e.name.startswith("."):
            continue  # .git, .DS_Store and the like
        path = Path(e.path)
        try:
            is_dir = e.is_dir()
        except OSError as exc:  # ELOOP: a link that points at itself
            report.skipped.append(f"{path}: {exc.strerror or exc}")
            continue
        if is_dir:
            yield from _walk_dir(path, seen, report)
        elif e.is_file():
            yield path, False
        elif e.is_symlink():
            report.skipped.append(f"{path}: a broken or looping symbolic link")


def add_paths(
    settings: Settings,
    collection: Collection,
    paths: Iterable[Path],
    embedder: Embedder,
    *,
    config: ChunkConfig | None = None,
    max_bytes: int = DEFAULT_MAX_BYTES,
    progress: Progress | None = None,
) -> AddReport:
    """Add or update every supported file under ``paths``; a report of what happened."""
    collection.check_embedder(embedder.model_id, embedder.sha256)
    config = config or ChunkConfig()
    store = documents_store(settings)
    report = AddReport()
    with collection.writing(), adding_blobs(settings):
        for path, explicit in walk(paths, report):
            try:
                kind = kind_of(path)
            except DocumentError as exc:
                if explicit:
                    report.failed.append(exc)
                else:
                    report.skipped.append(f"{path}: unsupported type (not indexed)")
                continue
            try:
                _add_file(
                    store, collection, path, kind, embedder, config, max_bytes, report, progress
                )
            except LocaraError as exc:
                report.failed.append(exc)
    return report


def _add_file(
    store: DocumentStore,
    collection: Collection,
    path: Path,
    kind: str,
    embedder: Embedder,
    config: ChunkConfig,
    max_bytes: int,
    report: AddReport,
    progress: Progress | None,
) -> None:
    key = str(path.absolute())
    try:
        size = path.stat().st_size
        if size > max_bytes:
            raise DocumentError(
                f"{path}: {size / 1e6:.1f} MB is more than the {max_bytes / 1e6:.0f} MB limit",
                f"split it, or raise the limit: locara rag add --max-size {size // 1_000_000 + 1}MB ...",
            )
        if size == 0:
            raise DocumentError(f"{path}: the file is empty", "add a file with some text in it")
        sha, _ = hash_file(path)
    except OSError as exc:
        raise DocumentError(
            f"{path}: cannot read it: {exc.strerror or exc}",
            f"check it exists and you may read it (ls -l {path})",
        ) from None
    old = collection.document(key)
    if old is not None and old.sha256 == sha and store.has(sha):
        report.unchanged.append(key)
        return
    stored, size = _store_file(store, path)
    if stored != sha:
        raise DocumentError(
            f"{path}: changed while it was being read", "add it again once it is written"
        )
    cite_sha = sha
    page_starts: tuple[int, ...] = ()
    if kind == "pdf":
        text = pdf_text(path, _read_all(store, sha))
        cite_sha, _ = store.put_bytes(text.data)
        page_starts = text.page_starts
    chunks = _chunks(store, path, kind, cite_sha, page_starts, config)
    if progress:
        progress(f"indexing {path}")
    n = collection.replace_document(
        key,
        sha256=sha,
        cite_sha256=cite_sha,
        kind=kind,
        size_bytes=size,
        page_starts=page_starts,
        batches=_embedded(chunks, embedder, path, progress),
    )
    (report.updated if old is not None else report.added).append((key, n))


def _store_file(store: DocumentStore, path: Path) -> tuple[str, int]:
    try:
        with path.open("rb") as f:
            return store.put_stream(iter(lambda: f.read(BLOCK), b""))
    except OSError as exc:
        if isinstance(exc, LocaraError):
            raise
        raise DocumentError(
            f"{path}: cannot read it: {exc.strerror or exc}", f"check ls -l {path}"
        ) from None


def _read_all(store: DocumentStore, sha: str) -> bytes:
    with store.path(sha).open("rb") as f:
        return f.read()


def _chunks(
    store: DocumentStore,
    path: Path,
    kind: str,
    cite_sha: str,
    page_starts: tuple[int, ...],
    config: ChunkConfig,
) -> Iterator[TextChunk]:
    if kind == "html":
        yield from chunk_views([html_view(path, _read_all(store, cite_sha))], config)
        return
    if kind == "pdf":
        # Page by page, so every chunk (and every citation) lies on one page.
        data = _read_all(store, cite_sha)
        ordinal = 0
        for a, b in zip(page_starts, (*page_starts[1:], len(data)), strict=True):
            view = TextView.of_utf8(data[a:b].decode("utf-8"), a)
            for c in chunk_views([view], config):
                yield replace(c, ordinal=ordinal)
                ordinal += 1
        return
    with store.path(cite_sha).open("rb") as f:
        yield from chunk_views(text_views(path, iter(lambda: f.read(BLOCK), b"")), config)


def _embedded(
    chunks: Iterator[TextChunk], embedder: Embedder, path: Path, progress: Progress | None
) -> Iterator[tuple[list[TextChunk], np.ndarray]]:
    batch: list[TextChunk] = []
    done = 0
    for c in chunks:
        batch.append(c)
        if len(batch) == BATCH:
            yield batch, embedder.embed([b.text for b in batch])
            done += len(batch)
            if progress:
                progress(f"embedded {done} chunks of {path}")
            batch = []
    if batch:
        yield batch, embedder.embed([b.text for b in batch])
