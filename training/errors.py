"""Errors a user can fix: bad input files, bad settings. The CLI prints them without a traceback."""

from __future__ import annotations

from pathlib import Path


class UserInputError(Exception):
    """Base of every error caused by the user's input; the `lmindexer` CLI exits with `exit_status`."""

    exit_status = 2


class DataFormatError(UserInputError):
    """A data file is malformed. The message names the file and, where it applies, the line."""

    def __init__(self, path: str | Path, message: str, line: int | None = None) -> None:
        self.path = Path(path)
        self.line = line
        where = f"{self.path}:{line}" if line is not None else str(self.path)
        super().__init__(f"{where}: {message}")


class ConfigError(UserInputError):
    """A setting is unknown, of the wrong type or out of range."""
