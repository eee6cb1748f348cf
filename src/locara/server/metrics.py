"""Counters and a histogram, rendered in the Prometheus text format (version 0.0.4).

Small enough to keep in-house: no client library, no global registry; one
``Metrics`` per app, updated from worker threads under a lock.
"""

from __future__ import annotations

import threading
import time
from collections import defaultdict

from locara.engine.pool import LoadedInfo, PoolCounters

TTFT_BUCKETS = (0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


def _escape(value: str) -> str:
    # The text format's three escapes, backslash first. An unescaped newline in a model
    # name would end the sample and let its remainder read as lines of its own.
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _labels(**kv: str) -> str:
    inner = ",".join(f'{k}="{_escape(v)}"' for k, v in kv.items())
    return "{" + inner + "}" if inner else ""


class Metrics:
    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.started_at = time.time()
        self.requests: defaultdict[tuple[str, str, str], int] = defaultdict(int)
        self.tokens_in: defaultdict[str, int] = defaultdict(int)
        self.tokens_out: defaultdict[str, int] = defaultdict(int)
        self.cached_tokens: defaultdict[str, int] = defaultdict(int)
        self.ttft_counts = [0] * (len(TTFT_BUCKETS) + 1)
        self.ttft_sum = 0.0
        self.ttft_n = 0

    def observe(
        self,
        surface: str,
        model: str,
        status: str,
        tokens_in: int = 0,
        tokens_out: int = 0,
        cached: int = 0,
        ttft_s: float | None = None,
    ) -> None:
        with self._lock:
            self.requests[(surface, model, status)] += 1
            self.tokens_in[model] += tokens_in
            self.tokens_out[model] += tokens_out
            self.cached_tokens[model] += cached
            if ttft_s is not None:
                i = next((i for i, b in enumerate(TTFT_BUCKETS) if ttft_s <= b), len(TTFT_BUCKETS))
                self.ttft_counts[i] += 1
                self.ttft_sum += ttft_s
                self.ttft_n += 1

    @property
    def total_requests(self) -> int:
        with self._lock:
            return sum(self.requests.values())

    def render(
        self, loaded: list[LoadedInfo], queue_depths: dict[str, int], pool: PoolCounters
    ) -> str:
        out: list[str] = []

        def head(name: str, kind: str, text: str) -> None:
            out.append(f"# HELP {name} {text}")
            out.append(f"# TYPE {name} {kind}")

        with self._lock:
            head("locara_requests_total", "counter", "Requests handled, by surface, model, status.")
            for (surface, model, status), n in sorted(self.requests.items()):
                out.append(
                    f"locara_requests_total{_labels(surface=surface, model=model, status=status)} {n}"
                )
            for name, series, text in (
                ("locara_prompt_tokens_total", self.tokens_in, "Prompt tokens processed."),
                ("locara_completion_tokens_total", self.tokens_out, "Tokens generated."),
                ("locara_cached_prompt_tokens_total", self.cached_tokens, "Prompt tokens reused."),
            ):
                head(name, "counter", text)
                for model, n in sorted(series.items()):
                    out.append(f"{name}{_labels(model=model)} {n}")
            head("locara_time_to_first_token_seconds", "histogram", "Time to first token.")
            cum = 0
            for bound, n in zip((*TTFT_BUCKETS, float("inf")), self.ttft_counts, strict=True):
                cum += n
                le = "+Inf" if bound == float("inf") else repr(bound)
                out.append(f'locara_time_to_first_token_seconds_bucket{{le="{le}"}} {cum}')
            out.append(f"locara_time_to_first_token_seconds_sum {self.ttft_sum:.6f}")
            out.append(f"locara_time_to_first_token_seconds_count {self.ttft_n}")
        head("locara_queue_depth", "gauge", "Requests waiting for a busy model.")
        for model, n in sorted(queue_depths.items()):
            out.append(f"locara_queue_depth{_labels(model=model)} {n}")
        head("locara_loaded_models", "gauge", "Models loaded now.")
        out.append(f"locara_loaded_models {len(loaded)}")
        head("locara_model_memory_bytes", "gauge", "Estimated memory of each loaded model.")
        for m in loaded:
            mode = "embedding" if m.embedding else "generation"
            out.append(
                f"locara_model_memory_bytes{_labels(model=m.model_id, mode=mode)} {m.estimated_bytes}"
            )
        head("locara_in_flight_requests", "gauge", "Requests running or waiting, per model.")
        for m in loaded:
            mode = "embedding" if m.embedding else "generation"
            out.append(
                f"locara_in_flight_requests{_labels(model=m.model_id, mode=mode)} {m.in_flight}"
            )
        for name, n, text in (
            ("locara_model_loads_total", pool.loads, "Model loads."),
            (
                "locara_model_reloads_total",
                pool.reloads,
                "Reloads: a larger context, a changed file.",
            ),
            ("locara_model_evictions_total", pool.evictions, "Idle models unloaded to make room."),
        ):
            head(name, "counter", text)
            out.append(f"{name} {n}")
        head("locara_uptime_seconds", "gauge", "Seconds since the server started.")
        out.append(f"locara_uptime_seconds {time.time() - self.started_at:.3f}")
        return "\n".join(out) + "\n"
