"""``locara recommend``: models for this device, by tier (fast / balanced / capable)."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import echo_json, human_size, settings
from locara.cli.device import current_profile
from locara.errors import NoFitError
from locara.planner.plan import local_gguf_paths
from locara.planner.rank import TASKS
from locara.planner.recommend import recommend as recommend_models
from locara.planner.results import read_bench_results
from locara.registry.catalog import Registry


@click.command()
@click.option(
    "--task", type=click.Choice(sorted(TASKS)), default="chat", show_default=True,
    help="What the model is for.",
)  # fmt: skip
@click.option("--ctx", type=click.IntRange(min=1), help="Context length wanted (tokens).")
@click.option(
    "--profile",
    "profile_file",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Recommend for a saved DeviceProfile.json instead of this machine.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def recommend(task: str, ctx: int | None, profile_file: Path | None, as_json: bool) -> None:
    """Recommend models for this device: size, expected memory and speed per tier."""
    cfg = settings()
    manifests = Registry(cfg).all()
    device = current_profile(profile_file)
    recs = recommend_models(
        device,
        manifests,
        task,
        n_ctx=ctx,
        bench_results=read_bench_results(cfg.bench_results_path, device),
        gguf_path_of=local_gguf_paths(cfg, manifests),
    )
    if as_json:
        echo_json(recs.to_dict())
        return
    gpu = ", ".join(f"{g.kind} {g.name}" for g in device.gpus) or "no GPU"
    click.echo(
        f"Hardware: {device.cpu_model or 'unknown CPU'}, {human_size(device.ram_total_bytes)} RAM "
        f"({human_size(device.ram_available_bytes)} available), {gpu}"
    )
    if not recs.tiers:
        click.echo(f"No {task} model fits this device.")
        for line in recs.not_fitting + recs.notes:
            click.echo(f"  - {line}")
        raise NoFitError(
            f"no {task} model fits this device",
            list(recs.not_fitting),
            "free memory, or add a smaller model to a directory on LOCARA_REGISTRY_PATH",
        )
    click.echo(f"\nRecommended {task} models:")
    for t in recs.tiers:
        tps = f"~{t.expected_tps:.1f} tok/s" if t.expected_tps else "speed unknown"
        measured = " measured" if t.tps_source and "measured" in t.tps_source else ""
        click.echo(
            f"  {t.tier:9} {t.model_id}:{t.quant or '-':8} {t.backend:9} "
            f"size {human_size(t.size_bytes):>8}  memory {human_size(t.memory_bytes):>8}  "
            f"{tps}{measured}  (ctx {t.n_ctx})"
        )
    for note in recs.notes:
        click.echo(f"\n{note[0].upper()}{note[1:]}.")
    if recs.not_fitting:
        click.echo("Not runnable here (see: locara plan MODEL):")
        for line in recs.not_fitting:
            click.echo(f"  - {line}")
