"""A small reader of GGUF headers: metadata and tensor layout, without loading weights.

``gguf.GGUFReader`` materialises every field (tens of thousands of vocabulary strings)
and takes seconds on a 100 MB model; this reader walks the header once, keeps scalars
and short arrays, skips long arrays, and uses the ``gguf`` package's tables for value
types and quantization block sizes. It also checks that every tensor's bytes lie
inside the file, which is how a truncated download is caught before llama.cpp sees it.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from locara.errors import ModelFormatError

GGUF_MAGIC = b"GGUF"
_KEEP_ARRAY_MAX = 64  # longer arrays (vocabularies, merges) are skipped, only counted

# GGUFValueType numbering (from the GGUF specification / gguf package).
_SCALARS: dict[int, str] = {
    0: "<B",
    1: "<b",
    2: "<H",
    3: "<h",
    4: "<I",
    5: "<i",
    6: "<f",
    7: "<?",
    10: "<Q",
    11: "<q",
    12: "<d",
}
_STRING, _ARRAY = 8, 9


@dataclass(frozen=True)
class TensorInfo:
    name: str
    shape: tuple[int, ...]
    type_name: str
    offset: int
    n_bytes: int

    @property
    def n_elements(self) -> int:
        n = 1
        for d in self.shape:
            n *= d
        return n


@dataclass(frozen=True)
class GGUFInfo:
    """What a GGUF header says about a model (architecture, sizes, quant, template)."""

    path: Path
    version: int
    metadata: dict[str, Any]
    array_lengths: dict[str, int]
    tensors: tuple[TensorInfo, ...] = field(repr=False)

    def get(self, key: str, default: Any = None) -> Any:
        return self.metadata.get(key, default)

    def arch_value(self, suffix: str, default: Any = None) -> Any:
        return self.metadata.get(f"{self.architecture}.{suffix}", default)

    @property
    def architecture(self) -> str:
        return str(self.metadata.get("general.architecture", "unknown"))

    @property
    def n_params(self) -> int:
        return sum(t.n_elements for t in self.tensors)

    @property
    def tensor_bytes(self) -> int:
        return sum(t.n_bytes for t in self.tensors)

    @property
    def n_layers(self) -> int | None:
        v = self.arch_value("block_count")
        return int(v) if v is not None else None

    @property
    def n_heads(self) -> int | None:
        v = self.arch_value("attention.head_count")
        return int(v) if isinstance(v, int) else None

    @property
    def n_kv_heads(self) -> int | None:
        v = self.arch_value("attention.head_count_kv", self.n_heads)
        return int(v) if isinstance(v, int) else None

    @property
    def n_embd(self) -> int | None:
        v = self.arch_value("embedding_length")
        return int(v) if v is not None else None

    @property
    def key_length(self) -> int | None:
        v = self.arch_value("attention.key_length")
        if v is not None:
            return int(v)
        if self.n_embd and self.n_heads:
            return self.n_embd // self.n_heads
        return None

    @property
    def value_length(self) -> int | None:
        v = self.arch_value("attention.value_length")
        return int(v) if v is not None else self.key_length

    @property
    def feed_forward_length(self) -> int | None:
        v = self.arch_value("feed_forward_length")
        return int(v) if isinstance(v, int) else None

    @property
    def context_length(self) -> int | None:
        v = self.arch_value("context_length")
        return int(v) if v is not None else None

    @property
    def quant(self) -> str:
        """The file type (e.g. Q4_1), else the most common tensor type."""
        ft = self.metadata.get("general.file_type")
        if isinstance(ft, int):
            from gguf import LlamaFileType

            try:
                return LlamaFileType(ft).name.removeprefix("MOSTLY_").removeprefix("ALL_")
            except ValueError:
                pass
        counts: dict[str, int] = {}
        for t in self.tensors:
            counts[t.type_name] = counts.get(t.type_name, 0) + t.n_bytes
        return max(counts, key=lambda k: counts[k]) if counts else "unknown"

    @property
    def chat_template(self) -> str | None:
        v = self.metadata.get("tokenizer.chat_template")
        return v if isinstance(v, str) else None

    @property
    def vocab_size(self) -> int | None:
        n = self.array_lengths.get("tokenizer.ggml.tokens")
        return n if n is not None else self.arch_value("vocab_size")


class _Cursor:
    def __init__(self, f: BinaryIO, path: Path) -> None:
        self.f = f
        self.path = path

    def read(self, n: int) -> bytes:
        b = self.f.read(n)
        if len(b) != n:
            raise ModelFormatError(
                f"{self.path} is truncated (the GGUF header ends early)",
                "the file is incomplete: delete it and fetch it again (locara pull MODEL)",
            )
        return b

    def unpack(self, fmt: str) -> Any:
        return struct.unpack(fmt, self.read(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        n = self.unpack("<Q")
        if n > 1 << 26:
            raise ModelFormatError(f"{self.path}: corrupt GGUF header (string of {n} bytes)")
        return self.read(n).decode("utf-8", errors="replace")

    def value(self, vtype: int, key: str, lengths: dict[str, int]) -> Any:
        if vtype in _SCALARS:
            return self.unpack(_SCALARS[vtype])
        if vtype == _STRING:
            return self.string()
        if vtype == _ARRAY:
            itype = self.unpack("<I")
            n = self.unpack("<Q")
            lengths[key] = n
            if n <= _KEEP_ARRAY_MAX:
                return [self.value(itype, key, {}) for _ in range(n)]
            if itype in _SCALARS:
                self.f.seek(n * struct.calcsize(_SCALARS[itype]), 1)
            elif itype == _STRING:
                for _ in range(n):
                    self.f.seek(self.unpack("<Q"), 1)
            else:
                for _ in range(n):
                    self.value(itype, key, {})
            return None
        raise ModelFormatError(f"{self.path}: corrupt GGUF header (value type {vtype})")


def read_gguf(path: Path) -> GGUFInfo:
    """Parse the header of the GGUF at ``path``; not-GGUF and truncated files raise."""
    from gguf import GGML_QUANT_SIZES, GGMLQuantizationType

    try:
        f = path.open("rb")
    except OSError as exc:
        raise ModelFormatError(f"cannot open {path}: {exc.strerror or exc}") from exc
    with f:
        size = path.stat().st_size
        magic = f.read(4)
        if magic != GGUF_MAGIC:
            raise ModelFormatError(
                f"{path} is not a GGUF file (it starts with {magic!r}, not b'GGUF')",
                "llama.cpp needs a .gguf model; convert it with: locara convert",
            )
        cur = _Cursor(f, path)
        version = cur.unpack("<I")
        if version not in (2, 3):
            raise ModelFormatError(f"{path}: unsupported GGUF version {version}")
        n_tensors = cur.unpack("<Q")
        n_kv = cur.unpack("<Q")
        if n_tensors > 1 << 20 or n_kv > 1 << 20:
            raise ModelFormatError(f"{path}: corrupt GGUF header ({n_tensors} tensors)")
        meta: dict[str, Any] = {}
        lengths: dict[str, int] = {}
        for _ in range(n_kv):
            key = cur.string()
            meta[key] = cur.value(cur.unpack("<I"), key, lengths)
        raw: list[tuple[str, tuple[int, ...], int, int]] = []
        for _ in range(n_tensors):
            name = cur.string()
            n_dims = cur.unpack("<I")
            if n_dims > 8:
                raise ModelFormatError(f"{path}: corrupt GGUF tensor {name!r}")
            dims = tuple(cur.unpack("<Q") for _ in range(n_dims))
            raw.append((name, dims, cur.unpack("<I"), cur.unpack("<Q")))
        alignment = int(meta.get("general.alignment", 32))
        pos = f.tell()
        data_start = pos + (-pos % alignment)

    tensors: list[TensorInfo] = []
    for name, dims, ttype, offset in raw:
        try:
            qtype = GGMLQuantizationType(ttype)
            block, type_size = GGML_QUANT_SIZES[qtype]
        except (ValueError, KeyError) as exc:
            raise ModelFormatError(f"{path}: tensor {name!r} has unknown type {ttype}") from exc
        n = 1
        for d in dims:
            n *= d
        n_bytes = n * type_size // block
        end = data_start + offset + n_bytes
        if end > size:
            raise ModelFormatError(
                f"{path} is truncated: tensor {name!r} ends at byte {end} but the file has {size}",
                "the file is incomplete: delete it and fetch it again (locara pull MODEL)",
            )
        tensors.append(TensorInfo(name, dims, qtype.name, offset, n_bytes))
    return GGUFInfo(path, version, meta, lengths, tuple(tensors))
