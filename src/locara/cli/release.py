"""``locara release MODEL[+ADAPTER…] --niche "…"``: a release packet from the evidence."""

from __future__ import annotations

import re
from pathlib import Path

import click

from locara.cli.common import settings


@click.command()
@click.argument("candidate", metavar="MODEL[+ADAPTER[:SCALE]…]")
@click.option("--niche", required=True, help="What it is for, in a sentence.")
@click.option("-o", "--output", type=click.Path(path_type=Path), default=None,
              help="The packet directory (default: release-<candidate>).")  # fmt: skip
def release(candidate: str, niche: str, output: Path | None) -> None:
    """Write a release packet: RELEASE.md, a CycloneDX 1.6 ML-BOM, SPDX 3.0.1, FitnessVectors.

    \b
    Example:
      locara eval smollm2-135m-instruct && locara eval smollm2-135m-instruct+pirate
      locara release smollm2-135m-instruct+pirate --niche "pirate-speak replies"
    """
    from locara.ecology.release import BOM, FITNESS, NOTE, SPDX, write_release

    out = output or Path("release-" + re.sub(r"[^A-Za-z0-9._-]+", "_", candidate))
    write_release(settings(), candidate, niche, out)
    click.echo(f"wrote {out}/: {NOTE}, {BOM} (CycloneDX 1.6, validated), {SPDX} (SPDX 3.0.1), "
               f"{FITNESS}")  # fmt: skip
