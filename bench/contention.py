"""Decode speed alone and beside a one-core busy loop: does a busy neighbour cost a
proportional slowdown, or 50-200x? (issue #16, item 7)

llama.cpp's OpenMP threads spin while they wait for each other, so when another process
takes one core of a small machine the thread that shares it is descheduled while its
partner spins: each token waits for a whole scheduler slice. Locara's plan leaves one
core to the rest of the machine for decoding (all cores for prompts) and starts its
llama-server worker with a short spin (``GOMP_SPINCOUNT``). Three contenders serve the
same GGUF, in one run:

- Locara's server, its default plan (``/v1/completions``, streamed);
- ``llama-server`` with llama.cpp's defaults: no ``-t`` (llama.cpp picks its thread
  count), no wait settings; only slots and context are set, to Locara's plan;
- the same ``llama-server`` with ``OMP_WAIT_POLICY=PASSIVE`` (threads sleep at every
  wait), the usual advice for busy machines, nothing else changed.

Each runs alone on the machine (one contender at a time: an idle server whose threads
spin would slow the others), answering a greedy counting prompt alone, then beside a
separate Python process spinning ``while True: pass`` (started and killed by this
script, and ended by SIGALRM if the script dies first), round after round. Every
request has a deadline (``--timeout``), and an answer not finished by then is reported
as "> N s" with the rate of the tokens that did arrive as an upper bound. Before each
request the script waits until the server is idle, so a cut-off answer still being
decoded cannot slow the next one. It prints, per contender, decode tok/s alone
and beside the busy loop, the slowdown (alone / beside; goal for Locara <= 2.5x), and
the time of the whole answer both ways.

    .venv/bin/python bench/contention.py            # 1-3 minutes (3 when answers hit the deadline)
    .venv/bin/python bench/contention.py --quick    # ~30-60 s
"""

from __future__ import annotations

import argparse
import asyncio
import math
import os
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, suppress
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import httpx
import psutil

from locara.backends.worker_binary import WorkerBinary, locate_llama_server, worker_environment
from locara.engine.loader import resolve
from locara.planner.plan import Plan, PlanRequest
from locara.settings import Settings
from serving import free_port, served

PROMPT = "Count from 1 to 1000, separated by commas: 1, 2, 3,"
LOCARA = "Locara (its plan)"
DEFAULTS = "llama-server, llama.cpp defaults"
PASSIVE = "llama-server, OMP_WAIT_POLICY=PASSIVE"
GOAL = 2.5


@dataclass
class Answer:
    started: float
    tokens: int = 0
    first: float = 0.0
    last: float = 0.0
    ended: float = 0.0
    timed_out: bool = False

    @property
    def seconds(self) -> float:
        return self.ended - self.started

    @property
    def tps(self) -> float:
        """Decode tok/s; for an answer cut off by its deadline, an upper bound."""
        if self.timed_out:
            # At most this many tokens arrived in the window: the answer was slower.
            return max(self.tokens, 1) / self.seconds
        span = self.last - self.first
        return (self.tokens - 1) / span if self.tokens > 1 and span > 0 else 0.0


@dataclass
class Server:
    name: str
    url: str
    pid: int
    log: IO[bytes]
    extra: dict[str, Any] = field(default_factory=dict)


@contextmanager
def process(
    name: str, cmd: list[str], env: dict[str, str], url: str, probe: str, extra: dict[str, Any]
) -> Iterator[Server]:
    with served(name, cmd, env, url, probe) as (pid, log):
        yield Server(name, url, pid, log, extra)


def locara_server(home: Path, args: argparse.Namespace) -> AbstractContextManager[Server]:
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env.update({"LOCARA_HOME": str(home), "LOCARA_CTX": str(args.ctx), "LOCARA_KEEP_ALIVE": "-1"})
    cmd = [sys.executable, "-m", "locara", "serve", "--port", str(port)]
    extra = {"model": args.model} if args.model else {}
    return process(LOCARA, cmd, env, f"http://127.0.0.1:{port}", "/health", extra)


def llama_server(
    name: str, binary: WorkerBinary, model: Path, plan: Plan, passive: bool
) -> AbstractContextManager[Server]:
    assert plan.n_ctx is not None
    port = free_port()
    cmd = [
        str(binary.path), "--model", str(model), "--alias", "model",
        "--host", "127.0.0.1", "--port", str(port), "--no-webui",
        "--parallel", str(plan.n_parallel), "--ctx-size", str(plan.n_ctx * plan.n_parallel),
    ]  # fmt: skip
    env = worker_environment(binary)  # finds its libraries
    env.pop("GOMP_SPINCOUNT", None)  # Locara's setting: neither contender has it
    if passive:
        env["OMP_WAIT_POLICY"] = "PASSIVE"
    extra = {"model": "model", "cache_prompt": True}
    return process(name, cmd, env, f"http://127.0.0.1:{port}", "/health", extra)


def threads_of(server: Server) -> str:
    """The thread count llama.cpp chose, from its log (Locara's worker: from its flags)."""
    if server.name == LOCARA:
        for p in psutil.Process(server.pid).children(recursive=True):
            argv = p.cmdline()
            if "--threads" in argv:
                return argv[argv.index("--threads") + 1]
        return "?"
    server.log.seek(0)
    found = re.findall(rb"n_threads = (\d+)", server.log.read())
    return found[0].decode() if found else "?"


def wait_policy(server: Server) -> str:
    procs = [psutil.Process(server.pid), *psutil.Process(server.pid).children(recursive=True)]
    for p in reversed(procs):  # Locara's worker is the one that decodes
        if "llama-server" in p.name():
            env = p.environ()
            if "OMP_WAIT_POLICY" in env:
                return env["OMP_WAIT_POLICY"]
            if "GOMP_SPINCOUNT" in env:
                return f"spin {env['GOMP_SPINCOUNT']} then sleep"
            return "unset (spins)"
    return "?"


def cpu_seconds(pid: int) -> float:
    total = 0.0
    root = psutil.Process(pid)
    for p in [root, *root.children(recursive=True)]:
        with suppress(psutil.NoSuchProcess):
            t = p.cpu_times()
            total += t.user + t.system
    return total


def wait_idle(servers: list[Server], limit_s: float = 20.0) -> None:
    """Until no server uses more than a tenth of a core (a cancelled answer may still run)."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        before = [cpu_seconds(s.pid) for s in servers]
        time.sleep(0.3)
        if all(cpu_seconds(s.pid) - b < 0.03 for s, b in zip(servers, before, strict=True)):
            return


@contextmanager
def busy_core(bound_s: float) -> Iterator[int]:
    """One other process spinning on one core; SIGALRM ends it if this script cannot.

    It runs in a session of its own, like any other program a user starts: Linux's
    autogroup scheduler shares the CPU between sessions, so a spinner in this script's
    session would compete differently with a server in its own session (as Locara's
    worker is) than with one in the same session.
    """
    code = f"import signal\nsignal.alarm({math.ceil(bound_s)})\nwhile True:\n    pass\n"
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.DEVNULL, start_new_session=True
    )
    try:
        time.sleep(0.5)  # it is spinning before the first request starts
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()


async def answer(server: Server, tokens: int, timeout_s: float, i: int) -> Answer:
    body = {
        "prompt": f"Run {i}. {PROMPT}",
        "max_tokens": tokens,
        "temperature": 0,
        "top_k": 1,
        "top_p": 1.0,
        "min_p": 0.0,
        "repeat_penalty": 1.0,
        "stream": True,
        **server.extra,
    }
    a = Answer(time.perf_counter())
    limits = httpx.Limits(max_keepalive_connections=0)
    async with httpx.AsyncClient(timeout=timeout_s + 5, limits=limits) as client:
        try:
            async with asyncio.timeout(timeout_s):
                async with client.stream("POST", f"{server.url}/v1/completions", json=body) as r:
                    if r.status_code != 200:
                        await r.aread()
                        raise SystemExit(f"{server.name}: HTTP {r.status_code}: {r.text[:200]}")
                    buf = b""
                    async for block in r.aiter_raw():
                        now = time.perf_counter()
                        buf += block
                        *events, buf = buf.split(b"\n\n")
                        for e in events:
                            if not e.startswith(b"data: {") or b'"text":""' in e:
                                continue
                            if b'"error"' in e[:20]:
                                raise SystemExit(f"{server.name}: {e.decode(errors='replace')}")
                            a.tokens += 1
                            a.first = a.first or now
                            a.last = now
        except TimeoutError:
            a.timed_out = True  # leaving the block closed the stream: the server cancels
    a.ended = time.perf_counter()
    return a


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("--model", default=None, help="model reference (default: the default model)")
    ap.add_argument("--tokens", type=int, default=64, help="tokens per answer")
    ap.add_argument("--repeats", type=int, default=3, help="rounds after the warm-up")
    ap.add_argument("--timeout", type=float, default=30.0, help="deadline per answer, seconds")
    ap.add_argument("--ctx", type=int, default=4096, help="context per slot (LOCARA_CTX)")
    ap.add_argument("--quick", action="store_true", help="1 round, 32 tokens, 20 s deadline")
    args = ap.parse_args()
    if args.quick:
        args.repeats, args.tokens, args.timeout = 1, 32, 20.0

    settings = Settings.from_env()
    resolved = resolve(settings, args.model, request=PlanRequest(default_ctx=args.ctx))
    plan = resolved.plan
    if plan.runtime != "llama-server":
        raise SystemExit("Locara's plan does not use llama-server here: run ./scripts/install.sh")
    binary = locate_llama_server()
    model = resolved.blob.path
    one, five, _ = os.getloadavg()
    print(
        f"model {resolved.manifest.id} · {os.cpu_count()} CPUs, "
        f"{psutil.cpu_count(logical=False)} physical cores · {plan.n_parallel} slots x "
        f"{plan.n_ctx} ctx · {args.tokens}-token greedy answers · median of {args.repeats} "
        f"after a warm-up · deadline {args.timeout:.0f} s"
    )
    print(f"load average before: {one:.2f} (1 min), {five:.2f} (5 min)")
    if one > 0.5:
        print("  the machine is busy: 'alone' is not alone, and the ratios are noisy")

    # One contender on the machine at a time: an idle server with spinning threads (the
    # defaults contender) would otherwise slow the others' "alone" rounds, and a
    # cut-off answer still being decoded would slow the next contender.
    contenders: list[tuple[str, Any]] = [
        (LOCARA, lambda: locara_server(settings.home, args)),
        (DEFAULTS, lambda: llama_server(DEFAULTS, binary, model, plan, passive=False)),
        (PASSIVE, lambda: llama_server(PASSIVE, binary, model, plan, passive=True)),
    ]
    results: dict[str, dict[str, list[Answer]]] = {}
    print()
    for name, start in contenders:
        with start() as server:

            def ask(i: int, s: Server = server) -> Answer:
                wait_idle([s])
                return asyncio.run(answer(s, args.tokens, args.timeout, i))

            ask(0)  # warm-up: loads the model, fills caches
            print(f"{name:40} threads {threads_of(server):>2} · wait policy {wait_policy(server)}")
            got: dict[str, list[Answer]] = {"alone": [], "busy": []}
            for r in range(1, args.repeats + 1):
                got["alone"].append(ask(r))
                # Bounded: the answer's deadline plus the idle wait, with room to spare.
                with busy_core(args.timeout + 55):
                    got["busy"].append(ask(100 + r))
            results[name] = got
    one, five, _ = os.getloadavg()
    print(f"load average after: {one:.2f} (1 min), {five:.2f} (5 min)\n")

    print(
        f"{'':40} {'alone tok/s':>11} {'beside busy':>12} {'slowdown':>9}"
        f" {'answer alone':>13} {'beside busy':>12} {'slowdown':>9}"
    )
    slowdowns: dict[str, tuple[float, bool]] = {}
    for name, got in results.items():
        alone, busy = got["alone"], got["busy"]
        cut_alone, cut = sum(a.timed_out for a in alone), sum(a.timed_out for a in busy)
        a_tps = statistics.median(a.tps for a in alone)
        b_tps = statistics.median(a.tps for a in busy)
        slowdowns[name] = (a_tps / b_tps, cut + cut_alone > 0)
        # A cut-off answer took longer than its deadline: it counts as endless.
        a_s = statistics.median(math.inf if a.timed_out else a.seconds for a in alone)
        b_s = statistics.median(math.inf if a.timed_out else a.seconds for a in busy)
        bound, over = ("≤", "≥") if cut else ("", "")
        # Both rates upper bounds (alone cut off too): their ratio bounds nothing.
        tps_slowdown = "-" if cut_alone else f"{over}{a_tps / b_tps:.1f}x"
        print(
            f"{name:40} {a_tps:11.1f} {bound + f'{b_tps:.1f}':>12} "
            f"{tps_slowdown:>9} {seconds(a_s, args.timeout):>13} "
            f"{seconds(b_s, args.timeout):>12} {answer_slowdown(a_s, b_s, args.timeout):>9}"
        )
        if cut or cut_alone:
            print(
                f"{'':40} (cut off at the {args.timeout:g} s deadline: {cut_alone} of "
                f"{len(alone)} answers alone, {cut} of {len(busy)} beside the busy loop)"
            )
    slow, cut = slowdowns[LOCARA]
    print(
        f"\nLocara's slowdown beside one busy core: {'≥' if cut else ''}{slow:.2f}x "
        f"(goal <= {GOAL}x: {'met' if slow <= GOAL and not cut else 'NOT met'})"
    )


def seconds(s: float, deadline: float) -> str:
    return f"> {deadline:g} s" if math.isinf(s) else f"{s:.2f} s"


def answer_slowdown(alone_s: float, busy_s: float, deadline: float) -> str:
    if math.isinf(alone_s):
        return "-"
    return f"> {deadline / alone_s:.1f}x" if math.isinf(busy_s) else f"{busy_s / alone_s:.1f}x"


if __name__ == "__main__":
    main()
