"""``locara adapter add|ls|show|rm|merge``: LoRA adapters bound to their base by digest."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import echo_json, human_size, settings


@click.group()
def adapter() -> None:
    """LoRA adapters: each bound to the SHA-256 of the base model it was made for."""


@adapter.command()
@click.argument("source", type=click.Path(path_type=Path))
@click.option(
    "--base", required=True, help="The base model: MODEL, MODEL:QUANT or MODEL@sha256:HEX."
)
@click.option("--id", "adapter_id", default=None, help="Adapter id (default: from the file name).")
@click.option("--version", default="1", show_default=True, help="Adapter version.")
@click.option("--task", default=None, help="What it was trained to do.")
@click.option("--niche", default=None, help="Where it is meant to be used.")
@click.option("--license", "license_", default="NOASSERTION", show_default=True, help="SPDX id.")
@click.option("--training-data", default=None, help="What it was trained on.")
@click.option("--description", default=None, help="One line about it.")
@click.option("--replace", is_flag=True, help="Replace an adapter with the same id.")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
def add(
    source: Path,
    base: str,
    adapter_id: str | None,
    version: str,
    task: str | None,
    niche: str | None,
    license_: str,
    training_data: str | None,
    description: str | None,
    replace: bool,
    as_json: bool,
) -> None:
    """Add SOURCE (a LoRA .gguf, or a PEFT directory, converted to GGUF) for --base.

    \b
    Examples:
      locara adapter add pirate.gguf --base smollm2-135m-instruct
      locara adapter add ./peft-out --base smollm2-135m-instruct@sha256:b179c9… --id pirate
    """
    from locara.ecology.adapters import AdapterRegistry, resolve_base

    cfg = settings()
    reg = AdapterRegistry(cfg)
    m = reg.add(
        source,
        resolve_base(cfg, base),
        adapter_id=adapter_id,
        version=version,
        task=task,
        niche=niche,
        license=license_,
        training_data=training_data,
        description=description,
        replace=replace,
    )
    if as_json:
        echo_json(m.model_dump())
        return
    click.echo(
        f"added {m.id}: LoRA rank {m.lora.rank}, alpha {m.lora.alpha:g}, "
        f"{', '.join(m.lora.target_modules)}; bound to {m.base.model_id} sha256:{m.base.sha256}"
    )
    click.echo(f"run it with: locara run {m.base.model_id} --adapter {m.id}", err=True)


@adapter.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls(as_json: bool) -> None:
    """List adapters: id, base (model and digest), rank, size."""
    from locara.ecology.adapters import AdapterRegistry

    items = AdapterRegistry(settings()).all()
    if as_json:
        echo_json([m.model_dump() for m in items])
        return
    if not items:
        click.echo("no adapters (add one with: locara adapter add FILE --base MODEL)")
        return
    click.echo(f"{'ID':<24} {'BASE':<28} {'DIGEST':<14} {'RANK':>4} {'SIZE':>9}  TASK")
    for m in items:
        click.echo(
            f"{m.id:<24} {m.base.model_id or '-':<28} {m.base.sha256[:12]:<14} "
            f"{m.lora.rank:>4} {human_size(m.files[0].size_bytes):>9}  {m.task or ''}"
        )


@adapter.command()
@click.argument("adapter_id")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(adapter_id: str, as_json: bool) -> None:
    """Show an adapter's manifest: base digest, file, scale convention, targets."""
    from locara.ecology.adapters import AdapterRegistry

    m = AdapterRegistry(settings()).get(adapter_id)
    if as_json:
        echo_json(m.model_dump())
        return
    src = m.lora.source
    lines = [
        f"id:        {m.id} (version {m.version}, kind {m.kind})",
        f"base:      {m.base.model_id} sha256:{m.base.sha256} ({m.base.architecture})",
        f"file:      {m.files[0].name} sha256:{m.sha256} ({human_size(m.files[0].size_bytes)})",
        f"lora:      rank {m.lora.rank}, alpha {m.lora.alpha:g} (llama.cpp: scale x alpha/rank)",
        f"source:    {src.format}, {src.convention}"
        + (f", alpha {src.alpha:g}" if src.alpha is not None else ""),
        f"targets:   {', '.join(m.lora.target_modules)}",
        f"license:   {m.license}",
    ]
    for label, value in (
        ("task", m.task),
        ("niche", m.niche),
        ("data", m.training_data),
        ("about", m.description),
    ):
        if value:
            lines.append(f"{label + ':':<10} {value}")
    lines.append(f"added:     {m.created_at}")
    click.echo("\n".join(lines))


@adapter.command()
@click.argument("adapter_id")
def rm(adapter_id: str) -> None:
    """Remove an adapter and (unless something else holds it) its file."""
    from locara.ecology.adapters import AdapterRegistry

    m = AdapterRegistry(settings()).remove(adapter_id)
    click.echo(f"removed {m.id} ({human_size(m.files[0].size_bytes)})")


@adapter.command()
@click.argument("base")
@click.argument("adapter_spec", metavar="ADAPTER[:SCALE]")
@click.option(
    "-o", "--output", type=click.Path(path_type=Path), required=True, help="GGUF to write."
)
@click.option("--register", "model_id", default=None, help="Also register it as model MODEL_ID.")
def merge(base: str, adapter_spec: str, output: Path, model_id: str | None) -> None:
    """Bake ADAPTER into BASE (an F16/F32 GGUF) and record the lineage edge.

    \b
    Example:
      locara adapter merge my-f16-base pirate -o pirate-merged.gguf --register pirate-merged
    """
    from locara.ecology.adapters import AdapterRegistry, AdapterSpec, resolve_base
    from locara.ecology.merge import merge_adapter, register_merged
    from locara.registry.catalog import Registry

    cfg = settings()
    spec = AdapterSpec.parse(adapter_spec)
    base_model = resolve_base(cfg, base)
    (use,) = AdapterRegistry(cfg).bind([spec], base_model)
    result = merge_adapter(cfg, base_model.path, base_model.sha256, use, output)
    click.echo(
        f"merged {use.id} (scale {use.scale:g}) into {base_model.model_id}: {result.tensors} "
        f"tensors; wrote {output} sha256:{result.sha256}"
    )
    if model_id:
        manifest = Registry(cfg).get(base_model.model_id or base)
        about = f"{manifest.id} with adapter {use.id} merged at scale {use.scale:g}"
        register_merged(cfg, manifest, model_id, result, about)
        click.echo(f"registered as {model_id} (run it with: locara run {model_id})")
    click.echo(f"lineage: locara lineage sha256:{result.sha256}", err=True)
