"""A minimal safetensors reader on numpy (memory-mapped), so converting needs no torch.

Format: 8-byte little-endian header length, a JSON header mapping tensor names to
``dtype``, ``shape`` and ``data_offsets`` (relative to the end of the header), then
the raw bytes. Every offset is checked against the file size before it is used.
"""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import numpy as np

from locara.errors import ModelFormatError

_DTYPES: dict[str, Any] = {
    "F64": np.float64,
    "F32": np.float32,
    "F16": np.float16,
    "I64": np.int64,
    "I32": np.int32,
    "I16": np.int16,
    "I8": np.int8,
    "U8": np.uint8,
    "BOOL": np.bool_,
}


def _bf16_to_f32(raw: np.ndarray[Any, Any]) -> np.ndarray[Any, Any]:
    return (raw.astype(np.uint32) << 16).view(np.float32)


def read_safetensors(path: Path) -> dict[str, np.ndarray[Any, Any]]:
    """All tensors in ``path`` as numpy arrays (bf16 widened to float32)."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            head = f.read(8)
            if len(head) != 8:
                raise ModelFormatError(f"{path} is not a safetensors file (too short)")
            (n,) = struct.unpack("<Q", head)
            if n > min(size - 8, 100 << 20):
                raise ModelFormatError(f"{path} is not a safetensors file (bad header length)")
            header = json.loads(f.read(n))
    except OSError as exc:
        raise ModelFormatError(f"cannot read {path}: {exc.strerror or exc}") from exc
    except ValueError as exc:
        raise ModelFormatError(f"{path} has a corrupt safetensors header ({exc})") from exc
    data = np.memmap(path, dtype=np.uint8, mode="r", offset=8 + n)
    out: dict[str, np.ndarray[Any, Any]] = {}
    for name, spec in header.items():
        if name == "__metadata__":
            continue
        dtype = str(spec.get("dtype"))
        start, end = (int(x) for x in spec["data_offsets"])
        shape = tuple(int(d) for d in spec["shape"])
        if not 0 <= start <= end <= data.shape[0]:
            raise ModelFormatError(
                f"{path} is truncated: tensor {name!r} lies outside the file",
                "the file is incomplete: fetch it again",
            )
        raw = data[start:end]
        if dtype == "BF16":
            arr = _bf16_to_f32(raw.view(np.uint16))
        elif dtype in _DTYPES:
            arr = raw.view(_DTYPES[dtype])
        else:
            raise ModelFormatError(f"{path}: tensor {name!r} has unsupported dtype {dtype}")
        count = 1
        for d in shape:
            count *= d
        if arr.size != count:
            raise ModelFormatError(f"{path}: tensor {name!r} has {arr.size} values, not {count}")
        out[name] = arr.reshape(shape)
    return out
