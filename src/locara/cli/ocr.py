"""``locara ocr IMAGE``: the text in an image, with an OCR model from the store."""

from __future__ import annotations

import json
from pathlib import Path

import click

from locara.cli.common import byte_progress, settings
from locara.engine.loader import load, resolve
from locara.errors import UsageError

DEFAULT_OCR_MODEL = "rapidocr-ppocrv4"


@click.command()
@click.argument("images", nargs=-1, required=True, type=click.Path(dir_okay=False, path_type=Path))
@click.option("-m", "--model", default=DEFAULT_OCR_MODEL, show_default=True, help="OCR model.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "json"]),
    default="text",
    show_default=True,
    help="The lines of text, or JSON with each line's box, text and confidence.",
)
def ocr(images: tuple[Path, ...], model: str, fmt: str) -> None:
    """Read the text in IMAGE (PNG, JPEG, WebP, GIF, BMP, TIFF); several images in order.

    Images larger than LOCARA_MAX_IMAGE_PIXELS (50 megapixels by default) are refused
    from their header, before they are decoded. Usage is recorded in the ledger.

    \b
    Examples:
      locara ocr receipt.jpg
      locara ocr scan.png --format json
    """
    from locara.backends.media import ocr_model
    from locara.engine.media import read_images
    from locara.media.images import open_image

    cfg = settings()
    decoded = []
    for path in images:  # every image is checked before the model loads
        try:
            data = path.read_bytes()
        except OSError as exc:
            raise UsageError(
                f"cannot read {path}: {exc.strerror or exc}", "check the path"
            ) from exc
        decoded.append(open_image(data, path.name, cfg))
    with byte_progress(f"storing {model}") as fetched:
        resolved = resolve(cfg, model, fetched)
    handle = load(cfg, resolved)
    try:
        ocr_model(handle.model, resolved.manifest.id)
        results = read_images(cfg, handle, decoded, app="cli", surface="cli")
    finally:
        handle.close()
    if fmt == "json":
        body = [
            {
                "file": str(path),
                "width": r.width,
                "height": r.height,
                "text": r.text,
                "lines": [
                    {"text": ln.text, "confidence": round(ln.confidence, 4), "box": ln.box}
                    for ln in r.lines
                ],
            }
            for path, r in zip(images, results, strict=True)
        ]
        click.echo(json.dumps(body if len(body) > 1 else body[0], indent=2, ensure_ascii=False))
        return
    for r in results:
        click.echo(r.text)
