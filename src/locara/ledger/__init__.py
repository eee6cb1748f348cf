"""The usage ledger: one record per request, from the CLI and the server.

``record_usage`` must never block or fail a request: any error is logged and dropped.
"""

from __future__ import annotations

import contextlib
import logging
from dataclasses import asdict, dataclass, field
from typing import Literal

from locara.settings import Settings

log = logging.getLogger("locara.usage")

Status = Literal["ok", "error", "cancelled"]


@dataclass(frozen=True)
class UsageRecord:
    model_id: str
    sha256: str | None
    backend: str
    app: str  # "cli", or the app name of the API token
    surface: str  # "cli", "openai", "ollama"
    prompt_tokens: int = 0
    completion_tokens: int = 0
    ttft_s: float | None = None
    generation_tps: float | None = None
    load_s: float | None = None
    status: Status = "ok"
    error: str | None = None
    extra: dict[str, str] = field(default_factory=dict)


def record_usage(settings: Settings, rec: UsageRecord) -> None:
    """Hand one record to the ledger. Until the SQLite ledger lands, it is logged."""
    with contextlib.suppress(Exception):  # logging must never break a request
        log.info("usage %s", asdict(rec))
