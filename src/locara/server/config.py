"""Server configuration, read from the environment when the server starts."""

from __future__ import annotations

import ipaddress
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from locara.engine.pool import PoolConfig
from locara.errors import UsageError

if TYPE_CHECKING:
    from locara.router.policy import RouterPolicy

DEFAULT_MAX_BODY = 8 * 2**20
DEFAULT_MAX_UPLOAD = 2**30  # audio and image uploads (multipart): a long recording fits


def _number(env: Mapping[str, str], name: str, default: float) -> float:
    raw = env.get(name, "").strip()
    if not raw:
        return default
    try:
        return float(raw)
    except ValueError:
        raise UsageError(f"{name}={raw!r} is not a number", f"set {name} to a number") from None


def _split(env: Mapping[str, str], name: str) -> tuple[str, ...]:
    return tuple(s.strip() for s in env.get(name, "").split(",") if s.strip())


def is_loopback(host: str) -> bool:
    """True for names and addresses that only this machine can reach."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServerConfig:
    host: str
    port: int
    pool: PoolConfig
    cors_origins: tuple[str, ...] = ()
    max_body_bytes: int = DEFAULT_MAX_BODY
    max_upload_bytes: int = DEFAULT_MAX_UPLOAD
    # Most tokens one request may generate (None: up to the context). Operators use it
    # to bound the cost of a request; beyond it the answer ends with finish "length".
    max_tokens_cap: int | None = None
    allowed_hosts: tuple[str, ...] = ()  # extra Host names accepted on a loopback bind
    # A random secret that opens /api/status only, written to run/server.json (0600) so
    # that `locara status`, run by the same user, reads it without an API token.
    status_key: str | None = None
    # A router policy (locara serve --policy): requests for "auto" or its name go through it.
    policy: RouterPolicy | None = None

    @property
    def loopback(self) -> bool:
        return is_loopback(self.host)

    @classmethod
    def from_env(
        cls,
        host: str,
        port: int,
        env: Mapping[str, str] | None = None,
    ) -> ServerConfig:
        """LOCARA_KEEP_ALIVE, LOCARA_QUEUE_DEPTH, LOCARA_NUM_PARALLEL, LOCARA_MEMORY_BUDGET, LOCARA_CTX,
        LOCARA_CORS_ORIGINS, LOCARA_MAX_BODY_BYTES, LOCARA_MAX_UPLOAD_BYTES, LOCARA_MAX_TOKENS,
        LOCARA_ALLOWED_HOSTS."""
        env = os.environ if env is None else env
        budget = env.get("LOCARA_MEMORY_BUDGET", "").strip()
        cap = int(_number(env, "LOCARA_MAX_TOKENS", 0))
        pool = PoolConfig(
            keep_alive_s=_number(env, "LOCARA_KEEP_ALIVE", 300.0),
            queue_depth=max(0, int(_number(env, "LOCARA_QUEUE_DEPTH", 16))),
            budget_bytes=int(_number(env, "LOCARA_MEMORY_BUDGET", 0)) if budget else None,
            default_ctx=max(16, int(_number(env, "LOCARA_CTX", 4096))),
            n_parallel=int(_number(env, "LOCARA_NUM_PARALLEL", 0)) or None,
        )
        return cls(
            host=host,
            port=port,
            pool=pool,
            cors_origins=_split(env, "LOCARA_CORS_ORIGINS"),
            max_body_bytes=int(_number(env, "LOCARA_MAX_BODY_BYTES", DEFAULT_MAX_BODY)),
            max_upload_bytes=int(_number(env, "LOCARA_MAX_UPLOAD_BYTES", DEFAULT_MAX_UPLOAD)),
            max_tokens_cap=cap if cap > 0 else None,
            allowed_hosts=_split(env, "LOCARA_ALLOWED_HOSTS"),
        )
