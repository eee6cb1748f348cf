"""Backend names and the default routing rule (Apple Silicon + MLX artifact → MLX).

The rule lives in the planner (``locara.planner.routing``), the only place the runtime
asks; the devices here are synthetic profiles.
"""

from __future__ import annotations

import json

import pytest

from locara.backends.registry import canonical_name, get_backend
from locara.device.profile import DeviceProfile
from locara.errors import UsageError
from locara.planner.routing import route
from locara.registry.catalog import Registry
from locara.registry.manifest import ModelManifest
from locara.settings import Settings


def _manifest(with_mlx: bool) -> ModelManifest:
    base = Registry(Settings.from_env({"LOCARA_HOME": "/nonexistent"})).get("smollm2-135m-instruct")
    data = json.loads(base.model_dump_json(by_alias=True, exclude_none=True))
    if with_mlx:
        data["artifacts"]["mlx"] = {
            "format": "mlx",
            "quant": "4bit",
            "files": [
                {
                    "name": "model.safetensors",
                    "url": "https://example.invalid/model.safetensors",
                    "sha256": "1" * 64,
                    "size_bytes": 10,
                    "role": "weights",
                }
            ],
        }
    return ModelManifest.model_validate(data)


NOT_APPLE = "not Apple Silicon: llama.cpp first"


@pytest.mark.parametrize(
    ("system", "machine", "with_mlx", "needs", "order", "why", "unusable"),
    [
        (
            "Darwin", "arm64", True, (), ["mlx", "llama_cpp"],
            "Apple Silicon with an MLX artifact: MLX first", [],
        ),
        (
            "Darwin", "arm64", False, (), ["llama_cpp"],  # no MLX artifact
            "only llama_cpp can run this model here", [],
        ),
        (
            "Darwin", "arm64", True, ("json_schema",), ["llama_cpp"],  # MLX has no grammar
            "only llama_cpp can run this model here",
            [("mlx", "json_schema output needs llama.cpp grammars; MLX cannot constrain output")],
        ),
        (
            "Darwin", "arm64", True, ("embeddings",), ["llama_cpp"],
            "only llama_cpp can run this model here",
            [("mlx", "embeddings run on llama.cpp only")],
        ),
        ("Darwin", "x86_64", True, (), ["llama_cpp", "mlx"], NOT_APPLE, []),  # Intel Mac
        ("Linux", "x86_64", True, (), ["llama_cpp", "mlx"], NOT_APPLE, []),  # MLX when asked
        ("Linux", "aarch64", True, (), ["llama_cpp", "mlx"], NOT_APPLE, []),
    ],
)  # fmt: skip
def test_default_routing_rule(
    system: str,
    machine: str,
    with_mlx: bool,
    needs: tuple[str, ...],
    order: list[str],
    why: str,
    unusable: list[tuple[str, str]],
) -> None:
    r = route(_manifest(with_mlx), _device(system, machine, mlx=True), needs)
    assert (r.order, r.reasons, r.unusable) == (order, [why], unusable)


def test_apple_silicon_without_mlx_installed_falls_back() -> None:
    r = route(_manifest(True), _device("Darwin", "arm64", mlx=False))
    assert r.order == ["llama_cpp"]
    assert r.unusable == [
        ("mlx", "mlx is not installed on this device (pip install 'locara[mlx]')")
    ]


def _device(system: str, machine: str, mlx: bool) -> DeviceProfile:
    return DeviceProfile(system, "1", machine, 16 * 2**30, 12 * 2**30, mlx_installed=mlx)


def test_names_and_aliases() -> None:
    assert canonical_name("llamacpp") == "llama_cpp"
    assert canonical_name("llama.cpp") == "llama_cpp"
    assert canonical_name(" MLX ") == "mlx"


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as exc:
        get_backend("vllm")
    assert (exc.value.message, exc.value.hint) == (
        "unknown backend 'vllm'",
        "choose one of: llama_cpp, mlx",
    )
