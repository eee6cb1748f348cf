"""Usage over time: ledger rows grouped into equal time buckets, for the dashboard's charts."""

from __future__ import annotations

import math
from collections import defaultdict
from typing import Any

from locara.ledger.prices import PriceTable

# Bucket widths the series may use (seconds); the smallest that keeps the chart readable wins.
BUCKETS_S = (60, 300, 900, 3600, 6 * 3600, 86400, 7 * 86400)
MAX_POINTS = 60


def bucket_width(first: float, last: float) -> int:
    """The smallest width in BUCKETS_S that covers ``first``…``last`` in MAX_POINTS buckets."""
    span = max(0.0, last - first)
    for width in BUCKETS_S:
        if span / width < MAX_POINTS:
            return width
    return BUCKETS_S[-1]


def percentile(values: list[float], q: float) -> float | None:
    """The nearest-rank percentile (q in 0…100) of ``values``; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100 * len(ordered)))
    return ordered[rank - 1]


def usage_series(
    rows: list[dict[str, Any]], prices: PriceTable, width: int | None = None
) -> dict[str, Any]:
    """Per-bucket requests, tokens, mean tok/s, TTFT p50/p95 and cloud cost saved.

    Cost saved is priced against the cheapest entry of the price table (the most
    conservative claim); the bucket start ``t`` is unix time. Empty buckets are left
    out: a chart draws the points where something happened.
    """
    if not rows:
        return {"bucket_s": width or BUCKETS_S[0], "priced_vs": None, "points": []}
    width = width or bucket_width(rows[0]["ts"], rows[-1]["ts"])
    cheapest = min(prices.prices, key=lambda p: p.input_per_mtok + p.output_per_mtok, default=None)
    groups: dict[int, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[int(r["ts"] // width * width)].append(r)
    points = []
    for t in sorted(groups):
        rs = groups[t]
        tokens_in = sum(int(r["prompt_tokens"] or 0) for r in rs)
        tokens_out = sum(int(r["completion_tokens"] or 0) for r in rs)
        tps = [float(r["generation_tps"]) for r in rs if r["generation_tps"]]
        ttft = [float(r["ttft_s"]) for r in rs if r["ttft_s"] is not None]
        points.append(
            {
                "t": t,
                "requests": len(rs),
                "errors": sum(r["status"] == "error" for r in rs),
                "cancelled": sum(r["status"] == "cancelled" for r in rs),
                "prompt_tokens": tokens_in,
                "completion_tokens": tokens_out,
                "tps": round(sum(tps) / len(tps), 2) if tps else None,
                "ttft_p50_s": percentile(ttft, 50),
                "ttft_p95_s": percentile(ttft, 95),
                "cost_saved": round(cheapest.cost(tokens_in, tokens_out), 6) if cheapest else 0.0,
            }
        )
    return {
        "bucket_s": width,
        "priced_vs": cheapest.name if cheapest else None,
        "currency": prices.currency,
        "points": points,
    }
