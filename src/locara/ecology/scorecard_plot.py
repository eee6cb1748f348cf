"""The scorecard as a picture: accuracy (with its 95% interval) against generation speed."""

from __future__ import annotations

from pathlib import Path

from locara.ecology.fitness import FitnessVector
from locara.errors import UsageError


def write_plot(vecs: list[FitnessVector], out: Path) -> None:
    """A PNG at ``out``: one point per candidate, the CI as an error bar."""
    if not vecs:
        raise UsageError("nothing to plot: no evaluations", "run one with: locara eval MODEL")
    import matplotlib

    matplotlib.use("Agg")  # no display: write files only
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    for v in vecs:
        lo, hi = v.utility["ci95"]
        x = v.latency["avg_ts"] or 0.0
        err = [[max(0.0, v.acc - lo)], [max(0.0, hi - v.acc)]]  # rounding may cross 0
        ax.errorbar([x], [v.acc], yerr=err, fmt="o", capsize=4)
        ax.annotate(v.candidate, (x, v.acc), textcoords="offset points", xytext=(6, 4))
    ax.set_xlabel("generation speed (tok/s)")
    ax.set_ylabel("accuracy (95% Wilson interval)")
    ax.set_ylim(-0.05, 1.05)
    ax.set_title("Locara scorecard: " + ", ".join(sorted({v.suite for v in vecs})))
    fig.tight_layout()
    fig.savefig(out, dpi=100)
    plt.close(fig)
