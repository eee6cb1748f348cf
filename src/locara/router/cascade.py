"""Running a decision: answer locally, measure confidence, escalate when it is too low.

The confidence signals are the ones a cascade can read off a local answer cheaply:
the mean log-probability of its tokens (the backend returns them with the answer),
whether it satisfies the request's JSON schema, self-consistency — a few more sampled
answers, the share that say the same as the greedy one, times the probability of the
answer's least likely tokens — and a self-check — the local model is asked whether the
answer is right and P("yes") is read from its first token's distribution. The first
signal under its threshold is the reason for escalating.
Escalation also needs a target chain (never under ``local_only``) and, for a target
with ``require_consent``, the request's consent; without them the local answer stands,
with the reason it would have escalated.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from locara.backends.base import Chunk, GenerationRequest, Message, Sampling
from locara.errors import UsageError
from locara.router.decide import Decision, Scored
from locara.router.policy import Cascade, RouterPolicy
from locara.router.remote import EscalationError, RemoteAnswer, escalate

# Runs one generation on a local candidate and returns all its chunks.
Generate = Callable[[Scored, GenerationRequest], list[Chunk]]
CONSENT_HEADER = "X-Locara-Consent"
SELF_CHECK = (
    "Question: {question}\nProposed answer: {answer}\n"
    "Is the proposed answer correct? Reply with yes or no."
)


TAIL_TOKENS = 3  # min_tail_logprob: the mean of this many least likely tokens


@dataclass(frozen=True)
class Signals:
    mean_logprob: float | None = None
    tail_logprob: float | None = None
    schema_ok: bool | None = None
    yes_prob: float | None = None
    agreement: float | None = None  # share of the self-consistency samples that agree
    confidence: float | None = None  # agreement × exp(tail logprob)

    def to_dict(self) -> dict[str, Any]:
        return {
            "mean_logprob": self.mean_logprob,
            "tail_logprob": self.tail_logprob,
            "schema_ok": self.schema_ok,
            "yes_prob": self.yes_prob,
            "agreement": self.agreement,
            "confidence": self.confidence,
        }


@dataclass(frozen=True)
class Outcome:
    """Who answered, with what, and why; the chunks of the local attempt for the ledger."""

    text: str
    answered_by: str  # "local" | "remote"
    escalated: bool
    reason: str | None  # why it escalated, or why it did not although a signal said so
    signals: Signals
    local: list[Chunk] | None = None
    local_candidate: Scored | None = None
    remote: RemoteAnswer | None = None


def mean_logprob(chunks: list[Chunk]) -> float | None:
    lps = [t.logprob for c in chunks for t in c.logprobs if math.isfinite(t.logprob)]
    return sum(lps) / len(lps) if lps else None


def tail_logprob(chunks: list[Chunk]) -> float | None:
    lps = sorted(t.logprob for c in chunks for t in c.logprobs if math.isfinite(t.logprob))
    return sum(lps[:TAIL_TOKENS]) / len(lps[:TAIL_TOKENS]) if lps else None


def agreement(answer: str, samples: list[str]) -> float:
    """The share of ``samples`` that say the same words as ``answer`` (case, spacing and
    punctuation aside)."""

    def words(text: str) -> list[str]:
        return re.findall(r"\w+", text.lower())

    said = words(answer)
    return sum(words(s) == said for s in samples) / len(samples) if samples else 0.0


def consistency(agree: float, tail: float | None) -> float:
    """Self-consistency confidence: agreement × exp(tail logprob); no tokens, no confidence."""
    return agree * math.exp(tail) if tail is not None else 0.0


def schema_ok(text: str, schema: dict[str, Any]) -> bool:
    import jsonschema

    try:
        value = json.loads(text)
    except ValueError:
        return False
    if not schema:
        return isinstance(value, dict)
    try:
        jsonschema.validate(value, schema)
    except jsonschema.ValidationError:
        return False
    except jsonschema.SchemaError as exc:
        raise UsageError(
            f"the request's JSON schema is invalid: {exc.message}", "fix the schema"
        ) from exc
    return True


def yes_probability(chunks: list[Chunk]) -> float:
    """P(the first token says yes), from its top alternatives (missing ones count as 0)."""
    for c in chunks:
        for t in c.logprobs:
            cands = dict(t.top) or {t.token: t.logprob}
            return sum(
                math.exp(lp) for tok, lp in cands.items() if tok.strip().lower().startswith("yes")
            )
    return 0.0


def _question(req: GenerationRequest) -> str:
    if req.prompt is not None:
        return req.prompt
    return next((m.content for m in reversed(req.messages) if m.role == "user"), "")


def assess(
    cfg: Cascade,
    req: GenerationRequest,
    chunks: list[Chunk],
    self_check: Callable[[str], float] | None,
    sample: Callable[[int, float], list[str]] | None = None,
) -> tuple[Signals, str | None]:
    """The signals of a local answer and the first reason to escalate (None: confident).

    ``sample(n, temperature)`` returns ``n`` more sampled answers (self-consistency)."""
    text = "".join(c.text for c in chunks)
    mlp, tail = mean_logprob(chunks), tail_logprob(chunks)
    ok = schema_ok(text, req.json_schema) if req.json_schema is not None else None
    reason = None
    if cfg.json_schema and ok is False:
        reason = "the answer fails the request's JSON schema"
    elif cfg.min_mean_logprob is not None and mlp is not None and mlp < cfg.min_mean_logprob:
        reason = f"mean token logprob {mlp:.3f} < {cfg.min_mean_logprob}"
    elif cfg.min_tail_logprob is not None and tail is not None and tail < cfg.min_tail_logprob:
        reason = f"tail logprob (3 least likely tokens) {tail:.3f} < {cfg.min_tail_logprob}"
    agree = conf = None
    sc = cfg.self_consistency
    if reason is None and sc is not None and sample is not None:
        agree = agreement(text, sample(sc.samples, sc.temperature))
        conf = consistency(agree, tail)
        if conf < sc.min_confidence:
            reason = (
                f"self-consistency {conf:.2f} < {sc.min_confidence} "
                f"({agree:.0%} of {sc.samples} samples agree)"
            )
    yes = None
    if reason is None and cfg.self_check is not None and self_check is not None:
        yes = self_check(text)
        if yes < cfg.self_check.min_yes_prob:
            reason = f"self-check P(yes) {yes:.2f} < {cfg.self_check.min_yes_prob}"
    return Signals(mlp, tail, ok, yes, agree, conf), reason


def run(
    policy: RouterPolicy,
    decision: Decision,
    req: GenerationRequest,
    generate: Generate,
    *,
    consent: bool,
    env: Mapping[str, str] | None = None,
) -> Outcome:
    """Carry out ``decision`` for ``req``: locally, by cascade, or by escalation."""
    if decision.mode == "refuse":
        raise UsageError(
            f"policy {policy.name}: no local candidate can answer and escalation is not "
            "possible (" + "; ".join(decision.reasons[1:]) + ")",
            "add a candidate that fits this machine, or an escalation target (allow_remote)",
        )
    chain = decision.targets
    needs_consent = any(t.require_consent for t in chain[:1])

    def remote() -> RemoteAnswer:
        return escalate(
            policy, chain, req.messages or (Message("user", req.prompt or ""),),
            max_tokens=req.max_tokens, json_schema=req.json_schema, env=env,
        )  # fmt: skip

    if decision.mode == "escalate":
        reason = decision.reasons[-1] if decision.chosen is None else "route escalates"
        if needs_consent and not consent:
            raise UsageError(
                f"policy {policy.name}: this request can only be answered by {chain[0].name}, "
                "which requires consent to send it off this machine",
                f"send the header {CONSENT_HEADER}: remote to allow it",
            )
        answer = remote()
        return Outcome(answer.text, "remote", True, reason, Signals(), remote=answer)

    chosen = decision.chosen
    assert chosen is not None  # local and cascade modes have a candidate
    cascade = decision.mode == "cascade" and bool(chain)
    local_req = req
    c = policy.cascade
    wants_logprobs = (
        c.min_mean_logprob is not None
        or c.min_tail_logprob is not None
        or c.self_consistency is not None
    )
    if cascade and wants_logprobs and req.logprobs is None:
        local_req = replace(req, logprobs=0)
    chunks = generate(chosen, local_req)
    text = "".join(c.text for c in chunks)
    if not cascade:
        return Outcome(text, "local", False, None, Signals(mean_logprob(chunks)), chunks, chosen)

    def self_check(answer: str) -> float:
        check = GenerationRequest(
            messages=(Message("user", SELF_CHECK.format(question=_question(req), answer=answer)),),
            max_tokens=1, sampling=Sampling(temperature=0.0, seed=0), logprobs=10,
        )  # fmt: skip
        return yes_probability(generate(chosen, check))

    def sample(n: int, temperature: float) -> list[str]:
        # Seeded: the same request gets the same samples, so the same decision.
        seed = req.sampling.seed or 0
        return [
            "".join(c.text for c in generate(chosen, replace(req, sampling=replace(
                req.sampling, temperature=temperature, seed=seed + i + 1))))
            for i in range(n)
        ]  # fmt: skip

    signals, why = assess(policy.cascade, req, chunks, self_check, sample)
    if why is None:
        return Outcome(text, "local", False, None, signals, chunks, chosen)
    reason = why
    if needs_consent and not consent:
        why = f"{reason}, but {chain[0].name} requires consent ({CONSENT_HEADER}: remote)"
        return Outcome(text, "local", False, why, signals, chunks, chosen)
    try:
        answer = remote()
    except EscalationError as exc:  # every target failed: the local answer stands
        return Outcome(text, "local", False, f"{reason}; {exc.message}", signals, chunks, chosen)
    return Outcome(answer.text, "remote", True, reason, signals, chunks, chosen, answer)
