"""Lock and lease files in the store, opened without ever following a symbolic link.

Anyone who can plant a link in ``models/.locks`` (a shared or misconfigured home)
could otherwise make ``open(O_CREAT)`` create a file wherever the link points, or
make a lock library's ``O_TRUNC`` empty it. ``O_NOFOLLOW`` makes the kernel refuse
the open instead, and the error names the link to remove.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
from collections.abc import Iterator
from pathlib import Path

from locara.errors import StoreError

# FreeBSD reports a final-component link under O_NOFOLLOW as EMLINK, Linux and macOS as ELOOP.
_LINK_ERRNOS = frozenset({errno.ELOOP, errno.EMLINK})


def planted_link_error(path: Path) -> StoreError:
    """The error for a symbolic link found where Locara keeps a file of its own."""
    return StoreError(
        f"refusing to follow {path}: it is a symbolic link, where Locara keeps a file of its own",
        f"remove the link (rm {path}) and run the command again",
    )


def open_nofollow(path: Path, flags: int, mode: int = 0o644) -> int:
    """``os.open`` that refuses a symbolic link as the last path component."""
    try:
        return os.open(path, flags | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    except OSError as exc:
        if exc.errno in _LINK_ERRNOS:
            raise planted_link_error(path) from exc
        raise


@contextlib.contextmanager
def exclusive_lock(path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``path`` (created if missing) for the ``with`` block.

    flock belongs to the open file description, so two threads of one process
    exclude each other as two processes do; the kernel drops it when a process dies.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing releases the lock
