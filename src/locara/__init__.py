"""Locara: local models as normal software."""

__version__ = "0.1.0"
