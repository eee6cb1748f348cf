"""Choosing backend, artifact, quant and context for this device."""
