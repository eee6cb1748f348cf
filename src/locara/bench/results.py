"""The benchmark result file: one JSON object a line in ``Settings.bench_results_path``.

Every line has at least ``model_id``, ``sha256``, ``backend`` ("llama_cpp"|"mlx"),
``quant``, ``n_prompt``, ``n_gen``, ``pp_tps``, ``tg_tps``, ``ttft_s``, ``load_s``,
``peak_rss_bytes``, ``device`` and ``timestamp``; the planner reads them to prefer the
faster backend/quant on this device. Lines are appended with one ``write`` under an
``flock``, so concurrent benches never interleave, and a torn line from a crash is
skipped by the reader.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from locara.settings import Settings

REQUIRED_KEYS: tuple[str, ...] = (
    "model_id",
    "sha256",
    "backend",
    "quant",
    "n_prompt",
    "n_gen",
    "pp_tps",
    "tg_tps",
    "ttft_s",
    "load_s",
    "peak_rss_bytes",
    "device",
    "timestamp",
)


def append_result(settings: Settings, result: dict[str, Any]) -> None:
    """Append one result line; the directory is created on first use."""
    missing = [k for k in REQUIRED_KEYS if k not in result]
    if missing:  # a programming error, not a user one
        raise ValueError(f"benchmark result lacks {', '.join(missing)}")
    path = settings.bench_results_path
    path.parent.mkdir(parents=True, exist_ok=True)
    line = (json.dumps(result, sort_keys=True, separators=(",", ":")) + "\n").encode()
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def load_results(
    settings: Settings, model_id: str | None = None, sha256: str | None = None
) -> list[dict[str, Any]]:
    """Every saved result (oldest first), optionally for one model or blob."""
    path = settings.bench_results_path
    try:
        raw = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    out: list[dict[str, Any]] = []
    for line in raw.splitlines():
        try:
            rec = json.loads(line)
        except ValueError:
            continue
        if not isinstance(rec, dict) or any(k not in rec for k in REQUIRED_KEYS):
            continue
        if model_id is not None and rec["model_id"] != model_id:
            continue
        if sha256 is not None and rec["sha256"] != sha256:
            continue
        out.append(rec)
    return out
