"""``locara ls`` and ``locara show``: what is stored, and what a model is."""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.registry.catalog import Registry
from locara.registry.refs import parse_ref
from locara.store.blobs import BlobStore
from locara.store.index import NOT_MODELS


def ago(ts: float | None) -> str:
    if ts is None:
        return "never"
    s = max(0.0, time.time() - ts)
    for unit, n in (("d", 86400), ("h", 3600), ("m", 60)):
        if s >= n:
            return f"{int(s // n)}{unit} ago"
    return "just now"


def _iso(ts: float | None) -> str | None:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat() if ts else None


@click.command()
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option("--all", "show_all", is_flag=True, help="Also list registry models not stored.")
def ls(as_json: bool, show_all: bool) -> None:
    """List models in the store: id, quant, size, last used."""
    cfg = settings()
    store = BlobStore(cfg)
    rows: list[dict[str, Any]] = []
    stored_ids: set[str] = set()
    for rec in store.index.blobs() if cfg.db_path.exists() else []:
        meta = store.read_meta(rec.sha256) or {}
        if meta.get("kind") in NOT_MODELS:
            continue  # an adapter or a task suite: locara adapter ls lists adapters
        stored_ids.add(rec.model_id or "")
        tree = meta.get("part_of")
        if isinstance(tree, str) and store.find(tree) is not None:
            continue  # one file of a multi-file artifact: listed as that artifact
        rows.append(
            {
                "id": rec.model_id,
                "quant": rec.quant,
                "format": rec.format,
                "size_bytes": rec.size_bytes,
                "sha256": rec.sha256,
                "stored": True,
                "last_used": _iso(rec.last_used),
                "_last": rec.last_used,
            }
        )
    if show_all:
        reg = Registry(cfg)
        for m in reg.all():
            for backend, art in m.all_artifacts():
                if art.sha256 and store.find(art.sha256) is not None:
                    continue
                rows.append(
                    {
                        "id": m.id,
                        "quant": art.quant,
                        "format": art.format,
                        "size_bytes": art.size_bytes,
                        "sha256": art.sha256,
                        "stored": False,
                        "last_used": None,
                        "_last": None,
                        "backend": backend,
                    }
                )
    if as_json:
        echo_json([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        return
    if not rows:
        click.echo('no models stored yet; try: locara run "Hello"  (or locara ls --all)')
        return
    click.echo(f"{'MODEL':32} {'QUANT':8} {'SIZE':>9}  {'LAST USED':12} SHA256")
    for r in rows:
        last = ago(r["_last"]) if r["stored"] else "not stored"
        sha = (r["sha256"] or "-")[:12]
        click.echo(
            f"{r['id'] or '?':32} {r['quant'] or '-':8} {human_size(r['size_bytes']):>9}  "
            f"{last:12} {sha}"
        )


@click.command()
@click.argument("model")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def show(model: str, as_json: bool) -> None:
    """Show MODEL's manifest, and its GGUF metadata when it is stored."""
    from locara.device.gguf_meta import read_gguf
    from locara.planner.select import select_artifact

    cfg = settings()
    ref = parse_ref(model)
    manifest = Registry(cfg).get(ref.id)
    store = BlobStore(cfg)
    artifact = select_artifact(manifest, ref, store)
    blob = store.find(artifact.sha256) if artifact.sha256 else None
    gguf: dict[str, Any] | None = None
    if blob is not None and artifact.format == "gguf":
        info = read_gguf(blob.path)
        gguf = {
            "architecture": info.architecture,
            "parameters": info.n_params,
            "quant": info.quant,
            "context_length": info.context_length,
            "layers": info.n_layers,
            "heads": info.n_heads,
            "kv_heads": info.n_kv_heads,
            "embedding_length": info.n_embd,
            "vocab_size": info.vocab_size,
            "tensor_bytes": info.tensor_bytes,
            "license": info.get("general.license"),
            "chat_template": info.chat_template,
        }
    data = {
        "manifest": manifest.model_dump(mode="json", by_alias=True),
        "selected_artifact": artifact.model_dump(mode="json"),
        "stored": blob is not None,
        "path": str(blob.path) if blob else None,
        "gguf": gguf,
    }
    if as_json:
        echo_json(data)
        return
    m = manifest
    lines = [
        f"{m.display_name} ({m.id} {m.version})",
        f"  {m.description}" if m.description else "",
        f"  modality        {m.modality}",
        f"  license         {m.license}" + (f"  <{m.license_url}>" if m.license_url else ""),
        f"  context length  {m.context_length}",
        f"  stop tokens     {', '.join(m.config.stop_tokens) or '-'}",
        f"  curated         {'yes' if m.curated else 'no (hash not from a trusted source)'}",
        "  artifacts:",
    ]
    for backend, art in m.all_artifacts():
        mark = "*" if art == artifact else " "
        lines.append(
            f"   {mark} {backend:9} {art.format:5} {art.quant or '-':7} "
            f"{human_size(art.size_bytes):>9}  sha256:{(art.sha256 or '-')[:16]}"
        )
    if gguf:
        lines += [
            "  gguf:",
            f"    architecture  {gguf['architecture']}",
            f"    parameters    {gguf['parameters']:,}",
            f"    quant         {gguf['quant']}",
            f"    context       {gguf['context_length']}",
            f"    layers/heads  {gguf['layers']} layers, {gguf['heads']} heads, "
            f"{gguf['kv_heads']} kv heads, embedding {gguf['embedding_length']}",
            f"    license       {gguf['license']}",
        ]
    elif blob is not None:
        lines.append(f"  stored: {blob.path}")
    else:
        lines.append(f"  not stored: fetch it with `locara pull {ref}`")
    template = m.config.chat_template or (gguf or {}).get("chat_template")
    if template:
        lines += ["  chat template:", "    " + template.replace("\n", "\n    ")]
    click.echo("\n".join(line for line in lines if line))
