"""Curated model manifests, references to them, and the catalog that finds them."""
