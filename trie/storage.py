"""The trie file: one file of aligned raw arrays behind a JSON header, loadable with ``np.memmap``.

Layout: 8-byte magic ``b"LMITRIE\\0"``, the header length as little-endian uint64, the UTF-8 JSON
header, then every array's raw bytes at a 64-byte aligned offset (named in the header with its
dtype and shape). Loading therefore costs one small read plus one ``mmap``: no parsing, no pickle,
and the pages are shared between processes that map the same file.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Any

import numpy as np

from trie.errors import TrieFormatError

MAGIC = b"LMITRIE\0"
FORMAT_VERSION = 1
ALIGNMENT = 64


def _aligned(offset: int) -> int:
    return (offset + ALIGNMENT - 1) // ALIGNMENT * ALIGNMENT


def write_arrays(path: str | os.PathLike[str], header: dict[str, Any], arrays: dict[str, np.ndarray]) -> None:
    """Write ``arrays`` and ``header`` to ``path`` atomically (a temporary file, then ``os.replace``)."""
    path = Path(path)
    specs: dict[str, dict[str, Any]] = {}
    # Offsets are relative to the data start, so they do not depend on the header's own length.
    offset = 0
    prepared: list[tuple[int, np.ndarray]] = []
    for name, array in arrays.items():
        array = np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<"))
        offset = _aligned(offset)
        specs[name] = {"dtype": array.dtype.str, "shape": list(array.shape), "offset": offset}
        prepared.append((offset, array))
        offset += array.nbytes
    full_header = {**header, "format_version": FORMAT_VERSION, "arrays": specs}
    header_bytes = json.dumps(full_header, sort_keys=True).encode()
    data_start = _aligned(len(MAGIC) + 8 + len(header_bytes))
    temporary = path.with_name(path.name + f".{os.getpid()}.tmp")
    with open(temporary, "wb") as handle:
        handle.write(MAGIC)
        handle.write(struct.pack("<Q", len(header_bytes)))
        handle.write(header_bytes)
        for array_offset, array in prepared:
            handle.seek(data_start + array_offset)
            handle.write(array.tobytes())
        handle.truncate(data_start + offset)
        handle.flush()
        os.fsync(handle.fileno())
    temporary.replace(path)


def read_arrays(path: str | os.PathLike[str], mmap: bool = True) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    """Read a file written by :func:`write_arrays`; arrays are read-only (memory-mapped when ``mmap``)."""
    path = Path(path)
    with open(path, "rb") as handle:
        magic = handle.read(len(MAGIC))
        if magic != MAGIC:
            raise TrieFormatError(f"{path} is not a trie file (magic {magic!r})")
        (header_length,) = struct.unpack("<Q", handle.read(8))
        try:
            header = json.loads(handle.read(header_length))
        except (json.JSONDecodeError, UnicodeDecodeError) as error:
            raise TrieFormatError(f"{path}: unreadable header ({error})") from error
    if header.get("format_version") != FORMAT_VERSION:
        raise TrieFormatError(
            f"{path}: trie format version {header.get('format_version')!r}, this code reads {FORMAT_VERSION}"
        )
    data_start = _aligned(len(MAGIC) + 8 + header_length)
    if mmap:
        raw = np.memmap(path, dtype=np.uint8, mode="r")
    else:
        raw = np.fromfile(path, dtype=np.uint8)
        raw.flags.writeable = False
    arrays: dict[str, np.ndarray] = {}
    for name, spec in header["arrays"].items():
        dtype = np.dtype(spec["dtype"])
        shape = tuple(spec["shape"])
        start = data_start + spec["offset"]
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        if start + nbytes > len(raw):
            raise TrieFormatError(f"{path} is truncated: array {name!r} ends past the end of the file")
        arrays[name] = np.asarray(raw[start : start + nbytes]).view(dtype).reshape(shape)
    return header, arrays
