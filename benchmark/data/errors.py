"""Data errors the runner catches to print one actionable line instead of a traceback."""

from __future__ import annotations

from pathlib import Path


class DatasetNotFoundError(FileNotFoundError):
    """The dataset's files are absent (or could not be downloaded).

    The message is a single line naming the missing path and how to get the files,
    so a failed run record can store it verbatim. ``path`` holds that path.
    """

    def __init__(self, message: str, path: str | Path | None = None) -> None:
        super().__init__(message.replace("\r", " ").replace("\n", " "))  # guarantee one line
        self.path = None if path is None else Path(path)


class DatasetCorruptError(DatasetNotFoundError):
    """A dataset file exists but cannot be read; a subclass so one ``except`` covers both."""
