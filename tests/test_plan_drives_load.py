"""The plan drives every load: what `run`, the server's pool and `bench` hand the backend.

Three synthetic devices (Apple Silicon 16 GB, a 24 GB NVIDIA box, an 8 GB CPU-only
machine) reach the runtime through LOCARA_DEVICE_PROFILE. The real llama.cpp backend
loads the real bundled model; a recording wrapper at the backend boundary keeps the
LoadOptions it was handed, which must equal the plan. This machine's llama.cpp build
has no GPU backend, so a GPU plan falls back to the CPU and says so; to see GPU layers
handed over as planned, one fake stands in for a GPU build's
``llama_supports_gpu_offload()`` (a CPU build ignores the layers and still loads).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import asdict
from pathlib import Path
from typing import Any

import httpx
import pytest
from click.testing import CliRunner

from conftest import DEFAULT_MODEL, run_cli
from locara.backends import registry
from locara.backends.base import LoadOptions
from locara.device.profile import BatteryInfo, DeviceProfile, GPUInfo
from locara.engine.loader import load_options, resolve
from locara.engine.pool import ModelPool, PoolConfig
from locara.errors import DeviceProfileError
from locara.planner.plan import PlanRequest, plan_model
from locara.settings import Settings
from server_harness import clone_home, free_port, running_server

GiB = 2**30
LAYERS = 31  # SmolLM2-135M: 30 blocks + the output layer
NO_GPU_BUILD = "this llama.cpp build has no GPU backend"

PROFILES: dict[str, DeviceProfile] = {
    "apple-16gb": DeviceProfile(
        os="Darwin",
        os_version="24.1",
        arch="arm64",
        ram_total_bytes=16 * GiB,
        ram_available_bytes=11 * GiB,
        cpu_model="Apple M2 Pro",
        cores_logical=8,
        cores_performance=4,
        cores_efficiency=4,
        cpu_features=("neon", "dotprod", "i8mm"),
        gpus=(
            GPUInfo(
                "metal",
                "Apple M2 Pro",
                int(16 * GiB * 2 / 3),
                unified_memory=True,
                memory_bandwidth_gbps=200.0,
            ),
        ),
        battery=BatteryInfo(True, 80.0, True),
        mlx_installed=True,
        llama_cpp_installed=True,
    ),
    "nvidia-24gb": DeviceProfile(
        os="Linux",
        os_version="6.8",
        arch="x86_64",
        ram_total_bytes=32 * GiB,
        ram_available_bytes=28 * GiB,
        cpu_model="Intel Core i7-7700",
        cores_logical=8,
        cores_performance=4,
        cpu_features=("avx2", "fma"),
        gpus=(GPUInfo("cuda", "NVIDIA GeForce RTX 3090", 24 * GiB, 23 * GiB),),
        llama_cpp_installed=True,
    ),
    "cpu-8gb": DeviceProfile(
        os="Linux",
        os_version="6.1",
        arch="x86_64",
        ram_total_bytes=8 * GiB,
        ram_available_bytes=6 * GiB,
        cpu_model="Intel Core i3-8100",
        cores_logical=4,
        cores_performance=4,
        cpu_features=("avx2", "fma"),
        llama_cpp_installed=True,
    ),
}
# GPU layers each device's plan asks for on a GPU build; threads it plans.
GPU_LAYERS = {"apple-16gb": LAYERS, "nvidia-24gb": LAYERS, "cpu-8gb": 0}
# Decoding: one of the 4 performance cores left to the rest of the machine.
THREADS = {"apple-16gb": 3, "nvidia-24gb": 3, "cpu-8gb": 3}


@pytest.fixture
def home(shared_home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = clone_home(shared_home, tmp_path / "home")
    monkeypatch.setenv("LOCARA_HOME", str(h))
    monkeypatch.delenv("LOCARA_REGISTRY_PATH", raising=False)
    return h


def use_profile(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(PROFILES[name].to_json())
    monkeypatch.setenv("LOCARA_DEVICE_PROFILE", str(path))
    return path


@pytest.fixture
def handed(monkeypatch: pytest.MonkeyPatch) -> list[LoadOptions]:
    """LoadOptions handed to the real backends, recorded at the backend boundary."""
    seen: list[LoadOptions] = []
    real = registry._instance

    class Recording:
        def __init__(self, inner: Any) -> None:
            self.inner = inner
            self.name = inner.name
            self.formats = inner.formats

        def available(self) -> Any:
            return self.inner.available()

        def load(self, path: Path, manifest: Any, opts: LoadOptions) -> Any:
            seen.append(opts)
            return self.inner.load(path, manifest, opts)

    monkeypatch.setattr(
        registry, "_instance", lambda name, log_dir=None: Recording(real(name, log_dir))
    )
    return seen


@pytest.fixture
def gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """Stand in for a Metal/CUDA build: the one thing this machine's llama.cpp cannot be."""
    monkeypatch.setattr(registry, "llama_cpp_gpu_offload", lambda: True)


def check_handed(opts: LoadOptions, plan: dict[str, Any]) -> None:
    assert plan["ok"] and plan["backend"] == "llama_cpp"
    assert opts.n_gpu_layers == plan["n_gpu_layers"]
    assert opts.n_ctx == plan["n_ctx"]
    assert opts.kv_type == plan["kv_type"] and opts.flash_attn == plan["flash_attn"]
    assert opts.n_threads == plan["n_threads"] and opts.n_batch == plan["n_batch"]
    assert opts.n_threads_batch == plan["n_threads_batch"]
    assert opts.n_parallel == plan["n_parallel"] and opts.embedding == plan["embedding"]


def run_json(*args: str) -> tuple[dict[str, Any], str]:
    from locara.cli.main import cli

    result = CliRunner().invoke(cli, ["run", "Hi", "--max-tokens", "2", "--json", *args])
    assert result.exit_code == 0, (result.output, result.exception)
    return json.loads(result.stdout), result.stderr


# -- the planner alone ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_each_device_gets_the_offload_it_can_have(name: str, shared_home: Path) -> None:
    cfg = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    resolved = resolve(cfg, None, device=PROFILES[name])  # the real GGUF header
    manifest, paths = resolved.manifest, {resolved.blob.sha256: resolved.blob.path}
    gpu = plan_model(manifest, PROFILES[name], gguf_path_of=paths, gpu_offload=True)
    assert gpu.ok and gpu.n_gpu_layers == GPU_LAYERS[name] and gpu.n_layers == LAYERS
    assert gpu.n_threads == THREADS[name]
    assert (gpu.gpu_bytes > 0) == (name != "cpu-8gb")
    # Chat generation on the CPU gets parallel slots; on a GPU, layers come first.
    assert gpu.n_parallel == (8 if name == "cpu-8gb" else 1)
    cpu = plan_model(manifest, PROFILES[name], gguf_path_of=paths, gpu_offload=False)
    assert cpu.ok and cpu.n_gpu_layers == 0 and cpu.gpu_bytes == 0
    assert any(NO_GPU_BUILD in w for w in cpu.warnings) == (name != "cpu-8gb")
    every = plan_model(
        manifest, PROFILES[name], PlanRequest(n_gpu_layers=-1), gguf_path_of=paths, gpu_offload=True
    )  # -1: every layer, as llama.cpp says it
    assert every.n_gpu_layers == GPU_LAYERS[name] and not any(
        "clamped" in w for w in every.warnings
    )
    embed = plan_model(
        manifest, PROFILES[name], PlanRequest(features=frozenset({"embeddings"})),
        gguf_path_of=paths, gpu_offload=False,
    )  # fmt: skip
    assert embed.embedding and embed.n_parallel == 1 and embed.n_batch == embed.n_ctx


# -- locara run ---------------------------------------------------------------------------


@pytest.mark.parametrize("gpu", [False, True], ids=["this-build", "gpu-build"])
@pytest.mark.parametrize("name", sorted(PROFILES))
def test_run_hands_the_backend_the_plan(
    name: str,
    gpu: bool,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handed: list[LoadOptions],
) -> None:
    use_profile(name, tmp_path, monkeypatch)
    if gpu:
        monkeypatch.setattr(registry, "llama_cpp_gpu_offload", lambda: True)
    out, stderr = run_json()
    plan = out["plan"]
    assert len(handed) == 1
    check_handed(handed[0], plan)
    assert out["load_options"] == json.loads(json.dumps(asdict(handed[0])))  # tuples: lists
    assert plan["n_gpu_layers"] == (GPU_LAYERS[name] if gpu else 0)
    assert plan["n_ctx"] == 4096 and plan["kv_type"] == "f16"
    assert plan["n_threads"] == THREADS[name] and plan["n_parallel"] == 1  # one session
    fell_back = not gpu and name != "cpu-8gb"
    assert (NO_GPU_BUILD in stderr) == fell_back  # the fallback is said, not silent
    assert any(NO_GPU_BUILD in w for w in plan["warnings"]) == fell_back


def test_explicit_options_win_and_are_reported(
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handed: list[LoadOptions],
    gpu_build: None,
) -> None:
    use_profile("nvidia-24gb", tmp_path, monkeypatch)
    out, stderr = run_json("--ctx", "1024", "--gpu-layers", "99", "--threads", "1", "--verbose")
    plan = out["plan"]
    check_handed(handed[0], plan)
    assert (handed[0].n_ctx, handed[0].n_gpu_layers, handed[0].n_threads) == (1024, LAYERS, 1)
    overrides = " | ".join(plan["overrides"])
    assert "context 1024 tokens: asked for (the plan's default is 4096)" in overrides
    assert f"{LAYERS}/{LAYERS} layers on the GPU: set explicitly" in overrides
    assert "threads 1: set explicitly (the plan would use 3 decoding, 4 for prompts)" in overrides
    # Beyond the model's layer count: clamped, and said.
    assert f"GPU layers 99 is more than {DEFAULT_MODEL}'s {LAYERS} layers" in stderr
    assert "explicit: context 1024 tokens" in stderr and "plan: " in stderr


def test_gpu_layers_on_a_build_without_gpu_run_on_the_cpu(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handed: list[LoadOptions]
) -> None:
    use_profile("apple-16gb", tmp_path, monkeypatch)
    out, stderr = run_json("--gpu-layers", "10")
    check_handed(handed[0], out["plan"])
    assert handed[0].n_gpu_layers == 0
    assert "GPU layers 10 ignored: this llama.cpp build has no GPU backend" in stderr


def test_run_verbose_in_a_subprocess_shows_the_plan(home: Path, tmp_path: Path) -> None:
    path = tmp_path / "apple.json"
    path.write_text(PROFILES["apple-16gb"].to_json())
    r = run_cli(
        "run", "Hi", "--max-tokens", "2", "--verbose", home=home,
        env={"LOCARA_DEVICE_PROFILE": str(path)},
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"plan: {DEFAULT_MODEL} Q4_1 on llama_cpp: context 4096" in r.stderr
    assert f"0/{LAYERS} GPU layers, threads 3+4" in r.stderr
    assert "why: 3 threads decoding (one of 4 performance cores left" in r.stderr
    assert f"warning: {NO_GPU_BUILD}" in r.stderr and f"instead of {LAYERS}/{LAYERS} on Metal" in (
        r.stderr
    )


def test_an_unreadable_device_profile_is_an_error(home: Path, tmp_path: Path) -> None:
    r = run_cli("run", "Hi", home=home, env={"LOCARA_DEVICE_PROFILE": str(tmp_path / "nope")})
    assert r.returncode == 1
    assert "cannot read device profile" in r.stderr and "hint:" in r.stderr
    with pytest.raises(DeviceProfileError):
        from locara.device.profile import current_device

        current_device(Settings.from_env(), {"LOCARA_DEVICE_PROFILE": str(tmp_path / "nope")})


# -- the server's pool ---------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PROFILES))
def test_the_pool_loads_what_the_plan_says(
    name: str,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handed: list[LoadOptions],
    gpu_build: None,
) -> None:
    use_profile(name, tmp_path, monkeypatch)
    pool = ModelPool(Settings.from_env(), PoolConfig(keep_alive_s=60))
    try:
        chat = pool.acquire(None)
        chat.release()
        # The chat model's own embeddings come from the copy that chats (its worker).
        same = pool.acquire(None, embedding=True, n_ctx=512)
        same.release()
        assert same.handle is chat.handle and chat.handle.plan.runtime == "llama-server"
        embed = pool.acquire("all-minilm-l6-v2", embedding=True, n_ctx=512)
        embed.release()
        assert handed == [chat.handle.options, embed.handle.options]
        for lease in (chat, embed):
            assert lease.handle.options == load_options(lease.handle.plan)
            check_handed(lease.handle.options, lease.handle.plan.to_dict())
        assert chat.handle.options.n_gpu_layers == GPU_LAYERS[name]
        assert chat.handle.options.n_parallel == (8 if name == "cpu-8gb" else 1)
        opts = embed.handle.options
        assert opts.embedding and opts.n_ctx == 512 and opts.n_batch == 512
        assert opts.n_parallel == 1
        assert any("context 512 tokens: asked for" in o for o in embed.handle.plan.overrides)
        shown = {i.embedding: i for i in pool.loaded()}
        assert shown[False].options == chat.handle.options and shown[True].plan.embedding
        # One admission rule: the planner's budget, counted in the plans' RAM bytes.
        assert pool.budget_bytes() == chat.handle.plan.budget_bytes
    finally:
        pool.close()


def test_the_operators_budget_reaches_the_planner(
    home: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, handed: list[LoadOptions]
) -> None:
    use_profile("cpu-8gb", tmp_path, monkeypatch)
    cfg = Settings.from_env()
    one_slot = resolve(cfg, None, request=PlanRequest(n_parallel=1)).plan.ram_bytes
    pool = ModelPool(cfg, PoolConfig(budget_bytes=int(one_slot * 1.2)))
    try:
        lease = pool.acquire(None)
        lease.release()
        plan = lease.handle.plan
        # Four slots' KV does not fit this budget, so the plan serves one at a time.
        assert plan.n_parallel == 1 and plan.budget_bytes == int(one_slot * 1.2)
        assert any("memory budget" in o and "set by the operator" in o for o in plan.overrides)
        assert handed[0].n_parallel == 1
    finally:
        pool.close()


@pytest.fixture
def apple_server(home: Path, tmp_path: Path) -> Iterator[Any]:
    path = tmp_path / "apple.json"
    path.write_text(PROFILES["apple-16gb"].to_json())
    with running_server(home, {"LOCARA_DEVICE_PROFILE": str(path)}) as s:
        yield s


def test_api_ps_and_locara_ps_show_what_the_plan_decided(apple_server: Any, home: Path) -> None:
    body = {"model": DEFAULT_MODEL, "messages": [{"role": "user", "content": "Hi"}]}
    r = httpx.post(f"{apple_server.url}/v1/chat/completions", json={**body, "max_tokens": 2})
    assert r.status_code == 200, r.text
    (m,) = httpx.get(f"{apple_server.url}/api/ps").json()["models"]
    info = m["locara"]
    opts = info["options"]
    assert info["backend"] == "llama_cpp" and info["n_layers"] == LAYERS
    assert opts["n_gpu_layers"] == 0 and m["size_vram"] == 0  # no GPU backend in this build
    assert opts["n_ctx"] == m["context_length"] == 4096 and (
        opts["n_threads"],
        opts["n_threads_batch"],
    ) == (3, 4)
    assert opts["n_parallel"] == 8  # back on the CPU, a server's chat model gets eight slots
    assert any(NO_GPU_BUILD in w for w in info["warnings"])
    assert any("performance cores left to the rest of the machine" in r for r in info["reasons"])
    assert info["ram_bytes"] <= info["budget_bytes"] and m["size"] >= info["ram_bytes"]

    ps = run_cli("ps", home=home)
    assert ps.returncode == 0, ps.stderr
    assert "NAME" in ps.stdout and "PROCESSOR" in ps.stdout and "UNTIL" in ps.stdout
    row = next(line for line in ps.stdout.splitlines() if line.startswith(DEFAULT_MODEL))
    assert "llama_cpp" in row and "100% CPU" in row and "4096 x 8" in row and "in " in row
    assert f"generation: 0/{LAYERS} GPU layers, KV f16, threads 3+4" in ps.stdout
    assert "why: " in ps.stdout and f"warning: {NO_GPU_BUILD}" in ps.stdout
    as_json = run_cli("ps", "--json", home=home)
    assert json.loads(as_json.stdout)[0]["locara"]["options"] == opts


def test_locara_ps_without_a_server_says_how_to_start_one(tmp_path: Path) -> None:
    r = run_cli("ps", home=tmp_path / "home", env={"LOCARA_PORT": str(free_port())})
    assert r.returncode != 0
    assert "no Locara server answers" in r.stderr and "locara start" in r.stderr


# -- locara bench -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["apple-16gb", "cpu-8gb"])
def test_bench_runs_the_plan(
    name: str,
    home: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    handed: list[LoadOptions],
    gpu_build: None,
) -> None:
    from locara.bench.runner import BenchParams, prepare, run_bench

    use_profile(name, tmp_path, monkeypatch)
    cfg = Settings.from_env()
    params = BenchParams(n_prompt=16, n_gen=4, repetitions=1)
    target = prepare(cfg, DEFAULT_MODEL, params)
    result = run_bench(cfg, target, params)
    plan = target.resolved.plan.to_dict()
    assert len(handed) == 1
    check_handed(handed[0], plan)
    assert handed[0].n_ctx == params.n_ctx and handed[0].n_parallel == 1
    assert handed[0].n_gpu_layers == GPU_LAYERS[name]
    # The result records what the backend was given, under llama-bench's names.
    assert (result["n_gpu_layers"], result["n_ctx"], result["n_threads"]) == (
        GPU_LAYERS[name],
        params.n_ctx,
        THREADS[name],
    )
    assert result["type_k"] == handed[0].kv_type and result["plan"] == plan
