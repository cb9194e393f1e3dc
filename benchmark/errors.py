"""Errors that are the user's to fix: the CLI prints them as one line and exits 2."""
from __future__ import annotations


class UsageError(Exception):
    """A mistake in the command line or the environment it points to: one line, exit 2."""


__all__ = ["UsageError"]
