"""``locara serve --policy FILE``: requests for the policy's virtual model go through it.

A chat completion whose ``model`` is ``auto`` or the policy's name is routed: the
policy picks the route and the local candidate, the cascade decides whether to
escalate, and the answer comes back in the ordinary OpenAI shape with headers saying
who answered (``X-Locara-Route``, ``X-Locara-Answered-By``). A cascade must see the
whole local answer before it knows whether to keep it, so a routed ``stream: true``
request gets the answer as one content event (then the finish and ``[DONE]``).
Consent to escalate travels in the request header ``X-Locara-Consent: remote``.
Local generations go through ``Service.start`` like every request's: the pool's queue,
/metrics, and a client that goes away cancels them (ledger status ``cancelled``).

Every model call of a routed request is one ledger row with the route, whether the
request escalated and why, what the remote target cost and what answering locally
saved at the target's list price.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from concurrent.futures import Future
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response, StreamingResponse

from locara.backends.base import Chunk, GenerationRequest, Message
from locara.engine.accounting import remote_record
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


@dataclass
class _Attempt:
    """One local generation of a routed request: its verdict (set when the request's
    outcome is known; the ledger row waits for it) and its chunks, once complete."""

    verdict: Future[RouteUsage] = field(default_factory=Future)
    chunks: list[Chunk] | None = None


class _Attempts:
    """The local generations of one routed request, each through ``Service.start``.

    The cascade runs in a thread of its own; each local generation it asks for is started
    on the event loop like any other request (queueing, metrics, cancellation when the
    client goes away). Their ledger rows wait for the verdict: kept or escalated, and why.
    """

    def __init__(self, request: Request, caller: Caller, route: str, price: Price | None) -> None:
        self.request = request
        self.svc = service(request)
        self.caller = caller
        self.route = route
        self.price = price  # the first target's list price: what a local answer saves
        self.loop = asyncio.get_running_loop()
        self.done: list[_Attempt] = []

    def generate(self, scored: Scored, req: GenerationRequest) -> list[Chunk]:
        """One local generation (called from the cascade's thread)."""
        return asyncio.run_coroutine_threadsafe(self._generate(scored, req), self.loop).result()

    async def _generate(self, scored: Scored, req: GenerationRequest) -> list[Chunk]:
        from locara.ecology.adapters import AdapterSpec, bind_loaded

        svc = self.svc

        def build(lease: Lease) -> GenerationRequest:
            handle = lease.handle
            adapters = bind_loaded(
                svc.settings,
                [AdapterSpec(a.id, a.scale) for a in scored.candidate.adapters],
                handle.resolved,
                handle.model.capabilities.lora,
            ) if scored.candidate.adapters else ()  # fmt: skip
            return replace(
                req, adapters=adapters, max_tokens=svc.cap_tokens(req.max_tokens, lease)
            ).validate()

        attempt = _Attempt()
        _, _, run = await svc.start(
            scored.candidate.model, self.caller, build, route=attempt.verdict
        )
        self.done.append(attempt)
        first = await svc.first_chunk(run, self.request)
        attempt.chunks = await svc.collect(run, first, self.request)
        if run.cancelled:  # the client went away: nothing more is done for nobody
            raise HTTPError(
                499, "the client closed the connection before the answer was complete",
                code="client_closed_request",
            )  # fmt: skip
        return attempt.chunks

    def settle(self, outcome: Outcome | None, error: str | None) -> None:
        """Give every local generation its verdict (its ledger row follows) and record the
        remote answer, if any. Never raises: record_usage does not."""
        escalated = bool(outcome and outcome.escalated)
        reason = outcome.reason if outcome else error
        for i, attempt in enumerate(self.done):
            # The first generation is the answer; the rest are the cascade's checks of it.
            usage = attempt.chunks[-1].usage if attempt.chunks and i == 0 else None
            saved = None
            if outcome is not None and not escalated and self.price and usage:
                saved = (
                    usage.prompt_tokens * self.price.input
                    + usage.completion_tokens * self.price.output
                ) / 1e6
            attempt.verdict.set_result(
                RouteUsage(self.route, escalated, reason, None, saved, check=i > 0)
            )
        if outcome is not None and outcome.remote is not None:
            r = outcome.remote
            record_usage(
                self.svc.settings,
                remote_record(
                    target=r.target.name, model=r.target.model, app=self.caller.app,
                    surface=self.caller.surface, prompt_tokens=r.prompt_tokens,
                    completion_tokens=r.completion_tokens, elapsed_s=r.elapsed_s,
                    route=RouteUsage(self.route, True, outcome.reason, r.cost_usd, None),
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
    price = decision.targets[0].price if decision.targets else None
    attempts = _Attempts(request, caller, route, price)
    consent = _consent(request)
    outcome: Outcome | None = None
    error: str | None = None
    try:
        outcome = await in_thread(
            lambda: run(router.policy, decision, req, attempts.generate, consent=consent),
            name="locara-route",
        )
    except EscalationError as exc:
        error = exc.message
        raise HTTPError(502, exc.message, code="escalation_failed") from None
    except Exception as exc:
        error = getattr(exc, "message", None) or repr(exc)
        raise
    finally:
        await in_thread(attempts.settle, outcome, error)
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
