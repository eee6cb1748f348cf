"""``locara ps``: the models the running server has loaded, and the plan behind each.

Like ``ollama ps``, it asks the server (its ``/api/ps``): the address comes from the
server's own state file (``locara start``/``serve`` write it), else LOCARA_HOST and
LOCARA_PORT. A server that requires tokens is asked with LOCARA_API_TOKEN.
"""

from __future__ import annotations

import datetime as dt
import os
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.errors import UsageError


def _server_url() -> str:
    from locara.cli.serve import _client_host, _running

    cfg = settings()
    state = _running(cfg)
    if state is not None:
        return f"http://{_client_host(str(state['host']))}:{state['port']}"
    return f"http://{_client_host(cfg.host)}:{cfg.port}"


def _processor(m: dict[str, Any]) -> str:
    """Ollama's PROCESSOR column: where the layers run."""
    info = m.get("locara", {})
    if info.get("backend") == "mlx":
        return "100% GPU" if m.get("size_vram") else "100% CPU"
    layers = info.get("options", {}).get("n_gpu_layers", 0)
    total = info.get("n_layers") or 0
    gpu = round(100 * min(layers, total) / total) if total else 0
    if gpu == 0:
        return "100% CPU"
    if gpu == 100:
        return "100% GPU"
    return f"{100 - gpu}%/{gpu}% CPU/GPU"


def _until(m: dict[str, Any]) -> str:
    info = m.get("locara", {})
    if info.get("in_flight"):
        return f"in use ({info['in_flight']} request(s))"
    expires = info.get("expires_at")
    if expires is None:
        return "forever"
    when = dt.datetime.fromisoformat(str(expires).replace("Z", "+00:00"))
    left = int((when - dt.datetime.now(dt.UTC)).total_seconds())
    if left <= 0:
        return "now"
    minutes, seconds = divmod(left, 60)
    return f"in {minutes} min {seconds} s" if minutes else f"in {seconds} s"


def describe(m: dict[str, Any]) -> list[str]:
    """One loaded model as lines: the table row, what the plan decided, and why."""
    info = m.get("locara", {})
    opts = info.get("options", {})
    ctx = f"{m.get('context_length')} x {opts.get('n_parallel', 1)}"
    lines = [
        f"{m['name']:28} {info.get('backend', '-'):9} {human_size(m.get('size')):>9} "
        f"{_processor(m):16} {ctx:12} {_until(m)}"
    ]
    lines.append(
        f"  {'embedding' if info.get('embedding') else 'generation'}: "
        f"{opts.get('n_gpu_layers', 0)}/{info.get('n_layers')} GPU layers, "
        f"KV {opts.get('kv_type')}"
        + (", flash attention" if opts.get("flash_attn") else "")
        + f", threads {opts.get('n_threads')}+{opts.get('n_threads_batch')}, batch {opts.get('n_batch')}, "
        f"{human_size(info.get('ram_bytes'))} of a {human_size(info.get('budget_bytes'))} "
        "RAM budget" + (f", {human_size(m['size_vram'])} on the GPU" if m.get("size_vram") else "")
    )
    lines += [f"  why: {r}" for r in info.get("reasons", [])]
    lines += [f"  explicit: {o}" for o in info.get("overrides", [])]
    lines += [f"  warning: {w}" for w in info.get("warnings", [])]
    return lines


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Print the server's /api/ps answer.")
def ps(as_json: bool) -> None:
    """Show the models the running server has loaded.

    For each: backend, memory, where its layers run (CPU/GPU), context x parallel slots,
    when its keep-alive ends, and what the plan decided for it and why.
    """
    import httpx

    url = _server_url()
    token = os.environ.get("LOCARA_API_TOKEN", "").strip()
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    try:
        r = httpx.get(f"{url}/api/ps", timeout=10.0, headers=headers)
    except httpx.HTTPError as exc:
        raise UsageError(
            f"no Locara server answers at {url} ({exc})",
            "start one with: locara start (or point LOCARA_HOST/LOCARA_PORT at it)",
        ) from exc
    if r.status_code != 200:
        hint = "set LOCARA_API_TOKEN to a token of this server" if r.status_code == 401 else None
        raise UsageError(f"the server at {url} answered {r.status_code}: {r.text[:200]}", hint)
    models: list[dict[str, Any]] = r.json().get("models", [])
    if as_json:
        echo_json(models)
        return
    click.echo(f"{'NAME':28} {'BACKEND':9} {'SIZE':>9} {'PROCESSOR':16} {'CONTEXT':12} UNTIL")
    for m in models:
        for line in describe(m):
            click.echo(line)
