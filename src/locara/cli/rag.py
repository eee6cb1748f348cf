"""``locara rag``: private collections of documents, hybrid search, answers with checked citations."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path
from typing import Any

import click

from locara.cli.common import echo_json, human_size, settings
from locara.errors import LocaraError, UsageError
from locara.rag.search import KEYWORD_WEIGHT, VECTOR_WEIGHT

_SIZE = re.compile(r"(\d+(?:\.\d+)?)\s*([kmg]?i?b?)", re.IGNORECASE)
_UNITS = {"": 1, "b": 1, "k": 1e3, "m": 1e6, "g": 1e9, "ki": 1024, "mi": 1024**2, "gi": 1024**3}


def _size(value: str) -> int:
    m = _SIZE.fullmatch(value.strip())
    unit = m.group(2).lower().removesuffix("b") if m else None
    if m is None or unit not in _UNITS:
        raise UsageError(f"invalid size {value!r}", "pass a size such as 64MB or 1GB")
    return int(float(m.group(1)) * _UNITS[unit])


def _fusion(keyword_weight: float, vector_weight: float) -> Any:
    from locara.rag.search import Fusion

    return Fusion(keyword_weight=keyword_weight, vector_weight=vector_weight)


_weights = [
    click.option(
        "--keyword-weight",
        type=float,
        default=KEYWORD_WEIGHT,
        show_default=True,
        help="RRF weight of BM25 (tuned by bench/rag.py).",
    ),
    click.option(
        "--vector-weight",
        type=float,
        default=VECTOR_WEIGHT,
        show_default=True,
        help="RRF weight of the vector search.",
    ),
]


def _with_weights(f: Any) -> Any:
    for opt in reversed(_weights):
        f = opt(f)
    return f


@click.group()
def rag() -> None:
    """Private document collections: add, ls, rm, status, query, ask, verify, reindex.

    \b
    Everything stays under $LOCARA_HOME/rag (owner-only files); documents are stored
    by SHA-256, and every citation `ask` prints is the exact bytes of a hashed document.
    """


@rag.command()
@click.argument("collection")
@click.argument("paths", nargs=-1, required=True, type=click.Path(path_type=Path))
@click.option(
    "--embedding-model", default=None, help="Embedding model (default: all-minilm-l6-v2)."
)
@click.option("--max-size", default="64MB", show_default=True, help="Refuse larger files.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as JSON.")
def add(
    collection: str,
    paths: tuple[Path, ...],
    embedding_model: str | None,
    max_size: str,
    as_json: bool,
) -> None:
    """Add files and directories (.txt .md .html .pdf) to COLLECTION, creating it if new.

    Unchanged files are skipped by hash; a changed file replaces its chunks atomically.

    \b
    Example:
      locara rag add notes ~/notes ~/papers/paper.pdf
    """
    from locara.rag.collection import Collection, MissingCollectionError, check_name
    from locara.rag.embedder import LocalEmbedder
    from locara.rag.ingest import add_paths

    cfg = settings()
    check_name(collection)
    limit = _size(max_size)
    missing = [p for p in paths if not p.exists() and not p.is_symlink()]
    if missing:
        raise UsageError(f"no such file or directory: {missing[0]}", "check the path (ls)")
    try:
        col = Collection.open(cfg, collection)
    except MissingCollectionError:
        col = None
    # An existing collection keeps its model; one named explicitly must be the same.
    embedder = LocalEmbedder(cfg, embedding_model or (col.embedding_model if col else None))
    try:
        if col is None:
            dims = embedder.embed(["dimensions"]).shape[1]
            col = Collection.open_or_create(
                cfg, collection, embedder.model_id, embedder.sha256, dims
            )
        with col:
            report = add_paths(
                cfg,
                col,
                list(paths),
                embedder,
                max_bytes=limit,
                progress=None if as_json else (lambda line: click.echo(line, err=True)),
            )
    finally:
        embedder.close()
    if as_json:
        echo_json(
            {
                "added": [{"path": p, "chunks": n} for p, n in report.added],
                "updated": [{"path": p, "chunks": n} for p, n in report.updated],
                "unchanged": report.unchanged,
                "skipped": report.skipped,
                "failed": [{"error": e.message, "hint": e.hint} for e in report.failed],
            }
        )
    else:
        for p, n in report.added:
            click.echo(f"added {p} ({n} chunks)")
        for p, n in report.updated:
            click.echo(f"updated {p} ({n} chunks)")
        for p in report.unchanged:
            click.echo(f"unchanged {p}")
        for line in report.skipped:
            click.echo(f"skipped {line}", err=True)
        for e in report.failed:
            click.echo(f"error: {e.message}", err=True)
            if e.hint:
                click.echo(f"  hint: {e.hint}", err=True)
    if report.failed:
        total = len(report.failed) + len(report.added) + len(report.updated) + len(report.unchanged)
        raise LocaraError(
            f"{len(report.failed)} of {total} file(s) were not added (see above)",
            "fix or leave out those files; the others are in the collection",
        )


@rag.command("ls")
@click.argument("collection", required=False)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def ls_(collection: str | None, as_json: bool) -> None:
    """List collections, or the documents of COLLECTION."""
    from locara.rag.collection import Collection, collection_names

    cfg = settings()
    if collection is None:
        rows = []
        for name in collection_names(cfg):
            with Collection.open(cfg, name) as col:
                rows.append(col.stats())
        if as_json:
            echo_json(rows)
            return
        if not rows:
            click.echo("no collections; create one with: locara rag add NAME PATH", err=True)
        for r in rows:
            click.echo(
                f"{r['collection']:<20} {r['documents']:>5} docs {r['chunks']:>7} chunks "
                f"{human_size(r['document_bytes']):>9}  {r['embedding_model']}"
            )
        return
    with Collection.open(cfg, collection) as col:
        docs = col.documents()
    if as_json:
        echo_json([{**d.__dict__, "page_starts": list(d.page_starts)} for d in docs])
        return
    for d in docs:
        click.echo(
            f"{d.sha256[:12]}  {d.kind:<8} {human_size(d.size_bytes):>9} {d.n_chunks:>5} chunks  {d.path}"
        )


@rag.command()
@click.argument("collection")
@click.argument("paths", nargs=-1)
def rm(collection: str, paths: tuple[str, ...]) -> None:
    """Remove documents from COLLECTION, or the whole collection without PATHS.

    Their chunks and vectors go, and document bytes no collection lists any more.
    """
    from locara.rag.collection import Collection, collect_blobs, remove_collection

    cfg = settings()
    if not paths:
        remove_collection(cfg, collection)
        click.echo(f"removed collection {collection}")
    else:
        with Collection.open(cfg, collection) as col, col.writing():
            for p in paths:
                key = str(Path(p).absolute())
                if not col.remove_document(key):
                    raise UsageError(
                        f"{key} is not in collection {collection}",
                        f"list its documents with: locara rag ls {collection}",
                    )
                click.echo(f"removed {key}")
    gone = collect_blobs(cfg)
    if gone:
        click.echo(f"deleted {len(gone)} unreferenced document blob(s)")


@rag.command()
@click.argument("collection")
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def status(collection: str, as_json: bool) -> None:
    """Documents, chunks, sizes and the embedding model (with its digest) of COLLECTION."""
    from locara.rag.collection import Collection

    with Collection.open(settings(), collection) as col:
        stats = col.stats()
    if as_json:
        echo_json(stats)
        return
    click.echo(f"collection {stats['collection']}  ({stats['path']})")
    click.echo(f"  documents  {stats['documents']} ({human_size(stats['document_bytes'])})")
    click.echo(f"  chunks     {stats['chunks']} (index {human_size(stats['index_bytes'])})")
    click.echo(
        f"  embedding  {stats['embedding_model']} sha256:{stats['embedding_sha256']} ({stats['dims']} dims)"
    )


def _hits(collection: str, question: str, k: int, fusion: Any) -> list[Any]:
    from locara.rag.collection import Collection
    from locara.rag.embedder import LocalEmbedder
    from locara.rag.search import check_k, search

    cfg = settings()
    check_k(k)
    with Collection.open(cfg, collection) as col:
        vector = None
        if fusion.vector_weight > 0:
            embedder = LocalEmbedder(cfg, col.embedding_model)
            try:
                col.check_embedder(embedder.model_id, embedder.sha256)
                vector = embedder.embed([question])[0]
            finally:
                embedder.close()
        return search(col, question, vector, k, fusion)


@rag.command()
@click.argument("collection")
@click.argument("question")
@click.option("--k", "k", type=int, default=5, show_default=True, help="Chunks to return.")
@_with_weights
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
def query(
    collection: str,
    question: str,
    k: int,
    keyword_weight: float,
    vector_weight: float,
    as_json: bool,
) -> None:
    """The chunks of COLLECTION that best match QUESTION (keyword + vector, fused by RRF)."""
    hits = _hits(collection, question, k, _fusion(keyword_weight, vector_weight))
    if as_json:
        echo_json([h.to_dict() for h in hits])
        return
    if not hits:
        click.echo("no matching chunks", err=True)
    for i, h in enumerate(hits, start=1):
        d = h.to_dict()
        per = ", ".join(f"{r} #{d['ranks'][r]} ({d['scores'][r]:.3f})" for r in d["ranks"])
        page = f" p.{d['page']}" if d["page"] else ""
        click.echo(
            f"[{i}] {d['path']}{page} bytes {d['start']}-{d['end']} sha256:{d['sha256'][:12]}  rrf {d['score']:.4f}: {per}"
        )
        click.echo("    " + " ".join(d["text"].split())[:300])


rag.add_command(query, "search")  # the same command under the name other tools use


@rag.command()
@click.argument("collection")
@click.argument("question")
@click.option("-m", "--model", default=None, help="Chat model (default: the default model).")
@click.option("--k", "k", type=int, default=5, show_default=True, help="Chunks to give the model.")
@click.option("--max-tokens", type=click.IntRange(min=1), default=256, show_default=True)
@_with_weights
@click.option("--json", "as_json", is_flag=True, help="Print the answer and citations as JSON.")
def ask(
    collection: str,
    question: str,
    model: str | None,
    k: int,
    max_tokens: int,
    keyword_weight: float,
    vector_weight: float,
    as_json: bool,
) -> None:
    """Answer QUESTION from COLLECTION with numbered citations, each checked against the
    hashed document before it is shown (path, SHA-256, byte range, quoted span)."""
    from locara.backends.base import Chunk, GenerationRequest, Sampling
    from locara.engine.accounting import generation_record
    from locara.engine.loader import load, resolve
    from locara.ledger import record_usage
    from locara.planner.plan import PlanRequest
    from locara.rag.answer import build_messages, cite
    from locara.rag.collection import documents_store

    cfg = settings()
    hits = _hits(collection, question, k, _fusion(keyword_weight, vector_weight))
    if not hits:
        raise UsageError(
            f"nothing in {collection} matches the question",
            f"check what it holds: locara rag ls {collection}",
        )
    request = PlanRequest(features=frozenset({"generation"}), n_parallel=1)
    handle = load(cfg, resolve(cfg, model, request=request))
    parts: list[str] = []
    last: Chunk | None = None
    try:
        req = GenerationRequest(
            messages=build_messages(question, hits),
            max_tokens=max_tokens,
            sampling=Sampling.of(handle.resolved.manifest.config.default_params, temperature=0.0),
        )
        try:
            for chunk in handle.model.generate(req):
                parts.append(chunk.text)
                last = chunk
                if not as_json and chunk.text:
                    sys.stdout.write(chunk.text)
                    sys.stdout.flush()
        except LocaraError as exc:
            record_usage(
                cfg,
                generation_record(
                    handle, app="cli", surface="rag", last=last, status="error", error=exc.message
                ),
            )
            raise
        record_usage(
            cfg, generation_record(handle, app="cli", surface="rag", last=last, status="ok")
        )
    finally:
        handle.close()
    answer = cite("".join(parts), hits, documents_store(cfg))
    if as_json:
        echo_json(
            {**answer.to_dict(), "model": handle.resolved.manifest.id, "collection": collection}
        )
    else:
        click.echo("")
        _print_citations(answer)
    if not answer.sourced:
        why = "; ".join(answer.problems) or "no sentence of it matches a retrieved source"
        raise LocaraError(
            f"the answer is NOT SOURCED: {why}",
            f"read the retrieved chunks yourself: locara rag query {collection} QUESTION",
        )


def _print_citations(answer: Any) -> None:
    shown = [c for c in answer.citations if c.verified]
    if shown:
        click.echo("\nSources (each quote checked against the document's SHA-256):")
    for c in shown:
        page = f" p.{c.page}" if c.page else ""
        click.echo(f"  [{c.n}] {c.path}{page} sha256:{c.sha256} bytes {c.start}-{c.end}")
        click.echo(f'      "{" ".join(c.quote.split())}"')


@rag.command()
@click.argument("source", type=click.File("r"), default="-")
def verify(source: Any) -> None:
    """Check citations (the JSON `rag ask --json` prints, or a list of citations) against
    the stored documents: each quote must be exactly its bytes of the hashed document.

    \b
    Example:
      locara rag ask notes "..." --json > answer.json; locara rag verify answer.json
    """
    from locara.rag.answer import Citation
    from locara.rag.answer import verify as check
    from locara.rag.collection import documents_store

    try:
        data = json.load(source)
    except ValueError as exc:
        raise UsageError(
            f"not JSON: {exc}", "pass the output of: locara rag ask ... --json"
        ) from None
    items = data.get("citations") if isinstance(data, dict) and "citations" in data else data
    items = items if isinstance(items, list) else [items]
    if not items:
        raise UsageError("no citations to check", "pass the output of: locara rag ask ... --json")
    store = documents_store(settings())
    bad = 0
    for item in items:
        if not isinstance(item, dict):
            raise UsageError(
                "a citation must be a JSON object", "pass the output of: locara rag ask ... --json"
            )
        c = Citation.from_dict(item)
        ok, problem = check(store, c)
        bad += not ok
        click.echo(
            f"ok   [{c.n}] {c.sha256[:12]} bytes {c.start}-{c.end}" if ok else f"FAIL {problem}"
        )
    if bad:
        raise LocaraError(
            f"{bad} of {len(items)} citation(s) are not the bytes of their hashed document",
            "do not trust those quotes; ask again: locara rag ask COLLECTION QUESTION",
        )


@rag.command()
@click.argument("collection")
@click.option(
    "--embedding-model", default=None, help="The new embedding model (default: all-minilm-l6-v2)."
)
def reindex(collection: str, embedding_model: str | None) -> None:
    """Re-embed every chunk of COLLECTION with another embedding model, in one transaction."""
    from locara.rag.collection import Collection
    from locara.rag.embedder import LocalEmbedder

    cfg = settings()
    with Collection.open(cfg, collection) as col:
        embedder = LocalEmbedder(cfg, embedding_model)
        try:
            with col.writing():
                rows = list(col.all_chunk_texts())

                def batches() -> Any:
                    for i in range(0, len(rows), 32):
                        part = rows[i : i + 32]
                        yield [r[0] for r in part], embedder.embed([r[1] for r in part])

                first = embedder.embed(["x"])
                col.replace_vectors(embedder.model_id, embedder.sha256, first.shape[1], batches())
        finally:
            embedder.close()
    click.echo(f"re-embedded {len(rows)} chunks of {collection} with {embedder.model_id}")
