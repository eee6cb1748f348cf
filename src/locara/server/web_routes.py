"""The web dashboard at ``/`` and the read-only JSON it needs beyond the OpenAI/Ollama API.

The page (``web/index.html``, ``app.js``, ``app.css``) ships in the package and is served
under a Content-Security-Policy that allows this origin only: no CDN, no inline script,
no remote fetch. Its assets are open like ``/`` (they hold no data); every ``/api/locara/``
route goes through the same token check as the rest of the API. docs/web.md lists every
call the page makes.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Query, Request
from fastapi.responses import PlainTextResponse, Response

from locara.server.common import service
from locara.server.errors import HTTPError

router = APIRouter()

WEB_DIR = Path(__file__).resolve().parent / "web"
ASSETS = {
    "app.js": "text/javascript; charset=utf-8",
    "app.css": "text/css; charset=utf-8",
    "favicon.svg": "image/svg+xml",
}

# 'self' only: a script injected into the page could neither load code nor send data
# anywhere else. Inline styles are refused too (the page uses classes and SVG attributes).
CSP = (
    "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; font-src 'self'; manifest-src 'self'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)
PAGE_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


def _asset(name: str, media_type: str) -> Response:
    return Response((WEB_DIR / name).read_bytes(), media_type=media_type, headers=PAGE_HEADERS)


# GET and HEAD: the Ollama CLI checks that a server is up with ``HEAD /`` and clients read
# "Locara is running"; a browser (which asks for text/html) gets the dashboard.
@router.api_route("/", methods=["GET", "HEAD"], include_in_schema=False)
async def root(request: Request) -> Response:
    if "text/html" in request.headers.get("accept", ""):
        page = _asset("index.html", "text/html; charset=utf-8")
    else:
        page = PlainTextResponse("Locara is running")
    page.headers["Vary"] = "Accept"  # one URL, two answers: caches must keep both
    return page


@router.api_route("/web/{name}", methods=["GET", "HEAD"], include_in_schema=False)
async def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPError(404, f"no dashboard file {name!r}", "open the dashboard at /")
    return _asset(name, ASSETS[name])


@router.get("/api/locara/device")
async def device(request: Request) -> dict[str, Any]:
    """This machine's device profile, read now, and the models that fit it by tier."""
    from locara.device.profile import detect_profile
    from locara.planner.plan import local_gguf_paths
    from locara.planner.recommend import recommend
    from locara.planner.results import read_bench_results
    from locara.registry.catalog import Registry

    settings = service(request).settings

    def work() -> dict[str, Any]:
        profile = detect_profile(settings)
        manifests = Registry(settings).all()
        fits = recommend(
            profile,
            manifests,
            "chat",
            bench_results=read_bench_results(settings.bench_results_path, profile),
            gguf_path_of=local_gguf_paths(settings, manifests),
        )
        return {"profile": profile.to_dict(), "fits": fits.to_dict()}

    return await asyncio.to_thread(work)


@router.get("/api/locara/plan")
async def plan(
    request: Request,
    model: str = Query(min_length=1, max_length=300),
    ctx: int | None = Query(default=None, ge=1, le=2**31 - 1),
) -> dict[str, Any]:
    """How this server would run ``model`` (``locara plan``): the plan and its explanation."""
    from locara.backends.registry import llama_cpp_gpu_offload, llama_server_installed
    from locara.cli.plan import render_plan
    from locara.planner.plan import PlanRequest, local_gguf_paths, plan_model
    from locara.planner.results import read_bench_results
    from locara.registry.catalog import Registry
    from locara.registry.refs import parse_ref

    svc = service(request)
    settings = svc.settings

    def work() -> dict[str, Any]:
        ref = parse_ref(model)
        manifest = Registry(settings).get(ref.id)
        device = svc.pool.device()
        result = plan_model(
            manifest,
            device,
            PlanRequest(n_ctx=ctx, quant=ref.quant, sha256=ref.sha256),
            bench_results=read_bench_results(settings.bench_results_path, device),
            gguf_path_of=local_gguf_paths(settings, [manifest]),
            gpu_offload=llama_cpp_gpu_offload(),
            llama_server=llama_server_installed(),
        )
        lines = render_plan(result, device, manifest.context_length)
        return {"plan": result.to_dict(), "explanation": lines}

    return await asyncio.to_thread(work)


@router.get("/api/locara/models")
async def models(request: Request) -> dict[str, Any]:
    """Stored models (size, quant, license, last use, pinning apps), the curated catalog,
    LoRA adapters (with the base each is bound to), and the virtual model names of the
    router policy (``locara serve --policy``), if any."""
    from locara.cli.cleanup import inventory
    from locara.ecology.adapters import AdapterRegistry
    from locara.registry.catalog import Registry

    svc = service(request)
    settings = svc.settings
    policies: list[str] = []
    if svc.config.policy is not None:
        from locara.server.router_routes import VIRTUAL_MODEL

        policies = [svc.config.policy.name, VIRTUAL_MODEL]

    def work() -> dict[str, Any]:
        registry = Registry(settings)
        catalog: dict[str, dict[str, Any]] = {}
        for m in registry.all():
            catalog[m.id] = {
                "id": m.id,
                "display_name": m.display_name,
                "license": m.license,
                "modality": m.modality,
                "curated": m.curated,
                "quants": sorted({a.quant for _, a in m.all_artifacts() if a.quant}),
                "size_bytes": min((a.size_bytes or 0 for _, a in m.all_artifacts()), default=0),
            }
        stored = []
        for row in inventory(settings, threshold_days=30.0):
            if row["status"] == "part":
                continue  # a file of a multi-file artifact: its tree's row stands for it
            entry = catalog.get(row["model"] or "", {})
            stored.append(
                {
                    **{k: v for k, v in row.items() if not k.startswith("_")},
                    "display_name": entry.get("display_name"),
                    "license": entry.get("license"),
                }
            )
        adapters = [
            {
                "id": a.id,
                "base_model": a.base.model_id,
                "base_sha256": a.base.sha256,
                "task": a.task,
                "license": a.license,
            }
            for a in AdapterRegistry(settings).all()
        ]
        catalog_list = sorted(catalog.values(), key=lambda c: c["id"])
        return {
            "stored": stored,
            "catalog": catalog_list,
            "adapters": adapters,
            "policies": policies,
        }

    return await asyncio.to_thread(work)


@router.get("/api/locara/usage")
async def usage(
    request: Request,
    model: str | None = Query(default=None, max_length=300),
    app: str | None = Query(default=None, max_length=300),
    since: str | None = Query(default=None, max_length=64),
    recent: int = Query(default=20, ge=0, le=500),
) -> dict[str, Any]:
    """Usage over time from the ledger (locara usage's totals, plus a bucketed series)."""
    from locara.ledger.db import UsageDB
    from locara.ledger.prices import load_prices
    from locara.ledger.report import iso, parse_since, summarize
    from locara.ledger.series import usage_series

    settings = service(request).settings
    since_ts = parse_since(since) if since else None

    def work() -> dict[str, Any]:
        db = UsageDB(settings.usage_db_path)
        every = db.rows(since=since_ts)
        rows = [r for r in every if (model in (None, r["model_id"])) and (app in (None, r["app"]))]
        prices = load_prices(settings)
        latest = [
            {
                "ts": iso(r["ts"]),
                "model": r["model_id"],
                "app": r["app"],
                "surface": r["surface"],
                "status": r["status"],
                "error": r["error"],
                "prompt_tokens": r["prompt_tokens"],
                "completion_tokens": r["completion_tokens"],
                "generation_tps": r["generation_tps"],
                "ttft_s": r["ttft_s"],
            }
            for r in reversed(rows[-recent:] if recent else [])
        ]
        return {
            "filters": {"model": model, "app": app, "since": since},
            "models": sorted({r["model_id"] for r in every}),
            "apps": sorted({r["app"] for r in every}),
            "summary": summarize(rows, prices),
            "series": usage_series(rows, prices),
            "recent": latest,
        }

    return await asyncio.to_thread(work)


@router.get("/api/locara/bench")
async def bench(request: Request) -> dict[str, Any]:
    """Saved ``locara bench`` results, newest first."""
    from locara.bench.results import load_results

    settings = service(request).settings
    results = await asyncio.to_thread(load_results, settings)
    return {"results": list(reversed(results))}
