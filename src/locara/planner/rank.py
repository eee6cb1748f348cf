"""choose_local_descendant: the best local model for a task on this device.

    candidates <- registry models whose modality serves the task
    feasible   <- those the planner can fit in memory, on a runtime this device has
    ranked     <- sorted by  w_u·utility + w_p·privacy + w_l·latency_fit − w_m·memory_cost
    nothing    -> a no-op / escalation plan with reasons and the nearest alternatives

Scores are in [0, 1] per term so the weights read as plain importances:

- utility: model capacity, log-scaled parameters (0.1B → 0, 100B → 1), nudged by the
  quant's fidelity (8-bit keeps more than 4-bit).
- privacy: 1 for every local model (nothing leaves the machine); an escalation to a
  remote endpoint would score 0, which is why it is only the fallback.
- latency_fit: expected generation speed against the task's target tok/s, capped at 1.
- memory_cost: the share of the device's model memory budget the plan takes.

Nothing here raises for "does not fit": the answer is a ``Choice`` with ``ok=False``.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from locara.device.fit import QUANT_BITS
from locara.device.profile import DeviceProfile
from locara.planner.plan import Plan, PlanRequest, plan_model
from locara.planner.results import BenchResult
from locara.registry.manifest import ModelManifest

# Task -> (modalities that serve it, features it needs, target tok/s for latency_fit).
TASKS: dict[str, tuple[tuple[str, ...], frozenset[str], float]] = {
    "chat": (("chat",), frozenset(), 15.0),
    "code": (("chat",), frozenset(), 20.0),
    "summarize": (("chat",), frozenset(), 15.0),
    "extract": (("chat",), frozenset({"json_schema"}), 15.0),
    "embedding": (("embedding",), frozenset({"embeddings"}), 200.0),
    "vision": (("vision",), frozenset(), 10.0),
    "stt": (("stt",), frozenset(), 10.0),
    "ocr": (("ocr",), frozenset(), 10.0),
}


@dataclass(frozen=True)
class RankWeights:
    """Importance of each term of the score; change them to favour speed or capacity."""

    utility: float = 1.0
    privacy: float = 0.5
    latency: float = 1.0
    memory: float = 0.5


@dataclass(frozen=True)
class Scored:
    plan: Plan
    manifest: ModelManifest
    score: float
    terms: Mapping[str, float]


@dataclass(frozen=True)
class Choice:
    """The chosen model and plan, or (``ok`` False) a no-op/escalation answer."""

    task: str
    ok: bool
    best: Scored | None
    ranked: tuple[Scored, ...] = ()
    rejected: tuple[Plan, ...] = ()
    reasons: tuple[str, ...] = ()
    alternatives: tuple[str, ...] = ()
    action: str = "run"  # "run" | "no-op" | "escalate"
    weights: RankWeights = field(default_factory=RankWeights)

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "ok": self.ok,
            "action": self.action,
            "best": _scored_dict(self.best) if self.best else None,
            "ranked": [_scored_dict(s) for s in self.ranked],
            "rejected": [p.to_dict() for p in self.rejected],
            "reasons": list(self.reasons),
            "alternatives": list(self.alternatives),
            "weights": self.weights.__dict__,
        }


def _scored_dict(s: Scored) -> dict[str, Any]:
    return {"model_id": s.manifest.id, "score": round(s.score, 4), "terms": dict(s.terms)} | {
        "plan": s.plan.to_dict()
    }


def params_of(plan: Plan, manifest: ModelManifest) -> float:
    """Parameters, from the plan's weights and quant (bits per weight)."""
    weights = plan.estimate.weights_bytes if plan.estimate else (manifest.size_bytes or 0)
    bits = QUANT_BITS.get((plan.quant or "").upper(), 4.85)
    return weights * 8 / bits


def score(
    plan: Plan, manifest: ModelManifest, target_tps: float, weights: RankWeights
) -> tuple[float, dict[str, float]]:
    params = max(params_of(plan, manifest), 1e8)
    utility = min(1.0, max(0.0, (math.log10(params) - 8) / 3))
    bits = QUANT_BITS.get((plan.quant or "").upper(), 4.85)
    utility = min(1.0, utility * (0.9 + 0.1 * min(bits, 8.5) / 8.5))
    privacy = 1.0
    latency = min(1.0, (plan.expected_tg_tps or 0.0) / target_tps)
    total = plan.estimate.total_bytes if plan.estimate else 0
    memory = min(1.0, total / plan.budget_bytes) if plan.budget_bytes else 1.0
    terms = {
        "utility": round(utility, 4),
        "privacy": privacy,
        "latency_fit": round(latency, 4),
        "memory_cost": round(memory, 4),
    }
    value = (
        weights.utility * utility
        + weights.privacy * privacy
        + weights.latency * latency
        - weights.memory * memory
    )
    return value, terms


def choose_local_descendant(
    task: str,
    device: DeviceProfile,
    manifests: Iterable[ModelManifest],
    *,
    weights: RankWeights | None = None,
    n_ctx: int | None = None,
    bench_results: Iterable[BenchResult] = (),
    gguf_path_of: Mapping[str, Path] | None = None,
) -> Choice:
    """The best local model for ``task`` on ``device``, or a no-op/escalation Choice."""
    weights = weights or RankWeights()
    if task not in TASKS:
        return Choice(
            task,
            False,
            None,
            reasons=(f"unknown task {task!r}",),
            alternatives=(f"use one of: {', '.join(TASKS)}",),
            action="no-op",
            weights=weights,
        )
    modalities, features, target = TASKS[task]
    results = list(bench_results)
    candidates = [m for m in manifests if m.modality in modalities]
    if not candidates:
        return Choice(
            task,
            False,
            None,
            reasons=(f"the registry has no {'/'.join(modalities)} model for task {task!r}",),
            alternatives=(
                "add one to a directory on LOCARA_REGISTRY_PATH (see: locara ls --all)",
                "escalate to a configured OpenAI-compatible endpoint, if a policy allows",
            ),
            action="escalate",
            weights=weights,
        )
    request = PlanRequest(n_ctx=n_ctx, features=features)
    feasible: list[Scored] = []
    infeasible: list[Plan] = []
    for m in candidates:
        plan = plan_model(m, device, request, bench_results=results, gguf_path_of=gguf_path_of)
        if not plan.ok:
            infeasible.append(plan)
            continue
        value, terms = score(plan, m, target, weights)
        feasible.append(Scored(plan, m, value, terms))
    feasible.sort(key=lambda s: (-s.score, s.manifest.id))
    if feasible:
        return Choice(
            task,
            True,
            feasible[0],
            tuple(feasible),
            tuple(infeasible),
            reasons=(
                f"{feasible[0].manifest.id} scores highest of {len(feasible)} that fit "
                f"({', '.join(f'{k} {v}' for k, v in feasible[0].terms.items())})",
            ),
            weights=weights,
        )
    reasons = tuple(
        f"{p.model_id}: {p.reasons[-1] if p.reasons else 'does not fit'}" for p in infeasible
    )
    return Choice(
        task,
        False,
        None,
        (),
        tuple(infeasible),
        reasons=reasons,
        alternatives=_nearest(infeasible, n_ctx),
        action="escalate",
        weights=weights,
    )


def _nearest(plans: list[Plan], n_ctx: int | None) -> tuple[str, ...]:
    """What would come closest: the smallest model/quant, a shorter context, escalation."""
    out: list[str] = []
    best: tuple[int, str, str | None] | None = None
    for p in plans:
        for r in p.rejected:
            need = r.needs_bytes
            if need is not None and (best is None or need < best[0]):
                best = (need, p.model_id, r.quant)
    if best is not None:
        need, model_id, quant = best
        budget = plans[0].budget_bytes
        out.append(
            f"smallest candidate: {model_id}:{quant} needs about {need / 2**30:.1f} GiB; "
            f"the model budget here is {budget / 2**30:.1f} GiB — free "
            f"{max(need - budget, 0) / 2**30:.1f} GiB (close other programs) or add a "
            "smaller model or quant to the registry"
        )
    if n_ctx is None or n_ctx > 512:
        out.append("a shorter context: --ctx 512")
    out.append("escalate to a configured OpenAI-compatible endpoint, if a policy allows")
    return tuple(out)
