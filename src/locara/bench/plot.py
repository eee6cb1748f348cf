"""``locara bench --plot``: prompt and generation tok/s per model/backend, with spread."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def plot_results(results: list[dict[str, Any]], path: Path) -> Path:
    """Two bar panels (pp tok/s, tg tok/s); error bars are one standard deviation."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never a GUI window from a CLI
    import matplotlib.pyplot as plt

    labels = [f"{r['model_id']}\n{r['quant'] or '-'} · {r['backend']}" for r in results]
    fig, axes = plt.subplots(1, 2, figsize=(max(8.0, 2.2 * len(results) + 4), 5), dpi=110)
    try:
        for ax, key, title in (
            (axes[0], "pp", "Prompt processing"),
            (axes[1], "tg", "Generation"),
        ):
            means = [r[f"{key}_tps"] for r in results]
            sds = [r[f"{key}_tps_stddev"] for r in results]
            n = [r["n_prompt"] if key == "pp" else r["n_gen"] for r in results]
            bars = ax.bar(
                range(len(results)), means, yerr=sds, capsize=6, color=f"C{0 if key == 'pp' else 1}"
            )
            for bar, mean in zip(bars, means, strict=True):
                # Inside the bar, so the error bar never covers the number.
                ax.annotate(
                    f"{mean:,.1f}",
                    (bar.get_x() + bar.get_width() / 2, bar.get_height() / 2),
                    ha="center",
                    va="center",
                    color="white",
                    fontsize=10,
                    fontweight="bold",
                )
            ax.set_xticks(range(len(results)), labels, fontsize=8)
            ax.set_ylabel("tokens per second")
            sizes = sorted(set(n))
            ax.set_title(f"{title} ({key}{'/'.join(map(str, sizes))})")
            ax.grid(axis="y", alpha=0.3)
            ax.margins(y=0.15)
            ax.set_ylim(bottom=0)  # a rate is never negative, whatever mean - sd says
        reps = sorted({r["repetitions"] for r in results})
        device = results[0]["device"] if results else {}
        fig.suptitle(
            f"locara bench · {device.get('cpu_model') or device.get('arch') or ''} · "
            f"mean ± sd over {'/'.join(map(str, reps))} repetitions",
            fontsize=10,
        )
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
