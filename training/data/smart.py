"""SMART test collections (Cranfield 1400, CISI, MED, CACM ...): documents, queries, qrels, query splits.

File formats (CRLF or LF line endings, latin-1 text; gzip read transparently):

- documents (`cran.all.1400`, `CISI.ALL`, `MED.ALL` ...): records opened by `.I <id>`, with fields
  `.T` title, `.A` authors, `.B` bibliographic source and `.W` text. The document text is
  `title + "\\n" + .W text` by default (`include_title=True`, the setting of the reference
  figures); with `include_title=False` it is the `.W` text alone. Authors and source go to
  metadata (`title`, `authors`, `source`). CISI gives one author per `.A` marker: a `.A` met while
  reading the authors starts the next author, and the authors are joined by "; ". Any other field
  a layout has (CISI's `.X` cross-references, `.K` keywords and `.C` categories, CACM's `.N` and
  `.X`) is skipped: its lines are read and dropped. Cranfield holds two records with no title and
  no text (471 and 995); they are genuine members of the collection and are kept with empty text
  unless `allow_empty=False`. A marker of a field that a record already has, met inside another
  field (or a second `.W`), is read as text of the current field (record 240's abstract holds
  stray '.A' and '.B' lines; 576 and 578 a second '.W').
- queries (`cran.qry`, `CISI.QRY` ...): records `.I <n>` / `.W` text (a `.T`, where a query has
  one, is put before it as for documents; other fields are skipped).
- qrels (`cranqrel`, `CISI.REL`, `MED.REL` ...): whitespace-separated columns; every non-blank
  line of a file has the same number of them, and the layout is read from that number and, for
  four columns, from which column is 0 on every line:
  - 3 columns, `query doc code` (Cranfield): graded Cleverdon codes (below).
  - 4 columns with the third 0 on every line, `query doc 0 0` (CISI, CACM; the fourth column, a
    number such as CISI's "0.000000", is not used): binary, every listed pair is relevant, gain 1.
  - 4 columns with the second 0 on every line, `query 0 doc relevance` (TREC's layout; MED):
    gain = the integer relevance (binary files give 1), as `training.data.trec` reads TREC qrels;
    a gain <= 0 is judged non-relevant.
  A four-column file whose second and third columns are both 0 on every line, or neither, is an
  error: its layout cannot be told.

Query numbering. A qrels file numbers its queries either by their `.I` numbers or by their
ORDINAL position (1..N) in the query file. The ordinal-qrel trap: Cranfield's `cranqrel` uses the
ordinal (1..225), not the `.I` number (which runs 001..365 with gaps); CISI's `CISI.REL` uses `.I`
numbers (which there run 1..N, so the two coincide). The rule, per collection
(`read_smart_collection`, `query_numbering="auto"`): if the `.I` numbers are 1..N in file order the
numberings coincide; otherwise the qrels are read by `.I` number when every query number they use
is a query's `.I` number, else by ordinal when every one is an ordinal (Cranfield: "3" is an
ordinal but no query's `.I`), else it is an error naming the first number that is neither. (Both
fitting, with numberings that differ, reads `.I` numbers and logs a warning.) A query's `query_id`
is then its ordinal ("1".."N") or its `.I` number without leading zeros, as the qrels use; its
`.I` number as written is kept in `Query.metadata["smart_id"]`. `read_cranfield` always reads
ordinals.

Cranfield relevance codes (Cleverdon): 1 complete answer ... 4 minimum interest; -1 not relevant.
Gains: `gain = 5 - code` for codes 1..4 (so 4, 3, 2, 1) and 0 for -1 (judged, non-relevant).
Any other code is an error.

Finding the files (`find_smart_files`): in the folder, names are matched case-insensitively after
dropping a `.gz` suffix; hidden files and names containing "readme" are never candidates.
Documents: a name with an `.all` part (`*.all`, `*.all.*`: `cran.all.1400`, `CISI.ALL`). Queries:
`*.qry`, or CACM's `query.text`. Qrels: a name containing `qrel` (`cranqrel`, `qrels.text`) or
ending in `.rel` (`CISI.REL`). Each role needs exactly one file: none, or two (a plain and a .gz
copy included), is a `DataFormatError` naming the role and the candidates. The collection's name is
the documents file's name before `.all`, lower-cased; `cran` is named "cranfield".

Query split (`cranfield_query_split`): the 225 query ids, sorted by ordinal, shuffled with
`random.Random(CRANFIELD_SPLIT_SEED)` (seed 20240721), then cut into train 125 / dev 25 /
test 75 in that order; each part is returned in ordinal order. The split depends only on the
seed and the sizes, so it is the same on every machine and Python version (`random.shuffle`
with an integer seed is stable across CPython 3 releases).

Query split of any other collection (`smart_query_split`, `collection_query_split`): only the
queries with at least one relevant judgment (gain > 0; `SmartCollection.judged_query_ids`) are
split (a query nobody judged relevant can neither train nor score a retriever). Their ids, in
natural order, are shuffled with `random.Random(seed)` (default `SMART_SPLIT_SEED`, the same
20240721) and cut in order into parts sized by `fractions` (default train 0.55 / dev 0.11 /
test 0.34, Cranfield's 125/25/75 of 225 rounded): each part gets `floor(fraction * n)` queries and
the queries left over go one each to the parts with the largest remainders (ties: the earlier
part); each part is returned in natural order. A part that would be empty is an error.
`collection_query_split` gives Cranfield (the collection named "cranfield" with its 225 queries)
its fixed split, byte-identical to `cranfield_query_split`, and every other collection
`smart_query_split` of its judged queries.
"""

from __future__ import annotations

import logging
import math
import random
import re
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from training.data.corpus import Document
from training.data.textio import read_lines
from training.data.trec import Qrels, Query, query_sort_key
from training.errors import DataFormatError

logger = logging.getLogger(__name__)

ENCODING = "latin-1"
CRANFIELD_SPLIT_SEED = 20240721
CRANFIELD_SPLIT_SIZES = {"train": 125, "dev": 25, "test": 75}
CRANFIELD_SPLIT_RULE = (f"cranfield_query_split: the fixed split of the 225 queries, seed {CRANFIELD_SPLIT_SEED}, "
                        "train/dev/test 125/25/75")
SMART_SPLIT_SEED = CRANFIELD_SPLIT_SEED
# Cranfield's 125/25/75 of 225, rounded; used for every collection other than Cranfield.
SMART_SPLIT_FRACTIONS = {"train": 0.55, "dev": 0.11, "test": 0.34}
# SMART relevance code -> gain; codes 1..4 graded (1 best), -1 judged not relevant.
CRANFIELD_GAINS = {1: 4, 2: 3, 3: 2, 4: 1, -1: 0}

QueryNumbering = Literal["ordinal", "smart_id"]
QrelsLayout = Literal["query doc code", "query doc 0 0", "query 0 doc relevance"]

_FIELD_RE = re.compile(r"^\.([A-Z])(?:\s+(.*))?$")
_SKIPPED = "skipped"  # the current field is one the reader does not keep
# Fields that may repeat in a row, each marker starting the next entry (CISI: one author per '.A').
_REPEATABLE_FIELDS = "A"


@dataclass
class _Record:
    record_id: str
    line: int
    # field tag -> entries (one per marker of a repeatable field, else one) -> lines
    fields: dict[str, list[list[str]]]


def _read_records(path: str | Path, allowed_fields: str) -> list[_Record]:
    """Split a SMART file into records: `.I id` opens one, `.X` lines open a field of it.

    Fields not in `allowed_fields` are skipped; see the module docstring for repeated markers.
    """
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
            if not records:
                raise DataFormatError(path, f"field '.{tag}' before the first '.I' record", number)
            fields = records[-1].fields
            if tag not in allowed_fields:
                current_field = _SKIPPED
                continue
            # A marker of a field the record already has is text: Cranfield 240's abstract
            # holds lines '.A' and '.B' after its '.W' (a transcription slip in the original),
            # and 576 and 578 a second '.W'. CISI repeats '.A' once per author.
            if tag not in fields:
                fields[tag] = [[rest] if rest else []]
                current_field = tag
                continue
            if tag == current_field and tag in _REPEATABLE_FIELDS:
                fields[tag].append([rest] if rest else [])
                continue
        if current_field is None:
            if line.strip():
                raise DataFormatError(path, f"text outside a field: {line.strip()[:40]!r}", number)
            continue
        if current_field != _SKIPPED:
            records[-1].fields[current_field][-1].append(line)
    if not records:
        raise DataFormatError(path, "no '.I' records found")
    return records


def _field_text(record: _Record, tag: str) -> str:
    """A field's lines joined by spaces, whitespace collapsed (SMART wraps lines at ~70 columns);
    the entries of a repeated field (CISI's authors) joined by "; "."""
    entries = (" ".join(" ".join(lines).split()) for lines in record.fields.get(tag, []))
    return "; ".join(entry for entry in entries if entry)


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


def read_smart_queries(path: str | Path, numbering: QueryNumbering = "ordinal") -> list[Query]:
    """The queries, in file order; the `.I` number as written is in metadata["smart_id"].

    `numbering="ordinal"`: ids are the ordinal positions "1".."N" (Cranfield's qrels);
    `"smart_id"`: ids are the `.I` numbers without leading zeros (which must then be unique).
    """
    queries: list[Query] = []
    seen: set[str] = set()
    for ordinal, record in enumerate(_read_records(path, allowed_fields="TW"), start=1):
        text = "\n".join(part for part in (_field_text(record, "T"), _field_text(record, "W")) if part)
        if not text:
            raise DataFormatError(path, f"query .I {record.record_id}: empty text", record.line)
        query_id = str(ordinal) if numbering == "ordinal" else _smart_number(record.record_id)
        if query_id in seen:
            raise DataFormatError(path, f"duplicate query .I number {record.record_id}", record.line)
        seen.add(query_id)
        queries.append(Query(query_id=query_id, text=text, metadata={"smart_id": record.record_id}))
    return queries


def _smart_number(record_id: str) -> str:
    """A `.I` number as the qrels write it: "007" -> "7"; a non-numeric id stays as it is."""
    return str(int(record_id)) if record_id.isdigit() else record_id


@dataclass(frozen=True)
class _Judgment:
    line: int
    query: str  # the qrels' query number, leading zeros dropped
    doc_id: str
    gain: int


def _parse_qrels(path: str | Path) -> tuple[QrelsLayout, list[_Judgment]]:
    """The judgments of a qrels file in any layout of the module docstring, and that layout."""
    rows = [(number, line.split()) for number, line in read_lines(path, encoding=ENCODING) if line.split()]
    if not rows:
        raise DataFormatError(path, "the file holds no judgments")
    width = len(rows[0][1])
    expected = {3: "3 fields 'query doc code'", 4: "4 fields ('query doc 0 0' or 'query 0 doc relevance')"}
    if width not in expected:
        raise DataFormatError(path, f"expected 3 fields 'query doc code' (Cranfield) or 4 ('query doc 0 0', CISI; "
                              f"'query 0 doc relevance', TREC), found {width}", rows[0][0])
    for number, fields in rows:
        if len(fields) != width:
            raise DataFormatError(path, f"expected {expected[width]}, found {len(fields)}", number)
    layout: QrelsLayout
    if width == 3:
        layout = "query doc code"
    else:
        second_zero = all(_is_zero(fields[1]) for _, fields in rows)
        third_zero = all(_is_zero(fields[2]) for _, fields in rows)
        if second_zero == third_zero:
            which = "both the second and" if second_zero else "neither the second nor"
            raise DataFormatError(path, f"4 columns with {which} the third 0 on every line: cannot tell "
                                  "'query doc 0 0' (CISI) from 'query 0 doc relevance' (TREC)")
        layout = "query 0 doc relevance" if second_zero else "query doc 0 0"
    judgments: list[_Judgment] = []
    for number, fields in rows:
        if layout == "query doc code":
            query, doc_id, gain = fields[0], fields[1], _cranfield_gain(fields[2], path, number)
        elif layout == "query doc 0 0":
            query, doc_id, gain = fields[0], fields[1], 1
            try:
                float(fields[3])
            except ValueError:
                raise DataFormatError(path, f"fourth column {fields[3]!r} is not a number", number) from None
        else:
            query, doc_id, gain = fields[0], fields[2], _integer(fields[3], "relevance", path, number)
        judgments.append(_Judgment(number, _normalise_number(query, path, number),
                                   _normalise_number(doc_id, path, number), gain))
    return layout, judgments


def _is_zero(text: str) -> bool:
    return text.isdigit() and int(text) == 0


def _integer(text: str, what: str, path: str | Path, line: int) -> int:
    try:
        return int(text)
    except ValueError:
        raise DataFormatError(path, f"{what} {text!r} is not an integer", line) from None


def _cranfield_gain(text: str, path: str | Path, line: int) -> int:
    code = _integer(text, "relevance code", path, line)
    if code not in CRANFIELD_GAINS:
        raise DataFormatError(path, f"relevance code {code} is not one of -1, 1, 2, 3, 4", line)
    return CRANFIELD_GAINS[code]


def _build_qrels(path: str | Path, judgments: Sequence[_Judgment], query_ids: Collection[str] | None,
                 doc_ids: Collection[str] | None, numbering: QueryNumbering) -> Qrels:
    what = "a query ordinal" if numbering == "ordinal" else "a query's .I number"
    qrels: Qrels = {}
    for judgment in judgments:
        if query_ids is not None and judgment.query not in query_ids:
            raise DataFormatError(path, f"unknown query number {judgment.query} (not {what})", judgment.line)
        if doc_ids is not None and judgment.doc_id not in doc_ids:
            raise DataFormatError(path, f"unknown document id {judgment.doc_id!r} (not in the corpus)", judgment.line)
        judged = qrels.setdefault(judgment.query, {})
        if judgment.doc_id in judged:
            raise DataFormatError(path, f"query {judgment.query} judges document {judgment.doc_id} twice",
                                  judgment.line)
        judged[judgment.doc_id] = judgment.gain
    return qrels


def read_smart_qrels(path: str | Path, query_ids: Collection[str] | None = None,
                     doc_ids: Collection[str] | None = None, numbering: QueryNumbering = "ordinal") -> Qrels:
    """Qrels `query_id -> doc_id -> gain` in any layout of the module docstring (Cranfield's
    `query doc code`: gain = 5 - code, code -1 -> 0).

    `query_ids` (the ids of `read_smart_queries` with the same `numbering`, which only words the
    error) and `doc_ids`, when given, make an unknown query or document an error naming the line.
    """
    _, judgments = _parse_qrels(path)
    return _build_qrels(path, judgments, query_ids, doc_ids, numbering)


def _normalise_number(text: str, path: str | Path, line: int) -> str:
    if not text.isdigit():
        raise DataFormatError(path, f"{text!r} is not a positive integer id", line)
    return str(int(text))


@dataclass(frozen=True)
class SmartCollection:
    """A whole SMART collection, cross-checked: every qrel names a known query and document.

    `name`: "cranfield", or the documents file's name before `.all`, lower-cased ("cisi").
    `details`: how it was read, for records (file names, qrels layout, query numbering); not
    compared, so a gzip copy equals the plain one.
    """

    documents: list[Document]
    queries: list[Query]
    qrels: Qrels
    name: str
    details: dict[str, str] = field(default_factory=dict, compare=False)

    @property
    def judged_query_ids(self) -> list[str]:
        """Ids of the queries with at least one relevant (gain > 0) judgment, in file order."""
        return [q.query_id for q in self.queries if any(gain > 0 for gain in self.qrels.get(q.query_id, {}).values())]


def read_cranfield(directory: str | Path, include_title: bool = True) -> SmartCollection:
    """Cranfield from a folder holding `cran.all.1400`, `cran.qry` and `cranqrel` (each may be .gz)."""
    directory = Path(directory)

    def locate(name: str) -> Path:
        for candidate in (directory / name, directory / f"{name}.gz"):
            if candidate.is_file():
                return candidate
        raise DataFormatError(directory / name, "no such file (nor a .gz of it)")

    return _read_collection("cranfield", locate("cran.all.1400"), locate("cran.qry"), locate("cranqrel"),
                            include_title, numbering="ordinal")


# role -> (what its file is called in messages, the names it may have)
SMART_ROLES = {
    "documents": ("documents file", "a name with an '.all' part (*.all, *.all.*)"),
    "queries": ("query file", "*.qry or query.text"),
    "qrels": ("qrels file", "a name containing 'qrel' or ending in '.rel'"),
}


def _role_of(name: str) -> set[str]:
    key = name.lower().removesuffix(".gz")
    roles = set()
    if re.search(r"\.all(\.|$)", key):
        roles.add("documents")
    if key.endswith(".qry") or key == "query.text":
        roles.add("queries")
    if "qrel" in key or key.endswith(".rel"):
        roles.add("qrels")
    return roles


def find_smart_files(directory: str | Path) -> dict[str, Path]:
    """role ("documents", "queries", "qrels") -> the one file of the folder in that role (module docstring).

    Raises DataFormatError naming the folder, the role and the candidates when a role has no file
    or several.
    """
    directory = Path(directory)
    if not directory.is_dir():
        raise DataFormatError(directory, "not a folder (expected a SMART collection's folder)")
    names = sorted(p.name for p in directory.iterdir()
                   if p.is_file() and not p.name.startswith(".") and "readme" not in p.name.lower())
    found: dict[str, Path] = {}
    for role, (label, pattern) in SMART_ROLES.items():
        candidates = [name for name in names if role in _role_of(name)]
        if not candidates:
            raise DataFormatError(directory, f"no {label}: expected {pattern} (case-insensitive, .gz allowed); "
                                  f"the folder holds {', '.join(names) or 'no files'}")
        if len(candidates) > 1:
            raise DataFormatError(directory, f"{len(candidates)} candidate {label}s: {', '.join(candidates)} "
                                  "(keep one)")
        found[role] = directory / candidates[0]
    return found


def collection_name(documents_file: str | Path) -> str:
    """"cranfield" for `cran.all.1400`, else the documents file's name before `.all`, lower-cased."""
    stem = re.split(r"\.all(?:\.|$)", Path(documents_file).name.lower(), maxsplit=1)[0]
    return "cranfield" if stem == "cran" else stem


def read_smart_collection(directory: str | Path, include_title: bool = True,
                          query_numbering: Literal["auto", "ordinal", "smart_id"] = "auto") -> SmartCollection:
    """Any SMART collection in Cranfield's or CISI's layout from its folder (see the module docstring:
    the files are found by name, the qrels layout is read from the file, and `query_numbering="auto"`
    decides ordinal vs `.I` query numbers per collection). Cranfield's folder reads exactly as
    `read_cranfield`."""
    files = find_smart_files(directory)
    return _read_collection(collection_name(files["documents"]), files["documents"], files["queries"],
                            files["qrels"], include_title, query_numbering)


def _read_collection(name: str, documents_path: Path, queries_path: Path, qrels_path: Path, include_title: bool,
                     numbering: Literal["auto", "ordinal", "smart_id"]) -> SmartCollection:
    documents = read_smart_documents(documents_path, include_title=include_title)
    queries = read_smart_queries(queries_path)
    layout, judgments = _parse_qrels(qrels_path)
    chosen = _query_numbering(queries, judgments, queries_path, qrels_path) if numbering == "auto" else numbering
    if chosen == "smart_id":
        queries = read_smart_queries(queries_path, numbering="smart_id")
    qrels = _build_qrels(qrels_path, judgments, {q.query_id for q in queries}, {d.doc_id for d in documents}, chosen)
    details = {"folder": str(documents_path.parent), "documents": documents_path.name,
               "queries": queries_path.name, "qrels": qrels_path.name, "qrels_layout": layout,
               "query_numbering": chosen}
    logger.debug("%s: %s", name, details)
    return SmartCollection(documents=documents, queries=queries, qrels=qrels, name=name, details=details)


def _query_numbering(queries: Sequence[Query], judgments: Sequence[_Judgment], queries_path: Path,
                     qrels_path: Path) -> QueryNumbering:
    """Ordinal or `.I` numbers: the rule of the module docstring."""
    smart_ids = [_smart_number(str(q.metadata["smart_id"])) for q in queries]
    ordinals = [q.query_id for q in queries]
    if smart_ids == ordinals:
        return "smart_id"
    numbers = {j.query for j in judgments}
    fits_smart, fits_ordinal = numbers <= set(smart_ids), numbers <= set(ordinals)
    if fits_smart:
        if fits_ordinal:
            logger.warning("%s: every query number is both a .I number and an ordinal of %s; read as .I numbers",
                           qrels_path, queries_path.name)
        return "smart_id"
    if fits_ordinal:
        return "ordinal"
    wrong = next(j for j in judgments if j.query not in smart_ids and j.query not in ordinals)
    raise DataFormatError(qrels_path, f"query number {wrong.query} is neither a query's .I number nor an ordinal "
                          f"(1..{len(queries)}) of {queries_path.name}", wrong.line)


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
    return _shuffle_and_cut(ids, seed, sizes)


def _shuffle_and_cut(ids: Sequence[str], seed: int, sizes: Mapping[str, int]) -> dict[str, list[str]]:
    """`ids` (sorted) shuffled by `random.Random(seed)`, cut into parts of `sizes` in order; each part in
    the sorted order."""
    shuffled = list(ids)
    random.Random(seed).shuffle(shuffled)
    parts: dict[str, list[str]] = {}
    start = 0
    for name, count in sizes.items():
        chosen = set(shuffled[start:start + count])
        parts[name] = [q for q in ids if q in chosen]
        start += count
    return parts


def split_sizes(count: int, fractions: Mapping[str, float]) -> dict[str, int]:
    """Part sizes for `count` queries: floors of `fraction * count`, the remainder one each to the
    largest fractional parts (ties: the earlier part). Raises ValueError for fractions that are not
    positive or do not add up to 1."""
    if not fractions or any(f <= 0 for f in fractions.values()) or not math.isclose(sum(fractions.values()), 1.0):
        raise ValueError(f"split fractions {dict(fractions)} must be positive and add up to 1")
    exact = {name: f * count for name, f in fractions.items()}
    sizes = {name: math.floor(value) for name, value in exact.items()}
    order = sorted(exact, key=lambda name: -(exact[name] - sizes[name]))  # stable: ties keep part order
    for name in order[:count - sum(sizes.values())]:
        sizes[name] += 1
    return sizes


def smart_query_split(query_ids: Sequence[str], seed: int = SMART_SPLIT_SEED,
                      fractions: Mapping[str, float] | None = None) -> dict[str, list[str]]:
    """A seeded train/dev/test split of `query_ids` (pass the judged ones:
    `SmartCollection.judged_query_ids`); see the module docstring.

    `fractions` maps part name -> share in cut order (default `SMART_SPLIT_FRACTIONS`). Raises
    ValueError for repeated ids, bad fractions, or a part that would be empty.
    """
    fractions = dict(SMART_SPLIT_FRACTIONS if fractions is None else fractions)
    ids = sorted(set(query_ids), key=query_sort_key)
    if len(ids) != len(query_ids):
        raise ValueError("query ids must be unique")
    sizes = split_sizes(len(ids), fractions)
    empty = [name for name, size in sizes.items() if size == 0]
    if empty:
        raise ValueError(f"{len(ids)} queries are too few to split by {fractions}: {', '.join(empty)} would be empty")
    return _shuffle_and_cut(ids, seed, sizes)


def collection_query_split(collection: SmartCollection) -> tuple[dict[str, list[str]], str]:
    """The collection's train/dev/test split and a one-line statement of its rule (for records):
    Cranfield's fixed split for Cranfield, `smart_query_split` of the judged queries for any other
    collection. Raises DataFormatError when a collection has too few judged queries to split."""
    ids = [q.query_id for q in collection.queries]
    if collection.name == "cranfield" and len(ids) == sum(CRANFIELD_SPLIT_SIZES.values()):
        return cranfield_query_split(ids), CRANFIELD_SPLIT_RULE
    judged = collection.judged_query_ids
    try:
        split = smart_query_split(judged)
    except ValueError as exc:
        raise DataFormatError(collection.details.get("folder", collection.name), str(exc)) from None
    sizes = "/".join(str(len(part)) for part in split.values())
    return split, (f"smart_query_split: the {len(judged)} queries with a relevant judgment (of {len(ids)}), seed "
                   f"{SMART_SPLIT_SEED}, fractions {SMART_SPLIT_FRACTIONS}, train/dev/test {sizes}")
