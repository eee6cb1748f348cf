"""The models a client can name, and what their weights say about them.

``/v1/models`` and ``/api/tags`` list what runs now: the stored models, and the bundled
ones whose package is installed (they run without a download and are stored on first
use). ``/api/tags`` and ``/api/show`` describe a model from its weights (GGUF metadata),
never from a guess at its id.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from locara.errors import LocaraError
from locara.registry.catalog import Registry
from locara.registry.manifest import Artifact, ModelManifest
from locara.settings import Settings
from locara.store.blobs import BlobStore
from locara.store.index import NOT_MODELS


@dataclass(frozen=True)
class ModelEntry:
    """A model a client can name and run now: stored, or bundled in a local package.

    ``tag`` is Ollama's: "latest" for the artifact the bare id runs (what
    ``select_artifact`` picks: a stored one, else the bundled one), else its quant.
    """

    model_id: str
    tag: str
    quant: str | None
    format: str
    size_bytes: int
    sha256: str | None
    modified_at: float  # when it was stored; for a bundled file, the file's mtime
    stored: bool
    manifest: ModelManifest | None
    path: Path | None  # the stored blob or the bundled file, when it is a file at hand
    source: str | None  # the local source of a model that is not stored yet

    @property
    def name(self) -> str:
        return f"{self.model_id}:{self.tag}"


def available_models(settings: Settings) -> list[ModelEntry]:
    """Stored models, then models that run without a download (a local source is present).

    A fresh install stores nothing, yet its bundled models run: clients that look a model
    up before using it (llm-ollama, langchain-ollama's validate_model_on_init) must find
    them. Slow enough (SQLite, stat calls, package lookups) to keep off the event loop.
    """
    registry = Registry(settings)
    store = BlobStore(settings)
    manifests: dict[str, ModelManifest | None] = {}

    def manifest_of(model_id: str) -> ModelManifest | None:
        if model_id not in manifests:
            try:
                manifests[model_id] = registry.get(model_id)
            except LocaraError:  # adopted or hand-made entries; a broken user manifest
                manifests[model_id] = None
        return manifests[model_id]

    found: list[tuple[ModelEntry, Artifact | None]] = []
    records = store.index.blobs() if settings.db_path.exists() else []
    for rec in records:
        if not rec.model_id:
            continue
        meta = store.read_meta(rec.sha256) or {}
        if meta.get("kind") in NOT_MODELS:
            continue  # adapters and task suites share the store; they are not models
        tree = meta.get("part_of")
        if isinstance(tree, str) and store.find(tree) is not None:
            continue  # one file of a multi-file artifact: listed as that artifact
        manifest = manifest_of(rec.model_id)
        blob = store.find(rec.sha256)
        entry = ModelEntry(
            rec.model_id,
            "",
            rec.quant,
            rec.format,
            rec.size_bytes,
            rec.sha256,
            rec.last_used or rec.created_at,
            True,
            manifest,
            blob.path if blob is not None and not blob.is_tree else None,
            None,
        )
        pair = manifest.artifact_by_digest(rec.sha256) if manifest else None
        found.append((entry, pair[1] if pair else None))
    stored = {rec.sha256 for rec in records}
    for model_id in registry.ids():
        manifest = manifest_of(model_id)
        if manifest is None:
            continue
        for _, art in manifest.all_artifacts():
            if art.sha256 in stored:
                continue
            local = local_source(art)
            if local is None:
                continue  # downloads first, or the package that carries it is missing
            entry = ModelEntry(
                manifest.id,
                "",
                art.quant,
                art.format,
                art.size_bytes or manifest.size_bytes or 0,
                art.sha256,
                local.mtime,
                False,
                manifest,
                local.file,
                local.url,
            )
            found.append((entry, art))
    return _tagged(found)


def _tagged(found: list[tuple[ModelEntry, Artifact | None]]) -> list[ModelEntry]:
    """Name each entry: ``latest`` for what the bare id runs, else the quant."""
    latest: dict[str, int] = {}
    for model_id in dict.fromkeys(e.model_id for e, _ in found):
        mine = [i for i, (e, _) in enumerate(found) if e.model_id == model_id]
        manifest = found[mine[0]][0].manifest
        if manifest is None:
            latest[model_id] = mine[0]
            continue
        # select_artifact's order for a bare id: the first stored llama.cpp artifact in
        # the manifest's order, else the first bundled one.
        key = "llama_cpp" if "llama_cpp" in manifest.artifacts else next(iter(manifest.artifacts))
        order = manifest.artifact_list(key)
        for stored in (True, False):
            hits = [i for i in mine if found[i][0].stored is stored and found[i][1] in order]
            if hits:
                latest[model_id] = min(hits, key=lambda i: order.index(found[i][1]))
                break
    return [
        replace(
            entry, tag="latest" if latest.get(entry.model_id) == i else entry.quant or entry.format
        )
        for i, (entry, _) in enumerate(found)
    ]


@dataclass(frozen=True)
class LocalSource:
    """Where a not-yet-stored artifact's bytes are on this machine."""

    url: str  # package://, file:// or derived://
    file: Path | None  # the artifact itself, when it is one file taken as it is
    mtime: float


def local_source(art: Artifact) -> LocalSource | None:
    """The artifact's local source if its bytes are here (the package is installed)."""
    if art.files is not None:
        parts = [_present(f.sources) for f in art.files]
        if not parts or any(p is None for p in parts):
            return None
        return LocalSource(next(p[0] for p in parts if p), None, max(p[2] for p in parts if p))
    found = _present(art.sources)
    if found is None:
        return None
    url, path, mtime = found
    return LocalSource(url, None if url.startswith("derived://") else path, mtime)


def _present(sources: Iterable[str]) -> tuple[str, Path, float] | None:
    """The first local source whose bytes exist: (source, the file it reads, its mtime)."""
    from locara.store.derived import SCHEME, parse_derived
    from locara.store.sources import local_path

    for source in sources:
        try:
            if source.startswith(SCHEME):
                d = parse_derived(source)  # made from a parent file: that file must exist
                path = local_path(d.source) / d.parent_file
            elif source.startswith(("package://", "file://")):
                path = local_path(source)
            else:
                continue
            return source, path, path.stat().st_mtime
        except (LocaraError, OSError):
            continue
    return None


# -- facts from the weights ----------------------------------------------------------------


@dataclass(frozen=True)
class ModelFacts:
    """What the weights say about a model: architecture family and parameter count."""

    family: str
    parameter_size: str


def human_count(n: int) -> str:
    """Ollama's parameter-size style: 134515008 -> "134.52M"."""
    for unit, scale in (("T", 10**12), ("B", 10**9), ("M", 10**6), ("K", 10**3)):
        if n >= scale:
            return f"{n / scale:.2f}".rstrip("0").rstrip(".") + unit
    return str(n)


def size_from_id(manifest: ModelManifest | None) -> str:
    """The size label in a model id ("135m" -> "135M"): used when no weights are at hand."""
    if manifest is None:
        return ""
    size = next((t for t in manifest.id.split("-") if t[:-1].isdigit() and t[-1] in "mb"), "")
    return size.upper()


@functools.lru_cache(maxsize=64)
def _gguf_facts(path: Path, size: int, mtime_ns: int) -> ModelFacts:
    # Keyed on the file's identity: stored blobs never change, and a rewritten bundled
    # file misses the cache. Reading a header costs ~0.2 s (the vocabulary is in it).
    from locara.device.gguf_meta import read_gguf

    info = read_gguf(path)
    family = str(info.metadata.get("general.architecture", ""))
    return ModelFacts(family, human_count(info.n_params))


def model_facts(entry_path: Path | None, source: str | None, fmt: str) -> ModelFacts | None:
    """Read from the GGUF at hand (stored blob or bundled file); for a model still to be
    converted (``derived://``), the family from its parent's config.json. Blocking."""
    if entry_path is not None and fmt == "gguf":
        try:
            st = entry_path.stat()
            return _gguf_facts(entry_path, st.st_size, st.st_mtime_ns)
        except (LocaraError, OSError):
            pass
    if source is not None and source.startswith("derived://"):
        from locara.convert.hf_to_gguf import inspect_hf_dir
        from locara.store.derived import parse_derived
        from locara.store.sources import local_path

        try:
            d = parse_derived(source)
            return ModelFacts(inspect_hf_dir(local_path(d.source)).family, "")
        except (LocaraError, OSError):
            pass
    return None


# -- Ollama's description of a model ----------------------------------------------------


def ollama_details(
    manifest: ModelManifest | None,
    quant: str | None,
    fmt: str,
    facts: ModelFacts | None = None,
) -> dict[str, Any]:
    """Ollama's ``details``. Without ``facts`` the family is guessed from the id (what
    /api/ps still does); /api/tags and /api/show read it from the weights."""
    if facts is None:
        guess = manifest.id.split("-")[0] if manifest is not None else ""
        facts = ModelFacts(guess, size_from_id(manifest))
    family = facts.family
    return {
        "parent_model": "",
        "format": fmt,
        "family": family,
        "families": [family] if family else None,
        "parameter_size": facts.parameter_size or size_from_id(manifest),
        "quantization_level": quant or "",
    }


def ollama_tag(e: ModelEntry) -> dict[str, Any]:
    """One ``/api/tags`` entry. Blocking: may read a GGUF header (cached per file)."""
    facts = model_facts(e.path, e.source, e.format) or ModelFacts("", size_from_id(e.manifest))
    return {
        "name": e.name,
        "model": e.name,
        "modified_at": _iso(e.modified_at),
        "size": e.size_bytes,
        "digest": e.sha256 or "",
        # Beyond Ollama's fields: a bundled model runs before it is stored (its first use
        # copies it into the store, verified); ``stored`` says which this is.
        "details": {**ollama_details(e.manifest, e.quant, e.format, facts), "stored": e.stored},
    }


def ollama_capabilities(manifest: ModelManifest, tools: bool = False) -> list[str]:
    """Ollama's capability names for what this server accepts for the model.

    What the server accepts, not what the weights might do: image inputs are refused on
    every route, so "vision" is never claimed; "tools" only when the caller found that
    the model's chat template renders tools and a llama-server worker (whose parser
    reads the calls) will run it. llama.cpp's own analysis of the template, at load, has
    the last word: a request it cannot serve is a 400 that says why.
    """
    if manifest.modality == "embedding":
        return ["embedding"]
    if manifest.modality in ("chat", "vision"):
        return ["completion", "tools"] if tools else ["completion"]
    return []


def _iso(ts: float) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat().replace("+00:00", "Z")
