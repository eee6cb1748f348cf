"""OCR with the bundled RapidOCR PP-OCRv4 graphs: accuracy, and every bad image refused.

Images are rendered by Pillow (text on a white canvas, and a photo-like noisy copy); the
model is the real one from the store, loaded once for the module.
"""

from __future__ import annotations

import base64
import io
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import run_cli
from locara.engine.loader import ModelHandle, load, resolve
from locara.engine.media import read_images
from locara.errors import UsageError
from locara.ledger.db import UsageDB
from locara.media.images import image_url_bytes, open_image
from locara.settings import Settings
from loopback_server import LoopbackServer
from media_samples import OCR_LINES, char_accuracy, png_header_only, render_text

MODEL = "rapidocr-ppocrv4"


def png(img: object) -> bytes:
    buf = io.BytesIO()
    img.save(buf, "PNG")  # type: ignore[attr-defined]
    return buf.getvalue()


@pytest.fixture(scope="module")
def media_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("ocr-home")


@pytest.fixture(scope="module")
def cfg(media_home: Path) -> Settings:
    return Settings.from_env({"LOCARA_HOME": str(media_home)})


@pytest.fixture(scope="module")
def rapidocr(cfg: Settings) -> Iterator[ModelHandle]:
    handle = load(cfg, resolve(cfg, MODEL))
    yield handle
    handle.close()


def test_clean_rendered_text_read_with_95_percent_char_accuracy(
    cfg: Settings, rapidocr: ModelHandle
) -> None:
    img = open_image(png(render_text(OCR_LINES)), "clean.png", cfg)
    (result,) = read_images(cfg, rapidocr, [img], app="test", surface="cli")
    assert char_accuracy("\n".join(OCR_LINES), result.text) >= 0.95, result.text
    assert len(result.lines) == len(OCR_LINES)
    for line in result.lines:
        assert len(line.box) == 4 and 0.5 < line.confidence <= 1.0
        assert all(0 <= x <= result.width and 0 <= y <= result.height for x, y in line.box)
    assert [ln.box[0][1] for ln in result.lines] == sorted(ln.box[0][1] for ln in result.lines)
    row = UsageDB(cfg.usage_db_path).rows()[-1]
    assert row["model_id"] == MODEL and row["images"] == 1 and row["backend"] == "rapidocr"


def test_photo_like_noisy_image_still_mostly_read(cfg: Settings, rapidocr: ModelHandle) -> None:
    img = open_image(png(render_text(OCR_LINES, noisy=True)), "noisy.png", cfg)
    (result,) = read_images(cfg, rapidocr, [img], app="test", surface="cli")
    assert char_accuracy("\n".join(OCR_LINES), result.text) >= 0.85, result.text


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"%PDF-1.4 this is not an image", "is not an image"),
        (b"", "is empty (0 bytes)"),
        (png_header_only(10_000, 10_000), "10000x10000 (100.0 megapixels); the limit is 50.0"),
        (png_header_only(64, 64), "is a damaged PNG file"),
    ],
    ids=["not-an-image", "empty", "100-megapixels", "damaged"],
)
def test_bad_images_refused_in_one_line(cfg: Settings, data: bytes, expected: str) -> None:
    # The 100-megapixel PNG carries no pixel data: only a refusal from its header says
    # "megapixels" (decoding it would report damage instead).
    with pytest.raises(UsageError) as err:
        open_image(data, "upload.png", cfg)
    assert expected in err.value.message and "\n" not in err.value.message and err.value.hint


def test_pixel_limit_is_configurable(media_home: Path) -> None:
    small = Settings.from_env({"LOCARA_HOME": str(media_home), "LOCARA_MAX_IMAGE_PIXELS": "10000"})
    with pytest.raises(
        UsageError, match=r"1000x410 \(0.4 megapixels\); the limit is 10,000"
    ) as err:
        open_image(png(render_text(OCR_LINES)), "clean.png", small)
    assert "LOCARA_MAX_IMAGE_PIXELS" in (err.value.hint or "")
    big = Settings.from_env(
        {"LOCARA_HOME": str(media_home), "LOCARA_MAX_IMAGE_PIXELS": "200_000_000"}
    )
    with pytest.raises(UsageError, match="damaged"):  # past the limit check: now it decodes
        open_image(png_header_only(10_000, 10_000), "huge.png", big)
    with pytest.raises(UsageError, match="not a positive integer"):
        Settings.from_env({"LOCARA_MAX_IMAGE_PIXELS": "lots"})


def test_image_urls_data_uris_and_remote(cfg: Settings, media_home: Path, tmp_path: Path) -> None:
    data = png(render_text(OCR_LINES[:1]))
    uri = "data:image/png;base64," + base64.b64encode(data).decode()
    assert image_url_bytes(uri, "image_url", cfg) == data
    with pytest.raises(UsageError, match="invalid base64"):
        image_url_bytes("data:image/png;base64,iVBOR*w0K!!", "image_url", cfg)
    with pytest.raises(UsageError, match="without base64"):
        image_url_bytes("data:image/png,rawbytes", "image_url", cfg)
    with pytest.raises(UsageError, match="unsupported URL scheme 'file:'"):
        image_url_bytes("file:///etc/passwd", "image_url", cfg)
    srv = LoopbackServer().start()
    try:
        (tmp_path / "img.png").write_bytes(data)
        url = srv.add("/img.png", tmp_path / "img.png")
        with pytest.raises(UsageError, match="remote URL") as err:
            image_url_bytes(url, "image_url", cfg)
        assert "LOCARA_ALLOW_REMOTE_IMAGES=1" in (err.value.hint or "")
        assert srv.requests("/img.png") == []  # nothing left the machine
        allowed = Settings.from_env(
            {"LOCARA_HOME": str(media_home), "LOCARA_ALLOW_REMOTE_IMAGES": "1"}
        )
        assert image_url_bytes(url, "image_url", allowed) == data
    finally:
        srv.stop()


def test_cli_ocr_text_json_and_errors(media_home: Path, tmp_path: Path) -> None:
    img = tmp_path / "receipt.png"
    img.write_bytes(png(render_text(OCR_LINES)))
    res = run_cli("ocr", str(img), "--format", "json", home=media_home)
    assert res.returncode == 0, res.stderr
    body = json.loads(res.stdout)
    assert char_accuracy("\n".join(OCR_LINES), body["text"]) >= 0.95
    assert body["lines"][0]["box"] and body["width"] == 1000
    huge = tmp_path / "huge.png"
    huge.write_bytes(png_header_only(10_000, 10_000))
    res = run_cli("ocr", str(huge), home=media_home)
    assert res.returncode == 1
    assert res.stderr.splitlines() == [
        "error: huge.png is 10000x10000 (100.0 megapixels); the limit is 50.0 megapixels",
        "  hint: send a smaller image, or raise LOCARA_MAX_IMAGE_PIXELS",
    ]
