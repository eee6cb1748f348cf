"""``locara usage --plot``: tokens per day per model, as a PNG (matplotlib, Agg)."""

from __future__ import annotations

import datetime as dt
from pathlib import Path

from locara.errors import UsageError


def check_png_path(path: Path) -> Path:
    """Refuse a plot path that is not a writable .png before any work is done."""
    if path.suffix.lower() != ".png":
        raise UsageError(f"plot file {path} must end in .png", "pass e.g. --plot usage.png")
    parent = path.expanduser().resolve().parent
    if not parent.is_dir():
        raise UsageError(f"directory {parent} does not exist", "create it, or plot elsewhere")
    return path


def plot_tokens_per_day(data: dict[str, dict[str, int]], path: Path) -> Path:
    """Stacked bars: one bar per day, one colour per model; returns the written path."""
    import matplotlib

    matplotlib.use("Agg")  # no display needed, and never a GUI window from a CLI
    import matplotlib.pyplot as plt

    days = sorted({d for per_day in data.values() for d in per_day})
    fig, ax = plt.subplots(figsize=(10, 5), dpi=110)
    try:
        if not days:
            ax.text(0.5, 0.5, "no usage recorded", ha="center", va="center", fontsize=14)
            ax.set_axis_off()
        else:
            first, last = dt.date.fromisoformat(days[0]), dt.date.fromisoformat(days[-1])
            span = [
                (first + dt.timedelta(days=i)).isoformat() for i in range((last - first).days + 1)
            ]
            xs = list(range(len(span)))
            bottom = [0] * len(span)
            order = sorted(data, key=lambda m: -sum(data[m].values()))
            for model in order:
                heights = [data[model].get(d, 0) for d in span]
                ax.bar(xs, heights, bottom=bottom, label=model, width=0.8)
                bottom = [b + h for b, h in zip(bottom, heights, strict=True)]
            if len(span) < 7:  # a day or two would otherwise be one bar as wide as the plot
                pad = (7 - len(span)) / 2
                ax.set_xlim(-0.5 - pad, len(span) - 0.5 + pad)
            # At most ~15 date labels, however long the period.
            step = max(1, len(span) // 15)
            ax.set_xticks(xs[::step], span[::step], rotation=30, ha="right")
            ax.set_ylabel("tokens (prompt + completion)")
            ax.set_title("Locara usage: tokens per day per model")
            ax.yaxis.set_major_formatter(
                matplotlib.ticker.FuncFormatter(lambda v, _: f"{int(v):,}")
            )
            ax.grid(axis="y", alpha=0.3)
            ax.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, title="model")
        fig.tight_layout()
        fig.savefig(path, format="png")
    finally:
        plt.close(fig)
    return path
