"""Secure by default: tokens per app, Host-header check, closed CORS, body size limit.

Tokens are created and revoked with the real ``locara token`` command; the server
re-reads the token file, so a revocation takes effect without a restart.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import httpx
import ollama
import openai
import pytest

from conftest import run_cli
from server_harness import RunningServer, clone_home, free_port, running_server, wait_until

MODEL = "smollm2-135m-instruct"
MSGS = [{"role": "user", "content": "Hi"}]
CHAT = {"model": MODEL, "messages": MSGS, "max_tokens": 2}


@pytest.fixture(scope="module")
def home(shared_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_home(shared_home, tmp_path_factory.mktemp("security") / "home")


@pytest.fixture(scope="module")
def token(home: Path) -> str:
    r = run_cli("token", "create", "--app", "notes", "--json", home=home)
    assert r.returncode == 0, r.stderr
    data = json.loads(r.stdout)
    assert data["app"] == "notes"
    return str(data["token"])


@pytest.fixture(scope="module")
def server(home: Path, token: str) -> Iterator[RunningServer]:
    env = {"LOCARA_MAX_BODY_BYTES": "4096", "LOCARA_CORS_ORIGINS": "http://good.example"}
    with running_server(home, env) as s:
        yield s


def auth(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def test_token_file_never_holds_the_token(home: Path, token: str) -> None:
    text = (home / "server" / "tokens.json").read_text()
    assert token not in text and "notes" in text
    assert (home / "server" / "tokens.json").stat().st_mode & 0o077 == 0
    listing = run_cli("token", "list", home=home)
    assert "notes" in listing.stdout and token not in listing.stdout


def test_missing_or_wrong_token_is_401(server: RunningServer) -> None:
    r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT)
    assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer"
    err = r.json()["error"]
    assert err["type"] == "authentication_error" and "locara token create" in err["hint"]
    r = httpx.post(f"{server.url}/v1/chat/completions", json=CHAT, headers=auth("lc_bad_token"))
    assert r.status_code == 401
    r = httpx.post(f"{server.url}/api/chat", json=CHAT)
    assert r.status_code == 401 and isinstance(r.json()["error"], str)
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key="wrong", max_retries=0)
    with pytest.raises(openai.AuthenticationError):
        client.models.list()
    assert httpx.get(f"{server.url}/health").status_code == 200  # liveness stays open


def test_valid_token_works_with_both_clients_and_is_recorded(
    server: RunningServer, token: str, home: Path
) -> None:
    client = openai.OpenAI(base_url=f"{server.url}/v1", api_key=token, max_retries=0)
    r = client.chat.completions.create(model=MODEL, messages=MSGS, max_tokens=2)  # type: ignore[arg-type]
    assert r.choices[0].message.content is not None
    oc = ollama.Client(host=server.url, headers=auth(token))
    assert oc.chat(model=MODEL, messages=MSGS, options={"num_predict": 2}).done

    def rows() -> list[tuple[str, str]]:
        with sqlite3.connect(home / "usage.db") as db:
            return list(db.execute("SELECT app, surface FROM requests WHERE app = 'notes'"))

    # The ledger knows which app made each request.
    assert wait_until(lambda: {("notes", "openai"), ("notes", "ollama")} <= set(rows()))


def test_revoked_token_is_refused_at_once(server: RunningServer, home: Path) -> None:
    created = json.loads(run_cli("token", "create", "--app", "tmp", "--json", home=home).stdout)
    ok = httpx.get(f"{server.url}/v1/models", headers=auth(created["token"]))
    assert ok.status_code == 200
    r = run_cli("token", "revoke", created["id"], home=home)
    assert r.returncode == 0 and "revoked" in r.stdout
    r2 = httpx.get(f"{server.url}/v1/models", headers=auth(created["token"]))
    assert r2.status_code == 401 and "revoked" in r2.json()["error"]["message"]


def test_foreign_host_header_is_refused(server: RunningServer, token: str) -> None:
    for host in ("evil.example", "evil.example:11435", "192.168.1.10"):
        r = httpx.get(f"{server.url}/v1/models", headers={**auth(token), "Host": host})
        assert r.status_code == 403, host
        assert r.json()["error"]["code"] == "host_not_allowed"
    for host in (f"localhost:{server.port}", f"127.0.0.1:{server.port}", "[::1]"):
        r = httpx.get(f"{server.url}/v1/models", headers={**auth(token), "Host": host})
        assert r.status_code == 200, host


def test_oversized_body_is_413(server: RunningServer, token: str) -> None:
    big = {**CHAT, "messages": [{"role": "user", "content": "x" * 10_000}]}
    r = httpx.post(f"{server.url}/v1/chat/completions", json=big, headers=auth(token))
    assert r.status_code == 413 and r.json()["error"]["code"] == "body_too_large"

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield json.dumps(big).encode()

    r = httpx.post(f"{server.url}/api/chat", content=chunks(), headers=auth(token))
    assert r.status_code == 413 and "limit is 4096" in r.json()["error"]


def test_cors_only_for_configured_origins(server: RunningServer, token: str) -> None:
    pre = {
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization",
    }
    good = httpx.options(
        f"{server.url}/v1/chat/completions", headers={"Origin": "http://good.example", **pre}
    )
    assert good.status_code == 200
    assert good.headers["access-control-allow-origin"] == "http://good.example"
    evil = httpx.options(
        f"{server.url}/v1/chat/completions", headers={"Origin": "http://evil.example", **pre}
    )
    assert "access-control-allow-origin" not in evil.headers
    r = httpx.get(
        f"{server.url}/v1/models", headers={"Origin": "http://evil.example", **auth(token)}
    )
    assert "access-control-allow-origin" not in r.headers


def test_non_loopback_bind_refuses_to_start_without_tokens(tmp_path: Path) -> None:
    r = run_cli(
        "serve", "--host", "0.0.0.0", "--port", str(free_port()), home=tmp_path / "h", timeout=60
    )
    assert r.returncode == 1
    assert "refusing to listen on 0.0.0.0 without API tokens" in r.stderr
    assert "locara token create" in r.stderr


def test_non_loopback_bind_with_tokens_requires_them(
    home: Path, token: str, tmp_path: Path
) -> None:
    other = clone_home(home, tmp_path / "home")  # same tokens; one server per home
    (other / "run" / "server.json").unlink()
    with running_server(other, host="0.0.0.0") as s:
        assert httpx.get(f"{s.url}/v1/models").status_code == 401
        # Beyond loopback the Host is whatever name the network uses; tokens guard it.
        r = httpx.get(f"{s.url}/v1/models", headers={**auth(token), "Host": "my-box.lan"})
        assert r.status_code == 200
