"""``locara setup``: check this machine, say what is missing, and (``--yes``) build it."""

from __future__ import annotations

import os
from pathlib import Path

import click

from locara.cli.common import settings


@click.command()
@click.option("--yes", is_flag=True, help="Run the steps (builds llama.cpp when it is missing).")
@click.option(
    "--update", is_flag=True, help="Rebuild even if installed (after Locara's pins changed)."
)
@click.pass_context
def setup(ctx: click.Context, yes: bool, update: bool) -> None:
    """Check and prepare this machine: platform, GPU, the llama.cpp binaries.

    Finds llama-cpp-python and llama.cpp's llama-server (the generation worker) and
    checks that both come from the pinned llama.cpp. What is missing is built from
    source by scripts/install.sh with this platform's flags; without --yes, setup only
    says what it would run. It ends with what `locara device` and `locara recommend` say.

    \b
    Examples:
      locara setup
      locara setup --yes
      locara setup --update --yes
    """
    from locara.backends.setup import plan_setup, run_setup
    from locara.cli.device import describe
    from locara.cli.recommend import recommend
    from locara.device.profile import PROFILE_ENV, current_device
    from locara.errors import BackendUnavailableError, UsageError

    cfg = settings()
    profile = current_device(cfg)
    plan = plan_setup(profile, update)
    click.echo(f"{'platform':17}{plan.platform}")
    click.echo(f"{'accelerator':17}{plan.accelerator}")
    for c in plan.components:
        click.echo(f"{c.name:17}{'ok' if c.ready else 'MISSING'}: {c.detail}")
    if plan.steps:
        click.echo("\nsetup will:" if yes else "\nsetup would:")
        for step in plan.steps:
            click.echo(f"  - {step}")
        if not yes:
            again = "locara setup --update --yes" if update else "locara setup --yes"
            click.echo(f"\nnothing was changed; to do it, run: {again}")
            return
        if os.environ.get(PROFILE_ENV, "").strip():
            raise UsageError(
                f"{PROFILE_ENV} describes another machine; setup builds for this one",
                f"unset {PROFILE_ENV}, then run: locara setup --yes",
            )
        run_setup(plan)
        after = plan_setup(profile, update=False)
        if after.steps:  # what was built must now be found and answer
            broken = "; ".join(f"{c.name}: {c.detail}" for c in after.components if not c.ready)
            raise BackendUnavailableError(
                f"the build finished but {broken}", "run ./scripts/install.sh and read its log"
            )
    cfg.home.mkdir(parents=True, exist_ok=True)
    click.echo(f"\nready: models are stored under {cfg.home}\n")
    for line in describe(profile):
        click.echo(line)
    click.echo()
    saved = os.environ.get(PROFILE_ENV, "").strip()
    ctx.invoke(recommend, profile_file=Path(saved).expanduser() if saved else None)
