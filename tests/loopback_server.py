"""A real HTTP server on 127.0.0.1 that serves files with Range support and faults on demand.

Tests register files (``server.add("/m.gguf", path)``) and switch a fault mode per path
(``server.fault("/m.gguf", "cut", at=40_000_000)``). Every request is logged with its
Range header, status and the body bytes actually sent, so a test can assert that a
resume transferred only the missing bytes or that four pulls made one download.

Fault modes:
  ok            the file, honouring Range
  wrong_bytes   same size, one byte flipped in the middle
  short         a truncated file (Content-Length says the truncated size)
  extra         the file plus trailing bytes (Content-Length says so)
  extra_unannounced  the file plus trailing bytes, no Content-Length (body ends at close)
  ignore_range  always 200 with the whole file
  cut           declares the full length, closes the connection after ``at`` bytes (``times`` times)
  status        answers ``codes`` (e.g. [429, 503]) one per request first, then serves
  slow          serves at ``rate`` bytes per second
  stall         sends ``at`` bytes, then holds the connection until released
  auth          401 unless ``Authorization: Bearer <token>``
It also answers ``GET /api/models`` in the Hugging Face Hub API shape from ``hf_models``,
and ``GET /api/models/<owner>/<repo>`` (a repository's files, ``gated``) from ``hf_repos``.
"""

from __future__ import annotations

import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlparse

CHUNK = 1 << 20


@dataclass
class LogEntry:
    path: str
    range: str | None
    status: int
    sent: int = 0
    authorization: str | None = None
    query: str = ""


@dataclass
class Fault:
    mode: str = "ok"
    params: dict[str, Any] = field(default_factory=dict)
    count: int = 0


class LoopbackServer:
    def __init__(self) -> None:
        self.files: dict[str, Path] = {}
        self.faults: dict[str, Fault] = {}
        self.log: list[LogEntry] = []
        self.hf_models: list[dict[str, Any]] = []
        self.hf_repos: dict[str, dict[str, Any]] = {}
        self.release = threading.Event()
        self.lock = threading.Lock()
        handler = type("Handler", (_Handler,), {"owner": self})
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self.httpd.daemon_threads = True
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self.httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> LoopbackServer:
        self.thread.start()
        return self

    def stop(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()

    def add(self, path: str, file: Path) -> str:
        self.files[path] = file
        return self.url + path

    def fault(self, path: str, mode: str, **params: Any) -> None:
        self.faults[path] = Fault(mode, params)

    def requests(self, path: str) -> list[LogEntry]:
        with self.lock:
            return [e for e in self.log if e.path == path]

    def sent(self, path: str) -> int:
        return sum(e.sent for e in self.requests(path))


class _Handler(BaseHTTPRequestHandler):
    owner: LoopbackServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _entry(self, status: int) -> LogEntry:
        parsed = urlparse(self.path)
        e = LogEntry(
            parsed.path,
            self.headers.get("Range"),
            status,
            authorization=self.headers.get("Authorization"),
            query=parsed.query,
        )
        with self.owner.lock:
            self.owner.log.append(e)
        return e

    def _simple(
        self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
    ) -> None:
        self._entry(status)
        self.send_response(status)
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self) -> None:
        parsed = urlparse(self.path)
        if parsed.path == "/api/models":
            self._api_models(parse_qs(parsed.query))
            return
        if parsed.path.startswith("/api/models/"):
            self._api_model(parsed.path.removeprefix("/api/models/"))
            return
        file = self.owner.files.get(parsed.path)
        if file is None:
            self._simple(404, b"not found")
            return
        fault = self.owner.faults.get(parsed.path, Fault())
        with self.owner.lock:
            fault.count += 1
            nth = fault.count
        mode, p = fault.mode, fault.params
        if mode == "status" and nth <= len(p["codes"]):
            self._simple(
                p["codes"][nth - 1], b"busy", {"Retry-After": str(p.get("retry_after", 0))}
            )
            return
        if mode == "auth" and self.headers.get("Authorization") != f"Bearer {p['token']}":
            self._simple(401, b"gated")
            return
        size = file.stat().st_size
        body_size = size
        if mode == "short":
            body_size = size - p.get("missing", 1000)
        elif mode in ("extra", "extra_unannounced"):
            body_size = size + p.get("extra", 1000)
        start = 0
        rng = self.headers.get("Range")
        m = re.fullmatch(r"bytes=(\d+)-", rng or "")
        status = 200
        if m and mode != "ignore_range":
            start = int(m.group(1))
            if start >= body_size:
                self._simple(416, b"", {"Content-Range": f"bytes */{body_size}"})
                return
            status = 206
        entry = self._entry(status)
        self.send_response(status)
        if mode == "extra_unannounced":
            # no length at all: the body ends when the connection closes
            self.send_header("Connection", "close")
            self.close_connection = True
        else:
            self.send_header("Content-Length", str(body_size - start))
        self.send_header("Accept-Ranges", "bytes")
        if status == 206:
            self.send_header("Content-Range", f"bytes {start}-{body_size - 1}/{body_size}")
        self.end_headers()
        limit = body_size - start
        cut_at = None
        if mode == "cut" and nth <= p.get("times", 1):
            cut_at = p["at"]
        if mode == "stall":
            cut_at = p["at"]
        with file.open("rb") as f:
            f.seek(min(start, size))
            pos = start
            while entry.sent < limit:
                n = min(CHUNK, limit - entry.sent)
                if cut_at is not None:
                    n = min(n, cut_at - pos) if pos < cut_at else n
                chunk = f.read(n) if pos < size else b""
                if pos + len(chunk) < pos + n:  # past the real end ("extra" mode)
                    chunk += b"\0" * (n - len(chunk))
                if mode == "wrong_bytes" and pos <= size // 2 < pos + len(chunk):
                    i = size // 2 - pos
                    chunk = chunk[:i] + bytes([chunk[i] ^ 0xFF]) + chunk[i + 1 :]
                try:
                    self.wfile.write(chunk)
                    self.wfile.flush()
                except OSError:
                    return
                entry.sent += len(chunk)
                pos += len(chunk)
                if mode == "slow":
                    time.sleep(len(chunk) / p["rate"])
                if cut_at is not None and pos >= cut_at:
                    if mode == "stall":
                        self.owner.release.wait(p.get("timeout", 60))
                    with contextlib.suppress(OSError):
                        self.connection.shutdown(2)
                    self.close_connection = True
                    return

    def _api_models(self, query: dict[str, list[str]]) -> None:
        search = (query.get("search") or [""])[0].lower()
        filters = query.get("filter") or []
        limit = int((query.get("limit") or ["1000"])[0])
        rows = [
            m
            for m in self.owner.hf_models
            if search in m["id"].lower() and all(f in m.get("tags", []) for f in filters)
        ][:limit]
        self._simple(200, json.dumps(rows).encode(), {"Content-Type": "application/json"})

    def _api_model(self, repo: str) -> None:
        info = self.owner.hf_repos.get(repo)
        if info is None:  # the Hub's answer for a repository it does not have
            body = json.dumps({"error": "Repository not found"}).encode()
            self._simple(404, body, {"X-Error-Code": "RepoNotFound"})
            return
        self._simple(200, json.dumps(info).encode(), {"Content-Type": "application/json"})


def hf_repo_info(repo: str, files: list[str], gated: bool | str = False) -> dict[str, Any]:
    """What the Hub's ``/api/models/<repo>`` says about a repository of ``files``."""
    return {
        "id": repo,
        "modelId": repo,
        "sha": "0" * 40,
        "private": False,
        "gated": gated,
        "tags": ["gguf"],
        "siblings": [{"rfilename": f} for f in files],
    }


def write_manifest(
    directory: Path,
    model_id: str,
    artifact: dict[str, Any],
    **fields: Any,
) -> Path:
    """Write a one-artifact llama.cpp manifest for ``model_id`` into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    data = {
        "id": model_id,
        "version": "1.0.0",
        "displayName": model_id,
        "license": "Apache-2.0",
        "modality": "chat",
        "context_length": 8192,
        "artifacts": {"llama_cpp": [{"format": "gguf", "quant": "Q4_1", **artifact}]},
        **fields,
    }
    path = directory / f"{model_id}.json"
    path.write_text(json.dumps(data, indent=2))
    return path
