"""``recommend``: models for this device by tier — fast, balanced, capable.

Every registry model that serves the task is planned for the device; those that fit
are placed in tiers by size:

- fast: the smallest model that fits (highest tok/s);
- capable: the largest model that still generates at a usable speed (>= 5 tok/s for
  text), else the largest that fits;
- balanced: the best ``choose_local_descendant`` score among the others, else the
  middle one by size.

Each entry carries its download size, expected memory (the fit estimate) and expected
tok/s: measured by ``locara bench`` on this device when a result exists, otherwise
estimated from memory bandwidth (decode reads every weight once per token).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from locara.device.profile import DeviceProfile
from locara.planner.budget import USABLE_TPS, ram_budget
from locara.planner.rank import TASKS, RankWeights, Scored, choose_local_descendant, params_of
from locara.planner.results import BenchResult
from locara.registry.manifest import ModelManifest


@dataclass(frozen=True)
class Recommendation:
    tier: str
    model_id: str
    display_name: str
    backend: str
    quant: str | None
    params: float
    size_bytes: int | None
    memory_bytes: int
    expected_tps: float | None
    tps_source: str | None
    n_ctx: int

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Recommendations:
    task: str
    budget_bytes: int
    tiers: tuple[Recommendation, ...]
    not_fitting: tuple[str, ...]
    notes: tuple[str, ...]

    def to_dict(self) -> dict[str, Any]:
        return {
            "task": self.task,
            "budget_bytes": self.budget_bytes,
            "tiers": [t.to_dict() for t in self.tiers],
            "not_fitting": list(self.not_fitting),
            "notes": list(self.notes),
        }


def _entry(tier: str, s: Scored) -> Recommendation:
    plan = s.plan
    assert plan.estimate is not None and plan.backend is not None and plan.n_ctx is not None
    art = plan.artifact
    size = art.size_bytes if art else None
    if art is not None and size is None and art.files:
        size = sum(f.size_bytes for f in art.files)
    return Recommendation(
        tier=tier,
        model_id=s.manifest.id,
        display_name=s.manifest.display_name,
        backend=plan.backend,
        quant=plan.quant,
        params=params_of(plan, s.manifest),
        size_bytes=size,
        memory_bytes=plan.estimate.total_bytes,
        expected_tps=plan.expected_tg_tps,
        tps_source=plan.tps_source,
        n_ctx=plan.n_ctx,
    )


def recommend(
    device: DeviceProfile,
    manifests: Iterable[ModelManifest],
    task: str = "chat",
    *,
    n_ctx: int | None = None,
    bench_results: Iterable[BenchResult] = (),
    gguf_path_of: Mapping[str, Path] | None = None,
    weights: RankWeights | None = None,
) -> Recommendations:
    """Tiered recommendations for ``task`` on ``device``; empty tiers when nothing fits."""
    choice = choose_local_descendant(
        task,
        device,
        manifests,
        weights=weights,
        n_ctx=n_ctx,
        bench_results=bench_results,
        gguf_path_of=gguf_path_of,
    )
    budget = ram_budget(device)
    not_fitting = tuple(
        f"{p.model_id}: {p.rejected[-1].reason if p.rejected else 'does not fit'}"
        for p in choice.rejected
    )
    if not choice.ok:
        return Recommendations(task, budget, (), not_fitting, choice.reasons + choice.alternatives)
    by_size = sorted(choice.ranked, key=lambda s: params_of(s.plan, s.manifest))
    fast = by_size[0]
    usable = [s for s in by_size if (s.plan.expected_tg_tps or 0) >= USABLE_TPS]
    modalities = TASKS[task][0]
    capable = (usable or by_size)[-1] if "chat" in modalities else by_size[-1]
    tiers: list[Recommendation] = [_entry("fast", fast)]
    rest = [s for s in choice.ranked if s is not fast and s is not capable]
    if rest:
        tiers.append(_entry("balanced", rest[0]))  # choice.ranked is best score first
    if capable is not fast:
        tiers.append(_entry("capable", capable))
    notes = [f"models up to about {budget / 2**30:.1f} GiB (weights + context) fit this device"]
    if len(tiers) < 3:
        notes.append(f"only {len(choice.ranked)} {task} model(s) fit; tiers share models")
    return Recommendations(task, budget, tuple(tiers), not_fitting, tuple(notes))
