"""``locara lineage MODEL|sha256:HEX``: where an artifact came from, down to its roots."""

from __future__ import annotations

import json

import click

from locara.cli.common import echo_json, settings
from locara.settings import Settings


def _target_digest(cfg: Settings, target: str) -> str:
    from locara.ecology.adapters import resolve_base
    from locara.registry.names import check_sha256

    if target.startswith("sha256:"):
        return check_sha256(target.removeprefix("sha256:"))
    return resolve_base(cfg, target).sha256


def _labels(cfg: Settings) -> dict[str, str]:
    """Digest -> a readable name: stored models and registered adapters."""
    from locara.ecology.adapters import AdapterRegistry
    from locara.store.index import StoreIndex

    names = {r.sha256: r.model_id or "" for r in StoreIndex(cfg.db_path).blobs()}
    names.update({m.sha256: f"adapter {m.id}" for m in AdapterRegistry(cfg).all()})
    return {k: v for k, v in names.items() if v}


@click.command()
@click.argument("target", metavar="MODEL|sha256:HEX")
@click.option("--json", "as_json", is_flag=True, help="Records as JSON (child first).")
@click.option("--dot", is_flag=True, help="A Graphviz digraph (pipe it to: dot -Tsvg).")
def lineage(target: str, as_json: bool, dot: bool) -> None:
    """Print how an artifact was made: parents → operator → child, to the roots.

    \b
    Examples:
      locara lineage pirate-merged
      locara lineage sha256:3f2a… --dot | dot -Tsvg > lineage.svg
    """
    from locara.ecology.lineage import ancestry

    cfg = settings()
    sha = _target_digest(cfg, target)
    records = ancestry(cfg, sha)
    labels = _labels(cfg)
    if as_json:
        echo_json({"sha256": sha, "records": [r.to_json() for r in records]})
        return

    def name(d: str) -> str:
        return f"{labels[d]} ({d[:12]})" if d in labels else d[:12]

    if dot:
        lines = ["digraph lineage {", "  rankdir=BT;"]
        nodes = {sha} | {p for r in records for p in (r.sha256, *r.parents)}
        for d in sorted(nodes):
            lines.append(f'  "{d[:12]}" [label={json.dumps(name(d))}];')
        for r in records:
            for p in r.parents:
                lines.append(f'  "{p[:12]}" -> "{r.sha256[:12]}" [label={json.dumps(r.operator)}];')
        click.echo("\n".join([*lines, "}"]))
        return
    if not records:
        click.echo(f"{name(sha)}: a root (no recorded parents)")
        return
    by_sha = {r.sha256: r for r in records}

    def walk(d: str, depth: int) -> None:
        rec = by_sha.get(d)
        pad = "  " * depth
        if rec is None:
            click.echo(f"{pad}{name(d)}  [root]")
            return
        params = ", ".join(f"{k}={v}" for k, v in sorted(rec.params.items()) if k != "formula")
        click.echo(f"{pad}{name(d)}  <- {rec.operator}" + (f" ({params})" if params else ""))
        for p in rec.parents:
            walk(p, depth + 1)

    walk(sha, 0)
