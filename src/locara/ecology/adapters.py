"""The adapter registry: AdapterPackage manifests over blobs in the content-addressed store.

An adapter's GGUF is a blob like any model (``models/<sha256>/model.gguf``), held by a
``adapter:<id>`` reference so GC keeps it; its manifest is
``$LOCARA_HOME/adapters/<id>.json``. The manifest binds it to the SHA-256 of the base
artifact it was added for, and ``bind`` refuses any other base by digest — then by
architecture, tensors and shapes — before llama.cpp sees the adapter.
"""

from __future__ import annotations

import os
import re
import shutil
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from pydantic import ValidationError

from locara.backends.base import AdapterUse
from locara.device.gguf_meta import read_gguf
from locara.ecology.adapter_manifest import (
    AdapterFile,
    AdapterManifest,
    BaseBinding,
    LoraParams,
    ScaleSource,
)
from locara.ecology.lineage import LineageRecord, record_lineage, tool_version
from locara.ecology.lora import LoraInfo, check_fits_base, check_scale, read_lora
from locara.errors import (
    AdapterMismatchError,
    ManifestError,
    StoreError,
    UnknownAdapterError,
    UnsupportedFeatureError,
    UsageError,
)
from locara.registry.names import check_model_id
from locara.settings import Settings
from locara.store.blobs import BlobStore, hash_file
from locara.store.index import ADAPTER_BASE_PREFIX

if TYPE_CHECKING:
    from locara.engine.loader import ResolvedModel

HOLDER = "adapter:"
_SPEC = re.compile(r"(?P<id>[a-z0-9][a-z0-9._-]{0,127})(?::(?P<scale>[^:]+))?")


@dataclass(frozen=True)
class AdapterSpec:
    """``ID[:SCALE]`` as a user writes it (CLI ``--adapter``, a request's ``adapters``)."""

    id: str
    scale: float = 1.0

    @classmethod
    def parse(cls, text: str) -> AdapterSpec:
        m = _SPEC.fullmatch(text.strip())
        try:
            if m is None:
                raise ValueError
            scale = float(m["scale"]) if m["scale"] is not None else 1.0
        except ValueError:
            raise UsageError(
                f"invalid adapter {text!r}", "write ID or ID:SCALE, e.g. my-adapter:0.5"
            ) from None
        return cls(m["id"], scale)


@dataclass(frozen=True)
class BaseArtifact:
    """The artifact an adapter is added for or applied to."""

    sha256: str
    path: Path
    model_id: str | None = None


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


def _default_id(source: Path) -> str:
    stem = source.name.removesuffix(".gguf").lower()
    return re.sub(r"[^a-z0-9._-]+", "-", stem).strip("-._")[:128] or "adapter"


class AdapterRegistry:
    """Adapters under ``settings.home``: add, list, get, remove, bind."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.store = BlobStore(settings)
        self.dir = settings.home / "adapters"

    def _path(self, adapter_id: str) -> Path:
        return self.dir / f"{check_model_id(adapter_id)}.json"

    # -- reading ---------------------------------------------------------------------
    def get(self, adapter_id: str) -> AdapterManifest:
        path = self._path(adapter_id)
        try:
            text = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            known = [m.id for m in self.all()]
            raise UnknownAdapterError(
                f"unknown adapter {adapter_id!r}",
                "list adapters with: locara adapter ls"
                + (
                    f" (known: {', '.join(known[:5])})"
                    if known
                    else "; add one with: locara adapter add FILE --base MODEL"
                ),
            ) from None
        try:
            return AdapterManifest.model_validate_json(text)
        except ValidationError as exc:
            raise ManifestError(
                f"adapter manifest {path} is invalid: {exc.errors()[0]['msg']}",
                f"remove it with: locara adapter rm {adapter_id}, then add the adapter again",
            ) from exc

    def all(self) -> list[AdapterManifest]:
        if not self.dir.is_dir():
            return []
        return [self.get(p.stem) for p in sorted(self.dir.glob("*.json"))]

    def for_base(self, sha256: str) -> list[AdapterManifest]:
        return [m for m in self.all() if m.base.sha256 == sha256]

    def blob_path(self, manifest: AdapterManifest) -> Path:
        """The adapter's GGUF in the store, verified (a damaged blob is an error here)."""
        return self.store.verify(manifest.sha256).path

    # -- writing ---------------------------------------------------------------------
    def add(
        self,
        source: Path,
        base: BaseArtifact,
        *,
        adapter_id: str | None = None,
        version: str = "1",
        task: str | None = None,
        niche: str | None = None,
        license: str = "NOASSERTION",
        training_data: str | None = None,
        description: str | None = None,
        replace: bool = False,
    ) -> AdapterManifest:
        """Check ``source`` (a LoRA GGUF or a PEFT directory) against ``base`` and store it.

        Nothing is kept unless every check passes: a PEFT directory is converted into
        the store's temp directory, the GGUF is checked against the base's header, and
        only then placed under its digest and described by a manifest.
        """
        adapter_id = check_model_id(adapter_id or _default_id(source))
        if self._path(adapter_id).exists() and not replace:
            raise UsageError(
                f"adapter {adapter_id!r} already exists",
                f"pick another --id, or replace it: locara adapter add ... --id {adapter_id} "
                "--replace",
            )
        if not source.exists():
            raise UsageError(
                f"{source} does not exist", "pass a LoRA .gguf file or a PEFT directory"
            )
        base_info = read_gguf(base.path)
        self.store.ensure_writable()
        staging = self.settings.tmp_dir / f"adapter-{os.getpid()}-{uuid.uuid4().hex[:8]}.gguf"
        try:
            if source.is_dir():
                from locara.ecology.peft import convert_peft, read_peft_config

                peft = read_peft_config(source)
                convert_peft(peft, base_info, staging)
                gguf_path, scale_source, parent = (
                    staging,
                    peft.source,
                    source / "adapter_model.safetensors",
                )
            else:
                shutil.copyfile(source, staging)
                gguf_path, scale_source, parent = staging, None, None
            lora = read_lora(gguf_path)
            check_fits_base(lora, base_info, adapter_id)
            sha, size = hash_file(gguf_path)
            blob = self.store.place_file(
                gguf_path, sha, size, "gguf",
                {"id": adapter_id, "format": "gguf", "kind": "adapter", "sources": [str(source)]},
            )  # fmt: skip
        finally:
            staging.unlink(missing_ok=True)
        manifest = AdapterManifest(
            id=adapter_id,
            version=version,
            base=BaseBinding(
                sha256=base.sha256, model_id=base.model_id, architecture=base_info.architecture
            ),
            files=[AdapterFile(name=blob.path.name, sha256=sha, size_bytes=size)],
            lora=_params(lora, scale_source),
            task=task,
            niche=niche,
            license=license,
            training_data=training_data,
            description=description,
            created_at=_now(),
        )
        self.store.index.add_ref(sha, HOLDER + adapter_id)
        self.store.index.add_ref(base.sha256, ADAPTER_BASE_PREFIX + adapter_id)
        self._write(manifest)
        # The adapter descends from its base (the binding), and from the PEFT weights it
        # was converted from, if any.
        parents = (base.sha256,) + ((hash_file(parent)[0],) if parent is not None else ())
        record_lineage(
            self.settings,
            LineageRecord(
                sha, parents, "attach",
                tool_version("gguf", "safetensors") if parent else tool_version("gguf"),
                {"kind": "lora", "from": manifest.lora.source.format, "rank": manifest.lora.rank,
                 "alpha": manifest.lora.alpha, "convention": manifest.lora.source.convention},
            ),
        )  # fmt: skip
        return manifest

    def _write(self, manifest: AdapterManifest) -> None:
        self.dir.mkdir(parents=True, exist_ok=True)
        final = self._path(manifest.id)
        tmp = self.dir / f".{manifest.id}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
        tmp.write_text(manifest.model_dump_json(indent=2) + "\n", encoding="utf-8")
        os.replace(tmp, final)

    def remove(self, adapter_id: str) -> AdapterManifest:
        """Forget the adapter; its blob goes too unless another manifest or holder uses it."""
        manifest = self.get(adapter_id)
        self._path(adapter_id).unlink()
        self.store.index.remove_refs(HOLDER + adapter_id)
        self.store.index.remove_refs(ADAPTER_BASE_PREFIX + adapter_id)
        if not self.store.index.refs(manifest.sha256):
            if self.store.in_use(manifest.sha256):
                raise StoreError(
                    f"adapter {adapter_id} was removed, but its file is in use by a loaded model",
                    "it is freed by: locara cache gc, once that model is unloaded",
                )
            self.store.remove(manifest.sha256)
        return manifest

    # -- binding ---------------------------------------------------------------------
    def bind(self, specs: Iterable[AdapterSpec], base: BaseArtifact) -> tuple[AdapterUse, ...]:
        """The adapters of ``specs`` checked against ``base``, ready for the backend.

        Refused, each with both sides named: another base digest, another architecture,
        a tensor the base lacks, a shape that differs, a scale outside the sane range.
        """
        uses: list[AdapterUse] = []
        base_info = None
        for spec in specs:
            manifest = self.get(spec.id)
            check_scale(spec.scale, spec.id)
            if manifest.base.sha256 != base.sha256:
                raise AdapterMismatchError(
                    f"adapter {spec.id} was made for base sha256:{manifest.base.sha256}, but the "
                    f"model {base.model_id or 'given'} is sha256:{base.sha256}",
                    f"run it on its base: locara run {manifest.base.model_id or 'MODEL'}"
                    f"@sha256:{manifest.base.sha256} --adapter {spec.id}",
                )
            if any(u.id == spec.id for u in uses):
                raise UsageError(f"adapter {spec.id} is named twice", "name each adapter once")
            path = self.blob_path(manifest)
            base_info = base_info or read_gguf(base.path)
            # The digest matched, so a shape mismatch means a damaged or swapped file.
            check_fits_base(read_lora(path), base_info, spec.id)
            uses.append(AdapterUse(spec.id, manifest.sha256, path, spec.scale))
        return tuple(uses)


def _params(lora: LoraInfo, source: ScaleSource | None) -> LoraParams:
    return LoraParams(
        rank=lora.rank,
        alpha=lora.alpha,
        source=source or ScaleSource(format="gguf", convention="alpha/rank", alpha=lora.alpha),
        target_modules=list(lora.modules),
    )


def resolve_base(settings: Settings, reference: str) -> BaseArtifact:
    """The stored artifact ``MODEL[@sha256:HEX]`` names (fetched and verified if needed)."""
    from locara.engine.loader import resolve

    resolved = resolve(settings, reference)
    return BaseArtifact(resolved.blob.sha256, resolved.blob.path, resolved.manifest.id)


def bind_loaded(
    settings: Settings, specs: Iterable[AdapterSpec], resolved: ResolvedModel, lora: bool
) -> tuple[AdapterUse, ...]:
    """``specs`` bound to a resolved (or loaded) model; ``lora``: the model can apply them.

    Every refusal happens here, before the backend sees an adapter: unknown ids, another
    base, shapes, scales; and a model loaded where adapters cannot be applied.
    """
    specs = list(specs)
    if not specs:
        return ()
    base = BaseArtifact(resolved.blob.sha256, resolved.blob.path, resolved.manifest.id)
    uses = AdapterRegistry(settings).bind(specs, base)
    if not lora:
        raise UnsupportedFeatureError(
            f"{resolved.manifest.id} is loaded on a backend that does not apply LoRA adapters",
            "use a GGUF model (llama.cpp applies adapters)",
        )
    return uses
