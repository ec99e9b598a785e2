"""Dense retrieval: the default encoder (all-MiniLM-L6-v2), mean pooling, cosine, exact top-k.

Documents and queries are embedded with `training.encoder.embed_texts` (mean pooling over the
attention mask, L2-normalised, inputs truncated to `max_length` tokens: 256 is the
sentence-transformers setting of all-MiniLM-L6-v2), so the inner product is the cosine. The
search is exhaustive (a matrix product), with `retrieval.top_k_run` choosing the top k in
trec_eval's tie order.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from training.baselines.retrieval import top_k_run
from training.data.corpus import Document
from training.data.trec import Query, Run
from training.encoder import DEFAULT_ENCODER, embed_texts

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class DenseSettings:
    """Which encoder embeds the texts and how."""

    encoder: str = DEFAULT_ENCODER
    max_length: int = 256
    batch_size: int = 64
    device: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


class DenseIndex:
    """Unit-length document embeddings; `search` ranks by cosine similarity."""

    def __init__(self, documents: Sequence[Document], settings: DenseSettings | None = None) -> None:
        self.settings = settings or DenseSettings()
        self.doc_ids = [document.doc_id for document in documents]
        self.embeddings = self._embed([document.text for document in documents])  # (N, d)
        logger.info("dense index: %d documents, dimension %d", *self.embeddings.shape)

    def _embed(self, texts: Sequence[str]) -> np.ndarray:
        settings = self.settings
        return embed_texts(texts, encoder=settings.encoder, batch_size=settings.batch_size,
                           max_length=settings.max_length, normalize=True, device=settings.device,
                           show_progress=False)

    def score(self, texts: Sequence[str]) -> np.ndarray:
        """Cosine similarities (len(texts), num_documents), float32."""
        return self._embed(texts) @ self.embeddings.T

    def search(self, queries: Sequence[Query], top_k: int = 100) -> Run:
        """The top `top_k` documents of each query by cosine similarity."""
        scores = self.score([query.text for query in queries])
        return top_k_run(scores, [query.query_id for query in queries], self.doc_ids, top_k)
