"""The benchmark runner: how fast a stored model is on this machine, measured.

Every repetition loads the model afresh (so no KV or prefix cache carries over) the way
its plan says, like every other load: the bench's context is an explicit option to the
planner, and the options the backend was given are recorded (``n_gpu_layers``,
``n_threads``, ``type_k``…) with the plan itself. What one repetition measures:

- ``load_s``: the backend's load of the stored file (``engine.loader.load``).
- ``pp``: prompt processing of ``n_prompt`` tokens (BOS + random token ids, as
  llama-bench does) in one ``eval``; ``pp_tps = n_prompt / seconds``.
- ``ttft_s``: that same prompt evaluation plus sampling the first token: what a
  request with an ``n_prompt``-token prompt waits for its first token.
- ``tg``: ``n_gen`` single-token decode steps at depth 0 (llama-bench's ``tg`` test);
  ``tg_tps = n_gen / seconds``.
- ``peak_rss_bytes``: the process's peak resident memory during the repetition (on
  Linux the kernel's high-water mark, reset before each load; elsewhere sampled).

Backends without a raw decode path (MLX) are measured through ``generate`` with a
greedy request; the result says ``"method": "generate"`` and the measured counts.
Each figure is reported as mean and sample standard deviation over repetitions, with
llama-bench's field names where it has them (``avg_ts``, ``stddev_ts``, ``samples_ns``…).
"""

from __future__ import annotations

import datetime as dt
import random
import re
import statistics
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from locara.backends.base import GenerationRequest, LoadedModel, LoadOptions, Sampling
from locara.engine.loader import ModelHandle, ResolvedModel
from locara.errors import (
    NoFitError,
    StoreError,
    UsageError,
)
from locara.planner.plan import MIN_EXPLICIT_CTX
from locara.registry.catalog import Registry
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.refs import ModelRef, parse_ref
from locara.settings import Settings
from locara.store.blobs import BlobStore, StoredBlob

# (what is happening, steps done, steps in all) for a progress display.
Progress = Callable[[str, int, int], None]


@dataclass(frozen=True)
class BenchParams:
    n_prompt: int = 512
    n_gen: int = 128
    repetitions: int = 3
    backend: str = "llama_cpp"
    # None: the plan decides (every load takes its options from the plan).
    n_threads: int | None = None
    n_batch: int | None = None
    kv_type: Literal["f16", "q8_0", "q4_0"] | None = None
    seed: int = 1234

    @property
    def n_ctx(self) -> int:
        # Room for the prompt and the generated tokens, plus tg's leading BOS.
        return self.n_prompt + self.n_gen + 1

    def validate(self) -> BenchParams:
        for name, value, low in (
            ("--n-prompt", self.n_prompt, 1),
            ("--n-gen", self.n_gen, 1),
            ("--repetitions", self.repetitions, 1),
        ):
            if value < low:
                raise UsageError(
                    f"invalid {name} {value}: must be >= {low}",
                    f"pass {name} {max(low, 1)} or more",
                )
        if self.n_threads is not None and self.n_threads < 1:
            raise UsageError(f"invalid --threads {self.n_threads}", "pass --threads 1 or more")
        if self.n_ctx < MIN_EXPLICIT_CTX:
            raise UsageError(
                f"--n-prompt {self.n_prompt} + --n-gen {self.n_gen} is a context of "
                f"{self.n_ctx} tokens; the smallest Locara loads is {MIN_EXPLICIT_CTX}",
                f"pass --n-prompt {MIN_EXPLICIT_CTX - self.n_gen - 1} or more",
            )
        return self


@dataclass(frozen=True)
class BenchTarget:
    """A stored model, planned for this bench, that fits."""

    reference: str
    resolved: ResolvedModel
    fit: dict[str, Any]

    @property
    def ref(self) -> ModelRef:
        return self.resolved.ref

    @property
    def manifest(self) -> ModelManifest:
        return self.resolved.manifest

    @property
    def artifact(self) -> Artifact:
        return self.resolved.artifact

    @property
    def blob(self) -> StoredBlob:
        return self.resolved.blob


# -- preparing ---------------------------------------------------------------------------


def require_backend(name: str) -> str:
    """The canonical backend name if it can run here; else UsageError/BackendUnavailableError."""
    from locara.backends.registry import canonical_name, get_backend

    key = canonical_name(name)
    get_backend(key)
    return key


def prepare(settings: Settings, reference: str, params: BenchParams) -> BenchTarget:
    """Find the stored artifact ``reference`` means for the backend and plan its bench.

    Never downloads: a model that is not stored is an error naming the pull command.
    The load is planned like any other (``engine.loader.resolve``) with the bench's
    context, backend and options as explicit options; a plan that does not fit this
    device, or only with a shorter context than the bench needs, is a NoFitError.
    """
    from locara.backends.registry import canonical_name
    from locara.engine.loader import resolve
    from locara.planner.plan import PlanRequest
    from locara.planner.select import select_artifact

    ref = parse_ref(reference)
    manifest = Registry(settings).get(ref.id)
    store = BlobStore(settings)
    key = canonical_name(params.backend)
    if key == "mlx" and not manifest.artifact_list("mlx"):
        key = "llama_cpp"  # MLX reads GGUF files directly
    artifact = select_artifact(manifest, ref, store, backend=key)
    sha = artifact.sha256
    label = f"{manifest.id}:{artifact.quant}" if artifact.quant and not ref.sha256 else str(ref)
    if sha is None or store.find(sha) is None:
        raise StoreError(
            f"{label} is not stored, so it cannot be benchmarked",
            f"fetch it first with: locara pull {label}",
        )
    blob = store.verify(sha)
    trained = manifest.context_length
    if artifact.format == "gguf":
        from locara.device.gguf_meta import read_gguf

        trained = read_gguf(blob.path).context_length or trained
    if trained and params.n_ctx > trained:
        raise UsageError(
            f"--n-prompt {params.n_prompt} + --n-gen {params.n_gen} needs a context of "
            f"{params.n_ctx} but {manifest.id} was trained for {trained}",
            "lower --n-prompt or --n-gen",
        )
    request = PlanRequest(
        n_ctx=params.n_ctx,
        backend=params.backend,
        kv_type=params.kv_type,
        n_threads=params.n_threads,
        n_batch=params.n_batch,
        n_parallel=1,  # one stream, as llama-bench measures it
        in_process=True,  # evaluates tokens directly, without sampling, like llama-bench
    )
    resolved = resolve(settings, f"{manifest.id}@sha256:{sha}", request=request)
    plan = resolved.plan
    label = f"{manifest.id}:{artifact.quant}" if artifact.quant else manifest.id
    if not plan.ok:
        raise NoFitError(
            f"{label} does not fit this device for a {params.n_ctx}-token bench with "
            f"{params.backend}: " + "; ".join(plan.reasons),
            list(plan.reasons),
            f"see the alternatives with: locara plan {manifest.id}"
            + (f" ({plan.alternatives[0]})" if plan.alternatives else ""),
        )
    if (plan.n_ctx or 0) < params.n_ctx:
        raise NoFitError(
            f"{label} fits this device only with a {plan.n_ctx}-token context and "
            f"{plan.kv_type} KV cache, not the {params.n_ctx} tokens this bench needs",
            list(plan.reasons) + list(plan.warnings),
            f"lower --n-prompt/--n-gen to fit {plan.n_ctx} tokens, or see: "
            f"locara plan {manifest.id}",
        )
    fit = {"planner": True, "memory": plan.to_dict()["memory"], "budget_bytes": plan.budget_bytes}
    return BenchTarget(reference, resolved, fit)


# -- measuring ---------------------------------------------------------------------------


def _read_hwm() -> int | None:
    try:
        text = Path("/proc/self/status").read_text()
    except OSError:
        return None
    m = re.search(r"VmHWM:\s+(\d+) kB", text)
    return int(m.group(1)) * 1024 if m else None


@contextmanager
def peak_rss() -> Iterator[list[int]]:
    """Yields a one-item list that holds the peak RSS (bytes) of the block when it ends.

    On Linux, writing 5 to /proc/self/clear_refs resets the kernel's high-water mark,
    which is exact; elsewhere a thread samples RSS every 5 ms.
    """
    import psutil

    out = [0]
    proc = psutil.Process()
    exact = False
    try:
        Path("/proc/self/clear_refs").write_text("5")
        exact = _read_hwm() is not None
    except OSError:
        exact = False
    stop = threading.Event()
    sampler: threading.Thread | None = None
    if not exact:

        def sample() -> None:
            while not stop.is_set():
                out[0] = max(out[0], int(proc.memory_info().rss))
                stop.wait(0.005)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
    try:
        yield out
    finally:
        if sampler is not None:
            stop.set()
            sampler.join()
        out[0] = max(out[0], int(proc.memory_info().rss))
        if exact:
            out[0] = max(out[0], _read_hwm() or 0)


@dataclass
class RepSample:
    load_s: float
    pp_s: float
    ttft_s: float
    tg_s: float
    peak_rss_bytes: int
    n_prompt: int
    n_gen: int


def _load(settings: Settings, target: BenchTarget) -> ModelHandle:
    from locara.engine.loader import load

    return load(settings, target.resolved)  # the plan's options, like every other load


def _measure_llama(
    model: Any, params: BenchParams, rng: random.Random
) -> tuple[float, float, float]:
    """(pp seconds, ttft seconds, tg seconds) on llama.cpp's own eval, like llama-bench."""
    llm = model._llm  # the raw llama_cpp.Llama: the bench needs eval without sampling
    n_vocab = int(llm.n_vocab())
    bos = int(llm.token_bos())
    bos = bos if bos >= 0 else 0
    prompt = [bos] + [rng.randrange(n_vocab) for _ in range(params.n_prompt - 1)]
    llm.reset()
    started = time.perf_counter()
    llm.eval(prompt)
    evaluated = time.perf_counter()
    llm.sample(temp=0.0)
    first = time.perf_counter()
    llm.reset()
    llm.eval([bos])
    steps = [rng.randrange(n_vocab) for _ in range(params.n_gen)]
    t0 = time.perf_counter()
    for tok in steps:
        llm.eval([tok])
    tg_s = time.perf_counter() - t0
    return evaluated - started, first - started, tg_s


def _measure_generate(
    model: LoadedModel, params: BenchParams, rng: random.Random
) -> tuple[float, float, float, int, int]:
    """The same figures through the backend's public ``generate`` (any backend)."""
    words = ["time", "river", "light", "stone", "garden", "music", "paper", "window"]
    text = " ".join(rng.choice(words) for _ in range(params.n_prompt))
    # Trim to about n_prompt tokens: a word is not always one token.
    while model.count_tokens(text) > params.n_prompt and " " in text:
        text = text.rsplit(" ", 1)[0]
    req = GenerationRequest(
        prompt=text, max_tokens=params.n_gen, sampling=Sampling(temperature=0.0)
    )
    last = None
    for chunk in model.generate(req):
        last = chunk
    assert last is not None and last.usage is not None and last.timings is not None
    t = last.timings
    return (
        t.prompt_s,
        t.ttft_s,
        t.generation_s,
        last.usage.prompt_tokens,
        last.usage.completion_tokens,
    )


def run_bench(
    settings: Settings,
    target: BenchTarget,
    params: BenchParams,
    progress: Progress | None = None,
    device: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Measure ``target`` ``params.repetitions`` times and return the result record."""
    note = progress or (lambda what, done, total: None)
    steps = params.repetitions * 3
    samples: list[RepSample] = []
    method = "decode" if params.backend == "llama_cpp" else "generate"
    name = f"{target.manifest.id}:{target.artifact.quant or target.artifact.format}"
    opts: LoadOptions | None = None  # what the backend was given (the same every load)
    for rep in range(params.repetitions):
        rng = random.Random(params.seed + rep)
        base = rep * 3
        note(f"{name} [{rep + 1}/{params.repetitions}] loading", base, steps)
        with peak_rss() as peak:
            handle = _load(settings, target)
            model, load_s, opts = handle.model, handle.load_s, handle.options
            try:
                note(
                    f"{name} [{rep + 1}/{params.repetitions}] pp{params.n_prompt}", base + 1, steps
                )
                if method == "decode":
                    pp_s, ttft_s, tg_s = _measure_llama(model, params, rng)
                    n_p, n_g = params.n_prompt, params.n_gen
                else:
                    pp_s, ttft_s, tg_s, n_p, n_g = _measure_generate(model, params, rng)
                    n_g = max(n_g - 1, 0)  # the first token came out of prompt processing
                note(f"{name} [{rep + 1}/{params.repetitions}] tg{params.n_gen}", base + 2, steps)
            finally:
                handle.close()
        samples.append(RepSample(load_s, pp_s, ttft_s, tg_s, peak[0], n_p, n_g))
    note(f"{name} done", steps, steps)
    assert opts is not None  # repetitions >= 1 (BenchParams.validate)
    info = device or device_info(settings)
    return _result(settings, target, params, opts, samples, method, info)


def _mean_sd(values: list[float]) -> tuple[float, float]:
    mean = statistics.fmean(values)
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return mean, sd


def _rates(counts: list[int], seconds: list[float]) -> list[float]:
    return [c / s if s > 0 else 0.0 for c, s in zip(counts, seconds, strict=True)]


def _test(
    name: str, n_prompt: int, n_gen: int, counts: list[int], secs: list[float]
) -> dict[str, Any]:
    ts = _rates(counts, secs)
    ns = [int(s * 1e9) for s in secs]
    avg_ts, sd_ts = _mean_sd(ts)
    avg_ns, sd_ns = _mean_sd([float(n) for n in ns])
    return {
        "name": name,
        "n_prompt": n_prompt,
        "n_gen": n_gen,
        "n_depth": 0,
        "avg_ts": round(avg_ts, 3),
        "stddev_ts": round(sd_ts, 3),
        "avg_ns": int(avg_ns),
        "stddev_ns": int(sd_ns),
        "samples_ts": [round(x, 3) for x in ts],
        "samples_ns": ns,
    }


def _params_str(n: int) -> str:
    for unit, div in (("B", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= div:
            return f"{n / div:.{0 if n >= div * 10 else 1}f}{unit}"
    return str(n)


def device_info(settings: Settings) -> dict[str, Any]:
    """The device facts a result is only valid for (from ``locara device``'s profile)."""
    from locara.device.profile import detect_profile

    p = detect_profile(settings)
    return {
        "os": p.os,
        "os_version": p.os_version,
        "arch": p.arch,
        "cpu_model": p.cpu_model,
        "cores_logical": p.cores_logical,
        "cores_performance": p.cores_performance,
        "cores_efficiency": p.cores_efficiency,
        "cpu_features": list(p.cpu_features),
        "ram_total_bytes": p.ram_total_bytes,
        "gpus": [
            {"kind": g.kind, "name": g.name, "memory_total_bytes": g.memory_total_bytes}
            for g in p.gpus
        ],
        "on_battery": p.on_battery,
    }


def build_info(backend: str) -> dict[str, Any]:
    """Which build of the backend ran: versions, and llama.cpp's compiled-in features."""
    from importlib.metadata import PackageNotFoundError, version

    from locara import __version__

    def ver(dist: str) -> str | None:
        try:
            return version(dist)
        except PackageNotFoundError:
            return None

    info: dict[str, Any] = {"locara_version": __version__}
    if backend == "llama_cpp":
        import llama_cpp

        info["llama_cpp_python_version"] = ver("llama-cpp-python")
        raw = llama_cpp.llama_print_system_info()
        info["system_info"] = (raw.decode() if isinstance(raw, bytes) else str(raw)).strip()
    else:
        info["mlx_version"] = ver("mlx")
        info["mlx_lm_version"] = ver("mlx-lm")
    return info


def _result(
    settings: Settings,
    target: BenchTarget,
    params: BenchParams,
    opts: LoadOptions,
    samples: list[RepSample],
    method: str,
    device: dict[str, Any],
) -> dict[str, Any]:
    from locara.device.gguf_meta import read_gguf

    pp = _test(
        f"pp{params.n_prompt}",
        params.n_prompt,
        0,
        [s.n_prompt for s in samples],
        [s.pp_s for s in samples],
    )
    tg = _test(
        f"tg{params.n_gen}", 0, params.n_gen, [s.n_gen for s in samples], [s.tg_s for s in samples]
    )
    ttft, ttft_sd = _mean_sd([s.ttft_s for s in samples])
    load, load_sd = _mean_sd([s.load_s for s in samples])
    rss, rss_sd = _mean_sd([float(s.peak_rss_bytes) for s in samples])
    model_type = model_size = n_params = None
    if target.artifact.format == "gguf":
        info = read_gguf(target.blob.path)
        model_size, n_params = info.tensor_bytes, info.n_params
        model_type = f"{info.architecture} {_params_str(info.n_params)} {info.quant}"
    build = build_info(params.backend)
    cpu = device.get("cpu_model") or ""
    gpus = ", ".join(str(g.get("name")) for g in device.get("gpus", []))
    now = dt.datetime.now(dt.UTC)
    result: dict[str, Any] = {
        # The keys the planner reads (see locara.bench.results.REQUIRED_KEYS).
        "model_id": target.manifest.id,
        "sha256": target.blob.sha256,
        "backend": params.backend,
        "quant": target.artifact.quant,
        "n_prompt": params.n_prompt,
        "n_gen": params.n_gen,
        "pp_tps": pp["avg_ts"],
        "tg_tps": tg["avg_ts"],
        "ttft_s": round(ttft, 5),
        "load_s": round(load, 5),
        "peak_rss_bytes": int(rss),
        "device": device,
        "timestamp": now.isoformat(timespec="seconds"),
        # Spread over repetitions.
        "pp_tps_stddev": pp["stddev_ts"],
        "tg_tps_stddev": tg["stddev_ts"],
        "ttft_s_stddev": round(ttft_sd, 5),
        "load_s_stddev": round(load_sd, 5),
        "peak_rss_bytes_stddev": int(rss_sd),
        "repetitions": params.repetitions,
        "method": method,
        "samples": {
            "load_s": [round(s.load_s, 5) for s in samples],
            "ttft_s": [round(s.ttft_s, 5) for s in samples],
            "peak_rss_bytes": [s.peak_rss_bytes for s in samples],
        },
        "tests": [pp, tg],
        # llama-bench's names for the same facts.
        "test_time": now.isoformat(timespec="seconds"),
        "model_filename": target.blob.path.name,
        "model_type": model_type,
        "model_size": model_size,
        "model_n_params": n_params,
        # What the backend was given: the plan's options (llama-bench's names).
        "n_batch": opts.n_batch,
        "n_ubatch": opts.n_batch,
        "n_threads": opts.n_threads,
        "n_ctx": opts.n_ctx,
        "type_k": opts.kv_type,
        "type_v": opts.kv_type,
        "n_gpu_layers": opts.n_gpu_layers,
        "flash_attn": opts.flash_attn,
        "use_mmap": True,
        "embeddings": opts.embedding,
        "backends": "CPU" if not opts.n_gpu_layers else "CPU," + gpus,
        "plan": target.resolved.plan.to_dict(),
        "cpu_info": cpu,
        "gpu_info": gpus,
        # llama-cpp-python does not expose the llama.cpp commit it was built from.
        "build_commit": None,
        "build_number": None,
        "build": build,
        "reference": target.reference,
        "fit_estimate": target.fit,
    }
    return result
