"""Queries, qrels and runs in the formats evaluation tools share.

- Queries: TSV (`query_id<TAB>text`, one a line, no header) or JSONL
  (`{"query_id": ..., "text": ...}`, other fields kept as metadata). `read_queries` tells them
  apart by the first non-blank line: a line starting with `{` means JSONL.
- Qrels: TREC format, `query_id iteration doc_id relevance` (whitespace separated, the iteration
  column is ignored). Relevance is an integer gain; a pair with gain <= 0 is judged non-relevant
  and kept (metrics count only gain > 0 as relevant).
- Runs: TREC format, `query_id Q0 doc_id rank score tag`. As in trec_eval, the rank column is
  ignored when reading: only the scores order a ranking.

`write_run` writes each query's documents by score descending, ties by `doc_id` descending:
the order in which trec_eval (and so `training.metrics`) reads a ranking, so the rank column
always agrees with how the file will be scored. Queries are written in natural order (numeric
ids by value, then the others as strings). Scores are written with `repr`, which round-trips a
float exactly, so writing never creates ties that were not there.

Every reader raises `DataFormatError` naming the file and the line for malformed input.
Gzip files are read transparently.
"""

from __future__ import annotations

import json
import math
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from training.data.textio import atomic_write_text, read_lines
from training.errors import DataFormatError

Qrels = dict[str, dict[str, int]]
"""query_id -> doc_id -> graded relevance (gain); gain > 0 means relevant."""

Run = dict[str, dict[str, float]]
"""query_id -> doc_id -> retrieval score (higher is better)."""


@dataclass(frozen=True)
class Query:
    """One query: its key, its text and any other fields of its source."""

    query_id: str
    text: str
    metadata: dict[str, Any] = field(default_factory=dict)


def query_sort_key(query_id: str) -> tuple[int, int, str]:
    """Natural order of ids: numeric ids by value first, then the others as strings."""
    if query_id.isdigit():
        return (0, int(query_id), query_id)
    return (1, 0, query_id)


def ranking_sort_key(item: tuple[str, float]) -> tuple[float, str]:
    """Sort key, used with `reverse=True`, that orders `(doc_id, score)` as trec_eval does:
    score descending, then doc_id descending."""
    doc_id, score = item
    return (score, doc_id)


def rank_documents(scores: Mapping[str, float]) -> list[tuple[str, float]]:
    """One query's `(doc_id, score)` pairs in ranking order (score desc, then doc_id desc)."""
    return sorted(scores.items(), key=ranking_sort_key, reverse=True)


# --- queries -----------------------------------------------------------------------------


def read_queries(path: str | Path) -> list[Query]:
    """Queries from a TSV or JSONL file, in file order. Query ids must be unique."""
    lines = [(number, line) for number, line in read_lines(path) if line.strip()]
    if not lines:
        raise DataFormatError(path, "the file holds no queries")
    is_jsonl = lines[0][1].lstrip().startswith("{")
    queries: list[Query] = []
    seen: dict[str, int] = {}
    for number, line in lines:
        query = _parse_jsonl_query(line, path, number) if is_jsonl else _parse_tsv_query(line, path, number)
        if query.query_id in seen:
            raise DataFormatError(
                path, f"duplicate query_id {query.query_id!r} (first on line {seen[query.query_id]})", number)
        seen[query.query_id] = number
        queries.append(query)
    return queries


def _parse_tsv_query(line: str, path: str | Path, number: int) -> Query:
    query_id, tab, text = line.partition("\t")
    if not tab:
        raise DataFormatError(path, "expected 'query_id<TAB>text', found no tab", number)
    query_id = query_id.strip()
    if not query_id:
        raise DataFormatError(path, "empty query_id", number)
    if not text.strip():
        raise DataFormatError(path, f"query {query_id!r}: empty text", number)
    return Query(query_id=query_id, text=text.strip())


def _parse_jsonl_query(line: str, path: str | Path, number: int) -> Query:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as exc:
        raise DataFormatError(path, f"invalid JSON: {exc.msg} (column {exc.colno})", number) from None
    if not isinstance(obj, dict):
        raise DataFormatError(path, f"expected a JSON object, got {type(obj).__name__}", number)
    for key in ("query_id", "text"):
        if key not in obj:
            raise DataFormatError(path, f"missing field {key!r}", number)
    query_id = obj["query_id"]
    if isinstance(query_id, int) and not isinstance(query_id, bool):
        query_id = str(query_id)
    if not isinstance(query_id, str) or not query_id.strip():
        raise DataFormatError(path, f"bad query_id {obj['query_id']!r}: need a non-empty string", number)
    text = obj["text"]
    if not isinstance(text, str) or not text.strip():
        raise DataFormatError(path, f"query {query_id!r}: field 'text' must be a non-empty string", number)
    metadata = {key: value for key, value in obj.items() if key not in ("query_id", "text")}
    return Query(query_id=query_id, text=text, metadata=metadata)


def write_queries_tsv(path: str | Path, queries: Iterable[Query]) -> None:
    """Write queries as `query_id<TAB>text` (whitespace in the text collapsed to single spaces)."""
    lines = []
    for query in queries:
        text = " ".join(query.text.split())
        if "\t" in query.query_id or not text:
            raise ValueError(f"query {query.query_id!r} cannot be written as TSV")
        lines.append(f"{query.query_id}\t{text}\n")
    atomic_write_text(path, "".join(lines))


# --- qrels ------------------------------------------------------------------------------


def read_qrels(path: str | Path, doc_ids: Collection[str] | None = None) -> Qrels:
    """TREC qrels. With `doc_ids` (the corpus's keys), a judged doc_id outside it is an error."""
    qrels: Qrels = {}
    for number, line in read_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 4:
            raise DataFormatError(
                path, f"expected 4 fields 'query_id iteration doc_id relevance', found {len(fields)}", number)
        query_id, _, doc_id, relevance = fields
        try:
            gain = int(relevance)
        except ValueError:
            raise DataFormatError(path, f"relevance {relevance!r} is not an integer", number) from None
        if doc_ids is not None and doc_id not in doc_ids:
            raise DataFormatError(path, f"unknown doc_id {doc_id!r} (not in the corpus)", number)
        judged = qrels.setdefault(query_id, {})
        if doc_id in judged:
            raise DataFormatError(path, f"query {query_id!r} judges doc_id {doc_id!r} twice", number)
        judged[doc_id] = gain
    if not qrels:
        raise DataFormatError(path, "the file holds no judgments")
    return qrels


def write_qrels(path: str | Path, qrels: Mapping[str, Mapping[str, int]]) -> None:
    """Write TREC qrels: queries in natural order, doc_ids in natural order within a query."""
    lines = []
    for query_id in sorted(qrels, key=query_sort_key):
        for doc_id in sorted(qrels[query_id], key=query_sort_key):
            lines.append(f"{query_id} 0 {doc_id} {int(qrels[query_id][doc_id])}\n")
    atomic_write_text(path, "".join(lines))


# --- runs -------------------------------------------------------------------------------


def read_run(path: str | Path) -> Run:
    """A TREC run: query_id -> doc_id -> score. The rank column is checked but not used."""
    run: Run = {}
    for number, line in read_lines(path):
        fields = line.split()
        if not fields:
            continue
        if len(fields) != 6:
            raise DataFormatError(
                path, f"expected 6 fields 'query_id Q0 doc_id rank score tag', found {len(fields)}", number)
        query_id, _, doc_id, rank, score_text, _ = fields
        try:
            int(rank)
        except ValueError:
            raise DataFormatError(path, f"rank {rank!r} is not an integer", number) from None
        try:
            score = float(score_text)
        except ValueError:
            raise DataFormatError(path, f"score {score_text!r} is not a number", number) from None
        if not math.isfinite(score):
            raise DataFormatError(path, f"score {score_text!r} is not finite", number)
        ranking = run.setdefault(query_id, {})
        if doc_id in ranking:
            raise DataFormatError(path, f"query {query_id!r} retrieves doc_id {doc_id!r} twice", number)
        ranking[doc_id] = score
    if not run:
        raise DataFormatError(path, "the run holds no results")
    return run


def write_run(path: str | Path, run: Mapping[str, Mapping[str, float]], tag: str = "lmindexer",
              depth: int | None = None) -> None:
    """Write a TREC run, deterministically (see the module docstring); at most `depth` per query."""
    if not tag or any(ch.isspace() for ch in tag):
        raise ValueError(f"run tag {tag!r} must be one non-empty word")
    lines = []
    for query_id in sorted(run, key=query_sort_key):
        ranking = rank_documents(run[query_id])
        if depth is not None:
            ranking = ranking[:depth]
        for rank, (doc_id, score) in enumerate(ranking, start=1):
            lines.append(f"{query_id} Q0 {doc_id} {rank} {float(score)!r} {tag}\n")
    atomic_write_text(path, "".join(lines))
