"""Model ecology: lineage of derived artifacts (and, later, adapters, RAG, policies)."""
