"""Errors that are the user's to fix: the CLI prints them as one line each and exits 2."""

from __future__ import annotations


class UsageError(Exception):
    """A mistake in the command line or the environment it points to: one line, exit 2.

    Several problems found together (``UsageError(first, second)``) are reported together,
    one line each, so the user fixes them all before the next try.
    """

    def __init__(self, *problems: str) -> None:
        super().__init__(*problems)
        self.problems = [str(problem) for problem in problems] or ["usage error"]

    def __str__(self) -> str:
        return "; ".join(self.problems)


__all__ = ["UsageError"]
