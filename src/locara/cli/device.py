"""``locara device``: what Locara sees of this machine (the DeviceProfile)."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import human_size, settings
from locara.device.profile import DeviceProfile, detect_profile, load_profile


def current_profile(profile_file: Path | None) -> DeviceProfile:
    """The profile in ``profile_file`` (a saved or synthetic one), else this machine's."""
    if profile_file is not None:
        return load_profile(profile_file)
    return detect_profile(settings())


def describe(p: DeviceProfile) -> list[str]:
    """The profile as readable lines; unknown values say why they are unknown."""

    def unknown(name: str) -> str:
        return f"unknown ({p.unknown[name]})" if name in p.unknown else "unknown"

    cores = f"{p.cores_logical or '?'} logical"
    if p.cores_performance is not None:
        cores += f", {p.cores_performance} performance"
        if p.cores_efficiency:
            cores += f" + {p.cores_efficiency} efficiency"
    ram = f"{human_size(p.ram_total_bytes)} total, {human_size(p.ram_available_bytes)} available"
    if p.cgroup_memory_limit_bytes is not None:
        ram += f" (cgroup limit {human_size(p.cgroup_memory_limit_bytes)})"
    lines = [
        f"OS        {p.os} {p.os_version} ({p.arch})",
        f"CPU       {p.cpu_model or unknown('cpu_model')}; {cores}",
        f"features  {', '.join(p.cpu_features) or 'none detected'}",
        f"RAM       {ram}",
    ]
    if p.gpus:
        for g in p.gpus:
            mem = human_size(g.memory_total_bytes) if g.memory_total_bytes else "memory unknown"
            extra = " unified memory" if g.unified_memory else ""
            if g.memory_free_bytes is not None:
                extra += f", {human_size(g.memory_free_bytes)} free"
            lines.append(f"GPU       {g.kind}: {g.name} ({mem}{extra})")
    else:
        lines.append(f"GPU       none ({p.unknown.get('gpus', 'none detected')})")
    for key, why in p.unknown.items():
        if key.startswith("gpus."):
            lines.append(f"          {key[5:]}: {why}")
    if p.battery is None:
        lines.append(f"battery   {unknown('battery')}")
    elif not p.battery.present:
        lines.append("battery   none (mains power)")
    else:
        plug = {True: "plugged in", False: "on battery", None: "power source unknown"}
        lines.append(f"battery   {p.battery.percent}% ({plug[p.battery.plugged_in]})")
    disk = human_size(p.disk_free_bytes) if p.disk_free_bytes is not None else unknown("disk")
    lines.append(f"store     {p.store_path} ({disk} free)")
    net = "offline" if p.offline else "online"
    if p.offline and "offline" in p.unknown:
        net += f" ({p.unknown['offline']})"
    lines.append(f"network   {net}")
    runtimes = ", ".join(sorted(p.supported_runtimes))
    lines.append(
        f"runtimes  {runtimes} (llama.cpp {'installed' if p.llama_cpp_installed else 'missing'})"
    )
    return lines


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the profile as JSON.")
@click.option(
    "-o",
    "--output",
    type=click.Path(dir_okay=False, path_type=Path),
    help="Also write the JSON profile to this file (e.g. DeviceProfile.json).",
)
def device(as_json: bool, output: Path | None) -> None:
    """Show this machine's device profile: CPU, memory, GPUs, battery, storage, network."""
    profile = detect_profile(settings())
    if output is not None:
        output.write_text(profile.to_json() + "\n", encoding="utf-8")
    if as_json:
        click.echo(profile.to_json())
        return
    for line in describe(profile):
        click.echo(line)
    if output is not None:
        click.echo(f"wrote {output}")
