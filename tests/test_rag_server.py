"""Collections over HTTP on the real server: behind the token, query, ask (JSON and SSE),
verify, and a chat completion grounded through the ``locara.rag`` extra field."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from conftest import run_cli
from server_harness import RunningServer, clone_home, running_server

RIVERS = (
    "# Rivers\n\nThe Danube flows through Vienna and Budapest. "
    "The Rhine flows through Basel and Cologne.\n"
)


@pytest.fixture(scope="module")
def home(shared_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    base = tmp_path_factory.mktemp("rag-server")
    h = clone_home(shared_home, base / "home")
    docs = base / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text(RIVERS)
    (docs / "cities.txt").write_text("Berlin is the capital of Germany.\n")
    r = run_cli("rag", "add", "geo", str(docs), home=h)
    assert r.returncode == 0, r.stderr
    return h


@pytest.fixture(scope="module")
def token(home: Path) -> str:
    r = run_cli("token", "create", "--app", "kb", "--json", home=home)
    assert r.returncode == 0, r.stderr
    return str(json.loads(r.stdout)["token"])


@pytest.fixture(scope="module")
def server(home: Path, token: str) -> Iterator[RunningServer]:
    with running_server(home) as s:
        yield s


@pytest.fixture(scope="module")
def client(server: RunningServer, token: str) -> Iterator[httpx.Client]:
    with httpx.Client(
        base_url=server.url, headers={"Authorization": f"Bearer {token}"}, timeout=120
    ) as c:
        yield c


def test_rag_routes_need_the_token(server: RunningServer) -> None:
    r = httpx.get(f"{server.url}/v1/rag")
    assert r.status_code == 401
    r = httpx.post(f"{server.url}/v1/rag/geo/query", json={"query": "Danube"})
    assert r.status_code == 401


def test_list_status_and_query(client: httpx.Client) -> None:
    (col,) = client.get("/v1/rag").json()["data"]
    assert col["collection"] == "geo" and col["documents"] == 2
    status = client.get("/v1/rag/geo").json()
    assert {Path(d["path"]).name for d in status["data"]} == {"rivers.md", "cities.txt"}
    r = client.post("/v1/rag/geo/query", json={"query": "river through Basel", "k": 2})
    assert r.status_code == 200, r.text
    top = r.json()["data"][0]
    assert top["path"].endswith("rivers.md") and len(top["sha256"]) == 64
    assert set(top["ranks"]) == {"keyword", "vector"} and top["end"] > top["start"]
    kw = client.post("/v1/rag/geo/query", json={"query": "Basel", "vector_weight": 0}).json()
    assert all(set(h["ranks"]) == {"keyword"} for h in kw["data"])


def test_bad_requests(client: httpx.Client) -> None:
    r = client.post("/v1/rag/nope/query", json={"query": "x"})
    assert r.status_code == 404
    err = r.json()["error"]
    assert err["code"] == "collection_not_found" and "locara rag add nope" in err["hint"]
    r = client.post("/v1/rag/geo/query", json={"query": "x", "k": 0})
    assert r.status_code == 400 and r.json()["error"]["param"] == "k"
    r = client.post("/v1/rag/geo/query", json={"query": ""})
    assert r.status_code == 400
    r = client.post("/v1/rag/geo/query", json={"query": "x", "nonsense": 1})
    assert r.status_code == 400
    r = client.post("/v1/rag/..%2Fetc/query", json={"query": "x"})
    assert r.status_code in (400, 404)
    r = client.post("/v1/rag/a.b/query", json={"query": "x"})
    assert r.status_code == 404
    r = client.post(
        "/v1/rag/geo/query", json={"query": "x", "keyword_weight": 0, "vector_weight": 0}
    )
    assert r.status_code == 400 and "both retriever weights are 0" in r.json()["error"]["message"]


def test_ask_json_and_verify(client: httpx.Client) -> None:
    body = {"question": "Which cities does the Danube flow through?", "max_tokens": 64}
    r = client.post("/v1/rag/geo/ask", json=body)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["model"] == "smollm2-135m-instruct" and answer["sources"]
    assert answer["citations"] and all(c["verified"] for c in answer["citations"])
    v = client.post("/v1/rag/verify", json={"citations": answer["citations"]}).json()
    assert v["verified"] is True
    forged = [{**answer["citations"][0], "start": answer["citations"][0]["start"] + 2}]
    v = client.post("/v1/rag/verify", json={"citations": forged}).json()
    assert v["verified"] is False and "not bytes" in v["data"][0]["problem"]


def test_ask_streams_sources_deltas_then_checked_answer(client: httpx.Client) -> None:
    body = {
        "question": "Which cities does the Danube flow through?",
        "max_tokens": 64,
        "stream": True,
    }
    events = []
    with client.stream("POST", "/v1/rag/geo/ask", json=body) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(line[6:])
    assert events[-1] == "[DONE]"
    parsed = [json.loads(e) for e in events[:-1]]
    assert parsed[0]["type"] == "sources" and parsed[-1]["type"] == "answer"
    deltas = "".join(e["text"] for e in parsed if e["type"] == "delta")
    assert deltas == parsed[-1]["answer"] and parsed[-1]["citations"]


def test_chat_completion_grounded_in_a_collection(client: httpx.Client) -> None:
    body = {
        "model": "smollm2-135m-instruct",
        "messages": [{"role": "user", "content": "Which river flows through Basel?"}],
        "max_tokens": 48,
        "temperature": 0,
        "locara": {"rag": {"collection": "geo", "k": 2}},
    }
    r = client.post("/v1/chat/completions", json=body)
    assert r.status_code == 200, r.text
    assert r.json()["usage"]["prompt_tokens"] > 60  # the sources went into the prompt
    plain = client.post("/v1/chat/completions", json={**body, "locara": None}).json()
    assert plain["usage"]["prompt_tokens"] < r.json()["usage"]["prompt_tokens"]
    bad = client.post("/v1/chat/completions", json={**body, "locara": {"rag": {"k": 2}}})
    assert bad.status_code == 400 and "locara.rag" in bad.json()["error"]["message"]
    missing = client.post(
        "/v1/chat/completions", json={**body, "locara": {"rag": {"collection": "nope"}}}
    )
    assert missing.status_code == 404
