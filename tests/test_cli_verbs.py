"""The local-model helper's verbs through the real CLI: setup, models, download (a
Hugging Face GGUF repository by quant), benchmark --model, chat; and their bad input.

Hugging Face is a loopback server answering the Hub's ``/api/models/<repo>`` and serving
the bundled model's file; ``setup`` is run on this machine (its llama.cpp is installed)
and with a PATH that lacks the build tools, so nothing is ever built here.
"""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, DEFAULT_SIZE, run_cli
from locara.engine.loader import resolve
from locara.settings import Settings
from loopback_server import LoopbackServer, hf_repo_info

REPO = "bartowski/SmolLM2-135M-Instruct-GGUF"
Q4_1 = "SmolLM2-135M-Instruct.Q4_1.gguf"
FILES = [
    "README.md",
    Q4_1,
    "SmolLM2-135M-Instruct.Q8_0.gguf",
    "SmolLM2-135M-Instruct-Q4_K_M-00001-of-00002.gguf",
    "SmolLM2-135M-Instruct-Q4_K_M-00002-of-00002.gguf",
]
GATED = "meta-llama/Gated-GGUF"
FILE_PATH = f"/{REPO}/resolve/main/{Q4_1}"
GATED_PATH = f"/{GATED}/resolve/main/{Q4_1}"


@pytest.fixture(scope="module")
def hub(default_gguf: Path) -> Iterator[LoopbackServer]:
    srv = LoopbackServer().start()
    srv.hf_repos[REPO] = hf_repo_info(REPO, FILES)
    srv.hf_repos[GATED] = hf_repo_info(GATED, ["README.md", Q4_1], gated="manual")
    srv.add(FILE_PATH, default_gguf)
    srv.add(GATED_PATH, default_gguf)
    srv.fault(GATED_PATH, "auth", token="hf_accepted")
    yield srv
    srv.stop()


def _hub_env(hub: LoopbackServer, **extra: str) -> dict[str, str]:
    return {"HF_ENDPOINT": hub.url, "HF_TOKEN": "", **extra}


def _commands_section(text: str) -> list[str]:
    return text.split("Commands:", 1)[1].splitlines()


# --- --help and aliases -------------------------------------------------------------


def test_help_shows_each_alias_once_beside_its_command(home: Path) -> None:
    res = run_cli("--help", home=home)
    assert res.returncode == 0, res.stderr
    rows = _commands_section(res.stdout)
    names = [r.split()[0].rstrip(",") for r in rows if r.startswith("  ") and r[2] != " "]
    for alias, command in [("models", "ls"), ("download", "pull"), ("benchmark", "bench")]:
        assert any(r.startswith(f"  {command}, {alias} ") for r in rows), alias
        assert alias not in names, f"{alias} listed as a command of its own"
        assert sum(f" {alias} " in f"{r} " or f" {alias}," in r for r in rows) == 1, alias
    assert any(r.startswith("  run, chat ") for r in rows)
    assert any(r.startswith("  setup ") for r in rows)


@pytest.mark.parametrize(("alias", "command"), [("models", "ls"), ("download", "pull")])
def test_alias_help_is_its_commands_help(home: Path, alias: str, command: str) -> None:
    a = run_cli(alias, "--help", home=home).stdout
    c = run_cli(command, "--help", home=home).stdout
    assert a.startswith(f"Usage: locara {alias} ")
    assert a.replace(f"locara {alias}", f"locara {command}", 1) == c


def test_models_is_ls(cli) -> None:
    models, ls = cli("models", "--json"), cli("ls", "--json")
    assert models.returncode == 0, models.stderr
    rows = json.loads(models.stdout)
    assert rows == json.loads(ls.stdout)
    assert [r["sha256"] for r in rows if r["id"] == DEFAULT_MODEL] == [DEFAULT_SHA]


# --- chat -----------------------------------------------------------------------------


def test_chat_is_an_interactive_run(cli) -> None:
    script = "/set temperature 0\n/set max_tokens 24\nName the capital city of France.\n/bye\n"
    res = cli("chat", input=script)
    assert res.returncode == 0, res.stderr
    assert f"Chatting with {DEFAULT_MODEL}" in res.stderr
    assert "Paris" in res.stdout


def test_chat_with_a_prompt_says_to_run_it(cli) -> None:
    res = cli("chat", "Name the capital city of France.")
    assert res.returncode == 1
    assert "error: a chat (locara chat, run -i) takes no prompt" in res.stderr
    assert 'hint: type it in the chat, or get one answer with: locara run "PROMPT"' in res.stderr


# --- benchmark ------------------------------------------------------------------------


@pytest.mark.slow
def test_benchmark_takes_model_repeated(home: Path) -> None:
    resolve(Settings.from_env(), None)  # store the default model in this home
    res = run_cli(
        "benchmark",
        "--model",
        DEFAULT_MODEL,
        "--model",
        f"{DEFAULT_MODEL}@sha256:{DEFAULT_SHA}",
        *("--n-prompt", "16", "--n-gen", "4", "-r", "1", "--threads", "1", "--json"),
        home=home,
    )
    assert res.returncode == 0, res.stderr
    results = json.loads(res.stdout)
    assert [(r["model_id"], r["sha256"]) for r in results] == [(DEFAULT_MODEL, DEFAULT_SHA)] * 2
    assert all(r["tg_tps"] > 0 for r in results)


def test_benchmark_without_a_model_is_a_usage_error(home: Path) -> None:
    res = run_cli("benchmark", home=home)
    assert res.returncode == 2
    assert "name a model to measure: locara bench MODEL (or --model MODEL)" in res.stderr


def test_benchmark_of_a_model_not_stored_offers_the_download(home: Path) -> None:
    res = run_cli("benchmark", "--model", DEFAULT_MODEL, home=home)
    assert res.returncode == 1
    assert f"error: {DEFAULT_MODEL}:Q4_1 is not stored, so it cannot be benchmarked" in res.stderr
    assert f"hint: fetch it first with: locara pull {DEFAULT_MODEL}:Q4_1" in res.stderr


# --- download REPO --quant -----------------------------------------------------------


def test_download_repo_quant_picks_that_file_verifies_and_stores_it(
    home: Path, hub: LoopbackServer
) -> None:
    before = len(hub.requests(FILE_PATH))
    res = run_cli("download", REPO, "--quant", "q4_1", "--json", home=home, env=_hub_env(hub))
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert (out["sha256"], out["size_bytes"]) == (DEFAULT_SHA, DEFAULT_SIZE)
    assert len(hub.requests(FILE_PATH)) == before + 1  # that file, once
    listed = json.loads(run_cli("models", "--json", home=home).stdout)
    assert [r["id"] for r in listed if r["sha256"] == DEFAULT_SHA] == [out["id"]]
    assert out["id"].startswith("bartowski-smollm2-135m-instruct-gguf")


def test_download_repo_without_the_quant_lists_the_quants_it_has(
    home: Path, hub: LoopbackServer
) -> None:
    res = run_cli("download", REPO, "--quant", "Q5_K_M", home=home, env=_hub_env(hub))
    assert res.returncode == 1
    assert f"error: {REPO} has no Q5_K_M file; it has: Q4_1, Q4_K_M, Q8_0" in res.stderr
    assert f"hint: locara download {REPO} --quant Q4_1" in res.stderr


def test_download_repo_without_quant_asks_for_one(home: Path, hub: LoopbackServer) -> None:
    res = run_cli("download", REPO, home=home, env=_hub_env(hub))
    assert res.returncode == 1
    assert "has several GGUF files; pick a quant: Q4_1, Q4_K_M, Q8_0" in res.stderr


def test_download_split_quant_is_refused_with_the_others(home: Path, hub: LoopbackServer) -> None:
    res = run_cli("download", REPO, "--quant", "Q4_K_M", home=home, env=_hub_env(hub))
    assert res.returncode == 1
    assert "splits Q4_K_M into 2 files; Locara stores single-file GGUFs" in res.stderr
    assert "it has: Q4_1, Q4_K_M, Q8_0" in res.stderr


def test_download_gated_repo_needs_a_token(home: Path, hub: LoopbackServer) -> None:
    res = run_cli("download", GATED, "--quant", "Q4_1", home=home, env=_hub_env(hub))
    assert res.returncode == 1
    assert f"error: {GATED} is gated" in res.stderr
    assert f"hint: accept them at {hub.url}/{GATED}, then set HF_TOKEN" in res.stderr
    assert hub.requests(GATED_PATH) == []  # refused before any download
    # With the token of an account that accepted the terms, the same command works.
    ok = run_cli(
        "download", GATED, "--quant", "Q4_1", "--json",
        home=home, env=_hub_env(hub, HF_TOKEN="hf_accepted"),
    )  # fmt: skip
    assert ok.returncode == 0, ok.stderr
    assert json.loads(ok.stdout)["sha256"] == DEFAULT_SHA
    assert hub.requests(GATED_PATH)[-1].authorization == "Bearer hf_accepted"


def test_download_unknown_repo(home: Path, hub: LoopbackServer) -> None:
    res = run_cli(
        "download", "nobody/nothing-GGUF", "--quant", "Q4_1", home=home, env=_hub_env(hub)
    )
    assert res.returncode == 1
    assert f"error: no repository nobody/nothing-GGUF on {hub.url}" in res.stderr
    assert "hint: check the name (owner/repo), or find one with: locara search" in res.stderr


def test_download_quant_with_a_file_that_names_its_own(home: Path) -> None:
    res = run_cli("download", f"hf://{REPO}/{Q4_1}", "--quant", "Q8_0", home=home)
    assert res.returncode == 1
    assert "--quant Q8_0 with hf://" in res.stderr and "hint: drop --quant" in res.stderr


# --- setup ----------------------------------------------------------------------------


def test_setup_on_this_machine_finds_llama_cpp_and_ends_with_device_and_recommend(
    home: Path,
) -> None:
    res = run_cli("setup", home=home)
    assert res.returncode == 0, res.stderr
    out = res.stdout
    assert "llama-cpp-python ok: installed" in out
    installed = Path(sys.prefix) / "libexec" / "locara" / "llama-server"
    assert f"llama-server     ok: {installed} (version: " in out
    assert "would" not in out  # nothing to do, so no plan
    assert f"ready: models are stored under {home}" in out
    assert "RAM " in out and "Recommended chat models:" in out  # device, then recommend
    # --yes on a ready machine has nothing to run.
    again = run_cli("setup", "--yes", home=home)
    assert again.returncode == 0 and "setup will" not in again.stdout


def test_setup_update_says_what_it_would_run_and_changes_nothing(home: Path) -> None:
    res = run_cli("setup", "--update", home=home)
    assert res.returncode == 0, res.stderr
    assert "setup would:\n  - re-run " in res.stdout and "scripts/install.sh" in res.stdout
    assert "nothing was changed; to do it, run: locara setup --update --yes" in res.stdout
    assert "ready:" not in res.stdout


def _path_with(tmp_path: Path, *programs: str) -> str:
    """A PATH directory holding only ``programs`` (links to the real ones)."""
    import shutil

    d = tmp_path / "bin"
    d.mkdir()
    for prog in programs:
        real = shutil.which(prog)
        assert real, f"{prog} is needed for this test"
        (d / prog).symlink_to(real)
    return str(d)


@pytest.mark.parametrize(
    ("programs", "missing", "packages"),
    [
        ((), "C compiler, C++ compiler, cmake, make or ninja", "build-essential cmake"),
        (("cc", "c++", "make"), "cmake", "cmake"),
    ],
)
def test_setup_without_build_tools_names_the_package(
    home: Path, tmp_path: Path, programs: tuple[str, ...], missing: str, packages: str
) -> None:
    if "debian" not in Path("/etc/os-release").read_text().lower():
        pytest.skip("the package names checked here are Debian's")
    path = _path_with(tmp_path, *programs)
    res = run_cli("setup", "--update", home=home, env={"PATH": path})
    assert res.returncode == 1
    assert f"error: building llama.cpp needs {missing}, not found on PATH" in res.stderr
    assert f"hint: install them with: sudo apt-get install {packages}" in res.stderr


def test_setup_on_an_unsupported_platform(home: Path, tmp_path: Path) -> None:
    from locara.device.profile import detect_profile

    real = json.loads(detect_profile(Settings.from_env()).to_json())
    profile = tmp_path / "windows.json"
    profile.write_text(json.dumps({**real, "os": "windows", "arch": "x86_64"}))
    res = run_cli("setup", home=home, env={"LOCARA_DEVICE_PROFILE": str(profile)})
    assert res.returncode == 1
    assert "error: unsupported platform: windows x86_64" in res.stderr
    assert "hint: on Windows, run Locara inside WSL2 (Ubuntu)" in res.stderr


def test_setup_with_a_broken_chosen_llama_server_names_it(home: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nope" / "llama-server"
    res = run_cli("setup", home=home, env={"LOCARA_LLAMA_SERVER": str(missing)})
    assert res.returncode == 1
    assert f"error: LOCARA_LLAMA_SERVER={missing}: no such file" in res.stderr
    assert "hint: unset LOCARA_LLAMA_SERVER" in res.stderr


def test_setup_yes_refuses_to_build_for_a_saved_profile(home: Path, tmp_path: Path) -> None:
    from locara.device.profile import detect_profile

    profile = tmp_path / "other.json"
    profile.write_text(detect_profile(Settings.from_env()).to_json())
    env = {"LOCARA_DEVICE_PROFILE": str(profile), "PATH": os.environ["PATH"]}
    res = run_cli("setup", "--update", "--yes", home=home, env=env)
    assert res.returncode == 1
    assert "LOCARA_DEVICE_PROFILE describes another machine" in res.stderr
