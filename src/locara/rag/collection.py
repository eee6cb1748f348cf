"""One collection: an SQLite database with FTS5 (keyword) and sqlite-vec (vector) indexes.

``$LOCARA_HOME/rag/<name>/index.db`` holds the documents (path, SHA-256, kind), their
chunks (byte ranges into the document's bytes), an FTS5 table of chunk texts (BM25) and
a ``vec0`` table of their embeddings (cosine KNN). The standard library's ``sqlite3`` on
some Pythons cannot load extensions, so the database is opened with ``apsw``, which
bundles a recent SQLite with FTS5 and extension loading.

Consistency: a document's chunks, texts and vectors are replaced in one transaction, so
a process killed during ``rag add`` leaves the old version of that document (or none),
never a mix; readers (WAL mode) keep seeing the old version until the commit. Writers
of one collection take its lock file, one at a time.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import shutil
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from locara.errors import BackendUnavailableError, LocaraError, StoreError, UsageError
from locara.rag.chunking import TextChunk
from locara.rag.docstore import PRIVATE_DIR, PRIVATE_FILE, DocumentStore
from locara.settings import Settings
from locara.store.locks import exclusive_lock, open_nofollow

if TYPE_CHECKING:
    import apsw

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_MIGRATIONS = (
    """
    CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
    CREATE TABLE documents (
        id INTEGER PRIMARY KEY,
        path TEXT NOT NULL UNIQUE,
        sha256 TEXT NOT NULL,
        cite_sha256 TEXT NOT NULL,
        kind TEXT NOT NULL,
        size_bytes INTEGER NOT NULL,
        page_starts TEXT,
        added_at TEXT NOT NULL
    );
    CREATE TABLE chunks (
        id INTEGER PRIMARY KEY,
        doc_id INTEGER NOT NULL REFERENCES documents(id),
        ordinal INTEGER NOT NULL,
        start INTEGER NOT NULL,
        end INTEGER NOT NULL,
        page INTEGER
    );
    CREATE INDEX chunks_doc ON chunks(doc_id);
    CREATE VIRTUAL TABLE chunks_fts USING fts5(text, tokenize='porter unicode61')
    """,
)


def rag_home(settings: Settings) -> Path:
    return settings.home / "rag"


def check_name(name: str) -> str:
    """A collection name is a directory name: letters, digits, ``.``, ``_``, ``-``."""
    if not _NAME.fullmatch(name) or name in (".", ".."):
        raise UsageError(
            f"invalid collection name {name!r}",
            "use 1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit "
            "(no path separators)",
        )
    return name


def collection_names(settings: Settings) -> list[str]:
    root = rag_home(settings)
    if not root.is_dir():
        return []
    return sorted(
        p.name for p in root.iterdir() if _NAME.fullmatch(p.name) and (p / "index.db").is_file()
    )


def documents_store(settings: Settings) -> DocumentStore:
    return DocumentStore(rag_home(settings) / "blobs")


@dataclass(frozen=True)
class Document:
    id: int
    path: str
    sha256: str
    cite_sha256: str
    kind: str
    size_bytes: int
    page_starts: tuple[int, ...]
    added_at: str
    n_chunks: int = 0


@dataclass(frozen=True)
class ChunkRow:
    id: int
    document: Document
    ordinal: int
    start: int
    end: int
    page: int | None
    text: str


class MissingCollectionError(LocaraError, KeyError):
    """No collection by that name."""

    def __init__(self, name: str, known: Sequence[str]) -> None:
        hint = f"known collections: {', '.join(known)}" if known else "none exist yet"
        super().__init__(
            f"no collection named {name!r}",
            f"{hint}; create one with: locara rag add {name} PATH",
        )

    def __str__(self) -> str:
        return self.message


class Collection:
    """An open collection database (``open_collection`` or ``create_collection``)."""

    def __init__(self, settings: Settings, name: str, conn: apsw.Connection) -> None:
        self.settings = settings
        self.name = name
        self.dir = rag_home(settings) / name
        self.conn = conn

    # -- opening ---------------------------------------------------------------------
    @classmethod
    def open(cls, settings: Settings, name: str) -> Collection:
        """The existing collection ``name``; MissingCollectionError if there is none."""
        check_name(name)
        path = rag_home(settings) / name / "index.db"
        if not path.is_file():
            raise MissingCollectionError(name, collection_names(settings))
        return cls(settings, name, _connect(path))

    @classmethod
    def open_or_create(
        cls, settings: Settings, name: str, embedding_model: str, embedding_sha256: str, dims: int
    ) -> Collection:
        """``name``, created for this embedding model if new."""
        check_name(name)
        d = rag_home(settings) / name
        try:
            rag_home(settings).mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
            d.mkdir(exist_ok=True, mode=PRIVATE_DIR)
            os.chmod(d, PRIVATE_DIR)
            path = d / "index.db"
            # Created owner-only before SQLite opens it: its -wal and -shm files copy
            # the database file's permissions.
            for f in (path, d / ".lock"):
                os.close(open_nofollow(f, os.O_RDWR | os.O_CREAT, PRIVATE_FILE))
        except OSError as exc:
            if isinstance(exc, LocaraError):
                raise
            raise StoreError(
                f"cannot create collection {name} under {d.parent}: {exc.strerror or exc}",
                "make LOCARA_HOME writable, or set it to a writable directory",
            ) from exc
        col = cls(settings, name, _connect(path))
        with col.conn:
            if col.meta().get("embedding_model") is None:
                col.conn.execute(
                    "CREATE VIRTUAL TABLE IF NOT EXISTS chunks_vec USING "
                    f"vec0(embedding float[{int(dims)}] distance_metric=cosine)"
                )
                col._set_meta(
                    embedding_model=embedding_model,
                    embedding_sha256=embedding_sha256,
                    dims=str(dims),
                    created_at=_now(),
                )
        return col

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Collection:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[None]:
        """One writer per collection at a time (across processes)."""
        with exclusive_lock(self.dir / ".lock"):
            yield

    # -- metadata --------------------------------------------------------------------
    def meta(self) -> dict[str, str]:
        return {str(k): str(v) for k, v in self.conn.execute("SELECT key, value FROM meta")}

    def _set_meta(self, **values: str) -> None:
        for k, v in values.items():
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (k, v))

    @property
    def embedding_model(self) -> str:
        return self.meta()["embedding_model"]

    @property
    def embedding_sha256(self) -> str:
        return self.meta()["embedding_sha256"]

    def check_embedder(self, model_id: str, sha256: str) -> None:
        """Refuse vectors from another model (or another build of it) than the index's."""
        meta = self.meta()
        if (meta["embedding_model"], meta["embedding_sha256"]) != (model_id, sha256):
            raise UsageError(
                f"collection {self.name} was indexed with {meta['embedding_model']} "
                f"(sha256 {meta['embedding_sha256'][:12]}), not {model_id} "
                f"(sha256 {sha256[:12]}); vectors of two models cannot be mixed",
                f"re-embed it with: locara rag reindex {self.name} --embedding-model {model_id}",
            )

    # -- documents -------------------------------------------------------------------
    def documents(self) -> list[Document]:
        rows = _rows(
            self.conn,
            "SELECT d.id, d.path, d.sha256, d.cite_sha256, d.kind, d.size_bytes, d.page_starts, "
            "d.added_at, (SELECT count(*) FROM chunks c WHERE c.doc_id = d.id) "
            "FROM documents d ORDER BY d.path",
        )
        return [_document(r) for r in rows]

    def document(self, path: str) -> Document | None:
        rows = _rows(
            self.conn,
            "SELECT id, path, sha256, cite_sha256, kind, size_bytes, page_starts, added_at, 0 "
            "FROM documents WHERE path = ?",
            (path,),
        )
        return _document(rows[0]) if rows else None

    def replace_document(
        self,
        path: str,
        *,
        sha256: str,
        cite_sha256: str,
        kind: str,
        size_bytes: int,
        page_starts: Sequence[int],
        batches: Iterator[tuple[list[TextChunk], np.ndarray]],
    ) -> int:
        """Put ``path``'s new version in place of its old one, atomically; chunks written.

        ``batches`` yields chunks with their vectors as they are embedded: the whole
        replacement is one transaction, however many batches it takes.
        """
        n = 0
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self._delete_document(path)
            (doc_id,) = _one(
                self.conn,
                "INSERT INTO documents(path, sha256, cite_sha256, kind, size_bytes, page_starts, "
                "added_at) VALUES (?, ?, ?, ?, ?, ?, ?) RETURNING id",
                (
                    path,
                    sha256,
                    cite_sha256,
                    kind,
                    size_bytes,
                    json.dumps(list(page_starts)) if page_starts else None,
                    _now(),
                ),
            )
            for chunks, vectors in batches:
                for c, v in zip(chunks, vectors, strict=True):
                    page = _page_of(c.start, page_starts)
                    (cid,) = _one(
                        self.conn,
                        "INSERT INTO chunks(doc_id, ordinal, start, end, page) "
                        "VALUES (?, ?, ?, ?, ?) RETURNING id",
                        (doc_id, c.ordinal, c.start, c.end, page),
                    )
                    self.conn.execute(
                        "INSERT INTO chunks_fts(rowid, text) VALUES (?, ?)", (cid, c.text)
                    )
                    self.conn.execute(
                        "INSERT INTO chunks_vec(rowid, embedding) VALUES (?, ?)",
                        (cid, np.asarray(v, dtype=np.float32).tobytes()),
                    )
                    n += 1
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        return n

    def remove_document(self, path: str) -> bool:
        with self.conn:
            removed = self._delete_document(path)
        return removed

    def _delete_document(self, path: str) -> bool:
        rows = _rows(self.conn, "SELECT id FROM documents WHERE path = ?", (path,))
        if not rows:
            return False
        row = rows[0]
        ids = "SELECT id FROM chunks WHERE doc_id = ?"
        self.conn.execute(f"DELETE FROM chunks_fts WHERE rowid IN ({ids})", (row[0],))
        self.conn.execute(f"DELETE FROM chunks_vec WHERE rowid IN ({ids})", (row[0],))
        self.conn.execute("DELETE FROM chunks WHERE doc_id = ?", (row[0],))
        self.conn.execute("DELETE FROM documents WHERE id = ?", (row[0],))
        return True

    # -- chunks ----------------------------------------------------------------------
    def chunks(self, ids: Sequence[int]) -> dict[int, ChunkRow]:
        if not ids:
            return {}
        marks = ",".join("?" * len(ids))
        rows = _rows(
            self.conn,
            "SELECT c.id, c.ordinal, c.start, c.end, c.page, f.text, d.id, d.path, d.sha256, "
            "d.cite_sha256, d.kind, d.size_bytes, d.page_starts, d.added_at "
            "FROM chunks c JOIN documents d ON d.id = c.doc_id "
            f"JOIN chunks_fts f ON f.rowid = c.id WHERE c.id IN ({marks})",
            tuple(ids),
        )
        out: dict[int, ChunkRow] = {}
        for r in rows:
            doc = _document((*r[6:14], 0))
            out[int(r[0])] = ChunkRow(
                int(r[0]), doc, int(r[1]), int(r[2]), int(r[3]), r[4], str(r[5])
            )
        return out

    def all_chunk_texts(self) -> Iterator[tuple[int, str]]:
        yield from (
            (int(i), str(t))
            for i, t in self.conn.execute("SELECT rowid, text FROM chunks_fts ORDER BY rowid")
        )

    def replace_vectors(
        self, model_id: str, sha256: str, dims: int, vectors: Iterator[tuple[list[int], np.ndarray]]
    ) -> None:
        """Every chunk's vector from another embedding model, in one transaction."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            self.conn.execute("DROP TABLE chunks_vec")
            self.conn.execute(
                f"CREATE VIRTUAL TABLE chunks_vec USING vec0(embedding float[{int(dims)}] distance_metric=cosine)"
            )
            for ids, vecs in vectors:
                for cid, v in zip(ids, vecs, strict=True):
                    self.conn.execute(
                        "INSERT INTO chunks_vec(rowid, embedding) VALUES (?, ?)",
                        (cid, np.asarray(v, dtype=np.float32).tobytes()),
                    )
            self._set_meta(embedding_model=model_id, embedding_sha256=sha256, dims=str(dims))
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    # -- retrieval -------------------------------------------------------------------
    def keyword(self, match: str, limit: int) -> list[tuple[int, float]]:
        """(chunk id, BM25 score) best first; higher is better (FTS5's bm25 is negated)."""
        rows = _rows(
            self.conn,
            "SELECT rowid, bm25(chunks_fts) AS s FROM chunks_fts WHERE chunks_fts MATCH ? "
            "ORDER BY s LIMIT ?",
            (match, limit),
        )
        return [(int(r[0]), -float(r[1])) for r in rows]

    def nearest(self, vector: np.ndarray, limit: int) -> list[tuple[int, float]]:
        """(chunk id, cosine similarity) best first, from the sqlite-vec index."""
        rows = _rows(
            self.conn,
            "SELECT rowid, distance FROM chunks_vec WHERE embedding MATCH ? AND k = ? "
            "ORDER BY distance",
            (np.asarray(vector, dtype=np.float32).tobytes(), limit),
        )
        return [(int(r[0]), 1.0 - float(r[1])) for r in rows]

    def stats(self) -> dict[str, Any]:
        n_docs, size = _one(
            self.conn, "SELECT count(*), coalesce(sum(size_bytes), 0) FROM documents"
        )
        (n_chunks,) = _one(self.conn, "SELECT count(*) FROM chunks")
        db = self.dir / "index.db"
        index_bytes = sum(p.stat().st_size for p in self.dir.glob("index.db*") if p.is_file())
        meta = self.meta()
        return {
            "collection": self.name,
            "documents": int(n_docs),
            "chunks": int(n_chunks),
            "document_bytes": int(size),
            "index_bytes": index_bytes,
            "embedding_model": meta["embedding_model"],
            "embedding_sha256": meta["embedding_sha256"],
            "dims": int(meta["dims"]),
            "created_at": meta["created_at"],
            "path": str(db),
        }


def remove_collection(settings: Settings, name: str) -> None:
    """Delete the collection's directory (its database and lock)."""
    col = Collection.open(settings, name)
    with col.writing():
        col.close()
        shutil.rmtree(col.dir)


def referenced_blobs(settings: Settings) -> set[str]:
    """Every document digest some collection still lists."""
    shas: set[str] = set()
    for name in collection_names(settings):
        with Collection.open(settings, name) as col:
            for d in col.documents():
                shas.update((d.sha256, d.cite_sha256))
    return shas


@contextlib.contextmanager
def adding_blobs(settings: Settings) -> Iterator[None]:
    """Held (shared) while documents are stored and indexed: a blob stored but not yet
    committed to a collection looks unreferenced, and must not be collected meanwhile."""
    path = rag_home(settings) / ".blobs.lock"
    path.parent.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    fd = open_nofollow(path, os.O_RDWR | os.O_CREAT, PRIVATE_FILE)
    try:
        fcntl.flock(fd, fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def collect_blobs(settings: Settings) -> list[str]:
    """Remove document blobs no collection lists; the digests removed.

    Waits for every ``rag add`` in progress (they hold ``adding_blobs``)."""
    store = documents_store(settings)
    with exclusive_lock(rag_home(settings) / ".blobs.lock"):
        keep = referenced_blobs(settings)
        gone = sorted(store.stored() - keep)
        for sha in gone:
            store.remove(sha)
    return gone


def _connect(path: Path) -> apsw.Connection:
    try:
        import apsw
        import sqlite_vec  # type: ignore[import-untyped]
    except ImportError as exc:
        raise BackendUnavailableError(
            f"collections need the Python package {exc.name}, which is not installed",
            "install the rag extra: pip install 'locara[rag]' (or run ./scripts/install.sh)",
        ) from None
    try:
        conn = apsw.Connection(str(path))
        conn.set_busy_timeout(30_000)
        conn.enable_load_extension(True)
        conn.load_extension(sqlite_vec.loadable_path())
        conn.enable_load_extension(False)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA synchronous=NORMAL")
        _migrate(conn)
    except apsw.Error as exc:
        raise StoreError(
            f"cannot open the collection database {path}: {exc}",
            f"if it is damaged, remove it (locara rag rm {path.parent.name}) and add the documents again",
        ) from exc
    return conn


def _rows(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
    return [tuple(r) for r in conn.execute(sql, params)]


def _one(conn: apsw.Connection, sql: str, params: tuple[Any, ...] = ()) -> tuple[Any, ...]:
    row = conn.execute(sql, params).fetchone()
    assert row is not None, sql  # aggregates, RETURNING and PRAGMAs always give a row
    return tuple(row)


def _migrate(conn: apsw.Connection) -> None:
    (version,) = _one(conn, "PRAGMA user_version")
    if version >= len(_MIGRATIONS):
        return
    conn.execute("BEGIN IMMEDIATE")
    try:
        (version,) = _one(conn, "PRAGMA user_version")
        for i, sql in enumerate(_MIGRATIONS[version:], start=version + 1):
            conn.execute(sql)
            conn.execute(f"PRAGMA user_version={i}")
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


def _document(r: Sequence[Any]) -> Document:
    return Document(
        id=int(r[0]),
        path=str(r[1]),
        sha256=str(r[2]),
        cite_sha256=str(r[3]),
        kind=str(r[4]),
        size_bytes=int(r[5]),
        page_starts=tuple(json.loads(r[6])) if r[6] else (),
        added_at=str(r[7]),
        n_chunks=int(r[8]),
    )


def _page_of(start: int, page_starts: Sequence[int]) -> int | None:
    if not page_starts:
        return None
    import bisect

    return bisect.bisect_right(page_starts, start)  # 1-based


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
