"""``locara convert SRC --to mlx|gguf``: convert a model and add the result to the store.

SRC is a GGUF file, a Hugging Face safetensors directory, or a model reference
(its stored GGUF is used). The output is written where ``-o`` says, then stored by
SHA-256 like any download, with a lineage record naming its parent digest(s).
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.errors import UsageError


def _source(cfg: Any, src: str) -> tuple[Path, str | None]:
    """The file or directory SRC names, and the model id when SRC was a reference."""
    path = Path(src).expanduser()
    if path.exists():
        return path, None
    from locara.engine.loader import resolve
    from locara.registry.refs import parse_ref

    try:
        parse_ref(src)
    except UsageError:
        raise UsageError(
            f"{src} is neither a file, a directory nor a model reference",
            "pass a .gguf file, a Hugging Face model directory, or a model id (locara ls --all)",
        ) from None
    resolved = resolve(cfg, src)
    return resolved.blob.path, resolved.manifest.id


@click.command()
@click.argument("src")
@click.option(
    "--to",
    "target",
    type=click.Choice(["mlx", "gguf"]),
    required=True,
    help="mlx: GGUF → MLX directory (quantization kept); gguf: HF directory → GGUF.",
)
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None, help="Output path.")
@click.option(
    "--type",
    "outtype",
    type=click.Choice(["f16", "q8_0"]),
    default="f16",
    show_default=True,
    help="GGUF tensor type (--to gguf).",
)
@click.option("--force", is_flag=True, help="Replace an existing output.")
@click.option("--no-store", is_flag=True, help="Only write the output; do not add it to the store.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def convert(
    src: str,
    target: str,
    output: Path | None,
    outtype: str,
    force: bool,
    no_store: bool,
    as_json: bool,
) -> None:
    """Convert SRC to an MLX directory (--to mlx) or a GGUF file (--to gguf).

    \b
    Examples:
      locara convert smollm2-135m-instruct --to mlx -o smollm2-mlx
      locara convert ./all-MiniLM-L6-v2 --to gguf --type q8_0 -o minilm.gguf
    """
    from locara.ecology.lineage import LineageRecord, record_lineage, tool_version
    from locara.store.blobs import BlobStore, hash_file

    cfg = settings()
    path, model_id = _source(cfg, src)
    if output is None:
        stem = model_id or path.stem
        output = Path(f"{stem}-mlx") if target == "mlx" else Path(f"{stem}-{outtype}.gguf")
    if output.exists():
        if not force:
            raise UsageError(
                f"{output} already exists", "pass --force to replace it, or choose another -o"
            )
        if output.is_dir():
            shutil.rmtree(output)
        else:
            output.unlink()
    logging.getLogger("gguf").setLevel(logging.ERROR)
    result: dict[str, Any] = {"source": str(path), "output": str(output), "to": target}
    if target == "mlx":
        from locara.convert.gguf_to_mlx import gguf_to_checkpoint, write_checkpoint

        if path.is_dir():
            raise UsageError(
                f"{path} is a directory; --to mlx converts a GGUF file",
                "pass a .gguf file or a model id",
            )
        parent, _ = hash_file(path)
        files = write_checkpoint(gguf_to_checkpoint(path), output)
        digests = {f.name: hash_file(f)[0] for f in files}
        params: dict[str, Any] = {"to": "mlx", "quantization": "kept"}
        tool = tool_version("mlx", "mlx-lm")
        parents: tuple[str, ...] = (parent,)
    else:
        from locara.convert.hf_to_gguf import convert_hf_to_gguf, inspect_hf_dir

        hf = inspect_hf_dir(path)
        parents = tuple(hash_file(p)[0] for p in sorted(path.glob("*.safetensors")))
        output.parent.mkdir(parents=True, exist_ok=True)
        convert_hf_to_gguf(path, output, outtype, name=path.name)  # type: ignore[arg-type]
        digests = {output.name: hash_file(output)[0]}
        params = {"to": "gguf", "type": outtype, "architecture": hf.architecture}
        tool = tool_version("gguf", "numpy")
    result["files"] = digests
    if not no_store:
        from locara.store.adopt import add_local_file, add_local_tree

        store = BlobStore(cfg)
        meta = {"id": model_id, "format": target, "derived": True}
        if target == "mlx":
            blob = add_local_tree(store, output, meta, primary="model.safetensors")
        else:
            blob, _ = add_local_file(store, output, meta, ext="gguf", copy=True)
        rec = LineageRecord(
            sha256=blob.sha256,
            parents=parents,
            operator="convert",
            tool=tool,
            params=params,
            files=digests if target == "mlx" else {},
        )
        result["sha256"] = blob.sha256
        result["lineage"] = str(record_lineage(cfg, rec))
    if as_json:
        echo_json(result)
        return
    size = (
        sum(p.stat().st_size for p in output.iterdir())
        if output.is_dir()
        else output.stat().st_size
    )
    click.echo(f"wrote {output} ({human_size(size)})")
    if "sha256" in result:
        click.echo(f"stored as sha256:{result['sha256']}  (lineage: {result['lineage']})")
