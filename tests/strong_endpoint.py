"""A scripted OpenAI-compatible "strong" model on 127.0.0.1: correct by construction.

It is not a model. It holds an answer key (prompt -> answer) and returns the key's answer
to ``POST /v1/chat/completions``, so anything escalated to it is answered correctly; this
is how the router's tests and ``bench/router.py`` stand in for a bigger model or a cloud
API. ``mode`` provokes the failures a real endpoint has: ``500``, ``garbage`` (200 with
a body that is not a chat completion), ``slow`` (headers, then a byte a second), and
``hang`` (no answer at all until stopped). Every request is logged with its headers.
"""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


class StrongEndpoint:
    def __init__(self, answers: dict[str, str] | None = None) -> None:
        self.answers = dict(answers or {})
        self.mode = "ok"
        self.requests: list[dict[str, Any]] = []
        self._stop = threading.Event()
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length", 0))))
                outer.requests.append({"body": body, "headers": dict(self.headers)})
                if outer.mode == "500":
                    # Echoes the request's headers, as some broken proxies do: a key in it
                    # must never reach Locara's errors, logs or ledger.
                    self._send(500, json.dumps({"error": dict(self.headers)}).encode())
                elif outer.mode == "garbage":
                    self._send(200, b"<html>not json</html>")
                elif outer.mode in ("slow", "hang"):
                    self.send_response(200)
                    self.send_header("Content-Type", "application/json")
                    self.end_headers()
                    while not outer._stop.wait(1.0):
                        if outer.mode == "slow":
                            self.wfile.write(b" ")
                            self.wfile.flush()
                else:
                    prompt = next(
                        (m["content"] for m in reversed(body["messages"]) if m["role"] == "user"),
                        "",
                    )
                    text = outer.answers.get(prompt, "I do not know.")
                    self._send(
                        200,
                        json.dumps({
                            "id": "strong-1", "object": "chat.completion", "created": int(time.time()),
                            "model": body.get("model"),
                            "choices": [{"index": 0, "finish_reason": "stop",
                                         "message": {"role": "assistant", "content": text}}],
                            "usage": {"prompt_tokens": len(prompt.split()) + 8,
                                      "completion_tokens": len(text.split()) + 1},
                        }).encode(),
                    )  # fmt: skip

            def _send(self, status: int, data: bytes) -> None:
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.server.daemon_threads = True
        self.port = int(self.server.server_address[1])
        self.url = f"http://127.0.0.1:{self.port}/v1"
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def __enter__(self) -> StrongEndpoint:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self.server.shutdown()
        self.server.server_close()
