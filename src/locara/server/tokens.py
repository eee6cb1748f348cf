"""Per-app API tokens, stored under LOCARA_HOME as SHA-256 digests (never the tokens).

A token looks like ``lc_<id>_<secret>``: the id names it in listings and revocation,
the secret is 32 random bytes. Only ``sha256(token)`` is written to disk, so a copy
of the file does not let anyone in. Verification compares digests in constant time.
"""

from __future__ import annotations

import contextlib
import hashlib
import hmac
import json
import os
import secrets
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

from locara.errors import StoreError, UsageError
from locara.registry.names import check_model_id
from locara.settings import Settings


@dataclass(frozen=True)
class TokenRecord:
    id: str
    app: str
    sha256: str
    created_at: float


def _digest(token: str) -> str:
    return hashlib.sha256(token.encode("utf-8")).hexdigest()


def _parse(text: str) -> list[TokenRecord]:
    # Every field is checked here, so that a hand-edited file fails in one place with
    # the file's name rather than deep in a request as a TypeError.
    data = json.loads(text)
    tokens = data.get("tokens", []) if isinstance(data, dict) else None
    if not isinstance(tokens, list):
        raise ValueError('expected {"tokens": [...]}')
    recs = []
    for entry in tokens:
        if not isinstance(entry, dict):
            raise ValueError(f"token entry {entry!r} is not an object")
        rec = TokenRecord(**entry)  # TypeError for a missing or unknown field
        strings = (rec.id, rec.app, rec.sha256)
        if not all(isinstance(v, str) for v in strings) or not isinstance(
            rec.created_at, int | float
        ):
            raise ValueError(f"token entry {rec.id!r} has a field of the wrong type")
        recs.append(rec)
    return recs


class TokenStore:
    """The token file; re-read when it changes, so a revocation takes effect at once."""

    def __init__(self, settings: Settings) -> None:
        self.path: Path = settings.tokens_path
        self._cache: tuple[tuple[int, int] | None, list[TokenRecord]] = (None, [])

    def records(self) -> list[TokenRecord]:
        try:
            st = self.path.stat()
        except FileNotFoundError:
            return []
        sig = (st.st_mtime_ns, st.st_size)
        if self._cache[0] == sig:
            return self._cache[1]
        try:
            recs = _parse(self.path.read_text(encoding="utf-8"))
        except (OSError, ValueError, TypeError) as exc:
            raise StoreError(
                f"cannot read the token file {self.path}: {exc}",
                "fix or delete it, then recreate tokens with: locara token create --app NAME",
            ) from exc
        self._cache = (sig, recs)
        return recs

    def _write(self, recs: list[TokenRecord]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            os.chmod(self.path.parent, 0o700)
        tmp = self.path.with_name(f".{self.path.name}.{uuid.uuid4().hex[:8]}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump({"tokens": [asdict(r) for r in recs]}, f, indent=2)
        os.replace(tmp, self.path)

    def create(self, app: str) -> tuple[TokenRecord, str]:
        """A new token for ``app``; the token itself is returned once and never stored."""
        try:
            check_model_id(app)  # same rule: letters, digits, . _ -, no paths
        except UsageError:
            raise UsageError(
                f"invalid app name {app!r}",
                "use letters, digits, '.', '_' and '-' (e.g. --app my-notes)",
            ) from None
        tid = secrets.token_hex(4)
        token = f"lc_{tid}_{secrets.token_urlsafe(32)}"
        rec = TokenRecord(id=tid, app=app, sha256=_digest(token), created_at=time.time())
        self._write([*self.records(), rec])
        return rec, token

    def revoke(self, which: str) -> list[TokenRecord]:
        """Revoke the token with this id, or every token of the app with this name."""
        recs = self.records()
        gone = [r for r in recs if which in (r.id, r.app)]
        if not gone:
            raise UsageError(f"no token with id or app {which!r}", "list them: locara token list")
        self._write([r for r in recs if r not in gone])
        return gone

    def verify(self, token: str) -> TokenRecord | None:
        digest = _digest(token)
        found = None
        for r in self.records():
            if hmac.compare_digest(r.sha256, digest):
                found = r
        return found
