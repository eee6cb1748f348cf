"""Model conversion: GGUF → MLX directory, Hugging Face safetensors → GGUF.

Every converter is deterministic (same input bytes, same output bytes), so a
converted artifact can be pinned by its SHA-256 in a manifest like any download.
Heavy imports (mlx) happen inside the functions that need them.
"""
