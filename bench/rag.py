"""Retrieval quality and speed of ``locara rag`` on query–document pairs nobody here wrote.

Pairs, all available offline:
- the Python standard library's docstrings (parsed with ``ast``, never imported): the
  first line is the query, the rest of the docstring is the document;
- Debian package descriptions from /var/lib/dpkg/status, where present: the synopsis is
  the query, the long description the document.

Every document goes into one collection; pairs are split into dev and test by a hash of
their id. Chunking and fusion weights are tuned on dev only; the table reports test:
Recall@5, MRR@10 and nDCG@10 for keyword-only (FTS5 BM25), vector-only (sqlite-vec KNN)
and hybrid (RRF, k=60), plus ingest throughput (chunks/s, embedding included) and query
latency p50/p95 (embedding the query included) at ~10k chunks.

    .venv/bin/python bench/rag.py [--pairs 500] [--quick]
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import math
import os
import re
import statistics
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from locara.rag.chunking import ChunkConfig
from locara.rag.collection import Collection
from locara.rag.embedder import LocalEmbedder
from locara.rag.ingest import add_paths
from locara.rag.search import KEYWORD_WEIGHT, VECTOR_WEIGHT, Fusion, search
from locara.settings import Settings

EQUAL = Fusion(keyword_weight=1.0, vector_weight=1.0)


@dataclass(frozen=True)
class Pair:
    id: str
    query: str
    document: str

    @property
    def split(self) -> str:
        return "dev" if hashlib.sha256(self.id.encode()).digest()[0] % 2 == 0 else "test"

    @property
    def filename(self) -> str:
        return hashlib.sha256(self.id.encode()).hexdigest()[:16] + ".txt"


def stdlib_pairs() -> list[Pair]:
    root = Path(sysconfig.get_paths()["stdlib"])
    out: list[Pair] = []
    for path in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in path.parts[-2:][0] or path.name.startswith("test"):
            continue
        if path.parent.name in ("site-packages", "dist-packages"):
            continue  # third-party modules installed here, not the standard library
        try:
            tree = ast.parse(path.read_text(encoding="utf-8"))
        except (SyntaxError, UnicodeDecodeError, ValueError):
            continue
        mod = str(path.relative_to(root).with_suffix("")).replace("/", ".")
        nodes = [
            tree,
            *(n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef | ast.ClassDef)),
        ]
        for node in nodes:
            doc = ast.get_docstring(node)  # type: ignore[arg-type]
            if not doc:
                continue
            first, _, rest = doc.strip().partition("\n")
            rest = rest.strip()
            if len(first.split()) >= 4 and len(rest) >= 150:
                out.append(Pair(f"py:{mod}.{getattr(node, 'name', '')}", first.strip(), rest))
    return out


def debian_pairs(status: Path = Path("/var/lib/dpkg/status")) -> list[Pair]:
    if not status.is_file():
        return []
    out: list[Pair] = []
    for block in status.read_text(encoding="utf-8", errors="replace").split("\n\n"):
        name = re.search(r"^Package: (.+)$", block, re.MULTILINE)
        desc = re.search(r"^Description: (.+)\n((?: .*\n?)*)", block, re.MULTILINE)
        if not name or not desc:
            continue
        body = "\n".join(
            "" if line.strip() == "." else line[1:] for line in desc.group(2).splitlines()
        ).strip()
        if len(body) >= 150 and len(desc.group(1).split()) >= 3:
            out.append(Pair(f"deb:{name.group(1)}", desc.group(1).strip(), body))
    return out


def sample(pairs: list[Pair], n: int) -> list[Pair]:
    seen_queries: set[str] = set()
    seen_ids: set[str] = set()
    uniq = []
    for p in sorted(pairs, key=lambda p: hashlib.sha256(p.id.encode()).hexdigest()):
        # A query two documents share cannot be scored; nor can an id two docstrings share
        # (methods of two classes in one module): their documents are one file, the last written.
        if p.query.lower() not in seen_queries and p.id not in seen_ids:
            seen_queries.add(p.query.lower())
            seen_ids.add(p.id)
            uniq.append(p)
    return uniq[:n]


def metrics(ranks: list[int | None]) -> dict[str, float]:
    """Recall@5, MRR@10, nDCG@10 with one relevant document per query (rank is 1-based)."""
    n = len(ranks)
    return {
        "R@5": sum(r is not None and r <= 5 for r in ranks) / n,
        "MRR@10": sum(1 / r for r in ranks if r is not None and r <= 10) / n,
        "nDCG@10": sum(1 / math.log2(r + 1) for r in ranks if r is not None and r <= 10) / n,
    }


def evaluate(
    col: Collection, pairs: list[Pair], vectors: dict[str, np.ndarray], fusion: Fusion
) -> dict[str, float]:
    ranks: list[int | None] = []
    for p in pairs:
        hits = search(col, p.query, vectors[p.id], 40, fusion)
        docs: list[str] = []
        for h in hits:  # chunk hits → documents, in order of their best chunk
            name = Path(h.chunk.document.path).name
            if name not in docs:
                docs.append(name)
        ranks.append(docs.index(p.filename) + 1 if p.filename in docs else None)
    return metrics(ranks)


def ingest(
    settings: Settings, name: str, docs: Path, emb: LocalEmbedder, size: int
) -> tuple[Collection, int, float]:
    col = Collection.open_or_create(settings, name, emb.model_id, emb.sha256, 384)
    started = time.perf_counter()
    report = add_paths(settings, col, [docs], emb, config=ChunkConfig(size, size // 8))
    elapsed = time.perf_counter() - started
    assert not report.failed, report.failed[:3]
    return col, col.stats()["chunks"], elapsed


def grow_to(col: Collection, target: int, seed: int = 0) -> int:
    """Pad the collection to ``target`` chunks with copies of its own chunks (texts
    as they are, vectors jittered and renormalised): a latency-only workload."""
    rng = np.random.default_rng(seed)
    rows = col.conn.execute(
        "SELECT c.id, f.text, v.embedding FROM chunks c JOIN chunks_fts f ON f.rowid = c.id "
        "JOIN chunks_vec v ON v.rowid = c.id"
    ).fetchall()
    n = col.stats()["chunks"]
    col.conn.execute("BEGIN")
    (doc_id,) = col.conn.execute("SELECT min(id) FROM documents").fetchone()
    i = 0
    while n < target:
        _, text, blob = rows[i % len(rows)]
        vec = np.frombuffer(blob, dtype=np.float32) + rng.normal(0, 0.05, 384).astype(np.float32)
        vec /= np.linalg.norm(vec)
        (cid,) = col.conn.execute(
            "INSERT INTO chunks(doc_id, ordinal, start, end) VALUES (?, -1, 0, 0) RETURNING id",
            (doc_id,),
        ).fetchone()
        col.conn.execute("INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)", (cid, text))
        col.conn.execute(
            "INSERT INTO chunks_vec(rowid, embedding) VALUES (?, ?)", (cid, vec.tobytes())
        )
        n += 1
        i += 1
    col.conn.execute("COMMIT")
    return n


def main() -> None:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument(
        "--pairs", type=int, default=500, help="stdlib pairs (Debian adds up to half as many)"
    )
    ap.add_argument("--sizes", default="400,800,1200", help="chunk sizes to try on dev")
    ap.add_argument("--quick", action="store_true", help="200 pairs, one chunk size")
    args = ap.parse_args()
    n = 200 if args.quick else args.pairs
    sizes = [800] if args.quick else [int(s) for s in args.sizes.split(",")]
    py, deb = stdlib_pairs(), debian_pairs()
    pairs = sample(py, n) + sample(deb, n // 2)
    dev = [p for p in pairs if p.split == "dev"]
    test = [p for p in pairs if p.split == "test"]
    print(
        f"pairs: {len(pairs)} ({len(sample(py, n))} stdlib docstrings, {len(pairs) - len(sample(py, n))} Debian descriptions); dev {len(dev)}, test {len(test)}"
    )

    with tempfile.TemporaryDirectory(prefix="locara-rag-bench-") as tmp:
        settings = Settings.from_env({"LOCARA_HOME": f"{tmp}/home"})
        docs = Path(tmp) / "docs"
        docs.mkdir()
        for p in pairs:
            (docs / p.filename).write_text(p.document, encoding="utf-8")
        emb = LocalEmbedder(settings)
        emb.embed(["warm up"])  # converting and loading the model is not ingest
        qv = dict(zip([p.id for p in pairs], emb.embed([p.query for p in pairs]), strict=True))

        # Tune on dev: chunk size with equal weights, then the fusion weights.
        results: dict[int, tuple[Collection, int, float]] = {}
        best_size, best_score = sizes[0], -1.0
        for size in sizes:
            results[size] = ingest(settings, f"c{size}", docs, emb, size)
            score = evaluate(results[size][0], dev, qv, EQUAL)["nDCG@10"]
            print(f"dev  chunk {size:>5}: hybrid nDCG@10 {score:.3f} ({results[size][1]} chunks)")
            if score > best_score:
                best_size, best_score = size, score
        col, n_chunks, secs = results[best_size]
        best_w, best_wscore = (1.0, 1.0), -1.0
        for kw in (0.5, 1.0, 1.5, 2.0):
            for vw in (0.5, 1.0, 1.5, 2.0):
                if kw != vw or kw == 1.0:
                    s = evaluate(col, dev, qv, Fusion(keyword_weight=kw, vector_weight=vw))[
                        "nDCG@10"
                    ]
                    if s > best_wscore:
                        best_w, best_wscore = (kw, vw), s
        print(f"dev  weights: keyword {best_w[0]}, vector {best_w[1]} (nDCG@10 {best_wscore:.3f})")

        modes = {
            "keyword only (BM25)": Fusion(vector_weight=0),
            "vector only (KNN)": Fusion(keyword_weight=0),
            "hybrid RRF (1, 1)": EQUAL,
            f"hybrid RRF ({KEYWORD_WEIGHT}, {VECTOR_WEIGHT}) default": Fusion(),
            f"hybrid RRF ({best_w[0]}, {best_w[1]}) tuned": Fusion(
                keyword_weight=best_w[0], vector_weight=best_w[1]
            ),
        }
        print(f"\ntest ({len(test)} queries), chunk size {best_size}, {n_chunks} chunks:")
        print(f"{'retriever':<32} {'R@5':>6} {'MRR@10':>7} {'nDCG@10':>8}")
        for name, fusion in modes.items():
            m = evaluate(col, test, qv, fusion)
            print(f"{name:<32} {m['R@5']:>6.3f} {m['MRR@10']:>7.3f} {m['nDCG@10']:>8.3f}")

        print(
            f"\ningest: {n_chunks} chunks in {secs:.1f} s = {n_chunks / secs:.1f} chunks/s "
            f"(embedding included; load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)"
        )
        total = grow_to(col, 10_000)
        fusion = Fusion(keyword_weight=best_w[0], vector_weight=best_w[1])
        embed_ms, search_ms = [], []
        for p in test[:200]:
            t0 = time.perf_counter()
            vec = emb.embed([p.query])[0]
            t1 = time.perf_counter()
            search(col, p.query, vec, 5, fusion)
            embed_ms.append((t1 - t0) * 1000)
            search_ms.append((time.perf_counter() - t1) * 1000)
        total_ms = [a + b for a, b in zip(embed_ms, search_ms, strict=True)]
        print(f"query at {total} chunks, p50 / p95:")
        for label, xs in (
            ("embed the query", embed_ms),
            ("hybrid search", search_ms),
            ("both", total_ms),
        ):
            p95 = statistics.quantiles(xs, n=20)[18]
            print(f"  {label:<16} {statistics.median(xs):7.1f} ms {p95:7.1f} ms")
        print(f"(load average while measuring: {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores)")
        for c, _, _ in results.values():
            c.close()
        emb.close()


if __name__ == "__main__":
    main()
