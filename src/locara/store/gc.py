"""Who uses a blob, removing one safely, and garbage collection.

References come from Locara's database (apps and pins), use from in-use leases, and
age from Locara's own last-used records; never from ``st_nlink`` or atime. A blob is
collected only when nothing references it, nothing is using it, and it has not been
used for the threshold (default 30 days).
"""

from __future__ import annotations

import contextlib
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path

from locara.errors import PinnedModelError, StoreError
from locara.procs import pid_alive
from locara.registry.refs import ModelRef
from locara.store.blobs import BlobStore

DEFAULT_GC_DAYS = 30.0


@dataclass(frozen=True)
class BlobUsers:
    """Everything that keeps a blob: its references, the apps among them, live use."""

    sha256: str
    holders: tuple[str, ...]
    apps: tuple[str, ...]
    in_use: bool
    in_trees: tuple[str, ...] = ()  # assembled artifacts that link this blob

    @property
    def pinned(self) -> bool:
        return bool(self.holders)


def _tree_members(store: BlobStore) -> dict[str, list[str]]:
    """component sha -> tree shas that contain it."""
    members: dict[str, list[str]] = {}
    if not store.root.is_dir():
        return members
    for d in store.root.iterdir():
        if d.name.startswith(".") or d.is_symlink():
            continue
        meta = store.read_meta(d.name) if len(d.name) == 64 else None
        if meta and meta.get("kind") == "tree":
            for f in meta.get("files", []):
                members.setdefault(str(f.get("sha256")), []).append(d.name)
    return members


def users_of(store: BlobStore, sha256: str) -> BlobUsers:
    """Who keeps ``sha256``: for ``cleanup``, ``rm`` and ``gc`` alike."""
    holders = tuple(store.index.refs(sha256))
    apps = tuple(store.index.pinned_by_apps(sha256))
    trees = tuple(_tree_members(store).get(sha256, []))
    return BlobUsers(sha256, holders, apps, store.in_use(sha256), trees)


def stored_shas(store: BlobStore, ref: ModelRef) -> list[str]:
    """The stored blobs ``ref`` names: the pinned digest, the named quant, else every quant.

    What ``locara rm`` and the server's ``/api/delete`` remove; a planted symlink where a
    blob belongs counts, so removing it clears it.
    """
    if ref.sha256:
        shas = [ref.sha256]
    else:
        shas = [
            rec.sha256
            for rec in store.index.blobs()
            if rec.model_id == ref.id
            and (ref.quant is None or (rec.quant or "").lower() == ref.quant.lower())
        ]
    return [s for s in shas if store.find(s) is not None or store.planted_symlink(s)]


def remove_blob(store: BlobStore, sha256: str, force_unpinned: bool = False) -> list[str]:
    """Remove a blob (and, for a tree, its files no other tree uses); return removed shas.

    Refuses a blob an app pins or a process is using, naming the app or the fix.
    """
    users = users_of(store, sha256)
    if users.apps:
        raise PinnedModelError(
            f"{sha256[:12]} is pinned by app {', '.join(users.apps)}",
            list(users.apps),
            f"uninstall it first: locara app uninstall {users.apps[0]}",
        )
    if users.holders and not force_unpinned:
        raise StoreError(
            f"{sha256[:12]} is referenced by {', '.join(users.holders)}", "remove the reference"
        )
    if users.in_use:
        raise StoreError(
            f"{sha256[:12]} is in use by a running Locara process",
            "stop it first (locara stop, or end the run), then retry",
        )
    meta = store.read_meta(sha256) or {}
    removed = [sha256]
    store.remove(sha256)
    if meta.get("kind") == "tree":
        members = _tree_members(store)
        for f in meta.get("files", []):
            part = str(f.get("sha256"))
            if members.get(part) or store.index.refs(part) or store.in_use(part):
                continue
            store.remove(part)
            removed.append(part)
    return removed


@dataclass
class GcReport:
    removed: list[tuple[str, int]] = field(default_factory=list)  # (sha, bytes)
    kept: list[tuple[str, str]] = field(default_factory=list)  # (sha, why)
    temp_removed: list[Path] = field(default_factory=list)

    @property
    def freed_bytes(self) -> int:
        return sum(n for _, n in self.removed)


def _pid_of_temp(name: str) -> int | None:
    # <sha>.<pid>-<rand>.part  or  <sha16>-<pid>-<rand>[.d]
    for piece in name.replace(".", "-").split("-")[1:3]:
        if piece.isdigit():
            return int(piece)
    return None


def gc(
    store: BlobStore,
    older_than_days: float = DEFAULT_GC_DAYS,
    dry_run: bool = False,
    now: float | None = None,
) -> GcReport:
    """Remove unreferenced blobs unused for ``older_than_days``; report what and why not."""
    now = time.time() if now is None else now
    cutoff = now - older_than_days * 86400
    report = GcReport()
    refs = store.index.all_refs()
    members = _tree_members(store)
    records = {r.sha256: r for r in store.index.blobs()}
    # Trees first, so the files of a collected tree can go in the same run.
    order = sorted(records, key=lambda s: 0 if (store.read_meta(s) or {}).get("kind") else 1)
    gone: set[str] = set()
    for sha in order:
        rec = records[sha]
        last = rec.last_used or rec.created_at
        why = None
        if refs.get(sha):
            why = "referenced by " + ", ".join(refs[sha])
        elif store.in_use(sha):
            why = "in use"
        elif [t for t in members.get(sha, []) if t not in gone]:
            why = "part of an assembled artifact"
        elif last > cutoff:
            why = f"used {(now - last) / 86400:.1f} days ago"
        if why:
            report.kept.append((sha, why))
            continue
        report.removed.append((sha, rec.size_bytes))
        gone.add(sha)
        if not dry_run:
            store.remove(sha)
    # Leftovers of killed processes: staging dirs and partial downloads whose writer is
    # dead and that are older than the threshold (a fresh partial is worth resuming).
    tmp = store.settings.tmp_dir
    for p in sorted(tmp.iterdir()) if tmp.is_dir() else []:
        pid = _pid_of_temp(p.name)
        try:
            age_ok = p.stat().st_mtime < cutoff or p.is_dir()
        except OSError:
            continue
        if pid is not None and pid_alive(pid):
            continue
        if not age_ok:
            continue
        report.temp_removed.append(p)
        if not dry_run:
            if p.is_dir() and not p.is_symlink():
                shutil.rmtree(p, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    p.unlink()
    return report
