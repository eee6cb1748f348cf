"""The planner on synthetic devices: the expected plan for several registry models each.

The devices are synthetic (this machine is only one of them); the manifests are written
into a temp registry so the expectations do not move when curated entries change. Sizes
are the real Hugging Face file sizes of those quants (registry-facts.json and the
bartowski/Qwen repos).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import packaged_gguf
from locara.device.fit import cpu_repack_types
from locara.device.profile import BatteryInfo, DeviceProfile, GPUInfo
from locara.planner.budget import quant_ceiling, ram_budget
from locara.planner.plan import PlanRequest, local_gguf_paths, plan_model
from locara.planner.rank import RankWeights, choose_local_descendant
from locara.planner.recommend import recommend
from locara.planner.results import BenchResult, read_bench_results
from locara.registry.catalog import load_manifest
from locara.registry.manifest import ModelManifest
from locara.settings import Settings

GiB = 2**30


def mac(gb: int, available_gb: float, chip: str, bandwidth: float) -> DeviceProfile:
    return DeviceProfile(
        os="Darwin",
        os_version="24.1",
        arch="arm64",
        ram_total_bytes=gb * GiB,
        ram_available_bytes=int(available_gb * GiB),
        cpu_model=f"Apple {chip}",
        cores_logical=8,
        cores_performance=4,
        cores_efficiency=4,
        cpu_features=("neon", "dotprod", "i8mm"),
        gpus=(
            GPUInfo(
                "metal",
                f"Apple {chip}",
                int(gb * GiB * 2 / 3),
                unified_memory=True,
                memory_bandwidth_gbps=bandwidth,
            ),
        ),
        battery=BatteryInfo(True, 80.0, True),
        mlx_installed=True,
        llama_cpp_installed=True,
        memory_bandwidth_gbps=bandwidth,
    )


PROFILES: dict[str, DeviceProfile] = {
    "mac-8gb": mac(8, 5.5, "M2", 100.0),
    "mac-16gb": mac(16, 11.0, "M2 Pro", 200.0),
    "workstation-64gb-rtx4090": DeviceProfile(
        os="Linux",
        os_version="6.8",
        arch="x86_64",
        ram_total_bytes=64 * GiB,
        ram_available_bytes=58 * GiB,
        cpu_model="AMD Ryzen 9 7950X",
        cores_logical=32,
        cores_performance=16,
        cores_efficiency=0,
        cpu_features=("avx2", "avx512f"),
        gpus=(
            GPUInfo(
                "cuda",
                "NVIDIA GeForce RTX 4090",
                24 * GiB,
                23 * GiB,
                driver="550.54",
                memory_bandwidth_gbps=1008.0,
            ),
        ),
        llama_cpp_installed=True,
        memory_bandwidth_gbps=80.0,
    ),
    "linux-4gb": DeviceProfile(
        os="Linux",
        os_version="6.1",
        arch="x86_64",
        ram_total_bytes=4 * GiB,
        ram_available_bytes=int(3.2 * GiB),
        cpu_model="Intel Celeron N5105",
        cores_logical=4,
        cores_performance=4,
        cores_efficiency=0,
        cpu_features=("avx2",),
        llama_cpp_installed=True,
    ),
    "laptop-16gb-battery-10": DeviceProfile(
        os="Linux",
        os_version="6.8",
        arch="x86_64",
        ram_total_bytes=16 * GiB,
        ram_available_bytes=12 * GiB,
        cpu_model="Intel Core i7-1260P",
        cores_logical=16,
        cores_performance=4,
        cores_efficiency=8,
        cpu_features=("avx2",),
        battery=BatteryInfo(True, 10.0, False),
        llama_cpp_installed=True,
    ),
}


def _art(quant: str, size: int, fmt: str = "gguf") -> dict[str, object]:
    tag = f"{quant}-{size}-{fmt}".encode().hex()
    return {
        "format": fmt,
        "quant": quant,
        "url": f"https://huggingface.co/example/{quant}.{fmt}",
        "sha256": (tag * 4)[:64],
        "size_bytes": size,
    }


MODELS: dict[str, dict[str, object]] = {
    "qwen2.5-0.5b-instruct": {
        "context_length": 32768,
        "llama_cpp": [("Q4_K_M", 491_400_032), ("Q8_0", 675_710_816)],
    },
    "qwen2.5-7b-instruct": {
        "context_length": 32768,
        "llama_cpp": [
            ("Q4_K_M", 4_683_074_240),
            ("Q5_K_M", 5_444_831_360),
            ("Q8_0", 8_098_525_376),
            ("F16", 15_237_853_440),
        ],
        "mlx": [("4bit", 4_280_000_000)],
    },
    "qwen2.5-14b-instruct": {
        "context_length": 32768,
        "llama_cpp": [("Q4_K_M", 8_988_110_976), ("Q8_0", 15_701_597_952)],
    },
    "llama-3.1-70b-instruct": {
        "context_length": 131072,
        "llama_cpp": [("Q4_K_M", 42_520_395_584)],
    },
    "nomic-embed-text-v1.5": {
        "context_length": 2048,
        "modality": "embedding",
        "llama_cpp": [("Q8_0", 146_146_432)],
    },
}


@pytest.fixture(scope="module")
def manifests(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModelManifest]:
    reg = tmp_path_factory.mktemp("registry")
    out = {}
    for model_id, spec in MODELS.items():
        arts: dict[str, object] = {
            "llama_cpp": [_art(q, s) for q, s in spec["llama_cpp"]]  # type: ignore[attr-defined]
        }
        if "mlx" in spec:
            arts["mlx"] = [_art(q, s, "mlx") for q, s in spec["mlx"]]  # type: ignore[attr-defined]
        data = {
            "id": model_id,
            "version": "1.0.0",
            "displayName": model_id,
            "license": "Apache-2.0",
            "modality": spec.get("modality", "chat"),
            "context_length": spec["context_length"],
            "artifacts": arts,
            "curated": False,
        }
        path = reg / f"{model_id}.json"
        path.write_text(json.dumps(data))
        out[model_id] = load_manifest(path)
    return out


# (profile, model) -> (backend, quant, n_ctx, kv_type, gpu layers: "all" | "some" | 0, threads)
# or None when nothing fits. The default request asks for 4096 tokens.
EXPECTED: list[tuple[str, str, tuple[str, str, int, str, object, int] | None]] = [
    # 8 GB Mac: MLX for the 7B (Apple Silicon rule), 4-bit; 14B and 70B do not fit.
    ("mac-8gb", "qwen2.5-0.5b-instruct", ("llama_cpp", "Q4_K_M", 4096, "f16", "all", 3)),
    ("mac-8gb", "qwen2.5-7b-instruct", ("mlx", "4bit", 4096, "f16", 0, 3)),
    ("mac-8gb", "qwen2.5-14b-instruct", None),
    ("mac-8gb", "llama-3.1-70b-instruct", None),
    # 16 GB Mac: 14B Q4_K_M fits on Metal with every layer offloaded.
    ("mac-16gb", "qwen2.5-7b-instruct", ("mlx", "4bit", 4096, "f16", 0, 3)),
    ("mac-16gb", "qwen2.5-14b-instruct", ("llama_cpp", "Q4_K_M", 4096, "f16", "all", 3)),
    ("mac-16gb", "llama-3.1-70b-instruct", None),
    # 64 GB + 24 GB RTX 4090: 7B at Q6_K-class ceiling -> Q5_K_M fully on the GPU; the
    # 14B Q8_0 is above the ceiling; 70B Q4_K_M splits between GPU and RAM.
    ("workstation-64gb-rtx4090", "qwen2.5-7b-instruct", ("llama_cpp", "Q5_K_M", 4096, "f16", "all", 15)),
    ("workstation-64gb-rtx4090", "qwen2.5-14b-instruct", ("llama_cpp", "Q4_K_M", 4096, "f16", "all", 15)),
    ("workstation-64gb-rtx4090", "llama-3.1-70b-instruct", ("llama_cpp", "Q4_K_M", 4096, "f16", "some", 15)),
    # 4 GB Linux, no GPU: only the small model; the 7B does not fit at any context.
    # Everywhere one performance core is left to the rest of the machine for decoding.
    ("linux-4gb", "qwen2.5-0.5b-instruct", ("llama_cpp", "Q4_K_M", 4096, "f16", 0, 3)),
    ("linux-4gb", "qwen2.5-7b-instruct", None),
    ("linux-4gb", "nomic-embed-text-v1.5", ("llama_cpp", "Q8_0", 2048, "f16", 0, 3)),
    # On battery at 10%: smallest quant, default context 2048, half the threads.
    ("laptop-16gb-battery-10", "qwen2.5-0.5b-instruct", ("llama_cpp", "Q4_K_M", 2048, "f16", 0, 2)),
    ("laptop-16gb-battery-10", "qwen2.5-7b-instruct", ("llama_cpp", "Q4_K_M", 2048, "f16", 0, 2)),
    ("laptop-16gb-battery-10", "llama-3.1-70b-instruct", None),
]  # fmt: skip


@pytest.mark.parametrize(("profile", "model", "expected"), EXPECTED)
def test_expected_plan(
    manifests: dict[str, ModelManifest],
    profile: str,
    model: str,
    expected: tuple[str, str, int, str, object, int] | None,
) -> None:
    device = PROFILES[profile]
    plan = plan_model(manifests[model], device)
    if expected is None:
        assert not plan.ok
        assert plan.backend is None and plan.artifact is None
        assert plan.rejected and all(r.reason for r in plan.rejected)
        assert all("does not fit" in r.reason for r in plan.rejected if r.backend == "llama_cpp")
        assert plan.alternatives and any("escalate" in a for a in plan.alternatives)
        return
    backend, quant, n_ctx, kv, layers, threads = expected
    assert plan.ok, plan.reasons
    assert (plan.backend, plan.quant, plan.n_ctx, plan.kv_type) == (backend, quant, n_ctx, kv)
    assert plan.n_threads == threads
    assert plan.estimate is not None
    n_layers = 80 if "70b" in model else None
    if layers == "all":
        assert plan.n_gpu_layers > 0
        if n_layers:
            assert plan.n_gpu_layers == n_layers + 1
    elif layers == "some":
        assert 0 < plan.n_gpu_layers < 80
    else:
        assert plan.n_gpu_layers == 0
    # The plan fits the budget it reports (RAM, or the GPU for full offload).
    if layers != "all" and layers != "some":
        assert plan.estimate.total_bytes <= plan.budget_bytes
    assert plan.expected_tg_tps and plan.expected_tg_tps > 0
    # Every artifact not chosen is listed with a reason.
    n_arts = len(manifests[model].all_artifacts())
    assert len(plan.rejected) == n_arts - 1
    assert all(r.reason for r in plan.rejected)


def test_quant_ceiling_follows_reference_table() -> None:
    assert [quant_ceiling(g * GiB) for g in (8, 16, 32, 64, 128)] == [
        "Q4_K_M",
        "Q5_K_M",
        "Q6_K",
        "Q8_0",
        "F16",
    ]


def test_ram_budget_keeps_headroom_for_the_os() -> None:
    big = PROFILES["workstation-64gb-rtx4090"]
    assert ram_budget(big) == 58 * GiB  # available is below total - 4 GiB
    small = PROFILES["linux-4gb"]
    assert ram_budget(small) == 3 * GiB  # a quarter of 4 GiB kept for the OS


def test_cpu_plan_counts_repacked_weights(manifests: dict[str, ModelManifest]) -> None:
    # On an AVX2 CPU llama.cpp keeps a second copy of Q4_K matrices; on Metal it does not.
    cpu = plan_model(manifests["qwen2.5-7b-instruct"], PROFILES["laptop-16gb-battery-10"])
    assert cpu.estimate is not None and cpu.estimate.repack_bytes > 0
    assert "Q4_K" in cpu_repack_types("x86_64", ("avx2",))
    assert cpu_repack_types("x86_64", ()) == frozenset()
    metal = plan_model(manifests["qwen2.5-14b-instruct"], PROFILES["mac-16gb"])
    assert metal.estimate is not None and metal.estimate.repack_bytes == 0


def test_context_beyond_trained_is_clamped_with_warning(
    manifests: dict[str, ModelManifest],
) -> None:
    plan = plan_model(
        manifests["nomic-embed-text-v1.5"], PROFILES["linux-4gb"], PlanRequest(n_ctx=100_000)
    )
    assert plan.ok and plan.n_ctx == 2048 and plan.requested_ctx == 100_000
    assert any("larger than" in w and "trained context 2048" in w for w in plan.warnings)


def test_context_that_does_not_fit_is_reduced(manifests: dict[str, ModelManifest]) -> None:
    m = manifests["qwen2.5-7b-instruct"]
    # 16 GB laptop, 32k context: f16 and q8_0 KV do not fit, q4_0 (with flash attention) does.
    plan = plan_model(m, PROFILES["laptop-16gb-battery-10"], PlanRequest(n_ctx=32768))
    assert plan.ok and plan.estimate is not None
    assert (plan.n_ctx, plan.kv_type, plan.flash_attn) == (32768, "q4_0", True)
    assert plan.estimate.total_bytes <= plan.budget_bytes
    assert any("KV cache q4_0" in r for r in plan.reasons)
    # 8 GB Mac on llama.cpp: even q4_0 KV is too much at 32k, so the context shrinks.
    short = plan_model(m, PROFILES["mac-8gb"], PlanRequest(n_ctx=32768, backend="llama_cpp"))
    assert short.ok and short.n_ctx is not None and short.n_ctx < 32768
    assert short.estimate is not None and short.estimate.total_bytes <= short.budget_bytes
    assert any("does not fit; clamped to" in w for w in short.warnings)
    assert any("--backend llama_cpp was requested" in r.reason for r in short.rejected)
    full = plan_model(
        manifests["qwen2.5-0.5b-instruct"],
        PROFILES["workstation-64gb-rtx4090"],
        PlanRequest(n_ctx=32768),
    )
    assert full.ok and full.n_ctx == 32768 and full.kv_type == "f16"


def test_invalid_context_is_a_plan_not_an_exception(manifests: dict[str, ModelManifest]) -> None:
    plan = plan_model(manifests["qwen2.5-0.5b-instruct"], PROFILES["linux-4gb"], PlanRequest(0))
    assert not plan.ok and "invalid context 0" in plan.reasons[0]


def test_features_route_backends(manifests: dict[str, ModelManifest]) -> None:
    m = manifests["qwen2.5-7b-instruct"]
    plan = plan_model(m, PROFILES["mac-16gb"], PlanRequest(features=frozenset({"json_schema"})))
    assert plan.ok and plan.backend == "llama_cpp"
    assert any("json_schema" in r.reason for r in plan.rejected if r.backend == "mlx")
    # llama.cpp embeds with any model (the server allows it), so a chat model is a warning.
    plan = plan_model(m, PROFILES["mac-16gb"], PlanRequest(features=frozenset({"embeddings"})))
    assert plan.ok and plan.backend == "llama_cpp" and plan.embedding and plan.n_parallel == 1
    assert any("not trained sentence embeddings" in w for w in plan.warnings)
    assert any("embeddings run on llama.cpp only" in r.reason for r in plan.rejected)


def test_mlx_not_installed_falls_back_to_llama_cpp(manifests: dict[str, ModelManifest]) -> None:
    from dataclasses import replace

    device = replace(PROFILES["mac-16gb"], mlx_installed=False)
    plan = plan_model(manifests["qwen2.5-7b-instruct"], device)
    assert plan.ok and plan.backend == "llama_cpp"
    assert any("not installed" in r.reason for r in plan.rejected if r.backend == "mlx")


def test_measured_results_override_the_backend_rule(
    manifests: dict[str, ModelManifest], tmp_path: Path
) -> None:
    device = PROFILES["mac-16gb"]
    results = tmp_path / "results.jsonl"
    rec = {"model_id": "qwen2.5-7b-instruct", "n_prompt": 512, "n_gen": 128, "pp_tps": 300.0,
           "ttft_s": 0.5, "load_s": 1.0, "peak_rss_bytes": 5 * GiB,
           "device": device.to_dict(), "timestamp": "2026-11-22T04:00:00Z"}  # fmt: skip
    lines = [
        json.dumps(rec | {"backend": "mlx", "quant": "4bit", "tg_tps": 20.0}),
        json.dumps(rec | {"backend": "llama_cpp", "quant": "Q4_K_M", "tg_tps": 31.5}),
        "this line is not JSON",
        json.dumps({"model_id": "qwen2.5-7b-instruct", "backend": "vllm", "tg_tps": 99}),
        json.dumps(rec | {"backend": "mlx", "quant": "4bit", "tg_tps": "fast"}),
        # A result from another machine does not count here.
        json.dumps(rec | {"backend": "mlx", "quant": "4bit", "tg_tps": 500.0,
                          "device": {"cpu_model": "Apple M4 Max", "os": "Darwin"}}),
    ]  # fmt: skip
    results.write_text("\n".join(lines) + "\n")
    parsed = read_bench_results(results, device)
    assert sorted((r.backend, r.tg_tps) for r in parsed) == [("llama_cpp", 31.5), ("mlx", 20.0)]
    plan = plan_model(manifests["qwen2.5-7b-instruct"], device, bench_results=parsed)
    assert plan.ok and plan.backend == "llama_cpp"
    assert any("measured on this device" in r for r in plan.reasons)
    assert any(r.backend == "mlx" and "llama_cpp is preferred" in r.reason for r in plan.rejected)
    pinned = plan_model(
        manifests["qwen2.5-7b-instruct"], device, PlanRequest(quant="Q4_K_M"), bench_results=parsed
    )
    assert pinned.expected_tg_tps == 31.5
    assert pinned.tps_source and "measured" in pinned.tps_source
    # Without results the Apple Silicon rule stands.
    assert plan_model(manifests["qwen2.5-7b-instruct"], device).backend == "mlx"
    assert read_bench_results(tmp_path / "missing.jsonl") == []


def test_choose_local_descendant_ranks_and_weights_matter(
    manifests: dict[str, ModelManifest],
) -> None:
    chat = [m for m in manifests.values() if m.modality == "chat"]
    device = PROFILES["workstation-64gb-rtx4090"]
    choice = choose_local_descendant("chat", device, chat)
    assert choice.ok and choice.best is not None and choice.action == "run"
    ranked_ids = [s.manifest.id for s in choice.ranked]
    assert set(ranked_ids) == {m.id for m in chat}  # everything fits this machine
    assert [s.score for s in choice.ranked] == sorted(
        (s.score for s in choice.ranked), reverse=True
    )
    # Capacity-heavy weights favour the 70B; speed-and-memory-heavy weights a small model.
    big = choose_local_descendant(
        "chat", device, chat, weights=RankWeights(utility=5, latency=0.1, memory=0)
    )
    fast = choose_local_descendant(
        "chat", device, chat, weights=RankWeights(utility=0.1, latency=3, memory=3)
    )
    assert big.best is not None and big.best.manifest.id == "llama-3.1-70b-instruct"
    assert fast.best is not None and fast.best.manifest.id == "qwen2.5-0.5b-instruct"


def test_choose_local_descendant_no_fit_is_an_escalation_plan(
    manifests: dict[str, ModelManifest],
) -> None:
    big = [manifests["qwen2.5-14b-instruct"], manifests["llama-3.1-70b-instruct"]]
    choice = choose_local_descendant("chat", PROFILES["linux-4gb"], big)
    assert not choice.ok and choice.best is None and choice.action == "escalate"
    assert len(choice.reasons) == 2
    assert any("smallest candidate: qwen2.5-14b-instruct:Q4_K_M" in a for a in choice.alternatives)
    assert any("--ctx 512" in a for a in choice.alternatives)
    assert any("escalate" in a for a in choice.alternatives)
    unknown = choose_local_descendant("poetry", PROFILES["linux-4gb"], big)
    assert not unknown.ok and unknown.action == "no-op" and "chat" in unknown.alternatives[0]
    none = choose_local_descendant("vision", PROFILES["linux-4gb"], big)
    assert not none.ok and none.action == "escalate"


def test_recommend_tiers(manifests: dict[str, ModelManifest]) -> None:
    recs = recommend(PROFILES["mac-16gb"], manifests.values(), "chat")
    tiers = {t.tier: t for t in recs.tiers}
    assert set(tiers) == {"fast", "balanced", "capable"}
    assert tiers["fast"].model_id == "qwen2.5-0.5b-instruct"
    assert tiers["capable"].model_id == "qwen2.5-14b-instruct"
    assert tiers["balanced"].model_id == "qwen2.5-7b-instruct"
    sizes = [tiers[t].memory_bytes for t in ("fast", "balanced", "capable")]
    assert sizes == sorted(sizes)
    speeds = [tiers[t].expected_tps or 0 for t in ("fast", "balanced", "capable")]
    assert speeds == sorted(speeds, reverse=True)
    assert "llama-3.1-70b-instruct" in " ".join(recs.not_fitting)
    small = recommend(PROFILES["linux-4gb"], manifests.values(), "chat")
    assert [t.model_id for t in small.tiers] == ["qwen2.5-0.5b-instruct"]
    nothing = recommend(PROFILES["linux-4gb"], [manifests["llama-3.1-70b-instruct"]], "chat")
    assert nothing.tiers == () and nothing.notes


def test_plan_uses_the_real_gguf_when_stored(shared_home: Path) -> None:
    from locara.device.profile import detect_profile
    from locara.registry.catalog import Registry

    cfg = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    manifest = Registry(cfg).get("smollm2-135m-instruct")
    paths = local_gguf_paths(cfg, [manifest])
    assert paths  # the default model is in the shared store
    plan = plan_model(manifest, detect_profile(cfg), PlanRequest(n_ctx=2048), gguf_path_of=paths)
    assert plan.ok and plan.exact_shape and plan.quant == "Q4_1"
    assert plan.estimate is not None
    # 30 layers x 3 KV heads x (64 + 64) x 2 bytes x 2048 tokens per slot, from the header.
    assert plan.n_parallel > 1  # a chat model on the CPU serves several requests at once
    assert plan.estimate.kv_bytes == plan.n_parallel * 2048 * 30 * 3 * 128 * 2


def test_offline_device_only_plans_what_it_has(manifests: dict[str, ModelManifest]) -> None:
    from dataclasses import replace

    offline = replace(PROFILES["linux-4gb"], offline=True)
    plan = plan_model(manifests["qwen2.5-0.5b-instruct"], offline)
    assert not plan.ok
    assert all("offline" in r.reason for r in plan.rejected)
    # The same artifact, present on disk, is planned (from its real header) while offline.
    stored = manifests["qwen2.5-0.5b-instruct"].artifact_list("llama_cpp")[0]
    assert stored.sha256
    plan = plan_model(
        manifests["qwen2.5-0.5b-instruct"],
        offline,
        gguf_path_of={stored.sha256: packaged_gguf()},  # any real GGUF stands in for it
    )
    assert plan.ok and plan.exact_shape and plan.quant == stored.quant


def test_disk_too_small_for_the_download_is_a_warning(
    manifests: dict[str, ModelManifest],
) -> None:
    from dataclasses import replace

    cramped = replace(PROFILES["workstation-64gb-rtx4090"], disk_free_bytes=1 * GiB)
    plan = plan_model(manifests["qwen2.5-7b-instruct"], cramped)
    assert plan.ok
    assert any("disk has" in w and "locara cleanup" in w for w in plan.warnings)


def test_measured_slow_quant_gives_way_to_a_faster_one(
    manifests: dict[str, ModelManifest], tmp_path: Path
) -> None:
    device = PROFILES["mac-16gb"]
    m = manifests["qwen2.5-7b-instruct"]
    request = PlanRequest(backend="llama_cpp")
    assert plan_model(m, device, request).quant == "Q5_K_M"  # the quality pick

    def results(q5_tps: float) -> list[BenchResult]:
        path = tmp_path / f"r{q5_tps}.jsonl"
        base = {"model_id": m.id, "backend": "llama_cpp", "device": device.to_dict()}
        path.write_text(
            json.dumps(base | {"quant": "Q5_K_M", "tg_tps": q5_tps})
            + "\n"
            + json.dumps(base | {"quant": "Q4_K_M", "tg_tps": 6.2})
            + "\n"
        )
        return read_bench_results(path, device)

    slow = plan_model(m, device, request, bench_results=results(3.0))
    assert slow.quant == "Q4_K_M" and slow.expected_tg_tps == 6.2
    assert any("so the faster quant" in r for r in slow.reasons)
    assert any(r.quant == "Q5_K_M" and "measured 3.0 tok/s" in r.reason for r in slow.rejected)
    assert not any(r.quant == "Q4_K_M" for r in slow.rejected)
    usable = plan_model(m, device, request, bench_results=results(8.0))
    assert usable.quant == "Q5_K_M" and usable.expected_tg_tps == 8.0
