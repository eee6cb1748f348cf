"""Vectors for chunks and queries from a local embedding model, through Locara's engine.

``LocalEmbedder`` resolves the model the way every surface does (registry → store →
plan), so its id and digest are known before anything loads, and loads it only when
there is text to embed: re-adding unchanged files never loads a model. The server
embeds queries through ``Service.embed`` instead (its pool, leases and ledger); both
give the same vectors for the same model digest.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

import numpy as np
import numpy.typing as npt

from locara.engine.loader import ModelHandle, ResolvedModel, load, resolve
from locara.errors import UsageError
from locara.planner.plan import PlanRequest
from locara.settings import Settings

BATCH = 32
Vectors = npt.NDArray[np.float32]


class Embedder(Protocol):
    model_id: str
    sha256: str

    def embed(self, texts: Sequence[str]) -> Vectors: ...


class LocalEmbedder:
    """The embedding model ``reference`` (default: the settings' embedding model), in process."""

    def __init__(self, settings: Settings, reference: str | None = None) -> None:
        self.settings = settings
        request = PlanRequest(features=frozenset({"embeddings"}))
        self.resolved: ResolvedModel = resolve(
            settings, reference or settings.default_embedding_model, request=request
        )
        if self.resolved.manifest.modality != "embedding":
            raise UsageError(
                f"{self.resolved.manifest.id} is not an embedding model",
                f"pass an embedding model, e.g. --embedding-model {settings.default_embedding_model}",
            )
        self.model_id = self.resolved.manifest.id
        self.sha256 = self.resolved.blob.sha256
        self._handle: ModelHandle | None = None

    def embed(self, texts: Sequence[str]) -> Vectors:
        """Unit vectors for ``texts``, in batches; each text cut to the model's context."""
        from locara.server.embed_inputs import truncate_to_tokens

        if self._handle is None:
            self._handle = load(self.settings, self.resolved)
        model = self._handle.model
        out: list[list[float]] = []
        for i in range(0, len(texts), BATCH):
            batch = [
                t
                if model.count_tokens(t) <= model.embed_ctx
                else truncate_to_tokens(model, t, model.embed_ctx)
                for t in texts[i : i + BATCH]
            ]
            out.extend(model.embed(batch))
        return np.asarray(out, dtype=np.float32).reshape(len(texts), -1)

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None
