"""`locara plan` and `locara recommend` as a user runs them (real CLI, subprocess)."""

from __future__ import annotations

import json
from pathlib import Path

from conftest import DEFAULT_MODEL, DEFAULT_SHA, run_cli
from locara.device.profile import DeviceProfile
from test_planner_profiles import PROFILES


def _profile_file(tmp_path: Path, name: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(PROFILES[name].to_json())
    return path


def test_plan_default_model_on_this_machine(cli: object) -> None:
    r = cli("plan", DEFAULT_MODEL, "--ctx", "2048", "--json")  # type: ignore[operator]
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["ok"] and plan["backend"] == "llama_cpp"
    assert plan["artifact"]["sha256"] == DEFAULT_SHA  # the stored, bundled Q4_1
    assert plan["estimate_from"] == "gguf header"  # the model is in the shared store
    assert plan["n_ctx"] == 2048 and plan["kv_type"] == "f16"
    mem = plan["memory"]
    assert mem["total_bytes"] == sum(
        mem[k]
        for k in ("weights_bytes", "repack_bytes", "kv_bytes", "compute_bytes", "overhead_bytes")
    )
    # Every parallel slot holds a 2048-token KV cache.
    assert mem["kv_bytes"] == plan["n_parallel"] * 2048 * 30 * 3 * 128 * 2
    assert plan["rejected"] and all(r["reason"] for r in plan["rejected"])
    text = cli("plan", DEFAULT_MODEL)  # type: ignore[operator]
    assert text.returncode == 0, text.stderr
    for word in ("backend", "artifact", "context", "threads", "memory", "rejected:"):
        assert word in text.stdout


def test_plan_context_beyond_trained_is_clamped(cli: object) -> None:
    r = cli("plan", DEFAULT_MODEL, "--ctx", "100000", "--json")  # type: ignore[operator]
    assert r.returncode == 0, r.stderr
    plan = json.loads(r.stdout)
    assert plan["n_ctx"] == 8192 and plan["requested_ctx"] == 100000
    assert any("trained context 8192" in w for w in plan["warnings"])


def test_plan_quant_and_pinned_references(cli: object) -> None:
    r = cli("plan", f"{DEFAULT_MODEL}:Q8_0", "--json")  # type: ignore[operator]
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["artifact"]["quant"] == "Q8_0"
    r = cli("plan", f"{DEFAULT_MODEL}@sha256:{'0' * 64}")  # type: ignore[operator]
    assert r.returncode == 1 and "unknown model" in r.stderr and "hint:" in r.stderr


def test_plan_bad_input(cli: object) -> None:
    r = cli("plan", "no-such-model")  # type: ignore[operator]
    assert r.returncode == 1 and "unknown model 'no-such-model'" in r.stderr
    r = cli("plan", DEFAULT_MODEL, "--ctx", "0")  # type: ignore[operator]
    assert r.returncode == 2 and "--ctx" in r.stderr


def test_plan_nothing_fits_shows_alternatives(tmp_path: Path, home: Path) -> None:
    tiny = DeviceProfile("Linux", "6", "x86_64", 128 * 2**20, 100 * 2**20)
    profile = tmp_path / "tiny.json"
    profile.write_text(tiny.to_json())
    r = run_cli("plan", DEFAULT_MODEL, "--ctx", "8192", "--profile", str(profile), home=home)
    assert r.returncode == 1
    assert "nothing fits" in r.stdout and "alternatives:" in r.stdout
    assert "does not fit at any context" in r.stdout
    assert f"error: {DEFAULT_MODEL} does not fit this device" in r.stderr and "hint:" in r.stderr


def test_recommend_on_this_machine(cli: object) -> None:
    r = cli("recommend", "--json")  # type: ignore[operator]
    assert r.returncode == 0, r.stderr
    recs = json.loads(r.stdout)
    assert recs["task"] == "chat" and recs["tiers"]
    for t in recs["tiers"]:
        assert t["tier"] in ("fast", "balanced", "capable")
        assert t["memory_bytes"] <= recs["budget_bytes"]
        assert t["expected_tps"] and t["expected_tps"] > 0


def test_recommend_for_synthetic_devices(tmp_path: Path, home: Path) -> None:
    for name in ("mac-8gb",):
        r = run_cli(
            "recommend", "--profile", str(_profile_file(tmp_path, name)), "--json", home=home
        )
        assert r.returncode == 0, r.stderr
        recs = json.loads(r.stdout)
        assert recs["tiers"], name
        assert all(t["memory_bytes"] <= recs["budget_bytes"] for t in recs["tiers"])
    r = run_cli("recommend", "--task", "embedding", "--json", home=home)
    assert r.returncode == 0, r.stderr
    assert all(t["backend"] == "llama_cpp" for t in json.loads(r.stdout)["tiers"])
    r = run_cli("recommend", "--task", "poetry", home=home)
    assert r.returncode == 2 and "--task" in r.stderr
    r = run_cli("recommend", home=home)
    assert r.returncode == 0 and "Recommended chat models" in r.stdout
