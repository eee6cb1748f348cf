"""Lineage: where a derived artifact came from (parents, operator, tool, time).

One JSON file per derived artifact, ``$LOCARA_HOME/lineage/<sha256>.json``, written
atomically. A record is keyed by the output's SHA-256, so converting the same input
twice (deterministic converters give the same bytes) updates one record, not two.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from locara.registry.names import check_sha256
from locara.settings import Settings


@dataclass(frozen=True)
class LineageRecord:
    sha256: str  # the derived artifact (a file digest, or a tree digest for a directory)
    parents: tuple[str, ...]  # SHA-256 of every input
    operator: str  # "convert" | "quantize"
    tool: str  # e.g. "locara 0.1.0 / gguf 0.19.0"
    params: dict[str, Any] = field(default_factory=dict)
    created_at: str = ""
    files: dict[str, str] = field(default_factory=dict)  # name -> sha256 for directories

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["parents"] = list(self.parents)
        return d


def lineage_dir(settings: Settings) -> Path:
    return settings.home / "lineage"


def tool_version(*packages: str) -> str:
    """``locara X`` plus the versions of the packages that did the work."""
    from importlib.metadata import PackageNotFoundError, version

    parts = []
    for name in ("locara", *packages):
        try:
            parts.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            parts.append(f"{name} ?")
    return " / ".join(parts)


def record_lineage(settings: Settings, rec: LineageRecord) -> Path:
    """Write ``rec`` (stamped with the current UTC time if unstamped); returns its path."""
    check_sha256(rec.sha256)
    for p in rec.parents:
        check_sha256(p)
    if not rec.created_at:
        rec = LineageRecord(
            **{**asdict(rec), "created_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
        )
    d = lineage_dir(settings)
    d.mkdir(parents=True, exist_ok=True)
    final = d / f"{rec.sha256}.json"
    tmp = d / f".{rec.sha256}.{os.getpid()}-{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps(rec.to_json(), indent=2, sort_keys=True), encoding="utf-8")
    os.replace(tmp, final)
    return final


def read_lineage(settings: Settings, sha256: str) -> LineageRecord | None:
    """The record for ``sha256``, or None when it was not derived here."""
    p = lineage_dir(settings) / f"{check_sha256(sha256)}.json"
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return LineageRecord(
        sha256=data["sha256"],
        parents=tuple(data.get("parents", ())),
        operator=str(data.get("operator", "")),
        tool=str(data.get("tool", "")),
        params=dict(data.get("params", {})),
        created_at=str(data.get("created_at", "")),
        files=dict(data.get("files", {})),
    )


def tree_digest(files: dict[str, str]) -> str:
    """SHA-256 of a ``sha256sum``-style listing (one ``<sha>  <name>`` line per file, sorted)."""
    import hashlib

    listing = "".join(f"{sha}  {name}\n" for name, sha in sorted(files.items()))
    return hashlib.sha256(listing.encode()).hexdigest()


def ancestry(settings: Settings, sha256: str) -> list[LineageRecord]:
    """Every record on the way from ``sha256`` to its roots, child first (each once)."""
    out: list[LineageRecord] = []
    seen: set[str] = set()
    todo = [check_sha256(sha256)]
    while todo:
        sha = todo.pop(0)
        if sha in seen:
            continue
        seen.add(sha)
        rec = read_lineage(settings, sha)
        if rec is not None:
            out.append(rec)
            todo.extend(rec.parents)
    return out


def record_derivation(settings: Settings, sources: tuple[str, ...], sha256: str) -> None:
    """Write the lineage record of a stored artifact made from a ``derived://`` source.

    Idempotent: an existing record (from the conversion that made the blob) is kept.
    """
    from locara.store.derived import SCHEME, parse_derived

    derived = [s for s in sources if s.startswith(SCHEME)]
    if not derived or read_lineage(settings, sha256) is not None:
        return
    d = parse_derived(derived[0])
    record_lineage(
        settings,
        LineageRecord(
            sha256=sha256,
            parents=(d.parent_sha256,),
            operator="convert",
            tool=tool_version("gguf", "numpy"),
            params={"to": d.to, "type": d.outtype, "from": d.source, "url": derived[0]},
        ),
    )
