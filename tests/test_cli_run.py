"""`locara run` end to end: the real CLI in a subprocess, the real default model."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, run_cli

CAPITAL = "Name the capital city of France."


def test_one_shot_answer_streams_paris(cli) -> None:
    r = cli("run", "--temperature", "0", CAPITAL)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


def test_json_output_has_answer_usage_and_timings(cli) -> None:
    r = cli("run", DEFAULT_MODEL, CAPITAL, "--temperature", "0", "--seed", "7", "--json")
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert "Paris" in data["text"]
    assert data["model"] == DEFAULT_MODEL
    assert data["sha256"] == DEFAULT_SHA
    assert data["backend"] == "llama_cpp"
    assert data["finish_reason"] == "stop"
    usage = data["usage"]
    assert usage["prompt_tokens"] > 5
    assert usage["completion_tokens"] >= 3
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    t = data["timings"]
    assert t["load_s"] > 0 and t["prompt_s"] > 0 and t["generation_s"] > 0
    # The first token comes out of the prompt's evaluation, so it cannot come sooner.
    assert t["ttft_s"] >= t["prompt_s"]
    # The rates are those timings: every prompt token evaluated (nothing cached in a fresh
    # process), and every token after the first one decoded.
    assert usage["cached_tokens"] == 0
    pp = usage["prompt_tokens"] / t["prompt_s"]
    tg = (usage["completion_tokens"] - 1) / t["generation_s"]
    assert t["prompt_tokens_per_s"] == pytest.approx(pp, rel=0.01)
    assert t["generation_tokens_per_s"] == pytest.approx(tg, rel=0.01)


def test_max_tokens_limits_the_answer(cli) -> None:
    r = cli(
        "run",
        "Write a long story about a dragon.",
        "--max-tokens",
        "5",
        "--json",
        "--temperature",
        "0",
    )
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["usage"]["completion_tokens"] == 5
    assert data["finish_reason"] == "length"


def test_same_seed_same_answer(cli) -> None:
    args = (
        "run",
        "Tell me a short joke.",
        "--temperature",
        "0.9",
        "--seed",
        "42",
        "--max-tokens",
        "24",
        "--json",
    )
    a, b = cli(*args), cli(*args)
    assert a.returncode == 0 and b.returncode == 0, a.stderr + b.stderr
    assert json.loads(a.stdout)["text"] == json.loads(b.stdout)["text"]


def test_verbose_prints_speeds_on_stderr(cli) -> None:
    r = cli("run", CAPITAL, "--temperature", "0", "--verbose")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    assert "tok/s" in r.stderr and "first token" in r.stderr and "load" in r.stderr


def test_prompt_from_stdin(cli) -> None:
    r = cli("run", "--temperature", "0", input=CAPITAL + "\n")
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout


PIRATE_WORDS = ("Aye", "aye", "Arr", "pirate", "Captain", "matey", "Bob")


def test_system_prompt_is_used(cli) -> None:
    args = ("run", "What is your name?", "--temperature", "0", "--max-tokens", "40")
    plain = cli(*args)
    pirate = cli(*args, "--system", "You are a pirate named Bob.")
    assert plain.returncode == 0 and pirate.returncode == 0, plain.stderr + pirate.stderr
    assert plain.stdout != pirate.stdout
    assert any(w in pirate.stdout for w in PIRATE_WORDS), pirate.stdout
    assert not any(w in plain.stdout for w in PIRATE_WORDS), plain.stdout


def test_interactive_chat_commands_and_history(cli, tmp_path: Path) -> None:
    script = (
        "\n".join(
            [
                "/help",
                "/set temperature 0",
                "/set max_tokens 40",
                "/set top_p 2",  # invalid: reported, session goes on
                CAPITAL,
                "/clear",
                "/set system You are a pirate named Bob.",
                "What is your name?",
                "/bye",
                "this line is never read",
            ]
        )
        + "\n"
    )
    r = cli("run", DEFAULT_MODEL, "-i", input=script)
    assert r.returncode == 0, r.stderr
    assert "Paris" in r.stdout
    answers = r.stdout.split("Paris", 1)[1]  # the second answer came after /clear + system
    assert any(w in answers for w in PIRATE_WORDS), r.stdout
    assert "/bye" in r.stderr  # the help text was shown
    assert "invalid top_p" in r.stderr


def test_interactive_ends_on_eof(cli) -> None:
    r = cli("run", "-i", input="")
    assert r.returncode == 0, r.stderr
    assert "Chatting with smollm2-135m-instruct" in r.stderr


def test_unknown_model_suggests_near_matches(cli) -> None:
    r = cli("run", "smollm2-135m", "hello")
    assert r.returncode == 1
    assert "unknown model 'smollm2-135m'" in r.stderr
    assert "smollm2-135m-instruct" in r.stderr  # the suggestion
    assert "Traceback" not in r.stderr


def test_invalid_reference_names_accepted_forms(cli) -> None:
    r = cli("run", "-m", "../etc/passwd", "hello")
    assert r.returncode == 1
    assert "invalid model reference" in r.stderr and "MODEL:QUANT" in r.stderr


def test_invalid_sampling_values_are_refused(cli) -> None:
    cases = [
        (["--temperature", "-0.5"], "invalid temperature"),
        (["--top-p", "0"], "invalid top_p"),
        (["--top-p", "1.5"], "invalid top_p"),
        (["--max-tokens", "0"], "invalid max_tokens"),
        (["--max-tokens", "-3"], "invalid max_tokens"),
    ]
    for extra, message in cases:
        r = cli("run", "hello", *extra)
        assert r.returncode == 1, (extra, r.stderr)
        assert message in r.stderr, (extra, r.stderr)
        assert "hint:" in r.stderr


def test_usage_error_exits_2(cli) -> None:
    r = cli("run", "--no-such-option")
    assert r.returncode == 2
    assert "No such option" in r.stderr


def test_prompt_longer_than_context_is_an_error_with_counts(cli) -> None:
    long_prompt = "The quick brown fox jumps over the lazy dog. " * 60
    r = cli("run", long_prompt, "--ctx", "256")
    assert r.returncode == 1
    assert "context holds 256" in r.stderr
    assert "prompt is" in r.stderr and "tokens" in r.stderr
    assert r.stdout == ""  # nothing generated from a silently truncated prompt


def test_max_tokens_beyond_context_is_an_error(cli) -> None:
    r = cli("run", CAPITAL, "--ctx", "256", "--max-tokens", "500")
    assert r.returncode == 1
    assert "max_tokens 500" in r.stderr and "context holds 256" in r.stderr


def test_ctx_beyond_trained_context_is_refused(cli) -> None:
    r = cli("run", CAPITAL, "--ctx", "100000")
    assert r.returncode == 1
    assert "trained context 8192" in r.stderr


def test_unwritable_home_is_a_clear_error(tmp_path: Path) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    # A home below a regular file cannot be created, even by root.
    r = run_cli("run", CAPITAL, home=blocker / "home")
    assert r.returncode == 1
    assert "LOCARA_HOME" in r.stderr
    assert "Traceback" not in r.stderr


def test_debug_shows_traceback(cli) -> None:
    r = cli("run", "nope-model", "hi", env={"LOCARA_DEBUG": "1"})
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "unknown model" in r.stderr


def test_ctrl_c_during_generation_exits_130(shared_home: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    env["LOCARA_HOME"] = str(shared_home)
    proc = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "locara",
            "run",
            "Write a very long story about the sea.",
            "--temperature",
            "0.8",
            "--seed",
            "1",
            "--max-tokens",
            "4000",
            "--ctx",
            "4096",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        stdin=subprocess.DEVNULL,
        env=env,
        # Ctrl-C as a terminal delivers it: a test run started in the background (make
        # test &) ignores SIGINT, and a child would inherit that and never see it.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    assert proc.stdout is not None
    first = proc.stdout.read(1)  # generation has started
    assert first
    proc.send_signal(signal.SIGINT)
    try:
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    out = first + proc.stdout.read()
    err = proc.stderr.read() if proc.stderr else b""
    assert rc == 130, err
    assert b"Traceback" not in err
    # Stopped long before the 4000-token budget.
    assert len(out) < 4000 * 3


def test_help_does_not_import_llama_cpp() -> None:
    code = (
        "import sys\n"
        "from locara.cli.main import main\n"
        "for args in (['--help'], ['run', '--help'], ['ls', '--help']):\n"
        "    assert main(args) == 0\n"
        "print('llama_cpp' in sys.modules)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "False"
    assert "run" in out.stdout and "Commands" in out.stdout


def test_ls_and_show_after_run(cli) -> None:
    r = cli("run", CAPITAL, "--max-tokens", "4")
    assert r.returncode == 0, r.stderr
    before = time.time()
    ls = cli("ls", "--json")
    assert ls.returncode == 0, ls.stderr
    rows = json.loads(ls.stdout)
    row = next(r for r in rows if r["sha256"] == DEFAULT_SHA)
    assert row["id"] == DEFAULT_MODEL and row["quant"] == "Q4_1"
    assert row["size_bytes"] == 98_362_432
    assert row["last_used"] is not None
    assert (
        abs(
            time.mktime(time.strptime(row["last_used"][:19], "%Y-%m-%dT%H:%M:%S"))
            - time.timezone
            - before
        )
        < 600
    )
    table = cli("ls")
    assert DEFAULT_MODEL in table.stdout and "Q4_1" in table.stdout

    show = cli("show", DEFAULT_MODEL, "--json")
    assert show.returncode == 0, show.stderr
    data = json.loads(show.stdout)
    g = data["gguf"]
    assert g["architecture"] == "llama"
    assert g["layers"] == 30 and g["heads"] == 9 and g["kv_heads"] == 3
    assert g["embedding_length"] == 576 and g["context_length"] == 8192
    assert g["quant"] == "Q4_1"
    assert 130_000_000 < g["parameters"] < 140_000_000
    assert data["manifest"]["license"] == "Apache-2.0"
    assert data["manifest"]["config"]["stop_tokens"] == ["<|im_end|>"]
    text = cli("show", DEFAULT_MODEL)
    assert "Apache-2.0" in text.stdout and "<|im_end|>" in text.stdout and "llama" in text.stdout


def test_every_cli_request_is_in_the_ledger_even_failures(home: Path) -> None:
    ok = run_cli("run", CAPITAL, "--max-tokens", "4", home=home)
    assert ok.returncode == 0, ok.stderr
    bad = run_cli("run", CAPITAL, "--ctx", "256", "--max-tokens", "500", home=home)
    assert bad.returncode == 1
    report = run_cli("usage", "--json", home=home)
    assert report.returncode == 0, report.stderr
    row = json.loads(report.stdout)["models"][0]
    assert row["model"] == DEFAULT_MODEL
    assert (row["requests"], row["ok"], row["errors"]) == (2, 1, 1)
    assert row["completion_tokens"] == 4


def test_quantized_kv_cache_loads_and_answers(shared_home: Path) -> None:
    from locara.backends.base import GenerationRequest, LoadOptions, Message, Sampling
    from locara.engine.loader import load, resolve
    from locara.settings import Settings

    s = Settings.from_env({"LOCARA_HOME": str(shared_home)})
    handle = load(s, resolve(s, None), LoadOptions(n_ctx=512, kv_type="q8_0"))
    try:
        req = GenerationRequest(
            messages=(Message("user", CAPITAL),), sampling=Sampling(temperature=0), max_tokens=16
        )
        assert "Paris" in "".join(c.text for c in handle.model.generate(req))
    finally:
        handle.close()


def test_run_refuses_an_embedding_model_before_converting_it(tmp_path: Path) -> None:
    home = tmp_path / "home"
    res = run_cli("run", "all-minilm-l6-v2", "Hi", home=home)
    assert res.returncode == 1
    assert "is an embedding model" in res.stderr and "/v1/embeddings" in res.stderr
    # Nothing was converted or stored on the way to that refusal.
    assert not (home / "models").exists() or not any((home / "models").glob("[0-9a-f]*"))
