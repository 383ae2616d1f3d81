"""Reproductions and experiments: one module per figure or table, each runnable with ``python -m``."""
