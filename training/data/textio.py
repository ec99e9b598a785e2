"""Line-oriented text files for the data readers: gzip read transparently, decode errors that
name the file and line, and atomic writes.

Every reader in `training.data` goes through `read_lines`, so every one of them reports bad bytes
the same way (`DataFormatError(path, message, line)`), and every writer goes through
`atomic_write_text`, so a crash never leaves a half-written file under the final name.
"""

from __future__ import annotations

import gzip
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

from training.errors import DataFormatError

GZIP_MAGIC = b"\x1f\x8b"


def read_bytes(path: str | Path) -> bytes:
    """The file's bytes, gunzipped when the file is gzip (detected by its magic bytes, not its name)."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        raise DataFormatError(path, "no such file") from None
    except IsADirectoryError:
        raise DataFormatError(path, "is a directory, expected a file") from None
    if raw[:2] == GZIP_MAGIC:
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as exc:
            raise DataFormatError(path, f"corrupt gzip data: {exc}") from None
    return raw


def read_lines(path: str | Path, encoding: str = "utf-8") -> Iterator[tuple[int, str]]:
    """Yield `(line_number, line)` (1-based, line ending stripped: LF, CRLF or CR).

    Decoding is per line so that an undecodable byte is reported with its line number.
    """
    raw = read_bytes(path)
    # splitlines on bytes splits on \n, \r\n and \r only (str.splitlines would also split on
    # form feeds and unicode separators that can legitimately appear inside a text field).
    for number, raw_line in enumerate(raw.splitlines(), start=1):
        try:
            line = raw_line.decode(encoding)
        except UnicodeDecodeError as exc:
            raise DataFormatError(
                path, f"cannot decode byte {raw_line[exc.start:exc.start + 1]!r} at column {exc.start + 1} "
                f"as {encoding}", line=number) from None
        yield number, line


def atomic_write_text(path: str | Path, text: str, encoding: str = "utf-8") -> None:
    """Write `text` to `path` through a temporary file in the same folder and an atomic rename.

    A name ending in `.gz` is written gzip-compressed (with a zero mtime, so the bytes are
    reproducible).
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = text.encode(encoding)
    if path.suffix == ".gz":
        data = gzip.compress(data, mtime=0)
    fd, tmp_name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        Path(tmp_name).replace(path)
    except BaseException:
        Path(tmp_name).unlink(missing_ok=True)
        raise
