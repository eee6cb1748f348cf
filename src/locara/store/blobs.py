"""Content-addressed blobs: ``models/<sha256>/model.<ext>`` plus ``meta.json``.

The one invariant: a file under a content name always has that content. Bytes are
written to a unique temporary directory in the same filesystem, hashed while they
are written, checked against the promised size and SHA-256, fsynced, and only then
renamed into place. Two processes racing to store the same blob both succeed: the
loser's rename fails because the directory exists, and it discards its own copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import shutil
import stat
import time
import uuid
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.errors import IntegrityError, LocaraError, StoreError
from locara.registry.names import check_filename, check_sha256
from locara.settings import Settings
from locara.store.index import StoreIndex
from locara.store.locks import open_nofollow

CHUNK = 1 << 20
META = "meta.json"
READ_ONLY = stat.S_IRUSR | stat.S_IRGRP | stat.S_IROTH


def _stat_signature(path: Path) -> dict[str, int]:
    # ctime cannot be set from user space, so any write or chmod after verification
    # changes the signature and forces a re-hash before the bytes are trusted again.
    st = path.stat()
    return {
        "size": st.st_size,
        "mtime_ns": st.st_mtime_ns,
        "ctime_ns": st.st_ctime_ns,
        "ino": st.st_ino,
    }


def hash_file(path: Path, progress: Callable[[int], None] | None = None) -> tuple[str, int]:
    """SHA-256 and size of a file, read in 1 MiB chunks."""
    h = hashlib.sha256()
    n = 0
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
            n += len(chunk)
            if progress:
                progress(len(chunk))
    return h.hexdigest(), n


@dataclass(frozen=True)
class StoredBlob:
    """A blob in the store. For a multi-file artifact ``path`` is the file a backend
    opens (the model or first part) and ``files`` every file of the assembled directory."""

    sha256: str
    path: Path
    size_bytes: int
    meta: dict[str, Any]
    files: tuple[Path, ...] = ()

    @property
    def is_tree(self) -> bool:
        return self.meta.get("kind") == "tree"


class BlobStore:
    """The store under ``settings.models_dir`` and its index database."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.models_dir
        self.index = StoreIndex(settings.db_path)

    # -- paths ---------------------------------------------------------------------
    def blob_dir(self, sha256: str) -> Path:
        return self.root / check_sha256(sha256)

    def blob_path(self, sha256: str, ext: str) -> Path:
        return self.blob_dir(sha256) / check_filename(f"model.{ext}")

    def ensure_writable(self) -> None:
        """Create the store directories or fail with a hint about LOCARA_HOME."""
        try:
            for d in (self.root, self.settings.tmp_dir, self.settings.locks_dir):
                d.mkdir(parents=True, exist_ok=True)
            probe = self.settings.tmp_dir / f".probe-{uuid.uuid4().hex}"
            probe.write_bytes(b"")
            probe.unlink()
        except OSError as exc:
            raise StoreError(
                f"cannot write to the Locara home {self.settings.home}: {exc.strerror or exc}",
                "make it writable, or set LOCARA_HOME to a writable directory",
            ) from exc

    # -- reading -------------------------------------------------------------------
    def read_meta(self, sha256: str) -> dict[str, Any] | None:
        p = self.blob_dir(sha256) / META
        if p.parent.is_symlink() or p.is_symlink():
            return None  # never read through a planted link
        try:
            data = json.loads(p.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def find(self, sha256: str) -> StoredBlob | None:
        """The stored blob for ``sha256`` if present (not yet verified), else None."""
        d = self.blob_dir(sha256)
        # A symlink planted at a blob path could point anywhere: never follow one.
        if d.is_symlink() or (d / META).is_symlink():
            return None
        meta = self.read_meta(sha256)
        if meta is None:
            return None
        try:
            path = d / check_filename(str(meta.get("file", "")))
            names = [check_filename(str(f["name"])) for f in meta.get("files", [])]
        except (ValueError, KeyError, TypeError):
            return None
        files = tuple(d / n for n in names)
        if any(p.is_symlink() or not p.is_file() for p in (path, *files)):
            return None
        return StoredBlob(sha256, path, int(meta.get("size_bytes", -1)), meta, files)

    def planted_symlink(self, sha256: str) -> Path | None:
        """A symlink sitting where a blob or one of its files should be, if any."""
        d = self.blob_dir(sha256)
        if d.is_symlink():
            return d
        if d.is_dir():
            for p in d.iterdir():
                if p.is_symlink():
                    return p
        return None

    def verify(self, sha256: str, deep: bool = False) -> StoredBlob:
        """Return the blob if its bytes are the promised ones; raise IntegrityError if not.

        Without ``deep`` the cached verification is reused when the file's stat
        signature has not changed since it was hashed, so a 98 MB model is not
        re-hashed on every run; any write or chmod since then forces a re-hash.
        """
        blob = self.find(sha256)
        if blob is None:
            planted = self.planted_symlink(sha256)
            if planted is not None:
                raise IntegrityError(
                    f"refusing blob {sha256[:12]}: {planted} is a symlink, not a stored file",
                    "a regular file",
                    "a symlink",
                    hint="remove it with: locara cache verify --repair",
                )
            raise StoreError(
                f"blob {sha256} is not in the store", "fetch it with: locara pull MODEL"
            )
        if blob.is_tree:
            return self._verify_tree(blob, deep)
        sig = _stat_signature(blob.path)
        if not deep and blob.meta.get("verified") == sig:
            return blob
        actual, size = hash_file(blob.path)
        if actual != sha256 or size != blob.size_bytes:
            self.remove(sha256)
            raise IntegrityError(
                f"stored blob {sha256[:12]} is corrupted (size {size}, expected {blob.size_bytes})",
                sha256,
                actual,
                hint="it was removed; fetch it again with: locara pull MODEL",
            )
        self._write_meta(blob.path.parent, {**blob.meta, "verified": sig})
        return StoredBlob(sha256, blob.path, size, {**blob.meta, "verified": sig})

    def _verify_tree(self, blob: StoredBlob, deep: bool) -> StoredBlob:
        # A tree is only as good as its files: each must verify as its own blob, and
        # each link in the tree must be that very blob (same inode), not a copy.
        for entry, link in zip(blob.meta.get("files", []), blob.files, strict=True):
            try:
                part = self.verify(check_sha256(str(entry["sha256"])), deep)
            except StoreError:
                # A bad or missing file: the tree's link to it must not outlive it.
                self.remove(blob.sha256)
                raise
            if not os.path.samefile(part.path, link):
                self.remove(blob.sha256)
                raise IntegrityError(
                    f"assembled artifact {blob.sha256[:12]}: {link.name} is not its blob",
                    part.path.name,
                    link.name,
                    hint="it was removed; fetch it again with: locara pull MODEL",
                )
        return blob

    def refresh_signature(self, sha256: str) -> None:
        """Record the current stat signature after Locara itself linked the file.

        link(2) changes the inode's ctime, which would otherwise force a full re-hash
        on the next verify; only call this right after a verify of the same blob.
        """
        blob = self.find(sha256)
        if blob is None or blob.is_tree:
            return
        verified = blob.meta.get("verified")
        sig = _stat_signature(blob.path)
        if isinstance(verified, dict) and all(
            verified.get(k) == sig[k] for k in ("size", "mtime_ns", "ino")
        ):
            self._write_meta(blob.path.parent, {**blob.meta, "verified": sig})

    # -- writing -------------------------------------------------------------------
    def ingest(
        self,
        chunks: Iterable[bytes],
        sha256: str,
        size_bytes: int | None,
        ext: str,
        meta: dict[str, Any],
        progress: Callable[[int], None] | None = None,
    ) -> StoredBlob:
        """Store the bytes of ``chunks`` under ``sha256`` iff they hash to it.

        The temp directory is unique per call, so correctness never depends on a lock:
        concurrent writers each verify their own bytes and the first rename wins.
        """
        check_sha256(sha256)
        self.ensure_writable()
        tmp = self.settings.tmp_dir / f"{sha256[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.mkdir()
        try:
            name = check_filename(f"model.{ext}")
            target = tmp / name
            h = hashlib.sha256()
            n = 0
            with target.open("xb") as f:
                for chunk in chunks:
                    h.update(chunk)
                    f.write(chunk)
                    n += len(chunk)
                    if size_bytes is not None and n > size_bytes:
                        raise IntegrityError(
                            "download is larger than declared",
                            f"{size_bytes} bytes",
                            f"> {n} bytes",
                        )
                    if progress:
                        progress(len(chunk))
                f.flush()
                os.fsync(f.fileno())
            actual = h.hexdigest()
            if size_bytes is not None and n != size_bytes:
                raise IntegrityError("size mismatch", f"{size_bytes} bytes", f"{n} bytes")
            if actual != sha256:
                raise IntegrityError("sha256 mismatch", sha256, actual)
            return self._place(tmp, target, sha256, n, meta)
        except OSError as exc:
            if isinstance(exc, LocaraError):  # FetchError from the source, IntegrityError
                raise
            raise StoreError(
                f"cannot write the model into the store: {exc.strerror or exc}",
                "free some disk space (locara cleanup) or set LOCARA_HOME to a larger disk",
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def staging_dir(self, sha256: str) -> Path:
        """A fresh, unique directory in the store's filesystem to assemble a blob in."""
        self.ensure_writable()
        d = self.settings.tmp_dir / f"{sha256[:16]}-{os.getpid()}-{uuid.uuid4().hex[:8]}.d"
        d.mkdir()
        return d

    def place_file(
        self, path: Path, sha256: str, size: int, ext: str, meta: dict[str, Any]
    ) -> StoredBlob:
        """Move a file the caller has already hashed and checked into the store.

        ``path`` must be in the store's filesystem (e.g. a finished download in
        ``tmp_dir``); it is moved, never copied, then made read-only.
        """
        check_sha256(sha256)
        tmp = self.staging_dir(sha256)
        try:
            target = tmp / check_filename(f"model.{ext}")
            os.rename(path, target)
            return self._place(tmp, target, sha256, size, meta)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def assemble_tree(
        self, sha256: str, parts: list[tuple[str, StoredBlob]], primary: str, meta: dict[str, Any]
    ) -> StoredBlob:
        """Build a multi-file artifact: a directory of hardlinks to its files' blobs.

        The parts keep their own names, so a backend that expects a split GGUF's parts
        (or a model and its projector) side by side finds them.
        """
        check_sha256(sha256)
        tmp = self.staging_dir(sha256)
        try:
            for name, part in parts:
                os.link(part.path, tmp / check_filename(name))
                self.refresh_signature(part.sha256)
            size = sum(p.size_bytes for _, p in parts)
            files = [{"name": n, "sha256": p.sha256, "size_bytes": p.size_bytes} for n, p in parts]
            full = {**meta, "kind": "tree", "files": files}
            return self._place(tmp, tmp / check_filename(primary), sha256, size, full)
        except OSError as exc:
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"cannot assemble artifact {sha256[:12]}: {exc.strerror or exc}",
                "check that LOCARA_HOME is on one writable filesystem",
            ) from exc
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def _place(
        self, tmp: Path, target: Path, sha256: str, size: int, meta: dict[str, Any]
    ) -> StoredBlob:
        if meta.get("kind") != "tree":
            os.chmod(target, READ_ONLY)
        full_meta = {
            **meta,
            "sha256": sha256,
            "file": target.name,
            "size_bytes": size,
            "stored_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
            "verified": _stat_signature(target),
        }
        self._write_meta(tmp, full_meta)
        _fsync_dir(tmp)
        final = self.blob_dir(sha256)
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process placed the same content first (or a stale, broken dir is
            # in the way). Trust the existing one only if it verifies.
            existing = self.find(sha256)
            if existing is not None:
                try:
                    self.verify(sha256, deep=True)
                except IntegrityError:
                    existing = None  # verify removed the bad one
            if existing is None:
                self._remove_dir(final)
                os.rename(tmp, final)
        _fsync_dir(self.root)
        self.index.record_blob(
            sha256, meta.get("id"), meta.get("quant"), meta.get("format", "gguf"), size
        )
        blob = self.find(sha256)
        if blob is None:  # pragma: no cover - the rename above guarantees it
            raise StoreError(f"blob {sha256} vanished after placing it", "try again")
        return blob

    def _write_meta(self, directory: Path, meta: dict[str, Any]) -> None:
        # A fresh temp file (O_EXCL: never an existing file or link) renamed over the
        # old one: rename replaces a planted link at meta.json instead of following it.
        tmp = directory / f".{META}.{uuid.uuid4().hex[:8]}"
        fd = open_nofollow(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(meta, f, indent=2, sort_keys=True)
        os.replace(tmp, directory / META)

    def remove(self, sha256: str) -> None:
        """Delete a blob directory and its index row (reference rules are the caller's)."""
        self._remove_dir(self.blob_dir(sha256))
        self.index.forget_blob(sha256)

    @staticmethod
    def _remove_dir(d: Path) -> None:
        if d.is_symlink() or d.is_file():
            d.unlink()  # a planted link or file: remove it, never follow it
            return
        if not d.exists():
            return
        # No chmod first: unlinking needs only the directory's write permission, and the
        # file's inode may be shared (an app's hardlink, an adopted Ollama blob).
        shutil.rmtree(d, ignore_errors=True)

    def touch(self, sha256: str) -> None:
        self.index.touch(sha256)

    # -- in-use leases ---------------------------------------------------------------
    # A process using a blob (an install in progress, a loaded model) holds a shared
    # flock on locks/<sha>.use; GC and rm take it exclusively without waiting. The
    # kernel drops the lock when the process dies, so a crash never pins a blob forever.
    def _lease_path(self, sha256: str) -> Path:
        return self.settings.locks_dir / f"{check_sha256(sha256)}.use"

    @contextlib.contextmanager
    def lease(self, sha256: str) -> Iterator[None]:
        """Hold ``sha256`` as in use for the duration of the ``with`` block."""
        self.ensure_writable()
        fd = open_nofollow(self._lease_path(sha256), os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_SH)
            yield
        finally:
            os.close(fd)

    def in_use(self, sha256: str) -> bool:
        """True while some process holds a lease on ``sha256``."""
        path = self._lease_path(sha256)
        if not path.exists() and not path.is_symlink():
            return False
        fd = open_nofollow(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)
        return False


def _fsync_dir(d: Path) -> None:
    fd = os.open(d, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
