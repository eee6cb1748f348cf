"""Escalation to an OpenAI-compatible endpoint, with a hard deadline and fallbacks.

Each target gets one POST to ``{base_url}/chat/completions``. The whole exchange —
connect, send, every byte of the answer — must finish within the target's
``timeout_s`` (httpx's timeouts are per operation, so a server that drips a byte a
second would otherwise never time out). A failure of any kind (refused, timed out,
HTTP error, an answer that is not a chat completion) moves on to the next target of
the chain. The API key is read from the environment at the moment of the call and
goes only into the Authorization header: no error, log line or ledger row carries it,
nor the body of a failed answer (a server may echo the request's headers back).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from locara.backends.base import Message
from locara.errors import LocaraError
from locara.router.policy import RouterPolicy, Target


class EscalationError(LocaraError):
    """Every escalation target failed (each reason is in the message, never a key)."""


class EgressRefusedError(LocaraError, PermissionError):
    """Something tried to send a request off the machine under a local_only policy."""


@dataclass(frozen=True)
class RemoteAnswer:
    target: Target
    text: str
    prompt_tokens: int
    completion_tokens: int
    elapsed_s: float
    failures: tuple[str, ...]  # earlier targets of the chain that failed, and why

    @property
    def cost_usd(self) -> float | None:
        p = self.target.price
        if p is None:
            return None
        return (self.prompt_tokens * p.input + self.completion_tokens * p.output) / 1e6


class _Failed(Exception):
    pass


def _body(target: Target, messages: Sequence[Message], max_tokens: int | None,
          json_schema: dict[str, Any] | None) -> dict[str, Any]:  # fmt: skip
    body: dict[str, Any] = {
        "model": target.model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "stream": False,
    }
    if max_tokens is not None:
        body["max_tokens"] = max_tokens
    if json_schema is not None:
        body["response_format"] = (
            {"type": "json_schema", "json_schema": {"name": "answer", "schema": json_schema}}
            if json_schema
            else {"type": "json_object"}
        )
    return body


def _post(target: Target, body: dict[str, Any], env: Mapping[str, str]) -> dict[str, Any]:
    headers = {"Content-Type": "application/json"}
    if target.api_key_env:
        key = env.get(target.api_key_env)
        if not key:
            raise _Failed(f"{target.api_key_env} is not set")
        headers["Authorization"] = f"Bearer {key}"
    url = target.base_url.rstrip("/") + "/chat/completions"
    deadline = time.monotonic() + target.timeout_s
    data = bytearray()
    try:
        with (
            httpx.Client(timeout=httpx.Timeout(target.timeout_s), trust_env=False) as client,
            client.stream("POST", url, json=body, headers=headers) as r,
        ):
            if r.status_code != 200:
                raise _Failed(f"HTTP {r.status_code}")
            for piece in r.iter_bytes():
                data += piece
                if time.monotonic() > deadline:
                    raise _Failed(f"timed out after {target.timeout_s:g} s")
                if len(data) > 16 * 2**20:
                    raise _Failed("answer larger than 16 MiB")
    except httpx.TimeoutException:
        raise _Failed(f"timed out after {target.timeout_s:g} s") from None
    except httpx.HTTPError as exc:  # the exception text names the URL, never a header
        raise _Failed(f"{type(exc).__name__}") from None
    try:
        answer = json.loads(bytes(data))
        choice = answer["choices"][0]["message"]
        text = choice["content"]
        if not isinstance(text, str):
            raise TypeError("content is not a string")
    except (ValueError, KeyError, IndexError, TypeError):
        raise _Failed("the answer is not an OpenAI chat completion") from None
    usage = answer.get("usage") if isinstance(answer.get("usage"), dict) else {}
    return {
        "text": text,
        "prompt_tokens": int(usage.get("prompt_tokens") or 0),
        "completion_tokens": int(usage.get("completion_tokens") or 0),
    }


def escalate(
    policy: RouterPolicy,
    chain: Sequence[Target],
    messages: Sequence[Message],
    *,
    max_tokens: int | None = None,
    json_schema: dict[str, Any] | None = None,
    env: Mapping[str, str] | None = None,
) -> RemoteAnswer:
    """The first target of ``chain`` that answers; EscalationError naming each failure."""
    if policy.filters.privacy != "allow_remote":
        # Unreachable through decide(); kept so that no future caller can get around it.
        raise EgressRefusedError(
            f"policy {policy.name} is local_only: no request may leave this machine",
            "set filters.privacy to allow_remote in the policy to allow escalation",
        )
    env = os.environ if env is None else env
    failures: list[str] = []
    for target in chain:
        started = time.monotonic()
        try:
            got = _post(target, _body(target, messages, max_tokens, json_schema), env)
        except _Failed as exc:
            failures.append(f"{target.name}: {exc}")
            continue
        return RemoteAnswer(
            target, got["text"], got["prompt_tokens"], got["completion_tokens"],
            time.monotonic() - started, tuple(failures),
        )  # fmt: skip
    raise EscalationError(
        "escalation failed: " + "; ".join(failures or ["no target"]),
        "check that the targets in the policy are up, or answer locally (mode local)",
    )
