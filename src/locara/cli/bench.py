"""``locara bench MODEL [MODEL…]``: measure stored models on this machine and save the results."""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings


@contextmanager
def _progress() -> Iterator[Callable[[str, int, int], None]]:
    """A bar on a terminal; plain lines on stderr otherwise (logs, CI, tests)."""
    if not sys.stderr.isatty():

        def line(what: str, done: int, total: int) -> None:
            click.echo(f"bench: {what} ({done}/{total})", err=True)

        yield line
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeElapsedColumn

    bar = Progress(
        "[progress.description]{task.description}",
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        console=Console(stderr=True),
        transient=True,
    )
    with bar:
        task = bar.add_task("bench", total=None)

        def update(what: str, done: int, total: int) -> None:
            bar.update(task, description=what, completed=done, total=total)

        yield update


@click.command()
@click.argument("models", nargs=-1, metavar="[MODEL…]")
@click.option(
    "-m",
    "--model",
    "model_opts",
    multiple=True,
    metavar="MODEL",
    help="A model to measure; repeat it to compare several (same as MODEL arguments).",
)
@click.option(
    "--backend",
    default="llama_cpp",
    show_default=True,
    help="Backend to measure: llama_cpp or mlx.",
)
@click.option("--n-prompt", type=int, default=512, show_default=True, help="Prompt tokens (pp).")
@click.option("--n-gen", type=int, default=128, show_default=True, help="Generated tokens (tg).")
@click.option("--repetitions", "-r", type=int, default=3, show_default=True, help="Runs per model.")
@click.option("--threads", type=int, default=None, help="CPU threads (default: the plan's).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw tok/s per model/backend to FILE.png.",
)
def bench(
    models: tuple[str, ...],
    model_opts: tuple[str, ...],
    backend: str,
    n_prompt: int,
    n_gen: int,
    repetitions: int,
    threads: int | None,
    as_json: bool,
    plot: Path | None,
) -> None:
    """Measure prompt and generation speed, time to first token, load time and peak memory.

    Each figure is the mean and standard deviation over --repetitions runs; the device,
    backend, build and parameters are recorded with llama-bench's field names. Results
    are appended to $LOCARA_HOME/bench/results.jsonl, where the planner reads them.

    \b
    Examples:
      locara bench smollm2-135m-instruct
      locara bench smollm2-135m-instruct:Q4_1 --n-prompt 128 --n-gen 32 -r 5 --json
      locara bench smollm2-135m-instruct --plot bench.png
      locara benchmark --model smollm2-135m-instruct:Q4_1 --model smollm2-135m-instruct:Q8_0
    """
    models = (*models, *model_opts)
    if not models:
        raise click.UsageError("name a model to measure: locara bench MODEL (or --model MODEL)")
    from locara.bench.results import append_result
    from locara.bench.runner import BenchParams, device_info, prepare, require_backend, run_bench

    cfg = settings()
    params = BenchParams(
        n_prompt=n_prompt,
        n_gen=n_gen,
        repetitions=repetitions,
        backend=backend,
        n_threads=threads,
    ).validate()
    # An unknown or uninstalled backend is reported before any model is looked at.
    params = replace(params, backend=require_backend(params.backend))
    if plot is not None:
        from locara.ledger.plot import check_png_path

        check_png_path(plot)
    # Check every model before measuring any: a typo in the third should not cost
    # the minutes spent on the first two.
    targets = [prepare(cfg, m, params) for m in models]
    device = device_info(cfg)
    results: list[dict[str, Any]] = []
    with _progress() as progress:
        for target in targets:
            result = run_bench(cfg, target, params, progress, device)
            append_result(cfg, result)
            results.append(result)
    if plot is not None:
        from locara.bench.plot import plot_results

        plot_results(results, plot)
    if as_json:
        echo_json(results)
        return
    _table(results, params.n_prompt, params.n_gen)
    click.echo(
        f"\ndevice: {device.get('cpu_model') or device.get('arch')}, "
        f"{human_size(device.get('ram_total_bytes'))} RAM; "
        f"mean ± sd over {params.repetitions} run(s); saved to {cfg.bench_results_path}"
    )
    if plot is not None:
        click.echo(f"plot written to {plot}")


def _table(results: list[dict[str, Any]], n_prompt: int, n_gen: int) -> None:
    pp_h, tg_h = f"pp{n_prompt} tok/s", f"tg{n_gen} tok/s"
    click.echo(
        f"{'MODEL':28} {'BACKEND':9} {'QUANT':6} {pp_h:>17} {tg_h:>15} "
        f"{'TTFT':>9} {'LOAD':>8} {'PEAK RSS':>9}"
    )
    for r in results:
        pp = f"{r['pp_tps']:.1f} ± {r['pp_tps_stddev']:.1f}"
        tg = f"{r['tg_tps']:.1f} ± {r['tg_tps_stddev']:.1f}"
        click.echo(
            f"{r['model_id']:28} {r['backend']:9} {r['quant'] or '-':6} {pp:>17} {tg:>15} "
            f"{r['ttft_s']:>7.3f} s {r['load_s']:>6.2f} s {human_size(r['peak_rss_bytes']):>9}"
        )
