"""``locara usage``: what ran, how much, how fast, and what it would have cost elsewhere."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import echo_json, settings
from locara.cli.models import ago
from locara.ledger.db import UsageDB
from locara.ledger.prices import load_prices
from locara.ledger.report import parse_since, summarize, tokens_per_day


def _iso_ago(text: str | None) -> str:
    import datetime as dt

    return ago(dt.datetime.fromisoformat(text).timestamp()) if text else "-"


@click.command()
@click.option("--since", default=None, help="Only requests since DATE (YYYY-MM-DD, 7d, today…).")
@click.option("--model", "model", default=None, help="Only this model id.")
@click.option("--app", default=None, help='Only this app ("cli" for the command line).')
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
@click.option(
    "--plot",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Also draw tokens per day per model to FILE.png.",
)
@click.option("--repair", is_flag=True, help="Rebuild a damaged usage.db, keeping readable rows.")
def usage(
    since: str | None,
    model: str | None,
    app: str | None,
    as_json: bool,
    plot: Path | None,
    repair: bool,
) -> None:
    """Per-model usage from the ledger, totals, and the cloud cost it saved.

    \b
    Examples:
      locara usage
      locara usage --since 2026-11-01 --model smollm2-135m-instruct
      locara usage --app notes --json
      locara usage --plot usage.png
    """
    cfg = settings()
    since_ts = parse_since(since) if since is not None else None
    if plot is not None:
        from locara.ledger.plot import check_png_path

        check_png_path(plot)
    db = UsageDB(cfg.usage_db_path)
    if repair:
        aside, salvaged, drained = db.repair()
        if aside is None:
            click.echo(f"{db.path} is healthy; added {drained} queued request(s)")
        else:
            click.echo(
                f"moved the damaged database to {aside}; rebuilt {db.path} with "
                f"{salvaged} salvaged and {drained} queued request(s)"
            )
        return
    prices = load_prices(cfg)
    rows = db.rows(since=since_ts, model=model, app=app)
    report = summarize(rows, prices)
    report["filters"] = {"since": since, "model": model, "app": app}
    report["database"] = str(db.path)
    if plot is not None:
        from locara.ledger.plot import plot_tokens_per_day

        plot_tokens_per_day(tokens_per_day(rows), plot)
        report["plot"] = str(plot)
    if as_json:
        echo_json(report)
        return
    if not rows:
        scope = " matching these filters" if (since or model or app) else ""
        click.echo(f'no requests recorded{scope}; try: locara run "Hello"')
    else:
        _table(report)
    if plot is not None:
        click.echo(f"plot written to {plot}", err=True)


def _money(amount: float) -> str:
    # Cents hide the small sums a light user saves; show two significant digits instead.
    if amount == 0 or amount >= 0.01:
        return f"{amount:,.2f}"
    return f"{amount:.2g}" if amount >= 1e-4 else f"{amount:.6f}".rstrip("0")


def _table(report: dict[str, object]) -> None:
    models = report["models"]
    totals = report["totals"]
    saved = report["cloud_cost_saved"]
    assert isinstance(models, list) and isinstance(totals, dict) and isinstance(saved, dict)
    click.echo(
        f"{'MODEL':32} {'REQUESTS':>8} {'TOKENS_IN':>10} {'TOKENS_OUT':>10} "
        f"{'AVG_TOK/S':>9}  LAST_USED"
    )
    for m in models:
        tps = f"{m['avg_tps']:.1f}" if m["avg_tps"] is not None else "-"
        click.echo(
            f"{m['model']:32} {m['requests']:>8,} {m['prompt_tokens']:>10,} "
            f"{m['completion_tokens']:>10,} {tps:>9}  {_iso_ago(m['last_used'])}"
        )
    media = [m for m in models if m["audio_s"] or m["images"]]
    if media:  # speech and OCR are counted in what they read, not in tokens
        click.echo(f"\n{'MODEL':32} {'AUDIO_SECONDS':>13} {'IMAGES':>8}")
        for m in media:
            click.echo(f"{m['model']:32} {m['audio_s']:>13,.1f} {m['images']:>8,}")
    failed = f", {totals['errors']} failed" if totals["errors"] else ""
    click.echo(
        f"\nTotal: {totals['requests']:,} requests{failed}, {totals['prompt_tokens']:,} input "
        f"tokens, {totals['completion_tokens']:,} output tokens"
    )
    vs = saved["vs"]
    if vs:
        symbol = "$" if saved["currency"] == "USD" else f"{saved['currency']} "
        parts = ", ".join(f"{symbol}{_money(cost)} (vs {name})" for name, cost in vs.items())
        click.echo(f"Estimated cloud cost saved: {parts}")
    routing = report.get("routing")
    if isinstance(routing, dict):  # requests a router policy answered (serve --policy)
        click.echo(
            f"Routed by policy: {routing['requests']:,} requests, {routing['answered_locally']:,} "
            f"answered locally, {routing['escalated']:,} escalated (remote cost "
            f"${_money(routing['remote_cost_usd'])}, saved ${_money(routing['saved_usd'])} "
            "at the targets' prices)"
        )
