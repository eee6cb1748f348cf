"""select_artifact: what `locara run/pull/show` fetch when the reference names no quant."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from locara.planner.select import select_artifact
from locara.registry.catalog import Registry
from locara.registry.refs import parse_ref
from locara.settings import Settings
from locara.store.blobs import BlobStore

GB = 1_000_000_000


def _two_quants(reg: Path, big_first: bool) -> None:
    big = {
        "format": "gguf",
        "quant": "Q8_0",
        "url": "https://example.invalid/big.gguf",
        "sha256": "a" * 64,
        "size_bytes": 60 * GB,
    }
    small = {
        "format": "gguf",
        "quant": "Q4_K_M",
        "url": "https://example.invalid/small.gguf",
        "sha256": "b" * 64,
        "size_bytes": 2 * GB,
    }
    reg.mkdir(parents=True, exist_ok=True)
    (reg / "two-quants.json").write_text(
        json.dumps(
            {
                "id": "two-quants",
                "version": "1",
                "displayName": "two quants",
                "license": "MIT",
                "modality": "chat",
                "context_length": 4096,
                "artifacts": {"llama_cpp": [big, small] if big_first else [small, big]},
            }
        )
    )


@pytest.mark.parametrize("big_first", [True, False])
def test_unstored_model_gets_the_quant_the_planner_fits(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, big_first: bool
) -> None:
    # 60 GB cannot fit this 24 GiB machine; the manifest's order must not decide.
    _two_quants(tmp_path / "reg", big_first)
    monkeypatch.setenv("LOCARA_REGISTRY_PATH", str(tmp_path / "reg"))
    settings = Settings.from_env()
    manifest = Registry(settings).get("two-quants")
    art = select_artifact(manifest, parse_ref("two-quants"), BlobStore(settings))
    assert art.quant == "Q4_K_M"


def test_a_named_quant_or_the_bundled_file_still_wins(settings: Settings) -> None:
    manifest = Registry(settings).get("smollm2-135m-instruct")
    store = BlobStore(settings)
    # The bundled Q4_1 is preferred over downloading anything, so it runs offline.
    assert select_artifact(manifest, parse_ref("smollm2-135m-instruct"), store).quant == "Q4_1"
    assert select_artifact(manifest, parse_ref("smollm2-135m-instruct:Q8_0"), store).quant == "Q8_0"
