"""Small helpers shared by the OpenAI and Ollama routes."""

from __future__ import annotations

import math
import re
from typing import Any

from fastapi import Request

from locara.backends.base import Message, Sampling
from locara.errors import UsageError
from locara.registry.manifest import ModelManifest
from locara.server.service import Service

_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)")
_UNIT_S = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}


def service(request: Request) -> Service:
    svc = request.app.state.service
    assert isinstance(svc, Service)
    return svc


def app_name(request: Request) -> str:
    return str(getattr(request.state, "app_name", "local"))


def parse_keep_alive(value: float | int | str | None) -> float | None:
    """Seconds from Ollama's keep_alive: a number of seconds or a Go duration ("5m", "1h30m").

    Negative means forever; 0 means unload right after this request.
    """
    seconds = _parse_duration(value)
    if seconds is not None and not math.isfinite(seconds):
        raise UsageError(
            f"invalid keep_alive {value!r}: not a finite duration",
            'pass seconds (300), a duration ("5m"), 0 to unload, or -1 to keep loaded',
        )
    return seconds


def _parse_duration(value: float | int | str | None) -> float | None:
    if value is None or value == "":
        return None
    if isinstance(value, bool):
        raise UsageError("invalid keep_alive: a boolean", 'pass seconds or a duration like "5m"')
    if isinstance(value, (int, float)):
        return float(value)
    text = value.strip()
    try:
        return float(text)
    except ValueError:
        pass
    sign = -1.0 if text.startswith("-") else 1.0
    body = text.lstrip("+-")
    pos, total = 0, 0.0
    for m in _DURATION.finditer(body):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNIT_S[m.group(2)]
        pos = m.end()
    if pos != len(body) or not body:
        raise UsageError(
            f"invalid keep_alive {value!r}",
            'pass seconds (300), a duration ("5m", "1h30m"), 0 to unload, or -1 to keep loaded',
        )
    return sign * total


def sampling_from(manifest: ModelManifest, **given: Any) -> Sampling:
    """The manifest's defaults, then what the request set; validated."""
    return Sampling.of(manifest.config.default_params, **given)


def check_sampling(**given: Any) -> None:
    """Reject bad sampling values before spending time loading a model."""
    Sampling.of(None, **given)


def stop_tuple(stop: str | list[str] | None) -> tuple[str, ...]:
    if stop is None:
        return ()
    stops = (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > 16:
        raise UsageError(f"{len(stops)} stop strings; at most 16 are allowed", "send fewer")
    return tuple(s for s in stops if s)


def to_messages(raw: list[tuple[str, str]]) -> tuple[Message, ...]:
    out: list[Message] = []
    for role, content in raw:
        if role == "developer":
            role = "system"
        elif role == "function":  # OpenAI's deprecated name for a tool result
            role = "tool"
        if role not in ("system", "user", "assistant", "tool"):
            raise UsageError(
                f"unknown message role {role!r}", "use system, user, assistant or tool"
            )
        out.append(Message(role, content))  # type: ignore[arg-type]
    return tuple(out)
