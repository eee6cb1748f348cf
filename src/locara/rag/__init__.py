"""Private RAG: local documents, local embeddings, hybrid search, citations that verify.

docstore    document bytes by SHA-256 under $LOCARA_HOME/rag/blobs (owner-only)
extract     text / Markdown / HTML / PDF → TextViews whose offsets are source bytes
chunking    TextView, streaming chunker (byte ranges into the original)
embedder    the local embedding model through the engine (batched)
collection  one SQLite database per collection: FTS5 (BM25) + sqlite-vec (cosine KNN)
ingest      rag add: walk, hash, skip unchanged, replace a document atomically
search      hybrid retrieval fused by reciprocal rank fusion (k=60, weights)
answer      prompts from hits; citations chosen, quoted from bytes, and verified
"""
