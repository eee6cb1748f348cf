"""The decision: which route a prompt takes, which local candidate answers, where it may escalate.

``choose_local_descendant`` follows ``reference/004_*``: filter the candidates by memory
and runtime, rank the feasible ones by ``utility + privacy + latency_fit − memory_cost``
(each weighted by the policy), and when none is left return a no-op-or-escalation plan
with the reasons instead of failing. Nothing here generates text or opens a socket; the
embedding model is only loaded when a route has examples and no keyword matched.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np

from locara.device.profile import DeviceProfile
from locara.router.policy import Candidate, Route, RouterPolicy, Target
from locara.settings import Settings

Mode = Literal["local", "cascade", "escalate", "refuse"]
# Generation speed (tokens/s) that counts as a perfect latency fit: faster than reading.
COMFORTABLE_TPS = 20.0
NEUTRAL_UTILITY = 0.5  # a candidate with no scorecard is neither favoured nor penalised
Embed = Callable[[Sequence[str]], Any]  # texts -> unit vectors (n × dim)


@dataclass(frozen=True)
class RouteMatch:
    route: Route | None
    how: Literal["keyword", "embedding", "default", "none"]
    detail: str
    similarity: float | None = None


@dataclass(frozen=True)
class Scored:
    """One candidate as ``choose_local_descendant`` saw it: its terms, or why it was dropped."""

    candidate: Candidate
    feasible: bool
    score: float | None = None
    terms: dict[str, float] = field(default_factory=dict)
    memory_bytes: int | None = None
    runtime: str | None = None
    sha256: str | None = None
    reasons: tuple[str, ...] = ()


@dataclass(frozen=True)
class Decision:
    """What a request for the policy's model does, and why, before anything runs."""

    policy: str
    match: RouteMatch
    mode: Mode
    chosen: Scored | None
    ranked: tuple[Scored, ...]
    targets: tuple[Target, ...]  # the escalation chain, in order; empty: no escalation
    reasons: tuple[str, ...]

    @property
    def route_name(self) -> str:
        return self.match.route.name if self.match.route else "(default)"

    def to_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy,
            "route": self.route_name,
            "matched_by": self.match.how,
            "match": self.match.detail,
            "similarity": self.match.similarity,
            "mode": self.mode,
            "chosen": self.chosen.candidate.key if self.chosen else None,
            "candidates": [
                {
                    "name": s.candidate.key,
                    "model": s.candidate.model,
                    "adapters": [a.model_dump() for a in s.candidate.adapters],
                    "feasible": s.feasible,
                    "score": s.score,
                    "terms": s.terms,
                    "memory_bytes": s.memory_bytes,
                    "runtime": s.runtime,
                    "reasons": list(s.reasons),
                }
                for s in self.ranked
            ],
            "escalation": [
                {
                    "target": t.name,
                    "model": t.model,
                    "base_url": t.base_url,
                    "timeout_s": t.timeout_s,
                    "require_consent": t.require_consent,
                }
                for t in self.targets
            ],
            "reasons": list(self.reasons),
        }


def _keyword_hit(route: Route, text: str) -> str | None:
    for kw in route.keywords:
        if re.search(rf"(?<!\w){re.escape(kw.casefold())}(?!\w)", text):
            return kw
    return None


class RouteIndex:
    """Example prompts' vectors, computed once per policy, for similarity routing."""

    def __init__(self, policy: RouterPolicy, embed: Embed | None) -> None:
        self.routes = [r for r in policy.routes if r.examples]
        self._embed = embed
        self._vectors: list[Any] | None = None
        self._lock = threading.Lock()

    def best(self, prompt: str) -> RouteMatch | None:
        """The most similar route whose best example clears its ``min_similarity``."""
        if not self.routes or self._embed is None:
            return None
        with self._lock:  # one embedding model, used by one thread at a time
            if self._vectors is None:
                self._vectors = [np.asarray(self._embed(list(r.examples))) for r in self.routes]
            query = np.asarray(self._embed([prompt]))[0]
        best: RouteMatch | None = None
        for route, vecs in zip(self.routes, self._vectors, strict=True):
            sims = vecs @ query
            i = int(np.argmax(sims))
            sim = float(sims[i])
            if sim >= route.min_similarity and (best is None or sim > (best.similarity or 0)):
                best = RouteMatch(route, "embedding", f"like example {route.examples[i]!r}", sim)
        return best


def match_route(policy: RouterPolicy, prompt: str, index: RouteIndex | None) -> RouteMatch:
    """Keywords first (cheap, exact), then example similarity, then the default route."""
    text = prompt.casefold()
    for r in policy.routes:
        kw = _keyword_hit(r, text)
        if kw is not None:
            return RouteMatch(r, "keyword", f"keyword {kw!r}")
    found = index.best(prompt) if index is not None else None
    if found is not None:
        return found
    if policy.default_route is not None:
        route = next(r for r in policy.routes if r.name == policy.default_route)
        return RouteMatch(route, "default", "no rule matched: the default route")
    return RouteMatch(None, "none", "no rule matched: the policy's cascade over all candidates")


def _scorecard_utility(settings: Settings, sha256: str, cand: Candidate) -> float | None:
    """Accuracy of the newest fitness run of this exact base + adapter stack, if any."""
    from locara.ecology.fitness import FitnessDB
    from locara.errors import LedgerError

    if not (settings.home / "fitness.db").exists():
        return None
    try:
        vectors = FitnessDB(settings).for_base(sha256)
    except LedgerError:
        return None
    stack = [(a.id, a.scale) for a in cand.adapters]
    for v in vectors:
        if [(a.get("id"), float(a.get("scale", 1.0))) for a in v.adapters] == stack:
            return v.acc
    return None


def choose_local_descendant(
    policy: RouterPolicy,
    candidates: Sequence[Candidate],
    device: DeviceProfile,
    settings: Settings,
) -> tuple[Scored | None, tuple[Scored, ...]]:
    """The best feasible candidate (or None) and every candidate, ranked, with reasons."""
    from locara.planner.plan import PlanRequest, local_gguf_paths, plan_model
    from locara.registry.catalog import Registry
    from locara.registry.refs import parse_ref

    registry = Registry(settings)
    budget = device.ram_available_bytes
    if policy.filters.max_memory is not None:
        budget = min(budget, int(policy.filters.max_memory))
    runtimes = device.supported_runtimes
    if policy.filters.runtime is not None:
        runtimes = runtimes & frozenset(policy.filters.runtime)
    w = policy.weights
    scored: list[Scored] = []
    for cand in candidates:
        ref = parse_ref(cand.model)
        manifest = registry.get(ref.id)
        plan = plan_model(
            manifest,
            device,
            PlanRequest(quant=ref.quant, sha256=ref.sha256),
            gguf_path_of=local_gguf_paths(settings, [manifest]),
        )
        if not plan.ok or plan.artifact is None:
            scored.append(
                Scored(cand, False, reasons=("does not fit: " + "; ".join(plan.reasons),))
            )
            continue
        mem, runtime, sha = plan.ram_bytes, plan.backend, plan.artifact.sha256
        reasons: list[str] = []
        if policy.filters.max_memory is not None and mem > int(policy.filters.max_memory):
            reasons.append(
                f"needs {mem / 2**20:.0f} MiB > max_memory {int(policy.filters.max_memory) / 2**20:.0f} MiB"
            )
        if mem > device.ram_available_bytes:
            reasons.append(
                f"needs {mem / 2**20:.0f} MiB > {device.ram_available_bytes / 2**20:.0f} MiB available"
            )
        if runtime not in runtimes:
            reasons.append(f"runtime {runtime} not in {', '.join(sorted(runtimes)) or 'none'}")
        if reasons:
            scored.append(Scored(cand, False, None, {}, mem, runtime, sha, tuple(reasons)))
            continue
        utility = _scorecard_utility(settings, sha, cand) if sha else None
        notes = [] if utility is not None else [f"no scorecard: utility {NEUTRAL_UTILITY}"]
        tps = plan.expected_tg_tps
        terms = {
            "utility": NEUTRAL_UTILITY if utility is None else utility,
            "privacy": 1.0,  # a local candidate keeps every byte on the machine
            "latency_fit": min(1.0, tps / COMFORTABLE_TPS) if tps else 0.5,
            "memory_cost": mem / budget if budget else 1.0,
        }
        score = (
            w.utility * terms["utility"]
            + w.privacy * terms["privacy"]
            + w.latency_fit * terms["latency_fit"]
            - w.memory_cost * terms["memory_cost"]
        )
        scored.append(Scored(cand, True, round(score, 4), terms, mem, runtime, sha, tuple(notes)))
    ranked = sorted(scored, key=lambda s: (not s.feasible, -(s.score or 0.0)))
    chosen = ranked[0] if ranked and ranked[0].feasible else None
    return chosen, tuple(ranked)


def decide(
    policy: RouterPolicy,
    prompt: str,
    device: DeviceProfile,
    settings: Settings,
    index: RouteIndex | None = None,
) -> Decision:
    """Route ``prompt``, choose its local candidate, and lay out the escalation chain."""
    match = match_route(policy, prompt, index)
    route = match.route
    names = set(route.candidates) if route and route.candidates is not None else None
    cands = [c for c in policy.candidates if names is None or c.key in names]
    mode: Mode = route.mode if route else "cascade"
    reasons = [f"route {route.name if route else '(default)'}: {match.detail}"]
    chosen, ranked = (
        (None, ())
        if mode == "escalate"
        else choose_local_descendant(policy, cands, device, settings)
    )
    target = (route.escalate_to if route else None) or policy.escalate_to
    if policy.filters.privacy == "local_only":
        chain: list[Target] = []
        reasons.append("privacy local_only: nothing leaves this machine, no escalation")
    elif target is None:
        chain = []
        reasons.append("no escalation target named: answers stay local")
    else:
        chain = policy.fallback_chain(target)
    if mode != "escalate" and chosen is None:
        why = "; ".join(f"{s.candidate.key}: {', '.join(s.reasons)}" for s in ranked) or "none"
        if policy.on_no_candidate == "escalate" and chain:
            mode = "escalate"
            reasons.append(f"no local candidate fits ({why}): escalation plan")
        else:
            mode = "refuse"
            reasons.append(f"no local candidate fits ({why}): no-op plan")
    elif chosen is not None:
        reasons.append(f"local candidate {chosen.candidate.key} (score {chosen.score})")
    if mode == "cascade":
        c = policy.cascade
        signals = []
        if c.min_mean_logprob is not None:
            signals.append(f"mean token logprob < {c.min_mean_logprob}")
        if c.min_tail_logprob is not None:
            signals.append(f"mean of the 3 least likely tokens' logprobs < {c.min_tail_logprob}")
        if c.json_schema:
            signals.append("answer fails the request's JSON schema")
        if c.self_consistency is not None:
            sc = c.self_consistency
            signals.append(
                f"self-consistency ({sc.samples} samples) × tail probability < {sc.min_confidence}"
            )
        if c.self_check is not None:
            signals.append(f"self-check P(yes) < {c.self_check.min_yes_prob}")
        if chain and signals:
            reasons.append("escalate when: " + " or ".join(signals))
    return Decision(policy.name, match, mode, chosen, ranked, tuple(chain), tuple(reasons))


class PolicyRouter:
    """A loaded policy on this machine: its route index and embedding model, made once.

    The embedding model (all-minilm-l6-v2 unless the policy names another) is loaded
    through Locara's engine on the first prompt that needs a similarity, not before.
    """

    def __init__(
        self, policy: RouterPolicy, settings: Settings, device: DeviceProfile | None = None
    ) -> None:
        self.policy = policy
        self.settings = settings
        self._device = device
        self._embedder: Any = None
        self.index = RouteIndex(policy, self._embed)

    @property
    def device(self) -> DeviceProfile:
        if self._device is None:
            from locara.device.profile import current_device

            self._device = current_device(self.settings)
        return self._device

    def _embed(self, texts: Sequence[str]) -> Any:
        if self._embedder is None:
            from locara.rag.embedder import LocalEmbedder

            self._embedder = LocalEmbedder(self.settings, self.policy.embedding_model)
        return self._embedder.embed(texts)

    def decide(self, prompt: str) -> Decision:
        return decide(self.policy, prompt, self.device, self.settings, self.index)

    def close(self) -> None:
        if self._embedder is not None:
            self._embedder.close()
