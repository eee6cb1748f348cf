"""Errors rendered for HTTP in one place: a status code and an OpenAI- or Ollama-style body.

OpenAI clients expect ``{"error": {"message", "type", "param", "code"}}``; Ollama
clients expect ``{"error": "message"}``. Which one a request gets follows its path
(``/api/...`` is Ollama). Locara's hint rides along in both.
"""

from __future__ import annotations

import json
import logging
from typing import Any

from locara.errors import (
    AuthError,
    BackendUnavailableError,
    ChatTemplateError,
    ContextOverflowError,
    FetchError,
    LocaraError,
    NoFitError,
    OfflineError,
    ServerBusyError,
    UnknownModelError,
    UnsupportedFeatureError,
    UsageError,
)

log = logging.getLogger("locara.server")


class HTTPError(LocaraError):
    """An error that exists only at the HTTP edge (bad JSON, body too large, bad Host)."""

    def __init__(
        self,
        status: int,
        message: str,
        hint: str | None = None,
        code: str | None = None,
        param: str | None = None,
    ) -> None:
        super().__init__(message, hint)
        self.status = status
        self.code = code
        self.param = param


def status_of(exc: LocaraError) -> tuple[int, str, str | None]:
    """(HTTP status, OpenAI error type, code) for a Locara error."""
    if isinstance(exc, HTTPError):
        kind = "invalid_request_error" if exc.status < 500 else "server_error"
        if exc.status in (401, 403):
            kind = "authentication_error" if exc.status == 401 else "permission_error"
        return exc.status, kind, exc.code
    if isinstance(exc, AuthError):
        return 401, "authentication_error", "invalid_api_key"
    if isinstance(exc, UnknownModelError):
        return 404, "invalid_request_error", "model_not_found"
    if isinstance(exc, ContextOverflowError):
        return 400, "invalid_request_error", "context_length_exceeded"
    if isinstance(exc, ChatTemplateError):
        # The model's template is broken for these messages: not the client's syntax
        # error (400) and not a crash of the server (500).
        return 422, "invalid_request_error", "chat_template_error"
    if isinstance(exc, (UsageError, UnsupportedFeatureError)):
        return 400, "invalid_request_error", None
    if isinstance(exc, ServerBusyError):
        return 503, "server_busy", "queue_full"
    if isinstance(exc, NoFitError):
        return 507, "insufficient_storage", "model_does_not_fit"
    if isinstance(exc, OfflineError):
        return 503, "server_error", "offline"
    if isinstance(exc, FetchError):
        return 502, "server_error", "fetch_failed"
    if isinstance(exc, BackendUnavailableError):
        return 501, "server_error", "backend_unavailable"
    return 500, "server_error", None


def is_ollama_path(path: str) -> bool:
    return path.startswith("/api/")


def error_body(exc: LocaraError, ollama: bool) -> tuple[int, dict[str, Any], dict[str, str]]:
    """(status, JSON body, extra headers) for ``exc``."""
    status, kind, code = status_of(exc)
    headers: dict[str, str] = {}
    if isinstance(exc, ServerBusyError):
        headers["Retry-After"] = str(exc.retry_after_s)
    if status == 401:
        headers["WWW-Authenticate"] = "Bearer"
    if status >= 500:
        log.error("%s: %s", type(exc).__name__, exc.message, exc_info=exc.__cause__ is not None)
    if ollama:
        body: dict[str, Any] = {"error": exc.message}
        if exc.hint:
            body["hint"] = exc.hint
        return status, body, headers
    err: dict[str, Any] = {
        "message": exc.message,
        "type": kind,
        "param": getattr(exc, "param", None),
        "code": code,
    }
    if exc.hint:
        err["hint"] = exc.hint
    return status, {"error": err}, headers


def error_bytes(exc: LocaraError, ollama: bool) -> tuple[int, bytes, dict[str, str]]:
    status, body, headers = error_body(exc, ollama)
    return status, json.dumps(body).encode("utf-8"), headers


def validation_message(errors: list[dict[str, Any]]) -> tuple[str, str | None]:
    """One readable line from pydantic/FastAPI validation errors, and the offending field."""
    first = errors[0] if errors else {}
    loc = [str(p) for p in first.get("loc", ()) if p not in ("body",)]
    field = ".".join(loc) or None
    msg = str(first.get("msg", "invalid request"))
    if first.get("type") == "json_invalid":
        return f"malformed JSON body: {first.get('ctx', {}).get('error', msg)}", None
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return (f"{field}: {msg}" if field else msg) + more, field
