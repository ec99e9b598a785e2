"""The bundle's one error type."""

from __future__ import annotations

from typing import ClassVar


class BundleError(Exception):
    """A bundle (or a manifest) that cannot be read or served, with a message naming the file and key.

    The CLI prints it without a traceback and exits with ``exit_status``.
    """

    exit_status: ClassVar[int] = 2
