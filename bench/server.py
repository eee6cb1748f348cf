"""Locara's server against llama.cpp's own ``llama-server``, side by side in one run.

Locara runs generation in a ``llama-server`` worker, so the reference is that same
binary serving the same GGUF with the same settings: Locara's plan decides threads,
parallel slots and context per slot, and the bare ``llama-server`` is started with
exactly those (``-t``/``-tb``, ``-np`` = the plan's slots, ``-c`` = slots x context,
``--no-kv-unified``, and the worker's flash-attention, KV type, batch and prompt-cache
RAM), in the worker's environment (``worker_environment``: a short OpenMP spin, ``GOMP_SPINCOUNT``)
and, like the worker, in a session of its own (Linux's autogroup scheduler shares the
CPU between sessions),
with ``cache_prompt`` on in every request (they carry no seed: Locara evaluates a
seeded request's whole prompt). After the warm-up the script reads the
worker's real command line and environment and stops if any of them differ, so the
ratios measure what Locara adds (HTTP, prompt rendering, tokenizing, the pool, the
ledger), not a setting. Greedy decoding of a counting prompt. It prints:

1. single stream: generation tok/s and time to first token (TTFT), with a bare
   ``llama_cpp.Llama.generate`` loop in this process as a no-server reference
   (goal: Locara / llama-server >= 0.97x);
2. 4 and 16 concurrent streaming clients: errors, aggregate tok/s, TTFT p50/p95
   (goals: >= 0.95x aggregate at 16 clients, 0 errors);
3. TTFT for a ~1,500-token shared system prompt, cold (a new prefix each time) and warm
   (the slot's prompt cache holds it);
4. idle RSS with the model loaded: Locara's server process plus its worker, and
   llama-server, after the warm-up and again at the end.

Every server is loaded at once (an idle one uses no CPU) and measured in interleaved
rounds whose order rotates, so load from elsewhere on the machine hits them alike.
Single-stream figures are medians of ``--repeats`` rounds after a warm-up round; every
prompt starts differently, so TTFT always includes prompt processing. The load average
is printed before and after: numbers taken on a busy machine are noise.

    .venv/bin/python bench/server.py            # ~6 minutes on 2 quiet cores
    .venv/bin/python bench/server.py --quick    # ~2 minutes: fewer rounds
    .venv/bin/python bench/server.py --llama-cpp-python-server   # + llama_cpp.server
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import psutil

from locara import SPIN_COUNT
from locara.backends.worker_binary import WorkerBinary, locate_llama_server, worker_environment
from locara.engine.loader import ResolvedModel, resolve
from locara.planner.plan import Plan, PlanRequest
from locara.settings import Settings
from serving import free_port, served

# Greedy decoding of a counting prompt keeps going without an end-of-sequence token, so
# every contender generates exactly the requested number of tokens.
PROMPT = "Count from 1 to 1000, separated by commas: 1, 2, 3,"
SYSTEM_RULE = "Rule {i}: answer briefly, cite the policy section, and never invent facts."
LOCARA, LLAMA_SERVER, LCP_SERVER, DIRECT = (
    "Locara",
    "llama-server",
    "llama_cpp.server",
    "direct llama_cpp loop",
)
# Flags of Locara's worker that change what llama-server computes; the bare llama-server
# must show the same values (checked against the worker's real command line).
SETTINGS = (
    "--threads", "--threads-batch", "--parallel", "--ctx-size", "--no-kv-unified",
    "--n-gpu-layers", "--flash-attn", "--cache-type-k", "--cache-type-v", "--batch-size",
    "--cache-ram", "--embeddings", "--pooling", "--ubatch-size",
)  # fmt: skip


@dataclass
class Run:
    ttft_s: float
    tokens: int
    gen_s: float  # first token to last token

    @property
    def tps(self) -> float:
        return (self.tokens - 1) / self.gen_s if self.gen_s > 0 and self.tokens > 1 else 0.0


@dataclass(frozen=True)
class Server:
    name: str
    url: str
    pid: int
    extra: dict[str, Any] = field(default_factory=dict)  # request fields its API needs


def unique(prompt: str, i: int) -> str:
    return f"Run {i}. {prompt}"


def rotated(items: list[Any], i: int) -> list[Any]:
    """Round ``i``'s order: who goes first changes every round."""
    k = i % len(items) if items else 0
    return items[k:] + items[:k]


def tree_rss(pid: int) -> int:
    """RSS of a process and all its descendants (Locara's server + its llama-server)."""
    proc = psutil.Process(pid)
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            total += p.memory_info().rss
    return total


# -- the direct loop ----------------------------------------------------------------------
class DirectLoop:
    """No server at all: llama-cpp-python's token loop in this process."""

    def __init__(self, model: Path, plan: Plan, args: argparse.Namespace) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=args.ctx,
            n_batch=plan.n_batch,
            n_threads=plan.n_threads,
            n_threads_batch=plan.n_threads_batch,
            flash_attn=plan.flash_attn,
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
def locara_server(home: Path, args: argparse.Namespace) -> Iterator[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env.update(
        {
            "LOCARA_HOME": str(home),
            "LOCARA_CTX": str(args.ctx),
            "LOCARA_QUEUE_DEPTH": "64",  # 16 clients on 4 slots queue; none is refused
            "LOCARA_KEEP_ALIVE": "-1",  # loaded until the end, for the idle RSS
        }
    )
    if args.parallel:
        env["LOCARA_NUM_PARALLEL"] = str(args.parallel)
    cmd = [sys.executable, "-m", "locara", "serve", "--port", str(port)]
    with _process(LOCARA, cmd, env, f"http://127.0.0.1:{port}", "/health") as (url, pid):
        extra = {"model": args.model} if args.model else {}
        yield Server(LOCARA, url, pid, extra)


def llama_server_argv(binary: WorkerBinary, model: Path, plan: Plan, port: int) -> list[str]:
    """The bare llama-server, set up as Locara's plan sets up its worker."""
    assert plan.n_ctx is not None and plan.n_threads is not None
    total = plan.n_ctx * plan.n_parallel
    fa = plan.flash_attn or plan.kv_type != "f16"  # as the worker decides it
    return [
        str(binary.path), "--model", str(model), "--alias", "model",
        "--host", "127.0.0.1", "--port", str(port), "--no-webui",
        "--threads", str(plan.n_threads), "--threads-batch", str(plan.n_threads_batch),
        "--parallel", str(plan.n_parallel), "--ctx-size", str(total),
        # With an explicit -np llama.cpp already gives each slot its own ctx/np; said
        # anyway, since the worker says it.
        "--no-kv-unified",
        "--n-gpu-layers", str(plan.n_gpu_layers),
        # llama.cpp's defaults differ from the worker's here (flash attention "auto",
        # batch 2048, an 8 GiB host prompt cache): the plan's values instead.
        "--flash-attn", "on" if fa else "off",
        "--cache-type-k", plan.kv_type, "--cache-type-v", plan.kv_type,
        "--batch-size", str(min(plan.n_batch, total)), "--cache-ram", "0",
        # Locara's workers embed too (one copy of a chat model serves both).
        "--embeddings", "--pooling", "mean", "--ubatch-size", str(min(plan.n_batch, total)),
    ]  # fmt: skip


@contextmanager
def llama_server(
    binary: WorkerBinary, model: Path, plan: Plan, env: dict[str, str]
) -> Iterator[Server]:
    port = free_port()
    cmd = llama_server_argv(binary, model, plan, port)
    with _process(LLAMA_SERVER, cmd, env, f"http://127.0.0.1:{port}", "/health") as (url, pid):
        # cache_prompt is llama-server's default, and what Locara's worker always sends.
        yield Server(LLAMA_SERVER, url, pid, {"model": "model", "cache_prompt": True})


@contextmanager
def llama_cpp_server(model: Path, plan: Plan, args: argparse.Namespace) -> Iterator[Server]:
    assert plan.n_threads is not None
    port = free_port()
    threads, threads_batch = str(plan.n_threads), str(plan.n_threads_batch)
    cmd = [
        sys.executable, "-m", "llama_cpp.server",
        "--model", str(model), "--model_alias", "model",
        "--n_ctx", str(args.ctx), "--n_batch", str(plan.n_batch),
        "--n_threads", threads, "--n_threads_batch", threads_batch,
        "--host", "127.0.0.1", "--port", str(port),
        # Its default (True) aborts a running stream whenever a new request arrives.
        "--interrupt_requests", "False",
    ]  # fmt: skip
    env = {**os.environ, "GOMP_SPINCOUNT": SPIN_COUNT}
    with _process(LCP_SERVER, cmd, env, f"http://127.0.0.1:{port}", "/v1/models") as (url, pid):
        yield Server(LCP_SERVER, url, pid, {"model": "model"})


@contextmanager
def _process(
    name: str, cmd: list[str], env: dict[str, str], url: str, probe: str
) -> Iterator[tuple[str, int]]:
    with served(name, cmd, env, url, probe) as (pid, _):
        yield url, pid


def check_same_settings(locara: Server, bare: Server) -> str:
    """Compare Locara's worker with the bare llama-server; SystemExit if they differ."""
    workers = [
        p for p in psutil.Process(locara.pid).children(recursive=True) if "llama-server" in p.name()
    ]
    if len(workers) != 1:
        raise SystemExit(f"expected one llama-server worker under Locara, found {len(workers)}")

    def flags(argv: list[str]) -> dict[str, str]:
        out: dict[str, str] = {}
        for i, a in enumerate(argv):
            if a in SETTINGS:
                valueless = a in ("--no-kv-unified", "--embeddings")
                out[a] = "" if valueless or i + 1 == len(argv) else argv[i + 1]
        return out

    def placement(p: psutil.Process) -> dict[str, str]:
        return {
            "GOMP_SPINCOUNT": p.environ().get("GOMP_SPINCOUNT", "(unset)"),
            "own session": str(os.getsid(p.pid) == p.pid),
            "nice": str(p.nice()),
        }

    bare_proc = psutil.Process(bare.pid)
    mine = flags(workers[0].cmdline()) | placement(workers[0])
    theirs = flags(bare_proc.cmdline()) | placement(bare_proc)
    diff = {k: (mine.get(k), theirs.get(k)) for k in mine.keys() | theirs.keys()}
    diff = {k: v for k, v in diff.items() if v[0] != v[1]}
    if diff:
        lines = "\n".join(
            f"  {k}: Locara's worker {a!r}, llama-server {b!r}" for k, (a, b) in diff.items()
        )
        raise SystemExit(f"the two llama-servers run with different settings:\n{lines}")
    return " ".join(f"{k} {v}".strip() for k, v in mine.items())


# -- clients ------------------------------------------------------------------------------
def _client(timeout_s: float, connections: int = 8) -> httpx.AsyncClient:
    # No keep-alive, for every server alike: llama-server sometimes closes a connection
    # after a streamed answer although it announced keep-alive (Locara's worker does
    # the same for that reason).
    limits = httpx.Limits(max_connections=connections, max_keepalive_connections=0)
    return httpx.AsyncClient(timeout=httpx.Timeout(timeout_s, connect=10.0), limits=limits)


async def stream_completion(
    client: httpx.AsyncClient, server: Server, prompt: str, max_tokens: int
) -> Run:
    body = {
        "prompt": prompt,
        "max_tokens": max_tokens,
        "temperature": 0,
        "top_k": 1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,  # Locara would apply the manifest's default otherwise
        # No seed: greedy decoding needs none, and Locara evaluates a seeded request's
        # whole prompt (no prefix cache), while llama-server is sent cache_prompt.
        "stream": True,
        **server.extra,
    }
    started = time.perf_counter()
    first = last = 0.0
    n = 0
    async with client.stream("POST", f"{server.url}/v1/completions", json=body) as r:
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
    if n != max_tokens:
        raise RuntimeError(f"short answer: {n} of {max_tokens} tokens")
    return Run(first - started, n, last - first)


async def one_run(server: Server, prompt: str, args: argparse.Namespace) -> Run:
    async with _client(600) as client:
        return await stream_completion(client, server, prompt, args.tokens)


@dataclass
class Concurrency:
    errors: int
    aggregate_tps: float
    ttfts: list[float]


async def concurrent_runs(
    server: Server, clients: int, round_: int, args: argparse.Namespace
) -> Concurrency:
    async with _client(900, clients + 4) as client:

        async def one(i: int) -> Run | BaseException:
            try:
                prompt = unique(PROMPT, 1000 * (round_ + 1) + i)
                return await stream_completion(client, server, prompt, args.concurrent_tokens)
            except Exception as exc:  # counted as an error, reported below
                return exc

        started = time.perf_counter()
        results = await asyncio.gather(*(one(i) for i in range(clients)))
        wall = time.perf_counter() - started
    ok = [r for r in results if isinstance(r, Run)]
    errors = [r for r in results if not isinstance(r, Run)]
    for e in errors[:3]:
        print(f"    {server.name}, {clients} clients: error: {e!r}")
    tokens = sum(r.tokens for r in ok)
    return Concurrency(len(errors), tokens / wall if wall else 0.0, [r.ttft_s for r in ok])


async def shared_prefix_ttft(server: Server, i: int) -> tuple[float, float, int]:
    """(cold TTFT, warm TTFT, prompt tokens) for a ~1,500-token system prompt new in round i."""
    rules = " ".join(SYSTEM_RULE.format(i=k) for k in range(82))
    system = f"Session {i}. You are a support agent. {rules}"
    async with _client(600) as client:

        async def ask(question: str) -> tuple[float, int]:
            body = {
                "messages": [
                    {"role": "system", "content": system},
                    {"role": "user", "content": question},
                ],
                "max_tokens": 1,
                "temperature": 0,
                **server.extra,
            }
            started = time.perf_counter()
            r = await client.post(f"{server.url}/v1/chat/completions", json=body)
            r.raise_for_status()
            return time.perf_counter() - started, int(r.json()["usage"]["prompt_tokens"])

        cold, n_prompt = await ask("How do I reset my password?")
        warm, _ = await ask("How do I change my email address?")
    return cold, warm, n_prompt


# -- report -------------------------------------------------------------------------------
def pct(values: list[float], q: float) -> float:
    """The nearest-rank percentile (q=0.5 is the median of an odd count)."""
    s = sorted(values) or [0.0]
    return s[max(0, math.ceil(q * len(s)) - 1)]


def ratio(a: float, b: float) -> str:
    return f"{a / b:.3f}x" if b else "-"


def verdict(ok: bool) -> str:
    return "met" if ok else "NOT met"


def load_average() -> str:
    one, five, _ = os.getloadavg()
    return f"{one:.2f} (1 min), {five:.2f} (5 min) on {os.cpu_count()} CPUs"


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model reference (default: the default model)")
    ap.add_argument("--tokens", type=int, default=256, help="tokens per single-stream answer")
    ap.add_argument("--repeats", type=int, default=5, help="single-stream and prefix rounds")
    ap.add_argument("--clients", default="4,16", help="concurrent client counts")
    ap.add_argument("--concurrent-tokens", type=int, default=64)
    # Seven rounds: the median of three moved by ±0.03 between runs at 16 clients.
    ap.add_argument("--concurrent-rounds", type=int, default=7)
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot (LOCARA_CTX)")
    ap.add_argument(
        "--parallel",
        type=int,
        default=None,
        help="slots (LOCARA_NUM_PARALLEL; default: the plan's)",
    )
    ap.add_argument(
        "--llama-cpp-python-server",
        action="store_true",
        help="also run llama_cpp.server (one request at a time; slow with many clients)",
    )
    ap.add_argument("--quick", action="store_true", help="2 repeats, 1 concurrent round")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.concurrent_rounds = 2, 1
    client_counts = [int(c) for c in args.clients.split(",") if c.strip()]

    # libgomp reads this when llama.cpp's library is loaded (resolve() loads it): the
    # direct loop then waits as both servers do.
    os.environ["GOMP_SPINCOUNT"] = SPIN_COUNT
    settings = Settings.from_env()
    resolved: ResolvedModel = resolve(
        settings, args.model, request=PlanRequest(default_ctx=args.ctx, n_parallel=args.parallel)
    )
    plan = resolved.plan
    if plan.runtime != "llama-server" or plan.n_ctx is None:
        raise SystemExit(
            f"Locara's plan runs {resolved.manifest.id} {plan.runtime or plan.backend}, "
            "not in a llama-server worker: run ./scripts/install.sh to build llama-server"
        )
    binary = locate_llama_server()
    model = resolved.blob.path
    print(
        f"model {resolved.manifest.id} ({resolved.artifact.quant}, "
        f"{model.stat().st_size / 1e6:.0f} MB) · plan: {plan.n_threads}+{plan.n_threads_batch} threads (decode+prompt), "
        f"{plan.n_parallel} slots x {plan.n_ctx} ctx · greedy"
    )
    print(f"llama-server: {binary.path} ({binary.version})")
    print(f"load average before: {load_average()}")
    print(f"prompt: {PROMPT!r}\n")

    with ExitStack() as stack:
        loc = stack.enter_context(locara_server(settings.home, args))
        bare = stack.enter_context(llama_server(binary, model, plan, worker_environment(binary)))
        servers = [loc, bare]
        if args.llama_cpp_python_server:
            servers.append(stack.enter_context(llama_cpp_server(model, plan, args)))
        direct = DirectLoop(model, plan, args)
        stack.callback(direct.close)

        def serve(s: Server) -> Callable[[str], Run]:
            return lambda prompt: asyncio.run(one_run(s, prompt, args))

        single: dict[str, Callable[[str], Run]] = {s.name: serve(s) for s in servers}
        single[DIRECT] = lambda prompt: direct.run(prompt, args.tokens)
        runs: dict[str, list[Run]] = {name: [] for name in single}
        rss_start: dict[str, int] = {}
        for i in range(args.repeats + 1):
            for name in rotated(list(single), i):
                result = single[name](unique(PROMPT, i))
                if i:  # round 0 is the warm-up (and loads Locara's model)
                    runs[name].append(result)
            if i == 0:
                same = check_same_settings(loc, bare)
                print(f"both llama-servers run with: {same}\n")
                time.sleep(1)
                rss_start = {s.name: tree_rss(s.pid) for s in servers}

        conc: dict[tuple[str, int], list[Concurrency]] = {}
        for r in range(args.concurrent_rounds):
            for clients in client_counts:
                for s in rotated(servers, r):
                    c = asyncio.run(concurrent_runs(s, clients, r, args))
                    conc.setdefault((s.name, clients), []).append(c)

        prefix: dict[str, list[tuple[float, float, int]]] = {}
        for i in range(args.repeats + 1):
            for s in rotated(servers[:2], i):  # llama_cpp.server keeps no prefix per slot
                timed = asyncio.run(shared_prefix_ttft(s, i))
                if i:  # round 0 warms the chat route
                    prefix.setdefault(s.name, []).append(timed)
        time.sleep(1)
        rss_end = {s.name: tree_rss(s.pid) for s in servers}
    print(f"load average after: {load_average()}\n")

    # 1. single stream
    med = {
        n: (statistics.median(r.tps for r in rs), statistics.median(r.ttft_s for r in rs))
        for n, rs in runs.items()
    }
    base_tps, base_ttft = med[LLAMA_SERVER]
    print(
        f"single stream, {args.tokens} tokens, median of {args.repeats}\n"
        f"{'':24} {'gen tok/s':>10} {'/ llama-server':>15} {'TTFT ms':>9} {'/ llama-server':>15}"
    )
    for name, (tps, ttft) in med.items():
        print(
            f"{name:24} {tps:10.1f} {ratio(tps, base_tps):>15} {ttft * 1000:9.1f}"
            f" {ratio(ttft, base_ttft):>15}"
        )
    single_ratio = med[LOCARA][0] / base_tps
    print(
        f"Locara / llama-server single-stream tok/s: {single_ratio:.3f}x "
        f"(goal >= 0.97x: {verdict(single_ratio >= 0.97)})"
    )

    # 2. concurrency
    print(
        f"\nconcurrent streaming clients, {args.concurrent_tokens} tokens each, "
        f"{args.concurrent_rounds} round(s); aggregate: median round, TTFT: all rounds pooled"
    )
    print(
        f"{'server':20} {'clients':>7} {'errors':>7} {'aggregate tok/s':>16} "
        f"{'TTFT p50 ms':>12} {'TTFT p95 ms':>12}"
    )
    summary: dict[tuple[str, int], tuple[int, float, float, float]] = {}
    for clients in client_counts:
        for s in servers:
            cs = conc[(s.name, clients)]
            ttfts = [t for c in cs for t in c.ttfts]
            row = (
                sum(c.errors for c in cs),
                statistics.median(c.aggregate_tps for c in cs),
                pct(ttfts, 0.5),
                pct(ttfts, 0.95),
            )
            summary[(s.name, clients)] = row
            print(
                f"{s.name:20} {clients:7d} {row[0]:7d} {row[1]:16.1f} "
                f"{row[2] * 1000:12.0f} {row[3] * 1000:12.0f}"
            )
        a, b = summary[(LOCARA, clients)], summary[(LLAMA_SERVER, clients)]
        print(
            f"{'Locara / llama-server':20} {clients:7d} {'':7} {ratio(a[1], b[1]):>16} "
            f"{ratio(a[2], b[2]):>12} {ratio(a[3], b[3]):>12}"
        )
    errors = sum(v[0] for k, v in summary.items() if k[0] == LOCARA)
    top = max(client_counts)
    agg = summary[(LOCARA, top)][1] / summary[(LLAMA_SERVER, top)][1]
    print(
        f"Locara / llama-server aggregate tok/s at {top} clients: {agg:.3f}x "
        f"(goal >= 0.95x: {verdict(agg >= 0.95)}); Locara errors: {errors} "
        f"(goal 0: {verdict(errors == 0)})"
    )

    # 3. prefix cache
    print(f"\nshared system prompt, chat, 1 token out, median of {args.repeats}")
    print(
        f"{'server':20} {'prompt tokens':>13} {'cold TTFT ms':>13} {'warm TTFT ms':>13} {'cold/warm':>10}"
    )
    pre = {}
    for name in (LOCARA, LLAMA_SERVER):
        rs = prefix[name]
        cold = statistics.median(r[0] for r in rs)
        warm = statistics.median(r[1] for r in rs)
        pre[name] = (cold, warm)
        print(
            f"{name:20} {rs[0][2]:13d} {cold * 1000:13.1f} {warm * 1000:13.1f} {cold / warm:9.1f}x"
        )
    (lc, lw), (sc, sw) = pre[LOCARA], pre[LLAMA_SERVER]
    print(f"{'Locara / llama-server':20} {'':13} {ratio(lc, sc):>13} {ratio(lw, sw):>13}")

    # 4. memory
    print("\nidle RSS with the model loaded (Locara: server process + its llama-server worker)")
    print(f"{'server':20} {'after warm-up MB':>17} {'at the end MB':>14}")
    for s in servers:
        print(f"{s.name:20} {rss_start[s.name] / 1e6:17.0f} {rss_end[s.name] / 1e6:14.0f}")
    print(
        f"{'Locara / llama-server':20} "
        f"{ratio(rss_start[LOCARA], rss_start[LLAMA_SERVER]):>17} "
        f"{ratio(rss_end[LOCARA], rss_end[LLAMA_SERVER]):>14}"
    )


if __name__ == "__main__":
    main()
