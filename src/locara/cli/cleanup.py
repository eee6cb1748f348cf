"""``locara cleanup``: what is stored, what is stale, and what removing it would free.

Status per stored blob: ``pinned`` (an app, or another holder, references it in the
store index; never removed here), ``stale`` (not used for more than the threshold),
or ``active``. Last use is the later of the store's own last-used time and the usage
ledger's latest request for that blob; a blob never used counts from when it was
stored. Who keeps a blob and removing it are the store's business
(``locara.store.gc.users_of`` / ``remove_blob``): references are re-read right before
each removal, and a blob a running process holds (an install, a loaded model) or an
assembled artifact links is kept.
"""

from __future__ import annotations

import time
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.cli.models import ago
from locara.errors import PinnedModelError, StoreError, UsageError
from locara.ledger.db import UsageDB
from locara.ledger.report import iso
from locara.registry.refs import parse_ref
from locara.settings import Settings
from locara.store.blobs import BlobStore
from locara.store.gc import remove_blob, users_of

APP_PREFIX = "app:"
DAY = 86400.0


def inventory(
    cfg: Settings, threshold_days: float, now: float | None = None
) -> list[dict[str, Any]]:
    """Every stored blob with size, last use, holders and status."""
    now = time.time() if now is None else now
    store = BlobStore(cfg)
    if not cfg.db_path.exists():
        return []
    ledger_last = UsageDB(cfg.usage_db_path).last_used_by_sha()
    out: list[dict[str, Any]] = []
    for rec in store.index.blobs():
        users = users_of(store, rec.sha256)
        holders = list(users.holders)
        apps = list(users.apps)
        used = max(
            (t for t in (rec.last_used, ledger_last.get(rec.sha256)) if t is not None),
            default=None,
        )
        basis = used if used is not None else rec.created_at
        idle_days = max(0.0, (now - basis) / DAY)
        if holders:
            status = "pinned"
        elif users.in_trees:
            status = "part"  # a file of an assembled artifact: goes with it
        elif idle_days > threshold_days:
            status = "stale"
        else:
            status = "active"
        out.append(
            {
                "model": rec.model_id,
                "quant": rec.quant,
                "format": rec.format,
                "sha256": rec.sha256,
                "size_bytes": rec.size_bytes,
                "stored_at": iso(rec.created_at),
                "last_used": iso(used),
                "idle_days": round(idle_days, 2),
                "status": status,
                "pinned_by": apps,
                "holders": holders,
                "in_use": users.in_use,
                "part_of": list(users.in_trees),
                "reclaimable": status == "stale" and not users.in_use,
                "_last": used,
            }
        )
    out.sort(key=lambda r: (-(r["_last"] or 0.0), r["model"] or ""))
    return out


def _select(rows: list[dict[str, Any]], reference: str) -> list[dict[str, Any]]:
    ref = parse_ref(reference)
    if ref.sha256:
        return [r for r in rows if r["sha256"] == ref.sha256]
    picked = [r for r in rows if r["model"] == ref.id]
    if ref.quant:
        picked = [r for r in picked if (r["quant"] or "").lower() == ref.quant.lower()]
    return picked


def _holder_text(row: dict[str, Any]) -> str:
    apps = row["pinned_by"]
    others = [h for h in row["holders"] if not h.startswith(APP_PREFIX)]
    parts = []
    if apps:
        parts.append(("app " if len(apps) == 1 else "apps ") + ", ".join(apps))
    if others:
        parts.append(", ".join(others))
    return " and ".join(parts)


def _remove(store: BlobStore, row: dict[str, Any]) -> bool:
    """Remove one blob through the store's rules; False if it became pinned or busy."""
    try:
        remove_blob(store, row["sha256"])
    except (PinnedModelError, StoreError):
        # Pinned or put to use between the listing and now: the store said no.
        return False
    return True


@click.command()
@click.option(
    "--threshold",
    "threshold",
    type=float,
    default=30.0,
    show_default=True,
    help="Days without use after which a model is stale.",
)
@click.option("--remove-stale", is_flag=True, help="Remove every stale model no app pins.")
@click.option(
    "--remove",
    "remove",
    multiple=True,
    metavar="MODEL",
    help="Remove MODEL (id, id:QUANT or id@sha256:...) unless an app pins it.",
)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def cleanup(threshold: float, remove_stale: bool, remove: tuple[str, ...], as_json: bool) -> None:
    """Stored models with size, last use and status, and what removing the stale ones frees.

    \b
    Examples:
      locara cleanup
      locara cleanup --threshold 60
      locara cleanup --remove-stale
      locara cleanup --remove smollm2-135m-instruct:Q8_0
    """
    if not threshold >= 0 or threshold == float("inf"):
        raise UsageError(
            f"invalid --threshold {threshold}: must be a number of days >= 0",
            "pass e.g. --threshold 30",
        )
    cfg = settings()
    store = BlobStore(cfg)
    rows = inventory(cfg, threshold)

    targets: list[dict[str, Any]] = []
    for reference in remove:
        picked = _select(rows, reference)
        if not picked:
            raise UsageError(
                f"{reference} is not stored, so there is nothing to remove",
                "see what is stored with: locara cleanup",
            )
        held = [r for r in picked if r["status"] == "pinned"]
        if held:
            apps = sorted({a for r in held for a in r["pinned_by"]})
            hint = (
                "uninstall the app first: "
                + " ; ".join(f"locara app uninstall {a}" for a in apps)
                + ", then run cleanup again"
                if apps
                else "release the pin first, then run cleanup again"
            )
            raise PinnedModelError(
                f"{reference} is pinned by {_holder_text(held[0])}; nothing was removed",
                sorted({h for r in held for h in r["holders"]}),
                hint,
            )
        parts = [r for r in picked if r["status"] == "part"]
        if parts:
            raise UsageError(
                f"{reference} is a file of an assembled artifact "
                f"({', '.join(p[:12] for p in parts[0]['part_of'])}); nothing was removed",
                "remove the artifact it belongs to; its files go with it",
            )
        busy = [r for r in picked if r["in_use"]]
        if busy:
            raise StoreError(
                f"{reference} is in use by a running process (a loaded model or an install);"
                " nothing was removed",
                "stop it (locara stop, or end the install), then run cleanup again",
            )
        targets += [r for r in picked if r not in targets]
    if remove_stale:
        targets += [r for r in rows if r["status"] == "stale" and r not in targets]

    removed: list[dict[str, Any]] = []
    skipped: list[dict[str, Any]] = []
    for r in targets:
        (removed if _remove(store, r) else skipped).append(r)
    if removed or skipped:
        gone = {r["sha256"] for r in removed}
        rows = [r for r in rows if r["sha256"] not in gone]

    total = sum(r["size_bytes"] for r in rows)
    reclaimable = sum(r["size_bytes"] for r in rows if r["reclaimable"])
    freed = sum(r["size_bytes"] for r in removed)

    def public(r: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in r.items() if not k.startswith("_")}

    if as_json:
        echo_json(
            {
                "threshold_days": threshold,
                "models": [public(r) for r in rows],
                "total_bytes": total,
                "reclaimable_bytes": reclaimable,
                "removed": [public(r) for r in removed],
                "skipped": [public(r) for r in skipped],
                "freed_bytes": freed,
            }
        )
        return
    for r in removed:
        click.echo(f"removed {r['model']} {r['quant'] or ''} ({human_size(r['size_bytes'])})")
    for r in skipped:
        click.echo(
            f"kept {r['model']} {r['quant'] or ''}: it became pinned or in use while cleaning",
            err=True,
        )
    if removed:
        click.echo(f"freed {human_size(freed)}\n")
    if not rows:
        click.echo("no models stored")
        return
    click.echo(f"{'MODEL':40} {'SIZE':>9}  {'LAST USED':14} STATUS")
    for r in rows:
        name = f"{r['model'] or '?'}:{r['quant']}" if r["quant"] else (r["model"] or "?")
        last = ago(r["_last"]) if r["_last"] else "never"
        status = r["status"]
        if status == "pinned":
            status = f"pinned by {_holder_text(r)}"
        elif status == "stale":
            status = f"stale (>{threshold:g}d)"
        elif status == "part":
            status = "part of " + ", ".join(p[:12] for p in r["part_of"])
        if r["in_use"]:
            status += ", in use"
        click.echo(f"{name:40} {human_size(r['size_bytes']):>9}  {last:14} {status}")
    stale = [r for r in rows if r["reclaimable"]]
    click.echo(f"\nTotal: {human_size(total)} ({human_size(reclaimable)} stale)")
    if stale:
        click.echo(
            f"Recommendation: remove {len(stale)} stale model(s) to free "
            f"{human_size(reclaimable)}: locara cleanup --remove-stale"
        )
