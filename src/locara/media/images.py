"""Images in: bytes, files and OpenAI ``image_url`` values, checked before they are decoded.

Pillow reads only an image's header on open; its width and height are checked against
``Settings.max_image_pixels`` (LOCARA_MAX_IMAGE_PIXELS) before any pixel is decoded, so
a 100-megapixel upload (or a decompression bomb) is refused at the cost of a header.
An ``image_url`` may be a ``data:`` URI (base64) or, only when the operator allowed it
(LOCARA_ALLOW_REMOTE_IMAGES=1), an http(s) URL: by default nothing leaves the machine.
"""

from __future__ import annotations

import base64
import binascii
import io
import re
import warnings
from typing import TYPE_CHECKING

from locara.errors import UsageError
from locara.settings import Settings

if TYPE_CHECKING:
    from PIL import Image

FORMATS = "PNG, JPEG, WebP, GIF, BMP or TIFF"
_DATA_URI = re.compile(r"data:(?P<mime>[\w.+-]+/[\w.+-]+)?(?P<params>(;[^;,]*)*?);base64,", re.I)


def open_image(data: bytes, what: str, settings: Settings) -> Image.Image:
    """The decoded RGB image in ``data``; ``what`` names it in errors (a file, a part).

    Refused, each with a one-line error: no bytes, bytes that are not an image, an
    image larger than ``settings.max_image_pixels`` (checked from the header, before
    decoding), and an image whose pixel data is broken.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        raise UsageError(f"{what} is empty (0 bytes)", f"send a {FORMATS} image")
    too_large = "send a smaller image, or raise LOCARA_MAX_IMAGE_PIXELS"
    try:
        with warnings.catch_warnings():  # Pillow's bomb warning: our own limit follows
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
    except Image.DecompressionBombError as exc:  # beyond Pillow's own (higher) limit
        raise UsageError(f"{what} is too large: {exc}", too_large) from exc
    except (UnidentifiedImageError, OSError, ValueError) as exc:
        raise UsageError(f"{what} is not an image Locara can read", f"send {FORMATS}") from exc
    width, height = img.size
    limit = settings.max_image_pixels
    if width * height > limit:
        raise UsageError(
            f"{what} is {width}x{height} ({_pixels(width * height)}); the limit is {_pixels(limit)}",
            too_large,
        )
    try:
        img.load()
    except (OSError, ValueError, SyntaxError) as exc:
        raise UsageError(
            f"{what} is a damaged {img.format or 'image'} file: {exc}", f"send a valid {FORMATS}"
        ) from exc
    return img if img.mode == "RGB" else img.convert("RGB")


def _pixels(n: int) -> str:
    return f"{n / 1e6:.1f} megapixels" if n >= 100_000 else f"{n:,} pixels"


def image_url_bytes(url: str, what: str, settings: Settings) -> bytes:
    """The bytes an OpenAI ``image_url`` names: a base64 ``data:`` URI, or an allowed URL.

    A remote URL is refused unless LOCARA_ALLOW_REMOTE_IMAGES is set (no egress by
    default); any other scheme (file:, ftp:) is always refused.
    """
    text = url.strip()
    if text[:5].lower() == "data:":
        m = _DATA_URI.match(text)
        if m is None:
            raise UsageError(
                f"{what} is a data URI without base64 image data",
                "send data:image/png;base64,<base64 bytes>",
            )
        payload = re.sub(r"\s+", "", text[m.end() :])
        try:
            return base64.b64decode(payload, validate=True)
        except (binascii.Error, ValueError) as exc:
            raise UsageError(
                f"{what} has invalid base64 data ({exc})",
                "encode the image with standard base64 (A-Z, a-z, 0-9, +, /, = padding)",
            ) from exc
    scheme = text.partition(":")[0].lower()
    if scheme not in ("http", "https"):
        raise UsageError(
            f"{what} has an unsupported URL scheme {scheme + ':'!r}",
            "send the image inline as data:image/png;base64,...",
        )
    if not settings.allow_remote_images:
        raise UsageError(
            f"{what} points at a remote URL ({text[:80]}); Locara does not fetch remote "
            "images unless allowed",
            "send the image inline as data:image/png;base64,..., or set "
            "LOCARA_ALLOW_REMOTE_IMAGES=1 on the server",
        )
    return _fetch(text, what, settings)


def _fetch(url: str, what: str, settings: Settings) -> bytes:
    import httpx

    # The header check cannot run before the bytes arrive: bound the download instead,
    # at the size of an uncompressed RGBA image at the pixel limit.
    limit = settings.max_image_pixels * 4
    try:
        with httpx.stream("GET", url, timeout=30.0, follow_redirects=True) as r:
            if r.status_code != 200:
                raise UsageError(
                    f"{what}: {url[:80]} answered HTTP {r.status_code}", "check the URL"
                )
            data = bytearray()
            for chunk in r.iter_bytes():
                data += chunk
                if len(data) > limit:
                    raise UsageError(
                        f"{what}: {url[:80]} is larger than {limit} bytes",
                        "send a smaller image, or raise LOCARA_MAX_IMAGE_PIXELS",
                    )
            return bytes(data)
    except httpx.HTTPError as exc:
        raise UsageError(f"{what}: cannot fetch {url[:80]}: {exc}", "check the URL") from exc
