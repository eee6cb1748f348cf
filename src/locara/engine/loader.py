"""From a reference to a loaded model: registry → store → plan → backend.

The one path every surface (CLI, server, bench) uses to get a model running.
``resolve()`` finds the artifact, makes its blob present and verified, and plans the
load for this device (``locara.planner``); ``load()`` hands that plan to the backend as
its ``LoadOptions``. Nothing else decides how a model runs: an explicit option reaches
the planner in the ``PlanRequest``, and the plan says it was applied.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING, Literal

from locara.backends.base import AdapterUse, LoadedModel, LoadOptions
from locara.device.profile import DeviceProfile
from locara.errors import NoFitError, UnsupportedFeatureError
from locara.planner.plan import Plan, PlanRequest
from locara.registry.catalog import Registry
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.refs import ModelRef, parse_ref
from locara.settings import Settings
from locara.store.blobs import BlobStore, StoredBlob
from locara.store.fetch import Progress, ensure_artifact

if TYPE_CHECKING:
    from locara.planner.results import BenchResult

KVType = Literal["f16", "q8_0", "q4_0"]
_KV_TYPES: dict[str, KVType] = {"f16": "f16", "q8_0": "q8_0", "q4_0": "q4_0"}
# (device, inode, size, mtime): the file a model was loaded from, to notice a new one.
FileIdentity = tuple[int, int, int, int]


@dataclass(frozen=True)
class ResolvedModel:
    ref: ModelRef
    manifest: ModelManifest
    artifact: Artifact
    blob: StoredBlob
    plan: Plan


@dataclass
class ModelHandle:
    resolved: ResolvedModel
    model: LoadedModel
    backend: str
    load_s: float
    options: LoadOptions  # exactly what the backend was given
    file_id: FileIdentity  # the blob's file as it was when the backend opened it
    # Holds the store lease on the blob while the model is loaded, so gc/rm skip it.
    _lease: contextlib.ExitStack = field(default_factory=contextlib.ExitStack, repr=False)

    @property
    def plan(self) -> Plan:
        return self.resolved.plan

    @property
    def remote_lost(self) -> bool:
        """Its layers were on RPC workers and its process died (a worker went away, most
        likely): it must be planned again, not restarted against the same workers."""
        from locara.backends.llama_server import LlamaServerModel

        return (
            bool(self.options.rpc_servers)
            and isinstance(self.model, LlamaServerModel)
            and not self.model.worker.alive
        )

    def close(self) -> None:
        try:
            self.model.close()
        finally:
            self._lease.close()


def file_identity(path: Path) -> FileIdentity:
    """The identity of the file at ``path`` now; a rewritten or replaced file differs."""
    st = os.stat(path)
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns)


def resolve(
    settings: Settings,
    reference: str | None,
    progress: Progress | None = None,
    *,
    request: PlanRequest | None = None,
    device: DeviceProfile | None = None,
) -> ResolvedModel:
    """Parse the reference, make its blob present and verified, and plan its load here.

    ``request`` carries what the caller needs and any explicit options (context, backend,
    GPU layers …); ``device`` defaults to ``current_device(settings)``. A model that
    does not fit still resolves (``plan.ok`` is False, with the reasons); ``load``
    refuses it. Explicit options no plan can honour (a context beyond the trained one)
    are a UsageError here, before anything is fetched.
    """
    from locara.backends.registry import llama_cpp_gpu_offload, llama_server_installed
    from locara.device.profile import current_device
    from locara.planner.plan import check_request, local_gguf_paths
    from locara.planner.results import read_bench_results
    from locara.planner.select import select_artifact

    ref = parse_ref(reference or settings.default_model)
    manifest = Registry(settings).get(ref.id)
    request = request or PlanRequest()
    if ref.quant and not request.quant:
        request = replace(request, quant=ref.quant)
    if ref.sha256:
        request = replace(request, sha256=ref.sha256)
    check_request(manifest, request)
    device = device or current_device(settings)
    results = read_bench_results(settings.bench_results_path, device)
    paths = local_gguf_paths(settings, [manifest])
    offload = llama_cpp_gpu_offload()
    worker = llama_server_installed()

    def plan_for(req: PlanRequest, gguf: dict[str, Path]) -> Plan:
        return plan_here(
            manifest,
            device,
            req,
            settings.rpc,
            bench_results=results,
            gguf_path_of=gguf,
            gpu_offload=offload,
            llama_server=worker,
        )

    first = plan_for(request, paths)
    backend = first.backend or request.backend or "llama_cpp"
    # The plan's backend names its artifacts key; MLX may read llama.cpp's GGUF files.
    key = backend if manifest.artifact_list(backend) else "llama_cpp"
    store = BlobStore(settings)
    # A stored or bundled artifact beats a download (so the default model runs offline);
    # the plan's own pick is what gets downloaded when nothing is at hand.
    artifact = select_artifact(manifest, ref, store, key, planned=first.artifact)
    blob = ensure_artifact(store, manifest, artifact, settings, progress)
    if any(src.startswith("derived://") for src in artifact.sources):
        from locara.ecology.lineage import record_derivation

        record_derivation(settings, artifact.sources, blob.sha256)
    plan = first
    # Adapters are bound to this very blob: plan the runtime that applies them.
    if not (first.ok and first.artifact == artifact and first.exact_shape):
        # Plan again for exactly this artifact, now with its real GGUF header.
        gguf = {**paths, blob.sha256: blob.path} if artifact.format == "gguf" else paths
        plan = plan_for(replace(request, sha256=artifact.sha256), gguf)
    return ResolvedModel(ref, manifest, artifact, blob, plan)


def plan_here(
    manifest: ModelManifest,
    device: DeviceProfile,
    request: PlanRequest,
    rpc: tuple[str, ...],
    *,
    bench_results: Iterable[BenchResult] = (),
    gguf_path_of: Mapping[str, Path] | None = None,
    gpu_offload: bool = True,
    llama_server: bool = True,
) -> Plan:
    """``plan_model``, with the layers it offloads going to the RPC workers ``rpc`` when
    ``device`` has them (``device.profile.with_rpc_workers``)."""
    from locara.planner.plan import plan_model

    def planned(offload: bool) -> Plan:
        return plan_model(
            manifest,
            device,
            request,
            bench_results=bench_results,
            gguf_path_of=gguf_path_of,
            gpu_offload=offload,
            llama_server=llama_server,
        )

    workers = next((g for g in device.gpus if g.kind == "rpc"), None)
    if workers is None or not rpc or not llama_server:
        return planned(gpu_offload)
    # RPC workers take layers only from a llama-server worker (llama-cpp-python in this
    # process has no RPC backend): a plan that runs in process is made without them.
    plan = planned(True)
    if plan.runtime != "llama-server":
        return planned(gpu_offload)
    if plan.ok and plan.n_gpu_layers:
        layers = plan.n_layers or plan.n_gpu_layers
        n = layers if plan.n_gpu_layers < 0 else min(plan.n_gpu_layers, layers)
        split = (
            f"{n} of {layers} layers on {len(rpc)} llama.cpp RPC worker(s), split by their "
            f"free memory: {workers.name.removeprefix('RPC workers ')}"
            + ("" if n >= layers else "; the rest on this machine's CPU")
        )
        plan = replace(plan, rpc=rpc, reasons=(*plan.reasons, split))
    return plan


def _bound_adapters(settings: Settings, resolved: ResolvedModel) -> tuple[AdapterUse, ...]:
    """Every adapter registered for this very blob (a worker loads them with the model)."""
    from locara.ecology.adapters import AdapterRegistry

    registry = AdapterRegistry(settings)
    return tuple(
        AdapterUse(m.id, m.sha256, registry.blob_path(m), 0.0)
        for m in registry.for_base(resolved.blob.sha256)
    )


def check_fits(resolved: ResolvedModel) -> Plan:
    """The plan, if it fits this device; else NoFitError with the planner's reasons."""
    plan = resolved.plan
    if not plan.ok or plan.backend is None:
        if resolved.artifact.format == "gguf":
            # A file the planner could not read is a broken model, not one too big: say so.
            from locara.device.fit import ModelShape
            from locara.device.gguf_meta import read_gguf

            ModelShape.from_gguf(read_gguf(resolved.blob.path))
        model = resolved.manifest.id
        raise NoFitError(
            f"{model} does not fit this device: " + "; ".join(plan.reasons),
            list(plan.reasons),
            f"see the alternatives with: locara plan {model}"
            + (f" ({plan.alternatives[0]})" if plan.alternatives else ""),
        )
    return plan


def load_options(plan: Plan) -> LoadOptions:
    """The plan as the backend reads it: every field comes from the plan."""
    assert plan.ok and plan.n_ctx is not None, "only a plan that fits can be loaded"
    return LoadOptions(
        n_ctx=plan.n_ctx,
        n_threads=plan.n_threads,
        n_threads_batch=plan.n_threads_batch,
        n_gpu_layers=plan.n_gpu_layers,
        embedding=plan.embedding,
        flash_attn=plan.flash_attn,
        kv_type=_KV_TYPES[plan.kv_type],
        n_batch=plan.n_batch,
        n_parallel=plan.n_parallel,
        rpc_servers=plan.rpc,
    )


def load(
    settings: Settings, resolved: ResolvedModel, opts: LoadOptions | None = None
) -> ModelHandle:
    """Load a resolved model the way its plan says, and record that it was used.

    Surfaces pass no ``opts``: the backend gets ``load_options(resolved.plan)``, and
    llama.cpp generation runs in a llama-server worker when the plan says so. Only
    backend tests and benchmark scripts that pin the backend's own options pass them,
    and get the plan's backend in process.
    A plan that does not fit raises NoFitError with its reasons; a backend that is not
    installed raises BackendUnavailableError with the install command; one that cannot
    read the artifact's format is refused.
    """
    from locara.backends.registry import get_backend

    plan = check_fits(resolved)
    manifest = resolved.manifest
    # Options pinned by the caller are the in-process backend's own (tests, benchmarks of
    # llama.cpp itself); the plan's worker runtime applies to loads the plan configures.
    worker = plan.runtime == "llama-server" and opts is None
    opts = opts or load_options(plan)
    if worker and resolved.artifact.format == "gguf":
        opts = replace(opts, lora=_bound_adapters(settings, resolved))
    name = plan.backend
    assert name is not None  # a plan that fits names its backend
    runtime = "llama_server" if worker else name
    engine = get_backend(runtime, log_dir=settings.logs_dir)
    if resolved.artifact.format not in engine.formats:
        raise UnsupportedFeatureError(
            f"the {name} backend cannot load {resolved.artifact.format} artifacts "
            f"(it reads {', '.join(sorted(engine.formats))})",
            f"choose another backend, or convert the model: locara convert {manifest.id}",
        )
    store = BlobStore(settings)
    lease = contextlib.ExitStack()
    lease.enter_context(store.lease(resolved.blob.sha256))
    started = time.perf_counter()
    try:
        file_id = file_identity(resolved.blob.path)
        model = engine.load(resolved.blob.path, manifest, opts)
    except BaseException:
        lease.close()
        raise
    load_s = time.perf_counter() - started
    store.touch(resolved.blob.sha256)
    return ModelHandle(resolved, model, name, load_s, opts, file_id, lease)
