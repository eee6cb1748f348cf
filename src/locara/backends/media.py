"""The seam for speech and OCR models: the values that cross it and what a loaded one does.

A speech or OCR backend is a ``Backend`` like llama.cpp's (``available()``, ``load()``,
``formats``), so its models are planned, loaded, kept alive and accounted by the same
engine; what its loaded model does instead of ``generate()`` is ``transcribe()`` or
``read()``, announced by ``capabilities.transcribe`` / ``capabilities.ocr``.
``speech_model()`` and ``ocr_model()`` are the checked way from a loaded model to them.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, cast

from locara.backends.base import Capabilities, Chunk, GenerationRequest, LoadedModel
from locara.errors import UnsupportedFeatureError

if TYPE_CHECKING:
    from PIL import Image

# (seconds of audio done, total seconds when known)
AudioProgress = Callable[[float, float | None], None]


@dataclass(frozen=True)
class Word:
    start: float
    end: float
    word: str
    probability: float


@dataclass(frozen=True)
class Segment:
    """A stretch of speech: seconds from the start of the file, its text and token count."""

    start: float
    end: float
    text: str
    tokens: int
    words: tuple[Word, ...] = ()


@dataclass(frozen=True)
class TranscribeRequest:
    language: str | None = None  # ISO 639-1; None: detected (English for .en models)
    prompt: str | None = None  # vocabulary, names, the style to continue
    temperature: float = 0.0
    word_timestamps: bool = False


@dataclass(frozen=True)
class Transcript:
    text: str
    language: str
    duration_s: float  # seconds of audio decoded
    segments: tuple[Segment, ...]
    warnings: tuple[str, ...] = ()

    @property
    def tokens(self) -> int:
        return sum(s.tokens for s in self.segments)


@dataclass(frozen=True)
class OcrLine:
    """One line of text found in an image: its corners (x, y in pixels), text, confidence."""

    box: tuple[tuple[float, float], ...]
    text: str
    confidence: float


@dataclass(frozen=True)
class OcrResult:
    width: int
    height: int
    lines: tuple[OcrLine, ...]

    @property
    def text(self) -> str:
        return "\n".join(line.text for line in self.lines)


class SpeechModel(LoadedModel, Protocol):
    def transcribe(
        self, path: Path, req: TranscribeRequest, progress: AudioProgress | None = None
    ) -> Transcript: ...


class OcrModel(LoadedModel, Protocol):
    def read(self, image: Image.Image) -> OcrResult: ...


class MediaModel:
    """What speech and OCR models share: no text generation, no embeddings.

    ``generate``/``embed``/``count_tokens`` are the ``LoadedModel`` protocol's; a chat or
    an embedding sent to a speech or OCR model ends here with a one-line refusal.
    """

    capabilities: Capabilities
    n_ctx: int
    embed_ctx = 0
    model_id: str
    task: str  # "a speech-to-text" | "an OCR"
    use: str  # where to send its inputs

    def _refuse(self, what: str) -> UnsupportedFeatureError:
        return UnsupportedFeatureError(
            f"{self.model_id} is {self.task} model: it does not {what}", self.use
        )

    def generate(self, req: GenerationRequest) -> Iterator[Chunk]:
        raise self._refuse("generate text")

    def embed(self, texts: list[str]) -> list[list[float]]:
        raise self._refuse("embed text")

    def count_tokens(self, text: str) -> int:
        raise self._refuse("count text tokens")


def speech_model(model: LoadedModel, model_id: str) -> SpeechModel:
    """``model`` as a speech model, or a refusal naming the speech models to use."""
    if not model.capabilities.transcribe:
        raise UnsupportedFeatureError(
            f"{model_id} is not a speech-to-text model",
            "transcribe with whisper-tiny.en (bundled), or list models with: locara ls",
        )
    return cast("SpeechModel", model)


def ocr_model(model: LoadedModel, model_id: str) -> OcrModel:
    """``model`` as an OCR model, or a refusal naming the OCR models to use."""
    if not model.capabilities.ocr:
        raise UnsupportedFeatureError(
            f"{model_id} is not an OCR model",
            "read text with rapidocr-ppocrv4 (bundled), or list models with: locara ls",
        )
    return cast("OcrModel", model)
