"""The ASGI app: routes, error rendering, security, and the keep-alive sweeper."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, PlainTextResponse, Response
from starlette.exceptions import HTTPException as StarletteHTTPException

from locara import __version__
from locara.errors import LocaraError
from locara.server import openapi
from locara.server.config import ServerConfig
from locara.server.errors import HTTPError, error_body, is_ollama_path, validation_message
from locara.server.security import SecurityMiddleware
from locara.server.service import Service
from locara.settings import Settings

log = logging.getLogger("locara.server")

SWEEP_INTERVAL_S = 0.25


def _error_response(request: Request, exc: LocaraError) -> JSONResponse:
    status, body, headers = error_body(exc, is_ollama_path(request.url.path))
    return JSONResponse(body, status_code=status, headers=headers)


def create_app(settings: Settings, config: ServerConfig) -> FastAPI:
    """The server for ``settings`` (home, models) and ``config`` (bind, limits, pool)."""
    from locara.server import media_routes, ollama_routes, openai_routes, rag_routes, web_routes

    service = Service(settings, config)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        async def sweeper() -> None:
            while True:
                await asyncio.sleep(SWEEP_INTERVAL_S)
                try:
                    # Checked here, unloaded in a thread: a hop to a thread four times a
                    # second costs a busy server's event loop more than the check.
                    if service.pool.expired():
                        await asyncio.to_thread(service.pool.sweep)
                except Exception:  # a failed unload must not stop the sweeper
                    log.exception("keep-alive sweep failed")

        task = asyncio.create_task(sweeper())
        try:
            yield
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            service.pool.close()

    app = FastAPI(
        title="Locara",
        version=__version__,
        description="OpenAI- and Ollama-compatible local model server.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
        # FastAPI's native OpenTelemetry looks up the global providers on every request;
        # Locara exports nothing through it (its numbers are on /metrics and the ledger).
        telemetry={"tracing": False, "metrics": False, "logs": False},
    )
    app.state.service = service
    app.include_router(openai_routes.router)
    app.include_router(ollama_routes.router)
    app.include_router(media_routes.router)  # /v1/audio/transcriptions, /v1/ocr
    app.include_router(rag_routes.router)  # /v1/rag: collections, query, ask, verify
    app.include_router(web_routes.router)  # the dashboard at / and its JSON
    openapi.install(app)  # 400 (not 422) and the front door's codes, as actually sent

    @app.exception_handler(LocaraError)
    async def locara_error(request: Request, exc: LocaraError) -> JSONResponse:
        return _error_response(request, exc)

    @app.exception_handler(RequestValidationError)
    async def invalid_body(request: Request, exc: RequestValidationError) -> JSONResponse:
        message, field = validation_message(list(exc.errors()))
        return _error_response(
            request,
            HTTPError(400, message, "see the API reference at /openapi.json", param=field),
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        hint = "see the routes at /openapi.json" if exc.status_code in (404, 405) else None
        err = HTTPError(exc.status_code, str(exc.detail), hint)
        response = _error_response(request, err)
        for k, v in (exc.headers or {}).items():
            response.headers[k] = v
        return response

    @app.exception_handler(Exception)
    async def unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unexpected error on %s", request.url.path)
        err = HTTPError(500, f"internal error: {type(exc).__name__}", "see the server log")
        return _error_response(request, err)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Liveness: always 200 while the server runs; ``status`` is "degraded" (and
        ``auth`` says why) while the token file cannot be read and routes answer 503."""
        try:
            service.tokens.records()
        except LocaraError as exc:
            auth = {"ok": False, "error": exc.message, "hint": exc.hint}
            return {"status": "degraded", "version": __version__, "auth": auth}
        return {"status": "ok", "version": __version__, "auth": {"ok": True}}

    @app.get("/metrics", response_class=PlainTextResponse)
    async def metrics() -> Response:
        """Prometheus text format."""
        pool = service.pool
        text = service.metrics.render(pool.loaded(), pool.queue_depths(), pool.counters())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4; charset=utf-8")

    @app.get("/api/status", include_in_schema=False)
    async def status() -> dict[str, Any]:
        """What `locara status` shows."""
        return {
            "version": __version__,
            "address": f"http://{config.host}:{config.port}",
            "started_at": service.started_at,
            "requests": service.metrics.total_requests,
            "loaded": [
                {
                    "model": m.model_id,
                    "quant": m.quant,
                    "sha256": m.sha256,
                    "size_bytes": m.size_bytes,
                    "embedding": m.embedding,
                    "n_ctx": m.n_ctx,
                    "estimated_bytes": m.estimated_bytes,
                    "in_flight": m.in_flight,
                    "expires_at": m.expires_at,
                }
                for m in service.pool.loaded()
            ],
        }

    app.add_middleware(SecurityMiddleware, config=config, tokens=service.tokens)
    if config.cors_origins:
        from starlette.middleware.cors import CORSMiddleware

        # Added last, so it runs first: preflights are answered before the token check,
        # and even a 401 carries the CORS headers the browser needs to read it.
        app.add_middleware(
            CORSMiddleware,
            allow_origins=list(config.cors_origins),
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["Authorization", "Content-Type"],
        )
    return app
