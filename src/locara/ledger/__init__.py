"""The usage ledger: one record per request, from the CLI and the server.

``record_usage`` must never block or fail a request. It writes one row to
``usage.db`` (see ``locara.ledger.db``); when the database is locked, corrupted or
unwritable the row is spooled beside it and a warning is logged once per process,
and the next write or report drains the spool. Nothing it does can raise.
"""

from __future__ import annotations

import contextlib
import logging
import time
from dataclasses import dataclass, field
from typing import Any, Literal

from locara.settings import Settings

log = logging.getLogger("locara.usage")

Status = Literal["ok", "error", "cancelled"]

# (database path, reason kind) pairs already warned about: a server with a broken
# usage.db warns once, not once per request.
_warned: set[tuple[str, str]] = set()


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
    audio_s: float | None = None  # seconds of audio a speech model transcribed
    images: int = 0  # images an OCR or vision model read
    # When the request finished (unix time); None means "now", when it is recorded.
    timestamp: float | None = None
    route: RouteUsage | None = None  # a request a router policy routed


@dataclass(frozen=True)
class RouteUsage:
    """How a router policy answered: its route ("policy/route"), escalation and money."""

    route: str
    escalated: bool = False
    reason: str | None = None
    cost_usd: float | None = None  # what a remote target charged (list price)
    saved_usd: float | None = None  # answered locally: what the target would have charged
    # A generation the cascade ran to judge the answer (a self-consistency sample, a
    # self-check), not an answer: kept in ``extra`` as route_check, never a request.
    check: bool = False


def _row(rec: UsageRecord) -> dict[str, Any]:
    from locara.ledger.db import new_row_id

    def num(v: float | None) -> float | None:
        # NaN/inf would poison averages; a missing measurement is NULL.
        return float(v) if v is not None and v == v and abs(v) != float("inf") else None

    return {
        "id": new_row_id(),
        "ts": rec.timestamp if rec.timestamp is not None else time.time(),
        "app": rec.app,
        "surface": rec.surface,
        "model_id": rec.model_id,
        "sha256": rec.sha256,
        "backend": rec.backend,
        "prompt_tokens": int(rec.prompt_tokens),
        "completion_tokens": int(rec.completion_tokens),
        "ttft_s": num(rec.ttft_s),
        "generation_tps": num(rec.generation_tps),
        "load_s": num(rec.load_s),
        "status": rec.status,
        "error": rec.error,
        "extra": {**rec.extra, "route_check": "1"}
        if rec.route and rec.route.check
        else dict(rec.extra),
        "audio_s": num(rec.audio_s),
        "images": int(rec.images),
        "route": rec.route.route if rec.route else None,
        "escalated": int(rec.route.escalated) if rec.route else None,
        "route_reason": rec.route.reason if rec.route else None,
        "cost_usd": num(rec.route.cost_usd) if rec.route else None,
        "saved_usd": num(rec.route.saved_usd) if rec.route else None,
    }


def record_usage(settings: Settings, rec: UsageRecord) -> None:
    """Write one request to the ledger. Never raises; trouble becomes one warning."""
    try:
        from locara.ledger.db import UsageDB

        db = UsageDB(settings.usage_db_path)
        outcome = db.write(_row(rec))
        if not outcome.stored:
            kind = outcome.reason.split(" ", 1)[0]
            then = {
                "locked": "it is added as soon as the lock is released",
                "corrupted": "repair the database with: locara usage --repair",
            }.get(kind, f"check that {db.path.parent} is writable and has free space")
            _warn_once(
                str(db.path),
                kind,
                f"warning: usage database {db.path} is {outcome.reason}; this request was "
                f"queued in {db.spool.name}, nothing is lost ({then})",
            )
    except Exception as exc:  # the ledger must never break a request
        _warn_once(
            str(settings.usage_db_path),
            "lost",
            f"warning: could not record usage in {settings.usage_db_path}: {exc} "
            "(check that LOCARA_HOME is writable)",
        )


def _warn_once(path: str, kind: str, message: str) -> None:
    with contextlib.suppress(Exception):  # not even logging may break a request
        if (path, kind) in _warned:
            log.debug("%s", message)
            return
        _warned.add((path, kind))
        log.warning("%s", message)
