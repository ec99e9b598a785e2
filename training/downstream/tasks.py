"""Downstream tasks as (input text -> semantic ID) examples, and the network they fine-tune.

An ID source is a `learn-ids` output directory: `ids.jsonl` (the ID table), `run.json` (method,
codebook sizes, corpus path) and, for the lmindexer method, the indexer network in `network/`.

- retrieval: each (training query, relevant document) pair is one example; document-as-query
  pairs (the document's own text -> its ID, DSI's "indexing" examples) are added by default when
  the training queries are few, so that every document's ID is seen at least once. On an item
  catalogue (no queries) the title is a second, shorter query for the item. Optionally, random
  word spans of each document stand in for the queries nobody wrote (NCI's "DocAsQuery"; the
  document-as-query pair alone shows only the first `max_input_length` tokens of a document).

Recommendation is the item-token recommender's (`training.recommendation`), not a task here.

Cold start: a `cold` set of doc_ids is excluded from every training example (as target and as
document-as-query) and indexed after fine-tuning (`training.downstream.cold_start`).
"""

from __future__ import annotations

import json
import logging
import random
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from training.errors import ConfigError, DataFormatError
from training.indexing.id_table import IdTable, read_ids_jsonl

logger = logging.getLogger(__name__)

NETWORK_DIR = "network"  # where learn-ids (lmindexer) saves the indexer network inside its out dir


@dataclass(frozen=True)
class Example:
    """One supervised pair: model input text and the target document's semantic ID (L + 1 codes)."""

    text: str
    doc_id: str
    semantic_id: tuple[int, ...]


@dataclass(frozen=True)
class IdSource:
    """A learn-ids output: the ID table, its shape and (lmindexer only) the indexer network."""

    directory: Path
    method: str
    table: IdTable
    codebook_sizes: tuple[int, ...]  # K per learned level as the method reported it (length L)
    corpus: Path | None
    document_length: int = 128  # tokens of a document the indexer read (run.json config max_length)

    @property
    def num_levels(self) -> int:
        """L, learned levels."""
        return len(self.codebook_sizes)

    @property
    def codebook_size(self) -> int:
        """One K for every learned level: the largest (HC trees have uneven fan-outs)."""
        return max(self.codebook_sizes)

    @property
    def network_dir(self) -> Path | None:
        """The saved indexer network, or None when the method has none (rq-VAE, HC, RK-means)."""
        path = self.directory / NETWORK_DIR
        return path if (path / "network.json").is_file() else None

    def id_of(self) -> dict[str, tuple[int, ...]]:
        """doc_id -> semantic ID."""
        return {d: tuple(int(c) for c in row) for d, row in zip(self.table.doc_ids, self.table.semantic_ids,
                                                                strict=True)}


def load_id_source(directory: str | Path) -> IdSource:
    """Read a learn-ids output directory (ids.jsonl + run.json)."""
    directory = Path(directory)
    ids_path = directory / "ids.jsonl"
    if not ids_path.is_file():
        raise DataFormatError(ids_path, "no ID table here; run `lmindexer learn-ids --out DIR` first")
    table = read_ids_jsonl(ids_path)
    run: dict[str, Any] = {}
    if (directory / "run.json").is_file():
        run = json.loads((directory / "run.json").read_text(encoding="utf-8"))
    num_levels = table.semantic_ids.shape[1] - 1
    sizes = run.get("codebook_sizes")
    if sizes is None:  # no run.json: infer K from the codes themselves
        sizes = [int(table.semantic_ids[:, level].max()) + 1 for level in range(num_levels)]
    if len(sizes) != num_levels:
        raise DataFormatError(directory / "run.json", f"{len(sizes)} codebook sizes for {num_levels} learned levels")
    corpus = Path(run["corpus"]) if run.get("corpus") else None
    length = (run.get("config") or {}).get("max_length", 128)
    return IdSource(directory=directory, method=str(run.get("method", "unknown")), table=table,
                    codebook_sizes=tuple(int(k) for k in sizes), corpus=corpus, document_length=int(length))


def choose_cold_documents(doc_ids: Sequence[str], fraction: float, seed: int) -> set[str]:
    """A seeded random `fraction` of the documents, held out of fine-tuning (empty for 0)."""
    if not 0.0 <= fraction < 1.0:
        raise ConfigError(f"cold_start_fraction must be in [0, 1), got {fraction}")
    count = round(len(doc_ids) * fraction)
    if count == 0:
        return set()
    return set(random.Random(seed).sample(sorted(doc_ids), count))


def retrieval_examples(
    queries: Mapping[str, str],
    qrels: Mapping[str, Mapping[str, int]],
    documents: Mapping[str, str],
    id_of: Mapping[str, tuple[int, ...]],
    doc_as_query: bool,
    titles: Mapping[str, str] | None = None,
    cold: Collection[str] = (),
    span_queries: int = 0,
    span_words: int = 16,
    seed: int = 0,
) -> list[Example]:
    """Training pairs for retrieval.

    queries: query_id -> text (training queries only); qrels: query_id -> doc_id -> gain (> 0 relevant);
    documents: doc_id -> text; id_of: doc_id -> semantic ID. With `doc_as_query`, every warm
    document adds (its text -> its ID) and, when `titles` has it, (its title -> its ID), and
    `span_queries` random spans of it (`document_spans`, seeded by `seed` and the doc_id).
    """
    examples = []
    for query_id, text in queries.items():
        for doc_id, gain in sorted(qrels.get(query_id, {}).items()):
            if gain > 0 and doc_id not in cold and doc_id in id_of:
                examples.append(Example(text, doc_id, id_of[doc_id]))
    if doc_as_query:
        for doc_id, text in documents.items():
            if doc_id in cold or doc_id not in id_of:
                continue
            if text.strip():
                examples.append(Example(text, doc_id, id_of[doc_id]))
            title = (titles or {}).get(doc_id)
            if title and title.strip() and title != text:
                examples.append(Example(title, doc_id, id_of[doc_id]))
            for span in document_spans(text, span_queries, span_words, random.Random(f"{seed}:{doc_id}")):
                examples.append(Example(span, doc_id, id_of[doc_id]))
    return examples


def document_spans(text: str, count: int, max_words: int, rng: random.Random) -> list[str]:
    """`count` distinct random spans of `text`, each of between max_words // 2 and `max_words`
    whitespace-separated words at a uniform start. A text of at most `max_words` words has no
    span worth adding (the document-as-query pair already is it): [] then."""
    words = text.split()
    if count <= 0 or len(words) <= max_words:
        return []
    spans: list[str] = []
    for _ in range(4 * count):  # a few redraws make room for duplicates in short texts
        length = rng.randint(max(1, max_words // 2), max_words)
        start = rng.randrange(len(words) - length + 1)
        span = " ".join(words[start:start + length])
        if span not in spans:
            spans.append(span)
        if len(spans) == count:
            break
    return spans


def id_matrix(examples: Sequence[Example]) -> np.ndarray:
    """(N, L + 1) int64 target IDs of `examples`."""
    return np.asarray([e.semantic_id for e in examples], dtype=np.int64)
