"""Helpers shared by several test directories (``import support``: ``tests/`` is on the path)."""
