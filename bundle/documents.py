"""documents.jsonl: the bundle's documents and their semantic IDs (the ID table), line i = trie row i.

One JSON object a line: ``{"doc_id", "text", "metadata", "semantic_id": [c_0, ..., c_{L-1}, counter]}``.
``text`` is what the models read. Read column-wise into a ``DocumentTable`` (doc_id <-> row <-> ID).
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bundle.errors import BundleError


@dataclass
class DocumentTable:
    """The bundle's documents, column-wise (row i = trie row i). Metadata stays JSON until asked for."""

    doc_ids: list[str]
    texts: list[str]
    metadata_json: list[str]
    semantic_ids: np.ndarray  # (N, L+1) int64
    row_of_doc_id: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.doc_ids)

    def metadata(self, row: int) -> dict[str, Any]:
        """The metadata of one row, parsed."""
        return json.loads(self.metadata_json[row])


def document_line(doc_id: str, text: str, metadata: Mapping[str, Any], semantic_id: Sequence[int]) -> str:
    """One documents.jsonl line (with its newline)."""
    record = {"doc_id": doc_id, "text": text, "metadata": dict(metadata), "semantic_id": [int(c) for c in semantic_id]}
    return json.dumps(record, ensure_ascii=False) + "\n"


def write_documents(path: Path, documents: Iterable[tuple[str, str, Mapping[str, Any], Sequence[int]]]) -> int:
    """Write documents.jsonl from (doc_id, text, metadata, semantic_id) in trie row order; returns the count."""
    count = 0
    with open(path, "w", encoding="utf-8") as handle:
        for doc_id, text, metadata, semantic_id in documents:
            handle.write(document_line(doc_id, text, metadata, semantic_id))
            count += 1
    return count


def read_documents(path: Path, width: int, expected: int | None = None) -> DocumentTable:
    """Read documents.jsonl; every ``semantic_id`` has ``width`` (``L + 1``) codes, and there are ``expected``
    lines when given. BundleError naming the file and line on a bad line, a wrong count or a duplicate doc_id."""
    doc_ids: list[str] = []
    texts: list[str] = []
    metadata_json: list[str] = []
    codes: list[list[int]] = []
    with open(path, encoding="utf-8") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
                doc_ids.append(str(record["doc_id"]))
                texts.append(str(record["text"]))
                metadata_json.append(json.dumps(record.get("metadata") or {}, ensure_ascii=False))
                semantic_id = [int(c) for c in record["semantic_id"]]
            except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
                raise BundleError(f"{path}:{number}: bad document line ({exc})") from None
            if len(semantic_id) != width:
                raise BundleError(f"{path}:{number}: semantic_id has {len(semantic_id)} codes, expected {width}")
            codes.append(semantic_id)
    if expected is not None and expected != len(doc_ids):
        raise BundleError(f"{path}: {len(doc_ids)} documents, the manifest says {expected}")
    semantic_ids = np.asarray(codes, dtype=np.int64).reshape(len(codes), width)
    table = DocumentTable(doc_ids, texts, metadata_json, semantic_ids)
    table.row_of_doc_id = {doc_id: row for row, doc_id in enumerate(doc_ids)}
    if len(table.row_of_doc_id) != len(doc_ids):
        raise BundleError(f"{path}: duplicate doc_id values")
    return table
