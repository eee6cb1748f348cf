"""The server's front door: Host, Origin, API tokens and body size, before any route.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so streamed responses and
client-disconnect messages pass through untouched. SECURITY.md has the threat model.

- Host: on a loopback bind only local names are accepted. A web page on another
  origin that rebinds its DNS name to 127.0.0.1 still sends its own name in Host,
  so it is refused (DNS rebinding).
- Origin: every body is read as JSON whatever its content type (Ollama clients send
  none), so a page on any site could post one with ``text/plain`` and no preflight.
  A request other than GET/HEAD/OPTIONS that a browser marks as coming from another
  origin (``Origin``, or ``Sec-Fetch-Site``) is refused unless that origin is in
  LOCARA_CORS_ORIGINS; same-origin pages (the dashboard at ``/``) and clients that
  send no Origin (curl, SDKs) pass (CSRF).
- Tokens: required when the server listens beyond loopback, or once any token has
  been created; ``Authorization: Bearer <token>``. Only ``/health`` stays open. The
  server's own status key (in ``run/server.json``, readable by this user only)
  opens ``/api/status`` for ``locara status``. An unreadable token file closes
  every route but ``/health`` with a 503.
- Body: at most ``max_body_bytes``, checked against Content-Length and while reading;
  a multipart upload to an upload route (audio, images) at most ``max_upload_bytes``,
  counted while the route streams it.
"""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from locara.errors import AuthError, LocaraError, StoreError
from locara.server.config import ServerConfig, is_loopback
from locara.server.errors import HTTPError, error_bytes, is_ollama_path
from locara.server.tokens import TokenStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# /health for monitors; / answers "Locara is running" (the Ollama CLI's liveness check) or,
# to a browser, the dashboard page, whose static files under /web/ are open too: they hold
# no data, and the page must load before it can ask for a token.
OPEN_PATHS = frozenset({"/health", "/"})
OPEN_PREFIX = "/web/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # they change nothing and generate nothing
# Routes that take file uploads: a multipart/form-data body there keeps its content type
# (its boundary) and may be up to ``max_upload_bytes``, streamed to the route, not held here.
UPLOAD_PATHS = frozenset({"/v1/audio/transcriptions", "/v1/ocr"})


def _host_name(value: str) -> str:
    value = value.strip().lower()
    if value.startswith("["):  # [::1]:11435
        return value[1 : value.find("]")] if "]" in value else value
    return value.rsplit(":", 1)[0] if value.count(":") == 1 else value


class SecurityMiddleware:
    def __init__(self, app: ASGIApp, config: ServerConfig, tokens: TokenStore) -> None:
        self.app = app
        self.config = config
        self.tokens = tokens
        self.allowed = {h.lower() for h in config.allowed_hosts}
        self.origins = frozenset(config.cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        method = str(scope.get("method", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check_host(headers)
            self._check_origin(method, headers)
            app_name = self._check_token(path, headers, method)
            upload = path in UPLOAD_PATHS and headers.get("content-type", "").lower().startswith(
                "multipart/form-data"
            )
            receive = await (
                self._bounded_upload(headers, receive)
                if upload
                else self._bounded_body(headers, receive)
            )
        except LocaraError as exc:
            await _send_error(send, exc, is_ollama_path(path))
            return
        scope.setdefault("state", {})["app_name"] = app_name
        if scope.get("method") in ("POST", "DELETE") and not upload:
            # Every body is JSON whatever the client says (curl -d sends a form type and
            # Ollama never checks); otherwise such a body would read as no body at all.
            scope["headers"] = [
                (k, v) for k, v in scope["headers"] if k.lower() != b"content-type"
            ] + [(b"content-type", b"application/json")]
        await self.app(scope, receive, send)

    def _check_host(self, headers: dict[str, str]) -> None:
        if not self.config.loopback:
            return
        host = _host_name(headers.get("host", ""))
        if not host:
            raise HTTPError(400, "missing Host header", "send a Host header (HTTP/1.1)")
        if not (is_loopback(host) or host in self.allowed):
            raise HTTPError(
                403,
                f"Host {host!r} is not allowed on a loopback server (DNS rebinding protection)",
                "connect to localhost or 127.0.0.1, or list the name in LOCARA_ALLOWED_HOSTS",
                code="host_not_allowed",
            )

    def _check_origin(self, method: str, headers: dict[str, str]) -> None:
        if method in SAFE_METHODS:
            return
        origin = headers.get("origin")
        if origin is not None and (origin.strip() in self.origins or "*" in self.origins):
            return
        # Sec-Fetch-Site covers a browser that sends no Origin; "same-site" is another
        # port or subdomain of the same site, which is still another origin.
        site = headers.get("sec-fetch-site", "").strip().lower()
        foreign = site in ("cross-site", "same-site")
        if origin is not None and not _same_origin(origin, headers.get("host", "")):
            foreign = True
        if foreign:
            raise HTTPError(
                403,
                f"cross-origin {method} from {origin or site!r} refused (CSRF protection): "
                "a web page may not use this server unless its origin is allowed",
                "call the API from a program (no Origin header) or from the page Locara "
                "serves, or allow the page's origin in LOCARA_CORS_ORIGINS",
                code="origin_not_allowed",
            )

    def _check_token(self, path: str, headers: dict[str, str], method: str) -> str:
        if path in OPEN_PATHS or (method == "OPTIONS" and self.config.cors_origins):
            return "local"
        if path.startswith(OPEN_PREFIX) and method in SAFE_METHODS:
            return "local"
        try:
            required = not self.config.loopback or bool(self.tokens.records())
        except StoreError as exc:
            raise _token_store_broken(exc) from exc
        if not required:
            return "local"
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        token = token.strip()
        if scheme.lower() != "bearer" or not token:
            raise AuthError(
                "this server requires an API token",
                "create one with `locara token create --app NAME` and send "
                "'Authorization: Bearer <token>'",
            )
        key = self.config.status_key
        if path == "/api/status" and key and hmac.compare_digest(token.encode(), key.encode()):
            return "local"  # `locara status`, which read the key from run/server.json
        try:
            rec = self.tokens.verify(token)
        except StoreError as exc:
            raise _token_store_broken(exc) from exc
        if rec is None:
            raise AuthError("invalid or revoked API token", "list tokens with: locara token list")
        return rec.app

    async def _bounded_body(self, headers: dict[str, str], receive: Receive) -> Receive:
        limit = self.config.max_body_bytes
        declared = headers.get("content-length")
        if declared is not None:
            if not declared.strip().isdigit():
                raise HTTPError(400, f"invalid Content-Length {declared!r}")
            if int(declared) > limit:
                raise _too_large(int(declared), limit)
        if declared is None and "chunked" not in headers.get("transfer-encoding", ""):
            return receive
        # Read the body here (it is small, by definition) and replay it to the app.
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                pending: Message | None = message
                break
            body = message.get("body", b"")
            size += len(body)
            if size > limit:
                raise _too_large(size, limit)
            chunks.append(body)
            if not message.get("more_body", False):
                pending = None
                break
        replayed = False

        async def replay() -> Message:
            nonlocal replayed, pending
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            if pending is not None:
                msg, pending = pending, None
                return msg
            return await receive()

        return replay

    async def _bounded_upload(self, headers: dict[str, str], receive: Receive) -> Receive:
        """An upload is counted as the route reads it: a 2-hour recording never sits here."""
        limit = self.config.max_upload_bytes
        declared = headers.get("content-length", "").strip()
        if declared and (not declared.isdigit() or int(declared) > limit):
            if not declared.isdigit():
                raise HTTPError(400, f"invalid Content-Length {declared!r}")
            raise _too_large(int(declared), limit, "LOCARA_MAX_UPLOAD_BYTES")
        size = 0

        async def counted() -> Message:
            nonlocal size
            message = await receive()
            size += len(message.get("body", b""))
            if size > limit:
                raise _too_large(size, limit, "LOCARA_MAX_UPLOAD_BYTES")
            return message

        return counted


def _same_origin(origin: str, host: str) -> bool:
    # A browser sends Origin as scheme://host[:port] and Host as host[:port], both
    # without a default port, so a page served by this server has equal halves.
    scheme, sep, netloc = origin.strip().lower().partition("://")
    return bool(sep) and scheme in ("http", "https") and netloc == host.strip().lower() != ""


def _token_store_broken(exc: StoreError) -> HTTPError:
    # Fail closed: without the token file nobody can tell which tokens are valid, or
    # whether tokens are required at all.
    return HTTPError(
        503,
        f"{exc.message}; every route but /health is refused until it is fixed",
        exc.hint,
        code="token_store_unreadable",
    )


def _too_large(size: int, limit: int, setting: str = "LOCARA_MAX_BODY_BYTES") -> HTTPError:
    return HTTPError(
        413,
        f"request body is {size} bytes; the limit is {limit}",
        f"send a smaller request, or raise {setting}",
        code="body_too_large",
    )


async def _send_error(send: Send, exc: LocaraError, ollama: bool) -> None:
    status, body, extra = error_bytes(exc, ollama)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
