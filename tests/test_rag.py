"""Private RAG in process: offsets that round-trip to the original bytes, ingest / update /
remove, hybrid fusion, citations that verify (and forged ones that do not), bad input.

The real embedding model (all-MiniLM-L6-v2, converted on first use) embeds everything;
one home is shared by the module, each test uses its own collection.
"""

from __future__ import annotations

import html
import os
import re
import stat
import tracemalloc
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import pytest

from locara.errors import LocaraError, UsageError
from locara.rag.answer import Citation, cite, verify
from locara.rag.chunking import ChunkConfig, chunk_views
from locara.rag.collection import (
    Collection,
    MissingCollectionError,
    check_name,
    collect_blobs,
    documents_store,
)
from locara.rag.embedder import LocalEmbedder, Vectors
from locara.rag.extract import html_view, text_views
from locara.rag.ingest import AddReport, add_paths
from locara.rag.search import KEYWORD_WEIGHT, RRF_K, VECTOR_WEIGHT, Fusion, search
from locara.settings import Settings
from rag_material import make_pdf


class CountingEmbedder:
    """The real embedder, counting the texts it was asked to embed."""

    def __init__(self, inner: LocalEmbedder) -> None:
        self.inner = inner
        self.model_id = inner.model_id
        self.sha256 = inner.sha256
        self.texts = 0

    def embed(self, texts: Sequence[str]) -> Vectors:
        self.texts += len(texts)
        return self.inner.embed(texts)


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    return Settings.from_env({"LOCARA_HOME": str(tmp_path_factory.mktemp("rag-home"))})


@pytest.fixture(scope="module")
def embedder(settings: Settings) -> Iterator[CountingEmbedder]:
    e = LocalEmbedder(settings)
    yield CountingEmbedder(e)
    e.close()


def _collection(settings: Settings, name: str, embedder: CountingEmbedder) -> Collection:
    return Collection.open_or_create(settings, name, embedder.model_id, embedder.sha256, 384)


def _add(
    settings: Settings, col: Collection, paths: list[Path], embedder: CountingEmbedder, **kw: object
) -> AddReport:
    return add_paths(settings, col, paths, embedder, **kw)  # type: ignore[arg-type]


# -- offsets -------------------------------------------------------------------------
MIXED = (
    "Grüße aus Köln — the café’s crème brûlée.\r\n"
    "日本語のテキストも含まれています。\r\n\r\n"
    "Emoji 🚀 and CRLF line ends stay as they are.\r\n" * 3
)


@pytest.mark.parametrize("block", [1, 3, 7, 1 << 20])
def test_offsets_round_trip_to_the_original_bytes(block: int, tmp_path: Path) -> None:
    data = MIXED.encode()
    blocks = iter([data[i : i + block] for i in range(0, len(data), block)])
    chunks = list(chunk_views(text_views(tmp_path / "m.txt", blocks), ChunkConfig(60, 10)))
    assert len(chunks) > 3
    for c in chunks:
        assert data[c.start : c.end].decode("utf-8") == c.text
    assert b"\r\n" in b"".join(data[c.start : c.end] for c in chunks)
    # Blocks that cut multi-byte characters give the same chunks as one block.
    whole = list(chunk_views(text_views(tmp_path / "m.txt", iter([data])), ChunkConfig(60, 10)))
    assert [(c.start, c.end) for c in chunks] == [(c.start, c.end) for c in whole]


def test_html_offsets_cover_the_text_and_its_markup(tmp_path: Path) -> None:
    src = (
        "<html><head><style>p { color: red }</style><script>var x = 1;</script></head>"
        "<body><h1>Café &amp; crème</h1><p>Ünïcode text &lt;here&gt; and &#8364;5.</p>"
        "<p>Second paragraph with more words.</p></body></html>"
    ).encode()
    view = html_view(tmp_path / "p.html", src)
    assert "color" not in view.text and "var x" not in view.text
    assert "Café & crème" in view.text and "<here>" in view.text and "€5." in view.text
    for c in chunk_views([view], ChunkConfig(50, 0)):
        raw = src[c.start : c.end].decode()
        visible = html.unescape(re.sub(r"<[^>]+>", " ", raw))
        assert " ".join(visible.split()) == " ".join(c.text.split())


def test_a_large_file_is_chunked_in_bounded_memory(tmp_path: Path) -> None:
    path = tmp_path / "big.txt"
    line = ("All work and no play makes a dull index. " * 20 + "\n").encode()
    with path.open("wb") as f:
        for _ in range(20_000):  # ~16 MB
            f.write(line)
    tracemalloc.start()
    with path.open("rb") as f:
        n = sum(
            1
            for _ in chunk_views(
                text_views(path, iter(lambda: f.read(1 << 20), b"")), ChunkConfig(800, 100)
            )
        )
    _, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert n > 15_000
    assert peak < 12 * 1024 * 1024  # a block and its offsets, never the whole 16 MB file


# -- ingest, update, remove -----------------------------------------------------------
def test_add_update_remove(settings: Settings, embedder: CountingEmbedder, tmp_path: Path) -> None:
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.txt").write_text("Glaciers in the Alps are retreating quickly.\n")
    (docs / "b.md").write_text("# Volcanoes\n\nEtna is an active volcano in Sicily.\n")
    (docs / "c.pdf").write_bytes(
        make_pdf(["Page one: penguins live in Antarctica.", "Page two: camels cross deserts."])
    )
    col = _collection(settings, "lifecycle", embedder)
    report = _add(settings, col, [docs], embedder)
    assert len(report.added) == 3 and not report.failed
    stats = col.stats()
    assert (stats["documents"], stats["embedding_model"]) == (3, "all-minilm-l6-v2")

    # Unchanged files: nothing embedded again.
    before = embedder.texts
    report = _add(settings, col, [docs], embedder)
    assert len(report.unchanged) == 3 and embedder.texts == before

    # A changed file replaces its chunks: the old words are gone from both indexes.
    (docs / "a.txt").write_text("Glaciers were replaced by meadows of edelweiss.\n")
    report = _add(settings, col, [docs / "a.txt"], embedder)
    assert [p for p, _ in report.updated] == [str((docs / "a.txt").absolute())]
    assert col.keyword('"retreating"', 10) == []
    assert _consistent(col)

    # PDF: citations point into the stored, hashed extracted text, with pages.
    hits = search(col, "camels deserts", None, 1, Fusion(vector_weight=0))
    pdf = hits[0].chunk
    assert pdf.document.kind == "pdf" and pdf.document.cite_sha256 != pdf.document.sha256
    text = documents_store(settings).read_range(pdf.document.cite_sha256, pdf.start, pdf.end)
    assert b"camels cross deserts" in text and pdf.page == 2

    # Removing a document drops its chunks and vectors, then its unreferenced blobs.
    old = col.document(str((docs / "b.md").absolute()))
    assert old is not None and col.remove_document(old.path)
    gone = collect_blobs(settings)
    assert old.sha256 in gone and not documents_store(settings).has(old.sha256)
    assert _consistent(col) and col.stats()["documents"] == 2
    col.close()


def _consistent(col: Collection) -> bool:
    def count(table: str) -> int:
        return int(col.conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    return count("chunks") == count("chunks_fts") == count("chunks_vec")


def test_collection_files_are_private(
    settings: Settings, embedder: CountingEmbedder, tmp_path: Path
) -> None:
    (tmp_path / "p.txt").write_text("A private note about passwords.\n")
    with _collection(settings, "private", embedder) as col:
        _add(settings, col, [tmp_path / "p.txt"], embedder)
    rag = settings.home / "rag"
    for p in [*rag.rglob("*")]:
        mode = stat.S_IMODE(p.stat().st_mode)
        assert mode & 0o077 == 0, f"{p} is {oct(mode)}"


# -- hybrid search ---------------------------------------------------------------------
def test_hybrid_fusion_ranks(
    settings: Settings, embedder: CountingEmbedder, tmp_path: Path
) -> None:
    texts = {
        "kw.txt": "The zyxomorph protocol handshake uses three messages.",
        "vec.txt": "A feline rested on the rug all afternoon.",
        "both.txt": "The cat slept on the mat; the zyxomorph cat was calm.",
        "noise.txt": "Quarterly revenue grew by four percent.",
    }
    for name, t in texts.items():
        (tmp_path / name).write_text(t)
    with _collection(settings, "fusion", embedder) as col:
        _add(settings, col, [tmp_path], embedder)
        q = "zyxomorph cat"
        vec = embedder.embed([q])[0]
        hits = search(col, q, vec, 4)
        w = {"keyword": KEYWORD_WEIGHT, "vector": VECTOR_WEIGHT}
        for h in hits:  # the score is exactly weighted RRF over the ranks it reports
            assert h.score == pytest.approx(sum(w[k] / (RRF_K + r) for k, r in h.ranks.items()))
        assert hits[0].chunk.document.path.endswith("both.txt")
        assert set(hits[0].ranks) == {"keyword", "vector"}
        # Weights: keyword-only ignores the vector index, and vice versa.
        kw = search(col, q, vec, 4, Fusion(vector_weight=0))
        assert all(set(h.ranks) == {"keyword"} for h in kw)
        vo = search(
            col,
            "a cat sleeping on a carpet",
            embedder.embed(["a cat sleeping on a carpet"])[0],
            2,
            Fusion(keyword_weight=0),
        )
        assert {h.chunk.document.path.rsplit("/", 1)[1] for h in vo} == {"vec.txt", "both.txt"}
        # A heavier weight moves its retriever's favourite up.
        heavy = search(col, q, vec, 1, Fusion(keyword_weight=5.0))
        assert "keyword" in heavy[0].ranks and heavy[0].ranks["keyword"] == 1
    with pytest.raises(UsageError, match="weight"):
        Fusion(keyword_weight=-1)
    with pytest.raises(UsageError, match="both"):
        Fusion(keyword_weight=0, vector_weight=0)


# -- citations -------------------------------------------------------------------------
def test_citations_verify_and_forgeries_do_not(
    settings: Settings, embedder: CountingEmbedder, tmp_path: Path
) -> None:
    (tmp_path / "k.txt").write_text(
        "Käse kommt aus Milch.\r\nThe Rhine flows through Basel and Cologne. "
        "The Danube flows through Vienna.\r\n"
    )
    store = documents_store(settings)
    with _collection(settings, "cite", embedder) as col:
        _add(settings, col, [tmp_path / "k.txt"], embedder)
        hits = search(col, "Rhine", embedder.embed(["Rhine"])[0], 1)
    answer = cite("The Rhine flows through Basel and Cologne [1].", hits, store)
    assert answer.sourced, answer.problems
    (c,) = answer.citations
    original = (tmp_path / "k.txt").read_bytes()
    assert (
        original[c.start : c.end].decode()
        == c.quote
        == "The Rhine flows through Basel and Cologne."
    )
    assert verify(store, c) == (True, None)

    forged = [
        Citation(**{**c.to_dict(), "quote": "The Rhine flows through Paris."}),
        Citation(**{**c.to_dict(), "start": c.start + 1}),
        Citation(**{**c.to_dict(), "sha256": "0" * 64}),
        Citation(**{**c.to_dict(), "end": c.start}),
    ]
    for f in forged:
        ok, why = verify(store, f)
        assert not ok and why, f

    # A marker naming no source marks the answer unsourced.
    bad = cite("The Rhine flows through Basel and Cologne [7].", hits, store)
    assert not bad.sourced and "[7] names no source" in bad.problems[0]
    # An answer nobody can find in the sources cites nothing and is not sourced.
    assert not cite("Bananas are yellow.", hits, store).sourced

    # Bytes changed in the store after the fact: the citation no longer verifies.
    blob = store.path(c.sha256)
    os.chmod(blob, 0o600)
    blob.write_bytes(original.replace(b"Basel", b"Bern!"))
    ok, why = verify(store, c)
    assert not ok and why is not None and "changed" in why


# -- bad input -------------------------------------------------------------------------
def test_bad_files_are_refused_one_line_each_and_the_rest_is_added(
    settings: Settings, embedder: CountingEmbedder, tmp_path: Path
) -> None:
    d = tmp_path / "mixed"
    d.mkdir()
    (d / "good.txt").write_text("A good document about rivers.\n")
    (d / "empty.txt").write_bytes(b"")
    (d / "blank.md").write_text("  \n\n \t\n")
    (d / "garbage.txt").write_bytes(bytes(range(256)) * 8)
    (d / "nul.txt").write_bytes(b"text\x00with a NUL")
    (d / "image.png").write_bytes(b"\x89PNG\r\n")
    (d / "broken.pdf").write_bytes(b"%PDF-1.4 not really")
    (d / "huge.txt").write_bytes(b"x")
    os.truncate(d / "huge.txt", 200 * 1024 * 1024)  # sparse: refused by size, never read
    (d / "loop").symlink_to(d)  # a directory that contains itself
    (d / "self").symlink_to(d / "self")  # a link to itself
    with _collection(settings, "badinput", embedder) as col:
        report = _add(settings, col, [d, tmp_path / "mixed" / "image.png"], embedder)
        assert [Path(p).name for p, _ in report.added] == ["good.txt"]
        errors = {e.message.split(":")[0].rsplit("/", 1)[-1]: e for e in report.failed}
        assert set(errors) == {
            "empty.txt",
            "blank.md",
            "garbage.txt",
            "nul.txt",
            "image.png",
            "broken.pdf",
            "huge.txt",
        }
        assert "unsupported file type '.png'" in errors["image.png"].message
        assert ".pdf" in str(errors["image.png"].hint) and ".md" in str(errors["image.png"].hint)
        assert "not UTF-8" in errors["garbage.txt"].message
        assert "NUL" in errors["nul.txt"].message
        assert "empty" in errors["empty.txt"].message
        assert "no text" in errors["blank.md"].message
        assert "209.7 MB is more than the 67 MB limit" in errors["huge.txt"].message
        assert "--max-size" in str(errors["huge.txt"].hint)
        assert "not a readable PDF" in errors["broken.pdf"].message
        for e in report.failed:
            assert "\n" not in e.message and e.hint
        assert any("already visited" in s for s in report.skipped)
        assert any("self" in s for s in report.skipped)
        assert _consistent(col) and col.stats()["documents"] == 1


@pytest.mark.parametrize("name", ["a/b", "../x", "..", "", "a\\b", ".hidden", "x" * 65])
def test_collection_names_with_path_separators_are_refused(name: str) -> None:
    with pytest.raises(UsageError, match="invalid collection name") as err:
        check_name(name)
    assert "no path separators" in str(err.value.hint)


def test_missing_collection(settings: Settings) -> None:
    with pytest.raises(MissingCollectionError) as err:
        Collection.open(settings, "nope")
    assert "locara rag add nope PATH" in str(err.value.hint)


def test_embedding_model_change_is_refused(
    settings: Settings, embedder: CountingEmbedder, tmp_path: Path
) -> None:
    (tmp_path / "x.txt").write_text("Some text.\n")
    # A collection indexed with another build of the model (another digest).
    with Collection.open_or_create(settings, "othermodel", embedder.model_id, "f" * 64, 384) as col:
        with pytest.raises(LocaraError, match="vectors of two models cannot be mixed") as err:
            _add(settings, col, [tmp_path / "x.txt"], embedder)
        assert "locara rag reindex othermodel" in str(err.value.hint)
        assert col.stats()["documents"] == 0


def test_vectors_are_unit_norm_batches(embedder: CountingEmbedder) -> None:
    v = embedder.embed([f"sentence number {i}" for i in range(40)])  # more than one batch
    assert v.shape == (40, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1.0, atol=1e-4)


def test_unreadable_file_is_refused_with_a_hint(
    settings: Settings,
    embedder: CountingEmbedder,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("Nobody may read this.\n")
    secret.chmod(0)
    if os.geteuid() == 0:
        # Root reads any file: make the read fail as it does for everyone else.
        import locara.rag.ingest as ingest

        def denied(path: Path) -> tuple[str, int]:
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(ingest, "hash_file", denied)
    with _collection(settings, "unreadable", embedder) as col:
        report = _add(settings, col, [secret], embedder)
    (err,) = report.failed
    assert "cannot read it: Permission denied" in err.message
    assert "ls -l" in str(err.hint)


def test_citations_with_absurd_numbers_do_not_verify(settings: Settings) -> None:
    store = documents_store(settings)
    sha, _ = store.put_bytes(b"hello world")
    base = {"n": 1, "path": "x", "sha256": sha, "quote": "q"}
    for start, end in ((0, 2**70), (2**70, 2**71), (-5, 3)):
        ok, why = verify(store, Citation.from_dict({**base, "start": start, "end": end}))
        assert not ok and why
    with pytest.raises(UsageError, match="not a citation"):
        Citation.from_dict({**base, "start": float("inf"), "end": 1})
    with pytest.raises(UsageError, match="not a citation"):
        Citation.from_dict({"path": "x"})
