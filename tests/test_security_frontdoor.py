"""Issue #17: one request must never take the server down, nor act for a web page.

Each test goes through the real ``locara serve`` on loopback (or the real CLI): a
cross-site page cannot post to it, model names cannot write into /metrics, a broken
token file closes the doors with a 503 instead of a 500, ``/api/status`` needs a token
once tokens exist (and ``locara status`` still works), a planted symlink in the store's
lock directory is refused by name, and the OpenAPI document declares the codes sent.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import DEFAULT_SHA, run_cli
from server_harness import RunningServer, clone_home, metric, running_server, wait_until

MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "Hi"}]
CHAT = {"model": MODEL, "messages": MSGS, "max_tokens": 1}
GOOD = "http://good.example"


@pytest.fixture(scope="module")
def open_server(
    shared_home: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    """A loopback server with no tokens (the default, most exposed to CSRF) and one CORS origin."""
    home = clone_home(shared_home, tmp_path_factory.mktemp("frontdoor") / "home")
    with running_server(home, {"LOCARA_CORS_ORIGINS": GOOD}) as s:
        yield s


@pytest.fixture
def private_home(shared_home: Path, tmp_path: Path) -> Path:
    return clone_home(shared_home, tmp_path / "home")


def create_token(home: Path, app: str) -> str:
    r = run_cli("token", "create", "--app", app, "--json", home=home)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["token"])


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


# -- item 5: /metrics injection and unbounded series -----------------------------------
def test_model_names_cannot_write_into_metrics(open_server: RunningServer) -> None:
    url = open_server.url
    injected = 'x"}\nlocara_injected_total 1\n# '
    names = [injected, "no-such-model-1", "no-such-model-2", "a\\b"]
    for name in names:
        r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "model": name})
        assert r.status_code in (400, 404), r.text
    r = httpx.post(f"{url}/api/chat", json={"model": "no-such-model-3", "messages": MSGS})
    assert r.status_code == 404
    # A known model that fails to load keeps its (bounded) catalog id.
    r = httpx.post(f"{url}/v1/chat/completions", json={**CHAT, "num_ctx": 10**6})
    assert r.status_code == 400

    text = httpx.get(f"{url}/metrics").text
    assert "locara_injected_total" not in text
    assert not any(n in text for n in ("no-such-model", "a\\b", 'x"}'))
    labels = {"model": "(unresolved)", "status": "error"}
    assert metric(text, "locara_requests_total", surface="openai", **labels) == 4
    assert metric(text, "locara_requests_total", surface="ollama", **labels) == 1
    assert metric(text, "locara_requests_total", surface="openai", model=MODEL, status="error")
    for line in text.splitlines():  # every line is a comment or one well-formed sample
        assert line.startswith("#") or line.startswith("locara_"), line

    def ledger_models() -> set[str]:
        with sqlite3.connect(open_server.home / "usage.db") as db:
            return {m for (m,) in db.execute("SELECT model_id FROM requests")}

    assert wait_until(lambda: "(unresolved)" in ledger_models())
    assert not any("no-such-model" in m for m in ledger_models())


def test_metrics_labels_are_escaped_per_the_text_format() -> None:
    from locara.server.metrics import Metrics

    m = Metrics()
    m.observe("openai", 'q"uo\\te\nlocara_fake 1', "ok")
    text = m.render([], {})
    assert 'model="q\\"uo\\\\te\\nlocara_fake 1"' in text
    assert not any(line.startswith("locara_fake") for line in text.splitlines())


# -- item 10: symlinks planted in the store ----------------------------------------------
def test_planted_symlink_in_the_locks_dir_is_refused_by_name(tmp_path: Path) -> None:
    home = tmp_path / "home"
    locks = home / "models" / ".locks"
    locks.mkdir(parents=True)
    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    lock = locks / f"{DEFAULT_SHA}.lock"
    lock.symlink_to(victim)  # a lock library's O_TRUNC would have emptied the victim
    r = run_cli("pull", MODEL, home=home)
    assert r.returncode == 1
    assert str(lock) in r.stderr and f"rm {lock}" in r.stderr
    assert victim.read_text() == "precious"

    lock.unlink()
    assert run_cli("pull", MODEL, home=home).returncode == 0
    lease = locks / f"{DEFAULT_SHA}.use"
    elsewhere = tmp_path / "created-elsewhere"
    lease.unlink(missing_ok=True)
    lease.symlink_to(elsewhere)
    r = run_cli("run", MODEL, "Hi", "--max-tokens", "1", home=home)
    assert r.returncode == 1 and f"rm {lease}" in r.stderr, r.stderr
    assert not elsewhere.exists()  # O_CREAT through the link would have created it


def test_planted_partial_download_link_is_not_taken_over(tmp_path: Path) -> None:
    from locara.settings import Settings
    from locara.store.fetch import claim_partial

    settings = Settings.from_env({"LOCARA_HOME": str(tmp_path / "home")})
    settings.tmp_dir.mkdir(parents=True)
    target = tmp_path / "target"
    target.write_text("x" * 100)  # longer than any real orphan, so it would be chosen
    planted = settings.tmp_dir / f"{DEFAULT_SHA}.{2**22 + 7}-deadbeef.part"
    planted.symlink_to(target)
    mine = claim_partial(settings, DEFAULT_SHA)
    assert not mine.exists() and not planted.is_symlink()
    assert target.read_text() == "x" * 100


# -- OpenAPI: the document declares the status codes really sent ------------------------
def test_openapi_declares_400_not_422(open_server: RunningServer) -> None:
    doc = httpx.get(f"{open_server.url}/openapi.json").json()
    assert '"422"' not in json.dumps(doc)
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "503"} <= set(chat)
    ref = chat["400"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/OpenAIError"
    pull = doc["paths"]["/api/pull"]["post"]["responses"]
    assert pull["403"]["content"]["application/json"]["schema"]["$ref"].endswith("OllamaError")
    r = httpx.post(f"{open_server.url}/v1/chat/completions", json={"model": MODEL})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param"}

