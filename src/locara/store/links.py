"""Putting one file at a second path without copying it: hardlink, else reflink, else copy.

Which of the three happened is returned, because a copy costs disk and the user is
told about it: a copy is only ever a visible fallback.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from pathlib import Path
from typing import Literal

LinkMode = Literal["hardlink", "reflink", "copy"]
_FICLONE = 0x40049409  # linux/fs.h: share extents copy-on-write (btrfs, xfs, ...)


def _reflink(src: Path, dst: Path) -> bool:
    try:
        with src.open("rb") as s, dst.open("xb") as d:
            fcntl.ioctl(d.fileno(), _FICLONE, s.fileno())
        return True
    except OSError:
        with contextlib.suppress(OSError):
            dst.unlink()
        return False


def link_or_copy(src: Path, dst: Path) -> LinkMode:
    """Make ``dst`` have ``src``'s bytes: a hardlink if possible (same filesystem)."""
    try:
        os.link(src, dst)
        return "hardlink"
    except OSError:
        pass  # EXDEV across filesystems, EPERM on some mounts: fall through
    if _reflink(src, dst):
        return "reflink"
    shutil.copyfile(src, dst)
    return "copy"


def worst(modes: list[LinkMode]) -> LinkMode:
    """The most expensive mode among ``modes`` (what to report for a whole install)."""
    for m in ("copy", "reflink"):
        if m in modes:
            return m
    return "hardlink"
