"""Corpora as JSONL: one JSON object a line, gzip read transparently.

Each object needs `doc_id` (a string; an integer is accepted and turned into its decimal
string) and `text` (a non-empty string). `category` (a string or null) is optional. Every other
field is kept, unchanged, in `Document.metadata`, and written back by `write_corpus_jsonl`.

Blank lines are skipped. A line that is not a JSON object, a missing or empty field, a field of
the wrong type or a repeated `doc_id` raises `DataFormatError` naming the file and the line.
"""

from __future__ import annotations

import json
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data.textio import atomic_write_text, read_lines
from training.errors import DataFormatError

RESERVED_FIELDS = ("doc_id", "text", "category")


@dataclass(frozen=True)
class Document:
    """One document of a corpus: its key, its text, an optional label and any other fields."""

    doc_id: str
    text: str
    category: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        """The JSONL object for this document (metadata fields at the top level)."""
        obj: dict[str, Any] = {"doc_id": self.doc_id, "text": self.text}
        if self.category is not None:
            obj["category"] = self.category
        for key, value in self.metadata.items():
            if key in RESERVED_FIELDS:
                raise ValueError(f"document {self.doc_id!r}: metadata key {key!r} is a reserved field")
            obj[key] = value
        return obj


def parse_document(obj: object, path: str | Path, line: int | None = None) -> Document:
    """A `Document` from one decoded JSON value; `DataFormatError` if it is not a valid one."""
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", line)
    if "doc_id" not in obj:
        raise DataFormatError(path, "missing field 'doc_id'", line)
    doc_id = obj["doc_id"]
    # bool is an int subclass; a doc_id of `true` is certainly a mistake.
    if isinstance(doc_id, int) and not isinstance(doc_id, bool):
        doc_id = str(doc_id)
    if not isinstance(doc_id, str) or not doc_id.strip():
        raise DataFormatError(path, f"field 'doc_id' must be a non-empty string, got {obj['doc_id']!r}", line)
    if "text" not in obj:
        raise DataFormatError(path, f"document {doc_id!r}: missing field 'text'", line)
    text = obj["text"]
    if not isinstance(text, str):
        raise DataFormatError(path, f"document {doc_id!r}: field 'text' must be a string", line)
    if not text.strip():
        raise DataFormatError(path, f"document {doc_id!r}: empty text", line)
    category = obj.get("category")
    if category is not None and not isinstance(category, str):
        raise DataFormatError(path, f"document {doc_id!r}: field 'category' must be a string or null", line)
    metadata = {key: value for key, value in obj.items() if key not in RESERVED_FIELDS}
    return Document(doc_id=doc_id, text=text, category=category, metadata=metadata)


def read_corpus_jsonl(path: str | Path) -> list[Document]:
    """All documents of a JSONL corpus, in file order. `doc_id`s must be unique."""
    documents: list[Document] = []
    seen: dict[str, int] = {}
    for number, line in read_lines(path):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as exc:
            raise DataFormatError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
        document = parse_document(obj, path, number)
        if document.doc_id in seen:
            raise DataFormatError(
                path, f"duplicate doc_id {document.doc_id!r} (first on line {seen[document.doc_id]})", number)
        seen[document.doc_id] = number
        documents.append(document)
    if not documents:
        raise DataFormatError(path, "the corpus holds no documents")
    return documents


def write_corpus_jsonl(path: str | Path, documents: Iterable[Document]) -> None:
    """Write documents as JSONL (UTF-8, gzip if the name ends in .gz), atomically."""
    lines = [json.dumps(document.to_json(), ensure_ascii=False) for document in documents]
    atomic_write_text(path, "".join(f"{line}\n" for line in lines))
