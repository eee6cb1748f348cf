"""``locara search QUERY``: GGUF and MLX repositories on Hugging Face (honours HF_ENDPOINT)."""

from __future__ import annotations

from typing import Any

import click

from locara.cli.common import echo_json, settings
from locara.errors import FetchError, OfflineError
from locara.store.hf_repo import probe

FORMATS = {"gguf": "gguf", "mlx": "mlx"}


def search_hub(query: str, fmt: str, limit: int) -> list[dict[str, Any]]:
    """Repositories matching ``query`` with the ``fmt`` tag, most downloaded first."""
    cfg = settings()
    if cfg.offline:
        raise OfflineError(
            "Locara is offline; searching Hugging Face needs the network",
            "unset LOCARA_OFFLINE, or list local models with: locara ls --all",
        )
    probe(cfg.hf_endpoint)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    api = HfApi(endpoint=cfg.hf_endpoint, token=cfg.hf_token or False)
    formats = list(FORMATS) if fmt == "all" else [fmt]
    rows: list[dict[str, Any]] = []
    try:
        for f in formats:
            for m in api.list_models(search=query, filter=f, sort="downloads", limit=limit):
                rows.append(
                    {
                        "id": m.id,
                        "format": f,
                        "downloads": m.downloads,
                        "likes": m.likes,
                        "updated": m.last_modified.isoformat() if m.last_modified else None,
                        "pull": f"hf://{m.id}/<file>",
                    }
                )
    except HfHubHTTPError as exc:
        raise FetchError(
            f"Hugging Face search at {cfg.hf_endpoint} failed: {exc}",
            "check HF_ENDPOINT and the network, then retry",
            cfg.hf_endpoint,
        ) from exc
    except OSError as exc:  # connection refused, DNS: httpx errors are OSError-like here
        raise FetchError(
            f"cannot reach {cfg.hf_endpoint}: {exc}", "check the network or HF_ENDPOINT"
        ) from exc
    except Exception as exc:
        if type(exc).__module__.startswith(("httpx", "httpcore")):
            raise FetchError(
                f"cannot reach {cfg.hf_endpoint}: {exc}", "check the network or HF_ENDPOINT"
            ) from exc
        raise
    rows.sort(key=lambda r: -(r["downloads"] or 0))
    return rows[:limit]


@click.command()
@click.argument("query")
@click.option(
    "--format", "fmt", type=click.Choice(["gguf", "mlx", "all"]), default="all", show_default=True
)
@click.option("--limit", type=click.IntRange(1, 1000), default=20, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Machine-readable output.")
def search(query: str, fmt: str, limit: int, as_json: bool) -> None:
    """Search Hugging Face for GGUF and MLX model repositories."""
    if not query.strip():
        raise click.BadParameter("give a search word, e.g. locara search qwen", param_hint="QUERY")
    rows = search_hub(query.strip(), fmt, limit)
    if as_json:
        echo_json(rows)
        return
    if not rows:
        click.echo(f"no GGUF/MLX repositories match {query!r}; try a shorter word")
        return
    click.echo(f"{'REPOSITORY':56} {'FORMAT':6} {'DOWNLOADS':>10} {'LIKES':>6}")
    for r in rows:
        click.echo(f"{r['id']:56} {r['format']:6} {r['downloads'] or 0:>10} {r['likes'] or 0:>6}")
    click.echo("registry models (verified hashes): locara ls --all; fetch one: locara pull MODEL")
