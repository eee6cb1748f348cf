"""Test inputs for speech and OCR, made offline: espeak-ng speech, Pillow-rendered text.

Speech needs Debian's ``espeak-ng`` and ``sox`` (scripts/install.sh installs them with
the dev extra); without them the speech tests skip, saying what to install.
"""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

SENTENCES = (
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is sunny and warm.",
    "I would like to book a table for two people at seven o'clock.",
)
SPEECH_TEXT = " ".join(SENTENCES)

OCR_LINES = (
    "Locara reads text in images.",
    "Invoice 2026-11 total 42.50 EUR",
    "The quick brown fox jumps over the lazy dog",
    "Meeting room B opens at 9:30 on Monday",
)


def wer(reference: str, hypothesis: str) -> float:
    """Word error rate, ignoring case and punctuation (jiwer)."""
    import jiwer

    norm = jiwer.Compose(
        [jiwer.ToLowerCase(), jiwer.RemovePunctuation(), jiwer.RemoveMultipleSpaces(),
         jiwer.Strip(), jiwer.ReduceToListOfListOfWords()]
    )  # fmt: skip
    return float(
        jiwer.wer(reference, hypothesis, reference_transform=norm, hypothesis_transform=norm)
    )


def char_accuracy(reference: str, hypothesis: str) -> float:
    """1 - character error rate (jiwer)."""
    import jiwer

    return 1.0 - float(jiwer.cer(reference, hypothesis))


def require_speech_tools() -> None:
    missing = [p for p in ("espeak-ng", "sox") if shutil.which(p) is None]
    if missing:
        pytest.skip(
            f"SKIPPED LOUDLY: {' and '.join(missing)} not installed, so no test speech can be "
            f"made; install with: sudo apt-get install {' '.join(missing)}"
        )


def speak(text: str, out: Path, rate: int = 16_000) -> Path:
    """``text`` spoken by espeak-ng, resampled by sox to ``rate`` Hz mono 16-bit WAV."""
    require_speech_tools()
    raw = out.with_suffix(".espeak.wav")
    subprocess.run(["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(raw), text], check=True)
    subprocess.run(["sox", str(raw), "-r", str(rate), "-c", "1", "-b", "16", str(out)], check=True)
    raw.unlink()
    return out


def transcode(src: Path, out: Path, codec: str) -> Path:
    """``src`` re-encoded with FFmpeg's ``codec`` (through PyAV) into ``out``'s container."""
    import av

    with av.open(str(src)) as inp, av.open(str(out), "w") as dst:
        stream = dst.add_stream(codec, rate=16_000 if codec != "libopus" else 48_000)
        stream.layout = "mono"  # type: ignore[attr-defined]
        for frame in inp.decode(audio=0):
            frame.pts = None
            for packet in stream.encode(frame):  # type: ignore[attr-defined]
                dst.mux(packet)
        for packet in stream.encode(None):  # type: ignore[attr-defined]
            dst.mux(packet)
    return out


def wav_with_unknown_codec(out: Path) -> Path:
    """A well-formed RIFF/WAVE file whose format tag (0x1234) no decoder knows."""
    data = b"\x00" * 16_000
    fmt = struct.pack("<HHIIHH", 0x1234, 1, 16_000, 32_000, 2, 16)
    body = b"WAVE" + b"fmt " + struct.pack("<I", len(fmt)) + fmt
    body += b"data" + struct.pack("<I", len(data)) + data
    out.write_bytes(b"RIFF" + struct.pack("<I", len(body)) + body)
    return out


def render_text(lines: tuple[str, ...], noisy: bool = False) -> object:
    """A white canvas with ``lines`` in black; ``noisy`` makes it photo-like (tilt, blur,
    uneven light, grain)."""
    from PIL import Image, ImageDraw, ImageFilter, ImageFont

    font = ImageFont.load_default(size=34)
    img = Image.new("RGB", (1000, 90 + 80 * len(lines)), "white")
    draw = ImageDraw.Draw(img)
    for i, line in enumerate(lines):
        draw.text((40, 40 + 80 * i), line, fill="black", font=font)
    if not noisy:
        return img
    import numpy as np

    img = img.rotate(1.5, resample=Image.Resampling.BICUBIC, fillcolor="white", expand=True)
    img = img.filter(ImageFilter.GaussianBlur(1.0))
    rng = np.random.default_rng(7)
    px = np.asarray(img).astype(np.int16)
    shade = np.linspace(0, 40, px.shape[0], dtype=np.int16)[:, None, None]  # uneven light
    grain = rng.integers(-35, 36, size=px.shape[:2], dtype=np.int16)[:, :, None]
    return Image.fromarray(np.clip(px - shade + grain, 0, 255).astype(np.uint8))


def png_header_only(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` but carries almost no pixel data: reading
    its header is cheap, decoding it fails, so a size refusal proves it came first."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")
