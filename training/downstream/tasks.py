"""Downstream tasks as (input text -> semantic ID) examples, and the network they fine-tune.

An ID source is a `learn-ids` output directory: `ids.jsonl` (the ID table), `run.json` (method,
codebook sizes, corpus path) and, for the lmindexer method, the indexer network in `network/`.

- retrieval: each (training query, relevant document) pair is one example; document-as-query
  pairs (the document's own text -> its ID, DSI's "indexing" examples) are added by default when
  the training queries are few, so that every document's ID is seen at least once. On an item
  catalogue (no queries) the title is a second, shorter query for the item. Optionally, pseudo-queries
  made from the documents alone stand in for the queries nobody wrote (no query-generation model can
  be downloaded here; `PseudoQueries`): random word spans (NCI's "DocAsQuery"; the document-as-query
  pair alone shows only the first `max_input_length` tokens of a document), the document's most
  salient sentences by TF-IDF against the collection, and key-phrase queries (its highest-weighted
  terms and bigrams). The real training queries can be repeated to weigh them against the pseudo ones.

Recommendation is the item-token recommender's (`training.recommendation`), not a task here.

Cold start: a `cold` set of doc_ids is excluded from every training example (as target and as
document-as-query) and indexed after fine-tuning (`training.downstream.cold_start`).
"""

from __future__ import annotations

import json
import logging
import random
import re
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
    sentence_queries: int = 0,
    keyphrase_queries: int = 0,
    keyphrase_terms: int = 6,
    pseudo_query_words: int = 32,
    query_repeats: int = 1,
) -> list[Example]:
    """Training pairs for retrieval.

    queries: query_id -> text (training queries only); qrels: query_id -> doc_id -> gain (> 0 relevant);
    documents: doc_id -> text; id_of: doc_id -> semantic ID. Each (real query, relevant document) pair is
    added `query_repeats` times (the weight of the real queries against the pseudo ones). With
    `doc_as_query`, every warm document adds (its text -> its ID) and, when `titles` has it, (its title ->
    its ID), `span_queries` random spans of it (`document_spans`, seeded by `seed` and the doc_id),
    `sentence_queries` salient sentences and `keyphrase_queries` key-phrase queries of `keyphrase_terms`
    terms (`PseudoQueries`, fitted on `documents`; sentences cut at `pseudo_query_words` words).
    """
    examples = []
    for query_id, text in queries.items():
        for doc_id, gain in sorted(qrels.get(query_id, {}).items()):
            if gain > 0 and doc_id not in cold and doc_id in id_of:
                examples.extend([Example(text, doc_id, id_of[doc_id])] * query_repeats)
    if doc_as_query:
        pseudo = PseudoQueries(documents) if sentence_queries or keyphrase_queries else None
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
            if pseudo is not None:
                made = (pseudo.salient_sentences(doc_id, sentence_queries, pseudo_query_words)
                        + pseudo.keyphrase_queries(doc_id, keyphrase_queries, keyphrase_terms, pseudo_query_words))
                examples.extend(Example(q, doc_id, id_of[doc_id]) for q in made if q != title)
    return examples


_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


class PseudoQueries:
    """Pseudo-queries from the documents alone, by TF-IDF against the collection (scikit-learn's
    TfidfVectorizer: lower-cased word unigrams and bigrams, English stop words removed, sublinear tf,
    smoothed idf, each document's row L2-normalised).

    - `salient_sentences`: the document's sentences (split after . ! ?) scored by the summed TF-IDF weight of
      their distinct terms in the document's row divided by sqrt(their term count) (long sentences do not win
      by length alone); the best first, each cut to `max_words` words; a document of one sentence gives none
      (its document-as-query pair already is it).
    - `keyphrase_queries`: the document's terms by TF-IDF weight (ties by term), unigrams covered by a chosen
      bigram dropped, cut into `count` queries of `terms` terms each, in weight order.

    Deterministic: no sampling; the same documents give the same queries. documents: doc_id -> text.
    """

    def __init__(self, documents: Mapping[str, str]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer

        self._doc_ids = list(documents)
        self._texts = [documents[d] for d in self._doc_ids]
        self._row = {doc_id: i for i, doc_id in enumerate(self._doc_ids)}
        self._vectorizer = TfidfVectorizer(lowercase=True, stop_words="english", ngram_range=(1, 2),
                                           sublinear_tf=True, token_pattern=r"(?u)\b[a-zA-Z][a-zA-Z0-9-]+\b")
        self._weights = self._vectorizer.fit_transform(self._texts).tocsr()  # (N, V) sparse
        self._terms = self._vectorizer.get_feature_names_out()
        self._analyze = self._vectorizer.build_analyzer()

    def _term_weights(self, doc_id: str) -> dict[str, float]:
        row = self._weights[self._row[doc_id]]
        return {str(self._terms[j]): float(w) for j, w in zip(row.indices, row.data, strict=True)}

    def salient_sentences(self, doc_id: str, count: int, max_words: int) -> list[str]:
        """Up to `count` sentences of the document, most salient first (class docstring)."""
        if count <= 0:
            return []
        sentences = [s.strip() for s in _SENTENCE_END.split(self._texts[self._row[doc_id]]) if s.strip()]
        if len(sentences) < 2:
            return []
        weights = self._term_weights(doc_id)
        scored = []
        for position, sentence in enumerate(sentences):
            terms = set(self._analyze(sentence))
            if not terms:
                continue
            score = sum(weights.get(t, 0.0) for t in terms) / len(terms) ** 0.5
            scored.append((-score, position, " ".join(sentence.split()[:max_words])))
        chosen: list[str] = []
        for _, _, sentence in sorted(scored):
            if sentence not in chosen:
                chosen.append(sentence)
            if len(chosen) == count:
                break
        return chosen

    def keyphrase_queries(self, doc_id: str, count: int, terms: int, max_words: int = 32) -> list[str]:
        """Up to `count` queries of `terms` key terms each, cut to `max_words` words (class docstring)."""
        if count <= 0 or terms <= 0:
            return []
        ranked = sorted(self._term_weights(doc_id).items(), key=lambda kv: (-kv[1], kv[0]))
        picked: list[str] = []
        covered: set[str] = set()
        for term, _ in ranked:
            words = term.split()
            if len(words) == 1 and term in covered:
                continue
            picked.append(term)
            covered.update(words)
            if len(picked) == count * terms:
                break
        picked = [t for t in picked if " " in t or t not in {w for b in picked if " " in b for w in b.split()}]
        return [" ".join(" ".join(picked[i:i + terms]).split()[:max_words])
                for i in range(0, min(len(picked), count * terms), terms)]


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
