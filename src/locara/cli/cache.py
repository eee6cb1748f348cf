"""``locara cache ls|verify|gc|import``: look after the content-addressed store."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.cli.models import _iso, ago
from locara.errors import LocaraError, StoreError, UsageError
from locara.store.blobs import BlobStore


@click.group()
def cache() -> None:
    """Inspect, verify, clean and fill the model store."""


def _on_disk(store: BlobStore) -> list[str]:
    if not store.root.is_dir():
        return []
    return sorted(
        d.name
        for d in store.root.iterdir()
        if len(d.name) == 64 and all(c in "0123456789abcdef" for c in d.name)
    )


@cache.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_cmd(as_json: bool) -> None:
    """Every blob: models, size, references, last used."""
    store = BlobStore(settings())
    refs = store.index.all_refs()
    rows: list[dict[str, Any]] = []
    records = {r.sha256: r for r in store.index.blobs()}
    for sha in sorted(set(records) | set(_on_disk(store))):
        rec = records.get(sha)
        meta = store.read_meta(sha) or {}
        rows.append(
            {
                "sha256": sha,
                "model": rec.model_id if rec else meta.get("id"),
                "quant": rec.quant if rec else meta.get("quant"),
                "kind": meta.get("kind", "file"),
                "size_bytes": rec.size_bytes if rec else meta.get("size_bytes"),
                "references": refs.get(sha, []),
                "last_used": _iso(rec.last_used) if rec else None,
                "tracked": rec is not None,
                "_last": rec.last_used if rec else None,
            }
        )
    if as_json:
        echo_json([{k: v for k, v in r.items() if not k.startswith("_")} for r in rows])
        return
    if not rows:
        click.echo("the store is empty; fetch a model with: locara pull MODEL")
        return
    click.echo(f"{'BLOB':14} {'MODEL':30} {'QUANT':8} {'SIZE':>9}  {'REFS':18} LAST USED")
    for r in rows:
        click.echo(
            f"{r['sha256'][:12]:14} {r['model'] or '?':30} {r['quant'] or '-':8} "
            f"{human_size(r['size_bytes']):>9}  {','.join(r['references']) or '-':18} "
            f"{ago(r['_last'])}"
        )
    total = sum(r["size_bytes"] or 0 for r in rows if r["kind"] == "file")
    click.echo(f"{len(rows)} blobs, {human_size(total)}")


@cache.command("verify")
@click.option("--deep", is_flag=True, help="Re-hash every blob (not only changed ones).")
@click.option("--repair", is_flag=True, help="Re-fetch corrupted blobs from their sources.")
def verify_cmd(deep: bool, repair: bool) -> None:
    """Check every blob's bytes; corrupted ones are removed, and re-fetched with --repair."""
    from locara.store.fetch import fetch_blob

    cfg = settings()
    store = BlobStore(cfg)
    records = {r.sha256: r for r in store.index.blobs()}
    bad: list[str] = []
    for sha in sorted(set(records) | set(_on_disk(store))):
        meta = store.read_meta(sha) or {}
        planted = store.planted_symlink(sha)
        try:
            if store.find(sha) is None and planted is None:
                if sha in records:
                    click.echo(f"missing  {sha[:12]}  (recorded but not on disk; forgotten)")
                    store.index.forget_blob(sha)
                continue
            store.verify(sha, deep=deep)
            click.echo(f"ok       {sha[:12]}  {meta.get('id') or '?'}")
            continue
        except StoreError as exc:  # IntegrityError, or a tree whose file is gone
            click.echo(f"CORRUPT  {sha[:12]}  {meta.get('id') or '?'}: {exc.message}")
            if planted is not None:
                store.remove(sha)  # unlinks the symlink itself, never its target
        if not repair:
            bad.append(sha)
            continue
        sources = [str(s) for s in meta.get("sources", [])]
        try:
            if meta.get("kind") == "tree" or not sources:
                _repair_from_registry(store, sha, meta)
            else:
                ext = str(meta.get("file", "model.gguf")).rpartition(".")[2]
                fetch_blob(store, sha, meta.get("size_bytes"), ext, sources, meta, cfg)
            click.echo(f"repaired {sha[:12]}  (re-fetched and verified)")
        except LocaraError as exc:
            click.echo(f"         repair failed: {exc.message}")
            bad.append(sha)
    if bad:
        raise StoreError(
            f"{len(bad)} blob(s) were corrupted and removed: {', '.join(s[:12] for s in bad)}",
            "fetch them again with: locara cache verify --repair (or locara pull MODEL)",
        )


def _repair_from_registry(store: BlobStore, sha: str, meta: dict[str, Any]) -> None:
    """Re-fetch an artifact (e.g. a multi-file tree) through the manifest that names it."""
    from locara.registry.catalog import Registry
    from locara.store.fetch import ensure_artifact

    model_id = meta.get("id")
    found = None
    if isinstance(model_id, str):
        with contextlib.suppress(LocaraError):
            found = Registry(store.settings).get(model_id).artifact_by_digest(sha)
    if found is None:
        raise StoreError(
            f"no manifest names {sha[:12]} any more, so it cannot be re-fetched",
            "fetch the model again with: locara pull MODEL",
        )
    manifest = Registry(store.settings).get(str(model_id))
    ensure_artifact(store, manifest, found[1], store.settings)


@cache.command("gc")
@click.option(
    "--older-than", "days", type=float, default=30.0, show_default=True,
    help="Only blobs unused for this many days.",
)  # fmt: skip
@click.option("--dry-run", is_flag=True, help="Show what would be removed.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def gc_cmd(days: float, dry_run: bool, as_json: bool) -> None:
    """Remove blobs no app references and nothing used for --older-than days."""
    from locara.store.gc import gc

    if days < 0:
        raise UsageError(f"--older-than must be >= 0, not {days}", "e.g. --older-than 30")
    report = gc(BlobStore(settings()), days, dry_run)
    if as_json:
        echo_json(
            {
                "dry_run": dry_run,
                "removed": [{"sha256": s, "size_bytes": n} for s, n in report.removed],
                "kept": [{"sha256": s, "reason": w} for s, w in report.kept],
                "temp_removed": [str(p) for p in report.temp_removed],
                "freed_bytes": report.freed_bytes,
            }
        )
        return
    verb = "would remove" if dry_run else "removed"
    for sha, n in report.removed:
        click.echo(f"{verb} {sha[:12]}  {human_size(n)}")
    for sha, why in report.kept:
        click.echo(f"kept    {sha[:12]}  {why}")
    if report.temp_removed:
        click.echo(f"{verb} {len(report.temp_removed)} leftover temporary file(s)")
    click.echo(f"{'would free' if dry_run else 'freed'} {human_size(report.freed_bytes)}")


@cache.command("import")
@click.argument("kind", type=click.Choice(["ollama", "hf"]))
@click.argument("path", required=False, type=click.Path(path_type=Path))
def import_cmd(kind: str, path: Path | None) -> None:
    """Adopt models already in an Ollama store or the Hugging Face cache (verified, linked)."""
    from locara.store.adopt import import_hf, import_ollama

    store = BlobStore(settings())
    if kind == "ollama":
        root = path or Path(os.environ.get("OLLAMA_MODELS") or Path.home() / ".ollama" / "models")
        results = import_ollama(store, root.expanduser())
    else:
        if path is None:
            from huggingface_hub import constants

            path = Path(constants.HF_HUB_CACHE)
        results = import_hf(store, path.expanduser())
    if not results:
        click.echo(f"no models found in {path or root}")
        return
    failed = 0
    for r in results:
        if r.error or r.blob is None:
            failed += 1
            click.echo(f"skipped  {r.source}: {r.error}")
            continue
        what = r.blob.meta.get("id") or "?"
        if r.mode is None:
            click.echo(f"present  {what}  sha256:{r.blob.sha256[:12]} (already stored)")
        elif r.mode == "copy":
            click.echo(
                f"COPIED   {what}  sha256:{r.blob.sha256[:12]}  {human_size(r.blob.size_bytes)}"
                " (another filesystem: this uses extra disk)"
            )
        else:
            click.echo(f"{r.mode:8} {what}  sha256:{r.blob.sha256[:12]} (no extra disk)")
    if failed == len(results):
        raise StoreError("nothing could be imported", "see the reasons above")
