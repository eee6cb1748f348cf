"""A Hugging Face GGUF repository and a quant name -> the one file to pull.

``locara download Qwen/Qwen3-8B-GGUF --quant Q4_K_M`` lists the repository's files
(the Hub's ``/api/models/<repo>``, on HF_ENDPOINT), keeps the ``.gguf`` files whose
name carries that quant, and hands ``hf://owner/repo/<file>`` to the ordinary pull,
which hashes while downloading and stores by SHA-256. The quant is read from the file
name, the way GGUF repositories name their files (``model-Q4_K_M.gguf``,
``model.Q8_0.gguf``, ``model-IQ4_XS-00001-of-00002.gguf``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from locara.errors import FetchError, OfflineError, UsageError
from locara.settings import Settings

# A quant between separators: Q4_K_M, Q8_0, IQ4_XS, Q4_0_4_4, F16, BF16, F32.
_QUANT = re.compile(r"(?<![A-Za-z0-9])(I?Q[1-8](?:_[0-9A-Za-z]{1,2})*|B?F16|F32)(?![A-Za-z0-9])")
_SHARD = re.compile(r"-(\d{5})-of-(\d{5})\.gguf$", re.IGNORECASE)
_REPO = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]*/[A-Za-z0-9][A-Za-z0-9._-]*")


def is_repo_id(text: str) -> bool:
    """``owner/repo`` (a Hugging Face repository), as opposed to a registry model id."""
    return _REPO.fullmatch(text) is not None and ".." not in text


def quant_of(filename: str) -> str | None:
    """The quant a GGUF file name carries (upper case), or None."""
    found = _QUANT.findall(filename.rsplit("/", 1)[-1])
    return found[-1].upper() if found else None


def probe(endpoint: str) -> None:
    """Fail at once, with a hint, when ``endpoint`` does not accept a TCP connection."""
    # huggingface_hub retries a refused connection for ~25 s; one TCP connect tells at
    # once whether the endpoint is reachable at all.
    import socket
    from urllib.parse import urlparse

    u = urlparse(endpoint)
    port = u.port or (443 if u.scheme == "https" else 80)
    try:
        socket.create_connection((u.hostname or "", port), timeout=5).close()
    except OSError as exc:
        raise FetchError(
            f"cannot reach {endpoint}: {exc.strerror or exc}",
            "check the network or HF_ENDPOINT; local models: locara ls --all",
            endpoint,
        ) from exc


@dataclass(frozen=True)
class RepoFiles:
    repo: str
    ggufs: tuple[str, ...]  # repository paths of the .gguf files
    gated: bool

    def quants(self) -> list[str]:
        return sorted({q for f in self.ggufs if (q := quant_of(f))})


def list_repo(settings: Settings, repo: str) -> RepoFiles:
    """The GGUF files of ``repo`` on HF_ENDPOINT, and whether it is gated."""
    if settings.offline:
        raise OfflineError(
            f"Locara is offline; listing {repo} needs the network",
            "unset LOCARA_OFFLINE, or use a stored model (locara models)",
        )
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError

    probe(settings.hf_endpoint)
    api = HfApi(endpoint=settings.hf_endpoint, token=settings.hf_token or False)
    try:
        info = api.model_info(repo)
    except RepositoryNotFoundError as exc:
        raise FetchError(
            f"no repository {repo} on {settings.hf_endpoint}",
            "check the name (owner/repo), or find one with: locara search WORD",
            settings.hf_endpoint,
            404,
        ) from exc
    except HfHubHTTPError as exc:
        status = exc.response.status_code if exc.response is not None else None
        raise FetchError(
            f"listing {repo} on {settings.hf_endpoint} failed (HTTP {status})",
            "check HF_ENDPOINT and the network, then retry",
            settings.hf_endpoint,
            status,
        ) from exc
    names = tuple(s.rfilename for s in info.siblings or () if s.rfilename.lower().endswith(".gguf"))
    return RepoFiles(repo, names, bool(info.gated))


def gguf_source(settings: Settings, repo: str, quant: str | None) -> str:
    """``hf://repo/<file>`` for the one GGUF file of ``quant`` in ``repo``.

    Without a quant the repository must hold a single GGUF file. Errors list what the
    repository has: no GGUF at all, no file of that quant, a quant split into shards,
    and a gated repository without HF_TOKEN (its files would answer 401).
    """
    files = list_repo(settings, repo)
    if not files.ggufs:
        raise UsageError(
            f"{repo} has no .gguf file",
            f"find a GGUF repository with: locara search {repo.split('/')[-1]}",
        )
    quants = files.quants()
    have = ", ".join(quants) or "none named in its files"
    if quant is None:
        if len(files.ggufs) > 1:
            raise UsageError(
                f"{repo} has several GGUF files; pick a quant: {have}",
                f"locara download {repo} --quant {quants[0] if quants else 'Q4_K_M'}",
            )
        chosen = list(files.ggufs)
    else:
        chosen = [f for f in files.ggufs if quant_of(f) == quant.upper()]
        if not chosen:
            raise UsageError(
                f"{repo} has no {quant.upper()} file; it has: {have}",
                f"locara download {repo} --quant {quants[0]}"
                if quants
                else f"pull one file: locara download hf://{repo}/{files.ggufs[0]}",
            )
    if len(chosen) > 1:
        if all(_SHARD.search(f) for f in chosen):
            raise UsageError(
                f"{repo} splits {quant.upper() if quant else 'its model'} into "
                f"{len(chosen)} files; Locara stores single-file GGUFs",
                f"pick a quant stored in one file (it has: {have}), or merge the parts "
                "with llama.cpp's llama-gguf-split --merge",
            )
        raise UsageError(
            f"{repo} has {len(chosen)} files of {quant}: {', '.join(chosen)}",
            f"pull one by name: locara download hf://{repo}/{chosen[0]}",
        )
    if files.gated and not settings.hf_token:
        raise FetchError(
            f"{repo} is gated: Hugging Face serves its files only to accounts that accepted "
            "its terms",
            f"accept them at {settings.hf_endpoint}/{repo}, then set HF_TOKEN to a token of "
            "that account",
            f"{settings.hf_endpoint}/{repo}",
            401,
        )
    return f"hf://{repo}/{chosen[0]}"
