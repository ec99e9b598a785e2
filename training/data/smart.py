"""SMART test collections (Cranfield 1400): documents, queries, graded qrels, a fixed query split.

File formats (CRLF or LF line endings, latin-1 text; gzip read transparently):

- documents (`cran.all.1400`): records opened by `.I <id>`, with fields `.T` title, `.A` authors,
  `.B` bibliographic source and `.W` text. The document text is `title + "\\n" + .W text` by
  default (`include_title=True`, the setting of the reference figures); with
  `include_title=False` it is the `.W` text alone. Authors and source go to metadata.
  Cranfield holds two records with no title and no text (471 and 995); they are genuine members
  of the collection and are kept with empty text unless `allow_empty=False`. A field marker
  that a record already has is read as text of the current field (record 240's abstract holds
  stray '.A' and '.B' lines).
- queries (`cran.qry`): records `.I <n>` / `.W` text.
- qrels (`cranqrel`): lines `query doc code`.

The ordinal-qrel trap: the query number in `cranqrel` is the ORDINAL position (1..225) of the
query in `cran.qry`, not its `.I` number (which runs 001..365 with gaps). So a query's
`query_id` here is its ordinal position as a decimal string ("1".."225"), which is what the
qrels use; its `.I` number is kept in `Query.metadata["smart_id"]`.

Relevance codes (Cleverdon): 1 complete answer ... 4 minimum interest; -1 not relevant.
Gains: `gain = 5 - code` for codes 1..4 (so 4, 3, 2, 1) and 0 for -1 (judged, non-relevant).
Any other code is an error.

Query split (`cranfield_query_split`): the 225 query ids, sorted by ordinal, shuffled with
`random.Random(CRANFIELD_SPLIT_SEED)` (seed 20240721), then cut into train 125 / dev 25 /
test 75 in that order; each part is returned in ordinal order. The split depends only on the
seed and the sizes, so it is the same on every machine and Python version (`random.shuffle`
with an integer seed is stable across CPython 3 releases).
"""

from __future__ import annotations

import random
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from pathlib import Path

from training.data.corpus import Document
from training.data.textio import read_lines
from training.data.trec import Qrels, Query, query_sort_key
from training.errors import DataFormatError

ENCODING = "latin-1"
CRANFIELD_SPLIT_SEED = 20240721
CRANFIELD_SPLIT_SIZES = {"train": 125, "dev": 25, "test": 75}
# SMART relevance code -> gain; codes 1..4 graded (1 best), -1 judged not relevant.
CRANFIELD_GAINS = {1: 4, 2: 3, 3: 2, 4: 1, -1: 0}

_FIELD_RE = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")


@dataclass
class _Record:
    record_id: str
    line: int
    fields: dict[str, list[str]]


def _read_records(path: str | Path, allowed_fields: str) -> list[_Record]:
    """Split a SMART file into records: `.I id` opens one, `.X` lines open a field of it."""
    records: list[_Record] = []
    current_field: str | None = None
    for number, line in read_lines(path, encoding=ENCODING):
        match = _FIELD_RE.match(line.rstrip())
        if match:
            tag, rest = match.group(1), (match.group(2) or "").strip()
            if tag == "I":
                if not rest:
                    raise DataFormatError(path, "record marker '.I' without an id", number)
                records.append(_Record(record_id=rest, line=number, fields={}))
                current_field = None
                continue
            if not records and tag in allowed_fields:
                raise DataFormatError(path, f"field '.{tag}' before the first '.I' record", number)
            # A marker of a field the record already has is text: Cranfield 240's abstract
            # holds lines '.A' and '.B' after its '.W' (a transcription slip in the original).
            if tag in allowed_fields and tag not in records[-1].fields:
                records[-1].fields[tag] = [rest] if rest else []
                current_field = tag
                continue
        if current_field is None:
            if line.strip():
                raise DataFormatError(path, f"text outside a field: {line.strip()[:40]!r}", number)
            continue
        records[-1].fields[current_field].append(line)
    if not records:
        raise DataFormatError(path, "no '.I' records found")
    return records


def _field_text(record: _Record, tag: str) -> str:
    """A field's lines joined by spaces, whitespace collapsed (SMART wraps lines at ~70 columns)."""
    return " ".join(" ".join(record.fields.get(tag, [])).split())


def read_smart_documents(
    path: str | Path, include_title: bool = True, allow_empty: bool = True
) -> list[Document]:
    """The documents of a SMART collection, in file order (see the module docstring)."""
    documents: list[Document] = []
    seen: set[str] = set()
    for record in _read_records(path, allowed_fields="TABW"):
        if record.record_id in seen:
            raise DataFormatError(path, f"duplicate document id {record.record_id!r}", record.line)
        seen.add(record.record_id)
        title, body = _field_text(record, "T"), _field_text(record, "W")
        text = "\n".join(part for part in ((title if include_title else ""), body) if part)
        if not text and not allow_empty:
            raise DataFormatError(path, f"document {record.record_id!r}: empty text", record.line)
        metadata = {"title": title, "authors": _field_text(record, "A"), "source": _field_text(record, "B")}
        documents.append(Document(doc_id=record.record_id, text=text, metadata=metadata))
    return documents


def read_smart_queries(path: str | Path) -> list[Query]:
    """The queries, ids = ordinal position "1".."N"; the `.I` number is in metadata["smart_id"]."""
    queries: list[Query] = []
    for ordinal, record in enumerate(_read_records(path, allowed_fields="W"), start=1):
        text = _field_text(record, "W")
        if not text:
            raise DataFormatError(path, f"query .I {record.record_id}: empty text", record.line)
        queries.append(Query(query_id=str(ordinal), text=text, metadata={"smart_id": record.record_id}))
    return queries


def read_smart_qrels(path: str | Path, query_ids: Collection[str] | None = None,
                     doc_ids: Collection[str] | None = None) -> Qrels:
    """Graded qrels `query_id -> doc_id -> gain` (gain = 5 - code; code -1 -> 0).

    `query_ids` (the ordinal ids of `read_smart_queries`) and `doc_ids`, when given, make an
    unknown query or document an error naming the line.
    """
    qrels: Qrels = {}
    for number, line in read_lines(path, encoding=ENCODING):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 3:
            raise DataFormatError(path, f"expected 3 fields 'query doc code', found {len(fields)}", number)
        query_id, doc_id, code_text = fields
        try:
            code = int(code_text)
        except ValueError:
            raise DataFormatError(path, f"relevance code {code_text!r} is not an integer", number) from None
        if code not in CRANFIELD_GAINS:
            raise DataFormatError(path, f"relevance code {code} is not one of -1, 1, 2, 3, 4", number)
        # Normalise "007" to "7": query ids are ordinals, document ids are .I numbers.
        query_id, doc_id = _normalise_number(query_id, path, number), _normalise_number(doc_id, path, number)
        if query_ids is not None and query_id not in query_ids:
            raise DataFormatError(path, f"unknown query number {query_id} (not a query ordinal)", number)
        if doc_ids is not None and doc_id not in doc_ids:
            raise DataFormatError(path, f"unknown document id {doc_id!r} (not in the corpus)", number)
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            raise DataFormatError(path, f"query {query_id} judges document {doc_id} twice", number)
        judged[doc_id] = CRANFIELD_GAINS[code]
    if not qrels:
        raise DataFormatError(path, "the file holds no judgments")
    return qrels


def _normalise_number(text: str, path: str | Path, line: int) -> str:
    if not text.isdigit():
        raise DataFormatError(path, f"{text!r} is not a positive integer id", line)
    return str(int(text))


@dataclass(frozen=True)
class SmartCollection:
    """A whole SMART collection, cross-checked: every qrel names a known query and document."""

    documents: list[Document]
    queries: list[Query]
    qrels: Qrels


def read_cranfield(directory: str | Path, include_title: bool = True) -> SmartCollection:
    """Cranfield from a folder holding `cran.all.1400`, `cran.qry` and `cranqrel` (each may be .gz)."""
    directory = Path(directory)

    def locate(name: str) -> Path:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        raise DataFormatError(directory / name, "no such file (nor a .gz of it)")

    documents = read_smart_documents(locate("cran.all.1400"), include_title=include_title)
    queries = read_smart_queries(locate("cran.qry"))
    qrels = read_smart_qrels(locate("cranqrel"), query_ids={q.query_id for q in queries},
                             doc_ids={d.doc_id for d in documents})
    return SmartCollection(documents=documents, queries=queries, qrels=qrels)


def cranfield_query_split(query_ids: Sequence[str], seed: int = CRANFIELD_SPLIT_SEED,
                          sizes: dict[str, int] | None = None) -> dict[str, list[str]]:
    """The fixed train/dev/test split of the query ids (see the module docstring).

    `sizes` maps part name -> count in cut order (default train 125, dev 25, test 75) and must
    add up to the number of queries.
    """
    sizes = dict(CRANFIELD_SPLIT_SIZES if sizes is None else sizes)
    ids = sorted(set(query_ids), key=query_sort_key)
    if len(ids) != len(query_ids):
        raise ValueError("query ids must be unique")
    if sum(sizes.values()) != len(ids):
        raise ValueError(f"split sizes {sizes} do not add up to the {len(ids)} queries")
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    parts: dict[str, list[str]] = {}
    start = 0
    for name, count in sizes.items():
        chosen = set(shuffled[start:start + count])
        parts[name] = [q for q in ids if q in chosen]
        start += count
    return parts
