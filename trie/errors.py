"""The errors of the trie package.

Every error is a :class:`TrieError`; the ones caused by bad input also derive from the matching
built-in (``ValueError`` / ``KeyError``) so callers that catch those keep working.
"""

from __future__ import annotations

from collections.abc import Sequence


class TrieError(Exception):
    """Base class of every error raised by :mod:`trie`."""


class InvalidSemanticIdError(TrieError, ValueError):
    """A semantic ID (or prefix) has the wrong length, a non-integer type or a code out of range."""


class DuplicateSemanticIdError(TrieError, ValueError):
    """The same semantic ID was given twice, or is already in the trie. Never silently merged.

    ``duplicates`` holds the offending IDs as tuples (at most the first 20 are named in the message).
    """

    def __init__(self, message: str, duplicates: Sequence[tuple[int, ...]] = ()) -> None:
        super().__init__(message)
        self.duplicates: list[tuple[int, ...]] = list(duplicates)


class DuplicateRowError(TrieError, ValueError):
    """A document row was given twice, or already holds a semantic ID (one ID per row).

    ``rows`` holds the offending rows.
    """

    def __init__(self, message: str, rows: Sequence[int] = ()) -> None:
        super().__init__(message)
        self.rows: list[int] = list(rows)


class MissingSemanticIdError(TrieError, KeyError):
    """``with_removed`` was asked to remove IDs that the trie does not hold.

    ``missing`` holds the offending IDs as tuples.
    """

    def __init__(self, message: str, missing: Sequence[tuple[int, ...]] = ()) -> None:
        super().__init__(message)
        self.missing: list[tuple[int, ...]] = list(missing)

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0])


class CounterExhaustedError(TrieError):
    """Every counter value under a learned prefix is taken: no new document fits under it."""


class TrieFormatError(TrieError):
    """A trie file is not a trie file, or was written by an unknown format version."""
