"""``locara eval``: run a task suite on a candidate and record its FitnessVector.

A candidate is ``MODEL[+ADAPTER[:SCALE]…]``. It runs in process, greedily and seeded
(the same answers every run), so the peak RSS measured is the model's own and a
scorecard compares like with like.
"""

from __future__ import annotations

import platform
from collections.abc import Callable
from importlib.metadata import PackageNotFoundError, version

from locara.backends.base import GenerationRequest, Message, Sampling
from locara.ecology.adapters import AdapterRegistry, AdapterSpec, bind_loaded
from locara.ecology.fitness import FitnessDB, FitnessVector, ItemResult, peak_rss_bytes, summarize
from locara.ecology.suite import Suite
from locara.errors import UsageError
from locara.settings import Settings


def parse_candidate(text: str) -> tuple[str, list[AdapterSpec]]:
    """``MODEL+ADAPTER:SCALE+…`` → (model reference, adapter specs)."""
    model, *adapters = text.split("+")
    if not model.strip():
        raise UsageError(f"invalid candidate {text!r}", "write MODEL or MODEL+ADAPTER[:SCALE]")
    return model, [AdapterSpec.parse(a) for a in adapters]


def _versions() -> dict[str, str]:
    from locara.backends.worker_binary import LLAMA_CPP_COMMIT

    out = {"build_commit": LLAMA_CPP_COMMIT}
    for pkg in ("locara", "llama-cpp-python"):
        try:
            out[pkg] = version(pkg)
        except PackageNotFoundError:
            out[pkg] = "?"
    return out


def evaluate(
    settings: Settings,
    candidate: str,
    suite: Suite,
    on_item: Callable[[ItemResult], None] | None = None,
) -> FitnessVector:
    """Score ``candidate`` on ``suite`` and record the vector (returned with its run id)."""
    from locara.device.profile import current_device
    from locara.engine.loader import load, resolve
    from locara.planner.plan import PlanRequest

    model_ref, specs = parse_candidate(candidate)
    features = {"generation", "lora"} if specs else {"generation"}
    request = PlanRequest(features=frozenset(features), n_parallel=1, in_process=True)
    resolved = resolve(settings, model_ref, request=request)
    uses = bind_loaded(settings, specs, resolved, lora=True)  # refused before loading
    handle = load(settings, resolved)
    results: list[ItemResult] = []
    try:
        for item in suite.items:
            messages = ((Message("system", item.system),) if item.system else ()) + (
                Message("user", item.prompt),
            )
            req = GenerationRequest(
                messages=messages,
                max_tokens=item.max_tokens,
                sampling=Sampling(temperature=0.0, top_k=1, seed=0),
                adapters=uses,
            )
            chunks = list(handle.model.generate(req))
            last = chunks[-1]
            answer = "".join(c.text for c in chunks)
            assert last.timings is not None and last.usage is not None
            result = ItemResult(
                item.id,
                item.score(answer),
                answer,
                last.timings.ttft_s,
                last.usage.completion_tokens,
                last.timings.generation_s,
            )
            results.append(result)
            if on_item:
                on_item(result)
    finally:
        handle.close()
    utility, latency = summarize(results)
    device = current_device(settings)
    registry = AdapterRegistry(settings)
    adapter_sizes = sum(registry.get(u.id).files[0].size_bytes for u in uses)
    label = resolved.manifest.id + "".join(f"+{u.id}:{u.scale:g}" for u in uses)
    vec = FitnessVector(
        candidate=label,
        model_id=resolved.manifest.id,
        base_sha256=resolved.blob.sha256,
        adapters=[{"id": u.id, "sha256": u.sha256, "scale": u.scale} for u in uses],
        suite=suite.name,
        suite_sha256=suite.sha256,
        utility=utility,
        latency=latency,
        memory={"peak_rss_bytes": peak_rss_bytes()},
        privacy={"local_only": True, "escalations": 0},
        size={"model_size": resolved.blob.size_bytes, "adapters_size": adapter_sizes},
        build={**_versions(), "backend": handle.backend, "runtime": resolved.plan.runtime},
        device={
            "cpu_info": device.cpu_model,
            "os": f"{device.os} {device.os_version}",
            "arch": device.arch,
            "cores": device.cores_logical,
            "ram_total_bytes": device.ram_total_bytes,
            "python": platform.python_version(),
        },
        results=[
            {"id": r.id, "passed": r.passed, "answer": r.answer, "ttft_s": r.ttft_s}
            for r in results
        ],
    )
    _keep_suite(settings, suite)
    return FitnessDB(settings).record(vec)


def _keep_suite(settings: Settings, suite: Suite) -> None:
    """Store the suite's bytes under their digest, so a scorecard's suite hash resolves."""
    from locara.store.blobs import BlobStore

    store = BlobStore(settings)
    if store.find(suite.sha256) is None:
        meta = {"id": f"suite-{suite.name}", "format": "jsonl", "kind": "suite"}
        store.ingest([suite.data], suite.sha256, len(suite.data), "jsonl", meta)
    store.index.add_ref(suite.sha256, f"suite:{suite.name}")
