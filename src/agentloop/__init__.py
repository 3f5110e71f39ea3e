"""Gemma Agent Loop: a self-improving local agent server."""

__version__ = "0.1.0"
