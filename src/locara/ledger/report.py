"""Usage reports: per-model totals, filters, cloud cost saved, tokens per day."""

from __future__ import annotations

import datetime as dt
import re
import statistics
from collections import defaultdict
from typing import Any

from locara.errors import UsageError
from locara.ledger.prices import PriceTable

DATE_FORMS = (
    "YYYY-MM-DD, YYYY-MM-DDTHH:MM[:SS][+HH:MM|Z], today, yesterday, or an age like 7d / 12h"
)
_AGE = re.compile(r"^(\d+)\s*([dhm])$")


def parse_since(text: str, now: dt.datetime | None = None) -> float:
    """A --since value as unix time; dates without a zone are the local time zone.

    Anything else is a UsageError naming the accepted forms.
    """
    raw = text.strip().lower()
    now = now or dt.datetime.now().astimezone()
    if raw in ("today", "yesterday"):
        midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
        return (midnight - dt.timedelta(days=1 if raw == "yesterday" else 0)).timestamp()
    m = _AGE.match(raw)
    if m:
        n, unit = int(m.group(1)), m.group(2)
        delta = {
            "d": dt.timedelta(days=n),
            "h": dt.timedelta(hours=n),
            "m": dt.timedelta(minutes=n),
        }
        return (now - delta[unit]).timestamp()
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", raw):
        try:
            day = dt.date.fromisoformat(raw)
        except ValueError:
            pass
        else:
            return dt.datetime(day.year, day.month, day.day).astimezone().timestamp()
    elif re.fullmatch(
        r"\d{4}-\d{2}-\d{2}[t ]\d{2}:\d{2}(:\d{2}(\.\d+)?)?(z|[+-]\d{2}:?\d{2})?", raw
    ):
        try:
            when = dt.datetime.fromisoformat(raw.upper().replace("Z", "+00:00"))
        except ValueError:
            pass
        else:
            return (when if when.tzinfo else when.astimezone()).timestamp()
    raise UsageError(
        f"invalid date {text!r}",
        f"use {DATE_FORMS}; e.g. --since {now.date().replace(day=1).isoformat()}",
    )


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return dt.datetime.fromtimestamp(ts, dt.UTC).isoformat(timespec="seconds")


def _mean(values: list[float]) -> float | None:
    return round(statistics.fmean(values), 3) if values else None


def summarize(rows: list[dict[str, Any]], prices: PriceTable) -> dict[str, Any]:
    """Per-model totals (sorted by requests, most first), grand totals and cost saved."""
    groups: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for r in rows:
        groups[r["model_id"]].append(r)
    models: list[dict[str, Any]] = []
    for model_id, rs in groups.items():
        models.append(
            {
                "model": model_id,
                "requests": len(rs),
                "ok": sum(r["status"] == "ok" for r in rs),
                "errors": sum(r["status"] == "error" for r in rs),
                "cancelled": sum(r["status"] == "cancelled" for r in rs),
                "prompt_tokens": sum(int(r["prompt_tokens"] or 0) for r in rs),
                "completion_tokens": sum(int(r["completion_tokens"] or 0) for r in rs),
                "audio_s": round(sum(float(r.get("audio_s") or 0) for r in rs), 3),
                "images": sum(int(r.get("images") or 0) for r in rs),
                "avg_tps": _mean([r["generation_tps"] for r in rs if r["generation_tps"]]),
                "avg_ttft_s": _mean([r["ttft_s"] for r in rs if r["ttft_s"] is not None]),
                "avg_load_s": _mean([r["load_s"] for r in rs if r["load_s"] is not None]),
                "last_used": iso(max(r["ts"] for r in rs)),
                "backends": sorted({r["backend"] for r in rs}),
                "apps": sorted({r["app"] for r in rs}),
                "surfaces": sorted({r["surface"] for r in rs}),
                "sha256": sorted({r["sha256"] for r in rs if r["sha256"]}),
            }
        )
    models.sort(key=lambda m: (-m["requests"], m["model"]))
    # Tokens a remote target produced (a router policy's escalations) saved nothing.
    local = [r for r in rows if not str(r["backend"]).startswith("remote:")]
    tokens_in = sum(int(r["prompt_tokens"] or 0) for r in local)
    tokens_out = sum(int(r["completion_tokens"] or 0) for r in local)
    totals = {
        "requests": len(rows),
        "errors": sum(m["errors"] for m in models),
        "cancelled": sum(m["cancelled"] for m in models),
        "prompt_tokens": tokens_in,
        "completion_tokens": tokens_out,
        "audio_s": round(sum(m["audio_s"] for m in models), 3),
        "images": sum(m["images"] for m in models),
        "first": iso(min((r["ts"] for r in rows), default=None)),
        "last": iso(max((r["ts"] for r in rows), default=None)),
    }
    saved = {
        p.name: round(p.cost(tokens_in, tokens_out), 6)
        for p in sorted(prices.prices, key=lambda p: p.input_per_mtok + p.output_per_mtok)
    }
    return {
        "models": models,
        "totals": totals,
        "cloud_cost_saved": {
            "currency": prices.currency,
            "as_of": prices.as_of,
            "price_table": prices.overridden_by or "shipped",
            "vs": saved,
        },
        "routing": _routing(rows),
    }


def _routing(rows: list[dict[str, Any]]) -> dict[str, Any] | None:
    """Requests a router policy answered: how many locally, escalated, cost and saving."""
    routed = [r for r in rows if r.get("route")]
    if not routed:
        return None
    remote = [r for r in routed if str(r["backend"]).startswith("remote:")]
    answered_locally = [
        r
        for r in routed
        if not str(r["backend"]).startswith("remote:")
        and not r["escalated"]
        and not (r.get("extra") or {}).get("route_check")  # a check, not an answer
    ]
    return {
        "requests": len(answered_locally) + len(remote),
        "answered_locally": len(answered_locally),
        "escalated": len(remote),
        "remote_cost_usd": round(sum(float(r.get("cost_usd") or 0) for r in remote), 6),
        "saved_usd": round(sum(float(r.get("saved_usd") or 0) for r in routed), 6),
    }


def tokens_per_day(rows: list[dict[str, Any]]) -> dict[str, dict[str, int]]:
    """{model: {YYYY-MM-DD (local): prompt + completion tokens}} for plotting."""
    out: dict[str, dict[str, int]] = defaultdict(lambda: defaultdict(int))
    for r in rows:
        day = dt.datetime.fromtimestamp(r["ts"]).date().isoformat()
        out[r["model_id"]][day] += int(r["prompt_tokens"] or 0) + int(r["completion_tokens"] or 0)
    return {m: dict(d) for m, d in out.items()}
