"""Reproductions of published figures, one module per paper; each runs as ``python -m ...``."""
