"""A transcript as text, SubRip (srt), WebVTT (vtt), or OpenAI's json / verbose_json.

One rendering for ``locara transcribe --format`` and the ``response_format`` of
``/v1/audio/transcriptions``, so both give the same bytes for the same audio.
"""

from __future__ import annotations

from typing import Any

from locara.backends.media import Transcript
from locara.errors import UsageError

FORMATS = ("json", "text", "srt", "verbose_json", "vtt")


def check_format(name: str) -> str:
    if name not in FORMATS:
        raise UsageError(f"unknown transcript format {name!r}", f"use one of: {', '.join(FORMATS)}")
    return name


def _clock(seconds: float, sep: str) -> str:
    ms = round(max(seconds, 0.0) * 1000)
    h, rest = divmod(ms, 3_600_000)
    m, rest = divmod(rest, 60_000)
    s, ms = divmod(rest, 1000)
    return f"{h:02d}:{m:02d}:{s:02d}{sep}{ms:03d}"


def to_srt(t: Transcript) -> str:
    blocks = [
        f"{i}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
        for i, s in enumerate(t.segments, start=1)
    ]
    return "\n".join(blocks)


def to_vtt(t: Transcript) -> str:
    blocks = [
        f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n" for s in t.segments
    ]
    return "WEBVTT\n\n" + "\n".join(blocks)


def to_verbose(t: Transcript, words: bool) -> dict[str, Any]:
    """OpenAI's ``verbose_json``: language, duration, segments (and words when asked)."""
    body: dict[str, Any] = {
        "task": "transcribe",
        "language": t.language,
        "duration": round(t.duration_s, 3),
        "text": t.text,
        "segments": [
            {
                "id": i,
                "start": round(s.start, 3),
                "end": round(s.end, 3),
                "text": s.text,
                "tokens": s.tokens,
            }
            for i, s in enumerate(t.segments)
        ],
    }
    if words:
        body["words"] = [
            {"word": w.word, "start": round(w.start, 3), "end": round(w.end, 3)}
            for s in t.segments
            for w in s.words
        ]
    return body


def render(t: Transcript, fmt: str, words: bool = False) -> str | dict[str, Any]:
    """The transcript in ``fmt``: a dict for the JSON formats, else text."""
    if fmt == "text":
        return t.text + "\n"
    if fmt == "srt":
        return to_srt(t)
    if fmt == "vtt":
        return to_vtt(t)
    if fmt == "verbose_json":
        return to_verbose(t, words)
    return {"text": t.text}
