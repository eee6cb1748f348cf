"""Document bytes by SHA-256: ``rag/blobs/<sha256>``, readable by their owner only.

The model store's rule, for documents: a file under a content name always has that
content (streamed into a unique temp file while hashed, fsynced, then renamed). It is
a store of its own rather than ``store.blobs.BlobStore`` because documents differ from
models in two ways that matter: they are private (0600 files in a 0700 directory, where
model blobs are world-readable), and they are kept by collections, not by manifests and
the model GC's 30-day rule — a blob goes when no collection lists it any more.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from locara.errors import IntegrityError, StoreError
from locara.registry.names import check_sha256
from locara.store.locks import open_nofollow

BLOCK = 1 << 20
PRIVATE_FILE = 0o600
PRIVATE_DIR = 0o700


class DocumentStore:
    """Content-addressed document bytes under ``root`` (``$LOCARA_HOME/rag/blobs``)."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    def has(self, sha256: str) -> bool:
        p = self.path(sha256)
        return p.is_file() and not p.is_symlink()

    def put_stream(self, blocks: Iterator[bytes]) -> tuple[str, int]:
        """Store the bytes of ``blocks``; their SHA-256 and size. Memory: one block."""
        self._ensure_root()
        tmp = self.root / f".tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        try:
            h = hashlib.sha256()
            n = 0
            fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
            with os.fdopen(fd, "wb") as f:
                for block in blocks:
                    h.update(block)
                    f.write(block)
                    n += len(block)
                f.flush()
                os.fsync(f.fileno())
            sha = h.hexdigest()
            # Same content, same name: a rename over an existing copy changes nothing.
            os.replace(tmp, self.path(sha))
            _fsync_dir(self.root)
            return sha, n
        except OSError as exc:
            raise StoreError(
                f"cannot store a document under {self.root}: {exc.strerror or exc}",
                "free some disk space, or set LOCARA_HOME to a writable disk",
            ) from exc
        finally:
            tmp.unlink(missing_ok=True)

    def put_bytes(self, data: bytes) -> tuple[str, int]:
        return self.put_stream(iter([data]))

    def read_range(self, sha256: str, start: int, end: int) -> bytes:
        """The bytes ``[start, end)`` of a stored document."""
        fd = open_nofollow(self.path(sha256), os.O_RDONLY)
        with os.fdopen(fd, "rb") as f:
            f.seek(start)
            return f.read(max(0, end - start))

    def verify(self, sha256: str) -> None:
        """Raise IntegrityError unless the stored bytes still hash to ``sha256``."""
        h = hashlib.sha256()
        try:
            fd = open_nofollow(self.path(sha256), os.O_RDONLY)
        except FileNotFoundError:
            raise IntegrityError(
                f"document {sha256[:12]} is missing from the store",
                sha256,
                "nothing",
                "add the document again: locara rag add COLLECTION PATH",
            ) from None
        with os.fdopen(fd, "rb") as f:
            while block := f.read(BLOCK):
                h.update(block)
        if h.hexdigest() != sha256:
            raise IntegrityError(
                f"document {sha256[:12]} was changed in the store",
                sha256,
                h.hexdigest(),
                "add the document again: locara rag add COLLECTION PATH",
            )

    def stored(self) -> set[str]:
        if not self.root.is_dir():
            return set()
        return {p.name for p in self.root.iterdir() if len(p.name) == 64}

    def remove(self, sha256: str) -> None:
        self.path(sha256).unlink(missing_ok=True)

    def _ensure_root(self) -> None:
        self.root.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
        os.chmod(self.root, PRIVATE_DIR)


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
