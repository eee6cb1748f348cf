"""The OpenAPI document, with the error status codes the server really sends.

FastAPI declares 422 for validation errors, but Locara answers them (and every other
malformed request) with 400 and an OpenAI- or Ollama-style body, and its front door can
answer 401, 403, 413 or 503 before any route runs. (422 remains only where it is sent:
a model's chat template that fails to render.) The test suite checks every answer
against this document (schemathesis, status-code conformance), so a route that
starts sending a new code must be declared here.
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

# What the front door (security.py) can answer on any route: a bad Host or
# Content-Length (400), a missing token (401), a foreign Host or Origin (403), a body
# over the limit (413), an unreadable token file (503). Validation errors are 400 too.
FRONT_DOOR = {
    "400": "Invalid request (body, parameters, model reference, Host or Content-Length)",
    "401": "An API token is required, or the one sent is invalid or revoked",
    "403": "Host or Origin not allowed (DNS rebinding / CSRF protection)",
    "413": "Request body over LOCARA_MAX_BODY_BYTES",
    "503": "Server busy (queue full), offline, or its token file is unreadable",
}
# /health skips the token check, so only the Host check can refuse it.
HEALTH = {k: FRONT_DOOR[k] for k in ("400", "403")}
# Routes that resolve, fetch or load a model.
MODEL = {
    "404": "Unknown model",
    "501": "The model's backend is not available on this machine",
    "502": "The model could not be fetched from any of its sources",
    "507": "The model does not fit the memory budget",
}
MODEL_PATHS = frozenset(
    {
        "/v1/chat/completions",
        "/v1/completions",
        "/v1/embeddings",
        "/v1/audio/transcriptions",
        "/v1/ocr",
        "/v1/models/{model}",
        "/api/chat",
        "/api/generate",
        "/api/embed",
        "/api/embeddings",
        "/api/show",
        "/api/pull",
        "/api/delete",
    }
)
# A model whose chat template fails to render the messages (not the client's fault).
TEMPLATE = {"422": "The model's chat template cannot render these messages"}
EXTRA = {
    ("post", "/v1/chat/completions"): TEMPLATE,
    ("post", "/api/chat"): TEMPLATE,
    ("post", "/api/generate"): TEMPLATE,
    ("delete", "/api/delete"): {"409": "An installed app uses this model"},
    ("get", "/api/locara/plan"): {"404": "Unknown model"},
    ("get", "/v1/rag/{name}"): {"404": "No collection by that name"},
    ("post", "/v1/rag/{name}/query"): {**MODEL, "404": "Unknown collection or model"},
    ("post", "/v1/rag/{name}/ask"): {**MODEL, **TEMPLATE, "404": "Unknown collection or model"},
}

OPENAI_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["message", "type"],
            "properties": {
                "message": {"type": "string"},
                "type": {"type": "string"},
                "param": {"type": ["string", "null"]},
                "code": {"type": ["string", "null"]},
                "hint": {"type": "string", "description": "The next thing to do"},
            },
        }
    },
}
OLLAMA_ERROR: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {"type": "string"},
        "hint": {"type": "string", "description": "The next thing to do"},
    },
}


def _errors(codes: dict[str, str], schema: str) -> dict[str, Any]:
    ref = {"$ref": f"#/components/schemas/{schema}"}
    return {
        code: {"description": text, "content": {"application/json": {"schema": ref}}}
        for code, text in codes.items()
    }


def declare_errors(doc: dict[str, Any]) -> dict[str, Any]:
    """Replace FastAPI's 422 responses in ``doc`` with the real error responses."""
    for path, operations in doc.get("paths", {}).items():
        for method, op in operations.items():
            responses = op.setdefault("responses", {})
            responses.pop("422", None)
            codes = dict(HEALTH if path == "/health" else FRONT_DOOR)
            if path in MODEL_PATHS:
                codes.update(MODEL)
            codes.update(EXTRA.get((method, path), {}))
            schema = "OllamaError" if path.startswith("/api/") else "OpenAIError"
            responses.update(_errors(dict(sorted(codes.items())), schema))
    schemas = doc.setdefault("components", {}).setdefault("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        schemas.pop(unused, None)
    schemas["OpenAIError"] = OPENAI_ERROR
    schemas["OllamaError"] = OLLAMA_ERROR
    return doc


def install(app: FastAPI) -> None:
    """Make ``app.openapi()`` (and so ``/openapi.json``) return the corrected document."""

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            doc = get_openapi(
                title=app.title,
                version=app.version,
                openapi_version=app.openapi_version,
                description=app.description,
                routes=app.routes,
            )
            app.openapi_schema = declare_errors(doc)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]
