"""``locara convert --to mlx``: the real default GGUF becomes an MLX directory in the store."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import DEFAULT_SHA, run_cli
from locara.ecology.lineage import read_lineage, tree_digest
from locara.settings import Settings
from locara.store.blobs import BlobStore, hash_file
from mlx_support import converted_mlx_dir, needs_mlx

pytestmark = needs_mlx


@pytest.fixture(scope="module")
def converted(tmp_path_factory: pytest.TempPathFactory, shared_home: Path) -> dict[str, object]:
    out = tmp_path_factory.mktemp("cli-convert") / "smollm2-mlx"
    res = run_cli(
        "convert", "smollm2-135m-instruct", "--to", "mlx", "-o", str(out), "--json",
        home=shared_home,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr
    return {"out": out, "result": json.loads(res.stdout)}


def test_cli_writes_an_mlx_directory_and_stores_it_with_lineage(
    converted: dict[str, object], shared_home: Path
) -> None:
    out = converted["out"]
    result = converted["result"]
    assert isinstance(out, Path) and isinstance(result, dict)
    names = sorted(p.name for p in out.iterdir())
    assert names == ["config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"]
    files = result["files"]
    assert files == {n: hash_file(out / n)[0] for n in names}
    # The store holds the directory as a tree whose digest names exactly these files.
    assert result["sha256"] == tree_digest(files)
    settings = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    assert BlobStore(settings).find(result["sha256"]) is not None
    rec = read_lineage(settings, result["sha256"])
    assert rec is not None
    assert rec.parents == (DEFAULT_SHA,)
    assert rec.operator == "convert" and "mlx" in rec.tool and rec.files == files


def test_conversion_is_deterministic(
    converted: dict[str, object],
    tmp_path_factory: pytest.TempPathFactory,
    default_gguf: Path,
) -> None:
    again = converted_mlx_dir(tmp_path_factory, default_gguf)  # a separate conversion
    result = converted["result"]
    assert isinstance(result, dict)
    assert {p.name: hash_file(p)[0] for p in again.iterdir() if p.is_file()} == result["files"]


def test_existing_output_is_not_overwritten(
    converted: dict[str, object], shared_home: Path
) -> None:
    res = run_cli(
        "convert", "smollm2-135m-instruct", "--to", "mlx", "-o", str(converted["out"]),
        home=shared_home,
    )  # fmt: skip
    assert res.returncode == 1
    assert "already exists" in res.stderr and "--force" in res.stderr


def test_to_mlx_from_a_directory_is_refused(tmp_path: Path, shared_home: Path) -> None:
    res = run_cli("convert", str(tmp_path), "--to", "mlx", home=shared_home)
    assert res.returncode == 1
    assert "--to mlx converts a GGUF file" in res.stderr


def test_unknown_source(shared_home: Path) -> None:
    res = run_cli("convert", "no such thing", "--to", "gguf", home=shared_home)
    assert res.returncode == 1
    assert "neither a file, a directory nor a model reference" in res.stderr
