"""Backend names and the default routing rule (Apple Silicon + MLX artifact → MLX).

The rule lives in the planner (``locara.planner.routing``), the only place the runtime
asks; the devices here are synthetic profiles.
"""

from __future__ import annotations

import json

import pytest

from locara.backends.registry import (
    available_backends,
    canonical_name,
    get_backend,
    manifest_key,
)
from locara.device.profile import DeviceProfile
from locara.errors import UsageError
from locara.planner.routing import default_backend
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


@pytest.mark.parametrize(
    ("system", "machine", "with_mlx", "needs", "expected"),
    [
        ("Darwin", "arm64", True, (), "mlx"),
        ("Darwin", "arm64", False, (), "llama_cpp"),  # no MLX artifact
        ("Darwin", "arm64", True, ("json_schema",), "llama_cpp"),  # MLX has no grammar
        ("Darwin", "arm64", True, ("embeddings",), "llama_cpp"),
        ("Darwin", "x86_64", True, (), "llama_cpp"),  # Intel Mac
        ("Linux", "x86_64", True, (), "llama_cpp"),  # MLX on Linux only when asked
        ("Linux", "aarch64", True, (), "llama_cpp"),
    ],
)
def test_default_routing_rule(
    system: str, machine: str, with_mlx: bool, needs: tuple[str, ...], expected: str
) -> None:
    m = _manifest(with_mlx)
    assert default_backend(m, _device(system, machine, mlx=True), needs) == expected


def test_apple_silicon_without_mlx_installed_falls_back() -> None:
    m = _manifest(True)
    assert default_backend(m, _device("Darwin", "arm64", mlx=False)) == "llama_cpp"


def _device(system: str, machine: str, mlx: bool) -> DeviceProfile:
    return DeviceProfile(system, "1", machine, 16 * 2**30, 12 * 2**30, mlx_installed=mlx)


def test_names_and_aliases() -> None:
    assert canonical_name("llamacpp") == "llama_cpp"
    assert canonical_name("llama.cpp") == "llama_cpp"
    assert canonical_name("MLX") == "mlx"
    assert manifest_key("llama_cpp") == "llamacpp"
    assert manifest_key("mlx") == "mlx"
    assert set(available_backends()) <= {"llama_cpp", "mlx"}
    assert "llama_cpp" in available_backends()


def test_unknown_backend_lists_the_known_ones() -> None:
    with pytest.raises(UsageError) as exc:
        get_backend("vllm")
    assert exc.value.hint is not None
    assert "llama_cpp" in exc.value.hint and "mlx" in exc.value.hint
