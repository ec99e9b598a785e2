"""BM25 retrieval with bm25s: English stop words, an optional Snowball stemmer, exact scores.

Tokenisation is bm25s's: lower-case, tokens = `\\b\\w\\w+\\b` (words of two or more word
characters), bm25s's built-in English stop-word list (nothing is downloaded), then optionally
the PyStemmer Snowball stemmer of the named language. Scoring is bm25s's "lucene" variant with
k1 = 1.5, b = 0.75 (its defaults). Every document of the corpus is scored for every query, and
`retrieval.top_k_run` takes the top k with trec_eval's tie order, so the run does not depend on
bm25s's internal top-k selection.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import bm25s
import numpy as np
import Stemmer

from training.baselines.retrieval import top_k_run
from training.data.corpus import Document
from training.data.trec import Query, Run
from training.errors import ConfigError

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class BM25Settings:
    """How documents and queries are tokenised and scored."""

    k1: float = 1.5
    b: float = 0.75
    method: str = "lucene"
    stopwords: str = "en"
    # A PyStemmer language ("english", ...) or None for no stemming.
    stemmer: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _make_stemmer(language: str | None) -> Callable[[list[str]], list[str]] | None:
    if language is None:
        return None
    try:
        return Stemmer.Stemmer(language).stemWords
    except KeyError:
        raise ConfigError(f"unknown stemmer language {language!r} (PyStemmer: {Stemmer.algorithms()})") from None


class BM25Index:
    """A bm25s index over documents; `search` gives a run with exact top-k."""

    def __init__(self, documents: Sequence[Document], settings: BM25Settings | None = None) -> None:
        self.settings = settings or BM25Settings()
        self.doc_ids = [document.doc_id for document in documents]
        self._stemmer = _make_stemmer(self.settings.stemmer)
        corpus_tokens = bm25s.tokenize([document.text for document in documents],
                                       stopwords=self.settings.stopwords, stemmer=self._stemmer,
                                       show_progress=False)
        self._retriever = bm25s.BM25(k1=self.settings.k1, b=self.settings.b, method=self.settings.method)
        self._retriever.index(corpus_tokens, show_progress=False)
        logger.info("BM25 index: %d documents, %d terms", len(self.doc_ids), len(corpus_tokens.vocab))

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """BM25 scores (len(texts), num_documents), float32; a query with no known term scores 0."""
        query_tokens = bm25s.tokenize(list(texts), stopwords=self.settings.stopwords, stemmer=self._stemmer,
                                      return_ids=False, show_progress=False)
        vocabulary = self._retriever.vocab_dict
        scores = np.zeros((len(query_tokens), len(self.doc_ids)), dtype=np.float32)
        for row, tokens in enumerate(query_tokens):
            # get_scores fails on terms the corpus never saw; they add nothing to BM25 anyway.
            known = [token for token in tokens if token in vocabulary]
            if known:
                scores[row] = self._retriever.get_scores(known)
        return scores

    def search(self, queries: Sequence[Query], top_k: int = 100) -> Run:
        """The top `top_k` documents of each query by BM25 score."""
        scores = self.score([query.text for query in queries])
        return top_k_run(scores, [query.query_id for query in queries], self.doc_ids, top_k)
