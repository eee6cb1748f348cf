"""``locara route``: check a RouterPolicy file and explain what it does with a prompt."""

from __future__ import annotations

from pathlib import Path

import click

from locara.cli.common import echo_json, human_size, settings
from locara.cli.device import current_profile
from locara.router.decide import Decision, PolicyRouter
from locara.router.policy import load_policy

_POLICY = click.argument("policy", type=click.Path(dir_okay=False, path_type=Path))


@click.group()
def route() -> None:
    """Router policies: which local model answers, and when a request escalates.

    \b
    Examples:
      locara route check cascade.toml
      locara route explain cascade.toml "What is 17 * 23?"
      locara route explain cascade.toml "Summarise this" --device laptop.json --json
    """


@route.command()
@_POLICY
def check(policy: Path) -> None:
    """Validate POLICY (fields, references, cycles, models, API-key variables)."""
    p = load_policy(policy, settings())
    click.echo(
        f"{policy}: policy {p.name} is valid ({len(p.candidates)} candidates, "
        f"{len(p.routes)} routes, {len(p.targets)} targets, privacy {p.filters.privacy})"
    )


def render(d: Decision) -> list[str]:
    lines = [f"policy {d.policy}: route {d.route_name} ({d.match.how}: {d.match.detail}"
             + (f", similarity {d.match.similarity:.3f})" if d.match.similarity is not None else ")"),
             f"  mode       {d.mode}"]  # fmt: skip
    if d.chosen is not None:
        lines.append(f"  answer     {d.chosen.candidate.key} ({d.chosen.candidate.model})")
    for s in d.ranked:
        mark = "✓" if s.feasible else "✗"
        what = (
            f"score {s.score:+.3f} = " + ", ".join(f"{k} {v:.2f}" for k, v in s.terms.items())
            if s.feasible
            else "rejected"
        )
        mem = f", {human_size(s.memory_bytes)}" if s.memory_bytes else ""
        note = f" ({'; '.join(s.reasons)})" if s.reasons else ""
        lines.append(f"  {mark} {s.candidate.key}: {what}{mem}{note}")
    for i, t in enumerate(d.targets):
        role = "escalate to" if i == 0 else "fallback   "
        consent = ", needs consent (X-Locara-Consent: remote)" if t.require_consent else ""
        lines.append(
            f"  {role} {t.name}: {t.model} at {t.base_url}, timeout {t.timeout_s:g} s{consent}"
        )
    lines += [f"  why        {r}" for r in d.reasons]
    return lines


@route.command()
@_POLICY
@click.argument("prompt")
@click.option(
    "--device",
    "device_file",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Decide for a saved or synthetic device profile (locara device --json).",
)
@click.option("--json", "as_json", is_flag=True, help="Print the decision as JSON.")
def explain(policy: Path, prompt: str, device_file: Path | None, as_json: bool) -> None:
    """Print the decision POLICY makes for PROMPT and why (nothing is generated)."""
    cfg = settings()
    router = PolicyRouter(load_policy(policy, cfg), cfg, current_profile(device_file))
    try:
        decision = router.decide(prompt)
    finally:
        router.close()
    if as_json:
        echo_json(decision.to_dict())
    else:
        click.echo("\n".join(render(decision)))
