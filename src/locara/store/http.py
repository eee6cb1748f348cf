"""HTTP downloads with httpx: timeouts, redirects, Hugging Face tokens."""

from __future__ import annotations

from collections.abc import Iterator

import httpx

from locara.errors import FetchError
from locara.settings import Settings

CHUNK = 1 << 20
TIMEOUT = httpx.Timeout(connect=10.0, read=60.0, write=60.0, pool=10.0)


def resolve_url(url: str, settings: Settings) -> str:
    """Expand ``hf://owner/repo/file`` to a resolve URL on HF_ENDPOINT."""
    if url.startswith("hf://"):
        owner, repo, path = [*url[len("hf://") :].split("/", 2), "", ""][:3]
        if not (owner and repo and path):
            raise FetchError(f"invalid hf:// source {url!r}", "use hf://owner/repo/file", url)
        return f"{settings.hf_endpoint}/{owner}/{repo}/resolve/main/{path}"
    return url


def _headers(url: str, settings: Settings) -> dict[str, str]:
    headers = {"User-Agent": "locara/0.1"}
    if settings.hf_token and url.startswith(settings.hf_endpoint):
        headers["Authorization"] = f"Bearer {settings.hf_token}"
    return headers


def iter_http(url: str, settings: Settings) -> Iterator[bytes]:
    real = resolve_url(url, settings)
    try:
        with (
            httpx.Client(timeout=TIMEOUT, follow_redirects=True) as client,
            client.stream("GET", real, headers=_headers(real, settings)) as resp,
        ):
            if resp.status_code != 200:
                raise FetchError(
                    f"GET {real} answered HTTP {resp.status_code}",
                    "check the URL; for gated repositories set HF_TOKEN",
                    real,
                    resp.status_code,
                )
            yield from resp.iter_bytes(CHUNK)
    except httpx.HTTPError as exc:
        raise FetchError(
            f"download of {real} failed: {exc}", "check the network and retry", real
        ) from exc
