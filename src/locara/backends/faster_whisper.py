"""Speech to text with faster-whisper (CTranslate2): Whisper models from the store.

The artifact is a CTranslate2 model directory (``model.bin``, ``config.json``,
``tokenizer.json``, ``vocabulary.txt``) assembled in the store; faster-whisper is given
that directory's path, never a model name, which would send it to the Hugging Face hub.
Audio is decoded in windows (``locara.media.audio``), so memory does not grow with the
length of the recording; each window is transcribed with the end of the previous one's
text as its prompt, and its timestamps are shifted to the file's clock.
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import Any, ClassVar

from locara.backends.base import Availability, Capabilities, LoadOptions
from locara.backends.media import (
    AudioProgress,
    MediaModel,
    Segment,
    TranscribeRequest,
    Transcript,
    Word,
)
from locara.errors import BackendError, LocaraError, UsageError
from locara.media import audio
from locara.registry.manifest import ModelManifest

PROMPT_CHARS = 200  # the previous window's text carried into the next one's prompt


class FasterWhisperBackend:
    name: ClassVar[str] = "faster_whisper"
    formats: ClassVar[frozenset[str]] = frozenset({"ctranslate2"})

    def available(self) -> Availability:
        import importlib.util

        for module in ("faster_whisper", "av"):
            if importlib.util.find_spec(module) is None:
                return Availability(False, f"the {module} package is not installed")
        return Availability(True)

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> WhisperSpeech:
        from faster_whisper import WhisperModel

        try:
            # int8 on the CPU: CTranslate2 cannot compute in the stored float16 there,
            # and int8 is the fastest of the types it can (float32 costs ~2x, same words).
            model = WhisperModel(
                str(path.parent),
                device="cpu",
                compute_type="int8",
                cpu_threads=opts.n_threads or 0,
                local_files_only=True,
            )
        except (RuntimeError, ValueError, OSError) as exc:
            raise BackendError(
                f"faster-whisper cannot load {manifest.id} from {path.parent}: {exc}",
                f"check the stored files with: locara cache verify --deep; or: locara pull {manifest.id}",
            ) from exc
        return WhisperSpeech(model, manifest)


class WhisperSpeech(MediaModel):
    task = "a speech-to-text"
    use = "send audio to /v1/audio/transcriptions, or run: locara transcribe FILE"

    def __init__(self, model: Any, manifest: ModelManifest) -> None:
        self._model = model
        self._lock = threading.Lock()  # one transcription at a time: it uses every thread
        self.model_id = manifest.id
        self.n_ctx = manifest.context_length
        self.multilingual = bool(model.model.is_multilingual)
        self.capabilities = Capabilities(chat=False, completion=False, transcribe=True)

    def transcribe(
        self, path: Path, req: TranscribeRequest, progress: AudioProgress | None = None
    ) -> Transcript:
        """The text spoken in the audio file at ``path``; see ``locara.media.audio``."""
        info = audio.probe(path)
        language = (req.language or "").strip().lower() or None
        if language is not None and not self.multilingual and language != "en":
            raise UsageError(
                f"{self.model_id} understands English only, not language {language!r}",
                "omit the language (or pass en), or use a multilingual Whisper model",
            )
        segments: list[Segment] = []
        detected = language or ("en" if not self.multilingual else None)
        with self._lock:
            try:
                offset, detected = self._run(
                    path, req, info.duration_s, detected, segments, progress
                )
            except (RuntimeError, ValueError) as exc:
                if isinstance(exc, LocaraError):
                    raise
                raise BackendError(
                    f"faster-whisper failed on {path.name}: {exc}", "see the log (LOCARA_DEBUG=1)"
                ) from exc
        text = "".join(s.text for s in segments).strip()
        return Transcript(text, detected or "en", offset, tuple(segments), info.warnings)

    def _run(
        self,
        path: Path,
        req: TranscribeRequest,
        total: float | None,
        language: str | None,
        segments: list[Segment],
        progress: AudioProgress | None,
    ) -> tuple[float, str | None]:
        """Transcribe window after window into ``segments``: (seconds read, language)."""
        offset = 0.0
        prompt = req.prompt
        for window in audio.windows(path, audio.WINDOW_S):
            found, win_info = self._model.transcribe(
                window,
                language=language,
                initial_prompt=prompt,
                temperature=req.temperature,
                word_timestamps=req.word_timestamps,
                beam_size=5,
                vad_filter=False,
            )
            # The first window's detected language holds for the rest of the file.
            language = language or win_info.language
            for s in found:
                segments.append(self._segment(s, offset))
                if progress is not None:
                    progress(offset + s.end, total)
            offset += window.size / audio.SAMPLE_RATE
            if progress is not None:
                progress(offset, total)
            tail = "".join(s.text for s in segments[-8:]).strip()
            prompt = tail[-PROMPT_CHARS:] or req.prompt
        return offset, language

    @staticmethod
    def _segment(s: Any, offset: float) -> Segment:
        words = tuple(
            Word(offset + w.start, offset + w.end, w.word, w.probability) for w in s.words or ()
        )
        return Segment(offset + s.start, offset + s.end, s.text, len(s.tokens), words)

    def close(self) -> None:
        self._model = None
