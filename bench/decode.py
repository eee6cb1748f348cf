"""Decode speed: `locara run --json` against a bare llama_cpp.Llama loop, side by side.

Same model file, same rendered prompt, same seed, greedy sampling, same thread count.
Runs alternate (locara, direct, locara, direct, ...) so drift on a shared machine hits
both equally. Prints each run, the medians, and the ratio locara / direct.

    .venv/bin/python bench/decode.py [--reps 5] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

PROMPT = "Write a long story about a lighthouse keeper and a storm."


def locara_run(home: str, max_tokens: int, threads: int) -> tuple[float, int]:
    env = {**os.environ, "LOCARA_HOME": home}
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "locara",
            "run",
            PROMPT,
            "--temperature",
            "0",
            "--seed",
            "1",
            "--max-tokens",
            str(max_tokens),
            "--json",
        ],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    data = json.loads(out.stdout)
    return float(data["timings"]["generation_tokens_per_s"]), int(
        data["usage"]["completion_tokens"]
    )


def direct_run(
    model_path: str, prompt_text: str, max_tokens: int, threads: int
) -> tuple[float, int]:
    import llama_cpp

    llm = llama_cpp.Llama(
        model_path=model_path, n_ctx=4096, n_threads=threads, n_threads_batch=threads, verbose=False
    )
    tokens = llm.tokenize(prompt_text.encode(), add_bos=False, special=True)
    llm.set_seed(1)
    stamps: list[float] = []
    for tok in llm.generate(tokens, temp=0.0, top_k=40, top_p=0.9, min_p=0.05, repeat_penalty=1.1):
        stamps.append(time.perf_counter())
        if llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok) or len(stamps) > max_tokens:
            break
    n = len(stamps) - 1  # the last stamp is the end-of-generation token (or one past budget)
    llm.close()
    rate = (n - 1) / (stamps[n - 1] - stamps[0]) if n > 1 else 0.0
    return rate, n


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--max-tokens", type=int, default=128)
    args = ap.parse_args()

    from locara.backends.base import GenerationRequest, LoadOptions, Message
    from locara.backends.llama_cpp import physical_cores
    from locara.engine.loader import load, resolve
    from locara.settings import Settings

    home = tempfile.mkdtemp(prefix="locara-bench-")
    settings = Settings.from_env({"LOCARA_HOME": home})
    resolved = resolve(settings, None)
    handle = load(settings, resolved, LoadOptions(n_ctx=256))
    prompt_text = handle.model.render_prompt(  # type: ignore[attr-defined]
        GenerationRequest(messages=(Message("user", PROMPT),))
    )
    handle.close()
    threads = physical_cores()
    print(
        f"model {resolved.manifest.id} ({resolved.artifact.quant}), threads {threads}, "
        f"greedy, max {args.max_tokens} tokens, {args.reps} alternating runs each"
    )
    ours: list[float] = []
    theirs: list[float] = []
    for i in range(args.reps):
        a, na = locara_run(home, args.max_tokens, threads)
        b, nb = direct_run(str(resolved.blob.path), prompt_text, args.max_tokens, threads)
        ours.append(a)
        theirs.append(b)
        print(f"  run {i + 1}: locara {a:7.1f} tok/s ({na} tok)   direct {b:7.1f} tok/s ({nb} tok)")
    mo, md = statistics.median(ours), statistics.median(theirs)
    print(f"median generation tok/s: locara {mo:.1f}, direct llama_cpp.Llama {md:.1f}")
    print(f"ratio locara/direct: {mo / md:.3f}")


if __name__ == "__main__":
    main()
