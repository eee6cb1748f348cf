"""``locara validate MODEL``: template, stop tokens, smoke prompt, suite; then stamp it."""

from __future__ import annotations

import click

from locara.cli.common import echo_json, settings
from locara.errors import ManifestError


@click.command()
@click.argument("model")
@click.option("--suite", "suite_spec", default=None,
              help="Also run this task suite (a JSONL file, or: basic).")  # fmt: skip
@click.option("--by", default=None, help="Who validates (default: user@host).")
@click.option("--json", "as_json", is_flag=True, help="The checks as JSON.")
def validate(model: str, suite_spec: str | None, by: str | None, as_json: bool) -> None:
    """Check that MODEL works: chat template, stop tokens, a smoke prompt, a suite.

    A user manifest (one you added, not a curated one) that passes gets validated_at
    and validated_by.
    """
    from locara.ecology.suite import load_suite
    from locara.ecology.validate import validate_model

    suite = load_suite(suite_spec) if suite_spec else None
    v = validate_model(settings(), model, suite, by)
    if as_json:
        echo_json({
            "model": v.model_id, "sha256": v.sha256, "ok": v.ok,
            "checks": [{"name": c.name, "ok": c.ok, "detail": c.detail} for c in v.checks],
            "recorded_in": str(v.recorded_in) if v.recorded_in else None,
        })  # fmt: skip
    else:
        for c in v.checks:
            click.echo(f"  {'ok  ' if c.ok else 'FAIL'}  {c.name}: {c.detail}")
    if not v.ok:
        failed = next(c for c in v.checks if not c.ok)
        raise ManifestError(
            f"{v.model_id} failed validation: {failed.name} {failed.detail}",
            f"fix config.chat_template / config.stop_tokens in its manifest, then run: "
            f"locara validate {model}",
        )
    where = f"; recorded in {v.recorded_in}" if v.recorded_in else " (curated: manifest unchanged)"
    click.echo(f"{v.model_id} sha256:{v.sha256[:12]} is valid{where}", err=True)
