"""Settings: where Locara keeps things and how it behaves, read from the environment.

Nothing here runs at import time. Callers build a ``Settings`` with ``Settings.from_env()``
when they need one and pass it down, so tests (and apps embedding Locara) can point
different calls at different homes in one process.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import platformdirs

from locara.errors import UsageError

DEFAULT_MODEL = "smollm2-135m-instruct"
DEFAULT_EMBEDDING_MODEL = "all-minilm-l6-v2"
DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 11435
# Images larger than this are refused from their header, before decoding (OCR, vision).
DEFAULT_MAX_IMAGE_PIXELS = 50_000_000

_TRUE = {"1", "true", "yes", "on"}


def _rpc_endpoints(env: Mapping[str, str]) -> tuple[str, ...]:
    from locara.backends.rpc import parse_endpoints

    return parse_endpoints(env.get("LOCARA_RPC", ""))


def _flag(env: Mapping[str, str], name: str) -> bool:
    return env.get(name, "").strip().lower() in _TRUE


def _positive(env: Mapping[str, str], name: str, default: int) -> int:
    raw = env.get(name, "").strip().replace("_", "")
    if not raw:
        return default
    if not raw.isdigit() or int(raw) == 0:
        raise UsageError(
            f"{name}={raw!r} is not a positive integer", f"set {name} to e.g. {default}"
        )
    return int(raw)


@dataclass(frozen=True)
class Settings:
    """Paths and switches for one Locara process (or one test)."""

    home: Path
    registry_paths: tuple[Path, ...] = ()
    offline: bool = False
    default_model: str = DEFAULT_MODEL
    default_embedding_model: str = DEFAULT_EMBEDDING_MODEL
    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    hf_token: str | None = field(default=None, repr=False)
    hf_endpoint: str = "https://huggingface.co"
    max_image_pixels: int = DEFAULT_MAX_IMAGE_PIXELS
    allow_remote_images: bool = False  # fetch http(s) image_url values (egress)
    # llama.cpp RPC workers (host:port) that take a model's layers (LOCARA_RPC, --rpc).
    rpc: tuple[str, ...] = ()

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> Settings:
        """Read LOCARA_* (and HF_*) variables now; defaults come from platformdirs."""
        env = os.environ if env is None else env
        home_s = env.get("LOCARA_HOME")
        # The platform cache directory: ~/Library/Caches/Locara on macOS, $XDG_CACHE_HOME/locara on Linux.
        app = "Locara" if sys.platform == "darwin" else "locara"
        home = Path(home_s).expanduser() if home_s else Path(platformdirs.user_cache_dir(app))
        reg = tuple(
            Path(p).expanduser() for p in env.get("LOCARA_REGISTRY_PATH", "").split(":") if p
        )
        port_s = env.get("LOCARA_PORT", "")
        return cls(
            home=home,
            registry_paths=reg,
            offline=_flag(env, "LOCARA_OFFLINE") or _flag(env, "HF_HUB_OFFLINE"),
            default_model=env.get("LOCARA_DEFAULT_MODEL", DEFAULT_MODEL),
            default_embedding_model=env.get("LOCARA_EMBEDDING_MODEL", DEFAULT_EMBEDDING_MODEL),
            host=env.get("LOCARA_HOST", DEFAULT_HOST),
            port=int(port_s) if port_s.isdigit() else DEFAULT_PORT,
            hf_token=env.get("HF_TOKEN") or None,
            hf_endpoint=env.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/"),
            max_image_pixels=_positive(env, "LOCARA_MAX_IMAGE_PIXELS", DEFAULT_MAX_IMAGE_PIXELS),
            allow_remote_images=_flag(env, "LOCARA_ALLOW_REMOTE_IMAGES"),
            rpc=_rpc_endpoints(env),
        )

    # Every path Locara writes is derived here, and only here.
    @property
    def models_dir(self) -> Path:
        return self.home / "models"

    @property
    def tmp_dir(self) -> Path:
        # Inside the store's filesystem, so the final rename is atomic.
        return self.models_dir / ".tmp"

    @property
    def locks_dir(self) -> Path:
        return self.models_dir / ".locks"

    @property
    def db_path(self) -> Path:
        return self.home / "locara.db"

    @property
    def usage_db_path(self) -> Path:
        return self.home / "usage.db"

    @property
    def prices_path(self) -> Path:
        # Optional; overrides/extends the cloud price table shipped in locara/ledger.
        return self.home / "prices.json"

    @property
    def bench_results_path(self) -> Path:
        # JSON lines, one benchmark result each (llama-bench field names where they exist);
        # written by `locara bench`, read by the planner.
        return self.home / "bench" / "results.jsonl"

    @property
    def user_registry_dir(self) -> Path:
        # Manifests Locara writes itself (e.g. `locara pull hf://...`); searched after
        # LOCARA_REGISTRY_PATH and before the built-in registry.
        return self.home / "registry"

    @property
    def trusted_keys_dir(self) -> Path:
        # ed25519 public keys (*.pub); any key here makes manifest signatures mandatory.
        return self.home / "keys" / "trusted"

    @property
    def apps_dir(self) -> Path:
        return self.home / "apps"

    @property
    def run_dir(self) -> Path:
        return self.home / "run"

    @property
    def logs_dir(self) -> Path:
        return self.home / "logs"

    @property
    def tokens_path(self) -> Path:
        # API tokens for the server: app names and SHA-256 digests, never the tokens.
        return self.home / "server" / "tokens.json"

    @property
    def server_pid_path(self) -> Path:
        return self.run_dir / "server.json"

    @property
    def server_log_path(self) -> Path:
        return self.logs_dir / "server.log"
