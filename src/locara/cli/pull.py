"""``locara pull`` (fetch and verify a model) and ``locara rm`` (remove it from the store)."""

from __future__ import annotations

import click

from locara.cli.common import byte_progress, echo_json, human_size, settings
from locara.errors import UnknownModelError, UsageError
from locara.registry.catalog import Registry
from locara.registry.manifest import Artifact, ModelManifest
from locara.registry.refs import ModelRef, parse_ref
from locara.store.blobs import BlobStore


def choose_artifact(
    manifest: ModelManifest, ref: ModelRef, store: BlobStore, backend: str | None
) -> Artifact:
    """The artifact ``ref`` names: by digest on any backend, else via the planner's pick."""
    from locara.planner.select import select_artifact

    if ref.sha256:
        found = manifest.artifact_by_digest(ref.sha256)
        if found is None:
            raise UnknownModelError(
                str(ref), [f"{manifest.id}@sha256:{a.sha256}" for _, a in manifest.all_artifacts()]
            )
        return found[1]
    if backend is None:
        backend = (
            "llama_cpp" if "llama_cpp" in manifest.artifacts else next(iter(manifest.artifacts))
        )
    return select_artifact(manifest, ref, store, backend)


@click.command()
@click.argument("model")
@click.option(
    "--quant",
    default=None,
    help="The quant to fetch (Q4_K_M, Q8_0, ...): from a Hugging Face repo, or MODEL:QUANT.",
)
@click.option("--backend", help="Pick the artifact for this backend (llama_cpp, mlx, whispercpp).")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def pull(model: str, quant: str | None, backend: str | None, as_json: bool) -> None:
    """Download MODEL into the store and verify it.

    MODEL is a registry id (id, id:QUANT, id@sha256:HEX), one file of a Hugging Face
    repository (hf://owner/repo/file.gguf), or a GGUF repository (owner/repo) with
    --quant naming the file to take.

    \b
    Examples:
      locara pull qwen2.5-0.5b-instruct
      locara download Qwen/Qwen3-8B-GGUF --quant Q4_K_M
      locara pull hf://owner/repo/model.Q8_0.gguf
    """
    from locara.store.fetch import ensure_artifact
    from locara.store.hf_repo import gguf_source, is_repo_id

    cfg = settings()
    if is_repo_id(model):
        model = gguf_source(cfg, model, quant)
    elif quant is not None:
        if model.startswith("hf://") or ":" in model or "@" in model:
            raise UsageError(
                f"--quant {quant} with {model}, which names its file already",
                f"drop --quant, or name a model without one: locara pull MODEL --quant {quant}",
            )
        model = f"{model}:{quant}"
    if model.startswith("hf://"):
        model = _register_adhoc(model)
    ref = parse_ref(model)
    manifest = Registry(cfg).get(ref.id)
    store = BlobStore(cfg)
    art = choose_artifact(manifest, ref, store, backend)
    if not manifest.curated or art.sha256 is None:
        click.echo(
            f"warning: {manifest.id} is not curated: its hash was not read from a trusted "
            "source or computed from the file; check the source before using it",
            err=True,
        )
    with byte_progress(f"pull {manifest.id}:{art.quant or art.format}") as progress:
        blob = ensure_artifact(store, manifest, art, cfg, progress)
    if "adhoc" in manifest.tags and art.sha256 is None:
        _pin_adhoc(manifest.id, blob.sha256, blob.size_bytes)
    if as_json:
        echo_json(
            {
                "id": manifest.id,
                "quant": art.quant,
                "sha256": blob.sha256,
                "size_bytes": blob.size_bytes,
                "path": str(blob.path),
                "pin": f"{manifest.id}@sha256:{blob.sha256}",
            }
        )
        return
    click.echo(
        f"{manifest.id} {art.quant or art.format}  {human_size(blob.size_bytes)}  "
        f"verified sha256:{blob.sha256}"
    )
    click.echo(f"  pin it in an app as: {manifest.id}@sha256:{blob.sha256}")


@click.command()
@click.argument("model")
def rm(model: str) -> None:
    """Remove MODEL's stored blobs (all quants, or the one named by :QUANT / @sha256:)."""
    from locara.store.gc import remove_blob, stored_shas

    cfg = settings()
    ref = parse_ref(model)
    store = BlobStore(cfg)
    shas = stored_shas(store, ref)
    if not shas:
        known = Registry(cfg)
        if known.path_of(ref.id) is None:
            raise UnknownModelError(ref.id, known.suggest(ref.id))
        click.echo(f"{ref} is not stored; nothing to remove")
        return
    freed = 0
    for sha in shas:
        blob = store.find(sha)
        size = blob.size_bytes if blob is not None else 0
        for gone in remove_blob(store, sha):
            click.echo(f"removed sha256:{gone}")
        freed += size
    click.echo(f"freed {human_size(freed)}")


def adhoc_manifest(source: str) -> tuple[str, dict[str, object]]:
    """A non-curated manifest for ``hf://owner/repo[@rev]/path/file.gguf`` (id, JSON data)."""
    from locara.store.adopt import safe_model_id
    from locara.store.http import resolve_url

    resolve_url(source, settings())  # validates every part of the shorthand
    owner, repo, path = source[len("hf://") :].split("/", 2)
    name = path.rsplit("/", 1)[-1]
    stem, _, ext = name.rpartition(".")
    if ext.lower() != "gguf":
        raise UsageError(
            f"{source} is not a .gguf file", "pull a GGUF file: hf://owner/repo/model.Q4_K_M.gguf"
        )
    model_id = safe_model_id(owner, repo.partition("@")[0], stem)
    data: dict[str, object] = {
        "id": model_id,
        "version": "0.0.0",
        "displayName": f"{owner}/{repo} {name}",
        "description": f"Pulled from {source}; not curated (hash recorded on first download).",
        "tags": ["hf", "adhoc"],
        "license": "NOASSERTION",
        "modality": "chat",
        "context_length": 4096,
        "artifacts": {"llama_cpp": [{"format": "gguf", "url": source}]},
        "curated": False,
    }
    return model_id, data


def _register_adhoc(source: str) -> str:
    import json

    cfg = settings()
    model_id, data = adhoc_manifest(source)
    path = cfg.user_registry_dir / f"{model_id}.json"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(data, indent=2), encoding="utf-8")
    click.echo(f"registered {source} as {model_id} (run it with: locara run {model_id})", err=True)
    return model_id


def _pin_adhoc(model_id: str, sha256: str, size: int) -> None:
    # Record the digest of the first download in the manifest, so every later use
    # verifies against it (trust on first use, then never a silent change).
    import json

    path = settings().user_registry_dir / f"{model_id}.json"
    data = json.loads(path.read_text(encoding="utf-8"))
    for art in data["artifacts"]["llama_cpp"]:
        art.update(sha256=sha256, size_bytes=size)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(data, indent=2), encoding="utf-8")
    tmp.replace(path)
