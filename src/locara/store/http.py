"""HTTP downloads with httpx: resume by Range, retries with backoff, timeouts, HF tokens.

The bytes are hashed as they are written, so a finished download needs no second read
pass. A partial file left by an earlier attempt (or a killed process) is re-hashed and
continued with ``Range: bytes=N-``; a server that answers 200 instead of 206 restarts
the file cleanly from byte 0.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO
from urllib.parse import urlparse

import httpx

from locara.errors import FetchError, IntegrityError, StoreError
from locara.settings import Settings
from locara.store.locks import open_nofollow

CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)
_HF_PART = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,95}")
_CONTENT_RANGE = re.compile(r"bytes (\d+)-(\d+)/(\d+|\*)")


@dataclass(frozen=True)
class HttpOptions:
    """How patient a download is; tests shorten these, users keep the defaults."""

    timeout: httpx.Timeout = field(default_factory=lambda: TIMEOUT)
    attempts: int = 5  # per source, counting the first
    backoff_s: float = 0.5  # doubled per failed attempt
    max_backoff_s: float = 30.0  # also caps a server's Retry-After


def resolve_url(url: str, settings: Settings) -> str:
    """Expand ``hf://owner/repo[@revision]/path`` to a resolve URL on HF_ENDPOINT."""
    if not url.startswith("hf://"):
        return url
    owner, repo, path = [*url[len("hf://") :].split("/", 2), "", ""][:3]
    repo, _, rev = repo.partition("@")
    rev = rev or "main"
    parts = [owner, repo, rev, *path.split("/")]
    if not path or not all(_HF_PART.fullmatch(p) and ".." not in p for p in parts):
        raise FetchError(
            f"invalid hf:// source {url!r}",
            "use hf://owner/repo/file or hf://owner/repo@revision/path/file",
            url,
        )
    return f"{settings.hf_endpoint}/{owner}/{repo}/resolve/{rev}/{path}"


def _headers(url: str, settings: Settings) -> dict[str, str]:
    # identity: the bytes hashed must be the file's bytes, and Range offsets must be
    # offsets into the file, not into a compressed stream.
    headers = {"User-Agent": "locara/0.1", "Accept-Encoding": "identity"}
    # The token goes to the Hugging Face endpoint only (exact host, not a prefix match);
    # httpx drops it by itself on a redirect to another host (the CDN).
    if settings.hf_token and urlparse(url).netloc == urlparse(settings.hf_endpoint).netloc:
        headers["Authorization"] = f"Bearer {settings.hf_token}"
    return headers


class _Retry(Exception):
    def __init__(
        self, reason: str, retry_after: float | None = None, unreachable: bool = False
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after
        # No connection at all (DNS, refused): retried once, not with the full backoff,
        # so a machine without network gets its error in about a second, not a minute.
        self.unreachable = unreachable


def _retry_after(resp: httpx.Response) -> float | None:
    value = resp.headers.get("retry-after", "")
    return float(value) if value.strip().isdigit() else None


class _StreamHash:
    """SHA-256 computed on a second thread, fed in the order the bytes are written.

    hashlib releases the GIL on large buffers, so hashing overlaps with receiving and
    writing the next chunk: the download costs max(network, hash), not their sum.
    The queue is bounded so a slow hash cannot buffer a whole model in memory.
    """

    BATCH = 1 << 20  # hand over ~1 MiB at a time: one queue round trip per MiB, not per recv

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._q: queue.Queue[bytes | None] = queue.Queue(maxsize=16)
        self._t = threading.Thread(target=self._run, name="locara-sha256", daemon=True)
        self._t.start()
        self._pending: list[bytes] = []
        self._pending_n = 0
        self._done: str | None = None

    def _run(self) -> None:
        while (chunk := self._q.get()) is not None:
            self._h.update(chunk)

    def update(self, chunk: bytes) -> None:
        self._pending.append(chunk)
        self._pending_n += len(chunk)
        if self._pending_n >= self.BATCH:
            self._q.put(b"".join(self._pending))
            self._pending.clear()
            self._pending_n = 0

    def hexdigest(self) -> str:
        if self._done is None:
            if self._pending:
                self._q.put(b"".join(self._pending))
                self._pending.clear()
            self._q.put(None)
            self._t.join()
            self._done = self._h.hexdigest()
        return self._done


@dataclass
class _Partial:
    """The file being written and the hash of exactly the bytes in it."""

    path: Path
    file: IO[bytes]
    offset: int = 0
    hasher: _StreamHash = field(default_factory=_StreamHash)

    def restart(self) -> None:
        self.file.seek(0)
        self.file.truncate(0)
        self.offset = 0
        self.hasher.hexdigest()  # let the old thread finish
        self.hasher = _StreamHash()


def _rehash(part: _Partial, limit: int | None) -> None:
    """Hash the bytes already on disk (they may be from a killed process)."""
    f = part.file
    f.seek(0)
    while chunk := f.read(CHUNK):
        part.hasher.update(chunk)
        part.offset += len(chunk)
    if limit is not None and part.offset > limit:
        part.restart()  # longer than the whole file: cannot be a prefix of it
    f.seek(part.offset)


def download(
    url: str,
    settings: Settings,
    path: Path,
    expected_size: int | None,
    progress: Callable[[int], None] | None = None,
    options: HttpOptions | None = None,
) -> tuple[str, int]:
    """Download ``url`` into ``path`` (resuming what is there); return (sha256, size).

    Transient failures (connection cut, timeouts, 429, 5xx) are retried with backoff,
    each retry continuing from the bytes already written. Raises FetchError when the
    source gives up (the partial file is kept for a later resume), IntegrityError when
    the server announces or sends more bytes than expected, StoreError when the disk
    refuses the bytes.
    """
    opts = options or HttpOptions()
    real = resolve_url(url, settings)
    headers = _headers(real, settings)
    try:
        # O_NOFOLLOW: a link planted at the partial's path must not receive the bytes.
        f = os.fdopen(open_nofollow(path, os.O_RDWR | os.O_CREAT), "r+b")
    except StoreError:
        raise
    except OSError as exc:
        raise StoreError(
            f"cannot write {path}: {exc.strerror or exc}", "check LOCARA_HOME"
        ) from exc
    part = _Partial(path, f)
    try:
        _rehash(part, expected_size)
        if progress and part.offset:
            progress(part.offset)
        failures = 0
        with httpx.Client(timeout=opts.timeout, follow_redirects=True) as client:
            while True:
                try:
                    _request(client, real, headers, part, expected_size, progress)
                    break
                except _Retry as r:
                    failures += 1
                    if failures >= opts.attempts or (r.unreachable and failures >= 2):
                        hint = "check the network and run the same command again"
                        if r.unreachable:
                            hint += "; LOCARA_OFFLINE=1 uses only models already stored"
                        if part.offset:
                            hint += f" (it resumes from the {part.offset} bytes already here)"
                        raise FetchError(
                            f"download of {real} failed after {failures} attempts: {r.reason}",
                            hint,
                            real,
                        ) from None
                    delay = r.retry_after
                    if delay is None:
                        delay = opts.backoff_s * 2 ** (failures - 1)
                    time.sleep(min(delay, opts.max_backoff_s))
        try:
            f.flush()
            os.fsync(f.fileno())
        except OSError as exc:
            raise _disk_error(exc) from exc
        return part.hasher.hexdigest(), part.offset
    finally:
        part.hasher.hexdigest()  # never leave the hashing thread waiting
        # A full disk may refuse the bytes still buffered too; the error already raised
        # says so (a resume re-reads the partial file from disk, so nothing is lost).
        with contextlib.suppress(OSError):
            f.close()


def _disk_error(exc: OSError) -> StoreError:
    return StoreError(
        f"cannot write the download to disk: {exc.strerror or exc}",
        "free some disk space (locara cache gc, locara cleanup) or set LOCARA_HOME to a larger disk",
    )


def _request(
    client: httpx.Client,
    url: str,
    base_headers: dict[str, str],
    part: _Partial,
    expected_size: int | None,
    progress: Callable[[int], None] | None,
) -> None:
    if expected_size is not None and part.offset == expected_size:
        return  # everything is already on disk; the caller verifies the hash
    headers = dict(base_headers)
    if part.offset:
        headers["Range"] = f"bytes={part.offset}-"
    try:
        with client.stream("GET", url, headers=headers) as resp:
            _check_status(resp, url, part, expected_size)
            for chunk in resp.iter_bytes():  # as it arrives: a cut loses nothing received
                if expected_size is not None and part.offset + len(chunk) > expected_size:
                    raise IntegrityError(
                        f"{url} sent more bytes than declared",
                        f"{expected_size} bytes",
                        f"more than {expected_size} bytes",
                        hint="nothing was kept; report the source, or try a mirror",
                    )
                try:
                    part.file.write(chunk)
                except OSError as exc:
                    raise _disk_error(exc) from exc
                part.hasher.update(chunk)
                part.offset += len(chunk)
                if progress:
                    progress(len(chunk))
    except httpx.TimeoutException as exc:
        _flush(part)
        raise _Retry(f"timed out ({type(exc).__name__})") from exc
    except httpx.ConnectError as exc:
        raise _Retry(f"cannot connect ({exc})", unreachable=True) from exc
    except httpx.TransportError as exc:
        _flush(part)
        raise _Retry(f"{type(exc).__name__}: {exc}") from exc
    except httpx.HTTPError as exc:
        raise FetchError(f"download of {url} failed: {exc}", "check the URL", url) from exc


def _flush(part: _Partial) -> None:
    try:
        part.file.flush()
    except OSError as exc:
        raise _disk_error(exc) from exc


def _check_status(
    resp: httpx.Response, url: str, part: _Partial, expected_size: int | None
) -> None:
    status = resp.status_code
    if status == 429 or 500 <= status < 600:
        raise _Retry(f"HTTP {status}", _retry_after(resp))
    if status == 206:
        m = _CONTENT_RANGE.fullmatch(resp.headers.get("content-range", "").strip())
        if m is None or int(m.group(1)) != part.offset:
            # A range we did not ask for: start over rather than guess.
            part.restart()
            raise _Retry(
                f"server answered a different range ({resp.headers.get('content-range')})", 0
            )
        total = m.group(3)
        if expected_size is not None and total != "*" and int(total) != expected_size:
            raise _size_error(url, expected_size, int(total))
        return
    if status == 200:
        if part.offset:
            part.restart()  # the server ignored Range: the body starts at byte 0
        length = resp.headers.get("content-length")
        announced = int(length) if length is not None and length.isdigit() else None
        if expected_size is not None and announced is not None and announced != expected_size:
            raise _size_error(url, expected_size, announced)
        return
    if status == 416:
        part.restart()
        raise _Retry("HTTP 416: the partial file does not fit the remote file", 0)
    if status in (401, 403):
        raise FetchError(
            f"GET {url} answered HTTP {status}: access denied",
            "for a gated Hugging Face repository accept its terms on the website and set HF_TOKEN",
            url,
            status,
        )
    if status == 404:
        raise FetchError(
            f"GET {url} answered HTTP 404: not found",
            "the file moved or the manifest is wrong; try a mirror or update Locara's registry",
            url,
            status,
        )
    raise FetchError(f"GET {url} answered HTTP {status}", "check the URL and retry", url, status)


def _size_error(url: str, expected: int, announced: int) -> IntegrityError:
    return IntegrityError(
        f"{url} announces a file of a different size",
        f"{expected} bytes",
        f"{announced} bytes",
        hint="nothing was downloaded; the file changed upstream or the source is wrong",
    )
