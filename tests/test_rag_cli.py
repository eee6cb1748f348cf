"""``locara rag`` as users run it: a subprocess per command, the real models.

Ingest, query and ask run with networking refused for the process (an audit-hook
guard loaded through PYTHONPATH, plus LOCARA_OFFLINE=1); a process killed in the
middle of replacing a document leaves the old version whole.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import run_cli
from locara.rag.collection import Collection
from locara.settings import Settings
from rag_material import install_egress_guard
from server_harness import clone_home

RIVERS = (
    "# Rivers\n\nThe Danube flows through Vienna and Budapest. "
    "The Rhine flows through Basel and Cologne.\n"
)


@pytest.fixture(scope="module")
def home(shared_home: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    return clone_home(shared_home, tmp_path_factory.mktemp("rag-cli") / "home")


@pytest.fixture(scope="module")
def guard(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    d = tmp_path_factory.mktemp("guard")
    log = install_egress_guard(d)
    path = os.pathsep.join([str(d), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return {"PYTHONPATH": path, "RAG_EGRESS_LOG": str(log), "LOCARA_OFFLINE": "1"}


def test_the_guard_refuses_egress(guard: dict[str, str]) -> None:
    code = "import socket; socket.create_connection(('192.0.2.1', 80), timeout=1)"
    env = {**os.environ, **guard}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert proc.returncode != 0 and "egress blocked" in proc.stderr
    log = Path(guard["RAG_EGRESS_LOG"])
    assert "192.0.2.1" in log.read_text()
    log.unlink()


def test_add_query_ask_verify_without_network(
    home: Path, guard: dict[str, str], tmp_path: Path
) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "rivers.md").write_text(RIVERS)
    (docs / "cities.txt").write_text("Berlin is the capital of Germany.\r\nParis is in France.\r\n")
    r = run_cli("rag", "add", "geo", str(docs), home=home, env=guard)
    assert r.returncode == 0, r.stderr
    assert "added" in r.stdout and "rivers.md" in r.stdout

    r = run_cli(
        "rag", "query", "geo", "Which river flows through Basel?", "--json", home=home, env=guard
    )
    assert r.returncode == 0, r.stderr
    hits = json.loads(r.stdout)
    top = hits[0]
    assert top["path"].endswith("rivers.md") and set(top["ranks"]) == {"keyword", "vector"}
    raw = (docs / "rivers.md").read_bytes()
    assert raw[top["start"] : top["end"]].decode() == top["text"]

    q = "Which cities does the Danube flow through?"
    r = run_cli("rag", "ask", "geo", q, "--json", home=home, env=guard)
    answer = json.loads(r.stdout)
    assert answer["citations"], answer
    for c in answer["citations"]:
        assert c["verified"] and raw[c["start"] : c["end"]].decode() == c["quote"]
    assert r.returncode == (0 if answer["sourced"] else 1)
    assert not Path(guard["RAG_EGRESS_LOG"]).exists()  # nothing tried to leave the machine

    saved = tmp_path / "answer.json"
    saved.write_text(r.stdout)
    v = run_cli("rag", "verify", str(saved), home=home)
    assert v.returncode == 0 and v.stdout.startswith("ok "), v.stderr
    forged = {**answer["citations"][0], "quote": "The Danube flows through Paris."}
    v = run_cli("rag", "verify", home=home, input=json.dumps([forged]))
    assert v.returncode == 1 and "FAIL" in v.stdout and "not bytes" in v.stdout
    assert "error: 1 of 1 citation(s)" in v.stderr

    r = run_cli("rag", "status", "geo", "--json", home=home)
    status = json.loads(r.stdout)
    assert status["documents"] == 2 and len(status["embedding_sha256"]) == 64
    assert "all-minilm-l6-v2" in run_cli("rag", "ls", home=home).stdout


def test_kill_during_ingest_keeps_the_old_version(home: Path, tmp_path: Path) -> None:
    doc = tmp_path / "book.txt"
    doc.write_text("The first edition has one short chapter about owls.\n")
    assert run_cli("rag", "add", "book", str(doc), home=home).returncode == 0
    settings = Settings.from_env({"LOCARA_HOME": str(home)})
    with Collection.open(settings, "book") as col:
        (old,) = col.documents()

    # The second edition takes many batches to embed: kill the writer in the middle.
    doc.write_text(
        "".join(f"Chapter {i} is about the habits of bird number {i}.\n\n" * 8 for i in range(110))
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCARA_")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "locara", "rag", "add", "book", str(doc)],
        env={**env, "LOCARA_HOME": str(home)},
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stderr is not None
    for line in proc.stderr:
        if line.startswith("embedded 32 chunks"):
            proc.send_signal(signal.SIGKILL)
            break
    proc.wait()
    assert proc.returncode == -signal.SIGKILL

    with Collection.open(settings, "book") as col:
        (doc_row,) = col.documents()
        assert (doc_row.sha256, doc_row.n_chunks) == (old.sha256, old.n_chunks)
        counts = [
            col.conn.execute(f"SELECT count(*) FROM {t}").fetchone()[0]
            for t in ("chunks", "chunks_fts", "chunks_vec")
        ]
        assert counts == [old.n_chunks] * 3
    r = run_cli("rag", "query", "book", "owls", "--json", home=home)
    assert json.loads(r.stdout)[0]["sha256"] == old.sha256

    r = run_cli("rag", "add", "book", str(doc), home=home)
    assert r.returncode == 0 and "updated" in r.stdout, r.stderr
    with Collection.open(settings, "book") as col:
        assert col.documents()[0].n_chunks > 32


def test_errors_are_one_line_with_a_hint(home: Path, tmp_path: Path) -> None:
    r = run_cli("rag", "query", "nope", "anything", home=home)
    assert r.returncode == 1
    assert (
        r.stderr.splitlines()
        == [
            "error: no collection named 'nope'",
            r.stderr.splitlines()[1],
        ]
        and "locara rag add nope PATH" in r.stderr
    )
    r = run_cli("rag", "add", "../etc", str(tmp_path), home=home)
    assert r.returncode == 1 and "invalid collection name '../etc'" in r.stderr
    (tmp_path / "a.docx").write_bytes(b"PK\x03\x04")
    r = run_cli("rag", "add", "misc", str(tmp_path / "a.docx"), home=home)
    assert r.returncode == 1
    assert (
        "unsupported file type '.docx'" in r.stderr and "supported types: .htm, .html" in r.stderr
    )
    assert "error: 1 of 1 file(s) were not added" in r.stderr
    r = run_cli("rag", "add", "misc", str(tmp_path / "missing.txt"), home=home)
    assert r.returncode == 1 and "no such file or directory" in r.stderr
    r = run_cli(
        "rag", "add", "geo2", str(tmp_path), "--embedding-model", "smollm2-135m-instruct", home=home
    )
    assert r.returncode == 1 and "is not an embedding model" in r.stderr
    r = run_cli("rag", "add", "geo2", str(tmp_path), "--max-size", "lots", home=home)
    assert r.returncode == 1 and "invalid size 'lots'" in r.stderr
    r = run_cli("rag", "verify", home=home, input="not json")
    assert r.returncode == 1 and "not JSON" in r.stderr


def test_reindex_and_remove(home: Path, tmp_path: Path) -> None:
    doc = tmp_path / "note.txt"
    doc.write_text("Remember to water the ferns on Tuesday.\n")
    assert run_cli("rag", "add", "notes", str(doc), home=home).returncode == 0
    r = run_cli("rag", "reindex", "notes", home=home)
    assert r.returncode == 0 and "re-embedded 1 chunks" in r.stdout, r.stderr
    assert json.loads(run_cli("rag", "query", "notes", "ferns", "--json", home=home).stdout)

    settings = Settings.from_env({"LOCARA_HOME": str(home)})
    with Collection.open(settings, "notes") as col:
        sha = col.documents()[0].sha256
    blob = home / "rag" / "blobs" / sha
    assert blob.exists()
    r = run_cli("rag", "rm", "notes", str(doc), home=home)
    assert r.returncode == 0 and "unreferenced document blob" in r.stdout
    assert not blob.exists()
    r = run_cli("rag", "rm", "notes", home=home)
    assert r.returncode == 0 and not (home / "rag" / "notes").exists()
