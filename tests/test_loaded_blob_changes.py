"""A blob that changes under a loaded model: the server unloads it and loads a verified one.

llama.cpp maps the model file; touching a page of a mapping whose file was truncated
kills the process with SIGBUS. The real server runs in its own process with its own
store (a copy of the bundled model, never a link to a shared one), the blob is truncated
or replaced behind its back, and the next requests must be answered by a model loaded
from a verified blob, with the server still alive.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import DEFAULT_MODEL, DEFAULT_SIZE, packaged_gguf
from locara.engine.loader import resolve
from locara.settings import Settings
from server_harness import RunningServer, running_server

BODY = {
    "model": DEFAULT_MODEL,
    "messages": [{"role": "user", "content": "Name the capital of France."}],
    "max_tokens": 4,
    "temperature": 0,
}


@pytest.fixture
def server(tmp_path: Path) -> Iterator[tuple[RunningServer, Path]]:
    home = tmp_path / "home"
    blob = resolve(Settings.from_env({"LOCARA_HOME": str(home)}), None).blob.path
    assert not os.path.samefile(blob, packaged_gguf())  # a copy: truncating it is safe
    with running_server(home) as s:
        yield s, blob


def chat(server: RunningServer) -> httpx.Response:
    return httpx.post(f"{server.url}/v1/chat/completions", json=BODY, timeout=120)


def alive(server: RunningServer) -> bool:
    return server.proc.poll() is None and httpx.get(f"{server.url}/health").status_code == 200


def test_truncated_blob_under_a_loaded_model(server: tuple[RunningServer, Path]) -> None:
    s, blob = server
    first = chat(s)
    assert first.status_code == 200, first.text
    answer = first.json()["choices"][0]["message"]["content"]
    os.chmod(blob, 0o644)  # the store keeps blobs read-only
    os.truncate(blob, DEFAULT_SIZE // 2)

    again = chat(s)
    assert alive(s), s.log_text()
    assert again.status_code == 200, again.text
    assert again.json()["choices"][0]["message"]["content"] == answer
    assert "unloading smollm2-135m-instruct: the file it was loaded from failed verification" in (
        s.log_text()
    )
    # The store fetched the blob again from the bundled package: whole and read-only.
    assert blob.stat().st_size == DEFAULT_SIZE and blob.stat().st_mode & 0o222 == 0
    assert chat(s).status_code == 200 and alive(s)


def test_replaced_blob_is_reloaded_from_the_new_file(
    server: tuple[RunningServer, Path], tmp_path: Path
) -> None:
    s, blob = server
    assert chat(s).status_code == 200
    # The same bytes under a new inode (what a repair does): the loaded mapping is of
    # the old file, so the model is loaded again, and the response says why.
    fresh = tmp_path / "fresh.gguf"
    shutil.copyfile(packaged_gguf(), fresh)
    os.chmod(fresh, 0o444)
    os.replace(fresh, blob)
    again = chat(s)
    assert again.status_code == 200, again.text
    assert "file in the store changed" in again.headers.get("x-locara-reload", "")
    assert alive(s)
    assert chat(s).headers.get("x-locara-reload") is None  # loaded from the new file now
