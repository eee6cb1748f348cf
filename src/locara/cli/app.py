"""``locara app install|uninstall|verify|ls``: apps that pin models by digest."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import click

from locara.cli.common import byte_progress, echo_json, human_size, settings
from locara.errors import IntegrityError


@click.group()
def app() -> None:
    """Install apps whose models are pinned by digest and shared through the store."""


def _confirm() -> Callable[[str], bool] | None:
    # Only a person at a terminal can accept a license; scripts pass --accept-license.
    if not sys.stdin.isatty():
        return None

    def ask(text: str) -> bool:
        click.echo(text, err=True)
        return click.confirm("Continue?", default=False, err=True)

    return ask


@app.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--accept-license", is_flag=True, help="Accept non-permissive model licenses.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def install(path: Path, accept_license: bool, as_json: bool) -> None:
    """Install the app at PATH (its directory or its locara.app.json)."""
    from locara.apps.install import install_app

    confirm = _confirm()
    with byte_progress(f"install {path.name}") as progress:
        result = install_app(
            settings(),
            path,
            accept_license,
            confirm,
            progress,
        )
    if as_json:
        echo_json(
            {
                "id": result.id,
                "directory": str(result.directory),
                "link_mode": result.link_mode,
                "models": result.models,
            }
        )
        return
    for w in result.warnings:
        click.echo(f"accepted: {w.splitlines()[0]}", err=True)
    click.echo(f"installed {result.id} -> {result.directory}")
    for m in result.models:
        click.echo(f"  {m['id']}  sha256:{m['sha256'][:12]}  {m['path']}")
    if result.link_mode == "copy":
        click.echo(
            "  note: the store is on another filesystem, so models were COPIED (extra disk); "
            "put LOCARA_HOME's apps/ and models/ on one filesystem to share them",
            err=True,
        )
    elif result.link_mode == "reflink":
        click.echo("  note: models were reflinked (shared copy-on-write), not hardlinked")


@app.command()
@click.argument("app_id")
def uninstall(app_id: str) -> None:
    """Remove an app's model links and references (the store keeps the blobs for GC)."""
    from locara.apps.install import uninstall_app

    rec = uninstall_app(settings(), app_id)
    click.echo(f"uninstalled {rec.id} {rec.version}; unused models go with: locara cache gc")


@app.command()
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--deep", is_flag=True, help="Re-hash stored models.")
@click.option("--accept-license", is_flag=True, help="Accept non-permissive model licenses.")
def verify(path: Path, deep: bool, accept_license: bool) -> None:
    """Check every pin of the app at PATH, and its models' licenses."""
    from locara.apps.install import license_gate, verify_app

    app_m, statuses = verify_app(settings(), path, deep)
    bad = 0
    for st in statuses:
        m = st.model
        if st.problem:
            bad += 1
            state = f"PROBLEM: {st.problem}"
        elif st.verified:
            state = "stored, verified"
        else:
            state = "not stored yet (locara app install fetches it)"
        lic = m.license or "bundled"
        click.echo(f"  {m.model_id}@sha256:{m.sha256[:12]}  [{lic}]  {state}")
    license_gate([s.model for s in statuses], accept_license, _confirm())
    if bad:
        raise IntegrityError(
            f"{bad} model(s) of app {app_m.id} failed verification",
            "stored",
            "corrupted or missing",
            hint=f"reinstall to re-fetch them: locara app install {path}",
        )
    click.echo(f"app {app_m.id} {app_m.version}: {len(statuses)} model(s) ok")


@app.command("ls")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def ls_cmd(as_json: bool) -> None:
    """Installed apps and the models they pin."""
    from locara.store.blobs import BlobStore

    cfg = settings()
    store = BlobStore(cfg)
    apps = store.index.apps() if cfg.db_path.exists() else []
    rows: list[dict[str, Any]] = []
    for a in apps:
        shas = store.index.held_by(f"app:{a.id}")
        size = sum((b.size_bytes if (b := store.index.blob(s)) else 0) for s in shas)
        rows.append(
            {
                "id": a.id,
                "name": a.name,
                "version": a.version,
                "source": a.source,
                "link_mode": a.link_mode,
                "models": shas,
                "size_bytes": size,
            }
        )
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo("no apps installed; install one with: locara app install PATH")
        return
    click.echo(f"{'APP':24} {'VERSION':10} {'MODELS':>6} {'SIZE':>9}  LINKS")
    for r in rows:
        click.echo(
            f"{r['id']:24} {r['version']:10} {len(r['models']):>6} "
            f"{human_size(r['size_bytes']):>9}  {r['link_mode']}"
        )
