"""``locara plan MODEL``: how Locara would run a model here, and why not otherwise."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import echo_json, human_size, settings
from locara.cli.device import current_profile
from locara.device.profile import DeviceProfile, with_rpc_workers
from locara.engine.loader import plan_here
from locara.errors import NoFitError, UnknownModelError
from locara.planner.plan import Plan, PlanRequest, local_gguf_paths
from locara.planner.results import read_bench_results
from locara.registry.catalog import Registry
from locara.registry.refs import parse_ref

FEATURES = ("embeddings", "json_schema", "tools", "vision")


def _mib(n: int) -> str:
    return human_size(n)


def render_plan(plan: Plan, device: DeviceProfile, trained: int) -> list[str]:
    where = f"{device.os} {device.arch}, {device.cpu_model or 'unknown CPU'}"
    lines = [
        f"{plan.model_id} on {where}, {human_size(device.ram_total_bytes)} RAM "
        f"(model budget {human_size(plan.budget_bytes)})"
    ]
    if plan.ok and plan.estimate is None:  # speech and OCR: no context, KV cache or layers
        assert plan.artifact is not None
        art = plan.artifact
        lines += [
            f"  backend    {plan.backend}",
            f"  artifact   {art.quant or '-'} ({art.format}) {human_size(art.size_bytes)}"
            + f"  sha256:{(art.sha256 or '')[:12]}…",
            f"  threads    {plan.n_threads}",
            f"  memory     ~{_mib(plan.ram_bytes)} (weights and one input)",
        ]
    elif plan.ok:
        assert plan.artifact is not None and plan.estimate is not None
        art, est = plan.artifact, plan.estimate
        sha = (art.sha256 or "")[:12]
        lines += [
            f"  backend    {plan.backend}",
            f"  artifact   {art.quant or '-'} ({art.format}) {human_size(art.size_bytes)}"
            + (f"  sha256:{sha}…" if sha else ""),
            f"  context    {plan.n_ctx} tokens (trained {trained}), KV cache {plan.kv_type}"
            + (", flash attention" if plan.flash_attn else ""),
            f"  threads    {plan.n_threads} decoding, {plan.n_threads_batch} for prompts",
            f"  offload    {plan.n_gpu_layers} GPU layers",
            f"  memory     {_mib(est.total_bytes)} = weights {_mib(est.weights_bytes)}"
            + (f" + CPU repack {_mib(est.repack_bytes)}" if est.repack_bytes else "")
            + f" + KV {_mib(est.kv_bytes)} + compute {_mib(est.compute_bytes)}"
            + f" + runtime {_mib(est.overhead_bytes)}"
            + (" (from the GGUF header)" if plan.exact_shape else " (approximate)"),
            f"  speed      ~{plan.expected_tg_tps or 0:.1f} tok/s ({plan.tps_source})",
        ]
    else:
        lines.append("  nothing fits: no plan")
    if plan.reasons:
        lines.append("why:" if plan.ok else "reasons:")
        lines += [f"  - {r}" for r in plan.reasons]
    if plan.warnings:
        lines.append("warnings:")
        lines += [f"  - {w}" for w in plan.warnings]
    if plan.rejected:
        lines.append("rejected:")
        lines += [f"  - {r.backend} {r.quant or '-'}: {r.reason}" for r in plan.rejected]
    if plan.alternatives:
        lines.append("alternatives:")
        lines += [f"  - {a}" for a in plan.alternatives]
    return lines


@click.command()
@click.argument("model")
@click.option("--ctx", type=click.IntRange(min=1), help="Context length wanted (tokens).")
@click.option(
    "--feature",
    "features",
    multiple=True,
    type=click.Choice(FEATURES),
    help="A feature the request needs (repeatable).",
)
@click.option(
    "--backend", type=click.Choice(["llama_cpp", "mlx"]), help="Only consider this backend."
)
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Plan for a saved DeviceProfile.json instead of this machine.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def plan(
    model: str,
    ctx: int | None,
    features: tuple[str, ...],
    backend: str | None,
    profile_file: Path | None,
    as_json: bool,
) -> None:
    """Show the backend, quant, context, threads and offload chosen for MODEL, and why."""
    cfg = settings()
    ref = parse_ref(model)
    manifest = Registry(cfg).get(ref.id)
    device = current_profile(profile_file)
    if profile_file is None:
        device = with_rpc_workers(device, cfg.rpc)
    quant = ref.quant
    if ref.sha256:
        pinned = [(b, a) for b, a in manifest.all_artifacts() if a.sha256 == ref.sha256]
        if not pinned:
            raise UnknownModelError(
                model, [f"{manifest.id}@sha256:{a.sha256}" for _, a in manifest.all_artifacts()]
            )
        quant = pinned[0][1].quant
        backend = backend or ("mlx" if pinned[0][0] == "mlx" else "llama_cpp")
    request = PlanRequest(n_ctx=ctx, features=frozenset(features), backend=backend, quant=quant)
    result = plan_here(
        manifest,
        device,
        request,
        cfg.rpc,
        bench_results=read_bench_results(cfg.bench_results_path, device),
        gguf_path_of=local_gguf_paths(cfg, [manifest]),
    )
    if as_json:
        echo_json(result.to_dict())
    else:
        for line in render_plan(result, device, manifest.context_length):
            click.echo(line)
    if not result.ok:
        raise NoFitError(
            f"{manifest.id} does not fit this device",
            list(result.reasons),
            result.alternatives[0] if result.alternatives else None,
        )
