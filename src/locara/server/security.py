"""The server's front door: Host check, body size limit and API tokens, before any route.

A pure ASGI middleware (not Starlette's BaseHTTPMiddleware) so streamed responses and
client-disconnect messages pass through untouched.

- Host: on a loopback bind only local names are accepted. A web page on another
  origin that rebinds its DNS name to 127.0.0.1 still sends its own name in Host,
  so it is refused (DNS rebinding).
- Body: at most ``max_body_bytes``, checked against Content-Length and while reading.
- Tokens: required when the server listens beyond loopback, or once any token has
  been created; ``Authorization: Bearer <token>``. ``/health`` stays open, and
  ``/api/status`` (what ``locara status`` reads) is open to this machine only.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from locara.errors import AuthError, LocaraError
from locara.server.config import ServerConfig, is_loopback
from locara.server.errors import HTTPError, error_bytes, is_ollama_path
from locara.server.tokens import TokenStore

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

OPEN_PATHS = frozenset({"/health"})


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

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = str(scope.get("path", ""))
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        try:
            self._check_host(headers)
            client = (scope.get("client") or ("", 0))[0]
            if path == "/api/status" and is_loopback(str(client)):
                app_name = "local"  # `locara status` on this machine
            else:
                app_name = self._check_token(path, headers, str(scope.get("method", "")))
            receive = await self._bounded_body(headers, receive)
        except LocaraError as exc:
            await _send_error(send, exc, is_ollama_path(path))
            return
        scope.setdefault("state", {})["app_name"] = app_name
        if scope.get("method") in ("POST", "DELETE"):
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

    def _check_token(self, path: str, headers: dict[str, str], method: str) -> str:
        required = not self.config.loopback or bool(self.tokens.records())
        if not required or path in OPEN_PATHS or (method == "OPTIONS" and self.config.cors_origins):
            return "local"
        auth = headers.get("authorization", "")
        scheme, _, token = auth.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            raise AuthError(
                "this server requires an API token",
                "create one with `locara token create --app NAME` and send "
                "'Authorization: Bearer <token>'",
            )
        rec = self.tokens.verify(token.strip())
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


def _too_large(size: int, limit: int) -> HTTPError:
    return HTTPError(
        413,
        f"request body is {size} bytes; the limit is {limit}",
        "send a smaller request, or raise LOCARA_MAX_BODY_BYTES",
        code="body_too_large",
    )


async def _send_error(send: Send, exc: LocaraError, ollama: bool) -> None:
    status, body, extra = error_bytes(exc, ollama)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in extra.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
