"""The usage ledger end to end: real requests through the CLI, read back with ``locara usage``.

Every request here runs the real default model; every read goes through the real
``locara usage`` command against the real SQLite file.
"""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path

import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SHA, run_cli
from locara.engine.loader import resolve
from locara.settings import Settings

# OpenMP threads that spin while waiting for each other starve on 2 cores shared with
# other jobs (a 5-token answer took 13.5 s spinning, 5 s passive); the model path is the same.
QUIET_OMP = {"OMP_WAIT_POLICY": "passive"}


@pytest.fixture
def stored_home(home: Path) -> Path:
    """A fresh home with the default model stored (and nothing used yet)."""
    resolve(Settings.from_env(), None)
    return home


def _run(home: Path, prompt: str, *extra: str) -> dict[str, object]:
    res = run_cli("run", prompt, "--json", "--temperature", "0", *extra, home=home, env=QUIET_OMP)
    assert res.returncode == 0, res.stderr
    out = json.loads(res.stdout)
    assert isinstance(out, dict)
    return out


def _usage(home: Path, *args: str) -> dict[str, object]:
    res = run_cli("usage", "--json", *args, home=home)
    assert res.returncode == 0, res.stderr
    data = json.loads(res.stdout)
    assert isinstance(data, dict)
    return data


@pytest.mark.slow
def test_cli_requests_are_recorded_and_read_back(stored_home: Path) -> None:
    a = _run(stored_home, "Name the capital city of France.", "--max-tokens", "12")
    b = _run(stored_home, "Say hello.", "--max-tokens", "5")

    report = _usage(stored_home)
    models = report["models"]
    assert isinstance(models, list) and len(models) == 1
    m = models[0]
    usage_a, usage_b = a["usage"], b["usage"]
    assert isinstance(usage_a, dict) and isinstance(usage_b, dict)
    assert m["model"] == DEFAULT_MODEL
    assert m["requests"] == 2 and m["ok"] == 2 and m["errors"] == 0
    assert m["prompt_tokens"] == usage_a["prompt_tokens"] + usage_b["prompt_tokens"]
    assert m["completion_tokens"] == usage_a["completion_tokens"] + usage_b["completion_tokens"]
    assert m["sha256"] == [DEFAULT_SHA]
    assert m["backends"] == ["llama_cpp"] and m["apps"] == ["cli"]
    assert m["avg_tps"] is not None and m["avg_tps"] > 0
    assert m["avg_ttft_s"] is not None and m["avg_ttft_s"] > 0
    assert m["avg_load_s"] is not None and m["avg_load_s"] > 0
    last = dt.datetime.fromisoformat(str(m["last_used"]))
    assert abs((dt.datetime.now(dt.UTC) - last).total_seconds()) < 3600

    totals = report["totals"]
    assert isinstance(totals, dict)
    assert totals["requests"] == 2
    assert totals["prompt_tokens"] == m["prompt_tokens"]

    # One row per request in the database itself, with every column the issue names.
    with sqlite3.connect(stored_home / "usage.db") as conn:
        rows = conn.execute(
            "SELECT app, surface, model_id, sha256, backend, prompt_tokens, completion_tokens,"
            " ttft_s, generation_tps, load_s, status FROM requests ORDER BY ts"
        ).fetchall()
        journal = conn.execute("PRAGMA journal_mode").fetchone()[0]
        version = conn.execute("PRAGMA user_version").fetchone()[0]
    assert journal == "wal"
    assert version >= 1
    assert [r[5] for r in rows] == [usage_a["prompt_tokens"], usage_b["prompt_tokens"]]
    for r in rows:
        assert r[:5] == ("cli", "cli", DEFAULT_MODEL, DEFAULT_SHA, "llama_cpp")
        assert r[7] > 0 and r[9] > 0 and r[10] == "ok"

    # Filters.
    assert _usage(stored_home, "--model", DEFAULT_MODEL)["totals"]["requests"] == 2  # type: ignore[index]
    assert _usage(stored_home, "--model", "other-model")["totals"]["requests"] == 0  # type: ignore[index]
    assert _usage(stored_home, "--app", "cli")["totals"]["requests"] == 2  # type: ignore[index]
    assert _usage(stored_home, "--app", "notes")["totals"]["requests"] == 0  # type: ignore[index]
    assert _usage(stored_home, "--since", "today")["totals"]["requests"] == 2  # type: ignore[index]
    tomorrow = (dt.date.today() + dt.timedelta(days=2)).isoformat()
    assert _usage(stored_home, "--since", tomorrow)["totals"]["requests"] == 0  # type: ignore[index]

    # The human table (requests, tokens, tok/s, last use), with totals and the cost estimate.
    res = run_cli("usage", home=stored_home)
    assert res.returncode == 0, res.stderr
    lines = res.stdout.splitlines()
    assert lines[0].split() == [
        "MODEL",
        "REQUESTS",
        "TOKENS_IN",
        "TOKENS_OUT",
        "AVG_TOK/S",
        "LAST_USED",
    ]
    assert lines[1].split()[:2] == [DEFAULT_MODEL, "2"]
    assert "Total: 2 requests" in res.stdout
    assert "Estimated cloud cost saved: $" in res.stdout and "(vs gpt-4o)" in res.stdout


def test_cost_saved_uses_the_price_table_and_its_override(home: Path) -> None:
    from locara.ledger import UsageRecord, record_usage

    cfg = Settings.from_env()
    for n_in, n_out in ((1000, 500), (3000, 1500)):
        record_usage(
            cfg, UsageRecord(DEFAULT_MODEL, DEFAULT_SHA, "llama_cpp", "cli", "cli", n_in, n_out)
        )
    shipped = _usage(home)["cloud_cost_saved"]
    assert isinstance(shipped, dict)
    assert shipped["price_table"] == "shipped"
    # gpt-4o at $2.50 in / $10.00 out per 1M tokens: 4000 in + 2000 out.
    assert shipped["vs"]["gpt-4o"] == pytest.approx(4000 * 2.5 / 1e6 + 2000 * 10 / 1e6)

    (home / "prices.json").write_text(
        json.dumps(
            {
                "models": {
                    "my-api": {"input": 1.0, "output": 2.0},
                    "gpt-4o": None,
                    "gpt-4o-mini": {"input": 0.2, "output": 0.8},
                }
            }
        )
    )
    over = _usage(home)["cloud_cost_saved"]
    assert isinstance(over, dict)
    assert over["price_table"] == str(home / "prices.json")
    assert "gpt-4o" not in over["vs"]
    assert over["vs"]["my-api"] == pytest.approx((4000 * 1.0 + 2000 * 2.0) / 1e6)
    assert over["vs"]["gpt-4o-mini"] == pytest.approx((4000 * 0.2 + 2000 * 0.8) / 1e6)
    assert "claude-sonnet-4" in over["vs"]  # untouched shipped entries stay

    (home / "prices.json").write_text(json.dumps({"models": {"x": {"input": -1, "output": 1}}}))
    res = run_cli("usage", home=home)
    assert res.returncode == 1
    assert "x.input must be a number >= 0" in res.stderr and "hint:" in res.stderr

    (home / "prices.json").write_text("{not json")
    res = run_cli("usage", home=home)
    assert res.returncode == 1
    assert "cannot read the price table" in res.stderr
    assert "delete it to use the shipped prices" in res.stderr


@pytest.mark.parametrize(
    "bad", ["2026-13-01", "yesterdayish", "11/01/2026", "2026-11-01T25:00", "7 weeks", ""]
)
def test_wrong_date_format_is_a_clear_error(home: Path, bad: str) -> None:
    res = run_cli("usage", "--since", bad, home=home)
    assert res.returncode == 1
    assert f"invalid date {bad!r}" in res.stderr
    assert "hint: use YYYY-MM-DD" in res.stderr


@pytest.mark.parametrize(
    "good", ["2026-11-01", "2026-11-01T08:30", "2026-11-01T08:30:00Z", "7d", "12h", "yesterday"]
)
def test_accepted_date_forms(home: Path, good: str) -> None:
    assert _usage(home, "--since", good)["totals"]["requests"] == 0  # type: ignore[index]


def test_usage_plot_is_a_png_of_tokens_per_day(home: Path) -> None:
    import time

    from locara.ledger import UsageRecord, record_usage

    cfg = Settings.from_env()
    now = time.time()
    for day in range(5):
        for model in (DEFAULT_MODEL, "other-model"):
            record_usage(
                cfg,
                UsageRecord(
                    model,
                    None,
                    "llama_cpp",
                    "cli",
                    "cli",
                    100 * (day + 1),
                    50,
                    timestamp=now - day * 86400,
                ),
            )
    out = home / "usage.png"
    report = _usage(home, "--plot", str(out))
    assert report["plot"] == str(out)
    data = out.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    assert len(data) > 10_000  # bars, labels and a legend, not an empty canvas

    res = run_cli("usage", "--plot", str(home / "usage.txt"), home=home)
    assert res.returncode == 1 and "must end in .png" in res.stderr
    res = run_cli("usage", "--plot", str(home / "no" / "such" / "dir.png"), home=home)
    assert res.returncode == 1 and "does not exist" in res.stderr


def test_empty_ledger(home: Path) -> None:
    res = run_cli("usage", home=home)
    assert res.returncode == 0
    assert "no requests recorded" in res.stdout
    assert _usage(home)["totals"] == {  # type: ignore[comparison-overlap]
        "requests": 0,
        "errors": 0,
        "cancelled": 0,
        "prompt_tokens": 0,
        "completion_tokens": 0,
        "audio_s": 0,
        "images": 0,
        "first": None,
        "last": None,
    }
