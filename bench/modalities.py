"""Speech and OCR: Locara against faster-whisper and RapidOCR called directly, in one run.

Transcription: espeak-ng speech (the test sentences, repeated to ``--audio-s`` seconds,
16 kHz mono WAV) through Locara (``engine.media.transcribe``: the model from the store,
audio decoded in windows, a ledger row written) and through faster-whisper's own
``WhisperModel.transcribe`` on the same packaged model directory, with the same compute
type, threads, beam size and language. Reported as the real-time factor: seconds of
audio per wall-clock second (higher is faster).

OCR: Pillow-rendered pages of text through Locara (``media.images.open_image`` with its
size check, then ``engine.media.read_images``) and through ``RapidOCR()`` on the same PNG
bytes with the same threads. Reported as images per second.

Runs alternate (Locara, direct, Locara, direct, ...) after a warm-up each, so drift on a
shared machine hits both; the medians and the ratio Locara / direct are printed (goal:
>= 0.95x).

    .venv/bin/python bench/modalities.py [--reps 3] [--audio-s 60] [--images 4]
"""

from __future__ import annotations

import argparse
import io
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from locara.settings import Settings

SENTENCES = (
    "Please call Stella and ask her to bring these things with her from the store.",
    "The weather today is sunny and warm.",
    "I would like to book a table for two people at seven o'clock.",
)
LINES = (
    "Locara reads text in images.",
    "Invoice 2026-11 total 42.50 EUR",
    "The quick brown fox jumps over the lazy dog",
    "Meeting room B opens at 9:30 on Monday",
)


def make_speech(out: Path, seconds: float) -> Path:
    for prog in ("espeak-ng", "sox"):
        if shutil.which(prog) is None:
            sys.exit(f"{prog} is not installed: sudo apt-get install espeak-ng sox")
    one = out.with_suffix(".one.wav")
    subprocess.run(
        ["espeak-ng", "-v", "en-us", "-s", "150", "-w", str(one), " ".join(SENTENCES)], check=True
    )
    length = float(
        subprocess.run(["soxi", "-D", str(one)], capture_output=True, text=True, check=True).stdout
    )
    copies = max(1, round(seconds / length))
    subprocess.run(
        ["sox", *[str(one)] * copies, "-r", "16000", "-c", "1", "-b", "16", str(out)], check=True
    )
    return out


def make_pages(n: int) -> list[bytes]:
    from PIL import Image, ImageDraw, ImageFont

    font = ImageFont.load_default(size=34)
    pages = []
    for k in range(n):
        img = Image.new("RGB", (1000, 90 + 80 * len(LINES)), "white")
        draw = ImageDraw.Draw(img)
        for i, line in enumerate(LINES):
            draw.text((40, 40 + 80 * i), f"{k}: {line}", fill="black", font=font)
        buf = io.BytesIO()
        img.save(buf, "PNG")
        pages.append(buf.getvalue())
    return pages


def alternate(runs: dict[str, Callable[[], float]], reps: int) -> dict[str, list[float]]:
    """Each callable returns work per second; one warm-up each, then ``reps`` rounds."""
    for fn in runs.values():
        fn()
    out: dict[str, list[float]] = {name: [] for name in runs}
    for rep in range(reps):
        for name, fn in runs.items():
            out[name].append(fn())
            print(f"  run {rep + 1} {name:8} {out[name][-1]:8.2f}", flush=True)
    return out


def report(title: str, unit: str, results: dict[str, list[float]]) -> None:
    loc, direct = statistics.median(results["locara"]), statistics.median(results["direct"])
    print(
        f"{title}: Locara {loc:.2f} {unit}, direct {direct:.2f} {unit}, ratio {loc / direct:.3f}x"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--audio-s", type=float, default=60.0)
    parser.add_argument("--images", type=int, default=4)
    args = parser.parse_args()

    from faster_whisper import WhisperModel
    from rapidocr_onnxruntime import RapidOCR

    from locara.backends.media import TranscribeRequest
    from locara.engine.loader import load, resolve
    from locara.engine.media import read_images, transcribe
    from locara.media.images import open_image

    work = Path(tempfile.mkdtemp(prefix="locara-bench-media-"))
    try:
        cfg = Settings.from_env({"LOCARA_HOME": str(work / "home")})
        speech = make_speech(work / "speech.wav", args.audio_s)

        # -- transcription ----------------------------------------------------------
        handle = load(cfg, resolve(cfg, "whisper-tiny.en"))
        threads = handle.options.n_threads or 0
        model_dir = handle.resolved.blob.path.parent
        direct_model = WhisperModel(
            str(model_dir), device="cpu", compute_type="int8", cpu_threads=threads,
            local_files_only=True,
        )  # fmt: skip
        audio_s = 0.0

        def locara_stt() -> float:
            nonlocal audio_s
            t0 = time.perf_counter()
            t = transcribe(cfg, handle, speech, TranscribeRequest(), app="bench", surface="cli")
            audio_s = t.duration_s
            return t.duration_s / (time.perf_counter() - t0)

        def direct_stt() -> float:
            t0 = time.perf_counter()
            segments, info = direct_model.transcribe(
                str(speech), language="en", beam_size=5, temperature=0.0, vad_filter=False
            )
            "".join(s.text for s in segments)
            return float(info.duration) / (time.perf_counter() - t0)

        print(f"transcription: {args.audio_s:.0f} s of espeak-ng speech, whisper-tiny.en int8, "
              f"{threads} threads, beam 5")  # fmt: skip
        stt = alternate({"locara": locara_stt, "direct": direct_stt}, args.reps)
        handle.close()

        # -- OCR --------------------------------------------------------------------
        pages = make_pages(args.images)
        handle = load(cfg, resolve(cfg, "rapidocr-ppocrv4"))
        ocr_threads = handle.options.n_threads or -1
        direct_ocr = RapidOCR(intra_op_num_threads=ocr_threads, inter_op_num_threads=1)

        def locara_ocr() -> float:
            t0 = time.perf_counter()
            imgs = [open_image(p, "page.png", cfg) for p in pages]
            read_images(cfg, handle, imgs, app="bench", surface="cli")
            return len(pages) / (time.perf_counter() - t0)

        def direct_ocr_run() -> float:
            t0 = time.perf_counter()
            for p in pages:
                direct_ocr(p)
            return len(pages) / (time.perf_counter() - t0)

        print(
            f"OCR: {args.images} pages of 1000x410 rendered text, PP-OCRv4, {ocr_threads} threads"
        )
        ocr = alternate({"locara": locara_ocr, "direct": direct_ocr_run}, args.reps)
        handle.close()

        print()
        report(f"real-time factor ({audio_s:.0f} s audio)", "audio s/s", stt)
        report("OCR", "images/s", ocr)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
