"""Validation of every name Locara builds a path from: model ids, quants, filenames, digests.

Checked before any path is joined, because a digest or filename is attacker-controlled
input when it comes from a manifest or a URL (Ollama's CVE-2024-37032 was a digest
containing ``../``).
"""

from __future__ import annotations

import re

from locara.errors import InvalidReferenceError

_ID = re.compile(r"[a-z0-9][a-z0-9._-]{0,127}")
_QUANT = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,31}")
_FILENAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+-]{0,199}")
_SHA256 = re.compile(r"[0-9a-f]{64}")


def check_model_id(value: str) -> str:
    """Return ``value`` if it is a valid model id (lowercase, digits, ``.-_``), else raise."""
    if not _ID.fullmatch(value) or ".." in value:
        raise InvalidReferenceError(
            f"invalid model id {value!r}",
            "ids are lowercase letters, digits, '.', '-' and '_' (e.g. smollm2-135m-instruct)",
        )
    return value


def check_quant(value: str) -> str:
    """Return ``value`` if it is a plausible quantization name (Q4_K_M, 4bit, F16...)."""
    if not _QUANT.fullmatch(value) or ".." in value:
        raise InvalidReferenceError(
            f"invalid quantization {value!r}", "use a name such as Q4_K_M, Q8_0 or 4bit"
        )
    return value


def check_filename(value: str) -> str:
    """Return ``value`` if it is a single safe path component (no separators, no ``..``)."""
    if not _FILENAME.fullmatch(value) or ".." in value:
        raise InvalidReferenceError(
            f"invalid file name {value!r}",
            "file names are one path component of letters, digits and '._+-'",
        )
    return value


def check_sha256(value: str) -> str:
    """Return ``value`` if it is exactly 64 lowercase hex digits."""
    if not _SHA256.fullmatch(value):
        raise InvalidReferenceError(
            f"invalid sha256 digest {value!r}",
            "a digest is exactly 64 lowercase hex characters (sha256sum prints one)",
        )
    return value
