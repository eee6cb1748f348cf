"""``locara transcribe FILE``: speech to text with a Whisper model from the store."""

from __future__ import annotations

import json
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import click

from locara.cli.common import byte_progress, settings
from locara.engine.loader import load, resolve

DEFAULT_STT_MODEL = "whisper-tiny.en"
PROGRESS_AFTER_S = 60.0  # shorter files finish before a bar would help


@contextmanager
def audio_progress(label: str) -> Iterator[Callable[[float, float | None], None]]:
    """A progress callback ``(seconds done, total)``: a bar for long files on a terminal."""
    if not sys.stderr.isatty():
        yield lambda done, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, Progress, TaskID, TimeRemainingColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        "{task.completed:.0f}/{task.total:.0f} s of audio",
        TimeRemainingColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    task: list[TaskID] = []

    def update(done: float, total: float | None) -> None:
        if not task:
            if total is None or total < PROGRESS_AFTER_S:
                return
            bar.start()
            task.append(bar.add_task(label, total=total))
        bar.update(task[0], completed=done)

    try:
        yield update
    finally:
        if task:
            bar.stop()


@click.command()
@click.argument("file", type=click.Path(dir_okay=False, path_type=Path))
@click.option("-m", "--model", default=DEFAULT_STT_MODEL, show_default=True, help="Speech model.")
@click.option("--language", default=None, help="Spoken language (ISO 639-1, e.g. en).")
@click.option("--prompt", default=None, help="Words or names to expect; the style to continue.")
@click.option(
    "--format",
    "fmt",
    type=click.Choice(["text", "srt", "vtt", "json"]),
    default="text",
    show_default=True,
    help="Plain text, subtitles (srt, vtt), or JSON with segments and timings.",
)
@click.option("--words", is_flag=True, help="With --format json: word timestamps.")
def transcribe(
    file: Path, model: str, language: str | None, prompt: str | None, fmt: str, words: bool
) -> None:
    """Transcribe the speech in FILE (wav, mp3, m4a, ogg, opus, flac).

    Long recordings are decoded a few minutes at a time, so memory stays flat; a
    progress bar shows on a terminal. Usage is recorded in the ledger (locara usage).

    \b
    Examples:
      locara transcribe meeting.m4a
      locara transcribe talk.mp3 --format srt > talk.srt
      locara transcribe note.wav --format json --words
    """
    from locara.backends.media import TranscribeRequest, speech_model
    from locara.engine.media import transcribe as run_transcription
    from locara.media import audio
    from locara.media.transcript_formats import render

    cfg = settings()
    audio.probe(file)  # refuse a file that is not audio before loading anything
    with byte_progress(f"storing {model}") as fetched:
        resolved = resolve(cfg, model, fetched)
    handle = load(cfg, resolved)
    try:
        speech_model(handle.model, resolved.manifest.id)
        req = TranscribeRequest(language=language, prompt=prompt, word_timestamps=words)
        with audio_progress(f"transcribing {file.name}") as progress:
            transcript = run_transcription(
                cfg, handle, file, req, app="cli", surface="cli", progress=progress
            )
    finally:
        handle.close()
    for warning in transcript.warnings:
        click.echo(f"warning: {warning}", err=True)
    out = render(transcript, "verbose_json" if fmt == "json" else fmt, words)
    click.echo(
        json.dumps(out, indent=2, ensure_ascii=False) if isinstance(out, dict) else out, nl=False
    )
    if isinstance(out, dict):
        click.echo()
