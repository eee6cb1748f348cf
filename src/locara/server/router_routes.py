"""``locara serve --policy FILE``: requests for the policy's virtual model go through it.

A chat completion whose ``model`` is ``auto`` or the policy's name is routed: the
policy picks the route and the local candidate, the cascade decides whether to
escalate, and the answer comes back in the ordinary OpenAI shape with headers saying
who answered (``X-Locara-Route``, ``X-Locara-Answered-By``). A cascade must see the
whole local answer before it knows whether to keep it, so a routed ``stream: true``
request gets the answer as one content event (then the finish and ``[DONE]``).
Consent to escalate travels in the request header ``X-Locara-Consent: remote``.

Every model call of a routed request is one ledger row with the route, whether the
request escalated and why, what the remote target cost and what answering locally
saved at the target's list price.
"""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from locara.backends.base import Chunk, GenerationRequest, Message
from locara.engine.accounting import generation_record, remote_record
from locara.engine.pool import Lease
from locara.engine.runner import in_thread
from locara.ledger import RouteUsage, record_usage
from locara.router.cascade import CONSENT_HEADER, Outcome, run
from locara.router.decide import PolicyRouter, Scored
from locara.router.policy import Price
from locara.router.remote import EscalationError
from locara.server.common import service
from locara.server.errors import HTTPError
from locara.server.service import Caller
from locara.server.streaming import ndjson, sse

VIRTUAL_MODEL = "auto"


def policy_router(request: Request, model: str | None) -> PolicyRouter | None:
    """The server's router when ``model`` names the policy (or ``auto``), else None."""
    svc = service(request)
    policy = svc.config.policy
    if policy is None or model not in (VIRTUAL_MODEL, policy.name):
        return None
    router: PolicyRouter | None = getattr(request.app.state, "policy_router", None)
    if router is None:
        router = PolicyRouter(policy, svc.settings)
        request.app.state.policy_router = router
    return router


def _consent(request: Request) -> bool:
    return request.headers.get(CONSENT_HEADER, "").strip().lower() in ("remote", "yes", "1", "true")


class _Attempts:
    """The local generations of one routed request, kept until the outcome is known."""

    def __init__(self, request: Request, price: Price | None) -> None:
        self.svc = service(request)
        self.price = price  # the first target's list price: what a local answer saves
        self.done: list[tuple[Lease, list[Chunk] | None, str | None]] = []

    def generate(self, scored: Scored, req: GenerationRequest) -> list[Chunk]:
        from locara.ecology.adapters import AdapterSpec, bind_loaded

        lease = self.svc.pool.acquire(scored.candidate.model)
        try:
            handle = lease.handle
            adapters = bind_loaded(
                self.svc.settings,
                [AdapterSpec(a.id, a.scale) for a in scored.candidate.adapters],
                handle.resolved,
                handle.model.capabilities.lora,
            ) if scored.candidate.adapters else ()  # fmt: skip
            req = replace(
                req, adapters=adapters, max_tokens=self.svc.cap_tokens(req.max_tokens, lease)
            ).validate()
            chunks = list(handle.model.generate(req))
        except Exception as exc:
            self.done.append((lease, None, getattr(exc, "message", None) or repr(exc)))
            raise
        finally:
            lease.release()
        self.done.append((lease, chunks, None))
        return chunks

    def record(
        self, caller: Caller, route: str, outcome: Outcome | None, error: str | None
    ) -> None:
        """One ledger row per model call (never raises: record_usage does not)."""
        escalated = bool(outcome and outcome.escalated)
        reason = outcome.reason if outcome else error
        for lease, chunks, failed in self.done:
            last = chunks[-1] if chunks else None
            saved = None
            if outcome is not None and not escalated and self.price and last and last.usage:
                u = last.usage
                saved = (
                    u.prompt_tokens * self.price.input + u.completion_tokens * self.price.output
                ) / 1e6
            rec = generation_record(
                lease.handle, app=caller.app, surface=caller.surface, last=last,
                status="error" if failed else "ok", error=failed, load_s=lease.load_s,
                route=RouteUsage(route, escalated, reason, None, saved),
            )  # fmt: skip
            self.svc.metrics.observe(caller.surface, rec.model_id, rec.status,
                                     rec.prompt_tokens, rec.completion_tokens, 0, rec.ttft_s)  # fmt: skip
            record_usage(self.svc.settings, rec)
        if outcome is not None and outcome.remote is not None:
            r = outcome.remote
            record_usage(
                self.svc.settings,
                remote_record(
                    target=r.target.name, model=r.target.model, app=caller.app,
                    surface=caller.surface, prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens, elapsed_s=r.elapsed_s,
                    route=RouteUsage(route, True, outcome.reason, r.cost_usd, None),
                ),
            )  # fmt: skip


async def routed_chat(
    request: Request,
    router: PolicyRouter,
    messages: tuple[Message, ...],
    *,
    max_tokens: int | None,
    json_schema: dict[str, Any] | None,
    sampling: dict[str, Any],
    stream: bool,
    surface: str = "openai",
) -> Response:
    """Answer a chat (OpenAI's or Ollama's, by ``surface``) for the policy's virtual model."""
    from locara.backends.base import Sampling
    from locara.server.common import app_name

    caller = Caller(app_name(request), surface)
    prompt = next((m.content for m in reversed(messages) if m.role == "user"), "")
    decision = await in_thread(router.decide, prompt, name="locara-route")
    route = f"{router.policy.name}/{decision.route_name}"
    req = GenerationRequest(
        messages=messages, max_tokens=max_tokens, json_schema=json_schema,
        sampling=Sampling.of(None, **sampling),
    ).validate()  # fmt: skip
    attempts = _Attempts(request, decision.targets[0].price if decision.targets else None)
    consent = _consent(request)
    try:
        outcome = await in_thread(
            lambda: run(router.policy, decision, req, attempts.generate, consent=consent),
            name="locara-route",
        )
    except EscalationError as exc:
        await in_thread(attempts.record, caller, route, None, exc.message)
        raise HTTPError(502, exc.message, code="escalation_failed") from None
    except Exception as exc:
        await in_thread(attempts.record, caller, route, None, getattr(exc, "message", repr(exc)))
        raise
    await in_thread(attempts.record, caller, route, outcome, None)
    answer = _Answer.of(outcome, route)
    return _ollama(answer, stream) if surface == "ollama" else _openai(answer, stream)


@dataclass(frozen=True)
class _Answer:
    """What both surfaces say about a routed answer."""

    text: str
    model: str
    prompt_tokens: int
    completion_tokens: int
    headers: dict[str, str]
    locara: dict[str, Any]

    @classmethod
    def of(cls, outcome: Outcome, route: str) -> _Answer:
        if outcome.remote is not None:
            by = f"remote:{outcome.remote.target.name}"
            prompt_t, completion_t = outcome.remote.prompt_tokens, outcome.remote.completion_tokens
            model = outcome.remote.target.model
        else:
            by = "local"
            last = outcome.local[-1] if outcome.local else None
            usage = last.usage if last else None
            prompt_t = usage.prompt_tokens if usage else 0
            completion_t = usage.completion_tokens if usage else 0
            model = outcome.local_candidate.candidate.model if outcome.local_candidate else by
        locara = {
            "route": route,
            "answered_by": by,
            "escalated": outcome.escalated,
            "reason": outcome.reason,
            "signals": outcome.signals.to_dict(),
        }
        headers = {"X-Locara-Route": route, "X-Locara-Answered-By": by}
        return cls(outcome.text, model, prompt_t, completion_t, headers, locara)


def _ollama(a: _Answer, stream: bool) -> Response:
    now = datetime.now(UTC).isoformat().replace("+00:00", "Z")
    done = {
        "model": a.model, "created_at": now, "message": {"role": "assistant", "content": ""},
        "done": True, "done_reason": "stop", "prompt_eval_count": a.prompt_tokens,
        "eval_count": a.completion_tokens, "locara": a.locara,
    }  # fmt: skip
    if not stream:
        return JSONResponse({**done, "message": {"role": "assistant", "content": a.text}},
                            headers=a.headers)  # fmt: skip
    piece = {"model": a.model, "created_at": now, "done": False,
             "message": {"role": "assistant", "content": a.text}}  # fmt: skip
    body = [ndjson(piece), ndjson(done)]
    return StreamingResponse(iter(body), media_type="application/x-ndjson", headers=a.headers)


def _openai(a: _Answer, stream: bool) -> Response:
    cid = f"chatcmpl-{uuid.uuid4().hex}"
    created = int(time.time())
    model, prompt_t, completion_t, headers, locara = (
        a.model, a.prompt_tokens, a.completion_tokens, a.headers, a.locara
    )  # fmt: skip
    usage_body = {
        "prompt_tokens": prompt_t,
        "completion_tokens": completion_t,
        "total_tokens": prompt_t + completion_t,
    }
    if not stream:
        return JSONResponse(
            {
                "id": cid, "object": "chat.completion", "created": created, "model": model,
                "choices": [{
                    "index": 0, "finish_reason": "stop", "logprobs": None,
                    "message": {"role": "assistant", "content": a.text, "refusal": None},
                }],
                "usage": usage_body,
                "locara": locara,
            },
            headers=headers,
        )  # fmt: skip

    def event(delta: dict[str, Any], finish: str | None) -> bytes:
        return sse({
            "id": cid, "object": "chat.completion.chunk", "created": created, "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish, "logprobs": None}],
        })  # fmt: skip

    body = [
        event({"role": "assistant", "content": ""}, None),
        event({"content": a.text}, None),
        event({}, "stop"),
        sse("[DONE]"),
    ]
    return StreamingResponse(iter(body), media_type="text/event-stream", headers=headers)
