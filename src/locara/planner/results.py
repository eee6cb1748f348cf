"""Benchmark results the planner reads: measured speed on this device.

``locara bench`` appends JSON lines to ``Settings.bench_results_path`` with this shape
(llama-bench field names where they exist); the planner reads them defensively — a
line that is not JSON, lacks a field or has a wrong type is skipped::

    {"model_id": str, "sha256": str, "backend": "llama_cpp" | "mlx", "quant": str,
     "n_prompt": int, "n_gen": int, "pp_tps": float, "tg_tps": float, "ttft_s": float,
     "load_s": float, "peak_rss_bytes": int, "device": {...DeviceProfile fields...},
     "timestamp": str}

A result counts for this device when its ``device`` has the same ``cpu_model``, ``os``
and ``arch`` (or when it has no device at all).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

from locara.device.profile import DeviceProfile
from locara.registry.manifest import Artifact


@dataclass(frozen=True)
class BenchResult:
    model_id: str
    backend: str
    quant: str | None
    tg_tps: float
    sha256: str | None
    peak_rss_bytes: int | None


def read_bench_results(path: Path, device: DeviceProfile | None = None) -> list[BenchResult]:
    """Results from ``locara bench`` that apply to ``device``; malformed lines are skipped."""
    try:
        text = path.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return []
    out: list[BenchResult] = []
    for line in text.splitlines():
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            continue
        if not isinstance(rec, dict):
            continue
        dev = rec.get("device")
        if (
            device is not None
            and isinstance(dev, Mapping)
            and any(
                dev.get(k) is not None and dev.get(k) != getattr(device, k)
                for k in ("cpu_model", "os", "arch")
            )
        ):
            continue
        model_id, backend, tg = rec.get("model_id"), rec.get("backend"), rec.get("tg_tps")
        if not isinstance(model_id, str) or backend not in ("llama_cpp", "mlx"):
            continue
        if not isinstance(tg, (int, float)) or isinstance(tg, bool) or tg <= 0:
            continue
        rss = rec.get("peak_rss_bytes")
        out.append(
            BenchResult(
                model_id=model_id,
                backend=str(backend),
                quant=str(rec["quant"]) if isinstance(rec.get("quant"), str) else None,
                tg_tps=float(tg),
                sha256=str(rec["sha256"]) if isinstance(rec.get("sha256"), str) else None,
                peak_rss_bytes=int(rss) if isinstance(rss, int) else None,
            )
        )
    return out


def best_measured(
    results: Iterable[BenchResult], model_id: str, backend: str, art: Artifact | None = None
) -> BenchResult | None:
    best: BenchResult | None = None
    for r in results:
        if r.model_id != model_id or r.backend != backend:
            continue
        if art is not None and not (
            (r.sha256 and r.sha256 == art.sha256)
            or (r.quant and art.quant and r.quant.upper() == art.quant.upper())
        ):
            continue
        if best is None or r.tg_tps > best.tg_tps:
            best = r
    return best
