"""Locara's server against a direct llama.cpp loop and llama-cpp-python's own server.

One run, same model, prompt, seed, threads and context, greedy decoding:

1. generation tok/s and time to first token (TTFT) for
   - a direct ``llama_cpp.Llama.generate`` loop in this process (the ceiling),
   - Locara's ``/v1/completions`` streamed over HTTP (SSE),
   - ``llama_cpp.server`` (the ``llama-cpp-python[server]`` extra) the same way,
   with ratios against the direct loop (goal: Locara >= 0.97x);
2. N concurrent streaming clients against each server: errors, aggregate tok/s,
   p50/p95 TTFT;
3. Locara's TTFT for a ~1,500-token shared system prompt, cold (a new prefix each
   time) and warm (the prefix cache holds it).

All three are loaded at once (an idle server uses no CPU) and measured in interleaved
rounds, so load from elsewhere on the machine hits them alike. Each figure is the
median of ``--repeats`` rounds after a warm-up round; every round's prompt starts
differently, so TTFT always includes prompt processing.

    .venv/bin/python bench/server.py            # ~4 minutes on 2 quiet cores
    .venv/bin/python bench/server.py --quick    # fewer repeats and clients
"""

from __future__ import annotations

import argparse
import asyncio
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from locara.backends.llama_cpp import physical_cores
from locara.engine.loader import resolve
from locara.settings import Settings

# Greedy decoding of a counting prompt keeps going without an end-of-sequence token, so
# every contender generates exactly the requested number of tokens.
PROMPT = "Count from 1 to 1000, separated by commas: 1, 2, 3,"
SYSTEM_RULE = "Rule {i}: answer briefly, cite the policy section, and never invent facts."


@dataclass
class Run:
    ttft_s: float
    tokens: int
    gen_s: float  # first token to last token

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.gen_s if self.gen_s > 0 and self.tokens > 1 else 0.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def unique(prompt: str, i: int) -> str:
    return f"Run {i}. {prompt}"


# -- the direct loop ----------------------------------------------------------------------
class DirectLoop:
    """The ceiling: llama.cpp's own token loop in this process, no HTTP, no server."""

    def __init__(self, model: Path, args: argparse.Namespace) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=args.ctx,
            n_batch=512,
            n_threads=args.threads,
            n_threads_batch=args.threads,
            seed=args.seed,
            verbose=False,
        )

    def run(self, prompt: str, max_tokens: int) -> Run:
        llm = self.llm
        tokens = llm.tokenize(prompt.encode(), add_bos=True, special=True)
        started = time.perf_counter()
        first = last = 0.0
        n = 0
        for tok in llm.generate(
            tokens, top_k=1, top_p=1.0, min_p=0.0, temp=0.0, repeat_penalty=1.0
        ):
            now = time.perf_counter()
            if self.llama_cpp.llama_vocab_is_eog(llm._model.vocab, tok):
                break
            llm.detokenize([tok])  # a server must detokenize too
            n += 1
            if n == 1:
                first = now
            last = now
            if n >= max_tokens:
                break
        return Run(first - started, n, last - first)

    def close(self) -> None:
        self.llm.close()


# -- servers ------------------------------------------------------------------------------
@contextmanager
def locara_server(home: Path, args: argparse.Namespace) -> Iterator[str]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env.update({"LOCARA_HOME": str(home), "LOCARA_CTX": str(args.ctx), "LOCARA_QUEUE_DEPTH": "64"})
    cmd = [sys.executable, "-m", "locara", "serve", "--port", str(port)]
    with _process(cmd, env, f"http://127.0.0.1:{port}", "/health") as url:
        yield url


@contextmanager
def llama_cpp_server(model: Path, args: argparse.Namespace) -> Iterator[str]:
    port = free_port()
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model), "--model_alias", "model",
        "--n_ctx", str(args.ctx), "--n_batch", "512",
        "--n_threads", str(args.threads), "--n_threads_batch", str(args.threads),
        "--seed", str(args.seed), "--host", "127.0.0.1", "--port", str(port),
        # Its default (True) aborts a running stream whenever a new request arrives.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    with _process(cmd, dict(os.environ), f"http://127.0.0.1:{port}", "/v1/models") as url:
        yield url


@contextmanager
def _process(cmd: list[str], env: dict[str, str], url: str, probe: str) -> Iterator[str]:
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 120
            while True:
                if proc.poll() is not None:
                    log.seek(0)
                    raise SystemExit(f"{cmd[2]} exited:\n{log.read().decode(errors='replace')}")
                try:
                    if httpx.get(url + probe, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit(f"{cmd[2]} did not start")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()


async def stream_completion(
    client: httpx.AsyncClient, url: str, prompt: str, max_tokens: int, args: argparse.Namespace
) -> Run:
    body = {
        "model": "model" if "llama" in url else None,
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_k": 1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,  # Locara would apply the manifest's default otherwise
        "seed": args.seed,
        "stream": True,
    }
    started = time.perf_counter()
    first = last = 0.0
    n = 0
    async with client.stream("POST", f"{url}/v1/completions", json=body) as r:
        if r.status_code != 200:
            await r.aread()
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")
        # The client shares the cores with the server under test, so it does as little
        # as it can: it counts events carrying text instead of parsing each one.
        buf = b""
        async for block in r.aiter_raw():
            now = time.perf_counter()
            buf += block
            *events, buf = buf.split(b"\n\n")
            for e in events:
                if not e.startswith(b"data: {"):
                    continue
                if b'"error"' in e[:20]:
                    raise RuntimeError(e.decode(errors="replace"))
                if b'"text":""' in e or b'"text": ""' in e or b'"choices":[]' in e:
                    continue
                n += 1
                if n == 1:
                    first = now
                last = now
    return Run(first - started, n, last - first)


async def one_run(url: str, prompt: str, args: argparse.Namespace) -> Run:
    async with httpx.AsyncClient(timeout=600) as client:
        return await stream_completion(client, url, prompt, args.tokens, args)


@dataclass
class Concurrency:
    errors: int
    aggregate_tps: float
    ttft_p50: float
    ttft_p95: float
    tokens: int


async def concurrent_runs(url: str, args: argparse.Namespace) -> Concurrency:
    limits = httpx.Limits(max_connections=args.clients + 4)
    async with httpx.AsyncClient(timeout=900, limits=limits) as client:

        async def one(i: int) -> Run | BaseException:
            try:
                return await stream_completion(
                    client, url, unique(PROMPT, 1000 + i), args.concurrent_tokens, args
                )
            except Exception as exc:  # counted as an error, reported below
                return exc

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(args.clients)))
        wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, Run)]
    errors = [r for r in results if not isinstance(r, Run)]
    for e in errors[:3]:
        print(f"    error: {e}")
    ttfts = sorted(r.ttft_s for r in ok) or [0.0]
    tokens = sum(r.tokens for r in ok)
    return Concurrency(
        errors=len(errors),
        aggregate_tps=tokens / wall if wall else 0.0,
        ttft_p50=statistics.median(ttfts),
        ttft_p95=ttfts[min(len(ttfts) - 1, round(0.95 * (len(ttfts) - 1)))],
        tokens=tokens,
    )


async def prefix_cache_ttft(url: str, args: argparse.Namespace) -> tuple[float, float, int]:
    """(cold TTFT, warm TTFT, prompt tokens) for a ~1,500-token shared system prompt."""
    rules = " ".join(SYSTEM_RULE.format(i=i) for i in range(82))
    cold, warm = [], []
    prompt_tokens = 0
    async with httpx.AsyncClient(timeout=600) as client:

        async def ask(system: str, question: str) -> tuple[float, int]:
            body = {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 1,
                "temperature": 0,
            }
            started = time.perf_counter()
            r = await client.post(f"{url}/v1/chat/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - started, int(r.json()["usage"]["prompt_tokens"])

        for i in range(args.repeats + 1):
            system = f"Session {i}. You are a support agent. {rules}"
            t_cold, prompt_tokens = await ask(system, "How do I reset my password?")
            t_warm, _ = await ask(system, "How do I change my email address?")
            if i:
                cold.append(t_cold)
                warm.append(t_warm)
    return statistics.median(cold), statistics.median(warm), prompt_tokens


# -- report -------------------------------------------------------------------------------
def median_run(runs: list[Run]) -> tuple[float, float, int]:
    return (
        statistics.median(r.tps for r in runs),
        statistics.median(r.ttft_s for r in runs),
        min(r.tokens for r in runs),
    )


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model reference (default: the default model)")
    ap.add_argument("--tokens", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--clients", type=int, default=16)
    ap.add_argument("--concurrent-tokens", type=int, default=64)
    ap.add_argument("--threads", type=int, default=physical_cores())
    ap.add_argument("--ctx", type=int, default=4096)
    ap.add_argument("--seed", type=int, default=42)
    ap.add_argument("--quick", action="store_true", help="2 repeats, 8 clients")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.clients = 2, 8
    if args.threads != physical_cores():
        print(f"note: Locara's server uses {physical_cores()} threads (physical cores)")

    settings = Settings.from_env()
    resolved = resolve(settings, args.model)
    model = resolved.blob.path
    print(
        f"model {resolved.manifest.id} ({resolved.artifact.quant}, {model.stat().st_size / 1e6:.0f} MB)"
        f" · threads {args.threads} · ctx {args.ctx} · seed {args.seed} · greedy · "
        f"{args.tokens} tokens · median of {args.repeats} after a warm-up"
    )
    print(f"prompt: {PROMPT!r}\n")

    names = ("direct llama_cpp.Llama loop", "Locara /v1/completions SSE", "llama_cpp.server SSE")
    runs: dict[str, list[Run]] = {n: [] for n in names}
    conc: dict[str, Concurrency] = {}
    direct = DirectLoop(model, args)
    try:
        with locara_server(settings.home, args) as loc, llama_cpp_server(model, args) as lcs:
            contenders = {
                names[0]: lambda prompt: direct.run(prompt, args.tokens),
                names[1]: lambda prompt: asyncio.run(one_run(loc, prompt, args)),
                names[2]: lambda prompt: asyncio.run(one_run(lcs, prompt, args)),
            }
            # Interleaved rounds: load on the machine from elsewhere hits all three alike.
            for i in range(args.repeats + 1):
                for name, run in contenders.items():
                    result = run(unique(PROMPT, i))
                    if i:  # round 0 is the warm-up (and loads Locara's model)
                        runs[name].append(result)
            conc["Locara"] = asyncio.run(concurrent_runs(loc, args))
            conc["llama_cpp.server"] = asyncio.run(concurrent_runs(lcs, args))
            cold, warm, n_prompt = asyncio.run(prefix_cache_ttft(loc, args))
    finally:
        direct.close()
    results = {name: median_run(r) for name, r in runs.items()}

    base_tps, base_ttft, _ = results["direct llama_cpp.Llama loop"]
    print(
        f"{'single stream':32} {'gen tok/s':>10} {'vs direct':>10} {'TTFT ms':>9} {'vs direct':>10} {'tokens':>7}"
    )
    for name, (tps, ttft, n) in results.items():
        print(
            f"{name:32} {tps:10.1f} {tps / base_tps:9.3f}x {ttft * 1000:9.1f} "
            f"{ttft / base_ttft:9.2f}x {n:7d}"
        )
    loc = results["Locara /v1/completions SSE"][0] / base_tps
    print(
        f"\nLocara / direct generation speed: {loc:.3f}x (goal >= 0.97x: {'met' if loc >= 0.97 else 'NOT met'})"
    )
    ratio = results["Locara /v1/completions SSE"][0] / results["llama_cpp.server SSE"][0]
    print(f"Locara / llama_cpp.server generation speed: {ratio:.3f}x")

    print(f"\n{args.clients} concurrent streaming clients, {args.concurrent_tokens} tokens each")
    print("(llama_cpp.server runs with --interrupt_requests False; its default aborts streams)")
    print(
        f"{'server':20} {'errors':>7} {'aggregate tok/s':>16} {'TTFT p50 ms':>12} {'TTFT p95 ms':>12}"
    )
    for name, c in conc.items():
        print(
            f"{name:20} {c.errors:7d} {c.aggregate_tps:16.1f} {c.ttft_p50 * 1000:12.0f} {c.ttft_p95 * 1000:12.0f}"
        )

    print(f"\nshared system prompt of {n_prompt} tokens (Locara, chat, 1 token out)")
    print(f"  TTFT without prefix cache (new prefix): {cold * 1000:8.1f} ms")
    print(
        f"  TTFT with prefix cache (same prefix):   {warm * 1000:8.1f} ms   ({cold / warm:.1f}x faster)"
    )


if __name__ == "__main__":
    main()
