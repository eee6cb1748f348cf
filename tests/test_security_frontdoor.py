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
from locara.engine.pool import PoolCounters
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


# -- item 3: cross-site request forgery ---------------------------------------------------
def test_cross_origin_posts_are_refused(open_server: RunningServer) -> None:
    url = open_server.url
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    # What a page's fetch() can send without a preflight: text/plain, read as JSON.
    r = httpx.post(f"{url}/v1/chat/completions", content=json.dumps(CHAT), headers=evil)
    assert r.status_code == 403, r.text
    err = r.json()["error"]
    assert err["code"] == "origin_not_allowed" and err["type"] == "permission_error"
    assert "http://evil.example" in err["message"] and "LOCARA_CORS_ORIGINS" in err["hint"]
    # Pinning a model in memory or pulling one are refused the same way (Ollama body).
    pin = {"model": MODEL, "keep_alive": -1}
    r = httpx.post(f"{url}/api/generate", content=json.dumps(pin), headers=evil)
    assert r.status_code == 403 and "CSRF" in r.json()["error"]
    r = httpx.post(f"{url}/api/pull", content=json.dumps({"model": MODEL}), headers=evil)
    assert r.status_code == 403
    r = httpx.request("DELETE", f"{url}/api/delete", json={"model": MODEL}, headers=evil)
    assert r.status_code == 403
    # A sandboxed page sends "Origin: null"; a browser without Origin still says cross-site.
    for headers in ({"Origin": "null"}, {"Sec-Fetch-Site": "cross-site"}):
        r = httpx.post(f"{url}/api/generate", json=pin, headers=headers)
        assert r.status_code == 403, headers
    # Another port of localhost is another origin too.
    other = {"Origin": "http://localhost:3000", "Sec-Fetch-Site": "same-site"}
    assert httpx.post(f"{url}/api/generate", json=pin, headers=other).status_code == 403
    assert httpx.get(f"{url}/api/ps").json()["models"] == []  # nothing was loaded


def test_programs_same_origin_pages_and_allowed_origins_still_work(
    open_server: RunningServer,
) -> None:
    url, port = open_server.url, open_server.port
    show = {"model": MODEL}
    assert httpx.post(f"{url}/api/show", json=show).status_code == 200  # curl, SDKs: no Origin
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        # The dashboard served at / posts with its own origin, which equals the Host.
        page = {"Host": host, "Origin": f"http://{host}", "Sec-Fetch-Site": "same-origin"}
        assert httpx.post(f"{url}/api/show", json=show, headers=page).status_code == 200, host
    r = httpx.post(f"{url}/v1/chat/completions", json=CHAT, headers={"Origin": GOOD}, timeout=120)
    assert r.status_code == 200 and r.headers["access-control-allow-origin"] == GOOD
    # Reads are not refused: the browser's CORS rules already keep their answers from the page.
    r = httpx.get(f"{url}/v1/models", headers={"Origin": "http://evil.example"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers


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
    text = m.render([], {}, PoolCounters(0, 0, 0))
    assert 'model="q\\"uo\\\\te\\nlocara_fake 1"' in text
    assert not any(line.startswith("locara_fake") for line in text.splitlines())


# -- item 7: a corrupt token file ------------------------------------------------------
def test_corrupt_token_file_is_a_503_and_health_says_why(private_home: Path) -> None:
    tokens = private_home / "server" / "tokens.json"
    with running_server(private_home) as s:
        tokens.parent.mkdir(parents=True, exist_ok=True)
        for garbage in ("{not json", "[]", '{"tokens": [{"id": 1}]}'):
            tokens.write_text(garbage)
            r = httpx.get(f"{s.url}/v1/models")
            assert r.status_code == 503, (garbage, r.text)
            err = r.json()["error"]
            assert err["code"] == "token_store_unreadable" and str(tokens) in err["message"]
            assert "locara token create" in err["hint"]
            r = httpx.post(f"{s.url}/api/chat", json={"model": MODEL, "messages": MSGS})
            assert r.status_code == 503 and str(tokens) in r.json()["error"]
            health = httpx.get(f"{s.url}/health")
            assert health.status_code == 200
            body = health.json()
            assert body["status"] == "degraded" and body["auth"]["ok"] is False
            assert str(tokens) in body["auth"]["error"]
        assert str(tokens) in s.log_text()  # the operator's log names the file
        tokens.unlink()  # fixed: the server opens again without a restart
        assert httpx.get(f"{s.url}/v1/models").status_code == 200
        assert httpx.get(f"{s.url}/health").json()["auth"] == {"ok": True}


# -- item 8: /api/status needs a token once tokens exist -------------------------------
def test_status_needs_a_token_and_locara_status_still_works(private_home: Path) -> None:
    token = create_token(private_home, "notes")
    with running_server(private_home) as s:
        url = f"{s.url}/api/status"
        r = httpx.get(url)  # any local process (a proxy, a rebinding page) used to read it
        assert r.status_code == 401 and "locara token create" in r.json()["hint"]
        assert httpx.get(url, headers=bearer("lc_wrong_token")).status_code == 401
        assert httpx.get(url, headers=bearer(token)).status_code == 200

        state_file = private_home / "run" / "server.json"
        assert state_file.stat().st_mode & 0o077 == 0  # it holds the status key
        key = json.loads(state_file.read_text())["status_key"]
        assert httpx.get(url, headers=bearer(key)).json()["requests"] >= 0
        # The status key opens /api/status only.
        assert httpx.get(f"{s.url}/v1/models", headers=bearer(key)).status_code == 401

        status = run_cli("status", "--json", home=private_home)
        info = json.loads(status.stdout)
        assert info["running"] and "error" not in info, info
        assert info["requests"] == 0 and info["loaded"] == []
        assert "status_key" not in info and key not in status.stdout
        text = run_cli("status", home=private_home).stdout
        assert "requests" in text and "did not answer" not in text


# -- item 12: revoking the last token ------------------------------------------------------
def test_revoking_the_last_token_says_the_server_is_open_again(private_home: Path) -> None:
    first = create_token(private_home, "one")
    create_token(private_home, "two")
    with running_server(private_home) as s:
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        r = run_cli("token", "revoke", "two", home=private_home)
        assert r.returncode == 0 and "1 token(s) left" in r.stdout
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        assert httpx.get(f"{s.url}/v1/models", headers=bearer(first)).status_code == 200
        r = run_cli("token", "revoke", "one", home=private_home)
        assert r.returncode == 0 and "revoked" in r.stdout
        assert "no tokens left" in r.stdout and "without a token again" in r.stdout
        assert "locara token create" in r.stdout
        assert httpx.get(f"{s.url}/v1/models").status_code == 200  # as the message says


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
    assert "HTTPValidationError" not in json.dumps(doc)  # FastAPI's 422 validation body
    assert "422" not in doc["paths"]["/v1/embeddings"]["post"]["responses"]
    chat = doc["paths"]["/v1/chat/completions"]["post"]["responses"]
    assert {"400", "401", "403", "404", "413", "503"} <= set(chat)
    assert chat["422"]["description"].startswith("The model's chat template")  # really sent
    ref = chat["400"]["content"]["application/json"]["schema"]["$ref"]
    assert ref == "#/components/schemas/OpenAIError"
    pull = doc["paths"]["/api/pull"]["post"]["responses"]
    assert pull["403"]["content"]["application/json"]["schema"]["$ref"].endswith("OllamaError")
    r = httpx.post(f"{open_server.url}/v1/chat/completions", json={"model": MODEL})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"message", "type", "param"}
