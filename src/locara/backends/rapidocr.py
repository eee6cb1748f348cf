"""OCR with RapidOCR: PP-OCRv4 text detection, direction and recognition on ONNX Runtime.

The artifact is three ONNX graphs assembled in the store; their manifest roles
(``detector``, ``classifier``, ``recognizer``) say which is which, and RapidOCR is
given their paths, so the files it runs are the verified ones, not its package's.
Images arrive decoded and size-checked (``locara.media.images``).
"""

from __future__ import annotations

import threading
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

from locara.backends.base import Availability, Capabilities, LoadOptions
from locara.backends.media import MediaModel, OcrLine, OcrResult
from locara.errors import BackendError, ModelFormatError
from locara.registry.manifest import ModelManifest

if TYPE_CHECKING:
    from PIL import Image

_ROLES = {
    "detector": "det_model_path",
    "recognizer": "rec_model_path",
    "classifier": "cls_model_path",
}


class RapidOcrBackend:
    name: ClassVar[str] = "rapidocr"
    formats: ClassVar[frozenset[str]] = frozenset({"onnx"})

    def available(self) -> Availability:
        import importlib.util

        for module in ("rapidocr_onnxruntime", "onnxruntime", "cv2"):
            if importlib.util.find_spec(module) is None:
                return Availability(False, f"the {module} package is not installed")
        return Availability(True)

    def load(self, path: Path, manifest: ModelManifest, opts: LoadOptions) -> RapidOcr:
        from rapidocr_onnxruntime import RapidOCR

        paths: dict[str, str] = {}
        for art in manifest.artifact_list("rapidocr"):
            if art.files and (path.parent / art.files[0].name) == path:
                paths = {
                    _ROLES[f.role]: str(path.parent / f.name) for f in art.files if f.role in _ROLES
                }
        if len(paths) != len(_ROLES):
            raise ModelFormatError(
                f"{manifest.id}'s artifact must list a detector, a recognizer and a classifier",
                "fix its manifest's file roles",
            )
        threads = opts.n_threads or -1
        try:
            engine = RapidOCR(**paths, intra_op_num_threads=threads, inter_op_num_threads=1)
        except Exception as exc:  # onnxruntime raises its own (non-Python) error types
            raise BackendError(
                f"RapidOCR cannot load {manifest.id}: {exc}",
                f"check the stored files with: locara cache verify --deep; or: locara pull {manifest.id}",
            ) from exc
        return RapidOcr(engine, manifest)


class RapidOcr(MediaModel):
    task = "an OCR"
    use = "send images to /v1/ocr, or run: locara ocr IMAGE"

    def __init__(self, engine: Any, manifest: ModelManifest) -> None:
        self._engine = engine
        self._lock = threading.Lock()  # ONNX sessions use every thread; one image at a time
        self.model_id = manifest.id
        self.n_ctx = manifest.context_length
        self.capabilities = Capabilities(chat=False, completion=False, ocr=True)

    def read(self, image: Image.Image) -> OcrResult:
        """The lines of text in ``image``, top to bottom, with their boxes and confidence."""
        with self._lock:
            try:
                found, _ = self._engine(image)
            except Exception as exc:  # onnxruntime and OpenCV raise their own error types
                raise BackendError(
                    f"RapidOCR failed on a {image.width}x{image.height} image: {exc}",
                    "see the log (LOCARA_DEBUG=1)",
                ) from exc
        lines = tuple(
            OcrLine(tuple((float(x), float(y)) for x, y in box), str(text), float(score))
            for box, text, score in found or ()
        )
        return OcrResult(image.width, image.height, lines)

    def close(self) -> None:
        self._engine = None
