"""``locara eval`` and ``locara scorecard``: fitness vectors, bound to content hashes."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import echo_json, human_size, settings


@click.command(name="eval")
@click.argument("candidate", metavar="MODEL[+ADAPTER[:SCALE]…]")
@click.option("--suite", "suite_spec", default="basic", show_default=True,
              help="A JSONL task suite, or a shipped one (basic).")  # fmt: skip
@click.option("--json", "as_json", is_flag=True, help="Print the FitnessVector as JSON.")
def eval_(candidate: str, suite_spec: str, as_json: bool) -> None:
    """Score a model (plus adapters) on a task suite; record its FitnessVector.

    \b
    Examples:
      locara eval smollm2-135m-instruct
      locara eval smollm2-135m-instruct+pirate:0.5 --suite my-tasks.jsonl
    """
    from locara.ecology.evaluate import evaluate
    from locara.ecology.fitness import ItemResult
    from locara.ecology.suite import load_suite

    cfg = settings()
    suite = load_suite(suite_spec)  # a bad line is refused before any model loads

    def tick(r: ItemResult) -> None:
        if not as_json:
            click.echo(f"  {'pass' if r.passed else 'FAIL'}  {r.id}", err=True)

    vec = evaluate(cfg, candidate, suite, tick)
    if as_json:
        echo_json(vec.to_json())
        return
    u, lat = vec.utility, vec.latency
    lo, hi = u["ci95"]
    click.echo(
        f"{vec.candidate} on {vec.suite}: acc {u['acc']:.2f} ({u['passed']}/{u['n']}, 95% CI "
        f"{lo:.2f}–{hi:.2f}) · first token {lat['ttft_s']:.3f} s · {lat['avg_ts'] or 0:.1f} tok/s"
        f" · peak RSS {human_size(vec.memory['peak_rss_bytes'])}"
    )
    click.echo(f"recorded run {vec.run_id}; compare with: locara scorecard", err=True)


@click.command()
@click.argument("candidates", nargs=-1)
@click.option("--suite", "suite_spec", default=None, help="Only runs on this suite.")
@click.option("--json", "as_json", is_flag=True, help="The FitnessVectors as JSON.")
@click.option("--plot", type=click.Path(path_type=Path), default=None,
              help="Also write a PNG: accuracy (with its CI) against tok/s.")  # fmt: skip
def scorecard(
    candidates: tuple[str, ...], suite_spec: str | None, as_json: bool, plot: Path | None
) -> None:
    """Compare evaluated candidates side by side (their newest runs)."""
    from locara.ecology.fitness import FitnessDB
    from locara.ecology.suite import load_suite

    cfg = settings()
    suite_sha = load_suite(suite_spec).sha256 if suite_spec else None
    vecs = FitnessDB(cfg).latest(suite_sha)
    if candidates:
        vecs = [v for v in vecs if v.candidate in candidates or v.model_id in candidates]
    if as_json:
        echo_json([v.to_json() for v in vecs])
    elif not vecs:
        click.echo("no evaluations yet (run one with: locara eval MODEL)")
    else:
        click.echo(
            f"{'CANDIDATE':<40} {'SUITE':<10} {'ACC':>5} {'95% CI':>11} {'TTFT':>7} "
            f"{'TOK/S':>6} {'PEAK RSS':>9} {'BASE':<12}"
        )
        for v in vecs:
            lo, hi = v.utility["ci95"]
            click.echo(
                f"{v.candidate:<40} {v.suite:<10} {v.acc:>5.2f} {lo:>5.2f}–{hi:<5.2f} "
                f"{v.latency['ttft_s']:>6.3f}s {v.latency['avg_ts'] or 0:>6.1f} "
                f"{human_size(v.memory['peak_rss_bytes']):>9} {v.base_sha256[:12]:<12}"
            )
    if plot is not None:
        from locara.ecology.scorecard_plot import write_plot

        write_plot(vecs, plot)
        click.echo(f"wrote {plot}", err=True)
