"""Audio in: probe a file, then decode it to 16 kHz mono in windows of bounded size.

FFmpeg (through PyAV, which faster-whisper already uses) reads the common formats
(wav, mp3, m4a/aac, ogg/opus/vorbis, flac). Decoding is streamed: a two-hour
recording never sits in memory whole (as float32 at 16 kHz it would be 460 MB); it
arrives as windows of ``WINDOW_S`` seconds, which the speech backend transcribes one
after the other. Every failure becomes one ``UsageError`` naming what was wrong.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from locara.errors import UsageError

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

SAMPLE_RATE = 16_000  # what Whisper was trained on; everything is resampled to it
WINDOW_S = 300  # 5 minutes: 19 MB of float32 samples per window
FORMATS = "wav, mp3, m4a, ogg, opus or flac"
# Below this the audio is telephone band or worse; it is transcribed, with a warning.
LOW_RATE = 16_000


@dataclass(frozen=True)
class AudioInfo:
    """What the container says about its first audio stream, before decoding it."""

    codec: str
    sample_rate: int
    channels: int
    duration_s: float | None  # None when the container does not say (a raw stream)

    @property
    def warnings(self) -> tuple[str, ...]:
        if self.sample_rate < LOW_RATE:
            return (
                f"the audio is sampled at {self.sample_rate} Hz (below {LOW_RATE} Hz); it is "
                "upsampled, but frequencies above "
                f"{self.sample_rate // 2} Hz are missing, so accuracy may be lower",
            )
        return ()


def _not_audio(path: Path, why: str) -> UsageError:
    return UsageError(f"{path.name} is not audio Locara can read: {why}", f"send {FORMATS}")


def _open(path: Path) -> Any:
    import av

    try:
        size = path.stat().st_size
    except OSError as exc:
        raise UsageError(f"cannot read {path}: {exc.strerror or exc}", "check the path") from exc
    if size == 0:
        raise UsageError(f"{path.name} is empty (0 bytes)", f"send a non-empty {FORMATS} file")
    try:
        return av.open(str(path), mode="r", metadata_errors="ignore")
    except av.FFmpegError as exc:
        raise _not_audio(path, _ffmpeg_reason(exc)) from exc


def _ffmpeg_reason(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__


def probe(path: Path) -> AudioInfo:
    """The first audio stream's codec, rate, channels and duration; refuses what cannot decode.

    An empty file, a file FFmpeg does not recognize, a container without audio and an
    audio codec this FFmpeg build cannot decode are each a ``UsageError``.
    """
    with contextlib.closing(_open(path)) as container:
        streams = container.streams.audio
        if not streams:
            kinds = ", ".join(sorted({s.type for s in container.streams})) or "no streams"
            raise _not_audio(path, f"it has no audio stream ({kinds})")
        stream = streams[0]
        codec = stream.codec_context  # None when FFmpeg has no decoder for it
        # The format's name (mp3), not the decoder's (mp3float).
        name = (codec.codec.canonical_name or codec.name) if codec is not None else "unknown"
        if codec is None or name in ("none", "unknown"):
            raise UsageError(
                f"{path.name} uses an audio codec this FFmpeg cannot decode ({name})",
                f"convert it first (e.g. ffmpeg -i {path.name} out.flac), or send {FORMATS}",
            )
        duration = None
        if stream.duration is not None and stream.time_base is not None:
            duration = float(stream.duration * stream.time_base)
        elif container.duration is not None:
            duration = container.duration / 1_000_000  # av.time_base: microseconds
        return AudioInfo(name, int(codec.sample_rate or 0), int(codec.channels or 0), duration)


def windows(path: Path, window_s: int = WINDOW_S) -> Iterator[npt.NDArray[np.float32]]:
    """16 kHz mono float32 samples, ``window_s`` seconds at a time (the last one shorter).

    Memory stays bounded by one window plus FFmpeg's own buffers, whatever the file's
    length. A file that fails to decode midway is a ``UsageError`` saying where.
    """
    import av
    import numpy as np

    per_window = window_s * SAMPLE_RATE
    resampler = av.AudioResampler(format="s16", layout="mono", rate=SAMPLE_RATE)
    pending: list[npt.NDArray[Any]] = []  # s16 samples not yet in a window
    have = 0
    done_s = 0.0
    with contextlib.closing(_open(path)) as container:
        if not container.streams.audio:
            raise _not_audio(path, "it has no audio stream")
        try:
            for frame in container.decode(audio=0):
                for out in resampler.resample(frame):
                    samples = out.to_ndarray().reshape(-1)
                    pending.append(samples)
                    have += samples.size
                while have >= per_window:
                    whole = np.concatenate(pending)
                    yield whole[:per_window].astype(np.float32) / 32768.0
                    done_s += window_s
                    rest = whole[per_window:]
                    pending, have = [rest], rest.size
            for out in resampler.resample(None):  # flush the resampler's tail
                pending.append(out.to_ndarray().reshape(-1))
        except av.FFmpegError as exc:
            raise UsageError(
                f"{path.name} could not be decoded after {done_s:.0f} s: {_ffmpeg_reason(exc)}",
                f"check the file (it may be truncated), or convert it to {FORMATS}",
            ) from exc
        finally:
            # PyAV's resampler graphs are freed by the collector only (faster-whisper #390).
            del resampler
            gc.collect()
    if pending:
        tail = np.concatenate(pending)
        if tail.size:
            yield tail.astype(np.float32) / 32768.0
