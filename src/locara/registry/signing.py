"""Optional ed25519 signatures on model manifests.

A manifest carries ``"signature": "ed25519:<key id>:<base64 signature>"`` over its
canonical JSON (every field but ``signature``, keys sorted, no spaces). When the trust
directory (``$LOCARA_HOME/keys/trusted/*.pub``) holds at least one public key,
verification is mandatory: an unsigned manifest, an unknown key or a signature that
does not match (a changed url or sha256) is refused before the manifest is used.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from locara.errors import ManifestError

PREFIX = "ed25519"


def canonical_bytes(data: dict[str, Any]) -> bytes:
    """The bytes a signature covers: the manifest without ``signature``, canonical JSON."""
    body = {k: v for k, v in data.items() if k != "signature"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def key_id(public: Ed25519PublicKey) -> str:
    """A short stable name for a public key: the first 16 hex digits of its SHA-256."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return hashlib.sha256(raw).hexdigest()[:16]


def public_key_text(public: Ed25519PublicKey) -> str:
    """The ``.pub`` file form of a key: base64 of its 32 raw bytes."""
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode() + "\n"


def sign_manifest(data: dict[str, Any], private: Ed25519PrivateKey) -> dict[str, Any]:
    """A copy of ``data`` with a ``signature`` field made with ``private``."""
    sig = private.sign(canonical_bytes(data))
    text = f"{PREFIX}:{key_id(private.public_key())}:{base64.b64encode(sig).decode()}"
    return {**data, "signature": text}


def load_trusted_keys(directory: Path) -> dict[str, Ed25519PublicKey]:
    """Public keys in ``directory/*.pub`` (base64 raw key or PEM), by key id."""
    keys: dict[str, Ed25519PublicKey] = {}
    if not directory.is_dir():
        return keys
    for path in sorted(directory.glob("*.pub")):
        text = path.read_text(encoding="utf-8").strip()
        try:
            if text.startswith("-----BEGIN"):
                loaded = serialization.load_pem_public_key(text.encode())
                if not isinstance(loaded, Ed25519PublicKey):
                    raise ValueError("not an ed25519 key")
                key = loaded
            else:
                key = Ed25519PublicKey.from_public_bytes(base64.b64decode(text, validate=True))
        except (ValueError, binascii.Error) as exc:
            raise ManifestError(
                f"trusted key {path} is not an ed25519 public key: {exc}",
                "replace it with the base64 of a 32-byte ed25519 public key, or remove it",
            ) from exc
        keys[key_id(key)] = key
    return keys


def verify_signature(data: dict[str, Any], keys: dict[str, Ed25519PublicKey], where: str) -> None:
    """Raise ManifestError unless ``data`` is signed by one of ``keys``."""
    text = data.get("signature")
    hint = (
        "use a manifest signed by a trusted key, or remove the key from $LOCARA_HOME/keys/trusted"
    )
    if not isinstance(text, str) or not text:
        raise ManifestError(f"manifest {where} is not signed and signatures are required", hint)
    alg, _, rest = text.partition(":")
    kid, _, b64 = rest.partition(":")
    if alg != PREFIX or not kid or not b64:
        raise ManifestError(
            f"manifest {where} has a malformed signature (want ed25519:<key id>:<base64>)", hint
        )
    key = keys.get(kid)
    if key is None:
        raise ManifestError(f"manifest {where} is signed by an untrusted key {kid}", hint)
    try:
        key.verify(base64.b64decode(b64, validate=True), canonical_bytes(data))
    except (InvalidSignature, ValueError, binascii.Error) as exc:
        raise ManifestError(
            f"manifest {where} does not match its signature (it was changed after signing)",
            hint,
        ) from exc
