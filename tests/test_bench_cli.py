"""``locara bench`` on the real default model, its JSON checked field by field, and bad input.

Sizes are tiny (a few dozen tokens, two repetitions) so the file runs in well under a
minute on 2 shared cores; nothing here asserts on how fast anything was.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.bench.results import REQUIRED_KEYS, load_results
from locara.engine.loader import resolve
from locara.settings import Settings


@pytest.fixture
def stored_home(home: Path) -> Path:
    resolve(Settings.from_env(), None)
    return home


def _check_test(t: dict[str, Any], name: str, n_prompt: int, n_gen: int, reps: int) -> None:
    assert t["name"] == name
    assert (t["n_prompt"], t["n_gen"], t["n_depth"]) == (n_prompt, n_gen, 0)
    assert len(t["samples_ts"]) == len(t["samples_ns"]) == reps
    assert all(x > 0 for x in t["samples_ts"]) and all(n > 0 for n in t["samples_ns"])
    # Rates are written with 3 decimals: they agree to that precision.
    assert t["avg_ts"] == pytest.approx(sum(t["samples_ts"]) / reps, rel=1e-3, abs=1e-3)
    # The standard deviations are those of the samples (llama-bench's, n - 1).
    sd_ts = float(np.std(t["samples_ts"], ddof=1))
    assert t["stddev_ts"] == pytest.approx(sd_ts, rel=1e-3, abs=1e-3)
    assert t["stddev_ns"] == pytest.approx(float(np.std(t["samples_ns"], ddof=1)), rel=1e-3)
    # Rates and durations are the same measurement: n tokens / seconds.
    n = n_prompt or n_gen
    for ts, ns in zip(t["samples_ts"], t["samples_ns"], strict=True):
        assert ts == pytest.approx(n / (ns / 1e9), rel=1e-2)


@pytest.mark.slow
def test_bench_default_model_json_has_every_field(stored_home: Path) -> None:
    plot = stored_home.parent / "bench.png"
    res = run_cli(
        "bench",
        DEFAULT_MODEL,
        "--n-prompt",
        "32",
        "--n-gen",
        "8",
        "--repetitions",
        "2",
        # One thread: on 2 cores shared with other jobs, two OpenMP threads mostly wait
        # for each other; the recorded n_threads must be the one asked for.
        "--threads",
        "1",
        "--json",
        "--plot",
        str(plot),
        home=stored_home,
    )
    assert res.returncode == 0, res.stderr
    (r,) = json.loads(res.stdout)

    # The keys the planner reads.
    for key in REQUIRED_KEYS:
        assert key in r, key
    assert r["model_id"] == DEFAULT_MODEL
    assert r["sha256"] == DEFAULT_SHA
    assert r["backend"] == "llama_cpp"
    assert r["quant"] == "Q4_1"
    assert (r["n_prompt"], r["n_gen"], r["repetitions"]) == (32, 8, 2)
    for key in ("pp_tps", "tg_tps", "ttft_s", "load_s"):
        assert isinstance(r[key], float) and r[key] > 0, key
        assert isinstance(r[f"{key}_stddev"], float), key
    # The model is memory-mapped and every weight is read while decoding, so the peak
    # resident set holds at least the tensors.
    assert r["peak_rss_bytes"] > r["model_size"] > 0.9 * DEFAULT_SIZE
    for key in ("load_s", "ttft_s", "peak_rss_bytes"):
        samples = r["samples"][key]
        assert r[key] == pytest.approx(float(np.mean(samples)), rel=1e-3), key
        sd = float(np.std(samples, ddof=1))
        assert r[f"{key}_stddev"] == pytest.approx(sd, rel=1e-2, abs=1e-5), key
    assert len(r["samples"]["load_s"]) == len(r["samples"]["ttft_s"]) == 2
    assert len(r["samples"]["peak_rss_bytes"]) == 2
    # The first token comes after the whole prompt was evaluated.
    pp_s = [ns / 1e9 for ns in r["tests"][0]["samples_ns"]]
    assert all(t >= p for t, p in zip(r["samples"]["ttft_s"], pp_s, strict=True))
    when = dt.datetime.fromisoformat(r["timestamp"])
    assert when.tzinfo is not None
    assert abs((dt.datetime.now(dt.UTC) - when).total_seconds()) < 3600
    assert r["method"] == "decode"

    # llama-bench's own field names.
    pp, tg = r["tests"]
    _check_test(pp, "pp32", 32, 0, 2)
    _check_test(tg, "tg8", 0, 8, 2)
    assert r["pp_tps"] == pp["avg_ts"] and r["tg_tps"] == tg["avg_ts"]
    assert r["model_type"] == "llama 135M Q4_1"
    assert r["model_n_params"] > 100_000_000
    assert r["model_filename"].endswith(".gguf")
    assert r["n_threads"] == 1 and r["n_batch"] == 512 and r["n_ctx"] == 41
    assert r["type_k"] == r["type_v"] == "f16"
    assert r["n_gpu_layers"] == 0 and r["flash_attn"] is False
    assert r["backends"].startswith("CPU")
    assert "build_commit" in r and "build_number" in r
    assert r["build"]["llama_cpp_python_version"] == "0.3.36"
    assert "AVX" in r["build"]["system_info"] or "NEON" in r["build"]["system_info"]
    assert r["test_time"] == r["timestamp"]

    # The device it was measured on.
    d = r["device"]
    for key in ("os", "arch", "cpu_model", "cores_logical", "ram_total_bytes", "gpus"):
        assert key in d, key
    assert d["ram_total_bytes"] > 0 and isinstance(d["gpus"], list)
    assert r["cpu_info"] == (d["cpu_model"] or "")

    # The planner's verdict that it fits.
    assert r["fit_estimate"]["planner"] is True
    assert r["fit_estimate"]["memory"]["total_bytes"] > 0

    # Saved for the planner, one line, identical to what was printed.
    cfg = Settings.from_env()
    saved = load_results(cfg, model_id=DEFAULT_MODEL)
    assert saved == [r]
    from locara.planner.plan import read_bench_results

    (seen,) = read_bench_results(cfg.bench_results_path)
    assert (seen.model_id, seen.backend, seen.quant, seen.sha256) == (
        DEFAULT_MODEL,
        "llama_cpp",
        "Q4_1",
        DEFAULT_SHA,
    )
    assert seen.tg_tps == r["tg_tps"]

    # A progress display while it ran (plain lines when stderr is not a terminal).
    assert f"bench: {DEFAULT_MODEL}:Q4_1 [1/2] loading" in res.stderr
    assert f"bench: {DEFAULT_MODEL}:Q4_1 [2/2] tg8" in res.stderr
    assert f"bench: {DEFAULT_MODEL}:Q4_1 done" in res.stderr

    data = plot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000


@pytest.mark.slow
def test_bench_table_output_and_results_accumulate(stored_home: Path) -> None:
    args = ("bench", DEFAULT_MODEL, "--n-prompt", "16", "--n-gen", "4", "-r", "1", "--threads", "1")
    res = run_cli(*args, home=stored_home)
    assert res.returncode == 0, res.stderr
    header, row = res.stdout.splitlines()[:2]
    assert header.split()[:3] == ["MODEL", "BACKEND", "QUANT"]
    assert "pp16 tok/s" in header and "tg4 tok/s" in header and "PEAK RSS" in header
    assert row.split()[:3] == [DEFAULT_MODEL, "llama_cpp", "Q4_1"]
    assert "saved to" in res.stdout
    res2 = run_cli(*args, "--json", home=stored_home)
    assert res2.returncode == 0, res2.stderr
    lines = (stored_home / "bench" / "results.jsonl").read_text().splitlines()
    assert len(lines) == 2  # appended, never overwritten


def test_bench_model_not_stored(home: Path) -> None:
    res = run_cli("bench", DEFAULT_MODEL, home=home)
    assert res.returncode == 1
    assert f"{DEFAULT_MODEL}:Q4_1 is not stored" in res.stderr
    assert f"hint: fetch it first with: locara pull {DEFAULT_MODEL}:Q4_1" in res.stderr
    assert not (home / "bench" / "results.jsonl").exists()


def test_bench_checks_every_model_before_measuring(stored_home: Path) -> None:
    res = run_cli("bench", DEFAULT_MODEL, f"{DEFAULT_MODEL}:Q8_0", home=stored_home)
    assert res.returncode == 1
    assert f"{DEFAULT_MODEL}:Q8_0 is not stored" in res.stderr
    assert "bench:" not in res.stderr  # nothing was measured
    assert not (stored_home / "bench" / "results.jsonl").exists()


@pytest.mark.parametrize(
    ("args", "message", "hint"),
    [
        (("--n-prompt", "0"), "invalid --n-prompt 0: must be >= 1", "pass --n-prompt 1"),
        (("--n-gen", "-3"), "invalid --n-gen -3: must be >= 1", "pass --n-gen 1"),
        (("--repetitions", "0"), "invalid --repetitions 0", "pass --repetitions 1"),
        (("--backend", "tensorrt"), "unknown backend 'tensorrt'", "llama_cpp, mlx"),
        (("--n-prompt", "9000"), "needs a context of 9129", "lower --n-prompt or --n-gen"),
        (
            ("--n-prompt", "8", "--n-gen", "4"),
            "--n-prompt 8 + --n-gen 4 is a context of 13 tokens; the smallest Locara loads is 16",
            "pass --n-prompt 11 or more",
        ),
        (("--plot", "out.jpg"), "must end in .png", "--plot"),
    ],
)
def test_bench_bad_parameters(
    shared_home: Path, args: tuple[str, ...], message: str, hint: str
) -> None:
    # Refused before anything is measured or written, so the shared home stays untouched.
    res = run_cli("bench", DEFAULT_MODEL, *args, home=shared_home)
    assert res.returncode == 1, res.stdout
    assert message in res.stderr
    assert "hint:" in res.stderr and hint in res.stderr


@pytest.mark.parametrize(
    ("ref", "message"),
    [
        ("no-such-model", "unknown model 'no-such-model'"),
        ("../etc/passwd", "invalid model reference"),
        (f"{DEFAULT_MODEL}:Q9_9", "has no quant 'Q9_9'"),
    ],
)
def test_bench_bad_references(shared_home: Path, ref: str, message: str) -> None:
    res = run_cli("bench", ref, home=shared_home)
    assert res.returncode == 1  # Locara's errors are 1; 2 is for the command line (below)
    assert message in res.stderr and "hint:" in res.stderr


def test_bench_command_line_mistakes_exit_2(shared_home: Path) -> None:
    res = run_cli("bench", DEFAULT_MODEL, "--n-prompt", "many", home=shared_home)
    assert res.returncode == 2
    assert "Invalid value for '--n-prompt': 'many' is not a valid integer" in res.stderr


def _write_huge_gguf(path: Path) -> None:
    """A valid GGUF whose header describes a model far larger than any machine.

    One tiny tensor, but 65,536 layers of 1,024 KV heads: the KV cache alone for a
    41-token bench is over a terabyte, so the planner must say it does not fit.
    """
    import gguf

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_context_length(4096)
    w.add_embedding_length(131072)
    w.add_block_count(65536)
    w.add_head_count(1024)
    w.add_head_count_kv(1024)
    w.add_feed_forward_length(4)
    w.add_file_type(0)  # ALL_F32
    w.add_tensor("token_embd.weight", np.zeros((4, 4), dtype=np.float32))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def test_bench_model_that_does_not_fit_uses_the_planner(home: Path, tmp_path: Path) -> None:
    gguf_path = tmp_path / "huge.gguf"
    _write_huge_gguf(gguf_path)
    data = gguf_path.read_bytes()
    registry = tmp_path / "registry"
    registry.mkdir()
    manifest = {
        "id": "huge-test",
        "version": "1.0.0",
        "displayName": "Huge test model",
        "license": "Apache-2.0",
        "modality": "chat",
        "context_length": 4096,
        "artifacts": {
            "llama_cpp": {
                "format": "gguf",
                "quant": "F32",
                "mirrors": [gguf_path.as_uri()],
                "sha256": hashlib.sha256(data).hexdigest(),
                "size_bytes": len(data),
            }
        },
        "curated": False,
    }
    (registry / "huge-test.json").write_text(json.dumps(manifest))
    env = {"LOCARA_REGISTRY_PATH": str(registry)}
    cfg = Settings.from_env({"LOCARA_HOME": str(home), **env})
    resolve(cfg, "huge-test")  # stored for real, through the store's verified ingest

    res = run_cli("bench", "huge-test", "--n-prompt", "32", "--n-gen", "8", home=home, env=env)
    assert res.returncode == 1, res.stdout
    assert "huge-test:F32 does not fit this device" in res.stderr
    assert "needs" in res.stderr and "budget" in res.stderr  # the planner's reason
    assert "hint: see the alternatives with: locara plan huge-test" in res.stderr
    assert "bench:" not in res.stderr  # refused before loading anything
    assert not (home / "bench" / "results.jsonl").exists()
